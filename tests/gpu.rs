//! GPU booking: nodes whose units hold GPUs, `alloc --gpus`, placement
//! near the GPUs, the JSON shapes and GPU-hours, and the refusals.

use jiff::Timestamp;
use kloigos_core::facts::Facts;
use kloigos_core::names::NodeName;
use kloigos_tests::cluster::TempCluster;
use kloigos_tests::housekeeper::live_processes;
use kloigos_tests::poll::wait_until;
use kloigos_tests::uid;
use serde_json::{json, Value};
use std::time::Duration;

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

// The fence, with the kernel as the oracle: opening a character device
// 195:M that the device controller allows fails with ENXIO (no driver
// here), one it denies fails with EPERM. uid band 59900-59909 (passes here
// end nobody: "kill" stays off).

/// A process of `user` that, for each line on its stdin, opens each of
/// `names` in `dir` and answers one line: the errno name (or OPEN) of each.
struct Probe {
    child: kloigos_tests::housekeeper::Reaped,
    out: std::io::BufReader<std::process::ChildStdout>,
}

const PROBE: &str = r#"
import errno, os, sys
d, names = sys.argv[1], sys.argv[2:]
for _ in sys.stdin:
    out = []
    for n in names:
        try:
            os.close(os.open(os.path.join(d, n), os.O_RDWR))
            out.append("OPEN")
        except OSError as e:
            out.append(errno.errorcode.get(e.errno, str(e.errno)))
    print(" ".join(out), flush=True)
"#;

impl Probe {
    fn start(user: &kloigos_tests::sys::TempUser, dir: &std::path::Path, names: &[&str]) -> Probe {
        let mut args = vec![dir.as_os_str()];
        args.extend(names.iter().map(std::ffi::OsStr::new));
        Probe::python(user, PROBE, &args)
    }

    /// `script` run by python3 as `user` with `args`, answering a line for
    /// each line it is given.
    fn python(
        user: &kloigos_tests::sys::TempUser,
        script: &str,
        args: &[&std::ffi::OsStr],
    ) -> Probe {
        use std::process::{Command, Stdio};
        let mut child = Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--init-groups")
            .args(["/usr/bin/python3", "-u", "-c", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the probe");
        // A pass fences the user's processes it finds: wait until setpriv
        // has become the user, or a pass may still see it as root.
        let (pid, uid) = (child.id(), user.uid.to_string());
        let as_user = || {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid))
            })
        };
        assert!(
            kloigos_tests::poll::wait_until(std::time::Duration::from_secs(30), as_user),
            "the probe never ran as uid {uid}"
        );
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Probe {
            child: kloigos_tests::housekeeper::Reaped(child),
            out,
        }
    }

    /// What opening each device gives now.
    fn ask(&mut self) -> Vec<String> {
        use std::io::{BufRead, Write};
        let stdin = self.child.0.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"\n")
            .and_then(|_| stdin.flush())
            .expect("ask the probe");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("the probe's answer");
        assert!(!line.is_empty(), "the probe ended");
        line.split_whitespace().map(String::from).collect()
    }
}

/// Asserts that the probe's process is in the group `dir`.
fn assert_in_group(dir: &std::path::Path, p: &Probe) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    let pid = p.child.0.id().to_string();
    assert!(
        procs.lines().any(|l| l.trim() == pid),
        "process {pid} is not in {}: {procs}",
        dir.display()
    );
}

/// The system tests here share the devices hierarchy's `kloigos/` group and
/// the managed uid band: one at a time.
static SYSTEM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The cgroup v1 devices hierarchy the fence writes to, or what is missing.
fn devices_hierarchy() -> Result<std::path::PathBuf, String> {
    let devices = std::path::Path::new("/sys/fs/cgroup/devices");
    if devices.join("devices.deny").exists() {
        Ok(devices.to_path_buf())
    } else {
        Err(
            "no cgroup v1 devices hierarchy at /sys/fs/cgroup/devices: the fence needs the \
             kernel's device controller (mount -t cgroup -o devices none /sys/fs/cgroup/devices)"
                .into(),
        )
    }
}

/// Removes the test's device groups, whatever happened to the test.
struct Groups(Vec<std::path::PathBuf>);

impl Groups {
    /// The fence's groups of `uids` under `devices`.
    fn of(devices: &std::path::Path, uids: &[u32]) -> Groups {
        Groups(
            uids.iter()
                .map(|u| devices.join(format!("kloigos/user-{u}")))
                .collect(),
        )
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The device nodes the fence tests open: the four GPUs (minors 4-7, not
/// their indices), the control node, and the numbers of /dev/null,
/// /dev/fuse and /dev/kvm (which no fence may shut).
const NODES: [(&str, u32, u32); 8] = [
    ("nvidia4", 195, 4),
    ("nvidia5", 195, 5),
    ("nvidia6", 195, 6),
    ("nvidia7", 195, 7),
    ("nvidiactl", 195, 255),
    ("null", 1, 3),
    ("fuse", 10, 229),
    ("kvm", 10, 232),
];

/// A housekeeper node on `cpus` (one CPU per unit) that manages only the
/// uid band of these tests (59900-59909): other tests' users (other bands)
/// are left alone.
fn band_node(name: &str, cpus: &str) -> kloigos_tests::housekeeper::HkNode {
    use kloigos_core::policy::Policy;
    kloigos_tests::housekeeper::HkNode::new(
        name,
        Policy {
            min_uid: uid(59900),
            max_uid: Some(uid(59909)),
            ..Policy::default()
        },
        cpus,
        Some(1),
        None,
        json!({}),
    )
}

/// Gives `n`'s node the GPUs `set`.
fn set_gpus(n: &kloigos_tests::housekeeper::HkNode, set: &str) {
    n.cluster
        .store
        .update_node(&n.node, Timestamp::now(), |st| {
            st.node.gpus = Some(kloigos_core::gpuset::GpuSet::parse(set)?);
            Ok(((), vec![]))
        })
        .unwrap();
}

/// A 4-GPU node (one GPU per unit) with a fake driver tree, the
/// housekeeper config section `hk` merged over it (its `gpu` key by key), and [`NODES`] made in a
/// directory the users can reach.
struct FenceNode {
    n: kloigos_tests::housekeeper::HkNode,
    dev: tempfile::TempDir,
}

impl FenceNode {
    fn new(name: &str, hk: Value) -> FenceNode {
        use kloigos_tests::cmd::must;
        use std::os::unix::fs::PermissionsExt;

        let n = band_node(name, "0-3");
        let root = n.cluster.dir.path();
        for i in 0..4u32 {
            let bus = format!("0000:{:02x}:00.0", 0x10 + i);
            let g = root.join("proc/driver/nvidia/gpus").join(&bus);
            std::fs::create_dir_all(&g).unwrap();
            std::fs::write(
                g.join("information"),
                format!("Model: \t\t Fake GPU\nGPU UUID: \t GPU-fake-{i}\nBus Location: \t {bus}\nDevice Minor: \t {}\n", i + 4),
            )
            .unwrap();
        }
        set_gpus(&n, "0-3");
        let dev = tempfile::Builder::new()
            .prefix("kloigos-gpu-dev-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dev.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, major, minor) in NODES {
            let p = dev.path().join(name);
            must(
                "mknod",
                &[
                    "-m",
                    "666",
                    &p.to_string_lossy(),
                    "c",
                    &major.to_string(),
                    &minor.to_string(),
                ],
            );
        }
        let f = FenceNode { n, dev };
        f.configure(hk);
        f
    }

    /// Writes the housekeeper config: the fake driver tree, `hk` merged
    /// over it (its `gpu` key by key).
    fn configure(&self, hk: Value) {
        let root = self.n.cluster.dir.path();
        let mut section =
            json!({"gpu": {"proc_dir": root.join("proc"), "sys_dir": root.join("sys")}});
        for (k, v) in hk.as_object().into_iter().flatten() {
            match (section[k].as_object_mut(), v.as_object()) {
                (Some(gpu), Some(over)) => gpu.extend(over.clone()),
                _ => section[k] = v.clone(),
            }
        }
        self.n.write_config(&self.n.config, section);
    }

    /// Books one GPU for `user` (no account needed) for an hour.
    fn book(&self, user: &str, raw: u32) -> kloigos_core::booking::Booking {
        use kloigos_core::names::UserName;
        use kloigos_core::policy::Policy;
        use kloigos_core::state::{Request, Size};
        let now = Timestamp::now();
        let name = UserName::new(user).unwrap();
        let req = Request {
            user: name.clone(),
            uid: uid(raw),
            created_by: name,
            size: Size::Gpus(1),
            start: now,
            end: kloigos_core::when::plus_secs(now, 3600),
            note: Default::default(),
            held_elsewhere: 0,
        };
        self.n
            .cluster
            .store
            .update_node(&self.n.node, now, |st| {
                Ok((st.book(&req, &Policy::default(), now, &[])?, vec![]))
            })
            .unwrap()
    }

    /// A probe of `user` opening every one of [`NODES`].
    fn probe(&self, user: &kloigos_tests::sys::TempUser) -> Probe {
        let names: Vec<&str> = NODES.iter().map(|(n, _, _)| *n).collect();
        Probe::start(user, self.dev.path(), &names)
    }
}

/// What a probe answers: the four GPUs as given, then the control node,
/// /dev/null and /dev/fuse open to everyone (ENXIO: allowed, no driver;
/// OPEN for /dev/null), and /dev/kvm not shut (ENXIO or OPEN, as the
/// host's kvm module is there or not).
fn expect(gpus: [&str; 4], got: &[String]) {
    assert_eq!(got.len(), NODES.len(), "{got:?}");
    assert_eq!(&got[..4], gpus, "the GPUs: {got:?}");
    assert_eq!(
        &got[4..7],
        ["ENXIO", "OPEN", "OPEN"],
        "control node, null, fuse: {got:?}"
    );
    assert_ne!(got[7], "EPERM", "kvm shut: {got:?}");
}

const SHUT: [&str; 4] = ["EPERM"; 4];
const OPEN: [&str; 4] = ["ENXIO"; 4];

/// What every fence system test holds: the one-at-a-time lock, its two
/// users, and their groups under the hierarchy `base`, removed at the end.
struct FenceTest {
    // Dropped in this order: the users (their processes ended), their
    // groups (empty by then), and only then the lock.
    a: kloigos_tests::sys::TempUser,
    b: kloigos_tests::sys::TempUser,
    _groups: Groups,
    base: std::path::PathBuf,
    _one: std::sync::MutexGuard<'static, ()>,
}

/// A [`FenceTest`] for users `a` and `b` on the hierarchy `base`, or what
/// is missing.
fn fence_test(
    base: Result<std::path::PathBuf, String>,
    [a, b]: [(&str, u32); 2],
) -> Result<FenceTest, String> {
    use kloigos_tests::sys::TempUser;
    let base = base?;
    let one = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    Ok(FenceTest {
        _one: one,
        a: TempUser::with_uid(a.0, a.1),
        b: TempUser::with_uid(b.0, b.1),
        _groups: Groups::of(&base, &[a.1, b.1]),
        base,
    })
}

#[test]
fn the_kernel_fences_each_users_gpus_by_booking() {
    use kloigos_core::booking::BookingId;
    use kloigos_core::names::UserName;

    kloigos_tests::require_root!();
    let users = [("khg-alice", 59901), ("khg-bob", 59902)];
    let t = kloigos_tests::require_ok!(fence_test(devices_hierarchy(), users));
    let (alice, bob, devices) = (&t.a, &t.b, &t.base);
    let f = FenceNode::new("gpunode", json!({}));
    let n = &f.n;
    // carol (no account, no processes) holds GPU 0; alice then gets GPU 1.
    let carol = f.book("khg-carol", 59903);
    let a = f.book("khg-alice", 59901);
    assert_eq!(
        (
            carol.gpus.unwrap().to_string(),
            a.gpus.clone().unwrap().to_string()
        ),
        ("0".into(), "1".into())
    );

    let mut pa = f.probe(alice);
    let mut pb = f.probe(bob);
    // Without the fence every device number is allowed: the oracle's other side.
    expect(OPEN, &pa.ask());
    expect(OPEN, &pb.ask());

    n.pass(&[]).ok();
    // alice: her GPU (minor 5); carol's GPU is shut to her.
    expect(["EPERM", "ENXIO", "EPERM", "EPERM"], &pa.ask());
    // bob, booked nowhere: every GPU shut.
    expect(SHUT, &pb.ask());
    // A process alice starts from inside is born in the group.
    let child = std::process::Command::new("setpriv")
        .arg(format!("--reuid={}", alice.uid))
        .arg(format!("--regid={}", alice.gid))
        .arg("--init-groups")
        .args(["cat", "/proc/self/cgroup"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&child.stdout).contains("devices:/kloigos/"),
        "a process started from outside is not in the group until a pass"
    );
    assert_in_group(&devices.join("kloigos/user-59901"), &pa);

    // Released: alice is shut out of every GPU at the next pass.
    n.release(&BookingId::parse(&a.id.to_string()).unwrap());
    n.pass(&[]).ok();
    expect(SHUT, &pa.ask());
    expect(SHUT, &pb.ask());

    // An account the housekeeper no longer manages (now a bypass user) is
    // let out of its group, its processes running on.
    n.cluster
        .store
        .update_policy(|p| {
            p.bypass_users.push(UserName::new("khg-bob")?);
            Ok(())
        })
        .unwrap();
    n.pass(&[]).ok();
    expect(OPEN, &pb.ask());
    assert!(!devices.join("kloigos/user-59902").exists());
    n.cluster
        .store
        .update_policy(|p| {
            p.bypass_users.clear();
            Ok(())
        })
        .unwrap();
    n.pass(&[]).ok();
    expect(SHUT, &pb.ask());

    // Once a user's processes are gone, a pass removes their group.
    drop(pb);
    assert!(wait_until(Duration::from_secs(20), || live_processes(
        bob.uid
    ) == 0));
    n.pass(&[]).ok();
    assert!(!devices.join("kloigos/user-59902").exists());
    assert!(devices.join("kloigos/user-59901").exists());

    // --uninstall lifts the fence from the processes still running.
    kloigos_tests::cmd::Run::of(&mut n.housekeeper(&["--uninstall"])).ok();
    expect(OPEN, &pa.ask());
    assert!(!devices.join("kloigos/user-59901").exists());
}

/// Where cgroup2 is mounted (on this hybrid host `/sys/fs/cgroup/unified`),
/// or what is missing.
fn cgroup2_mount() -> Result<std::path::PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
        })
        .ok_or_else(|| {
            "no cgroup2 hierarchy mounted: the v2 fence needs one \
             (mount -t cgroup2 none /sys/fs/cgroup/unified)"
                .into()
        })
}

/// The id of the device program the housekeeper's record says it attached
/// for `uid`, if any.
fn attached_id(n: &kloigos_tests::housekeeper::HkNode, uid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(n.state_dir.join("housekeeper.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["gpu_bpf"][uid.to_string()]["id"].as_u64()
}

/// A process of `user` that, between a line "go" and the next line on its
/// stdin, opens `path` as fast as it can, then answers how often each
/// errno came back (`EPERM:N ENXIO:M`).
fn hammer(user: &kloigos_tests::sys::TempUser, path: &std::path::Path) -> Probe {
    let script = r#"
import errno, os, select, sys
sys.stdin.readline()
print("going", flush=True)
seen = {}
while not select.select([sys.stdin], [], [], 0)[0]:
    for _ in range(200):
        try:
            os.close(os.open(sys.argv[1], os.O_RDWR))
            k = "OPEN"
        except OSError as e:
            k = errno.errorcode.get(e.errno, str(e.errno))
        seen[k] = seen.get(k, 0) + 1
print(" ".join(f"{k}:{v}" for k, v in sorted(seen.items())), flush=True)
sys.stdin.read()
"#;
    Probe::python(user, script, &[path.as_os_str()])
}

#[test]
fn the_cgroup2_device_program_fences_each_users_gpus_by_booking() {
    kloigos_tests::require_root!();
    kloigos_tests::require_ok!(kloigos_tests::skip::need("strace", "strace"));
    let frank_gina = [("khg-frank", 59908), ("khg-gina", 59909)];
    let t = kloigos_tests::require_ok!(fence_test(cgroup2_mount(), frank_gina));
    // The v1 backend off: only the program on cgroup2 can refuse.
    let (f, cg2) = (
        FenceNode::new("bpfnode", json!({"gpu": {"fence_backend": "bpf"}})),
        &t.base,
    );
    let (n, frank, gina) = (&f.n, &t.a, &t.b);
    let carol = f.book("khg-carol", 59903);
    let b = f.book("khg-frank", 59908);
    assert_eq!(
        (carol.gpus.unwrap().to_string(), b.gpus.unwrap().to_string()),
        ("0".into(), "1".into())
    );
    let mut pf = f.probe(frank);
    let mut pg = f.probe(gina);
    expect(OPEN, &pf.ask());
    expect(OPEN, &pg.ask());

    let r = n.pass(&[]);
    let frank_dir = cg2.join("kloigos/user-59908");
    let gina_dir = cg2.join("kloigos/user-59909");
    r.ok()
        .err_has(&format!("attached to {}", frank_dir.display()))
        .err_has(&format!("attached to {}", gina_dir.display()));
    // frank: his GPU (minor 5); carol's and the others shut. gina: all shut.
    expect(["EPERM", "ENXIO", "EPERM", "EPERM"], &pf.ask());
    expect(SHUT, &pg.ask());
    assert_in_group(&frank_dir, &pf);
    // No v1 group took part.
    assert!(!std::path::Path::new("/sys/fs/cgroup/devices/kloigos/user-59908").exists());
    let frank_prog = attached_id(n, 59908).expect("frank's program in the record");
    let gina_prog = attached_id(n, 59909).expect("gina's program in the record");

    // An idle pass keeps the programs: nothing attached, the same ids;
    // its only bpf(2) calls are one query per user.
    let trace = n.cluster.dir.path().join("bpf.trace");
    let mut traced = std::process::Command::new("strace");
    traced
        .args(["-f", "-qq", "-e", "trace=bpf", "-o"])
        .arg(&trace)
        .arg(kloigos_tests::bin("kloigos-housekeeper"))
        .arg("--config")
        .arg(&n.config)
        .arg("--once");
    let r = kloigos_tests::cmd::Run::of(&mut traced);
    r.ok();
    assert!(!r.stderr.contains("device program"), "{}", r.stderr);
    let calls = std::fs::read_to_string(&trace).unwrap();
    let calls: Vec<&str> = calls.lines().filter(|l| l.contains("bpf(")).collect();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(
        calls.iter().all(|l| l.contains("BPF_PROG_QUERY")),
        "{calls:#?}"
    );
    assert_eq!(attached_id(n, 59908), Some(frank_prog));
    assert_eq!(attached_id(n, 59909), Some(gina_prog));
    expect(["EPERM", "ENXIO", "EPERM", "EPERM"], &pf.ask());

    // gina books GPU 2: her program is replaced. A process of hers opens
    // carol's GPU in a loop all through the pass: never let through (the
    // new program is attached before the old one goes).
    let mut h = hammer(gina, &f.dev.path().join("nvidia4"));
    n.pass(&[]).ok().err_has("moved 1 process(es) of uid 59909");
    let g = f.book("khg-gina", 59909);
    assert_eq!(g.gpus.unwrap().to_string(), "2");
    let said = h.ask();
    assert_eq!(said, ["going"]);
    let r = n.pass(&[]);
    let seen = h.ask();
    r.ok()
        .err_has(&format!("attached to {}", gina_dir.display()));
    assert!(
        !r.stderr
            .contains(&format!("attached to {}", frank_dir.display())),
        "frank's list did not change: {}",
        r.stderr
    );
    assert!(
        seen.iter().all(|s| s.starts_with("EPERM:")) && !seen.is_empty(),
        "carol's GPU was not shut all through the change: {seen:?}"
    );
    let gina_new = attached_id(n, 59909).unwrap();
    assert_ne!(gina_new, gina_prog);
    assert_eq!(attached_id(n, 59908), Some(frank_prog));
    // Her GPU opens: the old program, which shut it, is gone.
    expect(["EPERM", "EPERM", "ENXIO", "EPERM"], &pg.ask());

    // Released: frank is shut out of every GPU at the next pass.
    n.release(&b.id);
    n.pass(&[]).ok();
    expect(SHUT, &pf.ask());
    expect(["EPERM", "EPERM", "ENXIO", "EPERM"], &pg.ask());

    // Once a user's processes are gone, a pass removes their group.
    drop(pg);
    drop(h);
    assert!(wait_until(Duration::from_secs(20), || live_processes(
        gina.uid
    ) == 0));
    n.pass(&[]).ok();
    assert!(!gina_dir.exists());
    assert_eq!(attached_id(n, 59909), None);
    assert!(frank_dir.exists());

    // --uninstall lifts the fence from the processes still running.
    kloigos_tests::cmd::Run::of(&mut n.housekeeper(&["--uninstall"])).ok();
    expect(OPEN, &pf.ask());
    assert!(!frank_dir.exists());
}

#[test]
fn switching_the_fence_backend_lifts_the_other_ones_fence() {
    kloigos_tests::require_root!();
    let cg2 = kloigos_tests::require_ok!(cgroup2_mount());
    let users = [("khg-alice", 59901), ("khg-bob", 59902)];
    let t = kloigos_tests::require_ok!(fence_test(devices_hierarchy(), users));
    let _v2_groups = Groups::of(&cg2, &[59901]);
    let (v1_dir, v2_dir) = (
        t.base.join("kloigos/user-59901"),
        cg2.join("kloigos/user-59901"),
    );
    let f = FenceNode::new("switchnode", json!({"gpu": {"fence_backend": "v1"}}));
    f.book("khg-carol", 59903);
    let a = f.book("khg-alice", 59901);
    let mut pa = f.probe(&t.a);
    f.n.pass(&[]).ok();
    expect(["EPERM", "ENXIO", "EPERM", "EPERM"], &pa.ask());
    assert!(v1_dir.exists() && !v2_dir.exists());

    // alice books GPU 2 as the node moves to the device program: the old
    // v1 rules, which shut GPU 2, must not outlive the switch.
    let more = f.book("khg-alice", 59901);
    assert_eq!(more.gpus.unwrap().to_string(), "2");
    f.configure(json!({"gpu": {"fence_backend": "bpf"}}));
    f.n.pass(&[])
        .ok()
        .err_has("the other backend's fence lifted for uid(s) [59901]");
    expect(["EPERM", "ENXIO", "ENXIO", "EPERM"], &pa.ask());
    assert!(!v1_dir.exists() && v2_dir.exists());
    assert_in_group(&v2_dir, &pa);

    // And back: the program goes with its group.
    f.n.release(&a.id);
    f.configure(json!({"gpu": {"fence_backend": "v1"}}));
    f.n.pass(&[])
        .ok()
        .err_has("the other backend's fence lifted for uid(s) [59901]");
    expect(["EPERM", "EPERM", "ENXIO", "EPERM"], &pa.ask());
    assert!(v1_dir.exists() && !v2_dir.exists());
    kloigos_tests::cmd::Run::of(&mut f.n.housekeeper(&["--uninstall"])).ok();
    expect(OPEN, &pa.ask());
}

/// Opens each of its arguments after the first (a directory) and prints
/// one line: EPERM, ENXIO or OPEN for each (the container has no python).
const SH_PROBE: &str = r#"d=$1; shift; out=""
for n in "$@"; do
  if e=$( (: <>"$d/$n") 2>&1 ); then r=OPEN
  else case $e in
    *"not permitted"*) r=EPERM;; *"No such device or address"*) r=ENXIO;;
    *) r=OTHER; echo "$n: $e" >&2;; esac
  fi
  out="$out $r"
done
echo $out"#;

#[test]
fn the_device_program_lives_beside_systemds_in_the_user_slice_and_survives_daemon_reload() {
    use kloigos_tests::nspawn::Container;

    kloigos_tests::require_root!();
    let rootfs = kloigos_tests::require_ok!(kloigos_tests::nspawn::rootfs());
    // The container's users share the host's uids, which the other tests
    // here end with pkill -u: theirs are kept apart, and one at a time.
    let _one = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    // No v1 devices hierarchy in the container: `auto` picks the program.
    let f = FenceNode::new("sdnode", json!({"slices": "systemd"}));
    let n = &f.n;
    let dir = n.cluster.dir.path().to_path_buf();
    let dir_s = dir.to_string_lossy().to_string();
    let bin = kloigos_tests::bin("kloigos-housekeeper");
    let c = Container::boot_unified_with_bpf(
        &rootfs,
        &format!("kgs{}", std::process::id()),
        &[
            (&dir, &dir_s, false),
            (&bin, "/usr/local/bin/kloigos-housekeeper", true),
        ],
    )
    .unwrap_or_else(|why| panic!("the container did not boot: {why}"));
    let sh = |argv: &[&str]| c.must(argv);
    // The housekeeper as the container's systemd runs it (a service, under
    // nspawn's seccomp filter and capabilities), not through nsenter.
    let cfg = n.config.to_string_lossy().to_string();
    let hk_argv = ["/usr/local/bin/kloigos-housekeeper", "--config", &cfg];
    let hk = |args: &[&str]| c.service(&[], &[&hk_argv[..], args].concat());
    let pass = || hk(&["--once"]);
    // The device nodes, on the container's root (its /tmp is nodev).
    sh(&["mkdir", "-p", "/var/lib/kgpu"]);
    for (name, major, minor) in NODES {
        let p = format!("/var/lib/kgpu/{name}");
        sh(&[
            "mknod",
            "-m",
            "666",
            &p,
            "c",
            &major.to_string(),
            &minor.to_string(),
        ]);
    }
    let names: Vec<&str> = NODES.iter().map(|(n, _, _)| *n).collect();
    // A new process in `uid`'s slice opens each node.
    let probe = |uid: u32| -> Vec<String> {
        let (user, slice) = (format!("--uid={uid}"), format!("--slice=user-{uid}.slice"));
        let argv = [
            &["sh", "-c", SH_PROBE, "probe", "/var/lib/kgpu"][..],
            &names,
        ]
        .concat();
        c.service(&[&user, &slice], &argv)
            .stdout
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // hal holds GPU 1 (carol GPU 0); ivy holds none. Each has a
    // process in their slice, which keeps the slice there.
    for (user, uid) in [("khg-hal", "59900"), ("khg-ivy", "59906")] {
        sh(&["useradd", "-M", "-u", uid, user]);
        sh(&[
            "systemd-run",
            &format!("--uid={uid}"),
            &format!("--slice=user-{uid}.slice"),
            &format!("--unit=keep-{uid}"),
            "sleep",
            "3600",
        ]);
    }
    f.book("khg-carol", 59903);
    let b = f.book("khg-hal", 59900);
    assert_eq!(b.gpus.as_ref().unwrap().to_string(), "1");
    // systemd's own device program on hal's slice (all devices allowed:
    // the oracle stays readable), attached with BPF_F_ALLOW_MULTI.
    let systemd_devices = |acc: &str| {
        sh(&[
            "systemctl",
            "set-property",
            "--runtime",
            "user-59900.slice",
            "DevicePolicy=auto",
            &format!("DeviceAllow=char-* {acc}"),
            &format!("DeviceAllow=block-* {acc}"),
        ])
    };
    systemd_devices("rwm");
    expect(OPEN, &probe(59900));

    let r = pass();
    let slice = "/sys/fs/cgroup/user.slice/user-59900.slice";
    assert!(
        r.stderr.contains(&format!("attached to {slice}")),
        "{}",
        r.stderr
    );
    let hal = ["EPERM", "ENXIO", "EPERM", "EPERM"];
    expect(hal, &probe(59900));
    expect(SHUT, &probe(59906));
    // The slice properties kloigos sets live in the same unit.
    assert_eq!(
        c.show("user-59900.slice", &["AllowedCPUs"])["AllowedCPUs"],
        b.cpus.to_string()
    );
    // Idle: nothing attached again.
    let r = pass();
    assert!(!r.stderr.contains("device program"), "{}", r.stderr);

    // daemon-reload, and systemd replacing its own program: ours stays
    // (the next pass finds it attached, and attaches nothing).
    sh(&["systemctl", "daemon-reload"]);
    expect(hal, &probe(59900));
    systemd_devices("rw");
    expect(hal, &probe(59900));
    let r = pass();
    assert!(!r.stderr.contains("device program"), "{}", r.stderr);
    expect(hal, &probe(59900));

    // The slice removed and created again (the user's last process ended,
    // then a new login): the new group has no program until the next pass,
    // which attaches one.
    sh(&[
        "systemctl",
        "stop",
        "keep-59900.service",
        "user-59900.slice",
    ]);
    assert!(wait_until(Duration::from_secs(30), || {
        c.exec(&["test", "-d", slice]).code != 0
    }));
    sh(&[
        "systemd-run",
        "--uid=59900",
        "--slice=user-59900.slice",
        "--unit=keep-59900",
        "sleep",
        "3600",
    ]);
    expect(OPEN, &probe(59900));
    let r = pass();
    assert!(
        r.stderr.contains(&format!("attached to {slice}")),
        "{}",
        r.stderr
    );
    expect(hal, &probe(59900));

    // Released: shut out of every GPU.
    n.release(&b.id);
    pass();
    expect(SHUT, &probe(59900));

    // --uninstall detaches ours and leaves systemd's.
    hk(&["--uninstall"]);
    expect(OPEN, &probe(59900));
    expect(OPEN, &probe(59906));
}

/// A stand-in for ssh that records the booking's variables it was given.
fn env_ssh(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("env-ssh");
    let log = dir.join("env.log");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nenv | grep -E '^(CUDA_VISIBLE_DEVICES|KLOIGOS_(BOOKING|CPUS|PORTS))=' | sort > {}\necho \"$@\" >> {}\n",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    (p, log)
}

#[test]
fn run_sets_cuda_visible_devices_and_the_booking_variables() {
    let c = cluster();
    c.run(&["admin", "set-node", "gpu4", "--ports", "20000-20399"])
        .ok();
    let (ssh, log) = env_ssh(c.dir.path());
    let ssh = ssh.to_str().unwrap();
    // The caller's own CUDA_VISIBLE_DEVICES names GPUs they do not hold: replaced.
    let mut cmd = c.kloigos();
    cmd.env("CUDA_VISIBLE_DEVICES", "0,1,2,3").args([
        "run",
        "--ssh",
        ssh,
        "-w",
        "gpu4",
        "--gpus",
        "2",
        "-t",
        "10m",
        "--",
        "nvidia-smi",
    ]);
    kloigos_tests::cmd::Run::of(&mut cmd).ok();
    let got = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        got,
        "CUDA_VISIBLE_DEVICES=0,1\nKLOIGOS_BOOKING=gpu4:1\nKLOIGOS_CPUS=0-31\nKLOIGOS_PORTS=20000-20199\ngpu4 -- nvidia-smi\n"
    );
    // With UUIDs in the node's facts, the UUIDs (they survive renumbering).
    facts(&c, "gpu4", &[(0, 0), (1, 0), (2, 1), (3, 1)]);
    c.run(&[
        "run", "--ssh", ssh, "-w", "gpu4", "--gpus", "1", "--", "true",
    ])
    .ok();
    let got = std::fs::read_to_string(&log).unwrap();
    assert!(
        got.starts_with("CUDA_VISIBLE_DEVICES=GPU-0-gpu4\nKLOIGOS_BOOKING=gpu4:2\n"),
        "{got}"
    );
    // A node without GPUs: the booking's variables, no CUDA_VISIBLE_DEVICES.
    c.run(&["run", "--ssh", ssh, "-w", "plain", "--", "true"])
        .ok();
    let got = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        got,
        "KLOIGOS_BOOKING=plain:1\nKLOIGOS_CPUS=0-7\nKLOIGOS_PORTS=\nplain -- true\n"
    );
}

/// A process of `user` holding `paths` open (opened before any pass).
fn hold_open(
    user: &kloigos_tests::sys::TempUser,
    paths: &[&std::path::Path],
) -> kloigos_tests::housekeeper::Reaped {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .args([
            "/usr/bin/python3",
            "-c",
            "import os, sys, time\nfds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]\nprint('open', flush=True)\ntime.sleep(600)",
        ])
        .args(paths)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a holder");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the holder's word");
    assert_eq!(line.trim(), "open", "the holder could not open {paths:?}");
    kloigos_tests::housekeeper::Reaped(child)
}

#[test]
fn a_stray_holding_a_gpu_it_does_not_hold_is_warned_then_ended_after_grace() {
    use kloigos_tests::cmd::must;
    use std::os::unix::fs::PermissionsExt;

    kloigos_tests::require_root!();
    let users = [("khg-dave", 59904), ("khg-erin", 59905)];
    let t = kloigos_tests::require_ok!(fence_test(devices_hierarchy(), users));
    let (dave, erin) = (&t.a, &t.b);
    // Two GPUs declared by device path. Nodes without a driver cannot be
    // held open, so they carry the numbers of /dev/full and /dev/net/tun
    // (denied only in the groups of managed users, uids 59900 and up).
    let dev = tempfile::Builder::new()
        .prefix("kloigos-gpu-dev-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dev.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let gpu0 = dev.path().join("gpu0");
    let gpu1 = dev.path().join("gpu1");
    must(
        "mknod",
        &["-m", "444", &gpu0.to_string_lossy(), "c", "1", "7"],
    );
    must(
        "mknod",
        &["-m", "444", &gpu1.to_string_lossy(), "c", "10", "200"],
    );
    let n = band_node("straynode", "0-1");
    let config = |grace: u64| json!({"grace_s": grace, "gpu": {"devices": [&gpu0, &gpu1]}});
    n.write_config(&n.config, config(3600));
    set_gpus(&n, "0-1");
    let bd = n.book(dave, 1, Timestamp::now(), 3600);
    let be = n.book(erin, 1, Timestamp::now(), 3600);
    assert_eq!(bd.gpus.unwrap().to_string(), "0");
    assert_eq!(be.gpus.unwrap().to_string(), "1");
    // Opened before the fence: dave's own GPU, erin's GPU by dave, erin's own.
    let mut dave_own = hold_open(dave, &[&gpu0]);
    let mut stray = hold_open(dave, &[&gpu1]);
    let mut erin_own = hold_open(erin, &[&gpu1]);
    let stray_pid = stray.0.id();

    let r = n.pass(&[]);
    r.ok().err_has(&format!(
        "GPU stray: process {stray_pid} of uid 59904 holds device 10:200"
    ));
    assert_eq!(
        r.stderr.matches("GPU stray: process").count(),
        1,
        "{}",
        r.stderr
    );
    // Within the grace: warned only, and not warned twice.
    assert!(stray.alive());
    let r = n.pass(&[]);
    r.ok();
    assert!(!r.stderr.contains("GPU stray"), "{}", r.stderr);
    assert!(stray.alive());

    // The grace is over: the stray is ended, the rightful holders stay.
    n.write_config(&n.config, config(0));
    n.pass(&[]).ok().err_has(&format!(
        "GPU stray: ended process {stray_pid} of uid 59904"
    ));
    assert!(wait_until(Duration::from_secs(20), || !stray.alive()));
    assert!(dave_own.alive() && erin_own.alive());
    n.pass(&[]).ok();
    assert!(dave_own.alive() && erin_own.alive());
}

#[test]
fn facts_list_the_gpus_with_utilization_sampled_at_most_every_few_minutes() {
    use std::os::unix::fs::PermissionsExt;

    kloigos_tests::require_root!();
    let n = band_node("factsnode", "0-1");
    let root = n.cluster.dir.path().to_path_buf();
    for (i, numa) in [(0u32, "1"), (1, "-1")] {
        let bus = format!("0000:{:02x}:00.0", 0x20 + i);
        let g = root.join("proc/driver/nvidia/gpus").join(&bus);
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(
            g.join("information"),
            format!("Model: \t\t Fake A100\nGPU UUID: \t GPU-fake-{i}\nBus Location: \t {bus}\nDevice Minor: \t {}\n", 10 + i),
        )
        .unwrap();
        let p = root.join("sys/bus/pci/devices").join(&bus);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("numa_node"), format!("{numa}\n")).unwrap();
    }
    n.write_config(
        &n.config,
        json!({"gpu": {"proc_dir": root.join("proc"), "sys_dir": root.join("sys"), "fence": false}}),
    );
    // An nvidia-smi that counts its calls.
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = root.join("smi-calls");
    std::fs::write(
        bin.join("nvidia-smi"),
        format!(
            "#!/bin/sh\necho x >> {}\necho 'GPU-fake-0, 37, 1024, 16384'\necho 'GPU-fake-1, 0, [N/A], 16384'\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("nvidia-smi"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    let pass = || {
        let mut c = n.housekeeper(&["--once"]);
        c.env("PATH", &path);
        kloigos_tests::cmd::Run::of(&mut c).ok();
    };
    pass();
    let f = n.cluster.store.facts(&n.node).expect("facts.json");
    let g = &f.gpus;
    assert_eq!(g.len(), 2);
    assert_eq!((g[0].index, g[0].minor, g[0].major), (0, 10, 195));
    assert_eq!(g[0].uuid.as_deref(), Some("GPU-fake-0"));
    assert_eq!(
        (g[0].name.as_str(), g[0].bus_id.as_str()),
        ("Fake A100", "0000:20:00.0")
    );
    assert_eq!((g[0].numa_node, g[1].numa_node), (Some(1), None));
    assert_eq!(
        (g[0].utilization, g[0].memory_used),
        (Some(37), Some(1 << 30))
    );
    assert_eq!(
        (g[1].utilization, g[1].memory_used, g[1].memory_total),
        (Some(0), None, Some(16 << 30))
    );
    // GPU 1 shows 0%: idle from this pass on; GPU 0 works.
    let idle_from = g[1].idle_since.expect("GPU 1 idle");
    assert_eq!(g[0].idle_since, None);
    // The next passes reuse the sample: nvidia-smi ran once.
    pass();
    pass();
    assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 1);
    let f = n.cluster.store.facts(&n.node).expect("facts.json");
    assert_eq!(f.gpus[0].utilization, Some(37));
    // The idle streak carries on from its start.
    assert_eq!(f.gpus[1].idle_since, Some(idle_from));
}

#[test]
fn info_marks_a_gpu_booking_idle_after_the_time_given() {
    let c = cluster();
    let b = c
        .run(&["--json", "alloc", "-w", "gpu4", "--gpus", "2", "-t", "4h"])
        .ok()
        .json();
    let uid = b["uid"].as_u64().unwrap();
    let now = Timestamp::now();
    let ago = |h: i64| (now - jiff::SignedDuration::from_hours(h)).to_string();
    // GPU 0 idle for 3 h, GPU 1 for 2 h, the user's processes for 5 h.
    let f: Facts = serde_json::from_value(json!({
        "version": 1, "node": "gpu4", "heartbeat": now.to_string(),
        "gpus": [{"index": 0, "minor": 0, "bus_id": "0000:01:00.0", "utilization": 0, "idle_since": ago(3)},
                 {"index": 1, "minor": 1, "bus_id": "0000:02:00.0", "utilization": 0, "idle_since": ago(2)},
                 {"index": 2, "minor": 2, "bus_id": "0000:03:00.0", "utilization": 90}],
        "users": [{"user": b["user"], "uid": uid, "processes": 2, "cpu_load": 0.0, "idle_since": ago(5)}],
    }))
    .unwrap();
    c.store.write_facts(&f).unwrap();
    let idle = |after: &str| {
        let v = c
            .run(&["--json", "info", "gpu4", "--idle-after", after])
            .ok()
            .json();
        v["nodes"][0]["idle"].clone()
    };
    let listed = idle("1h");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["booking"], b["id"]);
    assert_eq!(listed[0]["since"], ago(2));
    assert_eq!(idle("3h"), json!([]));
    c.run(&["info", "gpu4"]).ok().out_has("IDLE 2h");
    c.run(&["info", "--idle-after", "soon"])
        .code(2)
        .err_has("--idle-after");
}

#[test]
fn the_pam_session_hook_sets_the_bookings_variables_over_ssh_and_never_denies() {
    use kloigos_core::names::UserName;
    use kloigos_core::policy::Policy;
    use kloigos_core::state::{Request, Size, Topology};
    use kloigos_tests::pam::{module, user, Sshd, SyslogSink};

    kloigos_tests::require_root!();
    // Its user's uid is the system's next free one, maybe in the band the
    // fence tests manage.
    let _one = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    let c = TempCluster::new();
    let node = format!("n-sess-{}", std::process::id() % 100_000);
    c.add_node(&node, "0-3", Some(1), None);
    let name = NodeName::new(&node).unwrap();
    let u = user(&format!("kgs{}", std::process::id() % 100_000), &[]);
    let now = Timestamp::now();
    let topo = Topology {
        gpu_uuid: (0..4).map(|i| (i, format!("GPU-sess-{i}"))).collect(),
        ..Topology::default()
    };
    // Someone else holds GPU 0; the user gets GPU 1.
    let booking = c
        .store
        .update_node(&name, now, |st| {
            st.node.gpus = Some(kloigos_core::gpuset::GpuSet::parse("0-3")?);
            for (who, raw) in [("kgs-other", 59_907), (u.name.as_str(), u.uid)] {
                let n = UserName::new(who)?;
                let req = Request {
                    user: n.clone(),
                    uid: uid(raw),
                    created_by: n,
                    size: Size::Gpus(1),
                    start: now,
                    end: kloigos_core::when::plus_secs(now, 3600),
                    note: Default::default(),
                    held_elsewhere: 0,
                };
                st.book_in(&req, &Policy::default(), now, &topo)?;
            }
            Ok((st.bookings[1].clone(), vec![]))
        })
        .unwrap();
    assert_eq!(booking.gpus.as_ref().unwrap().to_string(), "1");
    let cfg = c.dir.path().join("pam-config.json");
    std::fs::write(
        &cfg,
        json!({"shared": c.shared(), "node": node, "pam": {"timeout_ms": 3000},
               "housekeeper": {"state_copy": c.dir.path().join("copy.json")}})
        .to_string(),
    )
    .unwrap();
    let sink = SyslogSink::new();
    let sshd = Sshd::start(&sink, &format!("config={}", cfg.display()));
    sshd.authorize(&u.name);
    let stack = |session_args: &str| {
        std::fs::write(
            sshd.dir.path().join("pam.d/sshd"),
            format!(
                "auth required pam_deny.so\naccount required {m} config={c}\n\
                 session optional {m} {session_args}\nsession required pam_permit.so\n\
                 password required pam_deny.so\n",
                m = module().display(),
                c = cfg.display()
            ),
        )
        .unwrap();
    };
    stack(&format!("config={} debug", cfg.display()));
    let r = sshd.ssh(&u.name, &["env"]);
    assert_eq!(r.code, 0, "login failed: {r:?}\n{}", sshd.log());
    for want in [
        "CUDA_VISIBLE_DEVICES=GPU-sess-1".to_string(),
        format!("KLOIGOS_BOOKING={}", booking.id),
        "KLOIGOS_CPUS=1".to_string(),
        "KLOIGOS_PORTS=".to_string(),
    ] {
        assert!(
            r.stdout.lines().any(|l| l == want),
            "env lacks {want}:\n{}",
            r.stdout
        );
    }
    // A session hook that cannot read its configuration lets the login through, without variables.
    stack("config=/nonexistent/kloigos.json");
    let r = sshd.ssh(&u.name, &["env"]);
    assert_eq!(r.code, 0, "the session hook denied: {r:?}\n{}", sshd.log());
    assert!(!r.stdout.contains("KLOIGOS_BOOKING"), "{}", r.stdout);
    assert!(
        sink.wait_for(
            0,
            &["pam_kloigos(sshd:session)", "no variables set"],
            std::time::Duration::from_secs(5)
        )
        .is_some(),
        "{:#?}",
        sink.lines()
    );
}
