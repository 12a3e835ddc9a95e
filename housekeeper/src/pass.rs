//! One housekeeper pass: read, decide (kloigos-core's `enforce`), then
//! print the plan (`--dry-run`) or apply it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kloigos_core::access::{SubUids, SUBUID_FILE};
use kloigos_core::booking::BookingId;
use kloigos_core::config::Config;
use kloigos_core::enforce::{
    self, Controls, Host, NftAction, Observed, Plan, ProcOwner, Rules, SliceAction, Switches,
};
use kloigos_core::facts::Facts;
use kloigos_core::ids::{Gid, Uid};
use kloigos_core::names::{NodeName, UserName};
use kloigos_core::policy::{Policy, FORMAT_VERSION};
use kloigos_core::state::NodeState;
use kloigos_core::store::{self, LocalCopy, Store, Trust};
use kloigos_core::trusted::TrustedDir;
use kloigos_core::users;

use crate::deadline::{self, Pass};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::nft::{self, NftRecord};
use crate::procfs;
use crate::record::Record;
use crate::slices::Backend;
use crate::{hooks, kill, log, metrics, warn};

/// Longest pass deadline accepted (`housekeeper.pass_deadline_s`).
const MAX_PASS_DEADLINE_S: u64 = 3600;

/// What the command line asked of this pass.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node configuration file.
    pub config: PathBuf,
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Remove the table and every limit set, then stop.
    pub uninstall: bool,
}

/// How a pass went, for the exit code and the benchmark.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Processes ended.
    pub killed: u64,
    /// Whether the nftables table was loaded or removed.
    pub nft_changed: bool,
    /// Why the shared state could not be used (nothing destructive was done).
    pub degraded: Option<String>,
    /// Time the pass took.
    pub elapsed: Duration,
    /// Steps not started because the pass deadline had passed.
    pub unfinished: Vec<String>,
}

/// The local lock that keeps passes from overlapping; released on drop.
#[derive(Debug)]
pub struct PassLock {
    _lock: store::NodeLock,
}

impl PassLock {
    /// Takes the lock at `path` or says another pass holds it: the store's
    /// lock (0600, no symlinks) without waiting, in a directory only root
    /// may own and write (one others could write would let them replace
    /// the lock, and passes overlap).
    pub fn take(path: &Path) -> Result<PassLock> {
        let label = store::LockLabel::Local("the housekeeper's pass lock");
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(Error::Usage(format!(
                "{}: not a path to a lock file",
                path.display()
            )));
        };
        let taken = TrustedDir::open(dir, &Trust::root_only())
            .and_then(|dir| store::NodeLock::acquire(dir, name, &label, Duration::ZERO));
        match taken {
            Ok(lock) => Ok(PassLock { _lock: lock }),
            Err(kloigos_core::Error::Busy { .. }) => Err(Error::Busy(path.into())),
            // A local file that cannot be opened: an I/O error of this host, as before.
            Err(kloigos_core::Error::Io { source, .. }) => Err(Error::io(path, source)),
            Err(e) => Err(e.into()),
        }
    }
}

/// Everything read before deciding.
struct Inputs {
    cfg: Config,
    node: NodeName,
    store: Store,
    service: Option<(Uid, Gid)>,
    state_dir: PathBuf,
    copy_name: String,
    deadline: Duration,
}

impl Inputs {
    /// The service account's uid, as the local copy records it.
    fn service_uid_raw(&self) -> Option<u32> {
        self.service.map(|s| s.0.as_raw())
    }
}

fn inputs(opts: &Options) -> Result<Inputs> {
    let cfg = Config::load(&opts.config, &Trust::root_only())?;
    let node = cfg.node_name()?;
    let service = users::by_name(&cfg.service_user)?.map(|a| (a.uid, a.gid));
    let store = Store::new(
        &cfg.shared,
        service.map_or_else(Trust::root_only, |s| Trust::root_and(s.0)),
    );
    let copy = &cfg.housekeeper.state_copy;
    let (Some(dir), Some(name)) = (copy.parent(), copy.file_name().and_then(|n| n.to_str())) else {
        return Err(Error::Usage(format!(
            "housekeeper.state_copy '{}' must be a file path like /var/lib/kloigos/state.json",
            copy.display()
        )));
    };
    if !copy.is_absolute() {
        return Err(Error::Usage(format!(
            "housekeeper.state_copy '{}' must be an absolute path",
            copy.display()
        )));
    }
    let secs = cfg.housekeeper.pass_deadline_s;
    if !(1..=MAX_PASS_DEADLINE_S).contains(&secs) {
        return Err(Error::Usage(format!(
            "housekeeper.pass_deadline_s is {secs} in {}; it must be 1 to {MAX_PASS_DEADLINE_S} seconds (45 by default)",
            opts.config.display()
        )));
    }
    Ok(Inputs {
        deadline: Duration::from_secs(secs),
        state_dir: dir.to_path_buf(),
        copy_name: name.to_string(),
        cfg,
        node,
        store,
        service,
    })
}

/// What /proc showed at the start of the pass.
struct Seen {
    procs: Vec<procfs::Proc>,
    by_uid: BTreeMap<Uid, (u32, u64)>,
    /// The account names of the uids that have one (root left out).
    names: BTreeMap<Uid, UserName>,
}

impl Seen {
    fn scan() -> Seen {
        let procs = procfs::scan();
        let by_uid = procfs::by_uid(&procs);
        let names = by_uid
            .keys()
            .filter(|u| !u.is_root())
            .filter_map(|u| Some((*u, users::by_uid(*u).ok()??.name)))
            .collect();
        Seen {
            procs,
            by_uid,
            names,
        }
    }

    fn owners(&self) -> Vec<ProcOwner> {
        self.by_uid
            .iter()
            .map(|(uid, (n, _))| ProcOwner {
                uid: *uid,
                user: self.names.get(uid).cloned(),
                processes: *n,
            })
            .collect()
    }
}

/// What the pass decided, with what it needs to carry it out.
struct Decided {
    desired: enforce::Desired,
    observed: Observed,
    plan: Plan,
    backend: Option<Backend>,
    hook_list: Vec<PathBuf>,
}

/// Runs one pass.
pub fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let now = Timestamp::now();
    let inp = inputs(opts)?;
    let pass = deadline::begin(inp.deadline);
    let _lock = lock_pass(&inp, opts, &pass)?;
    let mut record = Record::load(&inp.state_dir);
    if opts.uninstall {
        return uninstall(&inp, &mut record, opts.dry_run);
    }
    pass.at("reading /proc");
    let seen = Seen::scan();
    let (policy, state) = match read_shared(&inp, &pass) {
        Ok(v) => v,
        Err(e) => {
            let e = e.to_string();
            return degraded(&inp, &mut record, &seen, now, started, opts.dry_run, &e);
        }
    };
    let Some(state) = state else {
        return Ok(not_a_node(
            &inp,
            &mut record,
            policy,
            now,
            started,
            opts.dry_run,
        ));
    };
    pass.at("observing slices and the nftables generation");
    let d = decide(&inp, &policy, &state, &seen, &mut record, now, opts.dry_run);
    if opts.dry_run {
        let nft = record.nft.as_ref();
        let backend = d.backend.as_ref();
        print_plan(
            &inp.node,
            now,
            &d.plan,
            &d.desired,
            backend,
            nft,
            &d.hook_list,
            &seen.procs,
        );
        return Ok(Report {
            elapsed: started.elapsed(),
            ..Report::default()
        });
    }
    let mut report = Report::default();
    apply(
        &inp,
        &d,
        &state,
        &seen,
        &pass,
        &mut record,
        &mut report,
        now,
    );
    write_outputs(&inp, &policy, &state, &seen, &pass, &mut record, now);
    run_release_hooks(&inp, &d, &pass, &mut record);
    if let Some(dir) = &inp.cfg.housekeeper.dashboard_dir {
        if pass.may_start("regenerating the dashboard") {
            crate::dashboard::regenerate(dir, &inp.store, inp.service, now);
        }
    }
    report.unfinished = pass.undone();
    close_pass(&inp, &state, &pass, &mut record, &report, now, started);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Takes the pass lock in the state directory (created first), unless this
/// is a dry run, or an uninstall on a node whose state directory is already
/// gone (which must not recreate it).
fn lock_pass(inp: &Inputs, opts: &Options, pass: &Pass) -> Result<Option<PassLock>> {
    pass.at("taking the pass lock");
    let no_dir = opts.uninstall && !inp.state_dir.exists();
    if opts.dry_run || no_dir {
        return Ok(None);
    }
    fs::create_dir_all(&inp.state_dir).map_err(|e| Error::io(&inp.state_dir, e))?;
    PassLock::take(&inp.state_dir.join("housekeeper.lock")).map(Some)
}

/// Policy and this node's state, lock-free. Only ENOENT for nodes/<node>
/// is "not a node" (`None`, see Store::node_if_any); any other failure is
/// an error, and the caller's pass does nothing destructive.
fn read_shared(inp: &Inputs, pass: &Pass) -> kloigos_core::Result<(Policy, Option<NodeState>)> {
    pass.at(format!(
        "reading the shared policy and state under {}",
        inp.store.root().display()
    ));
    let policy = inp.store.policy()?;
    let state = inp.store.node_if_any(&inp.node)?;
    Ok((policy, state))
}

/// The pass on a host the cluster has no node for: says so, and keeps the
/// local copy (with no state, so PAM lets no one in on a booking) and the
/// metrics current.
fn not_a_node(
    inp: &Inputs,
    record: &mut Record,
    policy: Policy,
    now: Timestamp,
    started: Instant,
    dry_run: bool,
) -> Report {
    log::note(&format!(
        "{} is not a node of the cluster at {} (no nodes/{}/); nothing is enforced here",
        inp.node,
        inp.store.root().display(),
        inp.node
    ));
    if !dry_run {
        let copy = LocalCopy::new(now, policy, None).with_service_uid(inp.service_uid_raw());
        write_copy(inp, &copy);
        let m = Metrics {
            ok: true,
            ..Metrics::default()
        };
        finish(inp, record, m, now, started);
    }
    Report {
        elapsed: started.elapsed(),
        ..Report::default()
    }
}

/// The desired state (core's `enforce`, under this node's rules and host),
/// what is in place, and the plan between them.
fn decide(
    inp: &Inputs,
    policy: &Policy,
    state: &NodeState,
    seen: &Seen,
    record: &mut Record,
    now: Timestamp,
    dry_run: bool,
) -> Decided {
    let hk = &inp.cfg.housekeeper;
    // Chosen before the desired state, which holds only the limits it can
    // set; a failure is logged below, where it always was.
    let selected = Backend::select(hk.slices);
    let host = Host {
        mem_total: procfs::meminfo().0,
        numa: procfs::numa(),
        cpus_online: procfs::cpus_online(),
        controls: selected
            .as_ref()
            .map_or_else(|_| Controls::default(), Backend::controls),
    };
    let rules = node_rules(inp, policy, selected.is_ok());
    let desired = enforce::desired(policy, state, now, &host, rules);
    say_missing_cpus(inp, state, &desired, &host, record, dry_run);
    record.missing_cpus = desired.missing_cpus.clone();
    let backend = match selected {
        Ok(b) => Some(b),
        Err(e) => {
            log::error(&format!("slices not enforced: {e}"));
            None
        }
    };
    let observed = Observed {
        slices: backend.as_ref().map(Backend::observe).unwrap_or_default(),
        processes: seen.owners(),
        warned: record.warned.clone(),
        hooks_done: record.hooks_done.clone(),
        nft: Some(nft_seen(hk.nft, record)),
    };
    let plan = enforce::plan(&desired, &observed);
    let hook_list = hk.hooks_dir.as_deref().map(hooks::list).unwrap_or_default();
    Decided {
        desired,
        observed,
        plan,
        backend,
        hook_list,
    }
}

/// The policy's rules with this node's configuration: its grace, warning
/// times and switches, and the subordinate uids of this host.
fn node_rules(inp: &Inputs, policy: &Policy, slices: bool) -> Rules {
    let hk = &inp.cfg.housekeeper;
    let mut rules = Rules::new(
        policy,
        inp.service.map(|s| s.0),
        hk.grace_s,
        hk.warn_before_s.as_deref(),
    );
    rules.switches = Switches {
        slices,
        nft: hk.nft,
        kill: hk.kill,
    };
    rules.subuids = SubUids::read(Path::new(SUBUID_FILE));
    if let Some(why) = &rules.subuids.problem {
        log::error(why);
    }
    rules
}

/// Logs CPUs the node's spec names but this host lacks: when that changes
/// (it is in facts.json every pass), and on every dry run.
fn say_missing_cpus(
    inp: &Inputs,
    state: &NodeState,
    desired: &enforce::Desired,
    host: &Host,
    record: &Record,
    dry_run: bool,
) {
    let (Some(missing), Some(online)) = (&desired.missing_cpus, &host.cpus_online) else {
        return;
    };
    if record.missing_cpus.as_ref() != Some(missing) || dry_run {
        log::error(&format!(
            "the spec of {node} names CPUs {missing} that this host does not have (online: {online}); \
             bookings are confined to the CPUs that exist; fix: {}",
            enforce::set_node_cpus_fix(inp.node.as_str(), &state.node.cpus, online),
            node = inp.node
        ));
    }
}

/// Whether the nftables table loaded last is still in place; unknown (so
/// reloaded) when the generation cannot be read.
fn nft_seen(nft_on: bool, record: &Record) -> enforce::NftSeen {
    if !nft_on {
        return enforce::NftSeen::Unknown;
    }
    match nft::Here::now() {
        Ok(h) => h.seen(record.nft.as_ref()),
        Err(e) => {
            log::error(&format!(
                "cannot read the nftables generation ({e}); reloading the table"
            ));
            enforce::NftSeen::Unknown
        }
    }
}

/// Carries out the plan's changes to the host: slices, the GPU fence, the
/// nftables table, warnings and ends of processes, each step only while
/// the deadline has not passed.
#[allow(clippy::too_many_arguments)]
fn apply(
    inp: &Inputs,
    d: &Decided,
    state: &NodeState,
    seen: &Seen,
    pass: &Pass,
    record: &mut Record,
    report: &mut Report,
    now: Timestamp,
) {
    let hk = &inp.cfg.housekeeper;
    if let Some(b) = &d.backend {
        apply_slices(b, &d.plan, &d.desired, &seen.procs, pass);
    }
    let (rules, owners) = (&d.desired.rules, &d.observed.processes);
    crate::fence::apply(
        &hk.gpu,
        hk.grace_s,
        rules,
        state,
        now,
        owners,
        &seen.procs,
        record,
    );
    if let Some(action) = &d.plan.nft {
        if pass.may_start("loading the nftables table") {
            report.nft_changed = apply_nft(action, record);
        }
    }
    record.warned = give_warnings(&d.plan, &seen.procs, pass);
    end_processes(&d.plan, pass, record, report);
}

/// Warns the users whose bookings end soon, on their terminals; returns
/// the warnings given so far, less those the deadline left for the next pass.
fn give_warnings(plan: &Plan, procs: &[procfs::Proc], pass: &Pass) -> BTreeSet<(BookingId, u64)> {
    let mut warned_next = plan.warned_next.clone();
    for w in &plan.warn {
        if !pass.may_start(format!("warning {} about {}", w.user, w.booking)) {
            warned_next.retain(|(id, _)| *id != w.booking);
            continue;
        }
        let n = warn::to_terminals(w.uid, procs, &w.message);
        log::event(&format!(
            "warned {} that {} ends at {} ({n} terminal(s))",
            w.user, w.booking, w.end
        ));
    }
    warned_next
}

/// Ends the processes of the users the plan names.
fn end_processes(plan: &Plan, pass: &Pass, record: &mut Record, report: &mut Report) {
    for k in &plan.kill {
        let who = k.user.as_ref().map_or_else(
            || format!("uid {}", k.uid),
            |u| format!("{u} (uid {})", k.uid),
        );
        if !pass.may_start(format!("ending the processes of {who}")) {
            continue;
        }
        match kill::end_user(k.uid, pass.deadline()) {
            // Nothing of the user's own was left: gone meanwhile, or only
            // processes borrowing the uid as their effective one (a root
            // daemon acting for the user), which are not the user's to end.
            Ok(out) if out.killed == 0 && out.remaining == 0 => {}
            Ok(out) => {
                report.killed += out.killed;
                record.killed_total += out.killed;
                log::event(&format!(
                    "ended {} process(es) of {who}: {}; {} ms, {} SIGKILL round(s)",
                    out.killed,
                    k.reason,
                    out.elapsed.as_millis(),
                    out.rounds
                ));
                if out.remaining > 0 {
                    log::error(&format!(
                        "{} process(es) of {who} are still there (stuck in the kernel, or the deadline came); the next pass tries again",
                        out.remaining
                    ));
                }
            }
            Err(e) => log::error(&e.to_string()),
        }
    }
}

/// The local state copy for PAM, and facts.json.
fn write_outputs(
    inp: &Inputs,
    policy: &Policy,
    state: &NodeState,
    seen: &Seen,
    pass: &Pass,
    record: &mut Record,
    now: Timestamp,
) {
    if pass.may_start("writing the local state copy") {
        let copy = LocalCopy::new(now, policy.clone(), Some(state.clone()))
            .with_service_uid(inp.service_uid_raw());
        write_copy(inp, &copy);
    }
    if pass.may_start("writing facts.json") {
        write_facts(inp, &seen.by_uid, &seen.names, policy, record, now, None);
    }
}

/// Runs the release hooks of the bookings that ended.
fn run_release_hooks(inp: &Inputs, d: &Decided, pass: &Pass, record: &mut Record) {
    let mut hooks_done = d.plan.hooks_done_next.clone();
    for b in &d.plan.hooks {
        for h in &d.hook_list {
            if !pass.may_start(format!("release hook {} for {}", h.display(), b.id)) {
                // The booking's hooks run again next pass, the ones that
                // ran already included (hooks are to be idempotent).
                hooks_done.remove(&b.id);
                continue;
            }
            match hooks::run(h, b, &inp.state_dir) {
                Ok(true) => {}
                Ok(false) => record.hooks_failed_total += 1,
                Err(e) => {
                    record.hooks_failed_total += 1;
                    log::error(&e.to_string());
                }
            }
        }
    }
    record.hooks_done = Some(hooks_done);
}

/// Metrics and the record, then what the deadline left undone.
fn close_pass(
    inp: &Inputs,
    state: &NodeState,
    pass: &Pass,
    record: &mut Record,
    report: &Report,
    now: Timestamp,
    started: Instant,
) {
    let mut m = node_metrics(state, now, record);
    m.ok = report.unfinished.is_empty();
    pass.at("writing metrics and the housekeeper record");
    finish(inp, record, m, now, started);
    if !report.unfinished.is_empty() {
        log::error(&format!(
            "the pass reached its deadline of {} s; not done this pass (the next one tries again): {}",
            inp.deadline.as_secs(),
            report.unfinished.join("; ")
        ));
    }
}

fn node_metrics(state: &NodeState, now: Timestamp, record: &Record) -> Metrics {
    let total = state.node.units_total();
    let booked: u32 = state.active(now).map(|b| b.unit_count()).sum();
    Metrics {
        units_booked: Some(booked),
        units_free: Some(total.saturating_sub(booked)),
        bookings_active: Some(state.active(now).count() as u32),
        ok: true,
        killed_total: record.killed_total,
        nft_loads_total: record.nft_loads_total,
        hooks_failed_total: record.hooks_failed_total,
        ..Metrics::default()
    }
}

fn apply_slices(
    b: &Backend,
    plan: &Plan,
    desired: &enforce::Desired,
    procs: &[procfs::Proc],
    pass: &Pass,
) {
    let mut clear = Vec::new();
    for a in &plan.slices {
        let uid = match a {
            SliceAction::Set { uid, .. } | SliceAction::Clear { uid } => uid,
        };
        if !pass.may_start(format!("the limits of uid {uid}")) {
            continue;
        }
        match a {
            SliceAction::Set { uid, limits } => match b.set(*uid, limits) {
                Ok(()) => log::event(&format!(
                    "slice {} set: {}",
                    b.name(),
                    b.describe_set(*uid, limits).join("; ")
                )),
                Err(e) => log::error(&format!("setting the limits of uid {uid}: {e}")),
            },
            SliceAction::Clear { uid } => clear.push(*uid),
        }
    }
    if !clear.is_empty() && pass.may_start(format!("removing the limits of uid(s) {clear:?}")) {
        match b.clear(&clear) {
            Ok(()) => log::event(&format!(
                "slice {} limits removed for uid(s) {clear:?}",
                b.name()
            )),
            Err(e) => log::error(&format!("removing the limits of uid(s) {clear:?}: {e}")),
        }
    }
    for uid in desired.users.keys() {
        if !pass.may_start(format!("moving the processes of uid {uid} into its cgroup")) {
            continue;
        }
        let pids = procfs::live_pids(procs, *uid);
        match b.attach(*uid, &pids) {
            Ok(0) => {}
            Ok(n) => log::note(&format!(
                "moved {n} process(es) of uid {uid} into its cgroup"
            )),
            Err(e) => log::error(&format!(
                "moving processes of uid {uid} into its cgroup: {e}"
            )),
        }
    }
}

/// Loads or removes the table; records what is live. Returns whether it changed.
fn apply_nft(action: &NftAction, record: &mut Record) -> bool {
    let (file, loaded) = match action {
        NftAction::Load(text) => (text.clone(), Some(text.clone())),
        NftAction::Remove => (enforce::render_nft_removal(), None),
    };
    match nft::load(&file) {
        Ok(()) => {
            record.nft_loads_total += 1;
            record.nft = nft::Here::now().ok().map(|h| NftRecord {
                boot_id: h.boot_id,
                netns: h.netns,
                generation: h.generation,
                loaded: loaded.clone(),
            });
            log::event(if loaded.is_some() {
                "nftables table inet kloigos loaded"
            } else {
                "nftables table inet kloigos removed"
            });
            true
        }
        Err(e) => {
            record.nft = None;
            log::error(&format!("nftables: {e}; the previous table stays in place"));
            false
        }
    }
}

fn write_copy(inp: &Inputs, copy: &LocalCopy) {
    // Through a handle on the directory the login gate reads it from,
    // checked as the gate checks it.
    let written = TrustedDir::open(&inp.state_dir, inp.store.trust())
        .and_then(|dir| dir.write_atomic(&inp.copy_name, &store::to_json(copy)));
    if let Err(e) = written {
        log::error(&format!("local state copy for PAM: {e}"));
    }
}

#[allow(clippy::too_many_arguments)]
fn write_facts(
    inp: &Inputs,
    by_uid: &BTreeMap<Uid, (u32, u64)>,
    names: &BTreeMap<Uid, UserName>,
    policy: &Policy,
    record: &mut Record,
    now: Timestamp,
    error: Option<&str>,
) {
    if !inp.store.has_node(&inp.node) {
        return;
    }
    let rules = Rules::new(policy, None, 0, None);
    let managed = |uid| rules.unmanaged(uid).is_none();
    let mut facts: Facts = crate::facts::gather(
        &inp.node,
        &inp.cfg.housekeeper.gpu,
        by_uid,
        names,
        &managed,
        record,
        now,
    );
    facts.enforcing = error.is_none();
    // Known only from a state that could be read, as this pass's.
    facts.missing_cpus = record.missing_cpus.clone().filter(|_| error.is_none());
    facts.error = error.map(String::from);
    match crate::sys::as_service(inp.service, || inp.store.write_facts(&facts)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error(&format!("facts.json: {e}")),
        Err(e) => log::error(&format!("facts.json: {e}")),
    }
}

fn finish(inp: &Inputs, record: &mut Record, mut m: Metrics, now: Timestamp, started: Instant) {
    m.last_run = now.as_second();
    m.killed_total = record.killed_total;
    m.nft_loads_total = record.nft_loads_total;
    m.hooks_failed_total = record.hooks_failed_total;
    m.duration_s = started.elapsed().as_secs_f64();
    if let Some(dir) = &inp.cfg.housekeeper.metrics_dir {
        if let Err(e) = metrics::write(dir, &m) {
            log::error(&format!("metrics: {e}"));
        }
    }
    record.last_pass = Some(now);
    if let Err(e) = record.save(&inp.state_dir) {
        log::error(&format!("housekeeper record: {e}"));
    }
}

/// The pass when the policy or state cannot be read or trusted: say so,
/// write the facts with the error, touch nothing else.
#[allow(clippy::too_many_arguments)]
fn degraded(
    inp: &Inputs,
    record: &mut Record,
    seen: &Seen,
    now: Timestamp,
    started: Instant,
    dry_run: bool,
    error: &str,
) -> Result<Report> {
    log::error(&format!(
        "cannot use the shared state: {error}; nothing destructive is done this pass (no process ended, no rule removed)"
    ));
    if !dry_run {
        let policy = Policy {
            version: FORMAT_VERSION,
            ..Policy::default()
        };
        write_facts(
            inp,
            &seen.by_uid,
            &seen.names,
            &policy,
            record,
            now,
            Some(error),
        );
        finish(inp, record, Metrics::default(), now, started);
    }
    Ok(Report {
        degraded: Some(error.to_string()),
        elapsed: started.elapsed(),
        ..Report::default()
    })
}

/// `--uninstall`: remove the table and every limit the housekeeper set.
fn uninstall(inp: &Inputs, record: &mut Record, dry_run: bool) -> Result<Report> {
    let backend = Backend::select(inp.cfg.housekeeper.slices).unwrap_or(Backend::None);
    let uids: Vec<Uid> = backend.observe().into_keys().collect();
    if dry_run {
        println!(
            "would remove table inet kloigos and the {} limits of uid(s) {uids:?}",
            backend.name()
        );
        return Ok(Report::default());
    }
    let mut report = Report::default();
    if inp.cfg.housekeeper.nft {
        report.nft_changed = apply_nft(&NftAction::Remove, record);
    }
    if let Err(e) = backend.clear(&uids) {
        log::error(&format!("removing limits: {e}"));
    }
    crate::fence::uninstall();
    let _ = fs::remove_file(Record::path(&inp.state_dir));
    log::event(&format!(
        "uninstalled: table inet kloigos removed, limits of uid(s) {uids:?} removed"
    ));
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn print_plan(
    node: &NodeName,
    now: Timestamp,
    plan: &Plan,
    desired: &enforce::Desired,
    backend: Option<&Backend>,
    nft_record: Option<&NftRecord>,
    hook_list: &[PathBuf],
    procs: &[procfs::Proc],
) {
    println!("kloigos-housekeeper --dry-run on {node} at {now}: plan (nothing is changed)");
    let bname = backend.map_or("none", Backend::name);
    // Processes of users whose limits stay as they are, not yet in their group.
    let mut moves = Vec::new();
    for uid in desired.users.keys() {
        let (Some(b), false) = (
            backend,
            plan.slices
                .iter()
                .any(|a| matches!(a, SliceAction::Set { uid: u, .. } if u == uid)),
        ) else {
            continue;
        };
        let pids = procfs::live_pids(procs, *uid);
        for (dir, pids) in b.to_move(*uid, &pids) {
            moves.push(format!(
                "slices ({bname}): move {} process(es) of uid {uid} into {}: {pids:?}",
                pids.len(),
                dir.display()
            ));
        }
    }
    if plan.is_idle() && moves.is_empty() {
        println!("nothing to do");
    }
    for a in &plan.slices {
        let steps = match (a, backend) {
            (SliceAction::Set { uid, limits }, Some(b)) => b.describe_set(*uid, limits),
            (SliceAction::Clear { uid }, Some(b)) => b.describe_clear(*uid),
            _ => Vec::new(),
        };
        for (i, step) in steps.iter().enumerate() {
            let verb = match (i, a) {
                (0, SliceAction::Set { .. }) => "set ",
                _ => "",
            };
            println!("slices ({bname}): {verb}{step}");
        }
    }
    for m in &moves {
        println!("{m}");
    }
    match &plan.nft {
        Some(NftAction::Load(text)) => {
            let old = nft_record.and_then(|r| r.loaded.as_deref());
            println!("nft: load table inet kloigos (nft -f), changes:");
            print!("{}", nft::diff(old, text));
        }
        Some(NftAction::Remove) => println!("nft: remove table inet kloigos"),
        None => {}
    }
    for w in &plan.warn {
        println!(
            "warn: {} (uid {}) on their terminals: {}",
            w.user, w.uid, w.message
        );
    }
    for k in &plan.kill {
        let pids = procfs::live_pids(procs, k.uid);
        let who = k
            .user
            .as_ref()
            .map_or_else(|| "?".to_string(), |u| u.to_string());
        println!(
            "kill: {who} (uid {}): SIGTERM then SIGKILL to {} process(es) {pids:?}: {}",
            k.uid, k.processes, k.reason
        );
    }
    for b in &plan.hooks {
        for h in hook_list {
            println!("hook: {} for {} ({})", h.display(), b.id, b.user);
        }
        if hook_list.is_empty() {
            println!(
                "hook: none installed for ended booking {} ({})",
                b.id, b.user
            );
        }
    }
}
