//! CLI tests: every command on a temporary cluster, JSON shapes, exit
//! codes 0/1/2/3 and refusal messages, a concurrency stress and a crash-safety run.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use kloigos_core::duration::Dur;
use kloigos_core::names::NodeName;
use kloigos_core::policy::Policy;
use kloigos_core::state::NodeState;
use kloigos_tests::cluster::TempCluster;
use kloigos_tests::cmd::Run;
use kloigos_tests::poll::wait_until;
use kloigos_tests::uid;
use serde_json::Value;

fn cluster_with_nodes() -> TempCluster {
    cluster_with_nodes_and(Policy::default())
}

/// A policy that takes bookings of a second (the default minimum is a minute).
fn short_bookings() -> Policy {
    Policy {
        min_duration: Dur::from_secs(1).unwrap(),
        ..Policy::default()
    }
}

fn cluster_with_nodes_and(policy: Policy) -> TempCluster {
    let c = TempCluster::with_policy(policy);
    c.add_node("node1", "0-63", Some(16), Some("20000-23999"));
    c.add_node("node2", "0-7", None, None);
    c
}

fn state(c: &TempCluster, node: &str) -> NodeState {
    c.store.node(&NodeName::new(node).unwrap()).unwrap()
}

#[test]
fn info_json_has_the_documented_shape() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1", "--units", "2", "-t", "1h"])
        .ok();
    let v = c.run(&["info", "--json"]).ok().json();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let n1 = &nodes[0];
    for key in [
        "name",
        "labels",
        "partitions",
        "cpus",
        "unit_cpus",
        "units_total",
        "units_free",
        "drained",
        "windows",
        "bookings",
        "facts",
    ] {
        assert!(n1.get(key).is_some(), "info --json node lacks {key}: {n1}");
    }
    assert_eq!(n1["name"], "node1");
    assert_eq!(n1["cpus"], "0-63");
    assert_eq!(n1["units_total"], 4);
    assert_eq!(n1["units_free"], 2);
    assert_eq!(n1["bookings"].as_array().unwrap().len(), 1);
    assert_eq!(nodes[1]["units_free"], 1);
}

#[test]
fn alloc_prints_the_booking_object() {
    let c = cluster_with_nodes();
    let b = c
        .run(&[
            "--json", "alloc", "-w", "node1", "--cpus", "20", "-t", "90m", "-m", "exp 4",
        ])
        .ok()
        .json();
    let keys: HashSet<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "id", "node", "user", "uid", "units", "cpus", "ports", "start", "end", "note",
    ] {
        assert!(keys.contains(k), "booking lacks {k}: {b}");
    }
    assert_eq!(b["id"], "node1:1");
    assert_eq!(b["units"], serde_json::json!([0, 1]));
    assert_eq!(b["cpus"], "0-31");
    assert_eq!(b["ports"], "20000-21999");
    assert_eq!(b["note"], "exp 4");
    let start: jiff::Timestamp = b["start"].as_str().unwrap().parse().unwrap();
    let end: jiff::Timestamp = b["end"].as_str().unwrap().parse().unwrap();
    assert_eq!(end.as_second() - start.as_second(), 5400);
    // A whole-node booking on a node without ports has "ports": null.
    let w = c
        .run(&["--json", "alloc", "-w", "node2", "-t", "600"])
        .ok()
        .json();
    assert_eq!(w["ports"], Value::Null);
    assert_eq!(w["cpus"], "0-7");
}

#[test]
fn placement_picks_best_fit_and_honours_labels() {
    let c = TempCluster::new();
    c.add_node("big", "0-63", Some(8), None);
    c.add_node("small", "0-15", Some(8), None);
    let gpu = c.add_node("gpu1", "0-31", Some(8), None);
    c.run(&["admin", "set-node", gpu.as_str(), "-l", "gpu"])
        .ok();
    // 8 CPUs: the smallest free run that holds one unit is on gpu1 or small (runs of 4 and 2): small.
    let b = c.run(&["--json", "alloc", "--cpus", "8"]).ok().json();
    assert_eq!(b["node"], "small");
    let g = c
        .run(&["--json", "alloc", "--units", "2", "-l", "gpu"])
        .ok()
        .json();
    assert_eq!(g["node"], "gpu1");
    c.run(&["alloc", "-l", "fpga"])
        .code(1)
        .err_has("no node carries label(s) fpga; labels in use: gpu");
}

#[test]
fn capacity_refusal_gives_the_earliest_time_and_at_books_it() {
    let c = cluster_with_nodes();
    let first = c
        .run(&["--json", "alloc", "-w", "node2", "-t", "1h"])
        .ok()
        .json();
    let r = c.run(&["alloc", "-w", "node2", "-t", "30m"]);
    r.code(1)
        .err_has("node2 has no 1 free unit(s) in a row")
        .err_has(&format!(
            "earliest start that fits is {}",
            first["end"].as_str().unwrap()
        ));
    let later = c
        .run(&["--json", "alloc", "-w", "node2", "-t", "30m", "--at", "now"])
        .ok()
        .json();
    assert_eq!(later["start"], first["end"]);
    // Without a node: placement says where and when.
    c.run(&["alloc", "--units", "5"])
        .code(1)
        .err_has("no node can hold that");
}

#[test]
fn wait_polls_until_a_slot_frees() {
    let c = cluster_with_nodes_and(short_bookings());
    c.run(&["alloc", "-w", "node2", "-t", "2s"]).ok();
    let b = c
        .run(&["--json", "alloc", "-w", "node2", "-t", "1m", "--wait=30s"])
        .ok()
        .json();
    assert_eq!(b["id"], "node2:2");
}

#[test]
fn refusals_name_the_rule() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1", "-t", "8d"])
        .code(1)
        .err_has("max_duration 1w");
    c.run(&["alloc", "-w", "node1", "--units", "5"])
        .code(1)
        .err_has("node1 has 4 unit(s) of 16 CPUs (64 CPUs); 5 unit(s) cannot fit");
    c.run(&["alloc", "-w", "nodeX"])
        .code(1)
        .err_has("no node 'nodeX' in this cluster (nodes: node1, node2)");
    c.run(&["admin", "drain", "node1", "-r", "new disks"]).ok();
    c.run(&["alloc", "-w", "node1"])
        .code(1)
        .err_has("node1 is drained (new disks)");
    c.run(&["admin", "resume", "node1"]).ok();
    c.run(&["alloc", "-w", "node1"]).ok();
    c.run(&[
        "admin",
        "set-node",
        "node2",
        "--window",
        "Mon-Fri 08:00-09:00",
        "--window",
        "Sat,Sun 08:00-09:00",
    ])
    .ok();
    c.run(&["alloc", "-w", "node2", "-t", "2h"])
        .code(1)
        .err_has(
        "node2 takes bookings only inside its windows (Mon-Fri 08:00-09:00; Sat,Sun 08:00-09:00",
    );
    c.run(&["admin", "policy", "max_active_per_user=1"]).ok();
    c.run(&["alloc", "-w", "node1"])
        .code(1)
        .err_has("max_active_per_user");
}

#[test]
fn usage_errors_exit_2_and_name_the_argument() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-t", "2x"])
        .code(2)
        .err_has("invalid duration '2x'")
        .err_has("2h30m");
    c.run(&["alloc", "--at", "tomorrow"])
        .code(2)
        .err_has("invalid time 'tomorrow'");
    c.run(&["alloc", "-w", "../etc"])
        .code(2)
        .err_has("invalid node name '../etc'");
    c.run(&["alloc", "--units", "2", "--whole"]).code(2);
    c.run(&["release"]).code(2).err_has("give booking ids");
    c.run(&["release", "node1"])
        .code(2)
        .err_has("invalid booking id 'node1'");
    c.run(&["frobnicate"]).code(2);
    c.run(&["admin", "policy", "colour=blue"])
        .code(2)
        .err_has("known fields");
    c.run(&[
        "admin",
        "add-node",
        "n9",
        "--cpus",
        "0-63",
        "--unit-cpus",
        "6",
    ])
    .code(2)
    .err_has("divisor of 64");
}

#[test]
fn release_by_id_node_and_all_and_kill_alias() {
    let c = cluster_with_nodes();
    for _ in 0..3 {
        c.run(&["alloc", "-w", "node1", "-t", "1h"]).ok();
    }
    c.run(&["alloc", "-w", "node2", "-t", "1h"]).ok();
    c.run(&["release", "node1:1"])
        .ok()
        .out_has("released node1:1");
    c.run(&["release", "node1:1"])
        .code(1)
        .err_has("already ended");
    c.run(&["kill", "node1:2"]).ok();
    c.run(&["release", "node1:99"])
        .code(1)
        .err_has("no booking node1:99");
    let v = c.run(&["--json", "release", "-w", "node1"]).ok().json();
    assert_eq!(v.as_array().unwrap().len(), 1);
    c.run(&["release", "-w", "node1"])
        .code(1)
        .err_has("holds no current or future booking on node1");
    let v = c.run(&["--json", "release", "--all"]).ok().json();
    assert_eq!(v[0]["id"], "node2:1");
    assert_eq!(
        c.run(&["--json", "list"]).ok().json(),
        serde_json::json!([])
    );
}

#[test]
fn extend_moves_the_end_or_says_how_far_it_can() {
    let c = cluster_with_nodes();
    let a = c
        .run(&["--json", "alloc", "-w", "node2", "-t", "1h"])
        .ok()
        .json();
    let b = c
        .run(&["--json", "alloc", "-w", "node2", "-t", "1h", "--at", "+3h"])
        .ok()
        .json();
    let e = c
        .run(&["--json", "extend", "node2:1", "-t", "+1h"])
        .ok()
        .json();
    let end = |v: &Value| {
        v["end"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    assert_eq!(end(&e).as_second() - end(&a).as_second(), 3600);
    c.run(&["extend", "node2:1", "-t", "+2h"])
        .code(1)
        .err_has(&format!(
            "node2:2 is booked by {} from {}",
            b["user"].as_str().unwrap(),
            b["start"].as_str().unwrap()
        ));
    c.run(&["extend", "node2:1", "--until", "+8d"])
        .code(1)
        .err_has("beyond max_duration");
    c.run(&["extend", "node2:1", "--until", b["start"].as_str().unwrap()])
        .ok();
    c.run(&["extend", "node2:1"]).code(2);
}

#[test]
fn list_and_history_with_summary() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1", "--units", "2", "-t", "2h"])
        .ok();
    c.run(&["alloc", "-w", "node2", "-t", "30m"]).ok();
    let mine = c.run(&["--json", "list"]).ok().json();
    assert_eq!(mine.as_array().unwrap().len(), 2);
    let all = c.run(&["--json", "list", "--all"]).ok().json();
    assert_eq!(all, mine);
    let none = c.run(&["--json", "list", "--user", "nobody"]).ok().json();
    assert_eq!(none, serde_json::json!([]));
    c.run(&["list"]).ok().out_has("node1:1").out_has("0-31");
    let s = c.run(&["--json", "history", "--summary"]).ok().json();
    // 32 CPUs x 2 h + 8 CPUs x 0.5 h = 68 CPU-hours.
    assert_eq!(s[0]["cpu_hours"], 68.0);
    assert_eq!(s[0]["bookings"], 2);
    let h = c.run(&["--json", "history", "-w", "node2"]).ok().json();
    assert_eq!(h.as_array().unwrap().len(), 1);
    c.run(&["history", "--since", "2999-01-01 00:00"])
        .ok()
        .out_has("no bookings");
}

#[test]
fn check_login_exit_codes() {
    let c = TempCluster::with_policy(kloigos_core::policy::Policy {
        min_uid: uid(1),
        ..Default::default()
    });
    c.add_node("node1", "0-3", None, None);
    c.run(&["alloc", "-w", "node1", "-u", "nobody"])
        .code(if kloigos_tests::is_root() { 0 } else { 1 });
    c.run(&["check-login", "daemon", "node1"]).code(1).out_has(
        "deny: daemon on node1: no booking for daemon on node1 — book with: kloigos alloc -w node1",
    );
    c.run(&["check-login", "root", "node1"])
        .ok()
        .out_has("allow: root on node1: root is never gated");
    c.run(&["check-login", "no-such-user-x", "node1"])
        .ok()
        .out_has("ignore");
    c.run(&["check-login", "daemon", "login1"])
        .ok()
        .out_has("('login1') is not a node of the cluster");
    if kloigos_tests::is_root() {
        let v = c
            .run(&["--json", "check-login", "nobody", "node1"])
            .ok()
            .json();
        // Booked or not, nobody (65534) is never gated.
        assert_eq!(v["decision"], "ignore");
        assert!(v["reason"].as_str().unwrap().contains("nobody"), "{v}");
    }
}

#[test]
fn admin_node_lifecycle() {
    let c = cluster_with_nodes();
    c.run(&["admin", "add-node", "node1", "--cpus", "0-3"])
        .code(1)
        .err_has("already exists");
    c.run(&["admin", "add-node", "node3"])
        .code(2)
        .err_has("needs --cpus");
    c.run(&[
        "admin",
        "add-node",
        "node3",
        "--cpus",
        "0-31",
        "--unit-cpus",
        "8",
        "--mem-per-unit",
        "16G",
        "-l",
        "bigmem",
    ])
    .ok();
    assert_eq!(state(&c, "node3").node.mem_per_unit, Some(16 << 30));
    c.run(&["alloc", "-w", "node3", "--units", "2"]).ok();
    c.run(&["admin", "set-node", "node3", "--unit-cpus", "4"])
        .code(1)
        .err_has("node3:1 would change CPUs or ports");
    c.run(&["admin", "set-node", "node3", "--cpus", "0-47"])
        .ok();
    assert_eq!(state(&c, "node3").node.units_total(), 6);
    c.run(&["admin", "del-node", "node3"])
        .code(1)
        .err_has("release them, or pass --force");
    c.run(&["admin", "del-node", "node3", "--force"])
        .ok()
        .out_has("history is kept");
    assert!(!c.store.has_node(&NodeName::new("node3").unwrap()));
    // Its bookings stay in the history.
    let h = c.run(&["--json", "history", "-w", "node3"]).ok().json();
    assert_eq!(h.as_array().unwrap().len(), 1);
    c.run(&["admin", "policy"])
        .ok()
        .out_has("max_duration = \"1w\"");
    c.run(&["admin", "policy", "max_duration=2d", "admins=root,alice"])
        .ok();
    let p = c.run(&["--json", "admin", "policy"]).ok().json();
    assert_eq!(p["max_duration"], "2d");
    c.run(&["admin", "init"])
        .code(1)
        .err_has("already holds a cluster");
}

#[test]
fn corrupt_files_are_named_and_nothing_else_is_touched() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node2"]).ok();
    let node2_before = c.state_bytes("node2");
    let p1 = c.store.state_path(&NodeName::new("node1").unwrap());
    std::fs::write(&p1, b"{\"version\": 1, \"seq\": 3, \"node\": ").unwrap();
    let r = c.run(&["info"]);
    r.code(3)
        .err_has("node1/state.json: is not valid JSON")
        .out_has("node2");
    c.run(&["alloc", "-w", "node1"])
        .code(3)
        .err_has("node1/state.json");
    // Placement goes on with the readable nodes, saying what it skipped.
    c.run(&["release", "--all"]).code(3);
    assert_eq!(
        c.state_bytes("node1"),
        b"{\"version\": 1, \"seq\": 3, \"node\": "
    );
    c.run(&["admin", "fsck"])
        .code(3)
        .out_has("node1/state.json: is not valid JSON");
    std::fs::write(&p1, b"{\"version\": 7}").unwrap();
    c.run(&["info", "node1"])
        .code(3)
        .err_has("format version 7, this kloigos reads version 1; upgrade kloigos");
    let _ = node2_before;
}

#[test]
fn fsck_repairs_torn_journal_lines_and_stray_tmp_files() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1"]).ok();
    let dir = c.store.node_dir(&NodeName::new("node1").unwrap());
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut j, b"{\"time\": \"2026-").unwrap();
    std::fs::write(dir.join("state.json.tmp.deadhost.4242"), b"partial").unwrap();
    std::fs::write(dir.join("stray.txt"), b"?").unwrap();
    let r = c.run(&["admin", "fsck"]);
    r.code(3)
        .out_has("not valid events")
        .out_has("stray tmp file")
        .out_has("orphan: not a kloigos file");
    c.run(&["admin", "fsck", "--repair"])
        .code(3)
        .out_has("repaired");
    std::fs::remove_file(dir.join("stray.txt")).unwrap();
    c.run(&["admin", "fsck"]).ok().out_has("fsck: clean");
    assert!(dir.join("journal.jsonl.bad").exists());
    c.run(&["history"]).ok().out_has("node1:1");
}

#[test]
fn storage_errors_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let r = Run::of(
        Command::new(kloigos_tests::bin("kloigos"))
            .args(["--shared"])
            .arg(dir.path().join("nothing"))
            .arg("info"),
    );
    r.code(3)
        .err_has("cluster.json: not found: the shared directory is not mounted or not initialised");
}

#[test]
fn untrusted_state_files_are_refused() {
    let c = cluster_with_nodes();
    let p = c.store.state_path(&NodeName::new("node2").unwrap());
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&p).unwrap().permissions(),
        0o666,
    );
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    c.run(&["alloc", "-w", "node2"])
        .code(3)
        .err_has("lets others write it; refusing to trust it");
}

#[test]
fn version_names_a_commit() {
    let c = TempCluster::new();
    let r = c.run(&["--version"]);
    r.ok();
    assert!(r.stdout.starts_with("kloigos 0.1.0 ("), "{}", r.stdout);
}

/// A stand-in for ssh that records its arguments (the real ssh is exercised
/// by the PAM and end-to-end tests).
fn fake_ssh(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("fake-ssh");
    let log = dir.join("ssh.log");
    std::fs::write(
        &p,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 7\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

#[test]
fn run_books_runs_and_releases_and_ssh_checks_first() {
    let c = cluster_with_nodes();
    let ssh = fake_ssh(c.dir.path());
    let ssh_s = ssh.to_str().unwrap();
    let r = c.run(&[
        "run", "--ssh", ssh_s, "-w", "node2", "-t", "10m", "--", "nproc",
    ]);
    // The remote command's exit code comes back.
    r.code(7).err_has("booked node2:1");
    let log = std::fs::read_to_string(c.dir.path().join("ssh.log")).unwrap();
    assert_eq!(log.trim(), "node2 -- nproc");
    // Released at the end.
    assert_eq!(
        c.run(&["--json", "list"]).ok().json(),
        serde_json::json!([])
    );
    // ssh without a booking: refused with the reason before any ssh runs.
    if !kloigos_tests::is_root() {
        c.run(&["ssh", "--ssh", ssh_s, "node2"])
            .code(1)
            .err_has("no booking");
    }
    c.run(&["alloc", "-w", "node1"]).ok();
    c.run(&["ssh", "--ssh", ssh_s, "node1:1", "--", "hostname"])
        .code(7);
    let log = std::fs::read_to_string(c.dir.path().join("ssh.log")).unwrap();
    assert!(log.ends_with("node1 -- hostname\n"), "{log}");
    // An active booking on -w NODE is reused, and kept.
    c.run(&["run", "--ssh", ssh_s, "-w", "node1", "--", "true"])
        .code(7)
        .err_has("using your booking node1:1");
    assert_eq!(
        c.run(&["--json", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn demo_runs_start_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("demo");
    let r = Run::of(
        Command::new(kloigos_tests::bin("kloigos"))
            .arg("demo")
            .arg(&target),
    );
    r.ok()
        .out_has("allow: ")
        .out_has("deny: ")
        .out_has("Explore further");
    // A second run rebuilds the demo; a foreign directory is refused.
    Run::of(
        Command::new(kloigos_tests::bin("kloigos"))
            .arg("demo")
            .arg(&target),
    )
    .ok();
    std::fs::write(dir.path().join("other.txt"), b"x").expect("write other.txt");
    Run::of(
        Command::new(kloigos_tests::bin("kloigos"))
            .arg("demo")
            .arg(dir.path()),
    )
    .code(2)
    .err_has("not a kloigos demo");
}

/// Many processes booking one 64-unit node at once: exactly the capacity is
/// granted, no two bookings overlap, every file stays valid and the journal
/// agrees with the state.
#[test]
fn concurrent_allocs_grant_exactly_the_capacity() {
    // One user takes every unit.
    let c = TempCluster::hot("0-63");
    let procs = 8;
    let attempts = 40;
    let shared = c.shared().to_path_buf();
    let bin = kloigos_tests::bin("kloigos");
    let handles: Vec<_> = (0..procs)
        .map(|_| {
            let shared = shared.clone();
            let bin = bin.clone();
            std::thread::spawn(move || {
                let mut granted = 0;
                let mut refused = 0;
                for _ in 0..attempts {
                    let r = Run::of(
                        Command::new(&bin)
                            .arg("--shared")
                            .arg(&shared)
                            .args(["alloc", "-w", "hot", "-t", "1h"]),
                    );
                    match r.code {
                        0 => granted += 1,
                        // Full, or busy past the lock deadline: both are clean refusals.
                        1 | 3 => refused += 1,
                        other => panic!("unexpected exit {other}: {}", r.stderr),
                    }
                }
                (granted, refused)
            })
        })
        .collect();
    let (granted, refused) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(granted + refused, procs * attempts);
    assert_eq!(granted, 64, "granted {granted} of 64 units");
    let st = state(&c, "hot");
    assert_eq!(st.bookings.len(), 64);
    assert!(st.problems().is_empty(), "{:?}", st.problems());
    let units: HashSet<u32> = st.bookings.iter().map(|b| b.units[0]).collect();
    assert_eq!(units.len(), 64);
    let (events, bad) = c.store.journal(&NodeName::new("hot").unwrap()).unwrap();
    assert!(bad.is_empty());
    let booked: HashSet<String> = events
        .iter()
        .filter(|e| e.action == kloigos_core::journal::Action::Book)
        .map(|e| e.booking.as_ref().unwrap().id.to_string())
        .collect();
    let in_state: HashSet<String> = st.bookings.iter().map(|b| b.id.to_string()).collect();
    assert_eq!(booked, in_state);
}

/// Writers SIGKILLed at random points: state.json always parses, the lock
/// is never left held, the next writer proceeds.
#[test]
fn killed_writers_leave_a_valid_state() {
    let c = TempCluster::with_policy(Policy {
        max_bookings_per_user_node: 0,
        ..Policy::default()
    });
    c.add_node("n", "0-63", Some(1), None);
    let bin = kloigos_tests::bin("kloigos");
    let node = NodeName::new("n").unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..60 {
        let mut kids: Vec<_> = (0..3)
            .map(|i| {
                let mut cmd = Command::new(&bin);
                cmd.arg("--shared")
                    .arg(c.shared())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if (round + i) % 4 == 0 {
                    cmd.args(["release", "--all"]);
                } else {
                    cmd.args(["alloc", "-w", "n", "-t", "1h"]);
                }
                cmd.spawn().unwrap()
            })
            .collect();
        // xorshift: a kill delay between 0 and ~4 ms, different every round.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 4000));
        let victim = (seed % 3) as usize;
        let _ = kids[victim].kill();
        for k in &mut kids {
            let _ = k.wait();
        }
        let st = c
            .store
            .node(&node)
            .unwrap_or_else(|e| panic!("round {round}: state unreadable: {e}"));
        assert!(
            st.problems().is_empty(),
            "round {round}: {:?}",
            st.problems()
        );
        // The lock is free again: a fresh writer gets it at once.
        let mut quick = c.store.clone();
        quick.lock_wait = Duration::from_millis(200);
        drop(
            quick
                .lock(&node)
                .unwrap_or_else(|e| panic!("round {round}: lock left held: {e}")),
        );
    }
    c.run(&["alloc", "-w", "n"]).ok();
    let dir = c.store.node_dir(&node);
    assert!(wait_until(Duration::from_secs(1), || true));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| kloigos_core::store::is_tmp(&e.file_name()))
        .collect();
    assert!(
        leftovers.is_empty(),
        "stray tmp files survived the next writer: {leftovers:?}"
    );
}

#[test]
fn past_start_is_refused_with_what_would_work() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1", "--at", "2020-01-01T00:00:00Z"])
        .code(1)
        .err_has("is in the past; omit --at to start now");
}

/// Colors only on a terminal, and never with NO_COLOR. `script` gives the
/// command a pseudo-terminal (it starts it through `sh -c`; a test fixture).
#[test]
fn colors_only_on_a_terminal_and_never_with_no_color() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node2"]).ok();
    let cmd = format!(
        "{} --shared {} info",
        kloigos_tests::bin("kloigos").display(),
        c.shared().display()
    );
    let tty = Run::of(
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env_remove("NO_COLOR"),
    );
    tty.ok();
    assert!(
        tty.stdout.contains("\x1b[31mfull"),
        "no color on a terminal:\n{}",
        tty.stdout
    );
    let no_color = Run::of(
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("NO_COLOR", "1"),
    );
    no_color.ok();
    assert!(
        no_color.stdout.contains("full") && !no_color.stdout.contains('\x1b'),
        "{}",
        no_color.stdout
    );
    // Not a terminal: plain, whatever NO_COLOR says.
    let piped = Run::of(
        Command::new(kloigos_tests::bin("kloigos"))
            .arg("--shared")
            .arg(c.shared())
            .arg("info")
            .env_remove("NO_COLOR"),
    );
    assert!(!piped.ok().stdout.contains('\x1b'));
}

fn node_dir(c: &TempCluster, node: &str) -> std::path::PathBuf {
    c.store.node_dir(&NodeName::new(node).unwrap())
}

/// Issue 15 item 2: a loop of 1-second future bookings with long notes.
/// Each is refused (min_duration, note size), and one user stops at the
/// per-node cap even with bookings in the future only.
#[test]
fn a_flood_of_short_future_bookings_with_big_notes_is_refused() {
    let c = cluster_with_nodes();
    // The audit's notes were 130 KB; one argument holds at most 128 KiB.
    let big = "x".repeat(100 * 1024);
    c.run(&["alloc", "-w", "node1", "--at", "+1h", "-t", "1", "-m", "hi"])
        .code(1)
        .err_has("shorter than the cluster's min_duration 1m");
    c.run(&[
        "alloc", "-w", "node1", "--at", "+1h", "-t", "1m", "-m", &big,
    ])
    .code(2)
    .err_has("a note holds at most 256 bytes");
    let note = "n".repeat(256);
    for i in 0..16 {
        let at = format!("+{}h", i + 1);
        c.run(&["alloc", "-w", "node1", "--at", &at, "-t", "1m", "-m", &note])
            .ok();
    }
    c.run(&["alloc", "-w", "node1", "--at", "+20h", "-t", "1m"])
        .code(1)
        .err_has("max_bookings_per_user_node");
    // Nothing the refusals did reached the files.
    let st = state(&c, "node1");
    assert_eq!(st.bookings.len(), 16);
    let (events, bad) = c.store.journal(&NodeName::new("node1").unwrap()).unwrap();
    assert!(bad.is_empty());
    assert_eq!(events.len(), 17, "add-node and 16 bookings");
    assert!(
        c.state_bytes("node1").len() < 16 * 1024,
        "state.json grew to {}",
        c.state_bytes("node1").len()
    );
}

/// Issue 15 item 2: a state file past 16 MiB is refused by name, by the
/// CLI and by the gate's `check-login`, instead of being parsed.
#[test]
fn a_state_file_past_the_size_bound_is_refused_by_name() {
    let c = cluster_with_nodes();
    let path = c.store.state_path(&NodeName::new("node1").unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(kloigos_core::store::MAX_FILE + 1).unwrap();
    drop(f);
    c.run(&["info", "node1"])
        .code(3)
        .err_has("node1/state.json: is 16777217 bytes, more than the 16 MiB kloigos reads");
    c.run(&["alloc", "-w", "node1"]).code(3).err_has("16 MiB");
    // A journal past the bound is named and skipped; the others still count.
    c.run(&["alloc", "-w", "node2"]).ok();
    let journal = node_dir(&c, "node1").join("journal.jsonl");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.set_len(kloigos_core::store::MAX_FILE + 1).unwrap();
    drop(f);
    c.run(&["history"])
        .code(3)
        .err_has("node1/journal.jsonl: is 16777217 bytes")
        .out_has("node2:1");
    // nobody (uid 65534) is gated: the decision cannot use the state.
    let r = c.run(&["check-login", "nobody", "node1"]);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("16 MiB"),
        "{r:?}"
    );
}

/// The attack note of issue 15 item 4.
const ATTACK: &str = "ok\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nvm:99     secalice   \u{9b}31m\u{202e}";

fn assert_inert(what: &str, text: &str) {
    for bad in ['\u{1b}', '\r', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(!text.contains(bad), "{what} printed {bad:?} raw:\n{text:?}");
    }
    assert!(
        text.lines().all(|l| !l.trim_start().starts_with("vm:99")),
        "{what} printed a forged row:\n{text}"
    );
}

/// Issue 15 item 4: terminal escapes in notes are refused at input, and
/// one planted in state.json and the journal (an older version, a hand
/// edit) prints inert in info, list, history and their --json.
#[test]
fn escape_sequences_in_notes_are_refused_and_never_printed_raw() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1", "-m", ATTACK])
        .code(2)
        .err_has("no control characters");
    assert_inert(
        "the refusal",
        &c.run(&["alloc", "-w", "node1", "-m", ATTACK]).stderr,
    );
    c.run(&["alloc", "-w", "node1", "-l", "gpu\u{1b}[2J"])
        .code(2);
    c.run(&["alloc", "-w", "node1", "-m", "planted here"]).ok();
    let escaped = serde_json::to_string(ATTACK).unwrap();
    let escaped = &escaped[1..escaped.len() - 1];
    for file in ["state.json", "journal.jsonl"] {
        let p = node_dir(&c, "node1").join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("planted here"));
        std::fs::write(&p, text.replace("planted here", escaped)).unwrap();
    }
    assert_eq!(state(&c, "node1").bookings[0].note.as_str(), ATTACK);
    for args in [
        &["info"][..],
        &["list"],
        &["list", "--all"],
        &["history"],
        &["admin", "fsck"],
    ] {
        let r = c.run(args);
        assert_inert(&format!("{args:?}"), &r.stdout);
        assert_inert(&format!("{args:?}"), &r.stderr);
        let mut json = vec!["--json"];
        json.extend(args);
        let r = c.run(&json);
        assert_inert(&format!("{json:?}"), &r.stdout);
        if args[0] != "admin" && args[0] != "info" {
            // The JSON still carries the note, escaped, as it is.
            let v = r.json();
            assert_eq!(v[0]["note"], ATTACK, "{json:?}");
        }
    }
    c.run(&["list"]).ok().out_has("\\u{1b}]0;pwned");
    // A user name given to check-login is text from outside too.
    for json in [false, true] {
        let mut args = vec!["check-login", ATTACK, "node1"];
        if json {
            args.insert(0, "--json");
        }
        let r = c.run(&args);
        assert_inert("check-login", &r.stdout);
        assert_inert("check-login", &r.stderr);
    }
}

/// Issue 15 item 3: under a finite RLIMIT_FSIZE just above the journal's
/// size, alloc is refused before it writes anything, naming the limit.
#[test]
fn a_file_size_limit_is_refused_before_anything_is_written() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1"]).ok();
    let dir = node_dir(&c, "node1");
    let journal = std::fs::read(dir.join("journal.jsonl")).unwrap();
    let state_before = c.state_bytes("node1");
    let limit = format!("--fsize={}", journal.len() + 30);
    let r = Run::of(
        Command::new("prlimit")
            .arg(&limit)
            .arg(kloigos_tests::bin("kloigos"))
            .arg("--shared")
            .arg(c.shared())
            .args(["alloc", "-w", "node1", "-m", "under a limit"]),
    );
    r.code(1)
        .err_has("RLIMIT_FSIZE")
        .err_has("ulimit -f unlimited");
    assert_eq!(c.state_bytes("node1"), state_before);
    assert_eq!(std::fs::read(dir.join("journal.jsonl")).unwrap(), journal);
    // A soft limit under an unlimited hard one is lifted, and the booking made.
    let soft = format!("--fsize={}:unlimited", journal.len() + 30);
    let r = Run::of(
        Command::new("prlimit")
            .arg(&soft)
            .arg(kloigos_tests::bin("kloigos"))
            .arg("--shared")
            .arg(c.shared())
            .args(["alloc", "-w", "node1", "-m", "soft limit lifted"]),
    );
    r.ok();
    let (events, bad) = c.store.journal(&NodeName::new("node1").unwrap()).unwrap();
    assert!(bad.is_empty());
    assert_eq!(events.len(), 3);
    assert_eq!(state(&c, "node1").bookings.len(), 2);
}

/// Issue 15 item 3: a torn fragment left by a writer cut short is closed
/// off by the next writer: its event parses, and fsck --repair sets aside
/// the fragment alone.
#[test]
fn the_event_after_a_torn_fragment_survives_and_fsck_sets_aside_only_the_fragment() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1"]).ok();
    let dir = node_dir(&c, "node1");
    let fragment = b"{\"time\":\"2026-12-07T10:00:00Z\",\"by\"";
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut j, fragment).unwrap();
    drop(j);
    c.run(&["alloc", "-w", "node1", "-m", "after the fragment"])
        .ok();
    let (events, bad) = c.store.journal(&NodeName::new("node1").unwrap()).unwrap();
    assert_eq!(bad, vec![3]);
    assert_eq!(
        events
            .last()
            .unwrap()
            .booking
            .as_ref()
            .unwrap()
            .note
            .as_str(),
        "after the fragment"
    );
    c.run(&["admin", "fsck", "--repair"])
        .ok()
        .out_has("repaired");
    let set_aside = std::fs::read(dir.join("journal.jsonl.bad")).unwrap();
    assert_eq!(set_aside, [&fragment[..], b"\n"].concat());
    let (events, bad) = c.store.journal(&NodeName::new("node1").unwrap()).unwrap();
    assert!(bad.is_empty());
    assert_eq!(events.len(), 3);
    c.run(&["admin", "fsck"]).ok().out_has("fsck: clean");
}

/// Issue 15 item 8: releasing nothing writes nothing.
#[test]
fn releasing_nothing_rewrites_nothing() {
    use std::os::unix::fs::MetadataExt;
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1"]).ok();
    c.run(&["release", "node1:1"]).ok();
    let paths: Vec<_> = ["node1", "node2"]
        .iter()
        .flat_map(|n| {
            let d = node_dir(&c, n);
            [d.join("state.json"), d.join("journal.jsonl")]
        })
        .collect();
    let stamp = |p: &std::path::Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec(), m.len())
    };
    let before: Vec<_> = paths.iter().map(|p| stamp(p)).collect();
    c.run(&["release", "-w", "node1"])
        .code(1)
        .err_has("holds no current or future booking on node1");
    c.run(&["release", "--all"])
        .code(1)
        .err_has("holds no current or future booking");
    let after: Vec<_> = paths.iter().map(|p| stamp(p)).collect();
    assert_eq!(before, after);
}

/// Issue 15 item 8: `alloc -t 1` that waits for the node lock takes its
/// start once it holds the lock, so it is not refused as in the past.
#[test]
fn a_short_booking_that_waits_for_the_lock_starts_when_it_gets_it() {
    let c = cluster_with_nodes_and(short_bookings());
    let held = c.store.lock(&NodeName::new("node2").unwrap()).unwrap();
    let child = c
        .kloigos()
        .args(["--json", "alloc", "-w", "node2", "-t", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The alloc is waiting for the lock (it polls for up to 10 s): let a
    // span of 1 s pass, and more, before it gets it.
    std::thread::sleep(Duration::from_millis(2500));
    drop(held);
    let out = child.wait_with_output().unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let b = r.ok().json();
    let end: jiff::Timestamp = b["end"].as_str().unwrap().parse().unwrap();
    let start: jiff::Timestamp = b["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(end.as_second() - start.as_second(), 1);
}

/// The mode bits of `path` itself (a link not followed).
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `admin fsck --repair`, `info NODE`, `alloc -w NODE` and `admin
/// drain NODE`: each must exit 3 naming `said` (fsck in its report, the
/// others in their error).
fn every_command_refuses(c: &TempCluster, node: &str, said: &str) {
    c.run(&["admin", "fsck", "--repair"]).code(3).out_has(said);
    for args in [
        &["info", node][..],
        &["alloc", "-w", node],
        &["admin", "drain", node],
    ] {
        c.run(args).code(3).err_has(said);
    }
}

/// A node directory swapped for a link to a copy of it, and a state.json
/// swapped for a link: reads and writes refuse them naming the file, and
/// `fsck --repair` names them and changes nothing through them (no mode
/// narrowed, no tmp file swept in the link's target).
#[test]
fn reads_writes_and_fsck_repair_never_go_through_a_linked_node_directory_or_state_file() {
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1"]).ok();
    let dir = node_dir(&c, "node1");
    let elsewhere = c.dir.path().join("elsewhere");
    std::fs::rename(&dir, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    // What `--repair` would narrow and sweep, were the link followed.
    set_mode(&elsewhere.join("journal.jsonl"), 0o664);
    let stray = elsewhere.join("state.json.tmp.deadhost.4242");
    std::fs::write(&stray, b"partial").unwrap();
    let state = std::fs::read(elsewhere.join("state.json")).unwrap();
    every_command_refuses(
        &c,
        "node1",
        &format!("{}: is a symbolic link", dir.display()),
    );
    assert_eq!(mode_of(&elsewhere.join("journal.jsonl")), 0o664);
    assert!(stray.exists());
    assert_eq!(std::fs::read(elsewhere.join("state.json")).unwrap(), state);

    let path = c.store.state_path(&NodeName::new("node2").unwrap());
    let target = c.dir.path().join("state-copy.json");
    std::fs::rename(&path, &target).unwrap();
    set_mode(&target, 0o666);
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let state = std::fs::read(&target).unwrap();
    every_command_refuses(
        &c,
        "node2",
        &format!("{}: is a symbolic link", path.display()),
    );
    assert_eq!(mode_of(&target), 0o666);
    assert_eq!(std::fs::read(&target).unwrap(), state);
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A node directory owned by another user: reads and writes refuse it
/// naming it, and `fsck --repair` names it and repairs nothing in it.
#[test]
fn reads_writes_and_fsck_repair_refuse_a_node_directory_of_another_user() {
    kloigos_tests::require_root!();
    let c = cluster_with_nodes();
    c.run(&["alloc", "-w", "node1"]).ok();
    let dir = node_dir(&c, "node1");
    // What `--repair` would narrow, were the directory walked.
    let journal = dir.join("journal.jsonl");
    set_mode(&journal, 0o664);
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(4243)), None).unwrap();
    let state = std::fs::read(dir.join("state.json")).unwrap();
    every_command_refuses(
        &c,
        "node1",
        &format!("{}: owned by uid 4243", dir.display()),
    );
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), state);
    assert_eq!(mode_of(&journal), 0o664);
}
