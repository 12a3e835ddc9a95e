//! `facts.json`: what this node looks like, written each pass to the shared
//! tree (as the service account) for `kloigos info` and placement.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kloigos_core::config::GpuConfig;
use kloigos_core::facts::{idle_since, Facts, Gpu, UserUse};
use kloigos_core::ids::Uid;
use kloigos_core::names::{NodeName, UserName};
use kloigos_core::policy::FORMAT_VERSION;

use crate::procfs;
use crate::record::Record;

/// Builds the facts at `now` from /proc, /sys, the GPU driver's tree
/// (`gpu`) and the record (which keeps CPU ticks between passes).
pub fn gather(
    node: &NodeName,
    gpu: &GpuConfig,
    by_uid: &BTreeMap<Uid, (u32, u64)>,
    names: &BTreeMap<Uid, UserName>,
    managed: &dyn Fn(Uid) -> bool,
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
        // Known only from the second pass on (no ticks to compare before).
        let idle_now = elapsed.is_some()
            && record.cpu_ticks.contains_key(uid)
            && cpu_load < kloigos_core::facts::IDLE_CPU_LOAD;
        let since = idle_since(record.user_idle.get(uid).copied(), idle_now, now);
        users.push(UserUse {
            user: user.clone(),
            uid: *uid,
            processes: *n,
            cpu_load: (cpu_load * 1000.0).round() / 1000.0,
            idle_since: since,
        });
    }
    record.cpu_ticks = by_uid.iter().map(|(u, (_, t))| (*u, *t)).collect();
    record.user_idle = users
        .iter()
        .filter_map(|u| Some((u.uid, u.idle_since?)))
        .collect();
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
        gpus: gpus(gpu, record, now),
        users,
        enforcing: true,
        error: None,
    }
}

/// The GPU inventory, or none (logged) when the driver's tree cannot be
/// read, with utilization and memory from a recent nvidia-smi sample.
fn gpus(cfg: &GpuConfig, record: &mut Record, now: Timestamp) -> Vec<Gpu> {
    let mut gpus = crate::gpu::inventory(cfg).unwrap_or_else(|e| {
        crate::log::error(&format!("GPU inventory: {e}"));
        Vec::new()
    });
    crate::gpu::add_samples(&mut gpus, record, now);
    for g in &mut gpus {
        let prev = record.gpu_idle.get(&g.index).copied();
        g.idle_since = idle_since(prev, g.utilization == Some(0), now);
    }
    record.gpu_idle = gpus
        .iter()
        .filter_map(|g| Some((g.index, g.idle_since?)))
        .collect();
    gpus
}
