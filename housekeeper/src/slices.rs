//! Per-user CPU, memory and task limits: systemd's `user-UID.slice`, plain
//! cgroups where PID 1 is not systemd, or nothing.
//!
//! On a hybrid host (cgroup v2 without controllers, cpuset only a v1
//! hierarchy) systemd stores `AllowedCPUs` but cannot apply it, so the
//! systemd backend also confines the user's processes in the v1 cpuset
//! hierarchy, with the same per-hierarchy routines ([`Hier`]) as the plain
//! cgroup backend; [`CpusetSite`] decides where cpuset is.
//!
//! Each backend reports the limits it has in place (from files it wrote,
//! without running a program), so the plan sets only what changed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kloigos_core::config::SliceBackend;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::enforce::{Controls, SliceLimits};
use kloigos_core::ids::Uid;

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
                    return Ok(Backend::Systemd(Systemd::new(dir.into())));
                }
                if Path::new("/run/systemd/system").is_dir() {
                    Ok(Backend::Systemd(Systemd::new(UNIT_DIR.into())))
                } else {
                    Cgroups::discover().map(Backend::Cgroup)
                }
            }
            SliceBackend::Cgroup => Cgroups::discover().map(Backend::Cgroup),
        }
    }

    /// The limits this backend can set: plain cgroups only those whose
    /// controllers the host has; systemd and none are taken to set them all.
    pub fn controls(&self) -> Controls {
        match self {
            Backend::Cgroup(c) => c.controls(),
            Backend::Systemd(_) | Backend::None => Controls::default(),
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
    pub fn observe(&self) -> BTreeMap<Uid, SliceLimits> {
        match self {
            Backend::Systemd(s) => s.observe(),
            Backend::Cgroup(c) => c.observe(),
            Backend::None => BTreeMap::new(),
        }
    }

    /// Sets the limits of `uid`.
    pub fn set(&self, uid: Uid, limits: &SliceLimits) -> Result<()> {
        match self {
            Backend::Systemd(s) => s.set(uid, limits),
            Backend::Cgroup(c) => c.set(uid, limits),
            Backend::None => Ok(()),
        }
    }

    /// Removes the limits of `uid`.
    pub fn clear(&self, uids: &[Uid]) -> Result<()> {
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

    /// The hierarchies whose `kloigos/user-UID` groups the housekeeper
    /// moves processes into itself: every one of the plain cgroup backend;
    /// for systemd (which places sessions itself) only the v1 cpuset
    /// hierarchy of a hybrid host, where systemd cannot apply AllowedCPUs.
    fn own_groups(&self) -> Vec<&Hier> {
        match self {
            Backend::Cgroup(c) => c.hiers().collect(),
            Backend::Systemd(s) => s.v1_cpuset.iter().collect(),
            Backend::None => Vec::new(),
        }
    }

    /// Moves processes of booked users that are not yet in their cgroup
    /// into it (see [`Backend::own_groups`]). Returns how many moved.
    pub fn attach(&self, uid: Uid, pids: &[i32]) -> Result<usize> {
        let mut moved = 0;
        for h in self.own_groups() {
            moved += h.attach(uid, pids)?;
        }
        Ok(moved)
    }

    /// The processes among `pids` that [`Backend::attach`] would move, by
    /// group, for `--dry-run` (groups not created yet are left out: setting
    /// them is planned, and says the processes are moved in).
    pub fn to_move(&self, uid: Uid, pids: &[i32]) -> Vec<(PathBuf, Vec<i32>)> {
        self.own_groups()
            .into_iter()
            .filter(|h| h.user_dir(uid).is_dir())
            .map(|h| (h.user_dir(uid), h.outside(uid, pids)))
            .filter(|(_, p)| !p.is_empty())
            .collect()
    }

    /// The steps of setting `limits`, for `--dry-run` and the log: what
    /// the backend sets, then any step it takes besides.
    pub fn describe_set(&self, uid: Uid, limits: &SliceLimits) -> Vec<String> {
        let props = properties(limits)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        match self {
            Backend::Cgroup(_) => vec![format!("kloigos/user-{uid}: {props}")],
            Backend::Systemd(s) => {
                let mut steps = vec![if s.dropin_matches(uid, limits) {
                    format!("user-{uid}.slice: {props} (already in place: only the step below)")
                } else {
                    format!("user-{uid}.slice: {props}")
                }];
                steps.extend(s.cpuset_step_set(uid, limits));
                steps
            }
            Backend::None => Vec::new(),
        }
    }

    /// The steps of removing the limits of `uid`, for `--dry-run`.
    pub fn describe_clear(&self, uid: Uid) -> Vec<String> {
        let mut steps = vec![format!("remove the limits of uid {uid}")];
        if let Backend::Systemd(s) = self {
            steps.extend(s.cpuset_step_clear(uid));
        }
        steps
    }
}

/// The systemd properties for `limits`, with systemd's words for "none".
pub fn properties(l: &SliceLimits) -> Vec<(&'static str, String)> {
    let opt = |v: Option<u64>| v.map_or("infinity".to_string(), |n| n.to_string());
    vec![
        ("AllowedCPUs", l.cpus.to_string()),
        ("AllowedMemoryNodes", join_nodes(&l.mem_nodes)),
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
fn uid_in(name: &str, prefix: &str, suffix: &str) -> Option<Uid> {
    let n = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Where the cpuset controller is, as the systemd backend needs to know:
/// systemd applies `AllowedCPUs`/`AllowedMemoryNodes` only through cpuset
/// on the unified (v2) hierarchy. In hybrid mode (cgroup v2 mounted
/// without controllers, cpuset a v1 hierarchy, as on these machines) it
/// stores them and applies nothing, so the housekeeper confines the
/// processes in the v1 cpuset hierarchy itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpusetSite {
    /// A controller of the unified hierarchy: systemd applies AllowedCPUs.
    Unified,
    /// Only a v1 hierarchy; the parent of `kloigos/` in it (PID 1's cpuset).
    V1(PathBuf),
    /// Only a v1 hierarchy, mounted read-only here (a container): nothing
    /// can apply AllowedCPUs.
    ReadOnly(PathBuf),
    /// No cpuset controller at all.
    Nowhere,
}

impl CpusetSite {
    /// Decides from the mount table, PID 1's cgroups (`/proc/1/cgroup`) and
    /// `read`, which reads a file (the unified hierarchy's `cgroup.controllers`).
    pub fn decide(mountinfo: &str, pid1: &str, read: impl Fn(&Path) -> Option<String>) -> Self {
        let (v2, v1) = hierarchies(mountinfo, pid1, read);
        if v2.is_some_and(|h| h.has("cpuset")) {
            return CpusetSite::Unified;
        }
        match v1.into_iter().find(|h| h.has("cpuset")) {
            Some(h) if h.read_only => CpusetSite::ReadOnly(h.mount),
            Some(h) => CpusetSite::V1(h.base),
            None => CpusetSite::Nowhere,
        }
    }

    /// This host's site; a table that cannot be read counts as no cpuset.
    fn here() -> CpusetSite {
        let tables = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("/proc/self/mountinfo", e))
            .and_then(|m| {
                let p = fs::read_to_string("/proc/1/cgroup")
                    .map_err(|e| Error::io("/proc/1/cgroup", e))?;
                Ok((m, p))
            });
        match tables {
            Ok((m, p)) => CpusetSite::decide(&m, &p, |f| fs::read_to_string(f).ok()),
            Err(e) => {
                crate::log::error(&format!(
                    "cannot tell where the cpuset controller is ({e}); AllowedCPUs is left to systemd"
                ));
                CpusetSite::Nowhere
            }
        }
    }
}

/// The systemd backend: runtime `systemctl set-property --runtime` (applied
/// at once, never restarting logind or user@ services) plus a drop-in in
/// the unit directory so the limits survive a reboot; on a hybrid host
/// also the user's group in the v1 cpuset hierarchy (see [`CpusetSite`]),
/// set and removed by the same routines as the plain cgroup backend's.
#[derive(Debug)]
pub struct Systemd {
    unit_dir: PathBuf,
    /// Where cpuset is on this host.
    site: CpusetSite,
    /// The v1 cpuset hierarchy, when systemd cannot apply AllowedCPUs.
    v1_cpuset: Option<Hier>,
}

impl Systemd {
    fn new(unit_dir: PathBuf) -> Systemd {
        Systemd::with_site(unit_dir, CpusetSite::here())
    }

    fn with_site(unit_dir: PathBuf, site: CpusetSite) -> Systemd {
        let v1_cpuset = match &site {
            CpusetSite::V1(base) => Some(Hier {
                base: base.clone(),
                mount: PathBuf::new(),
                controllers: vec!["cpuset"],
                v2: false,
                read_only: false,
            }),
            _ => None,
        };
        Systemd {
            unit_dir,
            site,
            v1_cpuset,
        }
    }

    fn dropin_dir(&self, uid: Uid) -> PathBuf {
        self.unit_dir.join(format!("user-{uid}.slice.d"))
    }

    /// Whether the drop-in of `uid` holds exactly `l`.
    fn dropin_matches(&self, uid: Uid, l: &SliceLimits) -> bool {
        fs::read_to_string(self.dropin_dir(uid).join(DROPIN))
            .ok()
            .and_then(|t| parse_dropin(&t))
            .as_ref()
            == Some(l)
    }

    /// The drop-ins' limits; on a hybrid host a user whose cpuset group is
    /// missing or differs (or who has a group and no drop-in) reads as
    /// garbled, so the plan sets (or removes) it again.
    fn observe(&self) -> BTreeMap<Uid, SliceLimits> {
        let mut out = self.observe_dropins();
        if let Some(h) = &self.v1_cpuset {
            let sets = h.cpusets();
            for (uid, l) in out.iter_mut() {
                let same = sets.get(uid).is_some_and(|(cpus, mems)| {
                    *cpus == l.cpus && (l.mem_nodes.is_empty() || *mems == l.mem_nodes)
                });
                if !same {
                    if let Some(g) = garbled() {
                        *l = g;
                    }
                }
            }
            for uid in sets.keys() {
                if let (false, Some(g)) = (out.contains_key(uid), garbled()) {
                    out.insert(*uid, g);
                }
            }
        }
        out
    }

    fn observe_dropins(&self) -> BTreeMap<Uid, SliceLimits> {
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

    /// The drop-in and runtime properties (unless the drop-in already holds
    /// `l`: then only the cpuset group differed), then the v1 cpuset group.
    fn set(&self, uid: Uid, l: &SliceLimits) -> Result<()> {
        if !self.dropin_matches(uid, l) {
            let dir = self.dropin_dir(uid);
            create_dir(&dir)?;
            kloigos_core::store::write_atomic(&dir, DROPIN, render_dropin(l).as_bytes())?;
            let mut args = vec![
                "set-property".to_string(),
                "--runtime".to_string(),
                format!("user-{uid}.slice"),
            ];
            args.extend(properties(l).into_iter().map(|(k, v)| format!("{k}={v}")));
            crate::sys::run("systemctl", &args, None)?;
        }
        match &self.v1_cpuset {
            Some(h) => h.set(uid, l),
            None => Ok(()),
        }
    }

    /// What setting `l` does about cpuset besides the properties, if anything.
    fn cpuset_step_set(&self, uid: Uid, l: &SliceLimits) -> Option<String> {
        match &self.site {
            CpusetSite::Unified => None,
            CpusetSite::V1(_) => {
                let h = self.v1_cpuset.as_ref()?;
                let mems = if l.mem_nodes.is_empty() {
                    "(its parent's)".to_string()
                } else {
                    join_nodes(&l.mem_nodes)
                };
                Some(format!(
                    "+ cgroup v1 cpuset {}: cpuset.cpus={} cpuset.mems={mems}, the processes of uid {uid} moved in \
                     (systemd stores AllowedCPUs but cannot apply it: cpuset is not a controller of the unified hierarchy)",
                    h.user_dir(uid).display(),
                    l.cpus
                ))
            }
            CpusetSite::ReadOnly(m) => Some(format!(
                "AllowedCPUs is NOT applied: cpuset is only a cgroup v1 hierarchy here, mounted read-only at {}",
                m.display()
            )),
            CpusetSite::Nowhere => {
                Some("AllowedCPUs is NOT applied: this host has no cpuset controller".into())
            }
        }
    }

    /// What removing the limits of `uid` does about cpuset besides.
    fn cpuset_step_clear(&self, uid: Uid) -> Option<String> {
        let h = self.v1_cpuset.as_ref()?;
        Some(format!(
            "+ cgroup v1 cpuset {}: its processes moved back to {}, the group removed",
            h.user_dir(uid).display(),
            h.base.display()
        ))
    }

    /// Moves the users' processes out of their cpuset groups and removes
    /// them; removes the drop-ins and the runtime properties, then reloads
    /// once so the slices fall back to their vendor defaults.
    fn clear(&self, uids: &[Uid]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut cpuset_err = None;
        if let Some(h) = &self.v1_cpuset {
            for uid in uids {
                if let Err(e) = h.clear(*uid) {
                    cpuset_err.get_or_insert(e);
                }
            }
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
        crate::sys::run("systemctl", &["daemon-reload"], None)?;
        cpuset_err.map_or(Ok(()), Err)
    }
}

fn join_nodes(nodes: &[u32]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
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
    /// Where the hierarchy is mounted.
    mount: PathBuf,
    /// The controllers used in it.
    controllers: Vec<&'static str>,
    /// Whether it is the unified (v2) hierarchy.
    v2: bool,
    /// Whether it is mounted read-only.
    read_only: bool,
}

/// The controllers the cgroup backend uses.
const CONTROLLERS: [&str; 3] = ["cpuset", "memory", "pids"];

/// v1 "no limit" for memory: anything this large.
const V1_UNLIMITED: u64 = 1 << 62;

/// The hierarchies holding [`CONTROLLERS`], from the mount table and PID 1's
/// cgroups: the unified one if it holds any of them (its `cgroup.controllers`
/// read through `read`), and a v1 hierarchy for each of the others.
fn hierarchies(
    mountinfo: &str,
    pid1: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> (Option<Hier>, Vec<Hier>) {
    // mountinfo: id parent dev root mountpoint(4) options(5) ... " - " fstype source superopts
    let mut v2_mount = None;
    let mut v1_mounts: Vec<(PathBuf, Vec<String>, bool)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut l = left.split_whitespace().skip(4);
        let mount = l.next().map(PathBuf::from);
        let ro = l.next().is_some_and(|o| o.split(',').any(|o| o == "ro"));
        let mut r = right.split_whitespace();
        let (fstype, _src, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
        match (fstype, mount) {
            (Some("cgroup2"), Some(m)) => v2_mount = v2_mount.or(Some((m, ro))),
            (Some("cgroup"), Some(m)) => {
                v1_mounts.push((m, opts.split(',').map(String::from).collect(), ro))
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
    if let Some((m, ro)) = v2_mount {
        let rel = pid1_path(&|c: &str| c.is_empty()).unwrap_or_default();
        let have = read(&m.join("cgroup.controllers")).unwrap_or_default();
        let controllers: Vec<&'static str> = CONTROLLERS
            .into_iter()
            .filter(|c| have.split_whitespace().any(|h| h == *c))
            .collect();
        if !controllers.is_empty() {
            v2 = Some(Hier {
                base: under(&m, &rel),
                mount: m,
                controllers,
                v2: true,
                read_only: ro,
            });
        }
    }
    let mut v1: Vec<Hier> = Vec::new();
    for c in CONTROLLERS {
        if v2.as_ref().is_some_and(|h| h.has(c)) {
            continue;
        }
        let Some((m, _, ro)) = v1_mounts
            .iter()
            .find(|(_, opts, _)| opts.iter().any(|o| o == c))
        else {
            continue;
        };
        let rel = pid1_path(&|ctrls: &str| ctrls.split(',').any(|x| x == c)).unwrap_or_default();
        let base = under(m, &rel);
        match v1.iter_mut().find(|h| h.base == base) {
            Some(h) => h.controllers.push(c),
            None => v1.push(Hier {
                base,
                mount: m.clone(),
                controllers: vec![c],
                v2: false,
                read_only: *ro,
            }),
        }
    }
    (v2, v1)
}

/// `mount/rel`, or `mount` itself when `rel` is empty (no trailing slash).
fn under(mount: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    }
}

/// The routines on one hierarchy, shared by both backends: the plain cgroup
/// backend runs them on each of its hierarchies, the systemd backend on the
/// v1 cpuset hierarchy of a hybrid host.
impl Hier {
    fn has(&self, controller: &str) -> bool {
        self.controllers.contains(&controller)
    }

    fn group(&self) -> PathBuf {
        self.base.join("kloigos")
    }

    fn user_dir(&self, uid: Uid) -> PathBuf {
        self.group().join(format!("user-{uid}"))
    }

    fn write(path: &Path, value: &str) -> Result<()> {
        fs::write(path, value).map_err(|e| Error::io(path, e))
    }

    /// Creates `kloigos/user-UID` and writes the limits its controllers hold.
    fn set(&self, uid: Uid, l: &SliceLimits) -> Result<()> {
        let group = self.group();
        let dir = self.user_dir(uid);
        if self.v2 {
            let enable: String = self.controllers.iter().map(|c| format!("+{c} ")).collect();
            for d in [&self.base, &group] {
                if d != &self.base {
                    create_dir(d)?;
                }
                Hier::write(&d.join("cgroup.subtree_control"), enable.trim())?;
            }
            create_dir(&dir)?;
        } else if self.has("cpuset") {
            // v1 cpusets start empty: give the group its parent's CPUs and nodes first.
            create_dir(&group)?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let parent = fs::read_to_string(self.base.join(f))
                    .map_err(|e| Error::io(self.base.join(f), e))?;
                Hier::write(&group.join(f), parent.trim())?;
            }
            create_dir(&dir)?;
        } else {
            create_dir(&dir)?;
        }
        if self.has("cpuset") {
            let mems = if l.mem_nodes.is_empty() {
                fs::read_to_string(group.join("cpuset.mems"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            } else {
                join_nodes(&l.mem_nodes)
            };
            Hier::write(&dir.join("cpuset.mems"), &mems)?;
            Hier::write(&dir.join("cpuset.cpus"), &l.cpus.to_string())?;
        }
        let v = |n: Option<u64>, none: &str| n.map_or(none.to_string(), |n| n.to_string());
        if self.has("memory") {
            if self.v2 {
                Hier::write(&dir.join("memory.high"), &v(l.memory_high, "max"))?;
                Hier::write(&dir.join("memory.max"), &v(l.memory_max, "max"))?;
            } else {
                Hier::write(&dir.join("memory.limit_in_bytes"), &v(l.memory_max, "-1"))?;
                Hier::write(
                    &dir.join("memory.soft_limit_in_bytes"),
                    &v(l.memory_high, "-1"),
                )?;
            }
        }
        if self.has("pids") {
            Hier::write(&dir.join("pids.max"), &v(l.tasks_max, "max"))?;
        }
        Ok(())
    }

    /// The CPUs and memory nodes of each `kloigos/user-UID` group (a
    /// cpuset hierarchy); CPUs that cannot be read back read as garbled.
    fn cpusets(&self) -> BTreeMap<Uid, (CpuSet, Vec<u32>)> {
        let mut out = BTreeMap::new();
        let Ok(rd) = fs::read_dir(self.group()) else {
            return out;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let Some(uid) = e.file_name().to_str().and_then(|n| uid_in(n, "user-", "")) else {
                continue;
            };
            let read =
                |file: &str| fs::read_to_string(e.path().join(file)).map(|s| s.trim().to_string());
            let Ok(cpus) = read("cpuset.cpus") else {
                continue;
            };
            let Some(cpus) = CpuSet::parse(&cpus)
                .ok()
                .or_else(|| garbled().map(|g| g.cpus))
            else {
                continue;
            };
            let mems = read("cpuset.mems")
                .ok()
                .and_then(|m| CpuSet::parse(&m).ok())
                .map(|s| s.cpus().to_vec())
                .unwrap_or_default();
            out.insert(uid, (cpus, mems));
        }
        out
    }

    fn procs_in(dir: &Path) -> Vec<i32> {
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The processes among `pids` not in the user's group.
    fn outside(&self, uid: Uid, pids: &[i32]) -> Vec<i32> {
        let inside = Hier::procs_in(&self.user_dir(uid));
        pids.iter()
            .copied()
            .filter(|p| !inside.contains(p))
            .collect()
    }

    /// Moves those of `pids` not yet in the user's group into it (if it
    /// exists). Returns how many moved.
    fn attach(&self, uid: Uid, pids: &[i32]) -> Result<usize> {
        let dir = self.user_dir(uid);
        if !dir.is_dir() {
            return Ok(0);
        }
        let mut moved = 0;
        for pid in self.outside(uid, pids) {
            match fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                Ok(()) => moved += 1,
                // Gone meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(Error::io(dir.join("cgroup.procs"), e)),
            }
        }
        Ok(moved)
    }

    /// Moves what is left in the user's group back to PID 1's cgroup, then
    /// removes the group (and `kloigos/` once no user is left in it).
    fn clear(&self, uid: Uid) -> Result<()> {
        let dir = self.user_dir(uid);
        if !dir.is_dir() {
            return Ok(());
        }
        for _ in 0..20 {
            let left = Hier::procs_in(&dir);
            if left.is_empty() {
                break;
            }
            for pid in left {
                let _ = fs::write(self.base.join("cgroup.procs"), pid.to_string());
            }
        }
        fs::remove_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        // The last user gone: the group goes too (it stays while others remain).
        let _ = fs::remove_dir(self.group());
        Ok(())
    }
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
        let (v2, v1) = hierarchies(mountinfo, pid1, read);
        if !v2.iter().chain(&v1).any(|h| h.has("cpuset")) {
            return Err(Error::Cgroup(
                "no cpuset controller is available (neither in cgroup v2 nor as a v1 hierarchy); set \"slices\": \"none\" in the housekeeper config".into(),
            ));
        }
        Ok(Cgroups { v2, v1 })
    }

    fn hiers(&self) -> impl Iterator<Item = &Hier> {
        self.v2.iter().chain(&self.v1)
    }

    fn observe(&self) -> BTreeMap<Uid, SliceLimits> {
        let mut out = BTreeMap::new();
        let Some(cs) = self.hiers().find(|h| h.has("cpuset")) else {
            return out;
        };
        for (uid, (cpus, mem_nodes)) in cs.cpusets() {
            let mut l = SliceLimits {
                cpus,
                mem_nodes,
                memory_high: None,
                memory_max: None,
                tasks_max: None,
            };
            for h in self.hiers() {
                let num = |file: &str| -> Option<u64> {
                    let v = fs::read_to_string(h.user_dir(uid).join(file)).ok()?;
                    v.trim().parse::<u64>().ok().filter(|n| *n < V1_UNLIMITED)
                };
                if h.has("memory") {
                    if h.v2 {
                        l.memory_max = num("memory.max");
                        l.memory_high = num("memory.high");
                    } else {
                        l.memory_max = num("memory.limit_in_bytes");
                        l.memory_high = num("memory.soft_limit_in_bytes");
                    }
                }
                if h.has("pids") {
                    l.tasks_max = num("pids.max");
                }
            }
            out.insert(uid, l);
        }
        out
    }

    /// The limits this host can express (controllers it lacks read back as none).
    pub fn controls(&self) -> Controls {
        let has = |c: &str| self.hiers().any(|h| h.has(c));
        Controls {
            memory: has("memory"),
            tasks: has("pids"),
        }
    }

    fn set(&self, uid: Uid, l: &SliceLimits) -> Result<()> {
        for h in self.hiers() {
            h.set(uid, l)?;
        }
        Ok(())
    }

    fn clear(&self, uid: Uid) -> Result<()> {
        for h in self.hiers() {
            h.clear(uid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::uid;

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
        assert_eq!(
            uid_in("user-1001.slice.d", "user-", ".slice.d"),
            Some(uid(1001))
        );
        assert_eq!(uid_in("user-.slice.d", "user-", ".slice.d"), None);
        assert_eq!(uid_in("user-1+1.slice.d", "user-", ".slice.d"), None);
        assert_eq!(uid_in("user-7", "user-", ""), Some(uid(7)));
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

    /// Reads only the unified hierarchy's controllers, which are `unified`.
    fn controllers(at: &'static str, unified: &'static str) -> impl Fn(&Path) -> Option<String> {
        move |p: &Path| {
            assert_eq!(p, Path::new(at).join("cgroup.controllers"), "read {p:?}");
            Some(unified.to_string())
        }
    }

    #[test]
    fn cpuset_site_hybrid_host_is_the_v1_hierarchy_under_pid1s_cpuset() {
        // These machines: v2 at /sys/fs/cgroup/unified without controllers, cpuset in v1.
        let pid1 = "3:cpuset:/\n0::/init.scope\n";
        let site = CpusetSite::decide(HYBRID, pid1, controllers("/sys/fs/cgroup/unified", "\n"));
        assert_eq!(site, CpusetSite::V1("/sys/fs/cgroup/cpuset".into()));
        // PID 1 in a cpuset group of its own: kloigos/ goes under it.
        let site = CpusetSite::decide(
            HYBRID,
            "3:cpuset:/machine\n0::/\n",
            controllers("/sys/fs/cgroup/unified", ""),
        );
        assert_eq!(site, CpusetSite::V1("/sys/fs/cgroup/cpuset/machine".into()));
        // cpuset co-mounted with cpu: still the v1 site, and systemd's
        // group there handles cpuset only.
        let comounted = "31 25 0:27 / /sys/fs/cgroup/cpu,cpuset rw - cgroup cgroup rw,cpu,cpuset\n\
                         30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let site = CpusetSite::decide(
            comounted,
            "2:cpu,cpuset:/\n",
            controllers("/sys/fs/cgroup/unified", ""),
        );
        assert_eq!(site, CpusetSite::V1("/sys/fs/cgroup/cpu,cpuset".into()));
        let s = Systemd::with_site("/nonexistent".into(), site);
        assert_eq!(s.v1_cpuset.as_ref().unwrap().controllers, vec!["cpuset"]);
    }

    #[test]
    fn cpuset_site_unified_when_v2_holds_cpuset_else_nowhere() {
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let site = CpusetSite::decide(
            v2,
            "0::/init.scope\n",
            controllers("/sys/fs/cgroup", "cpuset cpu io memory pids\n"),
        );
        assert_eq!(site, CpusetSite::Unified);
        let s = Systemd::with_site("/nonexistent".into(), site);
        assert!(s.v1_cpuset.is_none());
        assert_eq!(
            Backend::Systemd(s).describe_set(uid(7), &limits()).len(),
            1,
            "no extra step where systemd applies AllowedCPUs"
        );
        // v2 without cpuset, no v1 cpuset: nothing can confine CPUs.
        let site = CpusetSite::decide(
            v2,
            "0::/\n",
            controllers("/sys/fs/cgroup", "cpu io memory pids"),
        );
        assert_eq!(site, CpusetSite::Nowhere);
        // The unified hierarchy's cpuset wins over a v1 mount (cannot both hold it; be safe).
        let both = format!("{v2}31 25 0:27 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n");
        let site = CpusetSite::decide(&both, "0::/\n", controllers("/sys/fs/cgroup", "cpuset"));
        assert_eq!(site, CpusetSite::Unified);
        // No cgroup file system at all.
        assert_eq!(
            CpusetSite::decide("", "", |_| panic!("nothing to read")),
            CpusetSite::Nowhere
        );
    }

    #[test]
    fn cpuset_site_read_only_v1_mount_is_reported_not_used() {
        // systemd-nspawn mounts the host's v1 controllers read-only.
        let nspawn = "\
43 300 0:73 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:96 - tmpfs tmpfs ro,size=4096k
49 43 0:31 / /sys/fs/cgroup/cpuset ro,nosuid,nodev,noexec,relatime shared:102 - cgroup cgroup rw,cpuset
52 43 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:105 - cgroup2 cgroup rw
";
        let site = CpusetSite::decide(nspawn, "3:cpuset:/\n0::/init.scope\n", |_| {
            Some(String::new())
        });
        assert_eq!(site, CpusetSite::ReadOnly("/sys/fs/cgroup/cpuset".into()));
        let b = Backend::Systemd(Systemd::with_site("/nonexistent".into(), site));
        let steps = b.describe_set(uid(7), &limits());
        assert!(
            steps[1].contains("NOT applied") && steps[1].contains("read-only"),
            "{steps:?}"
        );
        assert_eq!(b.describe_clear(uid(7)).len(), 1);
        // Made writable (remounted rw): used.
        let rw = nspawn.replace("cgroup/cpuset ro,", "cgroup/cpuset rw,");
        let site = CpusetSite::decide(&rw, "3:cpuset:/\n", |_| Some(String::new()));
        assert_eq!(site, CpusetSite::V1("/sys/fs/cgroup/cpuset".into()));
    }

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("khk-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn systemd_on_a_hybrid_host_plans_and_observes_the_v1_cpuset_step() {
        // Plain directories stand in for the unit directory and the v1
        // cpuset hierarchy (the shared routine writes the same files).
        let tmp = Scratch::new("sysd-v1");
        let units = tmp.0.join("units");
        let cpuset = tmp.0.join("cpuset");
        fs::create_dir_all(&cpuset).unwrap();
        fs::write(cpuset.join("cpuset.cpus"), "0-7\n").unwrap();
        fs::write(cpuset.join("cpuset.mems"), "0\n").unwrap();
        let s = Systemd::with_site(units.clone(), CpusetSite::V1(cpuset.clone()));
        let l = limits();
        let b = Backend::Systemd(s);
        let steps = b.describe_set(uid(7), &l);
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(
            steps[0].starts_with("user-7.slice: AllowedCPUs=4-7 "),
            "{steps:?}"
        );
        let dir = cpuset.join("kloigos/user-7");
        assert!(
            steps[1].starts_with(&format!(
                "+ cgroup v1 cpuset {}: cpuset.cpus=4-7 cpuset.mems=0, the processes of uid 7 moved in",
                dir.display()
            )),
            "{steps:?}"
        );
        let clear = b.describe_clear(uid(7));
        assert_eq!(clear.len(), 2, "{clear:?}");
        assert!(clear[1].contains("moved back to"), "{clear:?}");
        let Backend::Systemd(s) = &b else {
            unreachable!()
        };

        // The drop-in alone (the group missing, as after a reboot) is not in place.
        fs::create_dir_all(units.join("user-7.slice.d")).unwrap();
        fs::write(units.join("user-7.slice.d").join(DROPIN), render_dropin(&l)).unwrap();
        assert!(s.dropin_matches(uid(7), &l));
        assert!(b.describe_set(uid(7), &l)[0].contains("already in place"));
        assert_ne!(s.observe().get(&uid(7)), Some(&l));
        // The shared v1 routine creates the group, seeded from its parent.
        s.v1_cpuset.as_ref().unwrap().set(uid(7), &l).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(cpuset.join("kloigos/cpuset.cpus")), "0-7");
        assert_eq!(read(dir.join("cpuset.cpus")), "4-7");
        assert_eq!(read(dir.join("cpuset.mems")), "0");
        assert_eq!(s.observe().get(&uid(7)), Some(&l), "both in place");
        // The group differs: not in place.
        fs::write(dir.join("cpuset.cpus"), "0-7").unwrap();
        assert_ne!(s.observe().get(&uid(7)), Some(&l));
        // A group without a drop-in is observed, so the plan removes it.
        fs::remove_dir_all(units.join("user-7.slice.d")).unwrap();
        assert!(s.observe().contains_key(&uid(7)));
        // Nothing to move where the group does not exist.
        assert!(b.to_move(uid(8), &[1, 2]).is_empty());
        fs::write(dir.join("cgroup.procs"), "1\n").unwrap();
        assert_eq!(b.to_move(uid(7), &[1, 2]), vec![(dir, vec![2])]);
    }
}
