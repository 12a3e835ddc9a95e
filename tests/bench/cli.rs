//! Benchmark of the CLI: `kloigos info --json` over 1000 generated nodes,
//! and allocations per second on one contended node. Each is printed beside
//! a baseline from the same run: `cat` of every state file (goal: at most
//! 3x), and starting the same binary for `--version` with no I/O (goal: at
//! least 0.15x that rate, i.e. a booking costs under about seven starts).

use std::process::{Command, Stdio};
use std::time::Instant;

use jiff::Timestamp;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::names::{NodeName, UserName};
use kloigos_core::node::NodeSpec;
use kloigos_core::policy::Policy;
use kloigos_core::state::{NodeState, Request, Size};
use kloigos_core::store::to_json;
use kloigos_tests::bench::{median_ms, report, Goal};
use kloigos_tests::cluster::TempCluster;
use kloigos_tests::uid;

fn quiet(cmd: &mut Command) {
    let ok = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{cmd:?} failed");
}

fn info_over_many_nodes() {
    let c = TempCluster::new();
    let now = kloigos_core::when::whole_seconds(Timestamp::now());
    let policy = Policy::default();
    let user = UserName::new("bench").expect("name");
    let mut paths = Vec::new();
    for i in 0..1000 {
        let name = NodeName::new(&format!("n{i:04}")).expect("name");
        let mut spec = NodeSpec::new(name.clone(), CpuSet::parse("0-63").expect("cpus"));
        spec.unit_cpus = Some(16);
        let mut st = NodeState::new(spec.clone());
        c.store.add_node(&st, &user, now).expect("add node");
        for k in 0..3 {
            let req = Request {
                user: user.clone(),
                uid: uid(1000),
                created_by: user.clone(),
                size: Size::Units(1),
                start: now,
                end: now + jiff::SignedDuration::from_hours(1 + k),
                note: Default::default(),
                held_elsewhere: 0,
            };
            st.book(&req, &policy, now, &[]).expect("book");
        }
        std::fs::write(c.store.state_path(&name), to_json(&st)).expect("write state");
        paths.push(c.store.state_path(&name));
    }
    let info = median_ms(15, || quiet(c.kloigos().args(["info", "--json"])));
    let cat = median_ms(15, || quiet(Command::new("cat").args(&paths)));
    report(
        "info --json, 1000 nodes",
        info,
        "cat of 1000 state files",
        cat,
        "ms",
        Goal::AtMost(3.0),
    );
}

fn allocs_per_second() {
    // One user makes all 400 bookings.
    let c = TempCluster::hot("0-1023");
    let procs = 4;
    let each = 100;
    let t = Instant::now();
    let handles: Vec<_> = (0..procs)
        .map(|_| {
            let shared = c.shared().to_path_buf();
            let bin = kloigos_tests::bin("kloigos");
            std::thread::spawn(move || {
                for _ in 0..each {
                    quiet(
                        Command::new(&bin)
                            .arg("--shared")
                            .arg(&shared)
                            .args(["alloc", "-w", "hot", "-t", "1h"]),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("alloc thread");
    }
    let rate = (procs * each) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let handles: Vec<_> = (0..procs)
        .map(|_| {
            let bin = kloigos_tests::bin("kloigos");
            std::thread::spawn(move || {
                for _ in 0..each {
                    quiet(Command::new(&bin).arg("--version"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("start thread");
    }
    let starts = (procs * each) as f64 / t.elapsed().as_secs_f64();
    report(
        "allocs/s, 4 processes on one node",
        rate,
        "starts/s of `kloigos --version`",
        starts,
        "/s",
        Goal::AtLeast(0.15),
    );
}

fn main() {
    info_over_many_nodes();
    allocs_per_second();
}
