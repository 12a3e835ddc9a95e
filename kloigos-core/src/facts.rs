//! `nodes/<node>/facts.json`: what a node's housekeeper observed on its last
//! pass. Written only by that node; read by `info` and placement.

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};

use crate::cpuset::CpuSet;
use crate::ids::Uid;
use crate::names::{NodeName, UserName};
use crate::state::Topology;

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

/// One GPU of the node, from the driver's inventory (NVIDIA:
/// `/proc/driver/nvidia/gpus/<bus>/information` and the PCI device in sysfs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// Its index: its place in PCI bus order, as `nvidia-smi` numbers it.
    pub index: u32,
    /// The major number of its device node (NVIDIA: 195).
    #[serde(default = "nvidia_major")]
    pub major: u32,
    /// The minor number of its device node (`/dev/nvidiaN`).
    pub minor: u32,
    /// Its UUID (`GPU-...`), when the driver gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Its model name.
    #[serde(default)]
    pub name: String,
    /// Its PCI bus id (`0000:3b:00.0`; empty for a GPU declared by device path).
    #[serde(default)]
    pub bus_id: String,
    /// The NUMA node it hangs off, when the platform says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// Utilization in percent, when a recent sample exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<u32>,
    /// Memory in use, bytes, when a recent sample exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used: Option<u64>,
    /// Memory in total, bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total: Option<u64>,
    /// Since when every sample has shown 0% utilization (none: busy or unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Timestamp>,
}

/// What one NVIDIA `information` file says: `(device minor, UUID, model)`.
/// The minor is required (it names the device node); a UUID that is not
/// plain `[A-Za-z0-9-]` text of at most 80 bytes is left out, and the model
/// loses control characters and is cut at 96 characters, since both are
/// printed and passed on.
pub fn parse_nvidia_information(text: &str) -> Option<(u32, Option<String>, String)> {
    let mut minor = None;
    let mut uuid = None;
    let mut model = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "Device Minor" => minor = value.parse::<u32>().ok(),
            "GPU UUID" => {
                uuid = (!value.is_empty()
                    && value.len() <= 80
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                .then(|| value.to_string())
            }
            "Model" => {
                model = value
                    .chars()
                    .filter(|c| !crate::printable::is_control(*c))
                    .take(96)
                    .collect()
            }
            _ => {}
        }
    }
    // Minors above 254 are the driver's control nodes, never a GPU.
    let minor = minor.filter(|m| *m <= crate::gpuset::MAX_GPU)?;
    Some((minor, uuid, model))
}

/// One GPU's sample from `nvidia-smi --query-gpu=uuid,utilization.gpu,
/// memory.used,memory.total --format=csv,noheader,nounits`; a field the
/// GPU does not report (`[N/A]`, `[Not Supported]`) is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSample {
    /// The GPU's UUID.
    pub uuid: String,
    /// Utilization, percent.
    pub utilization: Option<u32>,
    /// Memory in use, bytes.
    pub memory_used: Option<u64>,
    /// Memory in total, bytes.
    pub memory_total: Option<u64>,
}

/// Parses that query's output (memory in MiB); lines that do not name a
/// GPU by a plain UUID are skipped, and at most 255 are read.
pub fn parse_nvidia_smi(text: &str) -> Vec<GpuSample> {
    let mib = |v: &str| v.parse::<u64>().ok().and_then(|m| m.checked_mul(1 << 20));
    text.lines()
        .take(crate::gpuset::MAX_GPU as usize + 1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [uuid, util, used, total] = f[..] else {
                return None;
            };
            let plain = !uuid.is_empty()
                && uuid.len() <= 80
                && uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            plain.then(|| GpuSample {
                uuid: uuid.to_string(),
                utilization: util.parse().ok().filter(|u| *u <= 100),
                memory_used: mib(used),
                memory_total: mib(total),
            })
        })
        .collect()
}

/// Copies the samples onto the GPUs they name (by UUID).
pub fn merge_samples(gpus: &mut [Gpu], samples: &[GpuSample]) {
    for g in gpus {
        if let Some(s) = samples.iter().find(|s| Some(&s.uuid) == g.uuid.as_ref()) {
            g.utilization = s.utilization;
            g.memory_used = s.memory_used;
            g.memory_total = s.memory_total;
        }
    }
}

/// Whether `name` is a PCI address as the kernel writes it
/// (`0000:3b:00.0`): the only directory names the inventory follows.
pub fn is_pci_address(name: &str) -> bool {
    let b = name.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

fn nvidia_major() -> u32 {
    crate::fence::NVIDIA_MAJOR
}

/// Reads the GPU list, skipping entries that are not [`Gpu`] objects:
/// older housekeepers wrote bare model names there.
fn gpus_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Gpu>, D::Error> {
    let raw: Vec<serde_json::Value> = Vec::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// Per-user activity seen on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUse {
    /// Account name.
    pub user: UserName,
    /// Account uid.
    pub uid: Uid,
    /// Processes running.
    pub processes: u32,
    /// CPU time used since the previous pass, in CPU-seconds per second.
    #[serde(default)]
    pub cpu_load: f64,
    /// Since when the user's processes have used no CPU to speak of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Timestamp>,
}

/// A user's processes below this load (CPU-seconds per second) count as idle.
pub const IDLE_CPU_LOAD: f64 = 0.01;

/// Carries an idle streak on: since `prev` (or `now`, when it starts) while
/// `idle_now` holds; over otherwise.
pub fn idle_since(prev: Option<Timestamp>, idle_now: bool, now: Timestamp) -> Option<Timestamp> {
    idle_now.then(|| prev.unwrap_or(now))
}

/// Since when `b` has been idle for at least `after_s` seconds at `now`:
/// it holds GPUs, each of them has shown 0% utilization since then, and
/// its user's processes have used no CPU (or there are none). `None`: busy,
/// idle for less, or not known (no GPU samples).
pub fn booking_idle(
    b: &crate::booking::Booking,
    facts: &Facts,
    now: Timestamp,
    after_s: i64,
) -> Option<Timestamp> {
    let gpus = b.gpus.as_ref()?;
    let mut since = Vec::with_capacity(gpus.len() + 1);
    for i in gpus.indices() {
        since.push(facts.gpus.iter().find(|g| g.index == *i)?.idle_since?);
    }
    if let Some(u) = facts.users.iter().find(|u| u.uid == b.uid) {
        since.push(u.idle_since?);
    }
    let latest = since.into_iter().max()?;
    (now.as_second() - latest.as_second() >= after_s).then_some(latest)
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
    /// The GPU inventory, by index.
    #[serde(default, deserialize_with = "gpus_lenient")]
    pub gpus: Vec<Gpu>,
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

    /// Where the CPUs and GPUs sit, for placement and GPU UUIDs.
    pub fn topology(&self) -> Topology {
        let near = |g: &Gpu| {
            let id = g.numa_node?;
            self.numa
                .iter()
                .find(|n| n.id == id)
                .map(|n| n.cpus.clone())
        };
        Topology {
            numa: self.numa_sets(),
            gpu_numa: self
                .gpus
                .iter()
                .filter_map(|g| Some((g.index, near(g)?)))
                .collect(),
            gpu_uuid: self
                .gpus
                .iter()
                .filter_map(|g| Some((g.index, g.uuid.clone()?)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_information_files_parse_and_hostile_text_is_cleaned() {
        let text = "Model: \t\t Tesla T4\nIRQ:   \t\t 40\nGPU UUID: \t GPU-4b1f3c2a-0000-1111-2222-333344445555\nBus Location: \t 0000:3b:00.0\nDevice Minor: \t 2\nGPU Excluded:\t No\n";
        assert_eq!(
            parse_nvidia_information(text),
            Some((
                2,
                Some("GPU-4b1f3c2a-0000-1111-2222-333344445555".into()),
                "Tesla T4".into()
            ))
        );
        let bad = "Model: A\u{1b}[2J\nGPU UUID: GPU-1;rm -rf\nDevice Minor: 7\n";
        assert_eq!(
            parse_nvidia_information(bad),
            Some((7, None, "A[2J".into()))
        );
        assert_eq!(parse_nvidia_information("Model: T4\n"), None);
        assert_eq!(parse_nvidia_information("Device Minor: 255\n"), None);
        assert!(is_pci_address("0000:3b:00.0"));
        for bad in [
            "0000:3b:00.8",
            "../../etc",
            "0000:3b:00.0/",
            "0000:3g:00.0",
            "",
        ] {
            assert!(!is_pci_address(bad), "{bad}");
        }
    }

    #[test]
    fn nvidia_smi_samples_parse_and_merge_by_uuid() {
        let out =
            "GPU-aaa, 37, 1024, 16384\nGPU-bbb, [N/A], [N/A], 16384\nno, uuid\nGPU-x;rm, 1, 1, 1\n";
        let s = parse_nvidia_smi(out);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            GpuSample {
                uuid: "GPU-aaa".into(),
                utilization: Some(37),
                memory_used: Some(1 << 30),
                memory_total: Some(16 << 30)
            }
        );
        assert_eq!((s[1].utilization, s[1].memory_used), (None, None));
        let mut gpus: Vec<Gpu> = serde_json::from_value(serde_json::json!([
            {"index": 0, "minor": 0, "uuid": "GPU-bbb", "bus_id": "0000:01:00.0"},
            {"index": 1, "minor": 1, "uuid": "GPU-aaa", "bus_id": "0000:02:00.0"},
            {"index": 2, "minor": 2, "bus_id": "0000:03:00.0"}
        ]))
        .unwrap();
        merge_samples(&mut gpus, &s);
        assert_eq!(gpus[1].utilization, Some(37));
        assert_eq!(gpus[0].memory_total, Some(16 << 30));
        assert_eq!(gpus[2].memory_total, None);
        assert_eq!(
            parse_nvidia_smi(&"GPU-a, 1, 1, 1\n".repeat(1000)).len(),
            255
        );
    }

    #[test]
    fn a_booking_is_idle_when_its_gpus_and_its_user_have_been_idle_long_enough() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            idle_since(None, true, t("2026-01-01T01:00:00Z")),
            Some(t("2026-01-01T01:00:00Z"))
        );
        assert_eq!(
            idle_since(
                Some(t("2026-01-01T00:00:00Z")),
                true,
                t("2026-01-01T01:00:00Z")
            ),
            Some(t("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            idle_since(
                Some(t("2026-01-01T00:00:00Z")),
                false,
                t("2026-01-01T01:00:00Z")
            ),
            None
        );
        let mut f: Facts = serde_json::from_value(serde_json::json!({
            "version": 1, "node": "n1", "heartbeat": "2026-01-01T03:00:00Z",
            "gpus": [{"index": 0, "minor": 0, "bus_id": "", "idle_since": "2026-01-01T00:00:00Z"},
                     {"index": 1, "minor": 1, "bus_id": "", "idle_since": "2026-01-01T01:00:00Z"},
                     {"index": 2, "minor": 2, "bus_id": "", "utilization": 80}],
            "users": [{"user": "a", "uid": 1000, "processes": 3, "cpu_load": 0.0, "idle_since": "2026-01-01T00:30:00Z"}]
        }))
        .unwrap();
        let b: crate::booking::Booking = serde_json::from_value(serde_json::json!({
            "id": "n1:1", "node": "n1", "user": "a", "uid": 1000, "units": [0, 1], "cpus": "0-1",
            "ports": null, "gpus": "0-1", "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z",
            "created_by": "a", "created_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        let now = t("2026-01-01T03:00:00Z");
        // Idle since 01:00 (the latest streak start): 2 h.
        assert_eq!(
            booking_idle(&b, &f, now, 3600),
            Some(t("2026-01-01T01:00:00Z"))
        );
        assert_eq!(booking_idle(&b, &f, now, 3 * 3600), None);
        // A busy GPU, or a user whose processes work, is not idle.
        let mut busy = b.clone();
        busy.gpus = Some(crate::gpuset::GpuSet::parse("1-2").unwrap());
        assert_eq!(booking_idle(&busy, &f, now, 60), None);
        f.users[0].idle_since = None;
        assert_eq!(booking_idle(&b, &f, now, 60), None);
        // No processes at all: the GPUs decide.
        f.users.clear();
        assert_eq!(
            booking_idle(&b, &f, now, 60),
            Some(t("2026-01-01T01:00:00Z"))
        );
    }

    #[test]
    fn old_gpu_names_are_skipped_and_the_topology_maps_gpus_to_numa_cpus() {
        let f: Facts = serde_json::from_value(serde_json::json!({
            "version": 1, "node": "n1", "heartbeat": "2026-01-01T00:00:00Z",
            "numa": [{"id": 0, "cpus": "0-3"}, {"id": 1, "cpus": "4-7"}],
            "gpus": ["Tesla T4",
                     {"index": 0, "minor": 0, "uuid": "GPU-a", "name": "T4", "bus_id": "0000:01:00.0", "numa_node": 1},
                     {"index": 1, "minor": 1, "name": "T4", "bus_id": "0000:02:00.0"}]
        }))
        .unwrap();
        assert_eq!(f.gpus.len(), 2);
        let t = f.topology();
        assert_eq!(t.gpu_numa.get(&0).unwrap().to_string(), "4-7");
        assert!(!t.gpu_numa.contains_key(&1));
        assert_eq!(t.gpu_uuid.get(&0).map(String::as_str), Some("GPU-a"));
        let text = serde_json::to_string(&f.gpus[1]).unwrap();
        assert!(
            !text.contains("utilization") && !text.contains("uuid"),
            "{text}"
        );
    }
}
