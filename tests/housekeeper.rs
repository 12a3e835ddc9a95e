//! System tests of kloigos-housekeeper, as root, against the real thing:
//! real processes of throwaway users killed, the real nftables ruleset
//! loaded in network namespaces and probed with real sockets, the plain
//! cgroup backend on this host's cgroups, the systemd backend against the
//! real systemd of an nspawn container, and the files it writes.
//!
//! uid bands (see harness/housekeeper.rs): kill 59990-59999, facts/dry-run
//! 59960-59969, nft 59950-59959, cgroup 59940-59949, systemd 59930-59939,
//! broken tree 59925, high uids 70001 and 200001. Only the kill, broken
//! tree and high-uid tests' passes end processes, each within its band.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::enforce;
use kloigos_core::facts::Facts;
use kloigos_core::names::UserName;
use kloigos_core::policy::Policy;
use kloigos_core::store::LocalCopy;
use kloigos_tests::cmd::{must, run, Run};
use kloigos_tests::fuse::{Behaviour, FuseMount};
use kloigos_tests::housekeeper::{
    build_stopper, is_gone, live_processes, run_bounded, spawn_as, HkNode, Reaped,
};
use kloigos_tests::poll::wait_until;
use kloigos_tests::sys::{Netns, TempUser};
use kloigos_tests::uid;
use serde_json::json;

/// Manages `min_uid ..= 59999` only: no pass of one test reaches the
/// users of the high-uid test (70001, 200001).
fn policy(min_uid: u32) -> Policy {
    Policy {
        min_uid: uid(min_uid),
        max_uid: Some(uid(59_999)),
        ..Policy::default()
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// The pid of a running systemd-less sleep of root, for "root is spared".
fn root_sleeper() -> Reaped {
    Reaped(Command::new("sleep").arg("600").spawn().expect("sleep"))
}

// ---------------------------------------------------------------- killing

/// Held by the tests whose passes end processes (uids 59990-59999).
static KILL_BAND: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kill_band() -> std::sync::MutexGuard<'static, ()> {
    KILL_BAND.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bound for a pass that must end by itself: far above what any pass
/// here needs, far below "forever".
const HANG: Duration = Duration::from_secs(90);

#[test]
fn kill_ends_every_process_of_unbooked_users_in_one_pass_and_spares_the_rest() {
    kloigos_tests::require_root!();
    let _band = kill_band();
    let victim = TempUser::with_uid("khk-victim", 59991);
    let bypass = TempUser::with_uid("khk-bypass", 59992);
    let booked = TempUser::with_uid("khk-booked", 59993);
    let p = Policy {
        bypass_users: vec![UserName::new(&bypass.name).unwrap()],
        ..policy(59990)
    };
    let n = HkNode::new("hk-kill", p, "0-1", Some(1), None, json!({"kill": true}));
    n.book(&booked, 1, now(), 3600);

    // Hundreds of sleepers, plus a shell that keeps forking (for 60 s at most).
    let mut spawner = Reaped(spawn_as(
        &victim,
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do sleep 600 & i=$((i+1)); done; wait",
        ],
    ));
    let mut forker = Reaped(spawn_as(
        &victim,
        &[
            "/bin/sh",
            "-c",
            "end=$(($(date +%s)+60)); while [ $(date +%s) -lt $end ]; do sleep 30 & done",
        ],
    ));
    assert!(
        wait_until(Duration::from_secs(20), || live_processes(victim.uid)
            >= 300),
        "the victim never got 300 processes ({})",
        live_processes(victim.uid)
    );
    let mut spared = [
        Reaped(spawn_as(&bypass, &["sleep", "600"])),
        Reaped(spawn_as(&booked, &["sleep", "600"])),
        root_sleeper(),
    ];

    // Corrupt state: nothing is killed, the error is reported.
    let state = n.cluster.store.state_path(&n.node);
    let good = std::fs::read(&state).unwrap();
    std::fs::write(&state, b"{\"version\":1, \"seq\": ").unwrap();
    let r = n.pass(&[]);
    r.code(3).err_has("nothing destructive");
    assert!(
        live_processes(victim.uid) >= 300,
        "processes were killed on a corrupt state"
    );
    assert!(spawner.alive() && forker.alive());
    let facts: Facts = serde_json::from_slice(&std::fs::read(n.facts_path()).unwrap()).unwrap();
    assert!(!facts.enforcing);
    assert!(
        facts.error.as_deref().unwrap_or("").contains("state.json"),
        "{:?}",
        facts.error
    );

    // Valid state: one pass ends them all, within a second.
    std::fs::write(&state, &good).unwrap();
    let before = live_processes(victim.uid);
    let t = Instant::now();
    let r = n.pass(&[]);
    let took = t.elapsed();
    r.ok();
    assert_eq!(
        live_processes(victim.uid),
        0,
        "victim processes left after the pass:\n{}",
        r.stderr
    );
    // One pass ends them; how fast is the benchmark's to say (a tight
    // wall-clock bound here would flake on a loaded machine).
    assert!(
        took < Duration::from_secs(30),
        "the pass took {took:?}:\n{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("process(es) of khk-victim (uid 59991): no booking on this node"),
        "{}",
        r.stderr
    );
    for s in &mut spared {
        assert!(s.alive(), "a spared process died:\n{}", r.stderr);
    }
    let killed: u64 = std::fs::read_to_string(n.metrics_dir.join("kloigos.prom"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("kloigos_processes_killed_total ")
                .map(|v| v.parse().unwrap())
        })
        .unwrap();
    assert!(
        killed >= before as u64,
        "killed_total {killed} < {before} processes seen"
    );
    eprintln!("ended {killed} processes of a forking user in {took:?} (one pass)");
}

#[test]
fn a_user_who_sigstops_everything_of_theirs_cannot_hang_the_pass() {
    kloigos_tests::require_root!();
    let _band = kill_band();
    let attacker = TempUser::with_uid("khk-stopper", 59995);
    let n = HkNode::new(
        "hk-sigstop",
        policy(59990),
        "0-1",
        Some(1),
        None,
        json!({"kill": true}),
    );
    let dir = tempfile::tempdir().unwrap();
    let stopper = build_stopper(dir.path());
    let mut sleepers: Vec<Reaped> = (0..3)
        .map(|_| Reaped(spawn_as(&attacker, &["sleep", "600"])))
        .collect();
    // The launcher may itself be stopped by its child before it returns.
    let _launch = Reaped(spawn_as(&attacker, &[&stopper]));
    // The sleepers and the looping child, which keeps stopping the others.
    assert!(
        wait_until(Duration::from_secs(20), || live_processes(attacker.uid)
            >= 4),
        "the attacker never had its processes ({})",
        live_processes(attacker.uid)
    );

    // The old kill path ran kill(-1) in a helper holding the user's uid; the
    // loop stopped the helper and the pass waited for it forever.
    let r = run_bounded(&mut n.housekeeper(&["--once"]), HANG)
        .unwrap_or_else(|e| panic!("the pass hung on the stopped kill path:\n{e}"));
    r.ok().err_has("process(es) of khk-stopper (uid 59995)");
    assert_eq!(
        live_processes(attacker.uid),
        0,
        "the attacker's processes survived the pass:\n{}",
        r.stderr
    );
    for s in &mut sleepers {
        assert!(!s.alive(), "a stopped sleeper survived");
    }
    // The lock was released: the next pass runs, with nothing left to end.
    let next = n.pass(&[]);
    next.ok();
    assert!(
        !next.stderr.contains("another housekeeper pass holds"),
        "the next pass was skipped:\n{}",
        next.stderr
    );
    assert!(!next.stderr.contains("ended"), "{}", next.stderr);
}

// ---------------------------------------------------------------- deadlines

/// A directory with a stand-in for `prog` that records its pid and the
/// pid of a child it starts, then waits for that child (600 s).
fn hanging_stand_in(prog: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "#!/bin/sh\necho $$ > {d}/{prog}.pid\nsleep 600 &\necho $! > {d}/{prog}.child\nwait\n",
        d = dir.path().display()
    );
    let path = dir.path().join(prog);
    std::fs::write(&path, script).unwrap();
    must("chmod", &["755", &path.to_string_lossy()]);
    let d = dir.path().to_path_buf();
    (dir, d)
}

fn pid_in(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_hung_nft_is_killed_at_the_deadline_and_the_pass_releases_its_lock() {
    kloigos_tests::require_root!();
    let user = TempUser::with_uid("khk-hungnft", 59971);
    let n = HkNode::new(
        "hk-hungnft",
        policy(59970),
        "0-1",
        Some(1),
        Some("23000-23099"),
        json!({"nft": true, "pass_deadline_s": 3}),
    );
    n.book(&user, 1, now(), 3600);
    let (_keep, bin) = hanging_stand_in("nft");
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());

    let r = run_bounded(n.housekeeper(&["--once"]).env("PATH", &path), HANG)
        .unwrap_or_else(|e| panic!("the pass waited for the hung nft:\n{e}"));
    r.code(1)
        .err_has("nft -f - ran longer than")
        .err_has("and was killed")
        .err_has("reached its deadline of 3 s")
        .err_has("writing facts.json");
    // The program and what it started, its whole process group, are gone.
    for f in ["nft.pid", "nft.child"] {
        let pid = pid_in(&bin.join(f));
        assert!(is_gone(pid), "{f} {pid} survived the timeout");
    }
    // Nothing was written past the deadline.
    assert!(
        !n.facts_path().exists(),
        "facts were written after the deadline"
    );

    // The lock was released: with an nft that answers, the next pass runs whole.
    std::fs::write(bin.join("nft"), "#!/bin/sh\ncat >/dev/null\n").unwrap();
    let next = run_bounded(n.housekeeper(&["--once"]).env("PATH", &path), HANG)
        .unwrap_or_else(|e| panic!("the second pass hung:\n{e}"));
    next.ok().err_has("nftables table inet kloigos loaded");
    assert!(n.facts_path().exists(), "{}", next.stderr);
}

#[test]
fn a_hung_release_hook_is_killed_at_the_deadline_and_the_next_pass_runs() {
    kloigos_tests::require_root!();
    let user = TempUser::with_uid("khk-hunghook", 59972);
    let n = HkNode::new(
        "hk-hunghook",
        policy(59970),
        "0-1",
        Some(1),
        None,
        json!({"pass_deadline_s": 3}),
    );
    // The first pass records the bookings already ended, without hooks.
    n.pass(&[]).ok();
    let (_keep, bin) = hanging_stand_in("hook");
    let hook = n.hooks_dir.join("release.d/50-hang");
    std::fs::copy(bin.join("hook"), &hook).unwrap();
    must("chmod", &["755", &hook.to_string_lossy()]);
    let bk = n.book(&user, 1, now(), 3600);
    n.release(&bk.id);

    let r = run_bounded(&mut n.housekeeper(&["--once"]), HANG)
        .unwrap_or_else(|e| panic!("the pass waited for the hung hook:\n{e}"));
    // Cut at the pass deadline (3 s), not at the hook's own limit (30 s).
    r.err_has("release hook")
        .err_has("was killed at the pass deadline");
    for f in ["hook.pid", "hook.child"] {
        let pid = pid_in(&bin.join(f));
        assert!(is_gone(pid), "{f} {pid} survived the timeout");
    }
    let next = n.pass(&[]);
    next.ok();
    assert!(
        !next.stderr.contains("another housekeeper pass holds"),
        "the next pass was skipped:\n{}",
        next.stderr
    );
}

#[test]
fn a_pass_blocked_on_a_hung_share_is_ended_by_the_watchdog_and_the_lock_released() {
    kloigos_tests::require_root!();
    let n = HkNode::new(
        "hk-hungshare",
        policy(59970),
        "0-1",
        Some(1),
        None,
        json!({"pass_deadline_s": 2}),
    );
    n.pass(&[]).ok();
    // A FUSE server that never answers, laid over the share: a hard NFS
    // mount whose server died.
    let hung = FuseMount::new(n.cluster.shared(), Behaviour::Hang);

    // The read of the policy blocks in the kernel; no timeout can cut it.
    let r = run_bounded(&mut n.housekeeper(&["--once"]), HANG)
        .unwrap_or_else(|e| panic!("the pass stayed blocked on the hung share:\n{e}"));
    r.code(4)
        .err_has("still running 10 s after its deadline of 2 s")
        .err_has("blocked in: reading the shared policy and state");
    // The process is gone, and its lock with it.
    let lock = std::fs::File::open(n.state_dir.join("housekeeper.lock")).unwrap();
    lock.try_lock()
        .expect("the pass lock is still held after the watchdog ended the pass");
    drop(lock);

    drop(hung);
    let next = n.pass(&[]);
    next.ok();
    assert!(
        !next.stderr.contains("another housekeeper pass holds"),
        "{}",
        next.stderr
    );
}

// ---------------------------------------------------------------- nftables

/// A TCP and UDP server on `port` as `user` inside `ns`: answers "hi".
const SERVER: &str = r#"
import socket, sys, threading
port = int(sys.argv[1])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
def udp():
    while True:
        d, a = u.recvfrom(100)
        try:
            u.sendto(b"hi", a)
        except OSError:
            pass  # dropped by the rule (EPERM): the client sees no answer
threading.Thread(target=udp, daemon=True).start()
while True:
    c, _ = t.accept(); c.sendall(b"hi"); c.close()
"#;

/// Prints "ok" if a server at host:port answers over `proto` within `wait`
/// seconds, else "fail".
const CLIENT: &str = r#"
import socket, sys
host, port, proto, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=wait); d = s.recv(10)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(wait)
        s.sendto(b"x", (host, port)); d, _ = s.recvfrom(10)
    print("ok" if d == b"hi" else "fail")
except Exception as e:
    print("fail", e)
"#;

/// How long a probe waits for an answer it expects: long, since only a
/// loaded machine makes it wait at all.
const ANSWERS: &str = "10";
/// How long a probe waits for an answer that must not come: any answer
/// within it fails the test, and its length is what every such probe costs.
const SILENT: &str = "1";

fn client(
    ns: &Netns,
    as_user: Option<&kloigos_tests::sys::TempUser>,
    host: &str,
    port: u16,
    proto: &str,
    wait: &str,
) -> bool {
    let port = port.to_string();
    let mut argv: Vec<String> = vec!["netns".into(), "exec".into(), ns.name.clone()];
    if let Some(u) = as_user {
        argv.extend([
            "setpriv".into(),
            format!("--reuid={}", u.uid),
            format!("--regid={}", u.gid),
            "--init-groups".into(),
        ]);
    }
    argv.extend([
        "/usr/bin/python3".into(),
        "-c".into(),
        CLIENT.into(),
        host.into(),
        port,
        proto.into(),
        wait.into(),
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run("ip", &argv).stdout.trim() == "ok"
}

fn listening(ns: &Netns, port: u16) -> bool {
    let out = run("ip", &["netns", "exec", &ns.name, "ss", "-lntu"]).stdout;
    out.lines()
        .filter(|l| l.contains(&format!(":{port} ")))
        .count()
        >= 2
}

#[test]
fn nft_lets_booked_users_serve_only_on_their_ports() {
    kloigos_tests::require_root!();
    let user = TempUser::with_uid("khk-nft", 59951);
    let tag = std::process::id() % 100_000;
    let a = Netns::create(&format!("khk-a{tag}"));
    let b = Netns::create(&format!("khk-b{tag}"));
    let subnet = 10 + tag % 200;
    let (addr_a, addr_b) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
    must(
        "ip",
        &[
            "-n", &a.name, "link", "add", "khkva", "type", "veth", "peer", "name", "khkvb",
            "netns", &b.name,
        ],
    );
    must(
        "ip",
        &[
            "-n",
            &a.name,
            "addr",
            "add",
            &format!("{addr_a}/24"),
            "dev",
            "khkva",
        ],
    );
    must(
        "ip",
        &[
            "-n",
            &b.name,
            "addr",
            "add",
            &format!("{addr_b}/24"),
            "dev",
            "khkvb",
        ],
    );
    must("ip", &["-n", &a.name, "link", "set", "khkva", "up"]);
    must("ip", &["-n", &b.name, "link", "set", "khkvb", "up"]);
    // Someone else's table, which must survive every load.
    must(
        "ip",
        &[
            "netns", "exec", &a.name, "nft", "add", "table", "inet", "other",
        ],
    );
    must(
        "ip",
        &[
            "netns", "exec", &a.name, "nft", "add", "chain", "inet", "other", "c",
        ],
    );

    // 2 units, ports 20000-20099: the booking's unit gets 20000-20049.
    let n = HkNode::new(
        "hk-nft",
        policy(59950),
        "0-1",
        Some(1),
        Some("20000-20099"),
        json!({"nft": true}),
    );
    let bk = n.book(&user, 1, now(), 3600);
    assert_eq!(bk.ports.unwrap().to_string(), "20000-20049");

    // Count nft invocations: a wrapper first on PATH that logs, then runs the real nft.
    let wrap = tempfile::tempdir().unwrap();
    let count = wrap.path().join("count");
    let real = run("sh", &["-c", "command -v nft"])
        .stdout
        .trim()
        .to_string();
    std::fs::write(
        wrap.path().join("nft"),
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec {real} \"$@\"\n",
            count.display()
        ),
    )
    .unwrap();
    must(
        "chmod",
        &["755", &wrap.path().join("nft").to_string_lossy()],
    );
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", wrap.path().display());
    let cfg = n.config.to_string_lossy().to_string();
    let hk = kloigos_tests::bin("kloigos-housekeeper")
        .to_string_lossy()
        .to_string();
    let pass = || {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &a.name,
                "env",
                &format!("PATH={path}"),
                &hk,
                "--once",
                "--config",
                &cfg,
            ],
        )
    };
    let loads = || {
        std::fs::read_to_string(&count)
            .unwrap_or_default()
            .lines()
            .count()
    };

    pass().ok();
    assert_eq!(loads(), 1, "the first pass loads the table once");
    let table = run(
        "ip",
        &[
            "netns", "exec", &a.name, "nft", "list", "table", "inet", "kloigos",
        ],
    );
    table
        .ok()
        .out_has("59951 . 20000-20049")
        .out_has("ct direction reply");

    let server = |port: &str| {
        Reaped(
            Command::new("ip")
                .args(["netns", "exec", &a.name, "setpriv"])
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .args(["--init-groups", "/usr/bin/python3", "-c", SERVER, port])
                .spawn()
                .unwrap(),
        )
    };
    let _inside = server("20010");
    let _outside = server("20080");
    assert!(wait_until(Duration::from_secs(10), || listening(&a, 20010)
        && listening(&a, 20080)));
    // A root server in B, for the user's outgoing connection.
    let _remote = Reaped(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &b.name,
                "/usr/bin/python3",
                "-c",
                SERVER,
                "5555",
            ])
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || listening(&b, 5555)));

    for proto in ["tcp", "udp"] {
        assert!(
            client(&b, None, &addr_a, 20010, proto, ANSWERS),
            "{proto}: booked port unreachable from the other namespace"
        );
        assert!(
            !client(&b, None, &addr_a, 20080, proto, SILENT),
            "{proto}: a port outside the booking answered"
        );
        assert!(
            client(&a, None, "127.0.0.1", 20010, proto, ANSWERS),
            "{proto}: booked port unreachable on loopback"
        );
        assert!(
            !client(&a, None, "127.0.0.1", 20080, proto, SILENT),
            "{proto}: outside port answered on loopback"
        );
        assert!(
            client(&a, Some(&user), &addr_b, 5555, proto, ANSWERS),
            "{proto}: the user's outgoing connection broke"
        );
    }

    // Nothing changed: the second pass runs no nft at all.
    pass().ok();
    assert_eq!(loads(), 1, "an unchanged pass ran nft");
    // Someone else changes the ruleset: our table is checked by reloading it.
    must(
        "ip",
        &[
            "netns", "exec", &a.name, "nft", "add", "chain", "inet", "other", "c2",
        ],
    );
    pass().ok();
    assert_eq!(loads(), 2);
    run(
        "ip",
        &[
            "netns", "exec", &a.name, "nft", "list", "table", "inet", "other",
        ],
    )
    .ok()
    .out_has("chain c2");

    // The booking ends: the table goes, the other stays, the port is free again.
    n.release(&bk.id);
    pass().ok();
    assert_eq!(loads(), 3);
    assert_ne!(
        run(
            "ip",
            &["netns", "exec", &a.name, "nft", "list", "table", "inet", "kloigos"]
        )
        .code,
        0
    );
    run(
        "ip",
        &[
            "netns", "exec", &a.name, "nft", "list", "table", "inet", "other",
        ],
    )
    .ok();
    assert!(
        client(&b, None, &addr_a, 20080, "tcp", ANSWERS),
        "without the table every port serves"
    );
    pass().ok();
    assert_eq!(loads(), 3, "removing an absent table twice");

    // --uninstall removes a loaded table.
    n.book(&user, 1, now(), 3600);
    pass().ok();
    assert_eq!(loads(), 4);
    let list = || {
        run(
            "ip",
            &[
                "netns", "exec", &a.name, "nft", "list", "table", "inet", "kloigos",
            ],
        )
    };
    list().ok();
    run(
        "ip",
        &[
            "netns",
            "exec",
            &a.name,
            "env",
            &format!("PATH={path}"),
            &hk,
            "--uninstall",
            "--config",
            &cfg,
        ],
    )
    .ok();
    assert_ne!(list().code, 0, "--uninstall left the table");
    run(
        "ip",
        &[
            "netns", "exec", &a.name, "nft", "list", "table", "inet", "other",
        ],
    )
    .ok();
}

// ---------------------------------------------------------------- slices: cgroups

/// Held by the tests whose passes create `kloigos/` in this host's root
/// cpuset group (the cgroup backend, and the systemd stand-in on a hybrid
/// host): one removing the emptied group must not race another creating it.
static HOST_CPUSET: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn host_cpuset() -> std::sync::MutexGuard<'static, ()> {
    HOST_CPUSET.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where cpuset is on this host, as the systemd backend decides it:
/// `Some(true)` a controller of the unified hierarchy (systemd applies
/// AllowedCPUs), `Some(false)` only the v1 hierarchy (hybrid: the
/// housekeeper confines processes there itself), `None` no cpuset at all.
/// `read` reads a file of the host or container concerned.
fn cpuset_on_unified(read: impl Fn(&str) -> String) -> Option<bool> {
    let mounts = read("/proc/self/mountinfo");
    let unified = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split_whitespace().nth(4).map(String::from))?
    });
    if unified.is_some_and(|m| {
        read(&format!("{m}/cgroup.controllers"))
            .split_whitespace()
            .any(|c| c == "cpuset")
    }) {
        Some(true)
    } else if !read("/sys/fs/cgroup/cpuset/cpuset.cpus").trim().is_empty() {
        Some(false)
    } else {
        None
    }
}

fn cpus_allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_string())
        })
        .unwrap()
}

/// Removes `kloigos/user-UID` cgroups left by an earlier failed run, now
/// and again on drop (processes moved back to the root group first).
struct CgroupLeftovers(u32);

impl CgroupLeftovers {
    fn remove(uid: u32) -> CgroupLeftovers {
        let me = CgroupLeftovers(uid);
        me.sweep();
        me
    }

    fn sweep(&self) {
        for ctrl in ["cpuset", "memory", "pids", "unified"] {
            let root = Path::new("/sys/fs/cgroup").join(ctrl);
            let dir = root.join("kloigos").join(format!("user-{}", self.0));
            if !dir.is_dir() {
                continue;
            }
            for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
            let _ = std::fs::remove_dir(&dir);
            let _ = std::fs::remove_dir(root.join("kloigos"));
        }
    }
}

impl Drop for CgroupLeftovers {
    fn drop(&mut self) {
        self.sweep();
    }
}

#[test]
fn cgroup_backend_confines_a_booked_user_to_their_cpus() {
    kloigos_tests::require_root!();
    // This host: cgroup v1 cpuset (v2 is mounted without controllers).
    let v1 = Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus");
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    kloigos_tests::require!(
        v1.exists() || v2.contains("cpuset"),
        "no cpuset controller on this host (mount the cgroup v1 cpuset controller, \
         or enable cpuset in cgroup v2's subtree_control)"
    );
    let all =
        std::fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.effective_cpus").unwrap_or_default();
    kloigos_tests::require!(
        all.trim() != "0",
        "the host has one CPU: confinement to a CPU subset cannot be observed (use a machine with 2 or more)"
    );
    let _serial = host_cpuset();
    let user = TempUser::with_uid("khk-cg", 59941);
    let p = Policy {
        tasks_max_per_unit: Some(100),
        ..policy(59940)
    };
    let n = HkNode::new(
        "hk-cgroup",
        p,
        "0-1",
        Some(1),
        None,
        json!({"slices": "cgroup"}),
    );
    let _clean = CgroupLeftovers::remove(user.uid);
    let mut sleeper = Reaped(spawn_as(&user, &["sleep", "600"]));
    let pid = sleeper.0.id();
    // setpriv changes uid after the spawn returns: wait for it.
    assert!(wait_until(Duration::from_secs(5), || live_processes(
        user.uid
    ) == 1));
    let open = cpus_allowed(pid);
    let bk = n.book(&user, 1, now(), 3600);
    assert_eq!(bk.cpus.to_string(), "0");

    let r = n.pass(&[]);
    r.ok().err_has("slice cgroup v1 set");
    assert_eq!(
        cpus_allowed(pid),
        "0",
        "the user's process is not confined:\n{}",
        r.stderr
    );
    let dir = Path::new("/sys/fs/cgroup/cpuset/kloigos/user-59941");
    if v1.exists() {
        assert_eq!(
            std::fs::read_to_string(dir.join("cpuset.cpus"))
                .unwrap()
                .trim(),
            "0"
        );
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l.trim() == pid.to_string()));
        let pids_max = Path::new("/sys/fs/cgroup/pids/kloigos/user-59941/pids.max");
        if pids_max.exists() {
            assert_eq!(std::fs::read_to_string(pids_max).unwrap().trim(), "100");
        }
    }
    // A new process of the user is confined by the next pass, and nothing is re-set.
    let mut second = Reaped(spawn_as(&user, &["sleep", "600"]));
    assert!(wait_until(Duration::from_secs(5), || live_processes(
        user.uid
    ) == 2));
    let r = n.pass(&[]);
    r.ok();
    assert!(
        !r.stderr.contains("set:"),
        "an unchanged slice was set again:\n{}",
        r.stderr
    );
    assert_eq!(cpus_allowed(second.0.id()), "0");

    n.release(&bk.id);
    let r = n.pass(&[]);
    r.ok().err_has("limits removed");
    assert!(!dir.exists(), "the cgroup stayed after the booking ended");
    assert!(
        !dir.parent().unwrap().exists(),
        "the empty kloigos group stayed"
    );
    assert_eq!(
        cpus_allowed(pid),
        open,
        "the limits stayed after the booking ended"
    );
    assert!(
        sleeper.alive() && second.alive(),
        "kill is off; nothing may die"
    );
}

#[test]
fn a_node_spec_naming_cpus_the_host_lacks_is_confined_to_those_it_has() {
    kloigos_tests::require_root!();
    let v1 = Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus");
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    kloigos_tests::require!(
        v1.exists() || v2.contains("cpuset"),
        "no cpuset controller on this host (mount the cgroup v1 cpuset controller, \
         or enable cpuset in cgroup v2's subtree_control)"
    );
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let online = CpuSet::parse(online.trim()).unwrap();
    kloigos_tests::require!(
        online.cpus().contains(&1),
        "CPU 1 is not online: confinement cannot be observed (use a machine with 2 or more CPUs)"
    );
    let _serial = host_cpuset();
    let user = TempUser::with_uid("khk-cpus", 59942);
    // CPUs 1 to two past the last one here: it lacks the top two, and
    // leaving CPU 0 out makes the confinement visible.
    let last = *online.cpus().last().unwrap();
    let spec = CpuSet::parse(&format!("1-{}", last + 2)).unwrap();
    let has = enforce::present(&spec, &online).unwrap();
    let lacks = enforce::missing_cpus(&spec, Some(&online)).unwrap();
    let n = HkNode::new(
        "hk-cpus",
        policy(59940),
        &spec.to_string(),
        Some(1),
        None,
        json!({"slices": "cgroup"}),
    );
    let _clean = CgroupLeftovers::remove(user.uid);
    let sleeper = Reaped(spawn_as(&user, &["sleep", "600"]));
    assert!(wait_until(Duration::from_secs(5), || live_processes(
        user.uid
    ) == 1));
    let bk = n.book(&user, spec.len() as u32, now(), 3600);
    assert_eq!(bk.cpus, spec);

    // The old pass wrote the whole spec to cpuset.cpus, which the kernel
    // refused (ERANGE), every pass: nobody was ever confined.
    let r = n.pass(&[]);
    r.ok()
        .err_has(&format!("names CPUs {lacks} that this host does not have"))
        .err_has(&format!("kloigos admin set-node hk-cpus --cpus {has}"));
    assert_eq!(
        cpus_allowed(sleeper.0.id()),
        has.to_string(),
        "not confined to the CPUs that exist:\n{}",
        r.stderr
    );
    let facts =
        || -> Facts { serde_json::from_slice(&std::fs::read(n.facts_path()).unwrap()).unwrap() };
    assert_eq!(facts().missing_cpus, Some(lacks.clone()));

    // Said once in the log; facts keep saying it.
    let r = n.pass(&[]);
    r.ok();
    assert!(!r.stderr.contains("does not have"), "{}", r.stderr);
    assert_eq!(facts().missing_cpus, Some(lacks));

    n.release(&bk.id);
    n.pass(&[]).ok().err_has("limits removed");
}

// ---------------------------------------------------------------- slices: systemd

#[test]
fn systemd_backend_commands_recorded_by_a_stand_in_systemctl() {
    kloigos_tests::require_root!();
    // Stand-in: a fake systemctl that records its arguments. What it proves:
    // the exact commands and drop-in of the backend; the nspawn test below
    // runs the same backend against a real systemd. Where cpuset is decided
    // from the kernel's mount table, not from systemctl, so the stand-in
    // cannot report a layout: on a hybrid host (these machines) the pass
    // takes the extra v1 cpuset step for real, in this host's cpuset
    // hierarchy (root only, serialised with the cgroup test); on a host
    // whose unified hierarchy holds cpuset it plans no extra step.
    let _serial = host_cpuset();
    let hybrid = cpuset_on_unified(|f| std::fs::read_to_string(f).unwrap_or_default());
    let _clean = CgroupLeftovers::remove(59931);
    let fake = tempfile::tempdir().unwrap();
    let log = fake.path().join("calls");
    std::fs::write(
        fake.path().join("systemctl"),
        format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()),
    )
    .unwrap();
    must(
        "chmod",
        &["755", &fake.path().join("systemctl").to_string_lossy()],
    );
    let units = fake.path().join("units");
    let p = Policy {
        tasks_max_per_unit: Some(64),
        ..policy(59930)
    };
    let n = HkNode::new(
        "hk-sysd-fake",
        p,
        "0-3",
        Some(2),
        None,
        json!({"slices": "systemd"}),
    );
    let u = kloigos_tests::sys::TempUser {
        name: "khk-nobody".into(),
        uid: 59931,
        gid: 59931,
    };
    let pass = |args: &[&str]| {
        Run::of(
            n.housekeeper(&["--once"])
                .args(args)
                .env(
                    "PATH",
                    format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fake.path().display()),
                )
                .env("KLOIGOS_SYSTEMD_UNIT_DIR", &units),
        )
    };
    n.cluster
        .store
        .update_node(&n.node, now(), |s| {
            s.node.mem_per_unit = Some(256 << 20);
            Ok(((), vec![]))
        })
        .unwrap();
    let bk = n.book(&u, 1, now(), 3600);
    std::mem::forget(u); // not a real account: nothing to remove
    let group = Path::new("/sys/fs/cgroup/cpuset/kloigos/user-59931");

    // The plan first: the properties, and on a hybrid host the cpuset step.
    let plan = pass(&["--dry-run"]);
    plan.ok().out_has(
        "slices (systemd): set user-59931.slice: AllowedCPUs=0-1 AllowedMemoryNodes=0 MemoryHigh=241590272 MemoryMax=268435456 TasksMax=64",
    );
    let step = format!(
        "slices (systemd): + cgroup v1 cpuset {}: cpuset.cpus=0-1 cpuset.mems=0, the processes of uid 59931 moved in",
        group.display()
    );
    match hybrid {
        Some(false) => {
            plan.out_has(&step);
        }
        Some(true) => assert!(
            !plan.stdout.contains("+ cgroup v1 cpuset"),
            "{}",
            plan.stdout
        ),
        None => {
            plan.out_has("AllowedCPUs is NOT applied: this host has no cpuset controller");
        }
    }
    assert!(
        !log.exists() && !group.exists(),
        "--dry-run changed something"
    );

    pass(&[]).ok();
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls.trim(),
        "set-property --runtime user-59931.slice AllowedCPUs=0-1 AllowedMemoryNodes=0 MemoryHigh=241590272 MemoryMax=268435456 TasksMax=64"
    );
    let dropin = std::fs::read_to_string(units.join("user-59931.slice.d/90-kloigos.conf")).unwrap();
    assert!(
        dropin.contains("[Slice]\nAllowedCPUs=0-1\n") && dropin.contains("MemoryMax=268435456\n"),
        "{dropin}"
    );
    if hybrid == Some(false) {
        let cpus = std::fs::read_to_string(group.join("cpuset.cpus")).unwrap();
        assert_eq!(cpus.trim(), "0-1", "the v1 cpuset group");
    }
    pass(&[]).ok();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        calls,
        "an unchanged slice was set again"
    );
    if hybrid == Some(false) {
        // The group gone (as after a reboot; the drop-in stays): only it is
        // set again, with no systemctl call.
        std::fs::remove_dir(group).unwrap();
        let r = pass(&[]);
        r.ok().err_has("already in place: only the step below");
        assert!(group.is_dir(), "the cpuset group was not set again");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            calls,
            "the properties were set again though only the cpuset group was missing"
        );
    }
    n.release(&bk.id);
    let plan = pass(&["--dry-run"]);
    plan.ok()
        .out_has("slices (systemd): remove the limits of uid 59931");
    if hybrid == Some(false) {
        plan.out_has(&format!(
            "slices (systemd): + cgroup v1 cpuset {}: its processes moved back to /sys/fs/cgroup/cpuset",
            group.display()
        ));
    }
    pass(&[]).ok();
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().last(), Some("daemon-reload"), "{calls}");
    assert!(!units.join("user-59931.slice.d").exists());
    assert!(
        !group.exists(),
        "the cpuset group stayed after the booking ended"
    );
}

/// Cpus_allowed_list of `pid` inside the container.
fn cpus_allowed_in(c: &kloigos_tests::nspawn::Container, pid: &str) -> String {
    c.read(&format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_else(|| panic!("no process {pid} in the container"))
        .trim()
        .to_string()
}

#[test]
fn systemd_backend_against_a_real_systemd_in_a_container() {
    kloigos_tests::require_root!();
    let rootfs = kloigos_tests::require_ok!(kloigos_tests::nspawn::rootfs());
    let p = Policy {
        tasks_max_per_unit: Some(64),
        ..policy(59935)
    };
    let n = HkNode::new(
        "hk-nspawn",
        p,
        "0-1",
        Some(1),
        None,
        json!({"slices": "systemd", "state_copy": "/var/lib/kloigos/state.json", "metrics_dir": null}),
    );
    n.cluster
        .store
        .update_node(&n.node, now(), |s| {
            s.node.mem_per_unit = Some(256 << 20);
            Ok(((), vec![]))
        })
        .unwrap();
    let dir = n.cluster.dir.path().to_path_buf();
    let dir_s = dir.to_string_lossy().to_string();
    let bin = kloigos_tests::bin("kloigos-housekeeper");
    let name = format!("khk{}", std::process::id());
    // In a v1 cpuset group of its own (on a hybrid host), so the
    // housekeeper's cpuset groups inside stay out of the host's root group.
    let c = match kloigos_tests::nspawn::Container::boot_in_own_cpuset(
        &rootfs,
        &name,
        &[
            (&dir, &dir_s, false),
            (&bin, "/usr/local/bin/kloigos-housekeeper", true),
        ],
    ) {
        Ok(c) => c,
        Err(why) => panic!("the container did not boot: {why}"),
    };
    let sh = |argv: &[&str]| c.must(argv);
    let cfg = n.config.to_string_lossy().to_string();
    let hk = |args: &[&str]| {
        let mut argv = vec![
            "/usr/local/bin/kloigos-housekeeper",
            "--once",
            "--config",
            &cfg,
        ];
        argv.extend_from_slice(args);
        sh(&argv)
    };
    let pass = || hk(&[]);
    // Where cpuset is inside the container (as the housekeeper sees it).
    let layout = cpuset_on_unified(|f| c.read(f));

    // A real user and a lingering one.
    sh(&["useradd", "-m", "-u", "59936", "khkreal"]);
    sh(&["useradd", "-m", "-u", "59937", "khkling"]);
    sh(&["loginctl", "enable-linger", "khkling"]);
    // logind starts the lingering user's manager at once; it fails in this
    // minbase root (see below), and logind then stops the user: the
    // manager, the runtime directory and the slice. While the slice's stop
    // job is queued systemd refuses to start a unit in it, so wait for the
    // end state: the manager failed and the slice gone (or, in a root
    // where the manager starts, running), and no job queued.
    let settled = wait_until(Duration::from_secs(60), || {
        let state = |unit: &str| c.exec(&["systemctl", "is-active", unit]).stdout;
        let done = match state("user@59937.service").trim() {
            "failed" => state("user-59937.slice").trim() == "inactive",
            "active" => true,
            _ => false,
        };
        done && c
            .exec(&["systemctl", "list-jobs", "--no-legend"])
            .stdout
            .trim()
            .is_empty()
    });
    assert!(
        settled,
        "the container's systemd did not settle within 60 s after enable-linger: {}",
        c.exec(&["systemctl", "list-jobs"]).stdout
    );
    let real = kloigos_tests::sys::TempUser {
        name: "khkreal".into(),
        uid: 59936,
        gid: 59936,
    };
    let ling = kloigos_tests::sys::TempUser {
        name: "khkling".into(),
        uid: 59937,
        gid: 59937,
    };
    let b_real = n.book(&real, 1, now(), 3600);
    let b_ling = n.book(&ling, 1, now(), 3600);
    std::mem::forget(real);
    std::mem::forget(ling);
    let real_cpus = b_real.cpus.to_string();
    let ling_cpus = b_ling.cpus.to_string();

    // Processes of both users before the first pass: a service of each in
    // their slice. (The lingering user's own manager, user@59937.service,
    // cannot start in this minbase root: no libpam-systemd, so no
    // XDG_RUNTIME_DIR; the service stands for it.)
    let main_pid = |unit: &str| c.show(unit, &["MainPID"])["MainPID"].clone();
    let start = |uid: &str, unit: &str| {
        sh(&[
            "systemd-run",
            &format!("--uid={uid}"),
            &format!("--slice=user-{uid}.slice"),
            &format!("--unit={unit}"),
            "sleep",
            "300",
        ]);
        main_pid(&format!("{unit}.service"))
    };
    let probe = start("59936", "khk-probe");
    let ling_pid = start("59937", "khk-ling");
    let cg = sh(&["cat", &format!("/proc/{probe}/cgroup")]).stdout;
    assert!(cg.contains("user-59936.slice"), "{cg}");
    let open = cpus_allowed_in(&c, &probe);
    assert_eq!(cpus_allowed_in(&c, &ling_pid), open);
    let kloigos_group = "/sys/fs/cgroup/cpuset/kloigos";

    if layout == Some(false) {
        // systemd-nspawn mounts the host's v1 controllers read-only: the plan
        // says AllowedCPUs cannot be applied, rather than failing.
        let plan = hk(&["--dry-run"]).stdout;
        assert!(
            plan.contains("AllowedCPUs is NOT applied: cpuset is only a cgroup v1 hierarchy here, mounted read-only at /sys/fs/cgroup/cpuset"),
            "{plan}"
        );
        // A real hybrid host mounts it read-write: so does the test from here on.
        c.cpuset_writable().unwrap();
        let plan = hk(&["--dry-run"]).stdout;
        assert!(
            plan.contains(&format!(
                "slices (systemd): + cgroup v1 cpuset {kloigos_group}/user-59936: cpuset.cpus={real_cpus} cpuset.mems=0, the processes of uid 59936 moved in"
            )) && plan.contains(&format!("{kloigos_group}/user-59937: cpuset.cpus={ling_cpus}")),
            "the plan shows no cpuset step:\n{plan}"
        );
    }

    let r = pass();
    assert!(r.stderr.contains("slice systemd set"), "{}", r.stderr);
    let props = [
        "AllowedCPUs",
        "AllowedMemoryNodes",
        "MemoryHigh",
        "MemoryMax",
        "TasksMax",
    ];
    let want = |cpus: &str| {
        [
            ("AllowedCPUs", cpus),
            ("AllowedMemoryNodes", "0"),
            ("MemoryHigh", "241590272"),
            ("MemoryMax", "268435456"),
            ("TasksMax", "64"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(c.show("user-59936.slice", &props), want(&real_cpus));
    assert_eq!(c.show("user-59937.slice", &props), want(&ling_cpus));

    // Confinement, for real.
    let confined = match layout {
        Some(on_unified) => {
            for (pid, cpus, who) in [
                (&probe, &real_cpus, "logged-in"),
                (&ling_pid, &ling_cpus, "lingering"),
            ] {
                assert_eq!(
                    &cpus_allowed_in(&c, pid),
                    cpus,
                    "a process of the {who} user is not confined to the booked CPUs ({}):\n{}",
                    if on_unified {
                        "cpuset on the unified hierarchy, applied by systemd"
                    } else {
                        "hybrid host, v1 cpuset step"
                    },
                    r.stderr
                );
            }
            if !on_unified {
                let cs = c.read(&format!("/proc/{probe}/cpuset"));
                assert_eq!(cs.trim(), "/kloigos/user-59936");
                eprintln!(
                    "CHECKED: hybrid host (cpuset only in cgroup v1): the housekeeper's v1 cpuset step confines \
                     the logged-in user to {real_cpus} and the lingering user to {ling_cpus} (of {open})"
                );
            }
            true
        }
        None => {
            kloigos_tests::skip::skip(&format!(
                "CPU confinement not checked: this host has no cpuset controller at all (neither on the \
                 unified hierarchy nor as a cgroup v1 hierarchy): Cpus_allowed_list stays {}",
                cpus_allowed_in(&c, &probe)
            ));
            false
        }
    };

    // A new process of the user (a new login) is confined by the next pass,
    // and nothing is set again.
    let probe2 = start("59936", "khk-probe2");
    if layout == Some(false) {
        let plan = hk(&["--dry-run"]).stdout;
        assert!(
            plan.contains(&format!(
                "slices (systemd): move 1 process(es) of uid 59936 into {kloigos_group}/user-59936: [{probe2}]"
            )),
            "{plan}"
        );
        let r = pass();
        assert!(
            r.stderr.contains("moved 1 process(es) of uid 59936"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("set:"), "set again:\n{}", r.stderr);
    }
    if confined {
        assert_eq!(cpus_allowed_in(&c, &probe2), real_cpus);
    }

    // The drop-in alone restores the limits (a reboot clears /run): drop the
    // runtime properties and reload.
    sh(&[
        "test",
        "-f",
        "/etc/systemd/system/user-59936.slice.d/90-kloigos.conf",
    ]);
    sh(&[
        "rm",
        "-rf",
        "/run/systemd/system.control/user-59936.slice.d",
    ]);
    sh(&["systemctl", "daemon-reload"]);
    assert_eq!(
        c.show("user-59936.slice", &props),
        want(&real_cpus),
        "limits lost on daemon-reload"
    );
    let r = pass();
    assert!(
        !r.stderr.contains("set:"),
        "an unchanged slice was set again:\n{}",
        r.stderr
    );

    if layout == Some(false) {
        // The cpuset group lost (it does not survive a reboot): the next
        // pass sets it again, and only it.
        let group = format!("{kloigos_group}/user-59936");
        for pid in c.read(&format!("{group}/cgroup.procs")).lines() {
            sh(&[
                "sh",
                "-c",
                &format!("echo {pid} > /sys/fs/cgroup/cpuset/cgroup.procs"),
            ]);
        }
        sh(&["rmdir", &group]);
        assert_eq!(cpus_allowed_in(&c, &probe), open);
        let r = pass();
        assert!(
            r.stderr.contains("user-59936.slice: AllowedCPUs=")
                && r.stderr.contains("already in place: only the step below"),
            "{}",
            r.stderr
        );
        assert_eq!(cpus_allowed_in(&c, &probe), real_cpus);
        assert_eq!(cpus_allowed_in(&c, &probe2), real_cpus);
    }

    // Bookings end: limits removed, the processes (kill is off) back on every CPU.
    n.release(&b_real.id);
    n.release(&b_ling.id);
    let r = pass();
    assert!(r.stderr.contains("limits removed"), "{}", r.stderr);
    for uid in ["59936", "59937"] {
        let now = c.show(&format!("user-{uid}.slice"), &props);
        assert_eq!(now["AllowedCPUs"], "", "{uid}: {now:?}");
        assert_eq!(now["MemoryMax"], "infinity", "{uid}: {now:?}");
        assert_ne!(now["TasksMax"], "64", "{uid}: {now:?}");
        assert_ne!(
            c.exec(&[
                "test",
                "-e",
                &format!("/etc/systemd/system/user-{uid}.slice.d/90-kloigos.conf")
            ])
            .code,
            0
        );
    }
    if confined {
        for (pid, who) in [
            (&probe, "logged-in"),
            (&probe2, "logged-in (second)"),
            (&ling_pid, "lingering"),
        ] {
            assert_eq!(
                cpus_allowed_in(&c, pid),
                open,
                "the {who} user's process kept its CPU limits after the booking ended"
            );
        }
    }
    if layout == Some(false) {
        assert_ne!(
            c.exec(&["test", "-e", kloigos_group]).code,
            0,
            "the kloigos cpuset group stayed after the last booking ended"
        );
    }
}

// ---------------------------------------------------------------- files, hooks, dry-run

#[test]
fn facts_local_copy_metrics_hooks_and_dry_run() {
    kloigos_tests::require_root!();
    let alice = TempUser::with_uid("khk-alice", 59961);
    let stray = TempUser::with_uid("khk-stray", 59962);
    let n = HkNode::new(
        "hk-files",
        policy(59960),
        "0-1",
        Some(1),
        Some("21000-21099"),
        json!({}),
    );
    let hook_out = n.hooks_dir.join("ran");
    let hook = n.hooks_dir.join("release.d/10-record");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$KLOIGOS_USER $KLOIGOS_UID $KLOIGOS_BOOKING $KLOIGOS_CPUS $KLOIGOS_PORTS\" >> {}\n",
            hook_out.display()
        ),
    )
    .unwrap();
    must("chmod", &["755", &hook.to_string_lossy()]);
    let bk = n.book(&alice, 1, now(), 3600);

    let t0 = now();
    n.pass(&[]).ok();
    // facts.json
    let facts: Facts = serde_json::from_slice(&std::fs::read(n.facts_path()).unwrap()).unwrap();
    assert_eq!(facts.node, n.node);
    assert!(facts.enforcing && facts.error.is_none());
    assert!((facts.heartbeat.as_second() - t0.as_second()).abs() <= 5);
    assert_eq!(facts.kloigos_version, "0.1.0");
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    assert_eq!(
        facts.cpus_online.as_ref().map(|c| c.to_string()),
        Some(online.trim().to_string())
    );
    assert!(
        facts.mem_total > 0 && facts.mem_available > 0 && facts.mem_available <= facts.mem_total
    );
    assert!(facts.uptime_s > 0);
    assert!(!facts.numa.is_empty());
    // The local copy for PAM: policy and this node's state, root-owned 0644.
    let copy_path = n.state_dir.join("state.json");
    let copy: LocalCopy = serde_json::from_slice(&std::fs::read(&copy_path).unwrap()).unwrap();
    assert_eq!(
        copy.state.as_ref(),
        Some(&n.cluster.store.node(&n.node).unwrap())
    );
    assert_eq!(copy.policy.min_uid, uid(59960));
    assert!(kloigos_core::gate::is_fresh(copy.copied_at, now(), 60));
    let meta = std::fs::metadata(&copy_path).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o644));
    // Metrics.
    let prom = std::fs::read_to_string(n.metrics_dir.join("kloigos.prom")).unwrap();
    assert!(
        prom.contains(
            "kloigos_node_units{state=\"booked\"} 1\nkloigos_node_units{state=\"free\"} 1\n"
        ),
        "{prom}"
    );
    assert!(prom.contains("\nkloigos_bookings_active 1\n"), "{prom}");
    let last: i64 = prom
        .lines()
        .find_map(|l| l.strip_prefix("kloigos_housekeeper_last_run_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((last - t0.as_second()).abs() <= 5);
    // Written atomically: no temp file left anywhere.
    for dir in [
        n.metrics_dir.clone(),
        n.state_dir.clone(),
        n.cluster.store.node_dir(&n.node),
    ] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(!name.contains(".tmp."), "{name} left in {}", dir.display());
        }
    }
    assert!(!hook_out.exists(), "no booking ended yet");

    // The booking ends: the hook runs once, with the booking's details.
    n.release(&bk.id);
    n.pass(&[]).ok();
    n.pass(&[]).ok();
    let ran = std::fs::read_to_string(&hook_out).unwrap();
    assert_eq!(ran, format!("khk-alice 59961 {} 0 21000-21049\n", bk.id));

    // --dry-run: a new booking and a stray process to kill are planned, nothing changes.
    let bk2 = n.book(&alice, 1, now(), 3600);
    let mut stray_proc = Reaped(spawn_as(&stray, &["sleep", "600"]));
    let dry_cfg = n.cluster.dir.path().join("hk-dry.json");
    n.write_config(&dry_cfg, json!({"kill": true}));
    let files = [
        n.facts_path(),
        copy_path.clone(),
        n.metrics_dir.join("kloigos.prom"),
        n.state_dir.join("housekeeper.json"),
        hook_out.clone(),
    ];
    let snapshot = || {
        files
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let r = Run::of(
        Command::new(kloigos_tests::bin("kloigos-housekeeper"))
            .args(["--dry-run", "--config"])
            .arg(&dry_cfg),
    );
    r.ok()
        .out_has("plan (nothing is changed)")
        .out_has("kill: khk-stray (uid 59962)")
        .out_has(&format!("{}", stray_proc.0.id()));
    assert!(stray_proc.alive(), "--dry-run killed a process");
    assert!(before == snapshot(), "--dry-run changed a file");
    let _ = bk2;
}

// ---------------------------------------------------------------- warnings

/// As the user: a process on a new pty (its controlling terminal); prints
/// what arrives on the pty within 10 s, then exits.
const ON_A_TERMINAL: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv("/bin/sleep", ["sleep", "30"])
print("ready", flush=True)
got, end = b"", time.time() + 10
while time.time() < end and b"ends in" not in got:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            got += os.read(fd, 4096)
        except OSError:
            break
print(got.decode(errors="replace"), flush=True)
os.kill(pid, 9)
"#;

#[test]
fn warns_a_user_on_their_terminal_before_the_booking_ends() {
    kloigos_tests::require_root!();
    let user = TempUser::with_uid("khk-warn", 59971);
    let n = HkNode::new(
        "hk-warn",
        policy(59970),
        "0-1",
        Some(1),
        None,
        json!({"warn_before_s": [300]}),
    );
    let bk = n.book(&user, 1, now(), 100);
    let mut term = Command::new("setpriv");
    term.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--init-groups", "/usr/bin/python3", "-c", ON_A_TERMINAL])
        .stdout(std::process::Stdio::piped());
    let mut child = Reaped(term.spawn().unwrap());
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The pty child must exist before the pass looks for terminals.
    assert!(wait_until(Duration::from_secs(5), || live_processes(
        user.uid
    ) >= 2));
    let r = n.pass(&[]);
    r.ok().err_has("warned khk-warn").err_has("(1 terminal(s))");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(
        rest.contains(&format!(
            "your booking {} on hk-warn ends in 2 minute(s)",
            bk.id
        )),
        "{rest}"
    );
    // Once per threshold: the next pass says nothing.
    let r = n.pass(&[]);
    assert!(!r.stderr.contains("warned"), "{}", r.stderr);
}

// ---------------------------------------------------------------- what is a node, who is managed

#[test]
fn a_broken_nodes_entry_is_a_degraded_pass_that_kills_nobody() {
    kloigos_tests::require_root!();
    let victim = TempUser::with_uid("khk-brk", 59925);
    // A band of one uid: no other test's users are in reach.
    let n = HkNode::new(
        "hk-broken",
        Policy {
            min_uid: uid(59925),
            max_uid: Some(uid(59925)),
            ..Policy::default()
        },
        "0-1",
        Some(1),
        None,
        json!({"kill": true}),
    );
    let mut sleeper = Reaped(spawn_as(&victim, &["sleep", "600"]));
    assert!(wait_until(Duration::from_secs(5), || live_processes(
        victim.uid
    ) == 1));
    let dir = n.cluster.store.node_dir(&n.node);
    let away = n.cluster.dir.path().join("node-away");
    std::fs::rename(&dir, &away).unwrap();
    let nodes = n.cluster.store.nodes_dir();
    let nodes_away = n.cluster.dir.path().join("nodes-away");
    type Step<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, Step<'_>, Step<'_>); 3] = [
        (
            "is not a directory",
            Box::new(|| std::fs::write(&dir, b"").unwrap()),
            Box::new(|| std::fs::remove_file(&dir).unwrap()),
        ),
        (
            "is a symbolic link",
            Box::new(|| std::os::unix::fs::symlink(&dir, &dir).unwrap()),
            Box::new(|| std::fs::remove_file(&dir).unwrap()),
        ),
        (
            "is not a directory",
            Box::new(|| {
                std::fs::rename(&nodes, &nodes_away).unwrap();
                std::fs::write(&nodes, b"").unwrap();
            }),
            Box::new(|| {
                std::fs::remove_file(&nodes).unwrap();
                std::fs::rename(&nodes_away, &nodes).unwrap();
            }),
        ),
    ];
    for (why, spoil, mend) in cases {
        spoil();
        let r = n.pass(&[]);
        r.code(3).err_has("nothing destructive").err_has(why);
        assert!(
            !r.stderr.contains("not a node of the cluster"),
            "{}",
            r.stderr
        );
        assert!(sleeper.alive(), "{why}: the pass killed:\n{}", r.stderr);
        mend();
    }
    // nodes/<node> a FUSE mount answering EIO (a soft NFS mount that timed out).
    std::fs::create_dir(&dir).unwrap();
    let eio = FuseMount::new(&dir, Behaviour::Eio);
    let r = n.pass(&[]);
    r.code(3)
        .err_has("nothing destructive")
        .err_has("os error 5");
    assert!(sleeper.alive(), "EIO: the pass killed:\n{}", r.stderr);
    drop(eio);
    std::fs::remove_dir(&dir).unwrap();
    // Whole again: the unbooked victim is ended.
    std::fs::rename(&away, &dir).unwrap();
    n.pass(&[]).ok();
    assert!(wait_until(Duration::from_secs(5), || !sleeper.alive()));
}

#[test]
fn users_far_above_60000_are_confined_while_booked_and_ended_after() {
    kloigos_tests::require_root!();
    let v1 = Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus");
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let cpuset = v1.exists() || v2.contains("cpuset");
    let all =
        std::fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.effective_cpus").unwrap_or_default();
    let _serial = host_cpuset();
    let ldap = TempUser::with_uid("khk-ldap", 70_001);
    // 200001, unless a subordinate range covers it here.
    let sssd = TempUser::with_uid("khk-sssd", kloigos_tests::pam::person_uid_from(200_001));
    // Only these two are in range: no pass here reaches another test's users.
    let p = Policy {
        min_uid: uid(70_001),
        max_uid: Some(uid(sssd.uid)),
        ..Policy::default()
    };
    let slices = if cpuset && all.trim() != "0" {
        "cgroup"
    } else {
        "none"
    };
    let n = HkNode::new(
        "hk-far",
        p,
        "0-1",
        Some(1),
        None,
        json!({"kill": true, "slices": slices}),
    );
    let _clean = [
        CgroupLeftovers::remove(ldap.uid),
        CgroupLeftovers::remove(sssd.uid),
    ];
    let mut procs = [
        Reaped(spawn_as(&ldap, &["sleep", "600"])),
        Reaped(spawn_as(&sssd, &["sleep", "600"])),
    ];
    assert!(wait_until(Duration::from_secs(5), || live_processes(
        ldap.uid
    ) == 1
        && live_processes(sssd.uid) == 1));
    let a = n.book(&ldap, 1, now(), 3600);
    let b = n.book(&sssd, 1, now(), 3600);
    let r = n.pass(&[]);
    r.ok();
    assert!(procs.iter_mut().all(Reaped::alive), "{}", r.stderr);
    if slices == "cgroup" {
        for (p, bk) in procs.iter().zip([&a, &b]) {
            assert_eq!(
                cpus_allowed(p.0.id()),
                bk.cpus.to_string(),
                "not confined:\n{}",
                r.stderr
            );
        }
    } else {
        kloigos_tests::skip::skip(
            "no cpuset controller on this host: confinement not observed, only the kill \
             (mount the cgroup v1 cpuset controller)",
        );
    }
    n.release(&a.id);
    n.release(&b.id);
    let r = n.pass(&[]);
    r.ok();
    assert!(
        wait_until(Duration::from_secs(5), || live_processes(ldap.uid) == 0
            && live_processes(sssd.uid) == 0),
        "processes left after release:\n{}",
        r.stderr
    );
    eprintln!(
        "confined and ended users at uids {} and {}",
        ldap.uid, sssd.uid
    );
}

/// The local state directory (lock, record, the login gate's copy) as a
/// link, then owned by another user: the pass refuses it, naming it, and
/// writes nothing through it; root's own directory gets the copy.
#[test]
fn a_linked_or_foreign_state_directory_is_refused_and_nothing_is_written_through_it() {
    kloigos_tests::require_root!();
    let n = HkNode::new("hk-linked", policy(59970), "0-1", Some(1), None, json!({}));
    let elsewhere = n.cluster.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &n.state_dir).unwrap();
    n.pass(&[])
        .code(3)
        .err_has(&format!("{}: is a symbolic link", n.state_dir.display()));
    let written = || std::fs::read_dir(&elsewhere).unwrap().count();
    assert_eq!(written(), 0, "written through the link");
    std::fs::remove_file(&n.state_dir).unwrap();
    std::fs::create_dir(&n.state_dir).unwrap();
    let stranger = nix::unistd::Uid::from_raw(4243);
    nix::unistd::chown(&n.state_dir, Some(stranger), None).unwrap();
    n.pass(&[])
        .code(3)
        .err_has(&format!("{}: owned by uid 4243", n.state_dir.display()));
    assert_eq!(std::fs::read_dir(&n.state_dir).unwrap().count(), 0);
    // Root's own directory: the same pass writes the copy (the test can fail).
    nix::unistd::chown(&n.state_dir, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    n.pass(&[]).ok();
    let copy: LocalCopy =
        serde_json::from_slice(&std::fs::read(n.state_dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(copy.state.map(|s| s.node.name), Some(n.node.clone()));
}
