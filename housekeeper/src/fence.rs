//! The GPU fence: each managed user with processes may open the device
//! nodes of the GPUs they hold and no other GPU's (kloigos-core's
//! [`fence::plan`] decides which numbers). Two backends, chosen by
//! `housekeeper.gpu.fence_backend` (`auto`: v1 where its devices
//! hierarchy is mounted read-write, else v2; a host with neither is
//! reported on every pass and left unfenced):
//!
//! **cgroup v1** ([`Devices`]): `kloigos/user-UID` in the v1 devices
//! hierarchy (under PID 1's group), with `devices.deny` for the minors of
//! GPUs they do not hold and `devices.allow` for those they do. The group
//! keeps the kernel's open default, so no other device changes; the rules
//! are written before any process is moved in, so a process never sits in
//! the group without them. Then the user's processes not yet in the group
//! are moved in; their children are born there. The v1 controller cannot
//! show its exceptions while the default is "allow" (`devices.list` says
//! `a *:* rwm`), so the rules are written on every pass for every such
//! user: a few small writes, no program run.
//!
//! **cgroup v2** ([`Bpf`]): v2 has no device files; the kernel asks the
//! `BPF_PROG_TYPE_CGROUP_DEVICE` programs attached to a process's group and
//! its ancestors instead. The program (kloigos-core's [`devprog`], raw
//! instructions: no compiler or libbpf on the node) refuses the user's
//! denied GPU numbers and accepts every other device, as Slurm's does; it
//! is attached with `BPF_F_ALLOW_MULTI`, so it runs beside systemd's own
//! device programs and never turns the group into a closed device policy
//! (`/dev/fuse`, `/dev/kvm` and the rest keep working). It is named
//! `kloigos_gpu`, so a pass tells its own attachments from systemd's. Where
//! it is attached:
//! - on a systemd node, to the user's `user.slice/user-UID.slice`, which
//!   holds their sessions and user manager; the slice properties the slice
//!   backend sets live in the same unit, and systemd detaches only the
//!   programs it attached itself, so `daemon-reload` leaves the fence be.
//!   A slice that systemd removed (the user's last session ended) takes
//!   the program with it; the recreated slice gets one at the next pass.
//! - elsewhere (such as a hybrid host whose PID 1 is not systemd), to
//!   `kloigos/user-UID` under PID 1's group on the cgroup2 mount, where the
//!   processes are then moved as in v1 (the program first, so no process
//!   sits there unfenced).
//!
//! When `fence_backend` changes, a pass lifts what the other backend left
//! (its groups, or its programs), so stale rules never shut a GPU booked
//! since.
//!
//! The record keeps the id and deny list of the program attached for each
//! user: an idle pass asks the kernel only which programs a group has (one
//! `BPF_PROG_QUERY` per user) and changes nothing when its own is there
//! with the same list. On a change the new program is attached before the
//! old ones (found by name) are detached, so there is never a moment
//! without a fence.
//!
//! The kernel checks a device at open, so a GPU opened before the fence
//! tightened (under a booking that has ended, or before the first pass)
//! stays usable: such strays are found by the device number behind each
//! open file of the users' processes (`/proc/PID/fd`), warned on their
//! users' terminals, and ended `grace_s` later.
//!
//! What this does not cover: a process forked between the pass's /proc
//! scan and the move (it is moved on the next pass), and on a systemd node
//! a process of the user's outside their slice (a system service started
//! for them), or a slice created since the last pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use kloigos_core::config::{FenceBackend, GpuConfig};
use kloigos_core::devprog;
use kloigos_core::enforce::{ProcOwner, Rules};
use kloigos_core::fence::{self, DevNum, DeviceRules, Holder};
use kloigos_core::ids::Uid;
use kloigos_core::state::NodeState;
use serde::{Deserialize, Serialize};

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
    /// Whether the hierarchy is mounted read-only (as systemd-nspawn
    /// mounts the host's v1 hierarchies): then `auto` does not pick it.
    read_only: bool,
}

impl Devices {
    /// Finds the v1 devices hierarchy from the mount table and PID 1's
    /// cgroups; `None` when there is none.
    pub fn locate(mountinfo: &str, pid1: &str) -> Option<Devices> {
        let (mount, root, opts, read_only) = mountinfo.lines().find_map(|line| {
            let m = Mount::parse(line)?;
            (m.fstype == "cgroup" && m.opts.split(',').any(|o| o == "devices")).then_some((
                m.mount,
                m.root,
                m.opts,
                m.read_only,
            ))
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
            read_only,
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
        move_in(&dir, pids)
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

/// Moves `pids` not yet in the group `dir` into it; returns how many.
fn move_in(dir: &Path, pids: &[i32]) -> Result<usize> {
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

/// One line of `/proc/self/mountinfo`, the fields used here.
struct Mount {
    root: String,
    mount: PathBuf,
    read_only: bool,
    fstype: String,
    opts: String,
}

impl Mount {
    fn parse(line: &str) -> Option<Mount> {
        // id parent dev root mountpoint options ... " - " fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let mut l = left.split_whitespace().skip(3);
        let (root, mount, mopts) = (l.next()?, l.next()?, l.next()?);
        let mut r = right.split_whitespace();
        let (fstype, _src, opts) = (r.next()?, r.next()?, r.next()?);
        Some(Mount {
            root: root.to_string(),
            mount: PathBuf::from(mount),
            read_only: mopts.split(',').any(|o| o == "ro"),
            fstype: fstype.to_string(),
            opts: opts.to_string(),
        })
    }
}

/// The device program attached for one user, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// The program's kernel id.
    pub id: u32,
    /// The device numbers it denies, `(major, minor)`.
    pub deny: Vec<(u32, u32)>,
}

/// Where the cgroup v2 fence attaches its programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `kloigos/user-UID` groups of the housekeeper's own, processes moved in.
    Own(Devices),
    /// systemd's `user-UID.slice` groups under this `user.slice`.
    Systemd(PathBuf),
}

/// The cgroup v2 fence: a device program per user (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bpf {
    place: Place,
}

/// What [`Bpf::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfSet {
    /// A new program was attached (the deny list changed, or the group had
    /// none of ours).
    pub attached: bool,
    /// Processes moved into the group.
    pub moved: usize,
}

impl Bpf {
    /// Finds the cgroup2 mount and the place: systemd's user slices when
    /// `systemd` runs the node, else groups of kloigos' own under PID 1's
    /// group. `controllers` is the mount's `cgroup.controllers` (when the
    /// slice backend uses the same groups, they are left for it to remove).
    /// `None` when cgroup2 is not mounted.
    pub fn locate(mountinfo: &str, pid1: &str, systemd: bool, controllers: &str) -> Option<Bpf> {
        let m = mountinfo
            .lines()
            .filter_map(Mount::parse)
            .find(|m| m.fstype == "cgroup2")?;
        let rel = pid1
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let rel = rel.strip_prefix(m.root.as_str()).unwrap_or(rel);
        let rel = rel.trim_start_matches('/');
        let base = if systemd {
            // PID 1 sits in init.scope beside user.slice.
            rel.strip_suffix("init.scope").unwrap_or(rel)
        } else {
            rel
        }
        .trim_end_matches('/');
        let base = if base.is_empty() {
            m.mount
        } else {
            m.mount.join(base)
        };
        let place = if systemd {
            Place::Systemd(base.join("user.slice"))
        } else {
            let shared = controllers
                .split_whitespace()
                .any(|c| ["cpuset", "memory", "pids"].contains(&c));
            Place::Own(Devices {
                group: base.join("kloigos"),
                shared,
                read_only: m.read_only,
            })
        };
        Some(Bpf { place })
    }

    /// The cgroup2 place of this host.
    pub fn here() -> Result<Option<Bpf>> {
        let read = |p: &str| fs::read_to_string(p).map_err(|e| Error::io(p, e));
        let mountinfo = read("/proc/self/mountinfo")?;
        let systemd = Path::new("/run/systemd/system").is_dir();
        let controllers = mountinfo
            .lines()
            .filter_map(Mount::parse)
            .find(|m| m.fstype == "cgroup2")
            .and_then(|m| fs::read_to_string(m.mount.join("cgroup.controllers")).ok())
            .unwrap_or_default();
        Ok(Bpf::locate(
            &mountinfo,
            &read("/proc/1/cgroup")?,
            systemd,
            &controllers,
        ))
    }

    /// The group of `uid`.
    pub fn user_dir(&self, uid: Uid) -> PathBuf {
        match &self.place {
            Place::Own(d) => d.user_dir(uid),
            Place::Systemd(slices) => slices.join(format!("user-{uid}.slice")),
        }
    }

    /// Fences `uid` with `deny`: keeps the program `had` when it is still
    /// attached with the same list (one query), else attaches a new one and
    /// then detaches the old ones. Then (own groups) moves `pids` in.
    /// `Ok(None)`: on systemd, the user has no slice (yet).
    pub fn set(
        &self,
        uid: Uid,
        deny: &[DevNum],
        had: Option<&Attached>,
        pids: &[i32],
    ) -> Result<Option<(Attached, BpfSet)>> {
        let dir = self.user_dir(uid);
        if let Place::Own(_) = &self.place {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let group = match crate::sys::open_cgroup(&dir) {
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Place::Systemd(_) = &self.place {
                    return Ok(None);
                }
                return Err(Error::io(&dir, e));
            }
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let bpf_err = |what: &str, source| Error::Bpf {
            what: format!("{what} ({})", dir.display()),
            source,
        };
        let ids = crate::sys::attached_device_progs(&group)
            .map_err(|e| bpf_err("listing the group's device programs", e))?;
        let want: Vec<(u32, u32)> = deny.iter().map(|d| (d.major, d.minor)).collect();
        let mut done = BpfSet {
            attached: false,
            moved: 0,
        };
        let now = match had {
            Some(a) if a.deny == want && ids.contains(&a.id) => a.clone(),
            _ => {
                let insns = devprog::device_program(deny)
                    .map_err(|e| Error::NoFence(format!("GPU fence of uid {uid}: {e}")))?;
                let prog =
                    crate::sys::DeviceProg::load(&devprog::encode(&insns), devprog::PROG_NAME)
                        .map_err(|e| Error::BpfRejected {
                            source: e.source,
                            log: e.log,
                        })?;
                let (id, _) = prog
                    .info()
                    .map_err(|e| bpf_err("reading the new program's id", e))?;
                prog.attach(&group)
                    .map_err(|e| bpf_err("attaching the device program", e))?;
                done.attached = true;
                // On failure the new one stays unrecorded: the next pass
                // attaches another and detaches every other of ours.
                detach_ours(&group, &ids, Some(id))
                    .map_err(|e| bpf_err("detaching the old device program", e))?;
                Attached { id, deny: want }
            }
        };
        if let Place::Own(_) = &self.place {
            done.moved = move_in(&dir, pids)?;
        }
        Ok(Some((now, done)))
    }

    /// Lifts the fence of the users not in `keep`: their programs detached
    /// (where their group still exists), and their own groups removed as
    /// in v1. Returns their uids.
    pub fn prune(&self, keep: &[Uid], attached: &mut BTreeMap<Uid, Attached>) -> Result<Vec<Uid>> {
        let mut gone: Vec<Uid> = attached
            .keys()
            .copied()
            .filter(|u| !keep.contains(u))
            .collect();
        let mut first_err = None;
        for uid in &gone {
            if let Err(e) = self.detach(*uid) {
                first_err.get_or_insert(e);
            }
            attached.remove(uid);
        }
        if let Place::Own(d) = &self.place {
            for uid in d.prune(keep)? {
                if !gone.contains(&uid) {
                    gone.push(uid);
                }
            }
        }
        first_err.map_or(Ok(gone), Err)
    }

    /// Detaches every program of ours from `uid`'s group, if it exists.
    fn detach(&self, uid: Uid) -> Result<()> {
        let dir = self.user_dir(uid);
        let group = match crate::sys::open_cgroup(&dir) {
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let err = |source| Error::Bpf {
            what: format!("detaching the device program ({})", dir.display()),
            source,
        };
        let ids = crate::sys::attached_device_progs(&group).map_err(err)?;
        detach_ours(&group, &ids, None).map_err(err)
    }

    /// Every user's fence lifted (`--uninstall`); returns their uids.
    pub fn remove_all(&self) -> Result<Vec<Uid>> {
        match &self.place {
            Place::Own(d) => d.remove_all(),
            Place::Systemd(slices) => {
                let entries = match fs::read_dir(slices) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(Error::io(slices, e)),
                };
                let mut uids = Vec::new();
                for e in entries {
                    let e = e.map_err(|e| Error::io(slices, e))?;
                    let Some(uid) = e
                        .file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("user-")?.strip_suffix(".slice"))
                        .and_then(|n| n.parse::<Uid>().ok())
                    else {
                        continue;
                    };
                    self.detach(uid)?;
                    uids.push(uid);
                }
                Ok(uids)
            }
        }
    }
}

/// Detaches from `group` the programs among `ids` named as ours, except
/// `keep`. A program gone meanwhile is no error.
fn detach_ours(group: &fs::File, ids: &[u32], keep: Option<u32>) -> io::Result<()> {
    for id in ids.iter().copied().filter(|i| Some(*i) != keep) {
        let prog = match crate::sys::DeviceProg::by_id(id) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if prog.info()?.1 != devprog::PROG_NAME {
            continue;
        }
        match prog.detach(group) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The fence in use on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// The cgroup v1 devices hierarchy.
    V1(Devices),
    /// A cgroup v2 device program.
    Bpf(Bpf),
}

impl Fence {
    /// The backend `want` names, as found on this host; an error says what
    /// is missing.
    pub fn select(want: FenceBackend) -> Result<Fence> {
        let v1 = match want {
            FenceBackend::Bpf => None,
            _ => Devices::here()?,
        };
        let v2 = match (want, &v1) {
            (FenceBackend::V1, _) => None,
            (FenceBackend::Auto, Some(d)) if !d.read_only => None,
            _ => Bpf::here()?,
        };
        Fence::choose(want, v1, v2)
    }

    /// The backend `want` names among the hierarchies found: `auto` takes
    /// v1 where it is writable, else v2.
    fn choose(want: FenceBackend, v1: Option<Devices>, v2: Option<Bpf>) -> Result<Fence> {
        let none = |what: &str| {
            Error::NoFence(format!(
                "GPU fence not applied: {what} (housekeeper.gpu.fence_backend chooses: auto, v1, bpf)"
            ))
        };
        match want {
            FenceBackend::V1 => v1
                .map(Fence::V1)
                .ok_or_else(|| none("no cgroup v1 devices hierarchy on this host")),
            FenceBackend::Bpf => v2
                .map(Fence::Bpf)
                .ok_or_else(|| none("no cgroup2 hierarchy mounted on this host")),
            FenceBackend::Auto => match (v1, v2) {
                (Some(d), _) if !d.read_only => Ok(Fence::V1(d)),
                (_, Some(b)) => Ok(Fence::Bpf(b)),
                _ => Err(none(
                    "neither a writable cgroup v1 devices hierarchy nor a cgroup2 mount on this host",
                )),
            },
        }
    }

    /// Lifts every user's fence; returns their uids.
    fn remove_all(&self) -> Result<Vec<Uid>> {
        match self {
            Fence::V1(d) => d.remove_all(),
            Fence::Bpf(b) => b.remove_all(),
        }
    }
}

/// Lifts what the other backend left (after `fence_backend` changed), so
/// that its stale rules never shut a GPU a user has booked since: its
/// groups are removed with their processes moved out, or its programs
/// detached. Where nothing is left, a directory read.
fn lift_other(fence: &Fence, record: &mut Record) {
    let lifted = match fence {
        Fence::V1(_) => Bpf::here().and_then(|b| match b {
            Some(b) => b.prune(&[], &mut record.gpu_bpf),
            None => Ok(Vec::new()),
        }),
        Fence::Bpf(_) => Devices::here().and_then(|d| match d {
            Some(d) if !d.read_only => d.prune(&[]),
            _ => Ok(Vec::new()),
        }),
    };
    match lifted {
        Ok(uids) if uids.is_empty() => {}
        Ok(uids) => crate::log::event(&format!(
            "GPU fence: the other backend's fence lifted for uid(s) {uids:?} (housekeeper.gpu.fence_backend changed)"
        )),
        Err(e) => crate::log::error(&format!("GPU fence: lifting the other backend's: {e}")),
    }
}

/// `--uninstall`: lifts the fence of every user, on both backends where
/// they exist (logged).
pub fn uninstall() {
    for want in [FenceBackend::V1, FenceBackend::Bpf] {
        match Fence::select(want) {
            Ok(f) => match f.remove_all() {
                Ok(uids) if uids.is_empty() => {}
                Ok(uids) => crate::log::event(&format!("GPU fence removed for uid(s) {uids:?}")),
                Err(e) => crate::log::error(&format!("removing the GPU fence: {e}")),
            },
            Err(Error::NoFence(_)) => {}
            Err(e) => crate::log::error(&format!("removing the GPU fence: {e}")),
        }
    }
}

/// Device numbers as `M:m` for messages.
fn shown(devs: &[DevNum]) -> String {
    let v: Vec<String> = devs
        .iter()
        .map(|d| format!("{}:{}", d.major, d.minor))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
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
    let fence = match Fence::select(cfg.fence_backend) {
        Ok(f) => f,
        Err(e) => {
            crate::log::error(&e.to_string());
            return;
        }
    };
    let pids_of = |uid: Uid| procfs::live_pids(procs, uid);
    let keep: Vec<Uid> = plan.keys().copied().collect();
    match &fence {
        Fence::V1(dev) => {
            for (uid, r) in &plan {
                match dev.set(*uid, r, &pids_of(*uid)) {
                    Ok(0) => {}
                    Ok(n) => crate::log::note(&format!(
                        "GPU fence: moved {n} process(es) of uid {uid} into {} (GPU minors open: {:?})",
                        dev.user_dir(*uid).display(),
                        r.allow
                    )),
                    Err(e) => crate::log::error(&format!("GPU fence of uid {uid}: {e}")),
                }
            }
            if let Err(e) = dev.prune(&keep) {
                crate::log::error(&format!("GPU fence: removing groups: {e}"));
            }
        }
        Fence::Bpf(b) => {
            for (uid, r) in &plan {
                let had = record.gpu_bpf.get(uid).cloned();
                match b.set(*uid, &r.deny, had.as_ref(), &pids_of(*uid)) {
                    Ok(Some((now, done))) => {
                        if done.attached {
                            crate::log::note(&format!(
                                "GPU fence: device program {} attached to {} (GPU numbers shut: {})",
                                now.id,
                                b.user_dir(*uid).display(),
                                shown(&r.deny)
                            ));
                        }
                        if done.moved > 0 {
                            crate::log::note(&format!(
                                "GPU fence: moved {} process(es) of uid {uid} into {}",
                                done.moved,
                                b.user_dir(*uid).display()
                            ));
                        }
                        record.gpu_bpf.insert(*uid, now);
                    }
                    Ok(None) => crate::log::note(&format!(
                        "GPU fence of uid {uid}: no {} yet; fenced at the next pass after it appears",
                        b.user_dir(*uid).display()
                    )),
                    Err(e) => crate::log::error(&format!("GPU fence of uid {uid}: {e}")),
                }
            }
            if let Err(e) = b.prune(&keep, &mut record.gpu_bpf) {
                crate::log::error(&format!("GPU fence: lifting: {e}"));
            }
        }
    }
    lift_other(&fence, record);
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

    #[test]
    fn the_v2_fence_goes_to_the_user_slice_under_systemd_else_to_groups_of_its_own() {
        // A hybrid host whose PID 1 is not systemd: kloigos/ under PID 1's group.
        let b = Bpf::locate(MOUNTS, "0::/\n", false, "").unwrap();
        assert_eq!(
            b.user_dir(uid(7)),
            PathBuf::from("/sys/fs/cgroup/unified/kloigos/user-7")
        );
        let Place::Own(d) = &b.place else {
            panic!("{b:?}")
        };
        assert!(!d.shared);
        // Its slice backend on v2 uses the same groups: they are its to remove.
        let Place::Own(d) = Bpf::locate(MOUNTS, "0::/\n", false, "cpuset memory pids")
            .unwrap()
            .place
        else {
            panic!()
        };
        assert!(d.shared);
        // systemd, unified: the user's slice, beside PID 1's init.scope.
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw";
        let b = Bpf::locate(unified, "0::/init.scope\n", true, "cpu memory").unwrap();
        assert_eq!(
            b.user_dir(uid(1001)),
            PathBuf::from("/sys/fs/cgroup/user.slice/user-1001.slice")
        );
        // A container without a cgroup namespace: its root is a subgroup.
        let inner = "30 23 0:26 /machine.slice/box /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let b = Bpf::locate(inner, "0::/machine.slice/box/init.scope\n", true, "").unwrap();
        assert_eq!(
            b.user_dir(uid(5)),
            PathBuf::from("/sys/fs/cgroup/user.slice/user-5.slice")
        );
        // No cgroup2 mount: nothing.
        assert_eq!(
            Bpf::locate(
                "36 31 0:33 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices",
                "0::/\n",
                false,
                ""
            ),
            None
        );
        // A v1 hierarchy mounted read-only is seen as such (auto skips it).
        let ro = "36 31 0:33 / /sys/fs/cgroup/devices ro,nosuid - cgroup cgroup rw,devices";
        assert!(Devices::locate(ro, "5:devices:/\n").unwrap().read_only);
        assert!(!Devices::locate(MOUNTS, "5:devices:/\n").unwrap().read_only);
    }

    #[test]
    fn auto_takes_a_writable_v1_hierarchy_else_cgroup2_and_says_when_neither_is_there() {
        let v1 = Devices::locate(MOUNTS, "5:devices:/\n");
        let v2 = Bpf::locate(MOUNTS, "0::/\n", false, "");
        let ro = "36 31 0:33 / /sys/fs/cgroup/devices ro - cgroup cgroup rw,devices";
        let v1_ro = Devices::locate(ro, "5:devices:/\n");
        let pick = |want, v1: &Option<Devices>, v2: &Option<Bpf>| {
            Fence::choose(want, v1.clone(), v2.clone())
        };
        let kind = |f: Result<Fence>| match f {
            Ok(Fence::V1(_)) => "v1",
            Ok(Fence::Bpf(_)) => "bpf",
            Err(_) => "none",
        };
        // Asked for by name, a read-only v1 is still used (its writes then
        // fail loudly).
        for (want, v1, v2, got) in [
            (FenceBackend::Auto, &v1, &v2, "v1"),
            (FenceBackend::Auto, &v1_ro, &v2, "bpf"),
            (FenceBackend::Auto, &None, &v2, "bpf"),
            (FenceBackend::Bpf, &None, &v2, "bpf"),
            (FenceBackend::V1, &v1_ro, &v2, "v1"),
        ] {
            assert_eq!(kind(pick(want, v1, v2)), got, "{want:?}");
        }
        for (want, v1, v2, says) in [
            (
                FenceBackend::Auto,
                &v1_ro,
                &None,
                "neither a writable cgroup v1",
            ),
            (
                FenceBackend::V1,
                &None,
                &v2,
                "no cgroup v1 devices hierarchy",
            ),
            (FenceBackend::Bpf, &v1, &None, "no cgroup2 hierarchy"),
        ] {
            match pick(want, v1, v2) {
                Err(Error::NoFence(m)) => {
                    assert!(m.contains(says) && m.contains("fence_backend"), "{m}")
                }
                other => panic!("{want:?}: {other:?}"),
            }
        }
    }
}
