//! `info`: the command people run most. One screen: per node its state,
//! free units, holders with CPU and port ranges and time left, next free
//! time and load.

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

/// `info`.
pub fn info(ctx: &Ctx, a: &InfoArgs) -> Result<u8> {
    let policy = ctx.policy()?;
    let tz = policy.tz_or_utc();
    let now = ctx.now();
    let idle_after = kloigos_core::duration::Dur::parse(&a.idle_after)
        .map_err(|_| {
            kloigos_core::Error::invalid(
                "--idle-after",
                &a.idle_after,
                "give a duration such as 30m, 2h or 3600",
            )
        })?
        .secs() as i64;
    let idle = |s: &NodeState, facts: Option<&Facts>| -> Vec<(usize, Timestamp)> {
        let Some(f) = facts else { return Vec::new() };
        s.bookings
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_active(now))
            .filter_map(|(i, b)| {
                Some((i, kloigos_core::facts::booking_idle(b, f, now, idle_after)?))
            })
            .collect()
    };
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
    let rows: Vec<(NodeState, Option<Facts>, u32)> = states
        .into_iter()
        .map(|s| {
            let facts = ctx.store.facts(&s.node.name);
            let free = s.units_free_now(now);
            (s, facts, free)
        })
        .filter(|(_, _, free)| !a.free || *free > 0)
        .collect();
    crate::watchdog::done();
    let partition = ctx.partition.clone().unwrap_or_else(|| "default".into());
    if ctx.json {
        let nodes: Vec<NodeJson> = rows
            .iter()
            .map(|(s, facts, free)| NodeJson {
                name: &s.node.name,
                labels: &s.node.labels,
                partitions: [partition.as_str()],
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
                idle: idle(s, facts.as_ref())
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
    } else {
        let with_gpus = rows.iter().any(|(s, ..)| s.node.gpus.is_some());
        let mut header = vec!["NODE", "STATE", "FREE", "CPUS", "UNIT"];
        if with_gpus {
            header.push("GPUS FREE");
        }
        header.extend(["LOAD", "NEXT FREE", "HOLDERS"]);
        let mut t = Table::new(&header);
        for (s, facts, free) in &rows {
            let cond = s.condition(facts.as_ref(), now, *free);
            let (cond, paint) = (cond.as_str(), paint_of(cond));
            let load = facts
                .as_ref()
                .map(|f| format!("{:.2}", f.load[0]))
                .unwrap_or_else(|| "-".into());
            let next = match s.next_free(now, *free) {
                Some(t) if t <= now => "now".to_string(),
                Some(t) => format!(
                    "{} ({})",
                    local(t, &tz),
                    human_secs(t.as_second() - now.as_second())
                ),
                None => "-".into(),
            };
            let current: Vec<&Booking> = s
                .bookings
                .iter()
                .filter(|b| b.is_current_or_future(now))
                .collect();
            let holders = if current.is_empty() {
                "-".to_string()
            } else {
                format!("{}", current.len())
            };
            let cond = match &s.node.drained {
                Some(d) => format!("{cond} ({})", d.reason),
                None => cond.to_string(),
            };
            let mut row = vec![
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
                row.push((cell, Paint::Plain));
            }
            row.extend([
                (load, Paint::Plain),
                (next, Paint::Plain),
                (holders, Paint::Plain),
            ]);
            t.painted(row);
            let idle_here: Vec<(&kloigos_core::booking::BookingId, Timestamp)> =
                idle(s, facts.as_ref())
                    .into_iter()
                    .map(|(i, since)| (&s.bookings[i].id, since))
                    .collect();
            for b in current {
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
                let mut row = vec![
                    (format!("  {}", b.id), Paint::Dim),
                    (b.user.to_string(), Paint::Plain),
                    (format!("u{}-{}", b.units[0], b.units[1]), Paint::Dim),
                    (b.cpus.to_string(), Paint::Plain),
                    (String::new(), Paint::Plain),
                ];
                if with_gpus {
                    row.push((String::new(), Paint::Plain));
                }
                let (status, paint) = match idle_here.iter().find(|(id, _)| *id == &b.id) {
                    Some((_, since)) => (
                        format!(
                            "{}, IDLE {}",
                            status_of(b, now),
                            human_secs(now.as_second() - since.as_second())
                        ),
                        Paint::Yellow,
                    ),
                    None => (status_of(b, now), Paint::Plain),
                };
                row.extend([
                    (String::new(), Paint::Plain),
                    (status, paint),
                    (
                        format!("until {}{ports}{gpus}{note}", local(b.end, &tz)),
                        Paint::Dim,
                    ),
                ]);
                t.painted(row);
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
        for (n, e) in &bad {
            eprintln!("kloigos: {n}: {}", escape(&e.to_string()));
        }
    }
    Ok(if bad.is_empty() { 0 } else { 3 })
}
