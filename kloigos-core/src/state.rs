//! A node's state file: its spec, its bookings and the id sequence, with
//! every rule a change must pass. All of it is pure: the store calls these
//! under the node's lock.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::booking::{spans_overlap, Booking, BookingId, Note};
use crate::cpuset::CpuSet;
use crate::duration::human_secs;
use crate::error::{Error, Result};
use crate::facts::Facts;
use crate::gpuset::GpuSet;
use crate::ids::Uid;
use crate::names::{NodeName, UserName};
use crate::node::NodeSpec;
use crate::policy::{Policy, FORMAT_VERSION};
use crate::window;

/// How long ended bookings stay in `state.json`: enough for `info` and the
/// housekeeper to see what just ended (the journal keeps them all).
pub const KEEP_ENDED_SECS: i64 = 3600;

/// At most this many ended bookings per user stay in `state.json`, so a
/// user's stream of short bookings cannot grow the file every login reads.
pub const KEEP_ENDED_PER_USER: usize = 16;

/// How much of a node a request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// This many units.
    Units(u32),
    /// At least this many CPUs, rounded up to whole units.
    Cpus(u32),
    /// Every unit of the node.
    Whole,
    /// At least this many GPUs, rounded up to whole units.
    Gpus(u32),
}

/// What a node's facts say about where its CPUs and GPUs sit, for
/// placement; empty when the node has no facts (then every placement is
/// as good as any other).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// The CPUs of each NUMA node.
    pub numa: Vec<CpuSet>,
    /// For a GPU index, the CPUs of the NUMA node it hangs off.
    pub gpu_numa: BTreeMap<u32, CpuSet>,
    /// For a GPU index, its UUID.
    pub gpu_uuid: BTreeMap<u32, String>,
}

impl Topology {
    /// Whether units `first..=last` are local: their CPUs lie in one NUMA
    /// node, and every GPU among them whose NUMA node is known hangs off
    /// the NUMA node holding those CPUs.
    pub fn is_local(&self, spec: &NodeSpec, first: u32, last: u32) -> bool {
        let cpus = spec.run_cpus(first, last);
        if !in_one_numa(&cpus, &self.numa) {
            return false;
        }
        let Some(gpus) = spec.run_gpus(first, last) else {
            return true;
        };
        gpus.indices().iter().all(|g| {
            self.gpu_numa
                .get(g)
                .is_none_or(|near| cpus.cpus().iter().all(|c| near.cpus().contains(c)))
        })
    }

    /// The UUIDs of `gpus`, in index order, when every one is known.
    pub fn uuids(&self, gpus: &GpuSet) -> Vec<String> {
        let v: Vec<String> = gpus
            .indices()
            .iter()
            .filter_map(|g| self.gpu_uuid.get(g).cloned())
            .collect();
        if v.len() == gpus.len() {
            v
        } else {
            Vec::new()
        }
    }
}

/// A booking request, already parsed and authorized.
#[derive(Debug, Clone)]
pub struct Request {
    /// Who will hold the booking.
    pub user: UserName,
    /// Their uid.
    pub uid: Uid,
    /// Who asks (differs from `user` when an admin books for someone).
    pub created_by: UserName,
    /// How much.
    pub size: Size,
    /// Start of the span.
    pub start: Timestamp,
    /// End of the span (exclusive).
    pub end: Timestamp,
    /// The user's note.
    pub note: Note,
    /// The user's current and future bookings on other nodes, for the per-user limit.
    pub held_elsewhere: u32,
}

/// A node's condition at a glance, as `info` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// An admin drained it: it takes no new bookings.
    Drained,
    /// Its housekeeper has not written facts for a while: what it
    /// enforces is not known.
    Stale,
    /// No unit is free now.
    Full,
    /// Some units are free now, not all.
    Partly,
    /// Every unit is free now.
    Free,
}

impl Condition {
    /// The word `info` prints, and `info --json` gives as `state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Drained => "drained",
            Condition::Stale => "stale",
            Condition::Full => "full",
            Condition::Partly => "partly",
            Condition::Free => "free",
        }
    }
}

/// The current and future bookings `user` holds on the nodes of `states`
/// other than `except` (the node being booked): a [`Request`]'s
/// `held_elsewhere`, which `max_active_per_user` adds to those held there.
pub fn held_elsewhere<'a>(
    states: impl IntoIterator<Item = &'a NodeState>,
    user: &UserName,
    except: Option<&NodeName>,
    now: Timestamp,
) -> u32 {
    states
        .into_iter()
        .filter(|s| Some(&s.node.name) != except)
        .fold(0u32, |n, s| n.saturating_add(s.held_by(user, now)))
}

/// The content of `nodes/<node>/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// File format version.
    pub version: u32,
    /// Last booking sequence number handed out.
    pub seq: u64,
    /// What the node offers.
    pub node: NodeSpec,
    /// Current, future and recently ended bookings, ordered by start.
    pub bookings: Vec<Booking>,
}

impl NodeState {
    /// A fresh state for a newly added node.
    pub fn new(node: NodeSpec) -> NodeState {
        NodeState {
            version: FORMAT_VERSION,
            seq: 0,
            node,
            bookings: Vec::new(),
        }
    }

    /// Bookings holding at `now`.
    pub fn active(&self, now: Timestamp) -> impl Iterator<Item = &Booking> {
        self.bookings.iter().filter(move |b| b.is_active(now))
    }

    /// The booking a session of `uid` starting at `now` belongs to: its
    /// active booking here (the earliest started, when it holds several).
    pub fn session_booking(&self, uid: Uid, now: Timestamp) -> Option<&Booking> {
        self.active(now)
            .filter(|b| b.uid == uid)
            .min_by_key(|b| (b.start, &b.id))
    }

    /// Finds a booking by id.
    pub fn get(&self, id: &BookingId) -> Option<&Booking> {
        self.bookings.iter().find(|b| &b.id == id)
    }

    /// Units free now: for the coming second, as `info` counts them.
    pub fn units_free_now(&self, now: Timestamp) -> u32 {
        self.units_free(now, now + SignedDuration::from_secs(1))
    }

    /// The node's condition at `now`, given its facts (if any) and the
    /// units free now: a drain comes first, then stale facts, then how
    /// full it is.
    pub fn condition(&self, facts: Option<&Facts>, now: Timestamp, free: u32) -> Condition {
        if self.node.drained.is_some() {
            Condition::Drained
        } else if facts.is_some_and(|f| f.is_stale(now)) {
            Condition::Stale
        } else if free == 0 {
            Condition::Full
        } else if free < self.node.units_total() {
            Condition::Partly
        } else {
            Condition::Free
        }
    }

    /// When the next unit frees up: `now` if `free` units are free now,
    /// else the earliest end of an active booking (`None` when none holds).
    pub fn next_free(&self, now: Timestamp, free: u32) -> Option<Timestamp> {
        if free > 0 {
            return Some(now);
        }
        self.active(now).map(|b| b.end).min()
    }

    /// The current and future bookings `user` holds here: what the
    /// per-user limits (`max_bookings_per_user_node`, `max_active_per_user`)
    /// count.
    pub fn held_by(&self, user: &UserName, now: Timestamp) -> u32 {
        let n = self
            .bookings
            .iter()
            .filter(|b| &b.user == user && b.is_current_or_future(now))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Units of the node free for the whole of `[start, end)`.
    pub fn free_units(&self, start: Timestamp, end: Timestamp) -> Vec<bool> {
        let mut free = vec![true; self.node.units_total() as usize];
        for b in &self.bookings {
            if spans_overlap(b.start, b.end, start, end) {
                for u in b.units[0]..=b.units[1] {
                    if let Some(f) = free.get_mut(u as usize) {
                        *f = false;
                    }
                }
            }
        }
        free
    }

    /// Number of units free for `[start, end)`.
    pub fn units_free(&self, start: Timestamp, end: Timestamp) -> u32 {
        self.free_units(start, end).iter().filter(|f| **f).count() as u32
    }

    /// The units a request of `size` needs here, or why it can never fit.
    pub fn units_needed(&self, size: Size) -> Result<u32> {
        let total = self.node.units_total();
        let n = match size {
            Size::Whole => total,
            Size::Units(n) => n,
            Size::Cpus(c) => self.node.units_for_cpus(c),
            Size::Gpus(g) => {
                let total_gpus = self.node.gpus.as_ref().map_or(0, GpuSet::len) as u32;
                let Some(n) = self.node.units_for_gpus(g) else {
                    return Err(Error::Refused(format!(
                        "{} has no GPUs; pick a node with GPUs (`kloigos info` shows them)",
                        self.node.name
                    )));
                };
                if g > total_gpus {
                    return Err(Error::Refused(format!(
                        "{} has {total_gpus} GPU(s); {g} cannot fit",
                        self.node.name
                    )));
                }
                n
            }
        };
        if n == 0 {
            return Err(Error::invalid(
                "size",
                "0",
                "ask for at least one unit, CPU or GPU",
            ));
        }
        if n > total {
            return Err(Error::Refused(format!(
                "{} has {} unit(s) of {} CPUs ({} CPUs); {} unit(s) cannot fit",
                self.node.name,
                total,
                self.node.cpus_per_unit(),
                self.node.cpus.len(),
                n
            )));
        }
        Ok(n)
    }

    /// Best fit: the placement of `n` units in the smallest free run that
    /// holds them, preferring local placements ([`Topology::is_local`]),
    /// then the lowest unit. Returns `(first unit, length of the free run
    /// it sits in)`.
    pub fn best_run(
        &self,
        n: u32,
        start: Timestamp,
        end: Timestamp,
        topo: &Topology,
    ) -> Option<(u32, u32)> {
        let free = self.free_units(start, end);
        let mut best: Option<((bool, u32, u32), u32)> = None;
        let mut i = 0;
        while i < free.len() {
            if !free[i] {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < free.len() && free[i] {
                i += 1;
            }
            let run_len = (i - run_start) as u32;
            if run_len < n {
                continue;
            }
            let run_start = run_start as u32;
            // Within a run, the first local offset, else the run's start.
            let first = (run_start..=run_start + run_len - n)
                .find(|&f| topo.is_local(&self.node, f, f + n - 1))
                .unwrap_or(run_start);
            let split = !topo.is_local(&self.node, first, first + n - 1);
            let key = (split, run_len, first);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, first));
            }
        }
        best.map(|((_, len, _), first)| (first, len))
    }

    /// Checks the rules that do not depend on where the units go.
    fn check_rules(&self, req: &Request, policy: &Policy, now: Timestamp) -> Result<()> {
        let name = &self.node.name;
        if let Some(d) = &self.node.drained {
            return Err(Error::Refused(format!(
                "{name} is drained ({}); running bookings continue, new ones are refused — pick another node",
                d.reason
            )));
        }
        req.note.check()?;
        let len = req.end.as_second() - req.start.as_second();
        if len <= 0 {
            return Err(Error::Refused(
                "the booking would end before it starts".into(),
            ));
        }
        if (len as u64) < policy.min_duration.secs() {
            return Err(Error::Refused(format!(
                "{} is shorter than the cluster's min_duration {}; book at least {}",
                human_secs(len),
                policy.min_duration,
                policy.min_duration
            )));
        }
        if req.end <= now {
            return Err(Error::Refused(
                "that span is in the past; book from now on".into(),
            ));
        }
        if len as u64 > policy.max_duration.secs() {
            return Err(Error::Refused(format!(
                "{} is longer than the cluster's max_duration {}; book at most {} (and extend later if allowed)",
                human_secs(len),
                policy.max_duration,
                policy.max_duration
            )));
        }
        let ahead = req.start.as_second() - now.as_second();
        if ahead > policy.max_ahead.secs() as i64 {
            return Err(Error::Refused(format!(
                "the start is {} ahead; bookings may start at most {} ahead",
                human_secs(ahead),
                policy.max_ahead
            )));
        }
        let tz = policy.tz_or_utc();
        if !window::allows(&self.node.windows, &tz, req.start, req.end) {
            let windows: Vec<String> = self.node.windows.iter().map(|w| w.to_string()).collect();
            return Err(Error::Refused(format!(
                "{name} takes bookings only inside its windows ({}, time zone {}); this span does not lie inside one",
                windows.join("; "),
                policy.timezone
            )));
        }
        let here = self.held_by(&req.user, now);
        let cap = policy.max_bookings_per_user_node;
        if cap > 0 && here >= cap {
            return Err(Error::Refused(format!(
                "{} already holds {here} current or future booking(s) on {name}, the cluster's max_bookings_per_user_node; release one first (`kloigos list`)",
                req.user
            )));
        }
        if policy.max_active_per_user > 0 && here + req.held_elsewhere >= policy.max_active_per_user
        {
            return Err(Error::Refused(format!(
                "{} already holds {} current or future booking(s), the cluster's max_active_per_user; release one first",
                req.user,
                here + req.held_elsewhere
            )));
        }
        Ok(())
    }

    /// [`NodeState::book_in`] knowing only the NUMA layout.
    pub fn book(
        &mut self,
        req: &Request,
        policy: &Policy,
        now: Timestamp,
        numa: &[CpuSet],
    ) -> Result<Booking> {
        let topo = Topology {
            numa: numa.to_vec(),
            ..Topology::default()
        };
        self.book_in(req, policy, now, &topo)
    }

    /// Validates `req` and records it, returning the new booking; `topo`
    /// steers placement and names the GPUs. On a capacity refusal the
    /// message gives the earliest start that would fit.
    pub fn book_in(
        &mut self,
        req: &Request,
        policy: &Policy,
        now: Timestamp,
        topo: &Topology,
    ) -> Result<Booking> {
        let n = self.units_needed(req.size)?;
        self.check_rules(req, policy, now)?;
        let Some((first, _)) = self.best_run(n, req.start, req.end, topo) else {
            let len = SignedDuration::from_secs(req.end.as_second() - req.start.as_second());
            let hint = match self.earliest_start(n, len, req.start, policy) {
                Some(t) => format!("the earliest start that fits is {} (use --at or --wait)", t),
                None => format!("nothing fits within the next {}", policy.max_ahead),
            };
            return Err(Error::Full(format!(
                "{} has no {} free unit(s) in a row for that span ({} of {} free now); {}",
                self.node.name,
                n,
                self.units_free(req.start, req.end),
                self.node.units_total(),
                hint
            )));
        };
        self.seq += 1;
        let last = first + n - 1;
        let gpus = self.node.run_gpus(first, last);
        let booking = Booking {
            id: BookingId {
                node: self.node.name.clone(),
                seq: self.seq,
            },
            node: self.node.name.clone(),
            user: req.user.clone(),
            uid: req.uid,
            units: [first, last],
            cpus: self.node.run_cpus(first, last),
            ports: self.node.run_ports(first, last),
            gpu_uuids: gpus.as_ref().map(|g| topo.uuids(g)).unwrap_or_default(),
            gpus,
            start: req.start,
            end: req.end,
            note: req.note.clone(),
            created_by: req.created_by.clone(),
            created_at: now,
        };
        self.bookings.push(booking.clone());
        self.bookings
            .sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        Ok(booking)
    }

    /// The earliest start at or after `after` where `n` units in a row are
    /// free for `len` inside the windows, looking `max_ahead` forward.
    pub fn earliest_start(
        &self,
        n: u32,
        len: SignedDuration,
        after: Timestamp,
        policy: &Policy,
    ) -> Option<Timestamp> {
        let tz = policy.tz_or_utc();
        let horizon = after.checked_add(policy.max_ahead.signed()).ok()?;
        // The earliest feasible start is `after`, an end of a booking or a window opening.
        let mut candidates: Vec<Timestamp> = vec![after];
        candidates.extend(
            self.bookings
                .iter()
                .map(|b| b.end)
                .filter(|e| *e > after && *e <= horizon),
        );
        if !self.node.windows.is_empty() {
            candidates.extend(
                window::open_intervals(&self.node.windows, &tz, after, horizon)
                    .into_iter()
                    .map(|(s, _)| s)
                    .filter(|s| *s >= after),
            );
        }
        candidates.sort();
        candidates.dedup();
        candidates.into_iter().find(|&s| {
            let Ok(e) = s.checked_add(len) else {
                return false;
            };
            window::allows(&self.node.windows, &tz, s, e)
                && self.best_run(n, s, e, &Topology::default()).is_some()
        })
    }

    /// Ends `id` at `now` (or removes it if it has not started). Returns the
    /// booking as it stands after the change.
    pub fn release(&mut self, id: &BookingId, now: Timestamp) -> Result<Booking> {
        let idx = self.index_of(id)?;
        let b = &mut self.bookings[idx];
        if b.end <= now {
            return Err(Error::Refused(format!("{id} already ended at {}", b.end)));
        }
        if b.start > now {
            // A reservation that never started: nothing to keep.
            let mut gone = self.bookings.remove(idx);
            gone.end = gone.start;
            return Ok(gone);
        }
        b.end = now;
        Ok(b.clone())
    }

    /// Releases every current and future booking of `user` here, as
    /// `release --all` and `release -w NODE` do: active ones end at `now`,
    /// future ones are removed. Returns them in the order they were held;
    /// none is an empty list, not an error.
    pub fn release_all_of(&mut self, user: &UserName, now: Timestamp) -> Result<Vec<Booking>> {
        let ids: Vec<BookingId> = self
            .bookings
            .iter()
            .filter(|b| &b.user == user && b.is_current_or_future(now))
            .map(|b| b.id.clone())
            .collect();
        ids.iter().map(|id| self.release(id, now)).collect()
    }

    /// Moves the end of `id` to `new_end`, if the units stay free and the rules hold.
    pub fn extend(
        &mut self,
        id: &BookingId,
        new_end: Timestamp,
        policy: &Policy,
        now: Timestamp,
    ) -> Result<Booking> {
        let idx = self.index_of(id)?;
        let b = self.bookings[idx].clone();
        if b.end <= now {
            return Err(Error::Refused(format!(
                "{id} already ended; book again with `kloigos alloc`"
            )));
        }
        if new_end <= b.end {
            return Err(Error::Refused(format!(
                "{id} already runs until {}; give a later time (`-t +1h` adds an hour)",
                b.end
            )));
        }
        let len = new_end.as_second() - b.start.as_second();
        if len as u64 > policy.max_duration.secs() {
            let latest = crate::when::plus_secs(b.start, policy.max_duration.secs() as i64);
            return Err(Error::Refused(format!(
                "{id} would last {}, beyond max_duration {}; the latest end allowed is {latest}",
                human_secs(len),
                policy.max_duration
            )));
        }
        if let Some(d) = &self.node.drained {
            return Err(Error::Refused(format!(
                "{} is drained ({}); bookings on it cannot be extended",
                self.node.name, d.reason
            )));
        }
        let tz = policy.tz_or_utc();
        if !window::allows(&self.node.windows, &tz, b.start, new_end) {
            return Err(Error::Refused(format!(
                "{} takes bookings only inside its windows; {new_end} lies outside the window {id} is in",
                self.node.name
            )));
        }
        if let Some(other) = self.bookings.iter().find(|o| {
            o.id != b.id
                && spans_overlap(b.end, new_end, o.start, o.end)
                && o.units[0] <= b.units[1]
                && b.units[0] <= o.units[1]
        }) {
            return Err(Error::Refused(format!(
                "{} is booked by {} from {}; {id} can be extended until then at most",
                other.id, other.user, other.start
            )));
        }
        self.bookings[idx].end = new_end;
        Ok(self.bookings[idx].clone())
    }

    /// Drops ended bookings beyond what a short display needs: those that
    /// ended more than [`KEEP_ENDED_SECS`] before `now`, and all but the
    /// [`KEEP_ENDED_PER_USER`] latest-ending of each user. Current and
    /// future bookings always stay. Returns how many were dropped.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let before = self.bookings.len();
        let cutoff = now.as_second() - KEEP_ENDED_SECS;
        // Ended bookings, latest end first: a user's first KEEP_ENDED_PER_USER stay.
        let mut ended: Vec<(&UserName, Timestamp, u64)> = self
            .bookings
            .iter()
            .filter(|b| !b.is_current_or_future(now) && b.end.as_second() > cutoff)
            .map(|b| (&b.user, b.end, b.id.seq))
            .collect();
        ended.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        let mut keep = std::collections::HashSet::new();
        let mut run = 0;
        for (i, (user, _, seq)) in ended.iter().enumerate() {
            run = if i > 0 && ended[i - 1].0 == *user {
                run + 1
            } else {
                0
            };
            if run < KEEP_ENDED_PER_USER {
                keep.insert(*seq);
            }
        }
        self.bookings
            .retain(|b| b.is_current_or_future(now) || keep.contains(&b.id.seq));
        before - self.bookings.len()
    }

    /// Everything wrong with this state (for `fsck` and for refusing to
    /// write a state that breaks an invariant).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = crate::policy::check_version(self.version) {
            out.push(e);
        }
        if let Err(e) = self.node.validate() {
            out.push(e.to_string());
        }
        let total = self.node.units_total();
        let mut seen = std::collections::HashSet::with_capacity(self.bookings.len());
        for b in &self.bookings {
            if b.node != self.node.name || b.id.node != self.node.name {
                out.push(format!("booking {} names another node", b.id));
            }
            if b.id.seq > self.seq {
                out.push(format!("booking {} is beyond seq {}", b.id, self.seq));
            }
            if b.units[0] > b.units[1] || b.units[1] >= total {
                out.push(format!(
                    "booking {} holds units {:?} outside 0-{}",
                    b.id,
                    b.units,
                    total.saturating_sub(1)
                ));
            }
            if b.end < b.start {
                out.push(format!("booking {} ends before it starts", b.id));
            }
            if !seen.insert(&b.id) {
                out.push(format!("booking id {} appears twice", b.id));
            }
        }
        out.extend(self.overlaps());
        out
    }

    /// Pairs of bookings that hold a unit at a common instant, found by
    /// sorting on start and sweeping: each unit remembers the booking that
    /// holds it until the latest end seen so far, so the cost is
    /// O(n log n + booked units), not a comparison of every pair.
    fn overlaps(&self) -> Vec<String> {
        let total = self.node.units_total() as usize;
        let mut order: Vec<&Booking> = self
            .bookings
            .iter()
            // Empty spans hold nothing; units outside the node are reported apart.
            .filter(|b| {
                b.end > b.start && b.units[0] <= b.units[1] && (b.units[1] as usize) < total
            })
            .collect();
        order.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        let mut held: Vec<Option<&Booking>> = vec![None; total];
        let mut out = Vec::new();
        for b in order {
            let mut clashed: Vec<&BookingId> = Vec::new();
            for u in b.units[0]..=b.units[1] {
                let slot = &mut held[u as usize];
                if let Some(o) = *slot {
                    if o.end > b.start && !clashed.contains(&&o.id) {
                        clashed.push(&o.id);
                        out.push(format!("bookings {} and {} overlap", o.id, b.id));
                    }
                }
                if slot.is_none_or(|o| o.end < b.end) {
                    *slot = Some(b);
                }
            }
        }
        out
    }

    fn index_of(&self, id: &BookingId) -> Result<usize> {
        self.bookings
            .iter()
            .position(|b| &b.id == id)
            .ok_or_else(|| Error::Refused(format!("no booking {id} (see `kloigos list --all`)")))
    }
}

fn in_one_numa(cpus: &CpuSet, numa: &[CpuSet]) -> bool {
    numa.is_empty()
        || numa
            .iter()
            .any(|n| cpus.cpus().iter().all(|c| n.cpus().contains(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{request, ts, uid};
    use crate::window::Window;
    use proptest::prelude::*;

    const NOW: &str = "2026-11-23T10:00:00Z";

    fn state(units: u32) -> NodeState {
        let cpus = CpuSet::parse(&format!("0-{}", units * 4 - 1)).unwrap();
        let mut spec = NodeSpec::new(NodeName::new("n1").unwrap(), cpus);
        spec.unit_cpus = Some(4);
        NodeState::new(spec)
    }

    fn req(user: &str, size: Size, start: &str, hours: i64) -> Request {
        let start = ts(start);
        let end = start
            .checked_add(SignedDuration::from_hours(hours))
            .unwrap();
        request(user, 1000, size, start, end)
    }

    #[test]
    fn books_best_fit_and_refuses_overlap_with_earliest_time() {
        let mut s = state(4);
        let p = Policy::default();
        let now = ts(NOW);
        let a = s
            .book(&req("alice", Size::Units(2), NOW, 2), &p, now, &[])
            .unwrap();
        assert_eq!((a.units, a.cpus.to_string()), ([0, 1], "0-7".into()));
        // Free run 2-3; one unit goes at its start.
        let b = s
            .book(&req("bob", Size::Cpus(3), NOW, 1), &p, now, &[])
            .unwrap();
        assert_eq!(b.units, [2, 2]);
        let e = s
            .book(&req("carol", Size::Units(2), NOW, 1), &p, now, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no 2 free unit(s)"), "{e}");
        assert!(
            e.contains("earliest start that fits is 2026-11-23T11:00:00Z"),
            "{e}"
        );
        assert!(s.problems().is_empty());
    }

    #[test]
    fn release_all_takes_the_users_current_and_future_only() {
        let p = Policy::default();
        let now = ts(NOW);
        let mut s = state(4);
        let alice = UserName::new("alice").unwrap();
        // n1:1 ends before the release, n1:2 holds, n1:3 is to come, n1:4 is bob's.
        s.book(&req("alice", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        s.book(&req("alice", Size::Units(1), NOW, 3), &p, now, &[])
            .unwrap();
        s.book(
            &req("alice", Size::Units(1), "2026-11-23T14:00:00Z", 1),
            &p,
            now,
            &[],
        )
        .unwrap();
        s.book(&req("bob", Size::Units(1), NOW, 3), &p, now, &[])
            .unwrap();
        let at = ts("2026-11-23T11:30:00Z");
        let gone = s.release_all_of(&alice, at).unwrap();
        let ids: Vec<String> = gone.iter().map(|b| b.id.to_string()).collect();
        assert_eq!(ids, ["n1:2", "n1:3"]);
        // The active one ends now; the future one never started.
        assert_eq!(gone[0].end, at);
        assert_eq!(gone[1].end, gone[1].start);
        assert_eq!(s.held_by(&alice, at), 0);
        assert!(s.get(&BookingId::parse("n1:3").unwrap()).is_none());
        // The ended booking and bob's are as they were.
        assert_eq!(
            s.get(&BookingId::parse("n1:1").unwrap()).unwrap().end,
            ts("2026-11-23T11:00:00Z")
        );
        assert_eq!(
            s.get(&BookingId::parse("n1:4").unwrap()).unwrap().end,
            ts("2026-11-23T13:00:00Z")
        );
        // Nothing left to release is no error.
        assert!(s.release_all_of(&alice, at).unwrap().is_empty());
        assert!(s.problems().is_empty());
    }

    /// Facts of node n1 written at `heartbeat`.
    fn facts_at(heartbeat: &str) -> Facts {
        serde_json::from_value(serde_json::json!({
            "version": 1, "node": "n1", "heartbeat": heartbeat,
        }))
        .unwrap()
    }

    #[test]
    fn condition_drain_then_stale_then_fullness() {
        let p = Policy::default();
        let now = ts(NOW);
        let fresh = facts_at("2026-11-23T09:59:00Z");
        let stale = facts_at("2026-11-23T09:00:00Z");
        let mut s = state(2);
        let free = s.units_free_now(now);
        assert_eq!(free, 2);
        assert_eq!(s.condition(None, now, free), Condition::Free);
        assert_eq!(s.condition(Some(&fresh), now, free), Condition::Free);
        assert_eq!(s.condition(Some(&stale), now, free), Condition::Stale);
        s.book(&req("a", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        let free = s.units_free_now(now);
        assert_eq!(free, 1);
        assert_eq!(s.condition(Some(&fresh), now, free), Condition::Partly);
        s.book(&req("b", Size::Units(1), NOW, 2), &p, now, &[])
            .unwrap();
        let free = s.units_free_now(now);
        assert_eq!(free, 0);
        assert_eq!(s.condition(Some(&fresh), now, free), Condition::Full);
        assert_eq!(s.condition(Some(&stale), now, free), Condition::Stale);
        s.node.drained = Some(crate::node::Drain {
            reason: "disk".into(),
            by: UserName::new("root").unwrap(),
            since: now,
        });
        assert_eq!(s.condition(Some(&stale), now, free), Condition::Drained);
        assert_eq!(Condition::Drained.as_str(), "drained");
        assert_eq!(Condition::Partly.as_str(), "partly");
    }

    #[test]
    fn next_free_is_now_or_the_first_end() {
        let p = Policy::default();
        let now = ts(NOW);
        let mut s = state(2);
        assert_eq!(s.next_free(now, s.units_free_now(now)), Some(now));
        s.book(&req("a", Size::Units(1), NOW, 3), &p, now, &[])
            .unwrap();
        s.book(&req("b", Size::Units(1), NOW, 2), &p, now, &[])
            .unwrap();
        // A booking that starts later does not free anything.
        s.book(
            &req("c", Size::Units(1), "2026-11-23T12:00:00Z", 1),
            &p,
            now,
            &[],
        )
        .unwrap();
        assert_eq!(s.units_free_now(now), 0);
        assert_eq!(s.next_free(now, 0), Some(ts("2026-11-23T12:00:00Z")));
        // Until b ends its unit is taken; then c takes it.
        let just_before = ts("2026-11-23T11:59:59Z");
        assert_eq!(s.units_free_now(just_before), 0);
        let end = ts("2026-11-23T12:00:00Z");
        assert_eq!(s.units_free_now(end), 0);
        assert_eq!(s.next_free(end, 0), Some(ts("2026-11-23T13:00:00Z")));
        // Nothing active and nothing free: no time to give.
        assert_eq!(state(1).next_free(now, 0), None);
    }

    /// A state of `units` units on node `name`.
    fn state_on(name: &str, units: u32) -> NodeState {
        let mut s = state(units);
        s.node.name = NodeName::new(name).unwrap();
        s
    }

    #[test]
    fn held_counts_current_and_future_of_the_user_on_other_nodes() {
        let p = Policy::default();
        let now = ts(NOW);
        let alice = UserName::new("alice").unwrap();
        let mut n1 = state_on("n1", 4);
        let mut n2 = state_on("n2", 4);
        let mut n3 = state_on("n3", 4);
        // n1: one current booking of alice's.
        n1.book(&req("alice", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        // n2: one current, one future of alice's, and bob's.
        n2.book(&req("alice", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        n2.book(
            &req("alice", Size::Units(1), "2026-11-24T10:00:00Z", 1),
            &p,
            now,
            &[],
        )
        .unwrap();
        n2.book(&req("bob", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        // n3: alice's booking, ended by the time counted.
        n3.book(&req("alice", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        let later = ts("2026-11-23T10:30:00Z");
        n3.release(&BookingId::parse("n3:1").unwrap(), later)
            .unwrap();
        let states = [n1, n2, n3];
        assert_eq!(states[1].held_by(&alice, later), 2);
        assert_eq!(states[2].held_by(&alice, later), 0);
        let n1_name = NodeName::new("n1").unwrap();
        let n2_name = NodeName::new("n2").unwrap();
        assert_eq!(held_elsewhere(&states, &alice, None, later), 3);
        assert_eq!(held_elsewhere(&states, &alice, Some(&n1_name), later), 2);
        assert_eq!(held_elsewhere(&states, &alice, Some(&n2_name), later), 1);
        let bob = UserName::new("bob").unwrap();
        assert_eq!(held_elsewhere(&states, &bob, Some(&n1_name), later), 1);
        assert_eq!(held_elsewhere(&states, &bob, Some(&n2_name), later), 0);
        // Once the hour is over only the future booking is left.
        let after = ts("2026-11-23T11:00:00Z");
        assert_eq!(held_elsewhere(&states, &alice, Some(&n1_name), after), 1);
    }

    #[test]
    fn max_active_adds_the_bookings_held_elsewhere() {
        let p = Policy {
            max_active_per_user: 2,
            ..Policy::default()
        };
        let now = ts(NOW);
        let mut s = state(4);
        s.book(&req("alice", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        let mut r = req("alice", Size::Units(1), NOW, 1);
        r.held_elsewhere = 1;
        let e = s.book(&r, &p, now, &[]).unwrap_err().to_string();
        assert!(
            e.contains("already holds 2") && e.contains("max_active_per_user"),
            "{e}"
        );
        r.held_elsewhere = 0;
        s.book(&r, &p, now, &[]).unwrap();
    }

    #[test]
    fn best_fit_prefers_the_smallest_run() {
        let mut s = state(8);
        let p = Policy::default();
        let now = ts(NOW);
        s.book(&req("a", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap(); // unit 0
        s.book(&req("b", Size::Units(2), NOW, 1), &p, now, &[])
            .unwrap(); // 1-2
        s.book(&req("c", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap(); // 3
        s.release(&BookingId::parse("n1:2").unwrap(), now).unwrap();
        // Free runs: 1-2 (len 2) and 4-7 (len 4): one unit goes into 1-2.
        let d = s
            .book(&req("d", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        assert_eq!(d.units, [1, 1]);
    }

    #[test]
    fn numa_preference() {
        let mut s = state(4);
        let p = Policy::default();
        let now = ts(NOW);
        let numa = [
            CpuSet::parse("0-7").unwrap(),
            CpuSet::parse("8-15").unwrap(),
        ];
        s.book(&req("a", Size::Units(1), NOW, 1), &p, now, &numa)
            .unwrap(); // unit 0
                       // Free 1-3; two units at 1-2 would span both NUMA nodes; 2-3 does not.
        let b = s
            .book(&req("b", Size::Units(2), NOW, 1), &p, now, &numa)
            .unwrap();
        assert_eq!(b.units, [2, 3]);
    }

    /// 4 units of 4 CPUs with `gpus` GPUs split over them.
    fn gpu_state(gpus: &str) -> NodeState {
        let mut s = state(4);
        s.node.gpus = Some(GpuSet::parse(gpus).unwrap());
        s.node.validate().unwrap();
        s
    }

    #[test]
    fn books_by_gpus_in_whole_units() {
        let mut s = gpu_state("0-7");
        let p = Policy::default();
        let now = ts(NOW);
        let a = s
            .book(&req("a", Size::Gpus(3), NOW, 1), &p, now, &[])
            .unwrap();
        assert_eq!(a.units, [0, 1]);
        assert_eq!(a.gpus.as_ref().unwrap().to_string(), "0-3");
        assert_eq!(a.cpus.to_string(), "0-7");
        let b = s
            .book(&req("b", Size::Gpus(1), NOW, 1), &p, now, &[])
            .unwrap();
        assert_eq!(b.gpus.as_ref().unwrap().to_string(), "4-5");
        let e = s
            .book(&req("c", Size::Gpus(4), NOW, 1), &p, now, &[])
            .unwrap_err();
        assert!(matches!(e, Error::Full(_)), "{e}");
        let e = s
            .book(&req("c", Size::Gpus(9), NOW, 1), &p, now, &[])
            .unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e}");
        assert!(e.to_string().contains("has 8 GPU(s); 9 cannot fit"), "{e}");
        let e = state(4)
            .book(&req("c", Size::Gpus(1), NOW, 1), &p, now, &[])
            .unwrap_err();
        assert!(e.to_string().contains("n1 has no GPUs"), "{e}");
        // A booking by units on a GPU node holds the GPUs of its units.
        let u = s
            .book(&req("d", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        assert_eq!(u.gpus.as_ref().unwrap().to_string(), "6-7");
    }

    #[test]
    fn gpu_bookings_prefer_units_near_their_gpus_and_carry_uuids() {
        let mut s = gpu_state("0-3");
        let p = Policy::default();
        let now = ts(NOW);
        // CPUs 0-7 on NUMA 0, 8-15 on NUMA 1; GPU 0 is wired to NUMA 1,
        // GPU 2 to NUMA 1: unit 0 is not local, unit 2 is.
        let topo = Topology {
            numa: vec![
                CpuSet::parse("0-7").unwrap(),
                CpuSet::parse("8-15").unwrap(),
            ],
            gpu_numa: [
                (0, CpuSet::parse("8-15").unwrap()),
                (1, CpuSet::parse("8-15").unwrap()),
                (2, CpuSet::parse("8-15").unwrap()),
            ]
            .into(),
            gpu_uuid: (0..4).map(|i| (i, format!("GPU-{i}"))).collect(),
        };
        assert!(!topo.is_local(&s.node, 0, 0));
        assert!(topo.is_local(&s.node, 2, 2));
        let a = s
            .book_in(&req("a", Size::Gpus(1), NOW, 1), &p, now, &topo)
            .unwrap();
        assert_eq!(a.gpus.as_ref().unwrap().to_string(), "2");
        assert_eq!(a.gpu_uuids, ["GPU-2"]);
        // Without facts plain best fit (unit 3, the smallest free run), and
        // no UUIDs are invented.
        let b = s
            .book_in(
                &req("b", Size::Gpus(1), NOW, 1),
                &p,
                now,
                &Topology::default(),
            )
            .unwrap();
        assert_eq!(b.gpus.as_ref().unwrap().to_string(), "3");
        assert!(b.gpu_uuids.is_empty());
    }

    #[test]
    fn a_session_belongs_to_the_users_earliest_active_booking() {
        let mut s = state(4);
        let p = Policy::default();
        let now = ts(NOW);
        let mut other = req("b", Size::Units(1), NOW, 2);
        other.uid = uid(1001);
        s.book(&other, &p, now, &[]).unwrap();
        let later = s
            .book(
                &req("a", Size::Units(1), "2026-11-23T11:00:00Z", 1),
                &p,
                now,
                &[],
            )
            .unwrap();
        assert_eq!(s.session_booking(uid(1000), now), None);
        let first = s
            .book(&req("a", Size::Units(1), NOW, 2), &p, now, &[])
            .unwrap();
        assert_eq!(s.session_booking(uid(1000), now), Some(&first));
        let t = ts("2026-11-23T11:30:00Z");
        assert_eq!(
            s.session_booking(uid(1000), t).map(|b| &b.id),
            Some(&first.id)
        );
        s.release(&first.id, t).unwrap();
        assert_eq!(
            s.session_booking(uid(1000), t),
            Some(&later).map(|b| s.get(&b.id).unwrap())
        );
    }

    #[test]
    fn refusals_say_why() {
        let p = Policy::default();
        let now = ts(NOW);
        let mut s = state(2);
        let too_long = req("a", Size::Units(1), NOW, 24 * 8);
        assert!(s
            .book(&too_long, &p, now, &[])
            .unwrap_err()
            .to_string()
            .contains("max_duration"));
        let past = req("a", Size::Units(1), "2026-11-20T00:00:00Z", 1);
        assert!(s
            .book(&past, &p, now, &[])
            .unwrap_err()
            .to_string()
            .contains("past"));
        let far = req("a", Size::Units(1), "2027-06-01T00:00:00Z", 1);
        assert!(s
            .book(&far, &p, now, &[])
            .unwrap_err()
            .to_string()
            .contains("ahead"));
        assert!(s
            .book(&req("a", Size::Units(3), NOW, 1), &p, now, &[])
            .unwrap_err()
            .to_string()
            .contains("cannot fit"));
        s.node.drained = Some(crate::node::Drain {
            reason: "disk swap".into(),
            by: UserName::new("root").unwrap(),
            since: now,
        });
        assert!(s
            .book(&req("a", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap_err()
            .to_string()
            .contains("disk swap"));
        s.node.drained = None;
        s.node.windows = vec![Window::parse("Mon-Fri 08:00-20:00").unwrap()];
        let e = s
            .book(&req("a", Size::Units(1), NOW, 12), &p, now, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("windows (Mon-Fri 08:00-20:00"), "{e}");
        let lim = Policy {
            max_active_per_user: 1,
            ..Policy::default()
        };
        s.book(&req("a", Size::Units(1), NOW, 1), &lim, now, &[])
            .unwrap();
        assert!(s
            .book(&req("a", Size::Units(1), NOW, 1), &lim, now, &[])
            .unwrap_err()
            .to_string()
            .contains("max_active_per_user"));
    }

    #[test]
    fn earliest_start_respects_windows() {
        let mut s = state(1);
        let p = Policy::default();
        let now = ts(NOW); // Monday 10:00Z
        s.node.windows = vec![Window::parse("Mon-Fri 08:00-20:00").unwrap()];
        s.book(&req("a", Size::Whole, NOW, 9), &p, now, &[])
            .unwrap(); // until 19:00
                       // Two hours no longer fit Monday after 19:00: Tuesday 08:00.
        let t = s.earliest_start(1, SignedDuration::from_hours(2), now, &p);
        assert_eq!(t, Some(ts("2026-11-24T08:00:00Z")));
        let t = s.earliest_start(1, SignedDuration::from_hours(1), now, &p);
        assert_eq!(t, Some(ts("2026-11-23T19:00:00Z")));
    }

    #[test]
    fn release_and_extend() {
        let mut s = state(2);
        let p = Policy::default();
        let now = ts(NOW);
        let a = s
            .book(&req("a", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        let later = s
            .book(
                &req("b", Size::Units(1), "2026-11-23T13:00:00Z", 1),
                &p,
                now,
                &[],
            )
            .unwrap();
        assert_eq!(later.units, [0, 0]);
        let e = s
            .extend(&a.id, ts("2026-11-23T14:00:00Z"), &p, now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n1:2 is booked by b from 2026-11-23T13:00:00Z"),
            "{e}"
        );
        let a2 = s
            .extend(&a.id, ts("2026-11-23T13:00:00Z"), &p, now)
            .unwrap();
        assert_eq!(a2.end, ts("2026-11-23T13:00:00Z"));
        let r = s.release(&a.id, ts("2026-11-23T10:30:00Z")).unwrap();
        assert_eq!(r.end, ts("2026-11-23T10:30:00Z"));
        assert!(s
            .release(&a.id, ts("2026-11-23T11:00:00Z"))
            .unwrap_err()
            .to_string()
            .contains("already ended"));
        // A reservation released before it starts disappears.
        s.release(&later.id, now).unwrap();
        assert!(s.get(&later.id).is_none());
        assert_eq!(s.prune(ts("2026-11-25T00:00:00Z")), 1);
    }

    #[test]
    fn the_per_node_cap_counts_future_bookings_and_short_spans_are_refused() {
        let mut s = state(4);
        let p = Policy::default();
        let now = ts(NOW);
        // Sixteen one-minute bookings, all in the future, reach the cap.
        for i in 0..16 {
            let mut r = req("a", Size::Units(1), NOW, 1);
            r.start = now + SignedDuration::from_mins(10 + 2 * i);
            r.end = r.start + SignedDuration::from_mins(1);
            s.book(&r, &p, now, &[]).unwrap();
        }
        let e = s
            .book(&req("a", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap_err();
        assert!(e.to_string().contains("max_bookings_per_user_node"), "{e}");
        // Someone else is not affected, and 0 lifts the cap.
        s.book(&req("b", Size::Units(1), NOW, 1), &p, now, &[])
            .unwrap();
        let open = Policy {
            max_bookings_per_user_node: 0,
            ..Policy::default()
        };
        s.book(&req("a", Size::Units(1), NOW, 1), &open, now, &[])
            .unwrap();
        let mut short = req("c", Size::Units(1), NOW, 1);
        short.end = short.start + SignedDuration::from_secs(59);
        let e = s.book(&short, &p, now, &[]).unwrap_err().to_string();
        assert!(e.contains("min_duration 1m"), "{e}");
    }

    #[test]
    fn a_note_is_checked_again_when_the_booking_is_added() {
        let mut s = state(1);
        let mut r = req("a", Size::Units(1), NOW, 1);
        r.note = serde_json::from_str("\"\\u001b[2J\"").unwrap();
        let e = s.book(&r, &Policy::default(), ts(NOW), &[]).unwrap_err();
        assert!(matches!(e, Error::Invalid { what: "note", .. }), "{e}");
        assert!(s.bookings.is_empty());
    }

    #[test]
    fn prune_keeps_an_hour_and_at_most_sixteen_ended_per_user() {
        let mut s = state(1);
        let now = ts(NOW);
        let mk = |seq: u64, user: &str, start_min: i64, len_min: i64| {
            let start = now + SignedDuration::from_mins(start_min);
            Booking {
                id: BookingId {
                    node: s.node.name.clone(),
                    seq,
                },
                node: s.node.name.clone(),
                user: UserName::new(user).unwrap(),
                uid: uid(1000),
                units: [0, 0],
                cpus: s.node.run_cpus(0, 0),
                ports: None,
                gpus: None,
                gpu_uuids: Vec::new(),
                start,
                end: start + SignedDuration::from_mins(len_min),
                note: Default::default(),
                created_by: UserName::new(user).unwrap(),
                created_at: now,
            }
        };
        let mut v = Vec::new();
        // 20 of a's bookings ended in the last hour, one ended 2 hours ago,
        // b's one ended 10 minutes ago, and a current and a future one.
        for i in 0..20 {
            v.push(mk(i + 1, "a", -60 + 2 * i as i64, 1));
        }
        v.push(mk(21, "a", -130, 10));
        v.push(mk(22, "b", -20, 10));
        v.push(mk(23, "a", -1, 5));
        v.push(mk(24, "a", 60, 5));
        s.seq = 24;
        s.bookings = v;
        assert_eq!(s.prune(now), 5);
        let a_ended: Vec<u64> = s
            .bookings
            .iter()
            .filter(|b| b.user.as_str() == "a" && b.end <= now)
            .map(|b| b.id.seq)
            .collect();
        assert_eq!(a_ended, (5..=20).collect::<Vec<u64>>());
        for kept in [22, 23, 24] {
            assert!(s.bookings.iter().any(|b| b.id.seq == kept), "{kept}");
        }
    }

    #[test]
    fn the_invariant_check_is_not_quadratic_and_still_finds_overlaps() {
        // 100k one-minute bookings on one unit, back to back: comparing
        // every pair would take 5e9 steps; the sweep takes a blink.
        let mut s = state(2);
        let start = ts(NOW);
        let template = s
            .book(
                &req("a", Size::Units(1), NOW, 1),
                &Policy::default(),
                start,
                &[],
            )
            .unwrap();
        s.bookings.clear();
        for i in 0..100_000u64 {
            let mut b = template.clone();
            b.id.seq = i + 1;
            b.units = [(i % 2) as u32, (i % 2) as u32];
            b.start = start + SignedDuration::from_mins((i / 2) as i64);
            b.end = b.start + SignedDuration::from_mins(1);
            s.bookings.push(b);
        }
        s.seq = 100_000;
        let t = std::time::Instant::now();
        assert!(s.problems().is_empty());
        // A generous bound: the quadratic check took minutes at this size.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            t.elapsed()
        );
        // One booking stretched over its successor on the same unit is found.
        s.bookings[50].end = s.bookings[52].start + SignedDuration::from_secs(1);
        let p = s.problems();
        assert_eq!(
            p,
            vec![format!(
                "bookings {} and {} overlap",
                s.bookings[50].id, s.bookings[52].id
            )]
        );
        // A duplicate id too.
        s.bookings[7].id = s.bookings[8].id.clone();
        assert!(s.problems().iter().any(|p| p.contains("appears twice")));
    }

    proptest! {
        /// Whatever sequence of requests arrives, accepted bookings never overlap.
        #[test]
        fn accepted_bookings_never_overlap(
            reqs in proptest::collection::vec((0u32..5, 0i64..48, 1i64..12, 0u8..3), 1..60)
        ) {
            let mut s = state(4);
            let p = Policy::default();
            let now = ts(NOW);
            for (units, offset_h, len_h, kind) in reqs {
                let size = match kind { 0 => Size::Units(units), 1 => Size::Cpus(units * 3), _ => Size::Whole };
                let start = now.checked_add(SignedDuration::from_hours(offset_h)).unwrap();
                let mut r = req("u", size, NOW, len_h);
                r.start = start;
                r.end = start.checked_add(SignedDuration::from_hours(len_h)).unwrap();
                let _ = s.book(&r, &p, now, &[]);
            }
            prop_assert!(s.problems().is_empty(), "{:?}", s.problems());
            // The sweep agrees with comparing every pair once bookings collide.
            let mut forced = s.clone();
            if let Some(first) = forced.bookings.first().cloned() {
                let mut twin = first.clone();
                forced.seq += 1;
                twin.id.seq = forced.seq;
                forced.bookings.push(twin);
                prop_assert!(forced.problems().iter().any(|p| p.contains("overlap")));
            }
            for (i, a) in s.bookings.iter().enumerate() {
                for b in &s.bookings[i + 1..] {
                    prop_assert!(!a.overlaps(b));
                }
            }
        }
    }
}
