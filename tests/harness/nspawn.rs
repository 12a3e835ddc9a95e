//! A Debian container with a real systemd as PID 1, for tests of parts
//! that talk to systemd (PID 1 of the test machine is not systemd).
//!
//! The root file system is built once with debootstrap (minbase + systemd,
//! systemd-sysv, dbus, from the host's configured Debian mirror) and cached
//! outside the repository in `/var/cache/kloigos-test/rootfs`
//! (`KLOIGOS_TEST_ROOTFS` overrides); each container boots it with
//! `--volatile=overlay`, so runs never change the cache.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd::{run, Run};
use crate::poll::wait_until;

/// Where the cached root file system lives.
pub fn rootfs_path() -> PathBuf {
    std::env::var_os("KLOIGOS_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kloigos-test/rootfs"))
}

/// The Debian mirror apt uses on this host (deb822 or one-line sources).
fn mirror() -> String {
    for f in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            let line = line.trim();
            let url = if let Some(u) = line.strip_prefix("URIs:") {
                u.split_whitespace().next()
            } else if line.starts_with("deb ") {
                line.split_whitespace().find(|w| w.starts_with("http"))
            } else {
                None
            };
            if let Some(u) = url.filter(|u| u.ends_with("/debian") || u.ends_with("/debian/")) {
                return u.to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// The cached root file system, built if missing. `Err` says why a
/// container cannot be had here (the test then prints SKIPPED).
pub fn rootfs() -> Result<PathBuf, String> {
    let root = rootfs_path();
    if root.join("usr/lib/systemd/systemd").exists() {
        return Ok(root);
    }
    for tool in ["debootstrap", "systemd-nspawn", "nsenter"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).code != 0 {
            return Err(format!(
                "{tool} is not installed (tests/apt-packages.txt lists it)"
            ));
        }
    }
    let tmp = root.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mirror = mirror();
    eprintln!(
        "building the container root file system in {} from {mirror} (once, ~1 min)",
        root.display()
    );
    let r = run(
        "debootstrap",
        &[
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus",
            "bookworm",
            &tmp.to_string_lossy(),
            &mirror,
        ],
    );
    if r.code != 0 {
        let _ = std::fs::remove_dir_all(&tmp);
        let tail: String = r
            .stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(format!(
            "debootstrap from {mirror} failed (mirror unreachable?): {tail}"
        ));
    }
    std::fs::rename(&tmp, &root).map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(root)
}

/// A booted container; powered off (and killed if need be) on drop.
pub struct Container {
    nspawn: Child,
    /// PID of the container's systemd, as seen from the host.
    pub leader: i32,
    /// The machine name.
    pub name: String,
}

impl Container {
    /// Boots `rootfs` with `binds` (host path, container path, read-only)
    /// and waits until systemd reports the system up.
    pub fn boot(
        rootfs: &Path,
        name: &str,
        binds: &[(&Path, &str, bool)],
    ) -> Result<Container, String> {
        let mut c = Command::new("systemd-nspawn");
        c.arg("-D")
            .arg(rootfs)
            .args([
                "--volatile=overlay",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=pipe",
            ])
            .arg(format!("--machine={name}"));
        for (host, inside, ro) in binds {
            let flag = if *ro { "--bind-ro" } else { "--bind" };
            c.arg(format!("{flag}={}:{inside}", host.display()));
        }
        let nspawn = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start systemd-nspawn: {e}"))?;
        let mut me = Container {
            leader: 0,
            nspawn,
            name: name.into(),
        };
        let pid = me.nspawn.id();
        // nspawn's first child is a short-lived helper; the leader is the
        // child that runs systemd.
        let found = wait_until(Duration::from_secs(30), || {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for p in children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    me.leader = p;
                    return true;
                }
            }
            false
        });
        if !found {
            return Err("systemd-nspawn started no container within 30 s".into());
        }
        let up = wait_until(Duration::from_secs(60), || {
            let s = me.exec(&["systemctl", "is-system-running"]).stdout;
            s.contains("running") || s.contains("degraded")
        });
        if !up {
            return Err("the container's systemd did not come up within 60 s".into());
        }
        Ok(me)
    }

    /// Runs a program inside the container (all its namespaces), no shell.
    pub fn exec(&self, argv: &[&str]) -> Run {
        let t = self.leader.to_string();
        let mut args = vec!["-t", t.as_str(), "-a", "--"];
        args.extend_from_slice(argv);
        run("nsenter", &args)
    }

    /// `systemctl show UNIT -p P...` as a map of property to value.
    pub fn show(&self, unit: &str, props: &[&str]) -> std::collections::BTreeMap<String, String> {
        let mut argv = vec!["systemctl", "show", unit];
        for p in props {
            argv.push("-p");
            argv.push(p);
        }
        self.exec(&argv)
            .stdout
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.exec(&["systemctl", "poweroff", "--no-block"]);
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let done = wait_until(Duration::from_secs(15), || {
            matches!(self.nspawn.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.nspawn.wait();
        }
    }
}
