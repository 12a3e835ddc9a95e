//! Booking commands: alloc, release, extend, list, history.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kloigos_core::access;
use kloigos_core::booking::{Booking, BookingId, Note};
use kloigos_core::duration::{human_secs, Dur};
use kloigos_core::journal::{self, Action, Event};
use kloigos_core::names::{Label, NodeName};
use kloigos_core::placement::{self, Offer, Want};
use kloigos_core::policy::Policy;
use kloigos_core::state::{self, NodeState, Request, Size};
use kloigos_core::users::Account;
use kloigos_core::when::{is_past, parse_time};
use kloigos_core::Error;

use crate::args::{AllocSpec, ExtendArgs, HistoryArgs, ListArgs, ReleaseArgs};
use crate::ctx::{node_arg, Ctx};
use crate::error::{CliError, Result};
use crate::output::{bookings_json, bookings_table, escape, local, print_json, Table};

/// How often `alloc --wait` tries again.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// Nodes that could not be read, with why.
pub type Unreadable = Vec<(NodeName, Error)>;

/// Reads every node lock-free; unreadable ones are returned apart so a
/// command can go on with the rest and still report them.
pub fn read_all(ctx: &Ctx) -> Result<(Vec<NodeState>, Unreadable)> {
    let names = ctx.store.node_names()?;
    let nodes = &ctx.store.open_nodes()?;
    // Reading and parsing a thousand files is most of `info`: spread it over the cores.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = names.len().div_ceil(workers).max(1);
    let results: Vec<(NodeName, kloigos_core::Result<NodeState>)> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|n| (n.clone(), ctx.store.node_at(nodes, n)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // A reader thread only panics on a bug; surface it rather than lose nodes silently.
            .flat_map(|h| h.join().expect("node reader thread panicked"))
            .collect()
    });
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (n, r) in results {
        match r {
            Ok(s) => ok.push(s),
            Err(e) => bad.push((n, e)),
        }
    }
    Ok((ok, bad))
}

/// Warns on stderr about nodes that could not be read.
pub fn warn_unreadable(bad: &[(NodeName, Error)]) {
    for (n, e) in bad {
        eprintln!(
            "kloigos: warning: skipping node {n}: {}",
            escape(&e.to_string())
        );
    }
}

/// The exit status of an `alloc --wait-attempt` that found no room: the
/// waiting parent tries again later (EX_TEMPFAIL).
pub const WAIT_FULL: u8 = 75;

/// `alloc`: books and prints the booking. With `--wait` it waits as the
/// caller and books through fresh setuid children (see [`alloc_waiting`]).
pub fn alloc(ctx: &Ctx, node: Option<&str>, spec: &AllocSpec, attempt: bool) -> Result<u8> {
    let policy = ctx.policy()?;
    if spec.wait.is_some() {
        return alloc_waiting(ctx, &policy, node, spec);
    }
    let b = match book(ctx, &policy, node, spec) {
        // The waiting parent says so once; each attempt stays quiet.
        Err(CliError::Core(Error::Full(_))) if attempt => return Ok(WAIT_FULL),
        other => other?,
    };
    print_booking(ctx, &policy, &b);
    Ok(0)
}

fn print_booking(ctx: &Ctx, policy: &Policy, b: &Booking) {
    if ctx.json {
        print_json(&b.to_json());
    } else {
        let tz = policy.tz_or_utc();
        let now = ctx.now();
        let from = if b.start <= now {
            "now".to_string()
        } else {
            local(b.start, &tz)
        };
        println!(
            "booked {}: {} holds {} units {}-{} (cpus {}{}{}) from {} until {} ({})",
            b.id,
            b.user,
            b.node,
            b.units[0],
            b.units[1],
            b.cpus,
            b.ports.map(|p| format!(", ports {p}")).unwrap_or_default(),
            b.gpus
                .as_ref()
                .map(|g| format!(", GPUs {g}"))
                .unwrap_or_default(),
            from,
            local(b.end, &tz),
            human_secs(b.end.as_second() - b.start.as_second()),
        );
        println!(
            "log in with: kloigos ssh {}    end it early with: kloigos release {}",
            b.id, b.id
        );
    }
}

/// `alloc --wait`: this process has dropped to the caller for good
/// (`Ctx::setup`), so the caller, and the housekeeper acting for them, can
/// end it; each attempt is a fresh `kloigos alloc` (setuid on its own, as
/// `run`'s are) that books or exits [`WAIT_FULL`]. The wait is bounded by
/// the policy's `max_wait`. The last attempt, at the deadline, speaks for
/// itself.
fn alloc_waiting(ctx: &Ctx, policy: &Policy, node: Option<&str>, spec: &AllocSpec) -> Result<u8> {
    let text = spec.wait.as_deref().unwrap_or_default();
    let wait = Dur::parse(text)?;
    if wait > policy.max_wait {
        return Err(Error::Refused(format!(
            "--wait={text} is longer than the cluster's max_wait {}; wait at most {}",
            policy.max_wait, policy.max_wait
        ))
        .into());
    }
    ctx.privs.verify_dropped()?;
    // Each attempt is a child with its own deadline; this parent waits.
    crate::watchdog::done();
    let tz = policy.tz_or_utc();
    let at = spec
        .at
        .as_deref()
        .map(|t| parse_time(t, ctx.now(), &tz))
        .transpose()?;
    let mut attempt_spec = AllocSpec {
        worker: node.map(str::to_string).or_else(|| spec.worker.clone()),
        wait: None,
        ..spec.clone()
    };
    let deadline = Instant::now() + Duration::from_secs(wait.secs());
    let mut told = false;
    loop {
        let last = Instant::now() >= deadline;
        // A time given relative to now is fixed once, here; a start that
        // has passed while waiting becomes now.
        attempt_spec.at = at.map(|t| t.max(ctx.now()).to_string());
        let mut c = crate::session::child(ctx)?;
        c.arg("--json")
            .arg("alloc")
            .args(crate::session::spec_args(&attempt_spec));
        if !last {
            c.arg("--wait-attempt");
        }
        let out = c
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| CliError::Usage(format!("cannot run kloigos alloc: {e}")))?;
        match out.status.code() {
            Some(0) => {
                let b: Booking = serde_json::from_slice(&out.stdout).map_err(|e| {
                    CliError::Usage(format!("kloigos alloc printed no booking: {e}"))
                })?;
                print_booking(ctx, policy, &b);
                return Ok(0);
            }
            Some(code) if code == i32::from(WAIT_FULL) && !last => {
                // On stderr even with --json: stdout carries only the booking.
                if !told {
                    eprintln!(
                        "kloigos: nothing fits that yet; waiting for a free slot (--wait, at most {wait})..."
                    );
                    told = true;
                }
                // Polling the shared files is the only signal there is: no daemon to notify us.
                std::thread::sleep(
                    WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())),
                );
            }
            Some(code) => return Ok(u8::try_from(code).unwrap_or(3)),
            // The attempt was killed by a signal.
            None => return Ok(3),
        }
    }
}

/// Makes one booking as `alloc` describes it.
pub fn book(ctx: &Ctx, policy: &Policy, node: Option<&str>, spec: &AllocSpec) -> Result<Booking> {
    let user = ctx.target_user(policy, spec.user.as_deref())?;
    access::may_book(policy, &user)?;
    let tz = policy.tz_or_utc();
    let now = ctx.now();
    let len = match &spec.time {
        Some(t) => Dur::parse(t)?,
        None => policy.default_duration,
    };
    let size = match (spec.units, spec.cpus, spec.gpus, spec.whole) {
        (Some(n), ..) => Size::Units(n),
        (_, Some(c), ..) => Size::Cpus(c),
        (_, _, Some(0), _) => {
            return Err(Error::invalid("--gpus", "0", "ask for at least one GPU").into())
        }
        (_, _, Some(g), _) => Size::Gpus(g),
        (.., true) => Size::Whole,
        _ => Size::Units(1),
    };
    let note = Note::new(spec.note.as_deref().unwrap_or_default())?;
    let labels = spec
        .labels
        .iter()
        .map(|l| Label::new(l))
        .collect::<kloigos_core::Result<Vec<_>>>()?;
    let at = spec
        .at
        .as_deref()
        .map(|t| parse_time(t, now, &tz))
        .transpose()?;
    if let Some(t) = at.filter(|t| is_past(*t, now)) {
        return Err(Error::Refused(format!(
            "--at {} is in the past; omit --at to start now, or give a later time",
            local(t, &tz)
        ))
        .into());
    }
    let node = node.or(spec.worker.as_deref()).map(node_arg).transpose()?;
    let ask = Ask {
        user: &user,
        size,
        labels: &labels,
        start: at.unwrap_or(now).max(now),
        len: len.signed(),
        earliest_ok: at.is_some(),
        from_now: at.is_none(),
        note,
    };
    match &node {
        Some(n) => book_on(ctx, policy, n, &ask),
        None => book_anywhere(ctx, policy, &ask),
    }
}

struct Ask<'a> {
    user: &'a Account,
    size: Size,
    labels: &'a [Label],
    start: Timestamp,
    len: SignedDuration,
    /// `--at`: take the earliest slot at or after `start` instead of refusing.
    earliest_ok: bool,
    /// No `--at`: the booking starts when the node's lock is taken, however
    /// long that took (`start` is only the estimate used to pick a node).
    from_now: bool,
    note: Note,
}

impl Ask<'_> {
    fn request(&self, ctx: &Ctx, start: Timestamp, held_elsewhere: u32) -> Request {
        Request {
            user: self.user.name.clone(),
            uid: self.user.uid,
            created_by: ctx.caller.name.clone(),
            size: self.size,
            start,
            end: start + self.len,
            note: self.note.clone(),
            held_elsewhere,
        }
    }
}

/// The user's current and future bookings on nodes other than `except`,
/// counted only when the policy limits them.
fn held_elsewhere(ctx: &Ctx, policy: &Policy, ask: &Ask, except: Option<&NodeName>) -> Result<u32> {
    // Unlimited: no need to read every node for a count nobody checks.
    if policy.max_active_per_user == 0 {
        return Ok(0);
    }
    let (states, _) = read_all(ctx)?;
    Ok(state::held_elsewhere(
        &states,
        &ask.user.name,
        except,
        ctx.now(),
    ))
}

fn book_on(ctx: &Ctx, policy: &Policy, node: &NodeName, ask: &Ask) -> Result<Booking> {
    let topo = ctx
        .store
        .facts(node)
        .map(|f| f.topology())
        .unwrap_or_default();
    let mut start = ask.start;
    if ask.earliest_ok {
        let st = ctx.store.node(node)?;
        let n = st.units_needed(ask.size)?;
        start = st
            .earliest_start(n, ask.len, ask.start, policy)
            .ok_or_else(|| {
                Error::Full(format!(
                    "{node} has no slot for that within the next {} (max_ahead)",
                    policy.max_ahead
                ))
            })?;
    }
    let held = held_elsewhere(ctx, policy, ask, Some(node))?;
    ctx.write_node(node, |st| {
        // Now is taken under the lock: a wait for the lock must not push
        // a short booking that starts now into the past.
        let now = ctx.now();
        let start = if ask.from_now { now } else { start };
        let req = ask.request(ctx, start, held);
        let b = st.book_in(&req, policy, now, &topo)?;
        let ev = Event::booking(now, &ctx.caller.name, Action::Book, &b);
        Ok((b, vec![ev]))
    })
}

fn book_anywhere(ctx: &Ctx, policy: &Policy, ask: &Ask) -> Result<Booking> {
    let (states, bad) = read_all(ctx)?;
    warn_unreadable(&bad);
    let offers: Vec<Offer> = states
        .into_iter()
        .map(|state| {
            let topo = ctx
                .store
                .facts(&state.node.name)
                .map(|f| f.topology())
                .unwrap_or_default();
            Offer { state, topo }
        })
        .collect();
    if let Size::Gpus(g) = ask.size {
        let most = offers
            .iter()
            .filter(|o| o.state.node.has_labels(ask.labels))
            .map(|o| o.state.node.gpus.as_ref().map_or(0, |s| s.len()))
            .max()
            .unwrap_or(0);
        if g as usize > most {
            return Err(Error::Refused(format!(
                "no node has {g} GPU(s); the most on one node{} is {most} (`kloigos info` lists them)",
                if ask.labels.is_empty() { "" } else { " with those labels" }
            ))
            .into());
        }
    }
    if !ask.labels.is_empty() && !offers.iter().any(|o| o.state.node.has_labels(ask.labels)) {
        let mut known: Vec<String> = offers
            .iter()
            .flat_map(|o| o.state.node.labels.iter().map(|l| l.to_string()))
            .collect();
        known.sort();
        known.dedup();
        let wanted: Vec<&str> = ask.labels.iter().map(|l| l.as_str()).collect();
        return Err(Error::Refused(format!(
            "no node carries label(s) {}; labels in use: {}",
            wanted.join(", "),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ))
        .into());
    }
    let want = Want {
        size: ask.size,
        labels: ask.labels.to_vec(),
        start: ask.start,
        end: ask.start + ask.len,
    };
    let ranked = placement::rank(&want, &offers, policy);
    for node in &ranked {
        match book_on(ctx, policy, node, ask) {
            // Another booking won the race for this node: try the next best.
            Err(CliError::Core(Error::Full(_))) => continue,
            other => return other,
        }
    }
    match placement::earliest(&want, &offers, policy) {
        Some((t, node)) if ask.earliest_ok => {
            let at_t = Ask {
                start: t,
                earliest_ok: false,
                from_now: false,
                note: ask.note.clone(),
                ..*ask
            };
            book_on(ctx, policy, &node, &at_t)
        }
        Some((t, node)) => Err(Error::Full(format!(
            "no node has that free now; the earliest it fits is {} on {node} (book it with --at, or wait with --wait)",
            local(t, &policy.tz_or_utc())
        ))
        .into()),
        None => Err(Error::Full(format!(
            "no node can hold that within the next {} (sizes: `kloigos info`)",
            policy.max_ahead
        ))
        .into()),
    }
}

/// `release` (alias `kill`).
pub fn release(ctx: &Ctx, a: &ReleaseArgs) -> Result<u8> {
    let policy = ctx.policy()?;
    let now = ctx.now();
    let mut released: Vec<Booking> = Vec::new();
    let mut first_err: Option<CliError> = None;
    if !a.ids.is_empty() {
        for text in &a.ids {
            let r = BookingId::parse(text)
                .map_err(CliError::from)
                .and_then(|id| {
                    ctx.write_node(&id.node, |st| {
                        let owner = st.get(&id).map(|b| b.user.clone()).ok_or_else(|| {
                            Error::Refused(format!("no booking {id} (see `kloigos list --all`)"))
                        })?;
                        access::may_act_for(&policy, &ctx.caller, &owner)?;
                        let b = st.release(&id, now)?;
                        let ev = Event::booking(now, &ctx.caller.name, Action::Release, &b);
                        Ok((b, vec![ev]))
                    })
                });
            match r {
                Ok(b) => released.push(b),
                Err(e) => {
                    eprintln!("kloigos: {}", escape(&e.to_string()));
                    first_err.get_or_insert(e);
                }
            }
        }
    } else if a.worker.is_some() || a.all {
        let user = ctx.target_user(&policy, a.user.as_deref())?;
        let nodes = match &a.worker {
            Some(w) => vec![node_arg(w)?],
            None => ctx.store.node_names()?,
        };
        for node in nodes {
            let r = ctx.write_node(&node, |st| {
                let out = st.release_all_of(&user.name, now)?;
                let events = out
                    .iter()
                    .map(|b| Event::booking(now, &ctx.caller.name, Action::Release, b))
                    .collect();
                Ok((out, events))
            });
            match r {
                Ok(v) => released.extend(v),
                Err(e) => {
                    eprintln!("kloigos: {}", escape(&e.to_string()));
                    first_err.get_or_insert(e);
                }
            }
        }
        if released.is_empty() && first_err.is_none() {
            let place = a
                .worker
                .as_ref()
                .map(|w| format!(" on {w}"))
                .unwrap_or_default();
            return Err(Error::Refused(format!(
                "{} holds no current or future booking{place}",
                user.name
            ))
            .into());
        }
    } else {
        return Err(CliError::Usage(
            "release what? give booking ids (node3:12), -w NODE or --all".into(),
        ));
    }
    if ctx.json {
        print_json(&bookings_json(&released));
    } else {
        for b in &released {
            println!(
                "released {} ({} on {}, cpus {})",
                b.id, b.user, b.node, b.cpus
            );
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(0),
    }
}

/// `extend`.
pub fn extend(ctx: &Ctx, a: &ExtendArgs) -> Result<u8> {
    let policy = ctx.policy()?;
    let tz = policy.tz_or_utc();
    let now = ctx.now();
    let id = BookingId::parse(&a.id)?;
    enum To {
        Add(Dur),
        Until(Timestamp),
    }
    let to = match (&a.time, &a.until) {
        (Some(t), None) => To::Add(Dur::parse(t.strip_prefix('+').unwrap_or(t))?),
        (None, Some(u)) => To::Until(parse_time(u, now, &tz)?),
        _ => {
            return Err(CliError::Usage(
                "extend by how much? give -t +DUR or --until TIME".into(),
            ))
        }
    };
    let b = ctx.write_node(&id.node, |st| {
        let cur = st
            .get(&id)
            .ok_or_else(|| Error::Refused(format!("no booking {id} (see `kloigos list`)")))?
            .clone();
        access::may_act_for(&policy, &ctx.caller, &cur.user)?;
        let new_end = match to {
            To::Add(d) => cur.end + d.signed(),
            To::Until(t) => t,
        };
        let b = st.extend(&id, new_end, &policy, now)?;
        let ev = Event::booking(now, &ctx.caller.name, Action::Extend, &b);
        Ok((b, vec![ev]))
    })?;
    if ctx.json {
        print_json(&b.to_json());
    } else {
        println!(
            "{} now ends {} ({} left)",
            b.id,
            local(b.end, &tz),
            human_secs(b.end.as_second() - now.as_second())
        );
    }
    Ok(0)
}

/// `list`.
pub fn list(ctx: &Ctx, a: &ListArgs) -> Result<u8> {
    let policy = ctx.policy()?;
    let now = ctx.now();
    let (states, bad) = read_all(ctx)?;
    crate::watchdog::done();
    warn_unreadable(&bad);
    let who = match (&a.user, a.all) {
        (Some(u), _) => Some(u.clone()),
        (None, true) => None,
        (None, false) => Some(ctx.caller.name.to_string()),
    };
    let mut v: Vec<Booking> = states
        .into_iter()
        .flat_map(|s| s.bookings)
        .filter(|b| {
            b.is_current_or_future(now) && who.as_ref().is_none_or(|u| b.user.as_str() == u)
        })
        .collect();
    v.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
    if ctx.json {
        print_json(&bookings_json(&v));
    } else if v.is_empty() {
        println!(
            "no current or future bookings{}",
            who.map(|u| format!(" for {u}")).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            bookings_table(&v, now, &policy.tz_or_utc()).render(ctx.color)
        );
    }
    Ok(if bad.is_empty() { 0 } else { 3 })
}

/// `history`.
pub fn history(ctx: &Ctx, a: &HistoryArgs) -> Result<u8> {
    let policy = ctx.policy()?;
    let tz = policy.tz_or_utc();
    let now = ctx.now();
    let since = a
        .since
        .as_deref()
        .map(|t| parse_time(t, now, &tz))
        .transpose()?;
    let node = a.worker.as_deref().map(node_arg).transpose()?;
    let mut events = Vec::new();
    let mut torn = 0;
    let mut paths: Vec<std::path::PathBuf> = ctx
        .store
        .node_names()?
        .iter()
        .map(|n| {
            ctx.store
                .node_dir(n)
                .join(kloigos_core::store::JOURNAL_FILE)
        })
        .collect();
    paths.extend(ctx.store.deleted_journals());
    // A journal that cannot be read (too large, untrusted) is named and
    // skipped: the others still make a history, and the exit status says
    // it is incomplete.
    let mut unreadable = 0;
    for p in paths {
        match ctx.store.journal_at(&p) {
            Ok((ev, bad)) => {
                torn += bad.len();
                events.extend(ev);
            }
            Err(e) => {
                eprintln!("kloigos: warning: skipping {}", escape(&e.to_string()));
                unreadable += 1;
            }
        }
    }
    crate::watchdog::done();
    if torn > 0 {
        eprintln!(
            "kloigos: warning: {torn} journal line(s) could not be read (see `kloigos admin fsck`)"
        );
    }
    let bookings: Vec<Booking> = journal::final_bookings(&events)
        .into_iter()
        .filter(|b| b.end > b.start)
        .filter(|b| a.user.as_ref().is_none_or(|u| b.user.as_str() == u))
        .filter(|b| node.as_ref().is_none_or(|n| &b.node == n))
        .filter(|b| since.is_none_or(|s| b.end > s))
        .collect();
    if a.summary {
        let rows = journal::usage_by_user(&bookings);
        let round = |h: f64| (h * 100.0).round() / 100.0;
        if ctx.json {
            let v: Vec<_> = rows
                .iter()
                .map(|r| serde_json::json!({"user": r.user, "bookings": r.bookings, "cpu_hours": round(r.cpu_hours), "gpu_hours": round(r.gpu_hours)}))
                .collect();
            print_json(&v);
        } else {
            let mut t = Table::new(&["USER", "BOOKINGS", "CPU-HOURS", "GPU-HOURS"]);
            for r in rows {
                t.row(vec![
                    r.user.to_string(),
                    r.bookings.to_string(),
                    format!("{:.2}", r.cpu_hours),
                    format!("{:.2}", r.gpu_hours),
                ]);
            }
            print!("{}", t.render(ctx.color));
        }
    } else if ctx.json {
        print_json(&bookings_json(&bookings));
    } else if bookings.is_empty() {
        println!("no bookings in the journals match");
    } else {
        print!("{}", bookings_table(&bookings, now, &tz).render(ctx.color));
    }
    Ok(if unreadable == 0 { 0 } else { 3 })
}
