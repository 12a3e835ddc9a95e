//! A temporary cluster in a temporary directory, built through kloigos-core
//! (so tests of any part can make one without going through the CLI).

use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::Timestamp;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::names::{NodeName, UserName};
use kloigos_core::node::NodeSpec;
use kloigos_core::policy::Policy;
use kloigos_core::state::NodeState;
use kloigos_core::store::{Store, Trust};

use crate::cmd::Run;

/// A cluster rooted in a temp dir, owned by the current user and trusted
/// by them; removed on drop.
pub struct TempCluster {
    /// The temp dir holding `shared/` and `config.json`.
    pub dir: tempfile::TempDir,
    /// The store on `shared/`.
    pub store: Store,
}

impl TempCluster {
    /// A cluster with one node, `hot`, of one-CPU units over `cpus`, where
    /// one user may take every unit (no per-node cap): for contention.
    pub fn hot(cpus: &str) -> TempCluster {
        let c = TempCluster::with_policy(Policy {
            max_bookings_per_user_node: 0,
            ..Policy::default()
        });
        c.add_node("hot", cpus, Some(1), None);
        c
    }

    /// An initialised cluster with the default policy and no nodes.
    pub fn new() -> TempCluster {
        TempCluster::with_policy(Policy::default())
    }

    /// An initialised cluster with `policy`.
    pub fn with_policy(policy: Policy) -> TempCluster {
        let dir = tempfile::Builder::new()
            .prefix("kloigos-test-")
            .tempdir()
            .expect("temp dir");
        // Readers refuse group/world-writable parents; tempdir is 0700.
        let me = nix::unistd::geteuid().as_raw();
        let store = Store::new(dir.path().join("shared"), Trust::root_and(crate::uid(me)));
        store.init(&policy).expect("init cluster");
        let cfg = serde_json::json!({ "shared": store.root() });
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).expect("write config");
        TempCluster { dir, store }
    }

    /// The shared root.
    pub fn shared(&self) -> &Path {
        self.store.root()
    }

    /// The config file pointing at this cluster.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    /// Adds a node with CPUs `cpus`, `unit_cpus` per unit and optional ports.
    pub fn add_node(
        &self,
        name: &str,
        cpus: &str,
        unit_cpus: Option<u32>,
        ports: Option<&str>,
    ) -> NodeName {
        let n = NodeName::new(name).expect("node name");
        let mut spec = NodeSpec::new(n.clone(), CpuSet::parse(cpus).expect("cpus"));
        spec.unit_cpus = unit_cpus;
        spec.ports = ports.map(|p| kloigos_core::ports::PortRange::parse(p).expect("ports"));
        self.store
            .add_node(
                &NodeState::new(spec),
                &UserName::new("root").expect("name"),
                Timestamp::now(),
            )
            .expect("add node");
        n
    }

    /// The `kloigos` CLI pointed at this cluster (`--shared`), ready for args.
    pub fn kloigos(&self) -> Command {
        let mut c = Command::new(crate::bin("kloigos"));
        c.arg("--shared").arg(self.shared()).env("NO_COLOR", "1");
        c
    }

    /// Runs the CLI on this cluster with `args`.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::of(self.kloigos().args(args))
    }

    /// The raw bytes of a node's state file (to compare before/after).
    pub fn state_bytes(&self, node: &str) -> Vec<u8> {
        let n = NodeName::new(node).expect("node name");
        std::fs::read(self.store.state_path(&n)).expect("read state")
    }
}

impl Default for TempCluster {
    fn default() -> Self {
        TempCluster::new()
    }
}
