//! `nodes/<node>/facts.json`: what a node's housekeeper observed on its last
//! pass. Written only by that node; read by `info` and placement.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::names::{NodeName, UserName};

/// A heartbeat older than this marks the node stale in `info`.
pub const STALE_AFTER_SECS: i64 = 180;

/// One NUMA node and its CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Numa {
    /// NUMA node number.
    pub id: u32,
    /// Its CPUs.
    pub cpus: CpuSet,
}

/// Per-user activity seen on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUse {
    /// Account name.
    pub user: UserName,
    /// Account uid.
    pub uid: u32,
    /// Processes running.
    pub processes: u32,
    /// CPU time used since the previous pass, in CPU-seconds per second.
    #[serde(default)]
    pub cpu_load: f64,
}

/// The facts file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// File format version.
    pub version: u32,
    /// The node these facts are about.
    pub node: NodeName,
    /// When the housekeeper wrote them.
    pub heartbeat: Timestamp,
    /// Version of the housekeeper.
    #[serde(default)]
    pub kloigos_version: String,
    /// CPUs online.
    #[serde(default)]
    pub cpus_online: Option<CpuSet>,
    /// CPUs of the node spec this host does not have: its users are
    /// confined to the others (`kloigos admin set-node` fixes the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_cpus: Option<CpuSet>,
    /// NUMA layout.
    #[serde(default)]
    pub numa: Vec<Numa>,
    /// Total memory, bytes.
    #[serde(default)]
    pub mem_total: u64,
    /// Available memory, bytes.
    #[serde(default)]
    pub mem_available: u64,
    /// 1, 5 and 15 minute load averages.
    #[serde(default)]
    pub load: [f64; 3],
    /// Seconds since boot.
    #[serde(default)]
    pub uptime_s: u64,
    /// GPU names, when nvidia-smi reports any.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// Users with processes on the node.
    #[serde(default)]
    pub users: Vec<UserUse>,
    /// Whether the last pass could read the state and enforce it.
    #[serde(default)]
    pub enforcing: bool,
    /// The last pass's problem, if any.
    #[serde(default)]
    pub error: Option<String>,
}

impl Facts {
    /// Whether the heartbeat is older than [`STALE_AFTER_SECS`] at `now`.
    pub fn is_stale(&self, now: Timestamp) -> bool {
        now.as_second() - self.heartbeat.as_second() > STALE_AFTER_SECS
    }

    /// The NUMA CPU sets, for placement.
    pub fn numa_sets(&self) -> Vec<CpuSet> {
        self.numa.iter().map(|n| n.cpus.clone()).collect()
    }
}
