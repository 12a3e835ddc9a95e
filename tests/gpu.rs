//! GPU booking: nodes whose units hold GPUs, `alloc --gpus`, placement
//! near the GPUs, the JSON shapes and GPU-hours, and the refusals.

use jiff::Timestamp;
use kloigos_core::facts::Facts;
use kloigos_core::names::NodeName;
use kloigos_tests::cluster::TempCluster;
use serde_json::{json, Value};

/// A cluster with `plain` (8 CPUs, one unit, no GPUs) and `gpu4`
/// (64 CPUs in 4 units, one GPU each).
fn cluster() -> TempCluster {
    let c = TempCluster::new();
    c.add_node("plain", "0-7", None, None);
    c.run(&[
        "admin",
        "add-node",
        "gpu4",
        "--cpus",
        "0-63",
        "--unit-cpus",
        "16",
        "--gpus",
        "0-3",
    ])
    .ok()
    .out_has("GPUs 0-3 (1 per unit)");
    c
}

/// Writes `node`'s facts: two NUMA nodes of 32 CPUs, and GPUs `(index, numa)`.
fn facts(c: &TempCluster, node: &str, gpus: &[(u32, u32)]) {
    let list: Vec<Value> = gpus
        .iter()
        .map(|(i, numa)| {
            json!({"index": i, "minor": i, "uuid": format!("GPU-{i}-{node}"), "name": "Tesla T4",
                   "bus_id": format!("0000:{:02x}:00.0", i + 1), "numa_node": numa,
                   "utilization": 0, "memory_used": 0, "memory_total": 16u64 << 30})
        })
        .collect();
    let f: Facts = serde_json::from_value(json!({
        "version": 1, "node": node, "heartbeat": Timestamp::now().to_string(),
        "numa": [{"id": 0, "cpus": "0-31"}, {"id": 1, "cpus": "32-63"}],
        "gpus": list,
    }))
    .unwrap();
    c.store.write_facts(&f).unwrap();
}

#[test]
fn gpus_split_evenly_over_units_and_an_uneven_split_is_refused() {
    let c = cluster();
    let st = c.store.node(&NodeName::new("gpu4").unwrap()).unwrap();
    assert_eq!(st.node.gpus_per_unit(), 1);
    // 4 GPUs over 8 units of 8 CPUs: some units would hold none.
    c.run(&[
        "admin",
        "add-node",
        "odd",
        "--cpus",
        "0-63",
        "--unit-cpus",
        "8",
        "--gpus",
        "0-3",
    ])
    .code(2)
    .err_has("4 GPU(s) cannot split evenly over 8 unit(s)")
    .err_has("--unit-cpus 16 puts one GPU in each");
    assert!(!c.store.has_node(&NodeName::new("odd").unwrap()));
    // Without --unit-cpus the node is one unit holding every GPU.
    c.run(&[
        "admin", "add-node", "whole", "--cpus", "0-15", "--gpus", "0-3",
    ])
    .ok()
    .out_has("GPUs 0-3 (4 per unit)");
    let b = c
        .run(&["--json", "alloc", "-w", "whole", "--gpus", "1"])
        .ok()
        .json();
    assert_eq!(b["gpus"], "0-3");
    // set-node takes the flag, and refuses a split that moves a booking's GPUs.
    c.run(&["admin", "set-node", "gpu4", "--gpus", "0-7"])
        .ok()
        .out_has("GPUs 0-7 (2 per unit)");
    c.run(&["admin", "set-node", "gpu4", "--gpus", "0-6"])
        .code(2)
        .err_has("cannot split evenly");
    c.run(&["alloc", "-w", "gpu4", "--gpus", "2"]).ok();
    c.run(&["admin", "set-node", "gpu4", "--gpus", "0-3"])
        .code(1)
        .err_has("would change CPUs, ports or GPUs");
}

#[test]
fn alloc_by_gpus_books_the_smallest_run_on_a_node_with_gpus() {
    let c = cluster();
    let plain_before = c.state_bytes("plain");
    let b = c.run(&["--json", "alloc", "--gpus", "2"]).ok().json();
    assert_eq!(b["node"], "gpu4");
    assert_eq!(b["units"], json!([0, 1]));
    assert_eq!(b["gpus"], "0-1");
    assert_eq!(b["cpus"], "0-31");
    // No facts: no UUIDs invented.
    assert!(b.get("gpu_uuids").is_none(), "{b}");
    let c1 = c.run(&["--json", "alloc", "--gpus", "1"]).ok().json();
    assert_eq!(c1["gpus"], "2");
    // A booking on a node without GPUs says so with null, and its file is
    // written as before (no "gpus" key older versions would refuse).
    let p = c.run(&["--json", "alloc", "-w", "plain"]).ok().json();
    assert_eq!(p["gpus"], Value::Null);
    assert_ne!(c.state_bytes("plain"), plain_before);
    let text = String::from_utf8(c.state_bytes("plain")).unwrap();
    assert!(!text.contains("gpu"), "{text}");
    for listed in c.run(&["--json", "list"]).ok().json().as_array().unwrap() {
        assert!(listed.get("gpus").is_some(), "{listed}");
    }
    c.run(&["list"]).ok().out_has("GPUS");
}

#[test]
fn refusals_more_gpus_than_exist_and_a_node_without_gpus() {
    let c = cluster();
    c.run(&["alloc", "--gpus", "5"])
        .code(1)
        .err_has("no node has 5 GPU(s); the most on one node is 4");
    c.run(&["alloc", "-w", "gpu4", "--gpus", "5"])
        .code(1)
        .err_has("gpu4 has 4 GPU(s); 5 cannot fit");
    c.run(&["alloc", "-w", "plain", "--gpus", "1"])
        .code(1)
        .err_has("plain has no GPUs");
    c.run(&["alloc", "--gpus", "1", "--cpus", "4"]).code(2);
    c.run(&["alloc", "--gpus", "0"]).code(2);
    // Full now: the refusal gives the earliest time it fits.
    c.run(&["alloc", "-w", "gpu4", "--gpus", "4", "-t", "1h"])
        .ok();
    c.run(&["alloc", "--gpus", "1"])
        .code(1)
        .err_has("earliest it fits");
}

#[test]
fn placement_prefers_units_whose_gpus_sit_near_their_cpus() {
    let c = cluster();
    // Units 0-1 have CPUs on NUMA 0, units 2-3 on NUMA 1. GPUs 0 and 1
    // hang off NUMA 1, GPU 2 off NUMA 1: unit 2 is the first local one.
    facts(&c, "gpu4", &[(0, 1), (1, 1), (2, 1), (3, 0)]);
    let b = c
        .run(&["--json", "alloc", "-w", "gpu4", "--gpus", "1"])
        .ok()
        .json();
    assert_eq!(b["gpus"], "2");
    assert_eq!(b["gpu_uuids"], json!(["GPU-2-gpu4"]));
    // Across nodes: a second GPU node whose GPU 0 is local wins over
    // gpu4, whose only local unit left is none (unit 3's GPU is far).
    c.run(&[
        "admin",
        "add-node",
        "gpu2",
        "--cpus",
        "0-63",
        "--unit-cpus",
        "32",
        "--gpus",
        "0-1",
    ])
    .ok();
    facts(&c, "gpu2", &[(0, 0), (1, 0)]);
    let b = c.run(&["--json", "alloc", "--gpus", "1"]).ok().json();
    assert_eq!(
        (b["node"].as_str(), b["gpus"].as_str()),
        (Some("gpu2"), Some("0"))
    );
}

#[test]
fn info_shows_gpus_free_and_per_gpu_facts() {
    let c = cluster();
    facts(&c, "gpu4", &[(0, 0), (1, 0), (2, 1), (3, 1)]);
    c.run(&["alloc", "-w", "gpu4", "--gpus", "1", "-t", "1h"])
        .ok();
    let v = c.run(&["--json", "info"]).ok().json();
    let nodes = v["nodes"].as_array().unwrap();
    let g = nodes.iter().find(|n| n["name"] == "gpu4").unwrap();
    assert_eq!(g["gpus"], "0-3");
    assert_eq!(g["gpus_free"], 3);
    let list = g["gpu_list"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    for key in [
        "index",
        "uuid",
        "name",
        "memory_used",
        "memory_total",
        "utilization",
    ] {
        assert!(
            list[0].get(key).is_some(),
            "gpu_list entry lacks {key}: {}",
            list[0]
        );
    }
    assert_eq!(list[2]["uuid"], "GPU-2-gpu4");
    assert_eq!(g["bookings"][0]["gpus"], "0");
    let p = nodes.iter().find(|n| n["name"] == "plain").unwrap();
    assert_eq!(
        (p["gpus"].clone(), p["gpus_free"].clone()),
        (Value::Null, json!(0))
    );
    assert_eq!(p["gpu_list"], json!([]));
    c.run(&["info"])
        .ok()
        .out_has("GPUS FREE")
        .out_has("3/4")
        .out_has("GPUs 0");
}

#[test]
fn history_summary_counts_gpu_hours() {
    let c = cluster();
    c.run(&["alloc", "-w", "gpu4", "--gpus", "2", "-t", "2h"])
        .ok();
    c.run(&["alloc", "-w", "plain", "-t", "30m"]).ok();
    let s = c.run(&["--json", "history", "--summary"]).ok().json();
    // 2 GPUs x 2 h; 32 CPUs x 2 h + 8 CPUs x 0.5 h.
    assert_eq!(s[0]["gpu_hours"], 4.0);
    assert_eq!(s[0]["cpu_hours"], 68.0);
    c.run(&["history", "--summary"])
        .ok()
        .out_has("GPU-HOURS")
        .out_has("4.00");
}
