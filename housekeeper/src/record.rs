//! What the housekeeper remembers between passes, in a root-owned file next
//! to the local state copy: warnings given, hooks run, counters, the
//! nftables table it loaded, CPU time per user.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use kloigos_core::booking::BookingId;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::ids::Uid;
use kloigos_core::store::{self, Trust};
use kloigos_core::trusted::TrustedDir;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::nft::NftRecord;

/// File name of the record, in the state directory.
pub const RECORD_FILE: &str = "housekeeper.json";

/// The record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    /// Format version.
    pub version: u32,
    /// When the last pass ran.
    pub last_pass: Option<Timestamp>,
    /// Warnings given: (booking, threshold).
    pub warned: BTreeSet<(BookingId, u64)>,
    /// Bookings whose release hooks ran; absent before the first pass.
    pub hooks_done: Option<BTreeSet<BookingId>>,
    /// Processes ended, ever.
    pub killed_total: u64,
    /// Times the nftables table was loaded or removed, ever.
    pub nft_loads_total: u64,
    /// Hooks that failed or timed out, ever.
    pub hooks_failed_total: u64,
    /// The table as last loaded.
    pub nft: Option<NftRecord>,
    /// CPU ticks per uid at the last pass, for CPU use.
    pub cpu_ticks: BTreeMap<Uid, u64>,
    /// GPU names and when nvidia-smi was last asked.
    pub gpus: Option<(Timestamp, Vec<String>)>,
    /// CPUs of the node spec this host lacked at the last pass (said in the
    /// log when this changes).
    pub missing_cpus: Option<CpuSet>,
    /// The last nvidia-smi sample of the GPUs (taken or tried) and when.
    pub gpu_sample: Option<(Timestamp, Vec<kloigos_core::facts::GpuSample>)>,
    /// Since when each GPU (by index) has shown 0% utilization.
    pub gpu_idle: BTreeMap<u32, Timestamp>,
    /// Since when each user's processes have used no CPU.
    pub user_idle: BTreeMap<Uid, Timestamp>,
    /// Processes holding a GPU their user does not hold (`pid:start`), and
    /// when each was first seen.
    pub gpu_strays: BTreeMap<String, Timestamp>,
    /// The GPU fence's device program attached for each uid (cgroup v2).
    pub gpu_bpf: BTreeMap<kloigos_core::ids::Uid, crate::fence::Attached>,
}

impl Record {
    /// The record's path in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(RECORD_FILE)
    }

    /// Reads the record; a missing or unreadable one starts afresh (logged).
    pub fn load(dir: &Path) -> Record {
        let path = Record::path(dir);
        match store::read_trusted(&path, &Trust::root_only()) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                crate::log::error(&format!(
                    "{}: unreadable ({e}); starting a new record",
                    path.display()
                ));
                Record::default()
            }),
            Err(_) => Record::default(),
        }
    }

    /// Writes the record atomically.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        self.version = 1;
        // Read back as root's only: written through a handle checked so.
        TrustedDir::open(dir, &Trust::root_only())?
            .write_atomic(RECORD_FILE, &store::to_json(self))?;
        Ok(())
    }
}
