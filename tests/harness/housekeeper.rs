//! Fixtures for the housekeeper's system tests and benchmark: a node in a
//! temp cluster with a housekeeper config, bookings, processes run as
//! throwaway users with a chosen uid ([`TempUser::with_uid`]).
//!
//! Every pass kills the processes of managed users without a booking, and
//! other test binaries create users of their own at the same time. So each
//! test picks its users' uids in a band of its own near the top of the
//! managed range (59000-59999) and sets `min_uid` to the bottom of that band;
//! only tests whose passes kill go highest, so no pass of one test can reach
//! another test's users.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jiff::Timestamp;
use kloigos_core::booking::{Booking, BookingId};
use kloigos_core::ids::Uid;
use kloigos_core::names::{NodeName, UserName};
use kloigos_core::policy::Policy;
use kloigos_core::state::{Request, Size};

use crate::cluster::TempCluster;
use crate::cmd::Run;
use crate::poll::wait_until;
use crate::sys::TempUser;

/// A cluster with one node and a housekeeper config pointing at temp
/// directories for its state copy, metrics and hooks.
pub struct HkNode {
    /// The cluster.
    pub cluster: TempCluster,
    /// The node (also the config's `node`).
    pub node: NodeName,
    /// The housekeeper config file.
    pub config: PathBuf,
    /// Directory of the local state copy and the housekeeper's record.
    pub state_dir: PathBuf,
    /// node_exporter textfile directory.
    pub metrics_dir: PathBuf,
    /// Hooks directory (with `release.d/`).
    pub hooks_dir: PathBuf,
}

impl HkNode {
    /// A node `name` with `cpus`, `unit_cpus` and `ports`, the policy
    /// given, and the `housekeeper` config section `hk` (merged over
    /// defaults that point into the temp dir and disable everything
    /// destructive: slices none, nft off, kill off).
    pub fn new(
        name: &str,
        policy: Policy,
        cpus: &str,
        unit_cpus: Option<u32>,
        ports: Option<&str>,
        hk: serde_json::Value,
    ) -> HkNode {
        let cluster = TempCluster::with_policy(policy);
        let node = cluster.add_node(name, cpus, unit_cpus, ports);
        let root = cluster.dir.path().to_path_buf();
        let state_dir = root.join("var-lib-kloigos");
        let metrics_dir = root.join("metrics");
        let hooks_dir = root.join("hooks");
        std::fs::create_dir_all(&metrics_dir).expect("metrics dir");
        std::fs::create_dir_all(hooks_dir.join("release.d")).expect("hooks dir");
        let me = HkNode {
            config: root.join("hk-config.json"),
            cluster,
            node,
            state_dir,
            metrics_dir,
            hooks_dir,
        };
        me.write_config(&me.config, hk);
        me
    }

    /// Writes a config for this node at `path` with housekeeper section `hk`.
    pub fn write_config(&self, path: &Path, hk: serde_json::Value) {
        let mut section = serde_json::json!({
            "slices": "none",
            "nft": false,
            "kill": false,
            "grace_s": 0,
            "state_copy": self.state_dir.join("state.json"),
            "metrics_dir": self.metrics_dir,
            "hooks_dir": self.hooks_dir,
        });
        if let (Some(base), Some(over)) = (section.as_object_mut(), hk.as_object()) {
            for (k, v) in over {
                base.insert(k.clone(), v.clone());
            }
        }
        let cfg = serde_json::json!({
            "shared": self.cluster.shared(),
            "node": self.node.as_str(),
            // No such account here: the housekeeper writes as root.
            "service_user": "kloigos-hk-none",
            "housekeeper": section,
        });
        std::fs::write(path, cfg.to_string()).expect("write housekeeper config");
    }

    /// Books `units` units for `user` from `start` for `secs` seconds.
    pub fn book(&self, user: &TempUser, units: u32, start: Timestamp, secs: i64) -> Booking {
        let name = UserName::new(&user.name).expect("user name");
        let req = Request {
            user: name.clone(),
            uid: Uid::new(user.uid).expect("a uid"),
            created_by: name,
            size: Size::Units(units),
            start,
            end: kloigos_core::when::plus_secs(start, secs),
            note: Default::default(),
            held_elsewhere: 0,
        };
        let now = Timestamp::now();
        self.cluster
            .store
            .update_node(&self.node, now, |st| {
                Ok((st.book(&req, &Policy::default(), now, &[])?, vec![]))
            })
            .expect("book")
    }

    /// Ends booking `id` now.
    pub fn release(&self, id: &BookingId) {
        let now = Timestamp::now();
        self.cluster
            .store
            .update_node(&self.node, now, |st| Ok((st.release(id, now)?, vec![])))
            .expect("release");
    }

    /// The housekeeper with this node's config and `args`.
    pub fn housekeeper(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crate::bin("kloigos-housekeeper"));
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    /// Runs one pass (`--once` plus `args`).
    pub fn pass(&self, args: &[&str]) -> Run {
        Run::of(self.housekeeper(&["--once"]).args(args))
    }

    /// Path of the node's facts.json.
    pub fn facts_path(&self) -> PathBuf {
        self.cluster.store.node_dir(&self.node).join("facts.json")
    }
}

/// Starts `argv` as `user` (setpriv: real, effective and saved uid and gid,
/// the user's groups), with output discarded.
pub fn spawn_as(user: &TempUser, argv: &[&str]) -> Child {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn().expect("spawn as user")
}

/// Live (non-zombie) processes whose real, effective or saved uid is `uid`.
pub fn live_processes(uid: u32) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| {
            let Ok(s) = std::fs::read_to_string(e.path().join("status")) else {
                return false;
            };
            let zombie = s
                .lines()
                .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains("X (dead)")));
            let mine = s.lines().find(|l| l.starts_with("Uid:")).is_some_and(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take(3)
                    .any(|u| u == uid.to_string())
            });
            mine && !zombie
        })
        .count()
}

/// Kills and reaps a child on drop, whatever happened to the test.
pub struct Reaped(pub Child);

impl Reaped {
    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to its end, with stdout and stderr captured in files (no pipe
/// to fill up), or kills it once `limit` has passed: a wide bound for a
/// process that must not hang. `Err` holds what it printed until then.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Run, String> {
    let out = tempfile::tempfile().expect("tempfile");
    let err = tempfile::tempfile().expect("tempfile");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let read = |mut f: &std::fs::File| {
        let mut s = String::new();
        let _ = f.seek(SeekFrom::Start(0));
        let _ = f.read_to_string(&mut s);
        s
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(read(&err));
    };
    Ok(Run {
        code: status.code().unwrap_or(-1),
        stdout: read(&out),
        stderr: read(&err),
    })
}

/// Whether process `pid` is gone (or a zombie): for checking that a
/// process group was killed.
pub fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => s
            .lines()
            .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains("X (dead)"))),
        Err(_) => true,
    }
}

/// A user's attack on the kill path (issue 15, item 1, as written there):
/// ignore SIGTERM, fork, and in a new session stop every other process of
/// the user, forever.
const STOPPER_C: &str = r#"
#include <signal.h>
#include <unistd.h>
int main(void) {
    signal(SIGTERM, SIG_IGN);
    if (fork()) return 0;
    setsid();
    for (;;) kill(-1, SIGSTOP);
}
"#;

/// Compiles the stopper into `dir` (made readable and searchable for the
/// user who runs it); returns its path.
pub fn build_stopper(dir: &Path) -> String {
    std::fs::write(dir.join("stopper.c"), STOPPER_C).expect("write stopper.c");
    let bin = dir.join("stopper");
    crate::cmd::must(
        "cc",
        &[
            "-O2",
            "-o",
            &bin.to_string_lossy(),
            &dir.join("stopper.c").to_string_lossy(),
        ],
    );
    crate::cmd::must("chmod", &["755", &dir.to_string_lossy()]);
    bin.to_string_lossy().into_owned()
}
