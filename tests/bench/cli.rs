//! Benchmark of the CLI: `kloigos info --json` over 1000 generated nodes,
//! and allocations per second on one contended node. Each is printed beside
//! a baseline from the same run: `cat` of every state file (goal: at most
//! 3x), and starting the same binary for `--version` with no I/O (goal: at
//! least 0.15x that rate, i.e. a booking costs under about seven starts).
//! Then lock waiting: writers queued on one node's lock, the blocking
//! `flock` kloigos uses against the 2 ms poll it replaced (lock calls per
//! booking and the slowest wait; goal: at most half the calls, and a
//! slowest wait no worse than the poll's).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::names::{NodeName, UserName};
use kloigos_core::node::NodeSpec;
use kloigos_core::policy::Policy;
use kloigos_core::state::{NodeState, Request, Size};
use kloigos_core::store::to_json;
use kloigos_tests::bench::{median_ms, report, Goal};
use kloigos_tests::cluster::TempCluster;

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
                uid: 1000,
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
    // One user makes all 400 bookings: no per-node cap here.
    let c = TempCluster::with_policy(Policy {
        max_bookings_per_user_node: 0,
        ..Policy::default()
    });
    c.add_node("hot", "0-1023", Some(1), None);
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

/// The lock wait kloigos had before: a `try_lock` every 2 ms, each call
/// counted in `calls`.
fn poll_lock(path: &std::path::Path, calls: &AtomicU64) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open lock");
    loop {
        calls.fetch_add(1, Ordering::Relaxed);
        match f.try_lock() {
            Ok(()) => return f,
            Err(std::fs::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(2)),
            Err(std::fs::TryLockError::Error(e)) => panic!("flock: {e}"),
        }
    }
}

/// `writers` threads each make `each` writes of one node's state under its
/// lock (read it, write it back atomically), taking the lock with
/// `blocking` (kloigos' wait) or the old 2 ms poll. Returns lock calls per
/// write and the slowest wait for the lock, in ms.
fn queued_writes(blocking: bool, writers: usize, each: usize) -> (f64, f64) {
    let c = TempCluster::new();
    let node = c.add_node("hot", "0-7", None, None);
    let dir = c.store.node_dir(&node);
    let polls = Arc::new(AtomicU64::new(0));
    let calls_before = kloigos_core::lockwait::attempts();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (store, node, dir, polls) =
                (c.store.clone(), node.clone(), dir.clone(), polls.clone());
            std::thread::spawn(move || {
                let lock = dir.join(kloigos_core::store::LOCK_FILE);
                let state = dir.join(kloigos_core::store::STATE_FILE);
                let mut slowest = Duration::ZERO;
                for _ in 0..each {
                    let t = Instant::now();
                    let held: Box<dyn std::any::Any> = if blocking {
                        Box::new(
                            kloigos_core::store::NodeLock::acquire(
                                &lock,
                                &node,
                                Duration::from_secs(60),
                            )
                            .expect("lock"),
                        )
                    } else {
                        Box::new(poll_lock(&lock, &polls))
                    };
                    slowest = slowest.max(t.elapsed());
                    let bytes = kloigos_core::store::read_trusted(&state, store.trust())
                        .expect("read state");
                    kloigos_core::store::write_atomic(
                        &dir,
                        kloigos_core::store::STATE_FILE,
                        &bytes,
                    )
                    .expect("write state");
                    drop(held);
                }
                slowest
            })
        })
        .collect();
    let slowest = handles
        .into_iter()
        .map(|h| h.join().expect("writer thread"))
        .max()
        .unwrap_or_default();
    let calls = if blocking {
        kloigos_core::lockwait::attempts() - calls_before
    } else {
        polls.load(Ordering::Relaxed)
    };
    (
        calls as f64 / (writers * each) as f64,
        slowest.as_secs_f64() * 1000.0,
    )
}

fn lock_waits() {
    let (writers, each) = (8, 40);
    let (poll_calls, poll_slowest) = queued_writes(false, writers, each);
    let (calls, slowest) = queued_writes(true, writers, each);
    report(
        &format!("lock calls per write, {writers} writers queued on one node"),
        calls,
        "the 2 ms poll's",
        poll_calls,
        "calls",
        Goal::AtMost(0.5),
    );
    report(
        &format!("slowest lock wait, {writers} writers x {each} writes"),
        slowest,
        "the 2 ms poll's",
        poll_slowest,
        "ms",
        Goal::AtMost(1.0),
    );
}

/// What the read-back after each write costs: one fresh read of the
/// state file, against the whole locked update it ends (goal: at most 0.2x).
fn read_back_cost() {
    let c = TempCluster::new();
    let node = c.add_node("hot", "0-7", None, None);
    let path = c.store.state_path(&node);
    let now = Timestamp::now();
    let mut seq = 0u64;
    let update = median_ms(200, || {
        seq += 1;
        c.store
            .update_node(&node, now, |st| {
                st.seq = seq;
                Ok(((), vec![]))
            })
            .expect("update");
    });
    let bytes = std::fs::read(&path).expect("read state");
    let check = median_ms(200, || {
        kloigos_core::commit::check_written(&path, &bytes, c.store.trust()).expect("read back")
    });
    report(
        "read-back of state.json after a write",
        check * 1000.0,
        "the whole locked update",
        update * 1000.0,
        "us",
        Goal::AtMost(0.2),
    );
}

fn main() {
    info_over_many_nodes();
    allocs_per_second();
    lock_waits();
    read_back_cost();
}
