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
pub fn mirror() -> String {
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

/// The host's cgroup v1 cpuset hierarchy, where there is one.
const HOST_CPUSET: &str = "/sys/fs/cgroup/cpuset";

/// A booted container; powered off (and killed if need be) on drop.
pub struct Container {
    nspawn: Child,
    /// PID of the container's systemd, as seen from the host.
    pub leader: i32,
    /// The machine name.
    pub name: String,
    /// The host's v1 cpuset group the container runs in, and the root of
    /// its cpuset hierarchy (see [`Container::boot_in_own_cpuset`]).
    pub cpuset_group: Option<PathBuf>,
}

impl Container {
    /// Boots `rootfs` with `binds` (host path, container path, read-only)
    /// and waits until systemd reports the system up.
    pub fn boot(
        rootfs: &Path,
        name: &str,
        binds: &[(&Path, &str, bool)],
    ) -> Result<Container, String> {
        Container::boot_with(rootfs, name, binds, None, &[], &[])
    }

    /// [`Container::boot`] for programs that use cgroup v2 device programs:
    /// systemd inside runs on the unified hierarchy alone (so it attaches
    /// device programs of its own, as on a current systemd node), and
    /// bpf(2) is allowed to the container's services (systemd-nspawn's
    /// seccomp filter refuses it with EPERM otherwise; CAP_SYS_ADMIN and
    /// CAP_NET_ADMIN, which loading and attaching need, are in its default
    /// set).
    pub fn boot_unified_with_bpf(
        rootfs: &Path,
        name: &str,
        binds: &[(&Path, &str, bool)],
    ) -> Result<Container, String> {
        Container::boot_with(
            rootfs,
            name,
            binds,
            None,
            &["--system-call-filter=bpf"],
            &[("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")],
        )
    }

    /// [`Container::boot`], but where the host has a cgroup v1 cpuset
    /// hierarchy, in a cpuset group of its own
    /// (`/sys/fs/cgroup/cpuset/kloigos-test-NAME`, all CPUs and memory
    /// nodes), removed on drop. The container's cgroup namespace is rooted
    /// there, so whatever it does in its cpuset hierarchy stays inside that
    /// group and never meets the host's or another test's groups.
    pub fn boot_in_own_cpuset(
        rootfs: &Path,
        name: &str,
        binds: &[(&Path, &str, bool)],
    ) -> Result<Container, String> {
        let host = Path::new(HOST_CPUSET);
        if !host.join("cpuset.cpus").exists() {
            return Container::boot(rootfs, name, binds);
        }
        let group = host.join(format!("kloigos-test-{name}"));
        remove_cpuset_tree(&group);
        std::fs::create_dir(&group).map_err(|e| format!("{}: {e}", group.display()))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let all = std::fs::read_to_string(host.join(f)).map_err(|e| format!("{f}: {e}"))?;
            std::fs::write(group.join(f), all.trim())
                .map_err(|e| format!("{}: {e}", group.join(f).display()))?;
        }
        let booted = Container::boot_with(rootfs, name, binds, Some(group.clone()), &[], &[]);
        if booted.is_err() {
            remove_cpuset_tree(&group);
        }
        booted
    }

    /// `extra`: more nspawn arguments; `env`: variables for its environment.
    fn boot_with(
        rootfs: &Path,
        name: &str,
        binds: &[(&Path, &str, bool)],
        cpuset_group: Option<PathBuf>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Container, String> {
        let mut args: Vec<String> = vec!["-D".into(), rootfs.to_string_lossy().into()];
        args.extend(
            [
                "--volatile=overlay",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=pipe",
            ]
            .map(String::from),
        );
        args.push(format!("--machine={name}"));
        for (host, inside, ro) in binds {
            let flag = if *ro { "--bind-ro" } else { "--bind" };
            args.push(format!("{flag}={}:{inside}", host.display()));
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut c = match &cpuset_group {
            // The shell joins the group, then becomes nspawn (same pid), so
            // the container is created inside the group.
            Some(g) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$0\" && exec systemd-nspawn \"$@\"")
                    .arg(g.join("cgroup.procs"))
                    .args(&args);
                c
            }
            None => {
                let mut c = Command::new("systemd-nspawn");
                c.args(&args);
                c
            }
        };
        c.envs(env.iter().copied());
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
            cpuset_group,
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

    /// [`Container::exec`], which must succeed (else the test fails, with
    /// the program's output).
    pub fn must(&self, argv: &[&str]) -> Run {
        let r = self.exec(argv);
        assert_eq!(
            r.code, 0,
            "{argv:?} in the container: {}{}",
            r.stdout, r.stderr
        );
        r
    }

    /// Runs `argv` as a transient service of the container's systemd (so
    /// under nspawn's seccomp filter and capabilities, as the container's
    /// own programs run), with `systemd-run` options `opts` (such as
    /// `--uid=`, `--slice=`), waiting for it; it must succeed.
    pub fn service(&self, opts: &[&str], argv: &[&str]) -> Run {
        let run = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect"];
        self.must(&[&run[..], opts, argv].concat())
    }

    /// Remounts the container's cgroup v1 cpuset hierarchy read-write.
    /// systemd-nspawn mounts the host's v1 controller hierarchies read-only;
    /// on a real hybrid host systemd mounts them read-write. Only the mount
    /// flags change (a bind remount); with [`Container::boot_in_own_cpuset`]
    /// the hierarchy is the container's own group.
    pub fn cpuset_writable(&self) -> Result<(), String> {
        let t = self.leader.to_string();
        let r = run(
            "nsenter",
            &[
                "-t",
                &t,
                "-m",
                "--",
                "mount",
                "-o",
                "remount,bind,rw,nosuid,nodev,noexec",
                "/sys/fs/cgroup/cpuset",
            ],
        );
        if r.code != 0 {
            return Err(format!(
                "remounting /sys/fs/cgroup/cpuset read-write in the container: {}",
                r.stderr
            ));
        }
        Ok(())
    }

    /// Reads a file inside the container (empty if it cannot be read).
    pub fn read(&self, path: &str) -> String {
        self.exec(&["cat", path]).stdout
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
        if let Some(g) = &self.cpuset_group {
            // The container's last tasks may still be exiting.
            wait_until(Duration::from_secs(10), || {
                remove_cpuset_tree(g);
                !g.exists()
            });
        }
    }
}

/// Removes a v1 cpuset group and the groups under it, deepest first, moving
/// any task left in them to the root group.
fn remove_cpuset_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cpuset_tree(&e.path());
            }
        }
    }
    for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
    {
        let _ = std::fs::write(Path::new(HOST_CPUSET).join("cgroup.procs"), pid);
    }
    let _ = std::fs::remove_dir(dir);
}
