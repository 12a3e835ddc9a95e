//! The whole system on a small cluster built on one machine: three nodes
//! (network namespaces on a private LAN, each with its own hostname, its own
//! file system layer and its own sshd), one shared directory standing for
//! the NFS export, kloigos installed on each node with install.sh (PAM
//! wired, checked with pamtester). Then: the admin creates the cluster,
//! alice books node2 for a few seconds, logs in there (and only there), bob
//! nowhere; her processes outlive the booking until the housekeeper pass on
//! node2 ends them; history shows the booking; uninstall leaves every node
//! and the host as they were.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use kloigos_tests::cmd::{must, run, Run};
use kloigos_tests::housekeeper::live_processes;
use kloigos_tests::node::{free_uid, install_script, Lan, Node, SshClient};
use kloigos_tests::poll::wait_until;
use kloigos_tests::require_root;
use kloigos_tests::sys::TempUser;

/// Managed users (alice, bob) get uids from here up, and the cluster's
/// `min_uid` is this and `max_uid` 59999, so the passes on the nodes
/// manage only uids 59980-59999. The band sits
/// just below the housekeeper tests' kill band (59990-59999, see
/// harness/housekeeper.rs); cargo runs test binaries one after another, so
/// those users never exist while these passes run.
const USER_UID: u32 = 59980;
/// The service account's name on the nodes.
const SVC: &str = "kloigos-e2e";

/// Prints the summary line of a step.
struct Steps {
    n: u32,
    started: Instant,
}

impl Steps {
    fn done(&mut self, what: &str, outcome: &str) {
        self.n += 1;
        eprintln!(
            "e2e: step {}: {what} -> {outcome} ({:.1} s)",
            self.n,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The host's state that nothing here may change.
fn host_state() -> Vec<String> {
    let mut v = Vec::new();
    for f in ["/etc/passwd", "/etc/group", "/etc/shadow"] {
        v.push(format!("{f} {}", must("sha256sum", &[f]).stdout.trim()));
    }
    v.push(format!(
        "nft {}",
        run("nft", &["list", "tables"]).stdout.trim()
    ));
    let pam = run("sh", &["-c", "sha256sum /etc/pam.d/*"]);
    v.extend(pam.stdout.lines().map(str::to_string));
    for p in ["/etc/kloigos", "/var/lib/kloigos", "/usr/local/bin/kloigos"] {
        v.push(format!("{p} exists={}", Path::new(p).exists()));
    }
    v.extend(kloigos_tests::node::snapshot(Path::new("/etc/cron.d")));
    v
}

/// Asserts that `user`'s ssh to `node` is refused by the PAM account stack
/// (sshd says so in its log) and that `check-login` there says why.
fn assert_refused(client: &SshClient, lan: &Lan, user: &str, node: &Node) {
    let r = client.ssh(lan, user, node, &["true"]);
    assert_eq!(r.code, 255, "{user} got into {}: {r:?}", node.name);
    let denied = format!("Access denied for user {user} by PAM account configuration");
    assert!(
        wait_until(Duration::from_secs(5), || node.sshd_log().contains(&denied)),
        "sshd of {} lacks {denied:?}:\n{}",
        node.name,
        node.sshd_log()
    );
    // check-login exits 1 on a refusal.
    let r = node.run(&["/usr/local/bin/kloigos", "check-login", user, "--json"]);
    r.code(1);
    let c = r.json();
    assert_eq!(c["decision"], "deny", "{c}");
    assert_eq!(c["node"], node.name.as_str(), "{c}");
}

fn kloigos_json(r: &Run) -> serde_json::Value {
    r.ok();
    r.json()
}

#[test]
fn e2e_three_nodes_book_login_expire_kill_uninstall() {
    require_root!();
    let mut steps = Steps {
        n: 0,
        started: Instant::now(),
    };
    // Drop order is the reverse of declaration: nodes, then the LAN, users, scratch.
    let scratch = tempfile::Builder::new()
        .prefix("kloigos-e2e-")
        .tempdir_in("/var/tmp")
        .expect("scratch dir");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let alice = TempUser::with_uid("kle2ealice", USER_UID);
    let bob = TempUser::with_uid("kle2ebob", USER_UID + 1);
    // The service account exists only on the nodes (install.sh creates it
    // there); the "file server" (this host) only sees its uid.
    let svc_uid = free_uid(59970);
    assert!(svc_uid < USER_UID, "no free service uid below {USER_UID}");
    let shared = scratch.path().join("nfs-export");
    std::fs::create_dir(&shared).expect("shared dir");
    std::os::unix::fs::chown(&shared, Some(svc_uid), Some(svc_uid)).expect("chown shared");
    let host_before = host_state();

    let lan = Lan::create("kle2e-lan");
    let nodes: Vec<Node> = (1..=3u8)
        .map(|i| {
            Node::boot(
                &lan,
                &format!("kle2e-node{i}"),
                &format!("node{i}"),
                i,
                &scratch.path().join(format!("node{i}")),
            )
        })
        .collect();
    let node_before: Vec<Vec<String>> = nodes.iter().map(Node::system_state).collect();
    let client = SshClient::new(scratch.path());
    steps.done("three nodes up (netns, hostname, own /etc layer)", "ok");

    // install.sh on each node, as an admin would: no DESTDIR, node name from the hostname.
    let bin_dir = kloigos_tests::bin_dir();
    let install = [
        install_script().display().to_string(),
        "--uid".into(),
        svc_uid.to_string(),
        "--service-user".into(),
        SVC.into(),
        "--shared".into(),
        shared.display().to_string(),
        "--bin-dir".into(),
        bin_dir.display().to_string(),
        "--enable-pam".into(),
    ];
    for n in &nodes {
        let r = n.run(&install);
        r.ok()
            .out_has(&format!("installing kloigos for node {}", n.name))
            .out_has("checked with pamtester: root still passes");
        // No systemd here: cron.
        assert!(n
            .layer(Path::new("/etc"))
            .join("cron.d/kloigos-housekeeper")
            .is_file());
        // Re-running is harmless.
        let again = n.run(&install);
        again.ok().out_has("already has pam_kloigos.so");
        // The test's housekeeper settings: no grace, no slices on this host,
        // nft on (each node has its own network namespace).
        let cfg_path = n.layer(Path::new("/etc")).join("kloigos/config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).expect("config")).expect("json");
        assert_eq!(cfg["node"], n.name.as_str());
        cfg["housekeeper"]["grace_s"] = 0.into();
        cfg["housekeeper"]["slices"] = "none".into();
        std::fs::write(&cfg_path, cfg.to_string()).expect("edit config");
    }
    assert_eq!(
        host_state(),
        host_before,
        "installing on the nodes touched the host"
    );
    steps.done("install.sh on node1..3 (setuid CLI, PAM wired, cron)", "ok");

    // The admin creates the cluster from node1 (root is always an admin).
    let k = "/usr/local/bin/kloigos";
    let n1 = &nodes[0];
    n1.run(&[k, "admin", "init", "--name", "e2e"]).ok();
    // min_duration=1s: alice's booking below lasts 12 s, to see it end.
    n1.run(&[
        k,
        "admin",
        "policy",
        &format!("min_uid={USER_UID}"),
        "max_uid=59999",
        "min_duration=1s",
    ])
    .ok();
    for n in &nodes {
        n1.run(&[
            k,
            "admin",
            "add-node",
            &n.name,
            "--cpus",
            "0-1",
            "--unit-cpus",
            "1",
            "--ports",
            "20000-20099",
        ])
        .ok();
    }
    // Written through the setuid CLI: owned by the service account, whose
    // uid install.sh gave it on every node.
    let meta = std::fs::metadata(shared.join("cluster.json")).expect("cluster.json");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), svc_uid);
    let info = kloigos_json(&n1.run_as(&alice, &[k, "info", "--json"]));
    let names: Vec<&str> = info["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["node1", "node2", "node3"], "{info}");
    for u in [alice.name.as_str(), bob.name.as_str()] {
        for n in &nodes {
            n.authorize(u, &client.public());
        }
    }
    for n in &nodes {
        n.start_sshd(&lan);
    }
    steps.done("admin init, policy, add-node x3 (2 CPU units each)", "ok");

    // alice books node2 (from node1) for a short time.
    let booking =
        kloigos_json(&n1.run_as(&alice, &[k, "alloc", "-w", "node2", "-t", "12", "--json"]));
    let id = booking["id"].as_str().expect("id").to_string();
    assert_eq!(booking["user"], alice.name.as_str());
    assert_eq!(booking["node"], "node2");
    steps.done(&format!("alice books node2 for 12 s ({id})"), "ok");

    let (n2, n3) = (&nodes[1], &nodes[2]);
    let r = client.ssh(&lan, &alice.name, n2, &["hostname"]);
    assert_eq!(
        r.code,
        0,
        "alice ssh node2: {r:?}\nsshd log:\n{}",
        n2.sshd_log()
    );
    assert_eq!(r.stdout.trim(), "node2");
    steps.done("alice ssh node2", "ok (hostname node2)");

    assert_refused(&client, &lan, &alice.name, n1);
    steps.done("alice ssh node1", "refused");

    for n in [n1, n2, n3] {
        assert_refused(&client, &lan, &bob.name, n);
    }
    steps.done("bob ssh node1, node2, node3", "refused everywhere");

    // Background processes that outlive the session.
    let r = client.ssh(
        &lan,
        &alice.name,
        n2,
        &["setsid sleep 600 </dev/null >/dev/null 2>&1 & setsid sleep 601 </dev/null >/dev/null 2>&1 &"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(10), || live_processes(alice.uid) == 2),
        "alice should have exactly her two sleeps left, has {}",
        live_processes(alice.uid)
    );
    // A pass while she holds node2 leaves them alone and loads node2's port rules.
    let hk = "/usr/local/sbin/kloigos-housekeeper";
    n2.run(&[hk, "--once"]).ok();
    assert_eq!(
        live_processes(alice.uid),
        2,
        "a pass during the booking killed"
    );
    let tables = n2.run(&["nft", "list", "tables"]);
    assert!(tables.stdout.contains("inet kloigos"), "{tables:?}");
    steps.done(
        "alice starts 2 background processes on node2; pass during booking",
        "kept",
    );

    // The booking runs out.
    let expired = wait_until(Duration::from_secs(60), || {
        let r = n2.run(&[k, "check-login", &alice.name, "--json"]);
        r.code != 2 && r.stdout.contains("\"deny\"")
    });
    assert!(expired, "alice's booking did not end");
    steps.done(
        "alice's booking expires (check-login on node2 says deny)",
        "ok",
    );

    n2.run(&[hk, "--once"]).ok();
    assert!(
        wait_until(Duration::from_secs(10), || live_processes(alice.uid) == 0),
        "alice still has {} processes after the pass",
        live_processes(alice.uid)
    );
    steps.done("housekeeper pass on node2", "alice's processes killed");

    assert_refused(&client, &lan, &alice.name, n2);
    steps.done("alice ssh node2 after expiry", "refused");

    let hist = kloigos_json(&n1.run_as(&alice, &[k, "history", "--json"]));
    let found = hist
        .as_array()
        .expect("history list")
        .iter()
        .any(|b| b["id"] == id.as_str() && b["user"] == alice.name.as_str());
    assert!(found, "history lacks {id}: {hist}");
    steps.done(&format!("history shows {id}"), "ok");

    // Uninstall everywhere: each node as it was, the shared data kept.
    for n in &nodes {
        n.stop_sshd();
        let r = n.run(&[
            install_script().display().to_string(),
            "--uninstall".into(),
            "--purge".into(),
        ]);
        r.ok().out_has("kloigos-housekeeper --uninstall");
    }
    for (n, before) in nodes.iter().zip(&node_before) {
        let after = n.system_state();
        assert_eq!(
            &after,
            before,
            "uninstall left {} different: only before {:?}, only after {:?}",
            n.name,
            before
                .iter()
                .filter(|l| !after.contains(l))
                .collect::<Vec<_>>(),
            after
                .iter()
                .filter(|l| !before.contains(l))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        shared.join("cluster.json").is_file(),
        "the shared data is kept"
    );
    assert!(shared.join("nodes/node2/journal.jsonl").is_file());
    assert_eq!(host_state(), host_before, "the host changed");
    steps.done(
        "uninstall on node1..3 (files, users, nft, PAM as before; shared data kept)",
        "ok",
    );
}
