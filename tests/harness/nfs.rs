//! The NFS test bed: a Debian guest under QEMU whose own kernel serves NFS
//! to two client nodes (network, UTS and mount namespaces `nodea` and
//! `nodeb`), each mounting the export over NFSv4.2 and NFSv3, with the
//! project's release binaries installed inside as install.sh installs them.
//!
//! The guest's root file system is built once with debootstrap and
//! `mke2fs -d` (no loop mounts) and cached in `/var/tmp`, in a directory
//! named by a hash of everything that goes into it, so a change rebuilds
//! it. Each boot gets a small payload disk (the binaries, the config and
//! the guest scripts of `tests/nfs/`) and boots the image read-only
//! (`snapshot=on`) with `-kernel`/`-initrd`, with KVM when it works, else
//! TCG. The host drives the guest over the serial console: it sends shell
//! scripts and reads their output (protocol in `tests/nfs/init.sh`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use kloigos_core::dashboard::base64;

use crate::cmd::run;
use crate::skip::need;

/// The Debian release of the guest: the host's, so that the host's release
/// binaries find the same glibc and libpam inside.
const SUITE: &str = "bookworm";

/// The guest's packages beyond debootstrap's minbase.
const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "nfs-kernel-server",
    "rpcbind",
    "nfs-common",
    "iproute2",
    "pamtester",
    "procps",
];

/// What the image holds besides the packages: the kernel's module trees
/// no test needs (smaller image, faster boot).
const PRUNED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
];

/// Module directories (under `kernel/`) left out of the image.
const PRUNED_MODULES: &[&str] = &[
    "drivers/gpu",
    "drivers/media",
    "drivers/infiniband",
    "drivers/iio",
    "drivers/usb",
    "drivers/scsi",
    "drivers/hwmon",
    "drivers/net/wireless",
    "drivers/net/ethernet",
    "drivers/net/can",
    "drivers/net/usb",
    "drivers/bluetooth",
    "drivers/staging",
    "drivers/input",
    "drivers/hid",
    "drivers/mmc",
    "drivers/isdn",
    "drivers/ata",
    "sound",
    "net/bluetooth",
    "net/wireless",
    "net/mac80211",
];

/// The image's `/init`: mounts the payload disk and hands over to its
/// `init.sh`, so that the scripts can change without rebuilding the image.
const STUB_INIT: &str = r#"#!/bin/sh
# kloigos NFS test bed: hands over to the payload disk's init.sh.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
echo "@@K init"
mkdir -p /payload
if mount -t ext2 -o ro /dev/vdb /payload; then
    exec /bin/sh /payload/init.sh
fi
echo "@@K fail the payload disk /dev/vdb does not mount"
echo o >/proc/sysrq-trigger
"#;

/// Version of the build steps below; bump it when they change.
const RECIPE: u32 = 1;

/// The guest scripts shipped on the payload disk, from `tests/nfs/`.
const GUEST_SCRIPTS: &[(&str, &str)] = &[
    ("init.sh", include_str!("../nfs/init.sh")),
    ("node.sh", include_str!("../nfs/node.sh")),
    ("lib.sh", include_str!("../nfs/lib.sh")),
];

/// The guest's `pam.timeout_ms` (the default).
pub const PAM_TIMEOUT_MS: u64 = 2000;

/// The guest's `cli.share_timeout_ms`: half the default, as the bed's
/// scenarios wait for it on each cut of the share.
pub const SHARE_TIMEOUT_MS: u64 = 5000;

/// Bound on booting the guest to its `@@K ready` (TCG on a loaded 2-core
/// machine, plus the server's grace period).
const BOOT: Duration = Duration::from_secs(300);

/// Bound on KVM reaching the image's `/init` (a working KVM gets there in
/// a few seconds; on this kind of machine it hangs in early boot); past it
/// the bed uses TCG.
const KVM_PROBE: Duration = Duration::from_secs(10);

/// FNV-1a: a hash that is the same in every build and Rust release, to
/// name the cache.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cache directory of the image built from the current recipe.
fn image_dir() -> PathBuf {
    let mut key = format!("{RECIPE}\n{SUITE}\n{STUB_INIT}\n");
    for p in PACKAGES.iter().chain(PRUNED).chain(PRUNED_MODULES) {
        key.push_str(p);
        key.push('\n');
    }
    PathBuf::from(format!(
        "/var/tmp/kloigos-nfs-guest-{:016x}",
        fnv(key.as_bytes())
    ))
}

/// A built guest image: root file system image, kernel and initrd.
pub struct Image {
    /// `rootfs.img`, `vmlinuz` and `initrd.img`.
    pub dir: PathBuf,
}

/// The cached guest image, built if missing (about 2 minutes, needs the
/// Debian mirror). `Err` names what is missing.
pub fn image() -> Result<Image, String> {
    for (program, package) in [
        ("debootstrap", "debootstrap"),
        ("mke2fs", "e2fsprogs"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("setpriv", "util-linux"),
    ] {
        need(program, package)?;
    }
    let dir = image_dir();
    let ready = dir.join("ready");
    // One builder at a time; the others wait for its result.
    let lock_path = PathBuf::from("/var/tmp/kloigos-nfs-guest.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if ready.exists() {
        return Ok(Image { dir });
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let built = build(&dir);
    let _ = std::fs::remove_dir_all(dir.join("root"));
    match built {
        Ok(()) => {
            std::fs::write(&ready, b"").map_err(|e| format!("{}: {e}", ready.display()))?;
            Ok(Image { dir })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Builds the image into `dir` (which is removed by the caller on error).
fn build(dir: &Path) -> Result<(), String> {
    let root = dir.join("root");
    let mirror = crate::nspawn::mirror();
    eprintln!(
        "nfs bed: building the guest image in {} from {mirror} (once, ~2 min)",
        dir.display()
    );
    let include = format!("--include={}", PACKAGES.join(","));
    let r = run(
        "debootstrap",
        &[
            "--variant=minbase",
            &include,
            SUITE,
            &root.to_string_lossy(),
            &mirror,
        ],
    );
    if r.code != 0 {
        let tail: Vec<&str> = r.stderr.lines().rev().take(5).collect();
        return Err(format!(
            "debootstrap of the NFS guest from {mirror} failed: the guest build needs \
             the Debian mirror (network) once, then it is cached in /var/tmp: {}",
            tail.join(" | ")
        ));
    }
    let boot = root.join("boot");
    let mut kernel = None;
    let mut initrd = None;
    for e in std::fs::read_dir(&boot).map_err(|e| format!("{}: {e}", boot.display()))? {
        let e = e.map_err(|e| format!("{}: {e}", boot.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz-") {
            kernel = Some(e.path());
        } else if name.starts_with("initrd.img-") {
            initrd = Some(e.path());
        }
    }
    let (Some(kernel), Some(initrd)) = (kernel, initrd) else {
        return Err(format!(
            "{} holds no vmlinuz-* and initrd.img-*: did linux-image-amd64 install?",
            boot.display()
        ));
    };
    std::fs::copy(&kernel, dir.join("vmlinuz")).map_err(|e| format!("{e}"))?;
    std::fs::rename(&initrd, dir.join("initrd.img")).map_err(|e| format!("{e}"))?;
    for p in PRUNED {
        let _ = std::fs::remove_dir_all(root.join(p));
    }
    let modules = root.join("usr/lib/modules");
    for e in std::fs::read_dir(&modules).map_err(|e| format!("{}: {e}", modules.display()))? {
        let kdir = e.map_err(|e| format!("{e}"))?.path().join("kernel");
        for p in PRUNED_MODULES {
            let _ = std::fs::remove_dir_all(kdir.join(p));
        }
    }
    let init = root.join("init");
    std::fs::write(&init, STUB_INIT).map_err(|e| format!("{}: {e}", init.display()))?;
    set_mode(&init, 0o755)?;
    let img = dir.join("rootfs.img");
    mke2fs(&root, &img, "ext4", 1024)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Makes a file system image of `size_mb` holding `dir`, no loop mount.
fn mke2fs(dir: &Path, img: &Path, fs: &str, size_mb: u32) -> Result<(), String> {
    let size = format!("{size_mb}M");
    let r = run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            fs,
            "-d",
            &dir.to_string_lossy(),
            &img.to_string_lossy(),
            &size,
        ],
    );
    if r.code != 0 {
        return Err(format!(
            "mke2fs -d {} {}: {}",
            dir.display(),
            img.display(),
            r.stderr.trim()
        ));
    }
    Ok(())
}

/// Decodes standard base64 (whitespace ignored); `None` on anything else.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\n' | b'\r' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// What the console reader passes on.
enum Line {
    Text(String),
    /// QEMU exited (its stdout closed).
    Gone,
}

/// The booted guest; the QEMU process dies with the test process.
pub struct Bed {
    stdin: ChildStdin,
    lines: Receiver<Line>,
    next_id: u64,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    /// Seconds from starting QEMU to the guest's `ready`.
    pub boot_s: f64,
    /// The console log (every line the guest printed).
    pub log: PathBuf,
    /// Whether a command overran its bound; the bed is then unusable.
    broken: Option<String>,
    qemu: nix::unistd::Pid,
    _payload: Option<tempfile::TempDir>,
}

/// A finished guest command.
#[derive(Debug)]
pub struct GuestRun {
    /// The script's exit code.
    pub code: i32,
    /// Its output lines (stdout and stderr).
    pub lines: Vec<String>,
}

impl GuestRun {
    /// The values of the result lines `R KEY VALUE`, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("R "))
            .filter_map(|l| {
                let (k, v) = l.split_once(' ').unwrap_or((l, ""));
                (k == key).then(|| v.to_string())
            })
            .collect()
    }

    /// [`GuestRun::all`], which must hold exactly `n` values; panics,
    /// showing the output, when not.
    #[track_caller]
    pub fn exactly(&self, key: &str, n: usize) -> Vec<String> {
        let all = self.all(key);
        assert_eq!(all.len(), n, "results {key}:\n{}", self.text());
        all
    }

    /// The value of the one result line `R KEY VALUE`; panics, showing the
    /// output, when there is none.
    #[track_caller]
    pub fn get(&self, key: &str) -> String {
        self.all(key)
            .pop()
            .unwrap_or_else(|| panic!("no result {key}; the guest said:\n{}", self.text()))
    }

    /// [`GuestRun::get`] as a number.
    #[track_caller]
    pub fn num(&self, key: &str) -> f64 {
        let v = self.get(key);
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("result {key} is {v:?}, not a number:\n{}", self.text()))
    }

    /// The whole output, for failure messages.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Asserts exit code 0 and that the script left no process of the
    /// scenario users running (the guest ends them: tests/nfs/init.sh),
    /// showing the output when not.
    #[track_caller]
    pub fn ok(&self) -> &GuestRun {
        assert_eq!(self.code, 0, "guest script failed:\n{}", self.text());
        assert_eq!(
            self.all("leftover"),
            Vec::<String>::new(),
            "the script left processes running:\n{}",
            self.text()
        );
        self
    }

    /// The files of the share that the script's `dump NAME` printed,
    /// unpacked into a new temp dir (owners kept).
    #[track_caller]
    pub fn unpack_dump(&self) -> tempfile::TempDir {
        let start = self.lines.iter().position(|l| l == "R-TAR-BEGIN");
        let end = self.lines.iter().position(|l| l == "R-TAR-END");
        let (Some(s), Some(e)) = (start, end) else {
            panic!("no dump of the share in:\n{}", self.text());
        };
        let b64: String = self.lines[s + 1..e].concat();
        let tar = unbase64(&b64).expect("the dump is base64");
        let dir = tempfile::Builder::new()
            .prefix("kloigos-nfs-dump-")
            .tempdir()
            .expect("temp dir");
        let file = dir.path().join("dump.tar");
        std::fs::write(&file, tar).expect("write dump");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        crate::cmd::must(
            "tar",
            &[
                "-C",
                &shared.to_string_lossy(),
                "--numeric-owner",
                "-xf",
                &file.to_string_lossy(),
            ],
        );
        dir
    }
}

impl Bed {
    /// Boots the guest from `image` with the release binaries of
    /// `bin_dir`; KVM first when /dev/kvm is there, else (or when KVM does
    /// not reach the guest's init) TCG.
    pub fn boot(image: &Image, bin_dir: &Path) -> Result<Bed, String> {
        let payload = tempfile::Builder::new()
            .prefix("kloigos-nfs-payload-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let files = payload.path().join("files");
        let bins = files.join("bin");
        std::fs::create_dir_all(&bins).map_err(|e| format!("{}: {e}", bins.display()))?;
        for b in ["kloigos", "kloigos-housekeeper", "libpam_kloigos.so"] {
            let from = bin_dir.join(b);
            std::fs::copy(&from, bins.join(b)).map_err(|e| {
                format!(
                    "{}: {e} (the NFS bed runs the release binaries: \
                     cargo build --release --workspace, as ./tests/run.sh does)",
                    from.display()
                )
            })?;
        }
        for (name, text) in GUEST_SCRIPTS {
            std::fs::write(files.join(name), text).map_err(|e| format!("{name}: {e}"))?;
        }
        let config = serde_json::json!({
            "shared": "/nfs/kloigos",
            "service_user": "kloigos",
            "pam": { "on_error": "deny", "timeout_ms": PAM_TIMEOUT_MS, "cache_max_age_s": 600 },
            "cli": { "share_timeout_ms": SHARE_TIMEOUT_MS },
            "housekeeper": {
                "slices": "none",
                "nft": false,
                "kill": true,
                "grace_s": 0,
                "hooks_dir": null,
                "pass_deadline_s": 2
            }
        });
        std::fs::write(files.join("config.json"), config.to_string())
            .map_err(|e| format!("config.json: {e}"))?;
        let disk = payload.path().join("payload.img");
        mke2fs(&files, &disk, "ext2", 64)?;

        let log = std::env::temp_dir().join("kloigos-nfs-console.log");
        let _ = std::fs::remove_file(&log);
        let started = Instant::now();
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let mut attempts: Vec<&'static str> = Vec::new();
        if kvm {
            attempts.push("kvm");
        }
        attempts.push("tcg");
        let mut why = Vec::new();
        for accel in attempts {
            let (stdin, lines, qemu) = spawn_qemu(image, &disk, accel, &log)?;
            let mut bed = Bed {
                stdin,
                lines,
                next_id: 0,
                accel,
                boot_s: 0.0,
                log: log.clone(),
                broken: None,
                qemu,
                _payload: None,
            };
            let probe = if accel == "kvm" { KVM_PROBE } else { BOOT };
            match bed.wait_for("@@K init", probe) {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("nfs bed: {accel} did not reach the guest's init: {e}");
                    why.push(format!("{accel}: {e}"));
                    let _ = nix::sys::signal::kill(bed.qemu, nix::sys::signal::Signal::SIGKILL);
                    continue;
                }
            }
            eprintln!("nfs bed: the guest runs under {accel}");
            bed._payload = Some(payload);
            bed.wait_for("@@K ready", BOOT.saturating_sub(started.elapsed()))
                .map_err(|e| {
                    format!(
                        "the guest under {accel} did not get ready: {e} (console: {})",
                        log.display()
                    )
                })?;
            bed.boot_s = started.elapsed().as_secs_f64();
            eprintln!("nfs bed: ready in {:.1} s under {accel}", bed.boot_s);
            return Ok(bed);
        }
        Err(format!("the guest did not boot: {}", why.join("; ")))
    }

    /// Reads console lines until one starts with `marker`, or a guest
    /// failure, QEMU's exit or `bound` passes.
    fn wait_for(&mut self, marker: &str, bound: Duration) -> Result<(), String> {
        let deadline = Instant::now() + bound;
        let mut last = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Line::Text(l)) => {
                    if l.starts_with(marker) {
                        return Ok(());
                    }
                    if let Some(why) = l.strip_prefix("@@K fail ") {
                        return Err(format!("the guest failed: {why}"));
                    }
                    if let Some(step) = l.strip_prefix("@@K step ") {
                        eprintln!("nfs bed: {step}");
                    }
                    last.push(l);
                    if last.len() > 20 {
                        last.remove(0);
                    }
                }
                Ok(Line::Gone) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("QEMU exited; last lines:\n{}", last.join("\n")))
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "nothing after {} s; last lines:\n{}",
                        bound.as_secs(),
                        last.join("\n")
                    ))
                }
            }
        }
    }

    /// Runs `script` in the guest (after `tests/nfs/lib.sh`), bounded by
    /// `bound`; the guest scripts bound their own waits well inside it.
    pub fn sh(&mut self, script: &str, bound: Duration) -> GuestRun {
        if let Some(why) = &self.broken {
            panic!("the NFS bed is unusable: {why}");
        }
        self.next_id += 1;
        let id = self.next_id;
        let full = format!("set -u\n. /payload/lib.sh\n{script}\n");
        let line = format!("{id} {}\n", base64(full.as_bytes()));
        if let Err(e) = self
            .stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush())
        {
            self.broken = Some(format!("writing to the console: {e}"));
            panic!("writing to the guest's console: {e}");
        }
        let end = format!("@@K end {id} ");
        let deadline = Instant::now() + bound;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Line::Text(l)) => {
                    if let Some(rc) = l.strip_prefix(&end) {
                        let code = rc.trim().parse().unwrap_or(-1);
                        return GuestRun { code, lines };
                    }
                    lines.push(l);
                }
                Ok(Line::Gone) | Err(RecvTimeoutError::Disconnected) => {
                    self.broken = Some("QEMU exited".into());
                    panic!("QEMU exited during a guest command:\n{}", lines.join("\n"));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let why = format!("a guest command ran past {} s", bound.as_secs());
                    self.broken = Some(why.clone());
                    panic!("{why}; its output so far:\n{}", lines.join("\n"));
                }
            }
        }
    }
}

/// Starts QEMU in a thread that lives as long as the test process: QEMU is
/// started through `setpriv --pdeathsig KILL`, so it dies with that thread
/// (the process), never outliving the tests.
fn spawn_qemu(
    image: &Image,
    disk: &Path,
    accel: &'static str,
    log: &Path,
) -> Result<(ChildStdin, Receiver<Line>, nix::unistd::Pid), String> {
    let d = &image.dir;
    let mut args: Vec<String> = vec!["--pdeathsig".into(), "KILL".into(), "--".into()];
    args.push("qemu-system-x86_64".into());
    let accel_args: &[&str] = if accel == "kvm" {
        &["-accel", "kvm", "-cpu", "host"]
    } else {
        &["-accel", "tcg", "-cpu", "max"]
    };
    args.extend(accel_args.iter().map(|s| s.to_string()));
    args.extend(
        [
            "-m",
            "1536",
            "-smp",
            "2",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-kernel",
        ]
        .map(String::from),
    );
    args.push(d.join("vmlinuz").to_string_lossy().into());
    args.push("-initrd".into());
    args.push(d.join("initrd.img").to_string_lossy().into());
    args.push("-append".into());
    args.push(
        "root=/dev/vda rootfstype=ext4 rw console=ttyS0 init=/init quiet loglevel=1 panic=-1"
            .into(),
    );
    args.push("-drive".into());
    args.push(format!(
        "file={},if=virtio,format=raw,snapshot=on",
        d.join("rootfs.img").display()
    ));
    args.push("-drive".into());
    args.push(format!(
        "file={},if=virtio,format=raw,readonly=on",
        disk.display()
    ));

    let (ready_tx, ready_rx) = channel();
    let (line_tx, line_rx) = channel();
    let log = log.to_path_buf();
    std::thread::Builder::new()
        .name(format!("qemu-{accel}"))
        .spawn(move || {
            let spawned = Command::new("setpriv")
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let mut child: Child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start QEMU: {e}")));
                    return;
                }
            };
            let stdout = child.stdout.take().expect("piped stdout");
            let stdin = child.stdin.take().expect("piped stdin");
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = ready_tx.send(Ok((stdin, pid)));
            let mut logf = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .ok();
            for l in BufReader::new(stdout).split(b'\n') {
                let Ok(l) = l else { break };
                let text = String::from_utf8_lossy(&l)
                    .trim_end_matches('\r')
                    .to_string();
                if let Some(f) = logf.as_mut() {
                    let _ = writeln!(f, "{text}");
                }
                if line_tx.send(Line::Text(text)).is_err() {
                    break;
                }
            }
            let _ = line_tx.send(Line::Gone);
            // This thread is QEMU's parent until the process ends: its
            // exit would kill QEMU (pdeathsig follows the thread).
            let _ = child.wait();
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let (stdin, pid) = ready_rx
        .recv()
        .map_err(|_| "the QEMU thread ended".to_string())??;
    Ok((stdin, line_rx, pid))
}

/// Why there is no bed.
#[derive(Debug, Clone)]
pub enum BedError {
    /// Something the bed needs is not here (a program, the Debian mirror
    /// for the first build, the release binaries): the test skips, and
    /// fails under CI.
    Missing(String),
    /// The guest did not boot or get ready: a failure.
    Broken(String),
}

/// The one bed of this test process, booted by the first test that asks;
/// the tests take turns on it.
pub fn bed() -> Result<MutexGuard<'static, Bed>, BedError> {
    static BED: OnceLock<Result<Mutex<Bed>, BedError>> = OnceLock::new();
    let bed = BED.get_or_init(|| {
        let image = image().map_err(BedError::Missing)?;
        let release = release_dir();
        for b in ["kloigos", "kloigos-housekeeper", "libpam_kloigos.so"] {
            if !release.join(b).exists() {
                return Err(BedError::Missing(format!(
                    "{} is missing: the NFS bed runs the release binaries \
                     (cargo build --release --workspace; ./tests/run.sh builds them first)",
                    release.join(b).display()
                )));
            }
        }
        Bed::boot(&image, &release)
            .map(Mutex::new)
            .map_err(BedError::Broken)
    });
    match bed {
        Ok(m) => Ok(m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())),
        Err(e) => Err(e.clone()),
    }
}

/// Where the release binaries are: `KLOIGOS_RELEASE_DIR`, else the
/// `release` directory next to the running test's profile directory.
pub fn release_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KLOIGOS_RELEASE_DIR") {
        return PathBuf::from(d);
    }
    let dir = crate::bin_dir();
    dir.parent()
        .map(|p| p.join("release"))
        .unwrap_or_else(|| dir.join("release"))
}

#[cfg(test)]
mod tests {
    use super::{base64, unbase64};

    #[test]
    fn base64_round_trips_every_length() {
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"f"), "Zg==");
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unbase64(&base64(&data)).unwrap(), data);
        }
        assert!(unbase64("Zm9v!").is_none());
    }
}
