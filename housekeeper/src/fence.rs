//! The GPU fence on cgroup v1: each managed user with processes gets
//! `kloigos/user-UID` in the v1 devices hierarchy (under PID 1's group),
//! with `devices.deny` for the minors of GPUs they do not hold and
//! `devices.allow` for those they do (kloigos-core's [`fence::plan`]). The
//! group keeps the kernel's open default, so no other device changes; the
//! rules are written before any process is moved in, so a process never
//! sits in the group without them. Then the user's processes not yet in the
//! group are moved in; their children are born there.
//!
//! The v1 device controller cannot show its exceptions while the default is
//! "allow" (`devices.list` says `a *:* rwm`), so the rules are written on
//! every pass for every such user: a few small writes, no program run. A
//! node without GPUs in its inventory does nothing here at all.
//!
//! The kernel checks a device at open, so a GPU opened before the fence
//! tightened (under a booking that has ended, or before the first pass)
//! stays usable: such strays are found by the device number behind each
//! open file of the users' processes (`/proc/PID/fd`), warned on their
//! users' terminals, and ended `grace_s` later.
//!
//! What this does not cover: cgroup v2 (a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program), and a process forked between the pass's /proc scan and the
//! move (it is moved on the next pass).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use kloigos_core::config::GpuConfig;
use kloigos_core::enforce::{ProcOwner, Rules};
use kloigos_core::fence::{self, DevNum, DeviceRules, Holder};
use kloigos_core::ids::Uid;
use kloigos_core::state::NodeState;

use crate::error::{Error, Result};
use crate::procfs::{self, Proc};
use crate::record::Record;

/// The most open files looked at per process when looking for strays.
pub const MAX_FDS: usize = 65_536;

/// The v1 devices hierarchy's group for kloigos: `<mount>/<PID 1's group>/kloigos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    group: PathBuf,
    /// Whether other controllers share the hierarchy (then groups are
    /// left for the slice backend to remove).
    shared: bool,
}

impl Devices {
    /// Finds the v1 devices hierarchy from the mount table and PID 1's
    /// cgroups; `None` when there is none.
    pub fn locate(mountinfo: &str, pid1: &str) -> Option<Devices> {
        let (mount, root, opts) = mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split_whitespace().skip(3);
            let (root, mount) = (l.next()?, l.next()?);
            let mut r = right.split_whitespace();
            let (fstype, _src, opts) = (r.next()?, r.next()?, r.next()?);
            (fstype == "cgroup" && opts.split(',').any(|o| o == "devices"))
                .then(|| (PathBuf::from(mount), root.to_string(), opts.to_string()))
        })?;
        let rel = pid1
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                ctrls.split(',').any(|c| c == "devices").then_some(path)
            })
            .unwrap_or("/");
        // Inside a container the mount's root is PID 1's group already.
        let rel = rel.strip_prefix(root.as_str()).unwrap_or(rel);
        let rel = rel.trim_start_matches('/');
        let base = if rel.is_empty() {
            mount
        } else {
            mount.join(rel)
        };
        let shared = opts
            .split(',')
            .any(|o| ["cpuset", "memory", "pids"].contains(&o));
        Some(Devices {
            group: base.join("kloigos"),
            shared,
        })
    }

    /// The hierarchy of this host.
    pub fn here() -> Result<Option<Devices>> {
        let read = |p: &str| fs::read_to_string(p).map_err(|e| Error::io(p, e));
        Ok(Devices::locate(
            &read("/proc/self/mountinfo")?,
            &read("/proc/1/cgroup")?,
        ))
    }

    /// The group of `uid`.
    pub fn user_dir(&self, uid: Uid) -> PathBuf {
        self.group.join(format!("user-{uid}"))
    }

    /// Writes `rules` into `uid`'s group (created if missing), then moves
    /// `pids` that are not in it yet. Returns how many were moved.
    pub fn set(&self, uid: Uid, rules: &DeviceRules, pids: &[i32]) -> Result<usize> {
        let dir = self.user_dir(uid);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let (deny, allow) = rules.v1_lines();
        for (file, lines) in [("devices.deny", deny), ("devices.allow", allow)] {
            let path = dir.join(file);
            for l in lines {
                fs::write(&path, &l).map_err(|e| Error::io(&path, e))?;
            }
        }
        let procs = dir.join("cgroup.procs");
        let inside = pids_in(&procs)?;
        let mut moved = 0;
        for pid in pids.iter().filter(|p| !inside.contains(p)) {
            match fs::write(&procs, pid.to_string()) {
                Ok(()) => moved += 1,
                // Gone since the scan.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(Error::io(&procs, e)),
            }
        }
        Ok(moved)
    }

    /// Lifts the fence of users not in `keep`: the processes left in their
    /// groups (an account no longer managed, such as a new bypass user, or
    /// a process started since the scan) go back to the parent group, and
    /// the groups are removed. Returns their uids. Where other controllers
    /// share the hierarchy, the slice backend owns the groups: left alone.
    pub fn prune(&self, keep: &[Uid]) -> Result<Vec<Uid>> {
        if self.shared {
            return Ok(Vec::new());
        }
        self.remove_groups(keep)
    }

    /// Every group removed, its processes back in the parent group
    /// (`--uninstall`); returns their uids.
    pub fn remove_all(&self) -> Result<Vec<Uid>> {
        let uids = self.remove_groups(&[])?;
        if !self.shared {
            // Busy or already gone: left for the slice backend or nobody.
            let _ = fs::remove_dir(&self.group);
        }
        Ok(uids)
    }

    fn remove_groups(&self, keep: &[Uid]) -> Result<Vec<Uid>> {
        let parent = self
            .group
            .parent()
            .unwrap_or(&self.group)
            .join("cgroup.procs");
        let entries = match fs::read_dir(&self.group) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.group, e)),
        };
        let mut uids = Vec::new();
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.group, e))?;
            let Some(uid) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("user-"))
                .and_then(|n| n.parse::<Uid>().ok())
            else {
                continue;
            };
            if keep.contains(&uid) {
                continue;
            }
            let dir = self.user_dir(uid);
            for pid in pids_in(&dir.join("cgroup.procs"))? {
                match fs::write(&parent, pid.to_string()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(Error::io(&parent, e)),
                }
            }
            match fs::remove_dir(&dir) {
                Ok(()) => uids.push(uid),
                // A process forked into it meanwhile: the next pass.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&dir, e)),
            }
        }
        Ok(uids)
    }
}

/// `--uninstall`: lifts the fence of every user (logged).
pub fn uninstall() {
    match Devices::here() {
        Ok(Some(d)) => match d.remove_all() {
            Ok(uids) if uids.is_empty() => {}
            Ok(uids) => crate::log::event(&format!("GPU fence removed for uid(s) {uids:?}")),
            Err(e) => crate::log::error(&format!("removing the GPU fence: {e}")),
        },
        Ok(None) => {}
        Err(e) => crate::log::error(&format!("removing the GPU fence: {e}")),
    }
}

/// The pids listed in a `cgroup.procs` file.
fn pids_in(path: &Path) -> Result<Vec<i32>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The processes of the users in `plan` holding one of `gpus` open.
fn holders(
    plan: &std::collections::BTreeMap<Uid, DeviceRules>,
    gpus: &BTreeSet<DevNum>,
    procs: &[Proc],
) -> Vec<Holder> {
    let mut out = Vec::new();
    for p in procs.iter().filter(|p| p.is_live()) {
        let Some(uid) = p.uids.iter().find(|u| plan.contains_key(u)) else {
            continue;
        };
        // Gone, or a kernel thread: nothing held.
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", p.pid)) else {
            continue;
        };
        let mut held = BTreeSet::new();
        for fd in fds.take(MAX_FDS).flatten() {
            let Ok(m) = fs::metadata(fd.path()) else {
                continue;
            };
            let dev = DevNum::from_rdev(m.rdev());
            if m.file_type().is_char_device() && gpus.contains(&dev) {
                held.insert(dev);
            }
        }
        if held.is_empty() {
            continue;
        }
        let Some(start) = start_time(p.pid) else {
            continue;
        };
        out.extend(held.into_iter().map(|dev| Holder {
            pid: p.pid,
            start,
            uid: *uid,
            dev,
        }));
    }
    out
}

/// A process's start time (`/proc/PID/stat` field 22), to tell it from a
/// later process given the same pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Warns about the strays seen first, ends those past their grace (when
/// `end` allows), and remembers the rest in `record`.
fn handle_strays(s: fence::Strays, end: bool, grace_s: u64, procs: &[Proc], record: &mut Record) {
    for h in &s.warn {
        let msg = format!(
            "kloigos: your process {} holds GPU device {}:{} open, which you do not hold (any more); it will be ended in {} s",
            h.pid, h.dev.major, h.dev.minor, grace_s
        );
        let n = crate::warn::to_terminals(h.uid, procs, &msg);
        crate::log::event(&format!(
            "GPU stray: process {} of uid {} holds device {}:{} it does not hold; warned ({n} terminal(s)), ended after {grace_s} s",
            h.pid, h.uid, h.dev.major, h.dev.minor
        ));
    }
    let mut seen = s.seen_next;
    for h in s.end {
        if !end {
            seen.insert(
                h.key(),
                record.gpu_strays.get(&h.key()).copied().unwrap_or_default(),
            );
            continue;
        }
        // The pid still names the process seen, not a newcomer.
        if start_time(h.pid) != Some(h.start) {
            continue;
        }
        let pid = nix::unistd::Pid::from_raw(h.pid);
        match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            Ok(()) => crate::log::event(&format!(
                "GPU stray: ended process {} of uid {} (held device {}:{})",
                h.pid, h.uid, h.dev.major, h.dev.minor
            )),
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => crate::log::error(&format!(
                "GPU stray: ending process {} of uid {}: {e}",
                h.pid, h.uid
            )),
        }
    }
    record.gpu_strays = seen;
}

/// One pass of the fence: the inventory, the plan, the groups, the
/// strays. Errors are logged; only a stray past its grace is ended.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    cfg: &GpuConfig,
    grace_s: u64,
    rules: &Rules,
    state: &NodeState,
    now: Timestamp,
    owners: &[ProcOwner],
    procs: &[Proc],
    record: &mut Record,
) {
    if !cfg.fence {
        return;
    }
    let gpus = match crate::gpu::inventory(cfg) {
        Ok(g) if g.is_empty() => return,
        Ok(g) => g,
        Err(e) => {
            // The rules already in the kernel stay as they are.
            crate::log::error(&format!("GPU fence not updated: inventory: {e}"));
            return;
        }
    };
    let plan = fence::plan(rules, state, now, &gpus, owners);
    let dev = match Devices::here() {
        Ok(Some(d)) => d,
        Ok(None) => {
            crate::log::error(
                "GPU fence not applied: no cgroup v1 devices hierarchy on this host (cgroup v2 is not supported yet)",
            );
            return;
        }
        Err(e) => {
            crate::log::error(&format!("GPU fence not applied: {e}"));
            return;
        }
    };
    for (uid, r) in &plan {
        let pids = procfs::live_pids(procs, *uid);
        match dev.set(*uid, r, &pids) {
            Ok(0) => {}
            Ok(n) => crate::log::note(&format!(
                "GPU fence: moved {n} process(es) of uid {uid} into {} (GPU minors open: {:?})",
                dev.user_dir(*uid).display(),
                r.allow
            )),
            Err(e) => crate::log::error(&format!("GPU fence of uid {uid}: {e}")),
        }
    }
    let keep: Vec<Uid> = plan.keys().copied().collect();
    if let Err(e) = dev.prune(&keep) {
        crate::log::error(&format!("GPU fence: removing groups: {e}"));
    }
    let numbers: BTreeSet<DevNum> = gpus.iter().map(DevNum::of).collect();
    let found = holders(&plan, &numbers, procs);
    let s = fence::strays(&plan, &found, &record.gpu_strays, grace_s, now);
    handle_strays(s, cfg.end_strays, grace_s, procs, record);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::uid;

    const MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    #[test]
    fn the_devices_hierarchy_is_found_under_pid1s_group() {
        let d = Devices::locate(MOUNTS, "5:devices:/\n3:cpuset:/\n0::/\n").unwrap();
        assert_eq!(
            d.user_dir(uid(7)),
            PathBuf::from("/sys/fs/cgroup/devices/kloigos/user-7")
        );
        assert!(!d.shared);
        let d = Devices::locate(MOUNTS, "5:devices:/lxc/box\n").unwrap();
        assert_eq!(
            d.group,
            PathBuf::from("/sys/fs/cgroup/devices/lxc/box/kloigos")
        );
        // A container whose mount's root is its own group.
        let inner =
            "36 31 0:33 /lxc/box /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices,cpuset";
        let d = Devices::locate(inner, "5:devices,cpuset:/lxc/box\n").unwrap();
        assert_eq!(d.group, PathBuf::from("/sys/fs/cgroup/devices/kloigos"));
        assert!(d.shared);
        assert_eq!(
            Devices::locate(
                "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw",
                "0::/\n"
            ),
            None
        );
    }
}
