//! `info`: the command people run most. One screen: per node its state,
//! free units, holders with CPU and port ranges and time left, next free
//! time and load.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use kloigos_core::booking::Booking;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::duration::human_secs;
use kloigos_core::facts::{Facts, Gpu};
use kloigos_core::gpuset::GpuSet;
use kloigos_core::names::{Label, NodeName};
use kloigos_core::node::Drain;
use kloigos_core::ports::PortRange;
use kloigos_core::state::{Condition, NodeState};
use kloigos_core::window::Window;
use serde::Serialize;
use serde_json::json;

use crate::args::InfoArgs;
use crate::book::read_all;
use crate::ctx::{node_arg, Ctx};
use crate::error::Result;
use crate::output::{bookings_json, escape, local, print_json, status_of, Paint, Table};

/// `info --json`: the documented shape.
#[derive(Serialize)]
struct InfoJson<'a> {
    nodes: Vec<NodeJson<'a>>,
    errors: Vec<serde_json::Value>,
}

/// One node in `info --json`.
#[derive(Serialize)]
struct NodeJson<'a> {
    name: &'a NodeName,
    labels: &'a [Label],
    partitions: [&'a str; 1],
    cpus: &'a CpuSet,
    unit_cpus: u32,
    units_total: u32,
    units_free: u32,
    ports: Option<PortRange>,
    gpus: Option<&'a GpuSet>,
    gpus_free: u32,
    gpu_list: Vec<GpuJson<'a>>,
    drained: Option<&'a Drain>,
    windows: &'a [Window],
    state: &'static str,
    next_free: Option<Timestamp>,
    bookings: Vec<kloigos_core::booking::Printed<'a>>,
    idle: Vec<IdleJson<'a>>,
    facts: Option<&'a Facts>,
}

/// A GPU booking idle for `--idle-after` or longer.
#[derive(Serialize)]
struct IdleJson<'a> {
    booking: &'a kloigos_core::booking::BookingId,
    since: Timestamp,
}

/// One GPU in `info --json`, from the node's facts.
#[derive(Serialize)]
struct GpuJson<'a> {
    index: u32,
    uuid: Option<&'a str>,
    name: &'a str,
    memory_used: Option<u64>,
    memory_total: Option<u64>,
    utilization: Option<u32>,
}

impl<'a> From<&'a Gpu> for GpuJson<'a> {
    fn from(g: &'a Gpu) -> Self {
        GpuJson {
            index: g.index,
            uuid: g.uuid.as_deref(),
            name: &g.name,
            memory_used: g.memory_used,
            memory_total: g.memory_total,
            utilization: g.utilization,
        }
    }
}

/// GPUs free now: those of free units.
fn gpus_free(st: &NodeState, free: u32) -> u32 {
    free * st.node.gpus_per_unit()
}

/// How `info` paints a node's condition.
fn paint_of(c: Condition) -> Paint {
    match c {
        Condition::Drained | Condition::Full => Paint::Red,
        Condition::Stale | Condition::Partly => Paint::Yellow,
        Condition::Free => Paint::Green,
    }
}

/// A node as `info` shows it: its state, its facts, its units free now.
type Row = (NodeState, Option<Facts>, u32);

/// A node that could not be read, and why.
type Unread = (NodeName, kloigos_core::Error);

/// `info`.
pub fn info(ctx: &Ctx, a: &InfoArgs) -> Result<u8> {
    let tz = ctx.policy()?.tz_or_utc();
    let now = ctx.now();
    let idle_after = idle_after_secs(&a.idle_after)?;
    let (rows, bad) = read_rows(ctx, a, now)?;
    crate::watchdog::done();
    if ctx.json {
        let partition = ctx.partition.clone().unwrap_or_else(|| "default".into());
        print_json_info(&rows, &bad, &partition, now, idle_after);
    } else {
        print_table(ctx, a, &rows, &bad, &tz, now, idle_after);
    }
    Ok(if bad.is_empty() { 0 } else { 3 })
}

/// `--idle-after`, in seconds.
fn idle_after_secs(text: &str) -> Result<i64> {
    let d = kloigos_core::duration::Dur::parse(text).map_err(|_| {
        kloigos_core::Error::invalid(
            "--idle-after",
            text,
            "give a duration such as 30m, 2h or 3600",
        )
    })?;
    Ok(d.secs() as i64)
}

/// The active bookings of `s` whose GPUs (and user) have been idle for
/// `idle_after` seconds: their index in `s.bookings`, and since when.
fn idle_bookings(
    s: &NodeState,
    facts: Option<&Facts>,
    now: Timestamp,
    idle_after: i64,
) -> Vec<(usize, Timestamp)> {
    let Some(f) = facts else { return Vec::new() };
    s.bookings
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_active(now))
        .filter_map(|(i, b)| Some((i, kloigos_core::facts::booking_idle(b, f, now, idle_after)?)))
        .collect()
}

/// The nodes asked for (all without names; a name the cluster lacks is an
/// error of its own), with their facts, less the full ones under `--free`.
fn read_rows(ctx: &Ctx, a: &InfoArgs, now: Timestamp) -> Result<(Vec<Row>, Vec<Unread>)> {
    let (mut states, mut bad) = read_all(ctx)?;
    if !a.nodes.is_empty() {
        let wanted = a
            .nodes
            .iter()
            .map(|n| node_arg(n))
            .collect::<Result<Vec<_>>>()?;
        for w in &wanted {
            if !ctx.store.has_node(w) {
                bad.push((
                    w.clone(),
                    kloigos_core::Error::Refused(format!("no node '{w}' in this cluster")),
                ));
            }
        }
        states.retain(|s| wanted.contains(&s.node.name));
        bad.retain(|(n, _)| wanted.contains(n));
    }
    let nodes = ctx.store.open_nodes().ok();
    let rows = states
        .into_iter()
        .map(|s| {
            let facts = nodes
                .as_ref()
                .and_then(|d| ctx.store.facts_at(d, &s.node.name));
            let free = s.units_free_now(now);
            (s, facts, free)
        })
        .filter(|(_, _, free)| !a.free || *free > 0)
        .collect();
    Ok((rows, bad))
}

/// `info --json`.
fn print_json_info(rows: &[Row], bad: &[Unread], partition: &str, now: Timestamp, idle_after: i64) {
    let nodes: Vec<NodeJson> = rows
        .iter()
        .map(|(s, facts, free)| NodeJson {
            name: &s.node.name,
            labels: &s.node.labels,
            partitions: [partition],
            cpus: &s.node.cpus,
            unit_cpus: s.node.cpus_per_unit(),
            units_total: s.node.units_total(),
            units_free: *free,
            ports: s.node.ports,
            gpus: s.node.gpus.as_ref(),
            gpus_free: gpus_free(s, *free),
            gpu_list: facts
                .as_ref()
                .map(|f| f.gpus.iter().map(GpuJson::from).collect())
                .unwrap_or_default(),
            drained: s.node.drained.as_ref(),
            windows: &s.node.windows,
            state: s.condition(facts.as_ref(), now, *free).as_str(),
            next_free: s.next_free(now, *free),
            bookings: bookings_json(s.bookings.iter().filter(|b| b.is_current_or_future(now))),
            idle: idle_bookings(s, facts.as_ref(), now, idle_after)
                .into_iter()
                .map(|(i, since)| IdleJson {
                    booking: &s.bookings[i].id,
                    since,
                })
                .collect(),
            facts: facts.as_ref(),
        })
        .collect();
    let errors: Vec<_> = bad
        .iter()
        .map(|(n, e)| json!({"name": n, "error": e.to_string()}))
        .collect();
    print_json(&InfoJson { nodes, errors });
}

/// `info`'s table: a line per node, under it a line per current or
/// future booking; then the nodes that could not be read.
fn print_table(
    ctx: &Ctx,
    a: &InfoArgs,
    rows: &[Row],
    bad: &[Unread],
    tz: &TimeZone,
    now: Timestamp,
    idle_after: i64,
) {
    let with_gpus = rows.iter().any(|(s, ..)| s.node.gpus.is_some());
    let mut header = vec!["NODE", "STATE", "FREE", "CPUS", "UNIT"];
    if with_gpus {
        header.push("GPUS FREE");
    }
    header.extend(["LOAD", "NEXT FREE", "HOLDERS"]);
    let mut t = Table::new(&header);
    for row in rows {
        let (s, facts, _) = row;
        let current: Vec<&Booking> = s
            .bookings
            .iter()
            .filter(|b| b.is_current_or_future(now))
            .collect();
        t.painted(node_cells(row, current.len(), with_gpus, tz, now));
        let idle = idle_bookings(s, facts.as_ref(), now, idle_after);
        for b in current {
            let idle_since = idle
                .iter()
                .find(|(i, _)| s.bookings[*i].id == b.id)
                .map(|(_, since)| *since);
            t.painted(booking_cells(b, idle_since, with_gpus, tz, now));
        }
    }
    if rows.is_empty() && bad.is_empty() {
        println!(
            "{}",
            if a.free {
                "no node has a free unit now"
            } else {
                "no nodes yet (admins: kloigos admin add-node)"
            }
        );
    } else {
        print!("{}", t.render(ctx.color));
    }
    for (n, e) in bad {
        eprintln!("kloigos: {n}: {}", escape(&e.to_string()));
    }
}

/// A node's line: name, condition, free units, CPUs, unit size, free
/// GPUs, load, next free time and how many bookings it holds.
fn node_cells(
    row: &Row,
    holders: usize,
    with_gpus: bool,
    tz: &TimeZone,
    now: Timestamp,
) -> Vec<(String, Paint)> {
    let (s, facts, free) = row;
    let cond = s.condition(facts.as_ref(), now, *free);
    let paint = paint_of(cond);
    let cond = match &s.node.drained {
        Some(d) => format!("{} ({})", cond.as_str(), d.reason),
        None => cond.as_str().to_string(),
    };
    let load = facts
        .as_ref()
        .map(|f| format!("{:.2}", f.load[0]))
        .unwrap_or_else(|| "-".into());
    let next = match s.next_free(now, *free) {
        Some(t) if t <= now => "now".to_string(),
        Some(t) => format!(
            "{} ({})",
            local(t, tz),
            human_secs(t.as_second() - now.as_second())
        ),
        None => "-".into(),
    };
    let holders = if holders == 0 {
        "-".to_string()
    } else {
        holders.to_string()
    };
    let mut cells = vec![
        (s.node.name.to_string(), Paint::Plain),
        (cond, paint),
        (format!("{free}/{}", s.node.units_total()), Paint::Plain),
        (s.node.cpus.to_string(), Paint::Plain),
        (s.node.cpus_per_unit().to_string(), Paint::Plain),
    ];
    if with_gpus {
        let total = s.node.gpus.as_ref().map_or(0, GpuSet::len);
        let cell = if total == 0 {
            "-".to_string()
        } else {
            format!("{}/{total}", gpus_free(s, *free))
        };
        cells.push((cell, Paint::Plain));
    }
    cells.extend([
        (load, Paint::Plain),
        (next, Paint::Plain),
        (holders, Paint::Plain),
    ]);
    cells
}

/// A booking's line under its node: id, holder, units, CPUs, status (with
/// how long it has been idle), end, ports, GPUs and note.
fn booking_cells(
    b: &Booking,
    idle_since: Option<Timestamp>,
    with_gpus: bool,
    tz: &TimeZone,
    now: Timestamp,
) -> Vec<(String, Paint)> {
    let ports = b.ports.map(|p| format!(" ports {p}")).unwrap_or_default();
    let gpus = b
        .gpus
        .as_ref()
        .map(|g| format!(" GPUs {g}"))
        .unwrap_or_default();
    let note = if b.note.is_empty() {
        String::new()
    } else {
        format!("  \"{}\"", b.note.as_str())
    };
    let mut cells = vec![
        (format!("  {}", b.id), Paint::Dim),
        (b.user.to_string(), Paint::Plain),
        (format!("u{}-{}", b.units[0], b.units[1]), Paint::Dim),
        (b.cpus.to_string(), Paint::Plain),
        (String::new(), Paint::Plain),
    ];
    if with_gpus {
        cells.push((String::new(), Paint::Plain));
    }
    let (status, paint) = match idle_since {
        Some(since) => (
            format!(
                "{}, IDLE {}",
                status_of(b, now),
                human_secs(now.as_second() - since.as_second())
            ),
            Paint::Yellow,
        ),
        None => (status_of(b, now), Paint::Plain),
    };
    cells.extend([
        (String::new(), Paint::Plain),
        (status, paint),
        (
            format!("until {}{ports}{gpus}{note}", local(b.end, tz)),
            Paint::Dim,
        ),
    ]);
    cells
}
