//! Per-user CPU, memory and task limits: systemd's `user-UID.slice`, plain
//! cgroups where PID 1 is not systemd, or nothing.
//!
//! Each backend reports the limits it has in place (from files it wrote,
//! without running a program), so the plan sets only what changed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kloigos_core::config::SliceBackend;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::enforce::SliceLimits;

use crate::error::{Error, Result};

/// Name of the drop-in the systemd backend writes.
const DROPIN: &str = "90-kloigos.conf";
/// Where drop-ins live unless overridden (tests only) by this variable.
const UNIT_DIR: &str = "/etc/systemd/system";
/// Test hook: a unit directory to use instead of /etc/systemd/system; it
/// also selects the systemd backend where PID 1 is not systemd (the
/// recording stand-in test). Root's environment only; never set it on a node.
pub const UNIT_DIR_ENV: &str = "KLOIGOS_SYSTEMD_UNIT_DIR";
/// Properties the systemd backend manages.
const PROPS: [&str; 5] = [
    "AllowedCPUs",
    "AllowedMemoryNodes",
    "MemoryHigh",
    "MemoryMax",
    "TasksMax",
];

/// The slice backend in use on this node.
#[derive(Debug)]
pub enum Backend {
    /// systemd user slices.
    Systemd(Systemd),
    /// Plain cgroups.
    Cgroup(Cgroups),
    /// No limits.
    None,
}

impl Backend {
    /// The backend for `configured`: systemd where it runs (else plain
    /// cgroups, with a note), cgroups, or none.
    pub fn select(configured: SliceBackend) -> Result<Backend> {
        match configured {
            SliceBackend::None => Ok(Backend::None),
            SliceBackend::Systemd => {
                if let Some(dir) = std::env::var_os(UNIT_DIR_ENV) {
                    return Ok(Backend::Systemd(Systemd {
                        unit_dir: dir.into(),
                    }));
                }
                if Path::new("/run/systemd/system").is_dir() {
                    Ok(Backend::Systemd(Systemd {
                        unit_dir: UNIT_DIR.into(),
                    }))
                } else {
                    Cgroups::discover().map(Backend::Cgroup)
                }
            }
            SliceBackend::Cgroup => Cgroups::discover().map(Backend::Cgroup),
        }
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Systemd(_) => "systemd",
            Backend::Cgroup(c) if c.v2.is_some() => "cgroup v2",
            Backend::Cgroup(_) => "cgroup v1",
            Backend::None => "none",
        }
    }

    /// Limits in place, by uid.
    pub fn observe(&self) -> BTreeMap<u32, SliceLimits> {
        match self {
            Backend::Systemd(s) => s.observe(),
            Backend::Cgroup(c) => c.observe(),
            Backend::None => BTreeMap::new(),
        }
    }

    /// Sets the limits of `uid`.
    pub fn set(&self, uid: u32, limits: &SliceLimits) -> Result<()> {
        match self {
            Backend::Systemd(s) => s.set(uid, limits),
            Backend::Cgroup(c) => c.set(uid, limits),
            Backend::None => Ok(()),
        }
    }

    /// Removes the limits of `uid`.
    pub fn clear(&self, uids: &[u32]) -> Result<()> {
        match self {
            Backend::Systemd(s) => s.clear(uids),
            Backend::Cgroup(c) => {
                for uid in uids {
                    c.clear(*uid)?;
                }
                Ok(())
            }
            Backend::None => Ok(()),
        }
    }

    /// Moves processes of booked users that are not yet in their cgroup
    /// into it (plain cgroups only: systemd places sessions itself).
    /// Returns how many moved.
    pub fn attach(&self, uid: u32, pids: &[i32]) -> Result<usize> {
        match self {
            Backend::Cgroup(c) => c.attach(uid, pids),
            _ => Ok(0),
        }
    }

    /// What setting `limits` means, for `--dry-run` and the log.
    pub fn describe(&self, uid: u32, limits: &SliceLimits) -> String {
        let props = properties(limits)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        match self {
            Backend::Cgroup(_) => format!("kloigos/user-{uid}: {props}"),
            _ => format!("user-{uid}.slice: {props}"),
        }
    }
}

/// The systemd properties for `limits`, with systemd's words for "none".
pub fn properties(l: &SliceLimits) -> Vec<(&'static str, String)> {
    let opt = |v: Option<u64>| v.map_or("infinity".to_string(), |n| n.to_string());
    let nodes = l
        .mem_nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    vec![
        ("AllowedCPUs", l.cpus.to_string()),
        ("AllowedMemoryNodes", nodes),
        ("MemoryHigh", opt(l.memory_high)),
        ("MemoryMax", opt(l.memory_max)),
        ("TasksMax", opt(l.tasks_max)),
    ]
}

/// The drop-in that makes the limits survive a reboot.
pub fn render_dropin(l: &SliceLimits) -> String {
    let mut s = String::from(
        "# Written by kloigos-housekeeper for a booking; removed when it ends.\n[Slice]\n",
    );
    for (k, v) in properties(l) {
        s.push_str(&format!("{k}={v}\n"));
    }
    s
}

/// Reads a drop-in written by [`render_dropin`]; `None` if it is not one.
pub fn parse_dropin(text: &str) -> Option<SliceLimits> {
    let mut m: BTreeMap<&str, &str> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            m.insert(k.trim(), v.trim());
        }
    }
    let opt = |k: &str| -> Option<Option<u64>> {
        match *m.get(k)? {
            "infinity" => Some(None),
            v => v.parse().ok().map(Some),
        }
    };
    let nodes = m.get("AllowedMemoryNodes")?;
    let mem_nodes = if nodes.is_empty() {
        Vec::new()
    } else {
        nodes
            .split(',')
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<u32>>>()?
    };
    Some(SliceLimits {
        cpus: CpuSet::parse(m.get("AllowedCPUs")?).ok()?,
        mem_nodes,
        memory_high: opt("MemoryHigh")?,
        memory_max: opt("MemoryMax")?,
        tasks_max: opt("TasksMax")?,
    })
}

/// The uid in a name like `user-1001.slice.d` (prefix and suffix given).
fn uid_in(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let n = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The systemd backend: runtime `systemctl set-property --runtime` (applied
/// at once, never restarting logind or user@ services) plus a drop-in in
/// the unit directory so the limits survive a reboot.
#[derive(Debug)]
pub struct Systemd {
    unit_dir: PathBuf,
}

impl Systemd {
    fn dropin_dir(&self, uid: u32) -> PathBuf {
        self.unit_dir.join(format!("user-{uid}.slice.d"))
    }

    fn observe(&self) -> BTreeMap<u32, SliceLimits> {
        let mut out = BTreeMap::new();
        let Ok(rd) = fs::read_dir(&self.unit_dir) else {
            return out;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let Some(uid) = e
                .file_name()
                .to_str()
                .and_then(|n| uid_in(n, "user-", ".slice.d"))
            else {
                continue;
            };
            if let Ok(text) = fs::read_to_string(e.path().join(DROPIN)) {
                // A drop-in we cannot read back differs from anything, so it is re-set.
                let Some(limits) = parse_dropin(&text).or_else(garbled) else {
                    continue;
                };
                out.insert(uid, limits);
            }
        }
        out
    }

    fn set(&self, uid: u32, l: &SliceLimits) -> Result<()> {
        let dir = self.dropin_dir(uid);
        create_dir(&dir)?;
        kloigos_core::store::write_atomic(&dir, DROPIN, render_dropin(l).as_bytes())?;
        let mut args = vec![
            "set-property".to_string(),
            "--runtime".to_string(),
            format!("user-{uid}.slice"),
        ];
        args.extend(properties(l).into_iter().map(|(k, v)| format!("{k}={v}")));
        crate::sys::run("systemctl", &args, None).map(|_| ())
    }

    /// Removes the drop-ins and the runtime properties, then reloads once
    /// so the slices fall back to their vendor defaults.
    fn clear(&self, uids: &[u32]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        for uid in uids {
            let dir = self.dropin_dir(*uid);
            remove_file(&dir.join(DROPIN))?;
            let _ = fs::remove_dir(&dir);
            let control = PathBuf::from(format!("/run/systemd/system.control/user-{uid}.slice.d"));
            for p in PROPS {
                remove_file(&control.join(format!("50-{p}.conf")))?;
            }
            let _ = fs::remove_dir(&control);
        }
        crate::sys::run("systemctl", &["daemon-reload"], None).map(|_| ())
    }
}

/// Limits that match no desired limits: what an unreadable record stands for.
fn garbled() -> Option<SliceLimits> {
    Some(SliceLimits {
        cpus: CpuSet::from_cpus([65_535])?,
        mem_nodes: vec![u32::MAX],
        memory_high: None,
        memory_max: None,
        tasks_max: None,
    })
}

fn create_dir(dir: &Path) -> Result<()> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// One cgroup hierarchy holding some of the controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hier {
    /// `<mount>/<PID 1's cgroup>` — the parent of `kloigos/`.
    base: PathBuf,
    /// The controllers used in it.
    controllers: Vec<&'static str>,
    /// Whether it is the unified (v2) hierarchy.
    v2: bool,
}

/// The plain cgroup backend: `kloigos/user-UID` under PID 1's cgroup in the
/// hierarchy of each controller (cgroup v2 where it holds the controllers;
/// the v1 cpuset, memory and pids hierarchies on hybrid hosts). A pass moves
/// the user's new processes in; a new login is confined by the next pass.
#[derive(Debug)]
pub struct Cgroups {
    v2: Option<Hier>,
    v1: Vec<Hier>,
}

/// The controllers the cgroup backend uses.
const CONTROLLERS: [&str; 3] = ["cpuset", "memory", "pids"];

/// v1 "no limit" for memory: anything this large.
const V1_UNLIMITED: u64 = 1 << 62;

impl Cgroups {
    /// Finds the hierarchies from /proc/self/mountinfo and /proc/1/cgroup.
    pub fn discover() -> Result<Cgroups> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("/proc/self/mountinfo", e))?;
        let pid1 =
            fs::read_to_string("/proc/1/cgroup").map_err(|e| Error::io("/proc/1/cgroup", e))?;
        Cgroups::from_tables(&mountinfo, &pid1, |p| fs::read_to_string(p).ok())
    }

    fn from_tables(
        mountinfo: &str,
        pid1: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Result<Cgroups> {
        // mountinfo: ... mountpoint(4) ... " - " fstype source superopts
        let mut v2_mount = None;
        let mut v1_mounts: Vec<(PathBuf, Vec<String>)> = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount = left.split_whitespace().nth(4).map(PathBuf::from);
            let mut r = right.split_whitespace();
            let (fstype, _src, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
            match (fstype, mount) {
                (Some("cgroup2"), Some(m)) => v2_mount = v2_mount.or(Some(m)),
                (Some("cgroup"), Some(m)) => {
                    v1_mounts.push((m, opts.split(',').map(String::from).collect()))
                }
                _ => {}
            }
        }
        let pid1_path = |want: &dyn Fn(&str) -> bool| -> Option<String> {
            pid1.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                want(ctrls).then(|| path.trim_start_matches('/').to_string())
            })
        };
        let mut v2 = None;
        if let Some(m) = v2_mount {
            let rel = pid1_path(&|c: &str| c.is_empty()).unwrap_or_default();
            let base = m.join(rel);
            let have = read(&m.join("cgroup.controllers")).unwrap_or_default();
            let controllers: Vec<&'static str> = CONTROLLERS
                .into_iter()
                .filter(|c| have.split_whitespace().any(|h| h == *c))
                .collect();
            if !controllers.is_empty() {
                v2 = Some(Hier {
                    base,
                    controllers,
                    v2: true,
                });
            }
        }
        let mut v1: Vec<Hier> = Vec::new();
        for c in CONTROLLERS {
            if v2.as_ref().is_some_and(|h| h.controllers.contains(&c)) {
                continue;
            }
            let Some((m, _)) = v1_mounts
                .iter()
                .find(|(_, opts)| opts.iter().any(|o| o == c))
            else {
                continue;
            };
            let rel =
                pid1_path(&|ctrls: &str| ctrls.split(',').any(|x| x == c)).unwrap_or_default();
            let base = m.join(rel);
            match v1.iter_mut().find(|h| h.base == base) {
                Some(h) => h.controllers.push(c),
                None => v1.push(Hier {
                    base,
                    controllers: vec![c],
                    v2: false,
                }),
            }
        }
        let has_cpuset = v2
            .iter()
            .chain(&v1)
            .any(|h| h.controllers.contains(&"cpuset"));
        if !has_cpuset {
            return Err(Error::Cgroup(
                "no cpuset controller is available (neither in cgroup v2 nor as a v1 hierarchy); set \"slices\": \"none\" in the housekeeper config".into(),
            ));
        }
        Ok(Cgroups { v2, v1 })
    }

    fn hiers(&self) -> impl Iterator<Item = &Hier> {
        self.v2.iter().chain(&self.v1)
    }

    fn user_dir(h: &Hier, uid: u32) -> PathBuf {
        h.base.join("kloigos").join(format!("user-{uid}"))
    }

    fn cpuset_hier(&self) -> Option<&Hier> {
        self.hiers().find(|h| h.controllers.contains(&"cpuset"))
    }

    fn observe(&self) -> BTreeMap<u32, SliceLimits> {
        let mut out = BTreeMap::new();
        let Some(cs) = self.cpuset_hier() else {
            return out;
        };
        let Ok(rd) = fs::read_dir(cs.base.join("kloigos")) else {
            return out;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let Some(uid) = e.file_name().to_str().and_then(|n| uid_in(n, "user-", "")) else {
                continue;
            };
            let read = |h: &Hier, file: &str| {
                fs::read_to_string(Cgroups::user_dir(h, uid).join(file))
                    .map(|s| s.trim().to_string())
            };
            let Ok(cpus) = read(cs, "cpuset.cpus") else {
                continue;
            };
            let Some(cpus) = CpuSet::parse(&cpus)
                .ok()
                .or_else(|| garbled().map(|g| g.cpus))
            else {
                continue;
            };
            let mem_nodes = read(cs, "cpuset.mems")
                .ok()
                .and_then(|m| CpuSet::parse(&m).ok())
                .map(|s| s.cpus().to_vec())
                .unwrap_or_default();
            let mut l = SliceLimits {
                cpus,
                mem_nodes,
                memory_high: None,
                memory_max: None,
                tasks_max: None,
            };
            for h in self.hiers() {
                let num = |file: &str| -> Option<u64> {
                    let v = read(h, file).ok()?;
                    v.parse::<u64>().ok().filter(|n| *n < V1_UNLIMITED)
                };
                if h.controllers.contains(&"memory") {
                    if h.v2 {
                        l.memory_max = num("memory.max");
                        l.memory_high = num("memory.high");
                    } else {
                        l.memory_max = num("memory.limit_in_bytes");
                        l.memory_high = num("memory.soft_limit_in_bytes");
                    }
                }
                if h.controllers.contains(&"pids") {
                    l.tasks_max = num("pids.max");
                }
            }
            out.insert(uid, l);
        }
        out
    }

    /// The limits this host can express (controllers it lacks read back as none).
    pub fn project(&self, l: &SliceLimits) -> SliceLimits {
        let has = |c: &str| self.hiers().any(|h| h.controllers.contains(&c));
        let mut p = l.clone();
        if !has("memory") {
            p.memory_high = None;
            p.memory_max = None;
        }
        if !has("pids") {
            p.tasks_max = None;
        }
        p
    }

    fn write(path: &Path, value: &str) -> Result<()> {
        fs::write(path, value).map_err(|e| Error::io(path, e))
    }

    fn set(&self, uid: u32, l: &SliceLimits) -> Result<()> {
        for h in self.hiers() {
            let group = h.base.join("kloigos");
            let dir = Cgroups::user_dir(h, uid);
            if h.v2 {
                let enable: String = h.controllers.iter().map(|c| format!("+{c} ")).collect();
                for d in [&h.base, &group] {
                    if d != &h.base {
                        create_dir(d)?;
                    }
                    Cgroups::write(&d.join("cgroup.subtree_control"), enable.trim())?;
                }
                create_dir(&dir)?;
            } else if h.controllers.contains(&"cpuset") {
                // v1 cpusets start empty: give the group its parent's CPUs and nodes first.
                create_dir(&group)?;
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = fs::read_to_string(h.base.join(f))
                        .map_err(|e| Error::io(h.base.join(f), e))?;
                    Cgroups::write(&group.join(f), parent.trim())?;
                }
                create_dir(&dir)?;
            } else {
                create_dir(&dir)?;
            }
            if h.controllers.contains(&"cpuset") {
                let mems = if l.mem_nodes.is_empty() {
                    fs::read_to_string(group.join("cpuset.mems"))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                } else {
                    l.mem_nodes
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                Cgroups::write(&dir.join("cpuset.mems"), &mems)?;
                Cgroups::write(&dir.join("cpuset.cpus"), &l.cpus.to_string())?;
            }
            let v = |n: Option<u64>, none: &str| n.map_or(none.to_string(), |n| n.to_string());
            if h.controllers.contains(&"memory") {
                if h.v2 {
                    Cgroups::write(&dir.join("memory.high"), &v(l.memory_high, "max"))?;
                    Cgroups::write(&dir.join("memory.max"), &v(l.memory_max, "max"))?;
                } else {
                    Cgroups::write(&dir.join("memory.limit_in_bytes"), &v(l.memory_max, "-1"))?;
                    Cgroups::write(
                        &dir.join("memory.soft_limit_in_bytes"),
                        &v(l.memory_high, "-1"),
                    )?;
                }
            }
            if h.controllers.contains(&"pids") {
                Cgroups::write(&dir.join("pids.max"), &v(l.tasks_max, "max"))?;
            }
        }
        Ok(())
    }

    fn procs_in(dir: &Path) -> Vec<i32> {
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn attach(&self, uid: u32, pids: &[i32]) -> Result<usize> {
        let mut moved = 0;
        for h in self.hiers() {
            let dir = Cgroups::user_dir(h, uid);
            if !dir.is_dir() {
                continue;
            }
            let inside = Cgroups::procs_in(&dir);
            for pid in pids.iter().filter(|p| !inside.contains(p)) {
                match fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                    Ok(()) => moved += 1,
                    // Gone meanwhile.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(Error::io(dir.join("cgroup.procs"), e)),
                }
            }
        }
        Ok(moved)
    }

    fn clear(&self, uid: u32) -> Result<()> {
        for h in self.hiers() {
            let dir = Cgroups::user_dir(h, uid);
            if !dir.is_dir() {
                continue;
            }
            // Move what is left back to PID 1's cgroup, then remove the group.
            for _ in 0..20 {
                let left = Cgroups::procs_in(&dir);
                if left.is_empty() {
                    break;
                }
                for pid in left {
                    let _ = fs::write(h.base.join("cgroup.procs"), pid.to_string());
                }
            }
            fs::remove_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            // The last user gone: the group goes too (it stays while others remain).
            let _ = fs::remove_dir(h.base.join("kloigos"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SliceLimits {
        SliceLimits {
            cpus: CpuSet::parse("4-7").unwrap(),
            mem_nodes: vec![0],
            memory_high: Some(900 << 20),
            memory_max: Some(1000 << 20),
            tasks_max: None,
        }
    }

    #[test]
    fn dropin_round_trips() {
        let l = limits();
        let text = render_dropin(&l);
        assert!(
            text.contains("[Slice]\nAllowedCPUs=4-7\nAllowedMemoryNodes=0\n"),
            "{text}"
        );
        assert!(text.contains("TasksMax=infinity\n"));
        assert_eq!(parse_dropin(&text), Some(l));
        assert_eq!(parse_dropin("[Slice]\nAllowedCPUs=x\n"), None);
    }

    #[test]
    fn uid_names() {
        assert_eq!(uid_in("user-1001.slice.d", "user-", ".slice.d"), Some(1001));
        assert_eq!(uid_in("user-.slice.d", "user-", ".slice.d"), None);
        assert_eq!(uid_in("user-1+1.slice.d", "user-", ".slice.d"), None);
        assert_eq!(uid_in("user-7", "user-", ""), Some(7));
    }

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
32 25 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn hybrid_host_uses_v1_controllers_under_pid1s_cgroups() {
        let pid1 = "4:memory:/init.scope\n3:cpuset:/\n8:pids:/\n0::/init.scope\n";
        let c = Cgroups::from_tables(HYBRID, pid1, |_| Some(String::new())).unwrap();
        assert!(c.v2.is_none());
        let bases: Vec<_> =
            c.v1.iter()
                .map(|h| (h.base.clone(), h.controllers.clone()))
                .collect();
        assert_eq!(
            bases,
            vec![
                (PathBuf::from("/sys/fs/cgroup/cpuset/"), vec!["cpuset"]),
                (
                    PathBuf::from("/sys/fs/cgroup/memory/init.scope"),
                    vec!["memory"]
                ),
                (PathBuf::from("/sys/fs/cgroup/pids/"), vec!["pids"]),
            ]
        );
    }

    #[test]
    fn v2_with_controllers_wins() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let c = Cgroups::from_tables(mi, "0::/\n", |_| Some("cpuset cpu io memory pids\n".into()))
            .unwrap();
        let h = c.v2.as_ref().unwrap();
        assert_eq!(h.controllers, vec!["cpuset", "memory", "pids"]);
        assert!(c.v1.is_empty());
        // v2 without controllers and no v1 cpuset: refused with the fix.
        let e = Cgroups::from_tables(mi, "0::/\n", |_| Some(String::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"slices\": \"none\""), "{e}");
    }
}
