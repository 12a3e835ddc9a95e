//! `facts.json`: what this node looks like, written each pass to the shared
//! tree (as the service account) for `kloigos info` and placement.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kloigos_core::facts::{Facts, UserUse};
use kloigos_core::names::{NodeName, UserName};
use kloigos_core::policy::FORMAT_VERSION;

use crate::procfs;
use crate::record::Record;

/// How long the GPU list is reused before nvidia-smi is asked again.
const GPU_REFRESH_SECS: i64 = 3600;

/// Builds the facts at `now` from /proc, /sys and the record (which keeps
/// CPU ticks and the GPU list between passes).
pub fn gather(
    node: &NodeName,
    by_uid: &BTreeMap<u32, (u32, u64)>,
    names: &BTreeMap<u32, UserName>,
    managed: &dyn Fn(u32) -> bool,
    record: &mut Record,
    now: Timestamp,
) -> Facts {
    let (mem_total, mem_available) = procfs::meminfo();
    let elapsed = record
        .last_pass
        .map(|t| (now.as_second() - t.as_second()) as f64)
        .filter(|s| *s > 0.0);
    let tps = procfs::ticks_per_second() as f64;
    let mut users = Vec::new();
    for (uid, (n, ticks)) in by_uid {
        if !managed(*uid) {
            continue;
        }
        let Some(user) = names.get(uid) else { continue };
        let cpu_load = match (elapsed, record.cpu_ticks.get(uid)) {
            (Some(secs), Some(prev)) => ticks.saturating_sub(*prev) as f64 / tps / secs,
            _ => 0.0,
        };
        users.push(UserUse {
            user: user.clone(),
            uid: *uid,
            processes: *n,
            cpu_load: (cpu_load * 1000.0).round() / 1000.0,
        });
    }
    record.cpu_ticks = by_uid.iter().map(|(u, (_, t))| (*u, *t)).collect();
    Facts {
        version: FORMAT_VERSION,
        node: node.clone(),
        heartbeat: now,
        kloigos_version: env!("CARGO_PKG_VERSION").to_string(),
        cpus_online: procfs::cpus_online(),
        missing_cpus: None,
        numa: procfs::numa(),
        mem_total,
        mem_available,
        load: procfs::loadavg(),
        uptime_s: procfs::uptime(),
        gpus: gpus(record, now),
        users,
        enforcing: true,
        error: None,
    }
}

/// GPU names from `nvidia-smi` when it exists, refreshed hourly.
fn gpus(record: &mut Record, now: Timestamp) -> Vec<String> {
    if let Some((at, list)) = &record.gpus {
        if now.as_second() - at.as_second() < GPU_REFRESH_SECS {
            return list.clone();
        }
    }
    let list = if crate::sys::find_program("nvidia-smi").is_some() {
        match crate::sys::run(
            "nvidia-smi",
            &["--query-gpu=name", "--format=csv,noheader"],
            None,
        ) {
            Ok(out) => out
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            Err(e) => {
                crate::log::error(&format!("GPU list: {e}"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    record.gpus = Some((now, list.clone()));
    list
}
