//! The GPU inventory, read from the driver's files on every pass (no
//! external program): NVIDIA's `<proc>/driver/nvidia/gpus/<bus>/information`
//! for the device minor, UUID and model, and the PCI device's
//! `<sys>/bus/pci/devices/<bus>/numa_node`. Every read is bounded: a
//! driver tree that is not what it should be fails the inventory with an
//! error instead of costing the pass.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use kloigos_core::config::GpuConfig;
use kloigos_core::facts::{
    is_pci_address, merge_samples, parse_nvidia_information, parse_nvidia_smi, Gpu,
};
use kloigos_core::fence::{DevNum, NVIDIA_MAJOR};

use crate::error::{Error, Result};
use crate::record::Record;

/// nvidia-smi is asked at most this often (an idle pass runs no program).
pub const SAMPLE_EVERY_S: i64 = 300;

/// A sample older than this is not shown.
pub const SAMPLE_KEEP_S: i64 = 2 * SAMPLE_EVERY_S;

/// How long nvidia-smi may take (it hangs on a wedged GPU).
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most output read from nvidia-smi.
pub const MAX_SAMPLE_BYTES: usize = 64 * 1024;

/// Adds utilization and memory to NVIDIA GPUs with UUIDs, from an
/// nvidia-smi sample taken at most every [`SAMPLE_EVERY_S`] and only
/// where nvidia-smi is installed. A failed sample is logged and not
/// retried before the next interval.
pub fn add_samples(gpus: &mut [Gpu], record: &mut Record, now: Timestamp) {
    if !gpus.iter().any(|g| g.uuid.is_some()) {
        return;
    }
    let due = record
        .gpu_sample
        .as_ref()
        .is_none_or(|(at, _)| now.as_second() - at.as_second() >= SAMPLE_EVERY_S);
    if due {
        if let Some(smi) = crate::sys::find_program("nvidia-smi") {
            let args = [
                "--query-gpu=uuid,utilization.gpu,memory.used,memory.total",
                "--format=csv,noheader,nounits",
            ];
            // Never past the pass's deadline, like every other program.
            let timeout = crate::deadline::bound(SAMPLE_TIMEOUT);
            let samples = match run_bounded(&smi, &args, timeout, MAX_SAMPLE_BYTES) {
                Ok(out) => parse_nvidia_smi(&out),
                Err(e) => {
                    crate::log::error(&format!("GPU utilization: {e}"));
                    Vec::new()
                }
            };
            record.gpu_sample = Some((now, samples));
        }
    }
    if let Some((at, samples)) = &record.gpu_sample {
        if now.as_second() - at.as_second() < SAMPLE_KEEP_S {
            merge_samples(gpus, samples);
        }
    }
}

/// Runs `program` (no shell, stdin and stderr closed) for at most
/// `timeout`, reading at most `max` bytes of its output; a program that
/// overruns either is ended and is an error.
pub fn run_bounded(program: &Path, args: &[&str], timeout: Duration, max: usize) -> Result<String> {
    let name = program.display().to_string();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: name.clone(),
            source,
        })?;
    let out = child.stdout.take();
    // The reader stops at the bound; the program then dies of SIGPIPE.
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(o) = out {
            let _ = o.take(max as u64 + 1).read_to_end(&mut buf);
        }
        buf
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                return Err(Error::Timeout {
                    program: name,
                    secs: timeout.as_secs_f64(),
                    reaped: true,
                });
            }
            Err(e) => return Err(Error::io(program, e)),
        }
    };
    let buf = reader.join().unwrap_or_default();
    if buf.len() > max {
        return Err(Error::TooLarge {
            path: program.into(),
            max: max as u64,
        });
    }
    if !status.success() {
        return Err(Error::Command {
            program: name,
            status: status.to_string(),
            output: String::new(),
        });
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The most entries read from the driver's GPU directory.
pub const MAX_ENTRIES: usize = 64;

/// The most bytes read from one `information` file (the driver writes ~400).
pub const MAX_INFO_BYTES: u64 = 4096;

/// The most bytes read from a `numa_node` file.
pub const MAX_NUMA_BYTES: u64 = 16;

/// The driver's GPU directory under `proc_dir`.
pub fn nvidia_dir(cfg: &GpuConfig) -> PathBuf {
    cfg.proc_dir.join("driver/nvidia/gpus")
}

/// The node's GPUs: those declared by device path in `cfg.devices`, in
/// that order, or else NVIDIA's, indexed in PCI bus order. No driver
/// directory (ENOENT): no GPUs. Any other failure is an error naming the file.
pub fn inventory(cfg: &GpuConfig) -> Result<Vec<Gpu>> {
    if !cfg.devices.is_empty() {
        return declared(&cfg.devices);
    }
    let dir = nvidia_dir(cfg);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut buses = Vec::new();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(Error::TooMany {
                dir,
                max: MAX_ENTRIES,
            });
        }
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        // Only a PCI address becomes part of a path.
        if let Some(name) = entry.file_name().to_str().filter(|n| is_pci_address(n)) {
            buses.push(name.to_string());
        }
    }
    buses.sort();
    let mut out = Vec::with_capacity(buses.len());
    for bus in buses {
        let info = dir.join(&bus).join("information");
        let text = read_bounded(&info, MAX_INFO_BYTES)?;
        let Some((minor, uuid, name)) = parse_nvidia_information(&text) else {
            crate::log::error(&format!(
                "{}: no valid \"Device Minor\" line; this GPU is left out",
                info.display()
            ));
            continue;
        };
        let numa_path = cfg
            .sys_dir
            .join("bus/pci/devices")
            .join(&bus)
            .join("numa_node");
        let numa_node = match read_bounded(&numa_path, MAX_NUMA_BYTES) {
            // -1: the platform does not say.
            Ok(t) => t.trim().parse::<u32>().ok(),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        out.push(Gpu {
            index: out.len() as u32,
            major: NVIDIA_MAJOR,
            minor,
            uuid,
            name,
            bus_id: bus,
            numa_node,
            utilization: None,
            memory_used: None,
            memory_total: None,
            idle_since: None,
        });
    }
    Ok(out)
}

/// GPUs declared by the paths of their device nodes (symlinks followed).
fn declared(paths: &[PathBuf]) -> Result<Vec<Gpu>> {
    if paths.len() > MAX_ENTRIES {
        return Err(Error::TooMany {
            dir: PathBuf::from("housekeeper.gpu.devices"),
            max: MAX_ENTRIES,
        });
    }
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let m = fs::metadata(p).map_err(|e| Error::io(p, e))?;
            if !p.is_absolute() || !m.file_type().is_char_device() {
                return Err(Error::NotDevice(p.clone()));
            }
            let dev = DevNum::from_rdev(m.rdev());
            Ok(Gpu {
                index: i as u32,
                major: dev.major,
                minor: dev.minor,
                uuid: None,
                name: p.display().to_string(),
                bus_id: String::new(),
                numa_node: None,
                utilization: None,
                memory_used: None,
                memory_total: None,
                idle_since: None,
            })
        })
        .collect()
}

/// Reads at most `max` bytes of `path` as text; a longer file is an error.
fn read_bounded(path: &Path, max: u64) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::TooLarge {
            path: path.into(),
            max,
        });
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake driver tree: GPUs `(bus, minor, numa)`.
    fn tree(gpus: &[(&str, u32, &str)]) -> (tempfile::TempDir, GpuConfig) {
        let d = tempfile::tempdir().unwrap();
        let cfg = GpuConfig {
            proc_dir: d.path().join("proc"),
            sys_dir: d.path().join("sys"),
            ..GpuConfig::default()
        };
        for (bus, minor, numa) in gpus {
            let g = nvidia_dir(&cfg).join(bus);
            fs::create_dir_all(&g).unwrap();
            fs::write(
                g.join("information"),
                format!("Model: \t\t Tesla T4\nGPU UUID: \t GPU-{minor}-uuid\nBus Location: \t {bus}\nDevice Minor: \t {minor}\n"),
            )
            .unwrap();
            let p = cfg.sys_dir.join("bus/pci/devices").join(bus);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("numa_node"), format!("{numa}\n")).unwrap();
        }
        (d, cfg)
    }

    #[test]
    fn gpus_are_indexed_in_bus_order_with_their_numa_node() {
        let (_d, cfg) = tree(&[("0000:b1:00.0", 3, "1"), ("0000:3b:00.0", 0, "-1")]);
        fs::create_dir_all(nvidia_dir(&cfg).join("not-a-bus")).unwrap();
        let g = inventory(&cfg).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].index, g[0].minor, g[0].numa_node), (0, 0, None));
        assert_eq!(g[0].bus_id, "0000:3b:00.0");
        assert_eq!((g[1].index, g[1].minor, g[1].numa_node), (1, 3, Some(1)));
        assert_eq!(g[1].uuid.as_deref(), Some("GPU-3-uuid"));
        assert_eq!(g[1].name, "Tesla T4");
    }

    #[test]
    fn no_driver_is_no_gpus_and_an_unreadable_tree_is_an_error() {
        let (_d, cfg) = tree(&[]);
        assert!(inventory(&cfg).unwrap().is_empty());
        let (_d, cfg) = tree(&[("0000:3b:00.0", 0, "0")]);
        fs::remove_file(nvidia_dir(&cfg).join("0000:3b:00.0/information")).unwrap();
        assert!(matches!(inventory(&cfg), Err(Error::Io { .. })));
    }

    #[test]
    fn declared_devices_replace_the_driver_tree_and_must_be_character_devices() {
        let (_d, mut cfg) = tree(&[("0000:3b:00.0", 0, "0")]);
        cfg.devices = vec![PathBuf::from("/dev/null"), PathBuf::from("/dev/zero")];
        let g = inventory(&cfg).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].index, g[0].major, g[0].minor), (0, 1, 3));
        assert_eq!((g[1].index, g[1].major, g[1].minor), (1, 1, 5));
        cfg.devices = vec![PathBuf::from("/etc/hostname")];
        assert!(matches!(inventory(&cfg), Err(Error::NotDevice(_))));
        cfg.devices = vec![PathBuf::from("/dev/no-such-gpu")];
        assert!(matches!(inventory(&cfg), Err(Error::Io { .. })));
    }

    #[test]
    fn an_external_program_is_bounded_in_time_and_output() {
        let sh = |script: &str, limit: Duration, max: usize| {
            run_bounded(Path::new("/bin/sh"), &["-c", script], limit, max)
        };
        let ok = sh("echo GPU-a, 1, 2, 3", Duration::from_secs(30), 100).unwrap();
        assert_eq!(ok, "GPU-a, 1, 2, 3\n");
        let e = sh("exec sleep 30", Duration::from_millis(200), 100).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        let e = sh("exec yes", Duration::from_secs(30), 1000).unwrap_err();
        assert!(matches!(e, Error::TooLarge { max: 1000, .. }), "{e}");
        let e = sh("exit 3", Duration::from_secs(30), 100).unwrap_err();
        assert!(matches!(e, Error::Command { .. }), "{e}");
    }

    /// The bound a `TooLarge` error names, `None` for any other error.
    fn too_large(e: &Error) -> Option<u64> {
        match e {
            Error::TooLarge { max, .. } => Some(*max),
            _ => None,
        }
    }

    #[test]
    fn each_bound_holds() {
        // An information file one byte too long.
        let (_d, cfg) = tree(&[("0000:3b:00.0", 0, "0")]);
        let info = nvidia_dir(&cfg).join("0000:3b:00.0/information");
        let mut text = fs::read_to_string(&info).unwrap();
        text.push_str(&"x".repeat(MAX_INFO_BYTES as usize + 1 - text.len()));
        fs::write(&info, &text).unwrap();
        let e = inventory(&cfg).unwrap_err();
        assert_eq!(too_large(&e), Some(MAX_INFO_BYTES), "{e}");
        text.pop();
        fs::write(&info, &text).unwrap();
        assert_eq!(inventory(&cfg).unwrap().len(), 1);
        // A numa_node file too long.
        let numa = cfg.sys_dir.join("bus/pci/devices/0000:3b:00.0/numa_node");
        fs::write(&numa, "0".repeat(MAX_NUMA_BYTES as usize + 1)).unwrap();
        let e = inventory(&cfg).unwrap_err();
        assert_eq!(too_large(&e), Some(MAX_NUMA_BYTES), "{e}");
        // One entry too many in the driver's directory.
        let (_d, cfg) = tree(&[]);
        for i in 0..=MAX_ENTRIES {
            fs::create_dir_all(nvidia_dir(&cfg).join(format!("junk{i}"))).unwrap();
        }
        let e = inventory(&cfg).unwrap_err();
        assert!(
            matches!(
                e,
                Error::TooMany {
                    max: MAX_ENTRIES,
                    ..
                }
            ),
            "{e}"
        );
        fs::remove_dir(nvidia_dir(&cfg).join("junk0")).unwrap();
        assert!(inventory(&cfg).unwrap().is_empty());
    }
}
