//! `info`: the command people run most. One screen: per node its state,
//! free units, holders with CPU and port ranges and time left, next free
//! time and load.

use jiff::Timestamp;
use kloigos_core::booking::Booking;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::duration::human_secs;
use kloigos_core::facts::Facts;
use kloigos_core::names::{Label, NodeName};
use kloigos_core::node::Drain;
use kloigos_core::ports::PortRange;
use kloigos_core::state::NodeState;
use kloigos_core::window::Window;
use serde::Serialize;
use serde_json::json;

use crate::args::InfoArgs;
use crate::book::read_all;
use crate::ctx::{node_arg, Ctx};
use crate::error::Result;
use crate::output::{escape, local, print_json, status_of, Paint, Table};

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
    drained: Option<&'a Drain>,
    windows: &'a [Window],
    state: &'static str,
    next_free: Option<Timestamp>,
    bookings: Vec<&'a Booking>,
    facts: Option<&'a Facts>,
}

/// A node's condition at a glance.
fn condition(
    st: &NodeState,
    facts: Option<&Facts>,
    now: Timestamp,
    free: u32,
) -> (&'static str, Paint) {
    if st.node.drained.is_some() {
        ("drained", Paint::Red)
    } else if facts.is_some_and(|f| f.is_stale(now)) {
        ("stale", Paint::Yellow)
    } else if free == 0 {
        ("full", Paint::Red)
    } else if free < st.node.units_total() {
        ("partly", Paint::Yellow)
    } else {
        ("free", Paint::Green)
    }
}

/// When the next unit frees up (now if one is free).
fn next_free(st: &NodeState, now: Timestamp, free: u32) -> Option<Timestamp> {
    if free > 0 {
        return Some(now);
    }
    st.active(now).map(|b| b.end).min()
}

/// `info`.
pub fn info(ctx: &Ctx, a: &InfoArgs) -> Result<u8> {
    let policy = ctx.policy()?;
    let tz = policy.tz_or_utc();
    let now = ctx.now();
    let instant = now + jiff::SignedDuration::from_secs(1);
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
            let free = s.units_free(now, instant);
            (s, facts, free)
        })
        .filter(|(_, _, free)| !a.free || *free > 0)
        .collect();
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
                drained: s.node.drained.as_ref(),
                windows: &s.node.windows,
                state: condition(s, facts.as_ref(), now, *free).0,
                next_free: next_free(s, now, *free),
                bookings: s
                    .bookings
                    .iter()
                    .filter(|b| b.is_current_or_future(now))
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
        let mut t = Table::new(&[
            "NODE",
            "STATE",
            "FREE",
            "CPUS",
            "UNIT",
            "LOAD",
            "NEXT FREE",
            "HOLDERS",
        ]);
        for (s, facts, free) in &rows {
            let (cond, paint) = condition(s, facts.as_ref(), now, *free);
            let load = facts
                .as_ref()
                .map(|f| format!("{:.2}", f.load[0]))
                .unwrap_or_else(|| "-".into());
            let next = match next_free(s, now, *free) {
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
            t.painted(vec![
                (s.node.name.to_string(), Paint::Plain),
                (cond, paint),
                (format!("{free}/{}", s.node.units_total()), Paint::Plain),
                (s.node.cpus.to_string(), Paint::Plain),
                (s.node.cpus_per_unit().to_string(), Paint::Plain),
                (load, Paint::Plain),
                (next, Paint::Plain),
                (holders, Paint::Plain),
            ]);
            for b in current {
                let ports = b.ports.map(|p| format!(" ports {p}")).unwrap_or_default();
                let note = if b.note.is_empty() {
                    String::new()
                } else {
                    format!("  \"{}\"", b.note.as_str())
                };
                t.painted(vec![
                    (format!("  {}", b.id), Paint::Dim),
                    (b.user.to_string(), Paint::Plain),
                    (format!("u{}-{}", b.units[0], b.units[1]), Paint::Dim),
                    (b.cpus.to_string(), Paint::Plain),
                    (String::new(), Paint::Plain),
                    (String::new(), Paint::Plain),
                    (status_of(b, now), Paint::Plain),
                    (
                        format!("until {}{ports}{note}", local(b.end, &tz)),
                        Paint::Dim,
                    ),
                ]);
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
