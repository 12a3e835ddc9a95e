//! What the housekeeper enforces on a node, decided without touching it.
//!
//! [`desired`] turns the policy, this node's state and `now` into the limits
//! each booked user should have, the nftables ruleset and the facts the kill
//! and warn decisions need; [`plan`] compares that with what the housekeeper
//! observed (slices in place, the ruleset it last loaded, whose processes
//! run, which warnings and hooks already happened) and lists the actions.
//! The housekeeper prints the plan for `--dry-run` and applies it otherwise,
//! so a second pass over an unchanged node plans nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use jiff::Timestamp;

use crate::access::{unmanaged_in, SubUids};
use crate::booking::{Booking, BookingId};
use crate::cpuset::CpuSet;
use crate::facts::Numa;
use crate::ids::Uid;
use crate::names::UserName;
use crate::policy::Policy;
use crate::ports::PortRange;
use crate::state::NodeState;

/// MemoryHigh as a share of MemoryMax, in percent: reclaim pressure starts
/// before the hard limit (Kiwi set it the other way round, which made High dead).
pub const MEMORY_HIGH_PERCENT: u64 = 90;

/// Memory limits are whole pages, as the kernel reads them back.
const PAGE: u64 = 4096;

/// The name of the nftables table the housekeeper owns.
pub const NFT_TABLE: &str = "kloigos";

/// What the housekeeper knows about the machine it runs on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Host {
    /// Total memory in bytes (0: unknown).
    pub mem_total: u64,
    /// NUMA nodes and their CPUs (empty: unknown).
    pub numa: Vec<Numa>,
    /// CPUs online (`None`: unknown, and then the booked CPUs are used as
    /// they are).
    pub cpus_online: Option<CpuSet>,
    /// The limits the host's slice backend can set.
    pub controls: Controls,
}

/// The slice limits a host's backend can set: a cgroup hierarchy without the
/// memory or pids controller cannot, and reads those limits back as none.
/// Desired limits are cut to these, so that a pass over an unchanged node
/// finds its slices as wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    /// MemoryHigh and MemoryMax (the memory controller).
    pub memory: bool,
    /// TasksMax (the pids controller).
    pub tasks: bool,
}

impl Default for Controls {
    /// Every limit: systemd sets them all, and a host not known to lack a
    /// controller is taken to have it.
    fn default() -> Controls {
        Controls {
            memory: true,
            tasks: true,
        }
    }
}

impl Controls {
    /// `limits` without the ones this host cannot set.
    pub fn project(self, limits: &SliceLimits) -> SliceLimits {
        let mut p = limits.clone();
        if !self.memory {
            p.memory_high = None;
            p.memory_max = None;
        }
        if !self.tasks {
            p.tasks_max = None;
        }
        p
    }
}

/// The CPUs of `cpus` that are in `online`; `None` when there are none.
pub fn present(cpus: &CpuSet, online: &CpuSet) -> Option<CpuSet> {
    CpuSet::from_cpus(
        cpus.cpus()
            .iter()
            .copied()
            .filter(|c| online.cpus().binary_search(c).is_ok()),
    )
}

/// The command that makes the spec of node `node` name only CPUs that
/// `online` has (all of them, if it names none of those).
pub fn set_node_cpus_fix(node: &str, spec: &CpuSet, online: &CpuSet) -> String {
    let keep = present(spec, online).unwrap_or_else(|| online.clone());
    format!("kloigos admin set-node {node} --cpus {keep}")
}

/// The CPUs of a node spec this host does not have online; `None` when it
/// has them all, or when it is not known which it has.
pub fn missing_cpus(spec: &CpuSet, online: Option<&CpuSet>) -> Option<CpuSet> {
    let online = online?;
    CpuSet::from_cpus(
        spec.cpus()
            .iter()
            .copied()
            .filter(|c| online.cpus().binary_search(c).is_err()),
    )
}

/// Node-local rules of the housekeeper (from the node's config and the policy).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Accounts below this uid are never managed.
    pub min_uid: Uid,
    /// Accounts above this uid are never managed (none: no bound).
    pub max_uid: Option<Uid>,
    /// Subordinate uid ranges, never managed (see [`crate::access::unmanaged`]);
    /// none until the housekeeper reads `/etc/subuid` into it.
    pub subuids: SubUids,
    /// Users never killed or confined.
    pub bypass: Vec<UserName>,
    /// The service account's uid, when it exists.
    pub service_uid: Option<Uid>,
    /// Seconds after a booking ends before its holder's processes are ended.
    pub grace_s: u64,
    /// Warn this many seconds before a booking ends.
    pub warn_before_s: Vec<u64>,
    /// Which kinds of action the node does at all.
    pub switches: Switches,
}

/// The kinds of action a node's housekeeper takes (its config's
/// `housekeeper` section); a kind switched off is left out of the [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    /// Set and clear slice limits: off when the host has no usable slice
    /// backend.
    pub slices: bool,
    /// Load and remove the nftables port rules (`housekeeper.nft`).
    pub nft: bool,
    /// End the processes of users without a booking (`housekeeper.kill`).
    pub kill: bool,
}

impl Default for Switches {
    /// Everything on, as the config's defaults are.
    fn default() -> Switches {
        Switches {
            slices: true,
            nft: true,
            kill: true,
        }
    }
}

impl Rules {
    /// Why `uid` is not managed here, or `None` when it is (the one rule
    /// of [`crate::access::unmanaged`]).
    pub fn unmanaged(&self, uid: Uid) -> Option<String> {
        unmanaged_in(self.min_uid, self.max_uid, &self.subuids, uid)
    }

    /// The rules from the policy, a grace period and optional warn times
    /// (the config's `warn_before_s`, overriding the policy's `warn_before`).
    pub fn new(
        policy: &Policy,
        service_uid: Option<Uid>,
        grace_s: u64,
        warn_before_s: Option<&[u64]>,
    ) -> Rules {
        let mut warn: Vec<u64> = match warn_before_s {
            Some(w) => w.to_vec(),
            None => policy.warn_before.iter().map(|d| d.secs()).collect(),
        };
        warn.retain(|s| *s > 0);
        warn.sort_unstable();
        warn.dedup();
        Rules {
            min_uid: policy.min_uid,
            max_uid: policy.max_uid,
            subuids: SubUids::default(),
            bypass: policy.bypass_users.clone(),
            service_uid: service_uid.or(policy.service_uid),
            grace_s,
            warn_before_s: warn,
            switches: Switches::default(),
        }
    }
}

/// The limits of one user's slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceLimits {
    /// AllowedCPUs: the union of the user's booked CPUs.
    pub cpus: CpuSet,
    /// AllowedMemoryNodes: the NUMA nodes of those CPUs (empty: all).
    pub mem_nodes: Vec<u32>,
    /// MemoryHigh in bytes (none: unlimited).
    pub memory_high: Option<u64>,
    /// MemoryMax in bytes (none: unlimited).
    pub memory_max: Option<u64>,
    /// TasksMax (none: unlimited).
    pub tasks_max: Option<u64>,
}

/// Everything one booked user should have on this node now.
#[derive(Debug, Clone, PartialEq)]
pub struct UserLimits {
    /// Account name from the bookings.
    pub user: UserName,
    /// Account uid from the bookings.
    pub uid: Uid,
    /// The active bookings behind these limits.
    pub bookings: Vec<BookingId>,
    /// Units held in total.
    pub units: u32,
    /// Slice limits.
    pub slice: SliceLimits,
    /// Ports the user may serve on (empty: the node has no ports).
    pub ports: Vec<PortRange>,
}

/// The state the node should be in, from policy, state and `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The instant decided for.
    pub now: Timestamp,
    /// Booked users by uid.
    pub users: BTreeMap<Uid, UserLimits>,
    /// The nftables file to load, or `None` when no booking needs rules.
    pub nft: Option<String>,
    /// For users whose booking ended recently: when their grace period ends.
    pub grace_until: BTreeMap<Uid, Timestamp>,
    /// Bookings not yet ended (active and future), for warnings.
    pub current: Vec<Booking>,
    /// Bookings of this node that have ended, for release hooks.
    pub ended: Vec<Booking>,
    /// Node-local rules.
    pub rules: Rules,
    /// CPUs of the node spec this host lacks (see [`missing_cpus`]): the
    /// users are confined to those it has.
    pub missing_cpus: Option<CpuSet>,
}

/// Memory in whole pages.
fn pages(bytes: u64) -> u64 {
    bytes / PAGE * PAGE
}

/// The NUMA nodes holding any of `cpus`.
fn mem_nodes(cpus: &CpuSet, numa: &[Numa]) -> Vec<u32> {
    let mut v: Vec<u32> = numa
        .iter()
        .filter(|n| n.cpus.intersects(cpus))
        .map(|n| n.id)
        .collect();
    v.sort_unstable();
    v
}

/// Computes the desired state of the node at `now`.
pub fn desired(
    policy: &Policy,
    state: &NodeState,
    now: Timestamp,
    host: &Host,
    rules: Rules,
) -> Desired {
    let units_total = u64::from(state.node.units_total().max(1));
    let mut users: BTreeMap<Uid, UserLimits> = BTreeMap::new();
    for b in state.active(now) {
        let u = users.entry(b.uid).or_insert_with(|| UserLimits {
            user: b.user.clone(),
            uid: b.uid,
            bookings: Vec::new(),
            units: 0,
            slice: SliceLimits {
                cpus: b.cpus.clone(),
                mem_nodes: Vec::new(),
                memory_high: None,
                memory_max: None,
                tasks_max: None,
            },
            ports: Vec::new(),
        });
        u.bookings.push(b.id.clone());
        u.units += b.unit_count();
        u.slice.cpus = u.slice.cpus.union(&b.cpus);
        if let Some(p) = b.ports {
            u.ports.push(p);
        }
    }
    for u in users.values_mut() {
        // A cpuset naming CPUs the host lacks cannot be written at all; the
        // CPUs that exist can. A user whose booked CPUs all are missing is
        // confined to the host's CPUs, so that memory and task limits hold.
        if let Some(online) = &host.cpus_online {
            u.slice.cpus = present(&u.slice.cpus, online).unwrap_or_else(|| online.clone());
        }
        let units = u64::from(u.units);
        u.ports.sort();
        u.ports.dedup();
        u.slice.mem_nodes = mem_nodes(&u.slice.cpus, &host.numa);
        let max = match state.node.mem_per_unit {
            Some(per) => Some(per.saturating_mul(units)),
            None if host.mem_total > 0 => Some(
                (u128::from(host.mem_total) * u128::from(units) / u128::from(units_total)) as u64,
            ),
            None => None,
        };
        u.slice.memory_max = max.map(pages);
        u.slice.memory_high =
            max.map(|m| pages((u128::from(m) * u128::from(MEMORY_HIGH_PERCENT) / 100) as u64));
        u.slice.tasks_max = policy.tasks_max_per_unit.map(|t| t.saturating_mul(units));
        u.slice = host.controls.project(&u.slice);
    }
    let mut grace_until: BTreeMap<Uid, Timestamp> = BTreeMap::new();
    let mut ended = Vec::new();
    for b in state.bookings.iter().filter(|b| b.end <= now) {
        ended.push(b.clone());
        let until = crate::when::plus_secs(b.end, rules.grace_s.min(i64::MAX as u64) as i64);
        let e = grace_until.entry(b.uid).or_insert(until);
        if *e < until {
            *e = until;
        }
    }
    let nft = render_nft(&users);
    Desired {
        now,
        users,
        nft,
        grace_until,
        current: state
            .bookings
            .iter()
            .filter(|b| now < b.end)
            .cloned()
            .collect(),
        ended,
        rules,
        missing_cpus: missing_cpus(&state.node.cpus, host.cpus_online.as_ref()),
    }
}

/// The nftables file for these users: it creates the table (so the delete
/// cannot fail), deletes it and recreates it whole, all in the one
/// transaction `nft -f` makes of a file. `None` when no user has ports.
///
/// The rule, verified on real sockets: in an output-hook chain, a packet of a
/// managed user's socket that answers a connection (`ct direction reply`) is
/// dropped unless its source port is one of that user's; connections the user
/// opens are untouched.
pub fn render_nft(users: &BTreeMap<Uid, UserLimits>) -> Option<String> {
    let with_ports: Vec<&UserLimits> = users.values().filter(|u| !u.ports.is_empty()).collect();
    if with_ports.is_empty() {
        return None;
    }
    let managed: Vec<String> = with_ports.iter().map(|u| u.uid.to_string()).collect();
    let mut allowed: Vec<String> = Vec::new();
    for u in &with_ports {
        for p in &u.ports {
            if p.first() == p.last() {
                allowed.push(format!("{} . {}", u.uid, p.first()));
            } else {
                allowed.push(format!("{} . {}", u.uid, p));
            }
        }
    }
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "# Written by kloigos-housekeeper; loaded whole, do not edit."
    );
    let _ = writeln!(s, "table inet {NFT_TABLE}");
    let _ = writeln!(s, "delete table inet {NFT_TABLE}");
    let _ = writeln!(s, "table inet {NFT_TABLE} {{");
    let _ = writeln!(s, "\tset managed {{");
    let _ = writeln!(s, "\t\ttypeof meta skuid");
    let _ = writeln!(s, "\t\telements = {{ {} }}", managed.join(", "));
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tset allowed {{");
    let _ = writeln!(s, "\t\ttypeof meta skuid . th sport");
    let _ = writeln!(s, "\t\tflags interval");
    let _ = writeln!(s, "\t\telements = {{ {} }}", allowed.join(", "));
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tchain output {{");
    let _ = writeln!(
        s,
        "\t\ttype filter hook output priority filter; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tmeta skuid @managed ct direction reply meta l4proto {{ tcp, udp }} meta skuid . th sport != @allowed drop"
    );
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "}}");
    Some(s)
}

/// The nftables file that removes the table whether or not it exists.
pub fn render_nft_removal() -> String {
    format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
}

/// What the housekeeper knows of the ruleset it manages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NftSeen {
    /// The table holds exactly this file, as loaded by the last pass and
    /// unchanged since (the kernel's ruleset generation says so).
    Loaded(String),
    /// The housekeeper removed the table and nothing changed since.
    Absent,
    /// Unknown (first pass, reboot, or someone changed the ruleset).
    #[default]
    Unknown,
}

/// A process owner seen in /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcOwner {
    /// The uid.
    pub uid: Uid,
    /// Its account name, when the uid has one.
    pub user: Option<UserName>,
    /// Live (non-zombie) processes.
    pub processes: u32,
}

/// What the housekeeper observed on the node before deciding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// Slices the housekeeper has set, by uid, with their limits.
    pub slices: BTreeMap<Uid, SliceLimits>,
    /// The managed ruleset.
    pub nft: Option<NftSeen>,
    /// Owners of live processes.
    pub processes: Vec<ProcOwner>,
    /// Warnings already given: (booking, threshold in seconds).
    pub warned: BTreeSet<(BookingId, u64)>,
    /// Bookings whose release hooks already ran; `None` on the first pass
    /// ever, when bookings that ended before it are recorded without hooks.
    pub hooks_done: Option<BTreeSet<BookingId>>,
}

/// A change to one slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceAction {
    /// Create or change the slice of `uid` to these limits.
    Set {
        /// The user's uid.
        uid: Uid,
        /// The limits.
        limits: SliceLimits,
    },
    /// Remove the limits of `uid` (the booking ended).
    Clear {
        /// The user's uid.
        uid: Uid,
    },
}

/// A change to the nftables table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftAction {
    /// Load this file (replacing the table atomically).
    Load(String),
    /// Remove the table.
    Remove,
}

/// A user whose processes are to be ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillTarget {
    /// The uid.
    pub uid: Uid,
    /// Its name, if it has one.
    pub user: Option<UserName>,
    /// Live processes seen.
    pub processes: u32,
    /// Why, for the log.
    pub reason: String,
}

/// A warning for a user whose booking ends soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The holder's uid.
    pub uid: Uid,
    /// The holder.
    pub user: UserName,
    /// The booking ending.
    pub booking: BookingId,
    /// When it ends.
    pub end: Timestamp,
    /// The message for their terminals.
    pub message: String,
}

/// Everything one pass should do, in the order it is applied.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Slice changes.
    pub slices: Vec<SliceAction>,
    /// nftables change, if the table differs.
    pub nft: Option<NftAction>,
    /// Warnings to give.
    pub warn: Vec<Warning>,
    /// Users whose processes to end.
    pub kill: Vec<KillTarget>,
    /// Ended bookings whose release hooks to run.
    pub hooks: Vec<Booking>,
    /// Warnings given after this pass (to remember).
    pub warned_next: BTreeSet<(BookingId, u64)>,
    /// Bookings whose hooks have run after this pass (to remember).
    pub hooks_done_next: BTreeSet<BookingId>,
}

impl Plan {
    /// Whether the pass changes nothing on the node (records aside).
    pub fn is_idle(&self) -> bool {
        self.slices.is_empty()
            && self.nft.is_none()
            && self.warn.is_empty()
            && self.kill.is_empty()
            && self.hooks.is_empty()
    }
}

/// Why the processes of `owner` are to be ended, or `None` if they stay.
pub fn kill_reason(desired: &Desired, owner: &ProcOwner) -> Option<String> {
    let r = &desired.rules;
    let uid = owner.uid;
    if uid.is_root() || Some(uid) == r.service_uid || r.unmanaged(uid).is_some() {
        return None;
    }
    if owner.user.as_ref().is_some_and(|n| r.bypass.contains(n)) {
        return None;
    }
    if desired.users.contains_key(&uid) {
        return None;
    }
    match desired.grace_until.get(&uid) {
        Some(until) if desired.now < *until => None,
        Some(_) => Some(format!(
            "no active booking on this node; the last one ended more than {} s ago",
            r.grace_s
        )),
        None => Some("no booking on this node".into()),
    }
}

/// The warnings due at `desired.now`. For each active booking, the smallest
/// warn time it has come within; warn times already passed are recorded as
/// given without a second message. A booking followed without a gap by
/// another booking of the same user is not ending, and gets no warning.
fn warnings(
    desired: &Desired,
    warned: &BTreeSet<(BookingId, u64)>,
) -> (Vec<Warning>, BTreeSet<(BookingId, u64)>) {
    let now = desired.now;
    let mut out = Vec::new();
    let mut next = BTreeSet::new();
    for b in desired.current.iter().filter(|b| b.start <= now) {
        let continued = desired
            .current
            .iter()
            .any(|o| o.id != b.id && o.uid == b.uid && o.start <= b.end && o.end > b.end);
        if continued {
            continue;
        }
        let left = b.end.as_second() - now.as_second();
        let due: Vec<u64> = desired
            .rules
            .warn_before_s
            .iter()
            .copied()
            .filter(|t| left <= *t as i64)
            .collect();
        let fresh = due.iter().any(|t| !warned.contains(&(b.id.clone(), *t)));
        for t in &due {
            next.insert((b.id.clone(), *t));
        }
        if fresh {
            let mins = (left + 59) / 60;
            out.push(Warning {
                uid: b.uid,
                user: b.user.clone(),
                booking: b.id.clone(),
                end: b.end,
                message: format!(
                    "kloigos: your booking {} on {} ends in {} minute(s), at {}. Save your work; your processes will be ended after it. Extend with: kloigos extend {} -t +1h",
                    b.id, b.node, mins.max(1), b.end, b.id
                ),
            });
        }
    }
    (out, next)
}

/// The actions that take the node from `observed` to `desired`.
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut p = Plan::default();
    let on = desired.rules.switches;
    for (uid, u) in desired.users.iter().filter(|_| on.slices) {
        if observed.slices.get(uid) != Some(&u.slice) {
            p.slices.push(SliceAction::Set {
                uid: *uid,
                limits: u.slice.clone(),
            });
        }
    }
    for uid in observed.slices.keys().filter(|_| on.slices) {
        if !desired.users.contains_key(uid) {
            p.slices.push(SliceAction::Clear { uid: *uid });
        }
    }
    let seen = observed.nft.clone().unwrap_or_default();
    p.nft = match (&desired.nft, seen) {
        _ if !on.nft => None,
        (Some(want), NftSeen::Loaded(have)) if *want == have => None,
        (Some(want), _) => Some(NftAction::Load(want.clone())),
        (None, NftSeen::Absent) => None,
        (None, _) => Some(NftAction::Remove),
    };
    let (warn, warned_next) = warnings(desired, &observed.warned);
    p.warn = warn;
    p.warned_next = warned_next;
    for owner in observed.processes.iter().filter(|_| on.kill) {
        if owner.processes == 0 {
            continue;
        }
        if let Some(reason) = kill_reason(desired, owner) {
            p.kill.push(KillTarget {
                uid: owner.uid,
                user: owner.user.clone(),
                processes: owner.processes,
                reason,
            });
        }
    }
    p.kill.sort_by_key(|k| k.uid);
    let ended: BTreeSet<BookingId> = desired.ended.iter().map(|b| b.id.clone()).collect();
    if let Some(done) = &observed.hooks_done {
        p.hooks = desired
            .ended
            .iter()
            .filter(|b| !done.contains(&b.id))
            .cloned()
            .collect();
    }
    p.hooks_done_next = ended;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::NodeName;
    use crate::node::NodeSpec;
    use crate::state::Size;
    use crate::testing::{request, ts, uid};

    const NOW: &str = "2026-11-23T11:00:00Z";

    fn node() -> NodeState {
        let mut spec = NodeSpec::new(NodeName::new("n1").unwrap(), CpuSet::parse("0-15").unwrap());
        spec.unit_cpus = Some(4);
        spec.ports = Some(PortRange::parse("20000-20399").unwrap());
        NodeState::new(spec)
    }

    fn book(
        st: &mut NodeState,
        user: &str,
        uid: u32,
        units: u32,
        start: &str,
        end: &str,
    ) -> Booking {
        let r = request(user, uid, Size::Units(units), ts(start), ts(end));
        st.book(&r, &Policy::default(), ts("2026-11-23T09:00:00Z"), &[])
            .unwrap()
    }

    fn host() -> Host {
        Host {
            cpus_online: None,
            mem_total: 64 << 30,
            numa: vec![
                Numa {
                    id: 0,
                    cpus: CpuSet::parse("0-7").unwrap(),
                },
                Numa {
                    id: 1,
                    cpus: CpuSet::parse("8-15").unwrap(),
                },
            ],
            controls: Controls::default(),
        }
    }

    fn rules(policy: &Policy) -> Rules {
        Rules::new(policy, Some(uid(999)), 60, None)
    }

    fn owner(raw: u32, name: &str, n: u32) -> ProcOwner {
        ProcOwner {
            uid: uid(raw),
            user: UserName::new(name).ok(),
            processes: n,
        }
    }

    #[test]
    fn limits_are_the_union_of_a_users_active_bookings() {
        let mut st = node();
        book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        book(
            &mut st,
            "alice",
            1001,
            2,
            "2026-11-23T10:30:00Z",
            "2026-11-23T12:00:00Z",
        );
        book(
            &mut st,
            "bob",
            1002,
            1,
            "2026-11-23T12:00:00Z",
            "2026-11-23T13:00:00Z",
        );
        let p = Policy {
            tasks_max_per_unit: Some(500),
            ..Policy::default()
        };
        let d = desired(&p, &st, ts(NOW), &host(), rules(&p));
        assert_eq!(d.users.len(), 1, "bob's booking is in the future");
        let a = &d.users[&uid(1001)];
        assert_eq!(a.units, 3);
        assert_eq!(a.slice.cpus.to_string(), "0-11");
        assert_eq!(a.slice.mem_nodes, vec![0, 1]);
        assert_eq!(a.slice.memory_max, Some(48 << 30), "3 of 4 units of 64 GiB");
        let high = a.slice.memory_high.unwrap();
        assert!(high < a.slice.memory_max.unwrap() && high.is_multiple_of(4096));
        assert_eq!(a.slice.tasks_max, Some(1500));
        assert_eq!(a.ports.len(), 2);
        assert_eq!(a.bookings.len(), 2);
    }

    #[test]
    fn memory_per_unit_wins_over_the_node_share() {
        let mut st = node();
        st.node.mem_per_unit = Some(1 << 30);
        book(
            &mut st,
            "alice",
            1001,
            2,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        let p = Policy::default();
        let d = desired(&p, &st, ts(NOW), &host(), rules(&p));
        let a = &d.users[&uid(1001)].slice;
        assert_eq!(a.memory_max, Some(2 << 30));
        assert_eq!(a.memory_high, Some(pages((2u64 << 30) * 9 / 10)));
        assert_eq!(a.tasks_max, None);
        // No memory known at all: no memory limit.
        st.node.mem_per_unit = None;
        let d = desired(&p, &st, ts(NOW), &Host::default(), rules(&p));
        assert_eq!(d.users[&uid(1001)].slice.memory_max, None);
        assert!(d.users[&uid(1001)].slice.mem_nodes.is_empty());
    }

    #[test]
    fn nft_ruleset_has_the_verified_shape() {
        let mut st = node();
        book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        book(
            &mut st,
            "bob",
            1002,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        let p = Policy::default();
        let d = desired(&p, &st, ts(NOW), &host(), rules(&p));
        let t = d.nft.unwrap();
        let lines: Vec<&str> = t.lines().map(str::trim).collect();
        assert_eq!(
            &lines[1..4],
            &[
                "table inet kloigos",
                "delete table inet kloigos",
                "table inet kloigos {"
            ]
        );
        assert!(t.contains("typeof meta skuid\n"));
        assert!(t.contains("elements = { 1001, 1002 }"), "{t}");
        assert!(
            t.contains("typeof meta skuid . th sport\n\t\tflags interval"),
            "{t}"
        );
        assert!(
            t.contains("elements = { 1001 . 20000-20099, 1002 . 20100-20199 }"),
            "{t}"
        );
        assert!(t.contains("type filter hook output priority filter; policy accept;"));
        assert!(t.contains(
            "meta skuid @managed ct direction reply meta l4proto { tcp, udp } meta skuid . th sport != @allowed drop"
        ));
        // Nodes without ports need no table.
        st.node.ports = None;
        for b in &mut st.bookings {
            b.ports = None;
        }
        assert_eq!(desired(&p, &st, ts(NOW), &host(), rules(&p)).nft, None);
        assert_eq!(
            render_nft_removal(),
            "table inet kloigos\ndelete table inet kloigos\n"
        );
    }

    #[test]
    fn plan_applies_only_what_changed_and_is_idle_the_second_time() {
        let mut st = node();
        book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        let p = Policy::default();
        let d = desired(&p, &st, ts(NOW), &host(), rules(&p));
        let mut obs = Observed::default();
        obs.slices
            .insert(uid(4242), d.users[&uid(1001)].slice.clone());
        let first = plan(&d, &obs);
        assert_eq!(first.slices.len(), 2);
        assert!(matches!(
            &first.slices[0],
            SliceAction::Set { uid: u, .. } if *u == uid(1001)
        ));
        assert_eq!(first.slices[1], SliceAction::Clear { uid: uid(4242) });
        assert!(matches!(&first.nft, Some(NftAction::Load(t)) if Some(t) == d.nft.as_ref()));
        // What the first pass leaves is what the second pass sees.
        let obs = Observed {
            slices: [(uid(1001), d.users[&uid(1001)].slice.clone())].into(),
            nft: Some(NftSeen::Loaded(d.nft.clone().unwrap())),
            warned: first.warned_next.clone(),
            hooks_done: Some(first.hooks_done_next.clone()),
            processes: vec![owner(1001, "alice", 3)],
        };
        let second = plan(&d, &obs);
        assert!(second.is_idle(), "{second:?}");
        // A ruleset changed behind our back is reloaded.
        let obs2 = Observed {
            nft: Some(NftSeen::Unknown),
            ..obs
        };
        assert!(matches!(plan(&d, &obs2).nft, Some(NftAction::Load(_))));
    }

    #[test]
    fn switched_off_kinds_are_left_out_of_the_plan() {
        let mut st = node();
        book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        let p = Policy::default();
        // A slice to set, one to clear, a table to load, bob to end.
        let obs = Observed {
            slices: [(uid(4242), host_slice())].into(),
            processes: vec![owner(1001, "alice", 3), owner(1002, "bob", 7)],
            ..Observed::default()
        };
        let all = plan(&desired(&p, &st, ts(NOW), &host(), rules(&p)), &obs);
        assert_eq!(all.slices.len(), 2);
        assert!(matches!(all.nft, Some(NftAction::Load(_))));
        assert_eq!(all.kill.len(), 1);
        let with = |switches: Switches| {
            let mut r = rules(&p);
            r.switches = switches;
            plan(&desired(&p, &st, ts(NOW), &host(), r), &obs)
        };
        let on = Switches::default();
        // kill = false: bob's processes stay; the rest is as before.
        let no_kill = with(Switches { kill: false, ..on });
        assert!(no_kill.kill.is_empty());
        assert_eq!(
            (no_kill.slices, no_kill.nft),
            (all.slices.clone(), all.nft.clone())
        );
        // nft = false: no table loaded, and none removed either.
        let no_nft = with(Switches { nft: false, ..on });
        assert_eq!(no_nft.nft, None);
        assert_eq!((&no_nft.slices, &no_nft.kill), (&all.slices, &all.kill));
        let mut r = rules(&p);
        r.switches.nft = false;
        let none = desired(&p, &node(), ts(NOW), &host(), r);
        let seen = Observed {
            nft: Some(NftSeen::Loaded("x".into())),
            ..Observed::default()
        };
        assert_eq!(plan(&none, &seen).nft, None);
        // No slice backend: no slice set or cleared.
        let no_slices = with(Switches {
            slices: false,
            ..on
        });
        assert!(no_slices.slices.is_empty());
        assert_eq!((&no_slices.nft, &no_slices.kill), (&all.nft, &all.kill));
        // All off: the plan only remembers.
        let off = with(Switches {
            slices: false,
            nft: false,
            kill: false,
        });
        assert!(off.is_idle(), "{off:?}");
    }

    /// Some slice limits, as another user's left over.
    fn host_slice() -> SliceLimits {
        SliceLimits {
            cpus: CpuSet::parse("8-11").unwrap(),
            mem_nodes: vec![1],
            memory_high: None,
            memory_max: None,
            tasks_max: None,
        }
    }

    #[test]
    fn limits_the_host_cannot_set_are_left_out() {
        let mut st = node();
        book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        let p = Policy {
            tasks_max_per_unit: Some(512),
            ..Policy::default()
        };
        let at = |controls: Controls| {
            let h = Host { controls, ..host() };
            desired(&p, &st, ts(NOW), &h, rules(&p)).users[&uid(1001)]
                .slice
                .clone()
        };
        let full = at(Controls::default());
        assert!(full.memory_max.is_some() && full.memory_high.is_some());
        assert_eq!(full.tasks_max, Some(512));
        let no_mem = at(Controls {
            memory: false,
            tasks: true,
        });
        assert_eq!((no_mem.memory_max, no_mem.memory_high), (None, None));
        assert_eq!((no_mem.tasks_max, &no_mem.cpus), (Some(512), &full.cpus));
        let no_pids = at(Controls {
            memory: true,
            tasks: false,
        });
        assert_eq!(no_pids.tasks_max, None);
        assert_eq!(no_pids.memory_max, full.memory_max);
        // A slice read back without those limits is as wanted: nothing to set.
        let h = Host {
            controls: Controls {
                memory: false,
                tasks: false,
            },
            ..host()
        };
        let d = desired(&p, &st, ts(NOW), &h, rules(&p));
        let mut read_back = full.clone();
        read_back.memory_high = None;
        read_back.memory_max = None;
        read_back.tasks_max = None;
        let obs = Observed {
            slices: [(uid(1001), read_back)].into(),
            ..Observed::default()
        };
        assert!(plan(&d, &obs).slices.is_empty());
    }

    #[test]
    fn table_removed_when_no_booking_needs_it() {
        let st = node();
        let p = Policy::default();
        let d = desired(&p, &st, ts(NOW), &host(), rules(&p));
        let obs = |n| Observed {
            nft: Some(n),
            ..Observed::default()
        };
        assert_eq!(
            plan(&d, &obs(NftSeen::Loaded("x".into()))).nft,
            Some(NftAction::Remove)
        );
        assert_eq!(
            plan(&d, &obs(NftSeen::Unknown)).nft,
            Some(NftAction::Remove)
        );
        assert_eq!(plan(&d, &obs(NftSeen::Absent)).nft, None);
    }

    #[test]
    fn who_is_killed() {
        let mut st = node();
        book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        // carol ended 30 s ago (in grace), dave 10 min ago.
        book(
            &mut st,
            "carol",
            1003,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T10:59:30Z",
        );
        book(
            &mut st,
            "dave",
            1004,
            1,
            "2026-11-23T09:30:00Z",
            "2026-11-23T10:50:00Z",
        );
        let p = Policy {
            bypass_users: vec![UserName::new("ops").unwrap()],
            ..Policy::default()
        };
        // 100000 and up: a container's subordinate uids here.
        let mut r = rules(&p);
        r.subuids = SubUids::parse("lxc:100000:65536\n");
        let d = desired(&p, &st, ts(NOW), &host(), r.clone());
        let obs = Observed {
            processes: vec![
                owner(0, "root", 50),
                owner(100, "daemon", 2),
                owner(999, "kloigos", 1),
                owner(1001, "alice", 5),
                owner(1002, "bob", 7),
                owner(1003, "carol", 1),
                owner(1004, "dave", 2),
                owner(1005, "ops", 3),
                ProcOwner {
                    uid: uid(1006),
                    user: None,
                    processes: 1,
                },
                owner(65534, "nobody", 1),
                ProcOwner {
                    uid: uid(100_000),
                    user: None,
                    processes: 4,
                },
                owner(1007, "erin", 0),
            ],
            ..Observed::default()
        };
        let pl = plan(&d, &obs);
        let uids: Vec<u32> = pl.kill.iter().map(|k| k.uid.as_raw()).collect();
        assert_eq!(uids, vec![1002, 1004, 1006]);
        // Without /etc/subuid listing it, uid 100000 is a person (LDAP, AD):
        // managed like any other, unless max_uid bounds the range.
        let d2 = desired(&p, &st, ts(NOW), &host(), rules(&p));
        let uids2: Vec<u32> = plan(&d2, &obs)
            .kill
            .iter()
            .map(|k| k.uid.as_raw())
            .collect();
        assert_eq!(uids2, vec![1002, 1004, 1006, 100_000]);
        let bounded = Policy {
            max_uid: Some(uid(59_999)),
            ..p.clone()
        };
        let d3 = desired(&bounded, &st, ts(NOW), &host(), rules(&bounded));
        assert!(!plan(&d3, &obs).kill.iter().any(|k| k.uid == uid(100_000)));
        assert!(pl.kill[0].reason.contains("no booking"));
        assert!(pl.kill[1].reason.contains("ended more than 60 s ago"));
        // After carol's grace period she goes too.
        let later = desired(&p, &st, ts("2026-11-23T11:00:31Z"), &host(), r);
        assert!(plan(&later, &obs).kill.iter().any(|k| k.uid == uid(1003)));
    }

    #[test]
    fn warnings_once_per_threshold_and_not_for_continued_bookings() {
        let mut st = node();
        let b = book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T11:10:00Z",
        );
        let p = Policy::default(); // warn at 900 s and 120 s
        let at = |t: &str| desired(&p, &st, ts(t), &host(), rules(&p));
        let d = at("2026-11-23T10:50:00Z"); // 20 min left
        assert!(plan(&d, &Observed::default()).warn.is_empty());
        let d = at("2026-11-23T10:56:00Z"); // 14 min left
        let pl = plan(&d, &Observed::default());
        assert_eq!(pl.warn.len(), 1);
        assert!(
            pl.warn[0].message.contains("ends in 14 minute(s)"),
            "{}",
            pl.warn[0].message
        );
        assert!(pl.warn[0].message.contains(&b.id.to_string()));
        let seen = Observed {
            warned: pl.warned_next.clone(),
            ..Observed::default()
        };
        assert!(plan(&at("2026-11-23T10:57:00Z"), &seen).warn.is_empty());
        let pl2 = plan(&at("2026-11-23T11:08:30Z"), &seen);
        assert_eq!(pl2.warn.len(), 1, "the 120 s warning");
        // First seen with 1 minute left: one message, both thresholds recorded.
        let pl3 = plan(&at("2026-11-23T11:09:00Z"), &Observed::default());
        assert_eq!(pl3.warn.len(), 1);
        assert_eq!(pl3.warned_next.len(), 2);
        // Followed by another booking of hers: no warning.
        book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T11:10:00Z",
            "2026-11-23T13:00:00Z",
        );
        let d = desired(&p, &st, ts("2026-11-23T11:09:00Z"), &host(), rules(&p));
        assert!(plan(&d, &Observed::default()).warn.is_empty());
    }

    #[test]
    fn hooks_run_once_per_ended_booking_and_not_for_history() {
        let mut st = node();
        let old = book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T09:30:00Z",
            "2026-11-23T10:00:00Z",
        );
        let p = Policy::default();
        let d = desired(&p, &st, ts(NOW), &host(), rules(&p));
        // First pass ever: what ended before is recorded, not hooked.
        let first = plan(&d, &Observed::default());
        assert!(first.hooks.is_empty());
        assert!(first.hooks_done_next.contains(&old.id));
        let b = book(
            &mut st,
            "bob",
            1002,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T11:30:00Z",
        );
        let d = desired(&p, &st, ts("2026-11-23T11:31:00Z"), &host(), rules(&p));
        let obs = Observed {
            hooks_done: Some(first.hooks_done_next.clone()),
            ..Observed::default()
        };
        let second = plan(&d, &obs);
        assert_eq!(
            second
                .hooks
                .iter()
                .map(|h| h.id.clone())
                .collect::<Vec<_>>(),
            vec![b.id.clone()]
        );
        let obs = Observed {
            hooks_done: Some(second.hooks_done_next.clone()),
            ..Observed::default()
        };
        assert!(plan(&d, &obs).hooks.is_empty());
    }

    #[test]
    fn cpus_the_host_lacks_are_left_out_of_the_slice_and_named() {
        let mut st = node();
        let a = book(
            &mut st,
            "alice",
            1001,
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        let b = book(
            &mut st,
            "bob",
            1002,
            2,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        assert_eq!(a.cpus.to_string(), "0-3");
        assert_eq!(b.cpus.to_string(), "4-11");
        let p = Policy::default();
        // A host with CPUs 0-5 online: the spec's 0-15 names 6-15 it lacks.
        let h = Host {
            cpus_online: Some(CpuSet::parse("0-5").unwrap()),
            ..host()
        };
        let d = desired(&p, &st, ts(NOW), &h, rules(&p));
        assert_eq!(d.users[&uid(1001)].slice.cpus.to_string(), "0-3");
        assert_eq!(d.users[&uid(1002)].slice.cpus.to_string(), "4-5");
        assert_eq!(d.users[&uid(1002)].slice.mem_nodes, vec![0]);
        assert_eq!(d.missing_cpus.map(|c| c.to_string()), Some("6-15".into()));
        // Booked only CPUs the host lacks: confined to those it has.
        let h = Host {
            cpus_online: Some(CpuSet::parse("0-1").unwrap()),
            ..host()
        };
        let d = desired(&p, &st, ts(NOW), &h, rules(&p));
        assert_eq!(d.users[&uid(1002)].slice.cpus.to_string(), "0-1");
        // All there, or not known: nothing missing, the booked CPUs as they are.
        let d = desired(&p, &st, ts(NOW), &host(), rules(&p));
        assert_eq!(d.missing_cpus, None);
        assert_eq!(d.users[&uid(1002)].slice.cpus.to_string(), "4-11");
        let all = CpuSet::parse("0-31").unwrap();
        assert_eq!(missing_cpus(&st.node.cpus, Some(&all)), None);
    }
}
