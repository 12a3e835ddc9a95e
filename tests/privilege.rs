//! Privilege system tests (as root): the built `kloigos` installed setuid to
//! a throwaway service account in a scratch dir, throwaway users alice,
//! bob (hostile) and an admin, and every way bob might get at alice's
//! bookings or the shared tree. Where a refusal is expected, the state file
//! must be byte-identical afterwards.
//!
//! Each test builds its own install (unique user and node names), so they
//! run in parallel; see `kloigos_tests::setuid` for how commands run as a
//! user (setpriv) in a mount namespace whose /etc carries the install's
//! config.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kloigos_core::cpuset::CpuSet;
use kloigos_core::enforce;
use kloigos_core::names::NodeName;
use kloigos_core::store::{Store, Trust};
use kloigos_tests::poll::wait_until;
use kloigos_tests::setuid::{As, Install};
use kloigos_tests::sys::TempGroup;

/// A unique short tag per test and process (user names stay under 32 chars).
fn tag(t: &str) -> String {
    format!("{t}{}", std::process::id() % 100_000)
}

fn owner_mode(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.mode() & 0o7777)
}

/// alice books one unit for an hour; returns the booking id.
fn alice_books(i: &Install) -> String {
    let b = i
        .kloigos(
            As::User(&i.alice),
            &["--json", "alloc", "-w", &i.node, "-t", "1h"],
        )
        .ok()
        .json();
    assert_eq!(b["user"], i.alice.name.as_str());
    b["id"].as_str().expect("id").to_string()
}

#[test]
fn the_tree_is_owned_by_the_service_account_whoever_writes() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("ow"), &[]);
    alice_books(&i);
    // root writes as the service account too (files keep one owner).
    i.kloigos(
        As::Root,
        &["alloc", "-w", &i.node, "-u", &i.bob.name, "-t", "1h"],
    )
    .ok();
    let svc = i.svc.uid;
    assert_eq!(owner_mode(&i.shared()), (svc, 0o755));
    assert_eq!(owner_mode(&i.shared().join("cluster.json")), (svc, 0o644));
    assert_eq!(owner_mode(&i.shared().join("nodes")), (svc, 0o755));
    assert_eq!(owner_mode(&i.node_dir()), (svc, 0o755));
    assert_eq!(owner_mode(&i.state_path()), (svc, 0o644));
    assert_eq!(
        owner_mode(&i.node_dir().join("journal.jsonl")),
        (svc, 0o644)
    );
    // The lock file is readable by nobody else: no user can hold it.
    assert_eq!(owner_mode(&i.node_dir().join("lock")), (svc, 0o600));
    assert_eq!(owner_mode(&i.bin()), (svc, 0o4755));
    let st = Store::new(i.shared(), Trust::service(svc))
        .node(&NodeName::new(&i.node).unwrap())
        .unwrap();
    assert_eq!(st.bookings.len(), 2);
}

#[test]
fn bob_cannot_touch_alices_bookings_and_admin_can() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("au"), &[]);
    let id = alice_books(&i);
    let before = i.state_bytes();
    let bob = As::User(&i.bob);
    let refusals: Vec<(Vec<&str>, &str)> = vec![
        (vec!["release", &id], "may act only on their own bookings"),
        (vec!["kill", &id], "may act only on their own bookings"),
        (
            vec!["extend", &id, "-t", "+1h"],
            "may act only on their own bookings",
        ),
        (
            vec!["release", "--all", "-u", &i.alice.name],
            "may act only on their own bookings",
        ),
        (
            vec!["release", "-w", &i.node, "-u", &i.alice.name],
            "may act only on their own bookings",
        ),
        (
            vec!["alloc", "-w", &i.node, "-u", &i.alice.name],
            "may act only on their own bookings",
        ),
        (
            vec!["admin", "drain", &i.node],
            "`admin drain` needs an admin",
        ),
        (
            vec!["admin", "resume", &i.node],
            "`admin resume` needs an admin",
        ),
        (
            vec!["admin", "set-node", &i.node, "--cpus", "0-1"],
            "`admin set-node` needs an admin",
        ),
        (
            vec!["admin", "del-node", &i.node, "--force"],
            "`admin del-node` needs an admin",
        ),
        (
            vec!["admin", "add-node", "evil", "--cpus", "0-1"],
            "`admin add-node` needs an admin",
        ),
        (vec!["admin", "policy", "max_duration=1w"], "needs an admin"),
        (vec!["admin", "fsck", "--repair"], "needs an admin"),
        (vec!["admin", "init"], "needs root"),
    ];
    let cluster = i.cluster_bytes();
    for (args, why) in &refusals {
        let r = i.kloigos(bob, args);
        r.code(1).err_has(why);
        assert_eq!(
            i.state_bytes(),
            before,
            "`{}` changed state.json",
            args.join(" ")
        );
        assert_eq!(
            i.cluster_bytes(),
            cluster,
            "`{}` changed cluster.json",
            args.join(" ")
        );
    }
    assert!(!i.shared().join("nodes/evil").exists());
    // The admin (listed in cluster.json) may: release alice's booking, drain, resume.
    let adm = As::User(&i.admin);
    i.kloigos(adm, &["release", &id])
        .ok()
        .out_has(&format!("released {id}"));
    i.kloigos(adm, &["admin", "drain", &i.node, "-r", "maintenance"])
        .ok();
    let info = i
        .kloigos(As::User(&i.alice), &["--json", "info"])
        .ok()
        .json();
    assert!(
        info["nodes"][0]["drained"].is_object() || info["nodes"][0]["drained"] == true,
        "{info}"
    );
    i.kloigos(As::User(&i.alice), &["alloc", "-w", &i.node])
        .code(1);
    i.kloigos(adm, &["admin", "resume", &i.node]).ok();
    // The journal names who did it.
    let journal = std::fs::read_to_string(i.node_dir().join("journal.jsonl")).unwrap();
    assert!(
        journal
            .lines()
            .any(|l| l.contains(&i.admin.name) && l.contains("release")),
        "{journal}"
    );
}

#[test]
fn the_admin_group_from_cluster_json_is_an_admin() {
    kloigos_tests::require_root!();
    let t = tag("ag");
    let g = TempGroup::create(&format!("kp{t}g"));
    let i = Install::new(&t, &[&g.name]);
    let id = alice_books(&i);
    let before = i.state_bytes();
    i.kloigos(As::User(&i.bob), &["release", &id]).code(1);
    assert_eq!(i.state_bytes(), before);
    i.kloigos(
        As::User(&i.admin),
        &["admin", "policy", &format!("admin_group={}", g.name)],
    )
    .ok();
    // bob is now in the admin group: the same command succeeds.
    i.kloigos(As::User(&i.bob), &["release", &id]).ok();
    assert_ne!(i.state_bytes(), before);
}

/// A python3 program (run as bob) that tries each raw file operation and
/// prints `name ERRNO` (or `name OK`).
const RAW_WRITES: &str = r#"
import errno, fcntl, os, sys
node, shared = sys.argv[1], sys.argv[2]
state, lock = node + "/state.json", node + "/lock"
def t(name, f):
    try:
        r = f()
        if name == "flock-lock":
            pass
        print(name, "OK")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
t("open-state-rw", lambda: os.open(state, os.O_RDWR))
t("truncate-state", lambda: os.truncate(state, 0))
t("append-journal", lambda: os.open(node + "/journal.jsonl", os.O_WRONLY | os.O_APPEND))
t("create-in-node-dir", lambda: os.open(node + "/state.json.tmp.x.1", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
t("symlink-tmp", lambda: os.symlink("/etc/passwd", node + "/state.json.tmp.x.2"))
t("rename-state", lambda: os.rename(state, node + "/old"))
t("unlink-state", lambda: os.unlink(state))
t("chmod-state", lambda: os.chmod(state, 0o666))
t("open-lock", lambda: fcntl.flock(os.open(lock, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB))
t("open-cluster-rw", lambda: os.open(shared + "/cluster.json", os.O_RDWR))
t("create-in-root", lambda: os.open(shared + "/cluster.json.tmp.x.1", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
t("mkdir-node", lambda: os.mkdir(shared + "/nodes/evil"))
t("rename-node-dir", lambda: os.rename(node, shared + "/nodes/moved"))
"#;

#[test]
fn bob_cannot_write_lock_or_rename_state_files_directly() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("rw"), &[]);
    alice_books(&i);
    let before = i.state_bytes();
    let snap = i.snapshot();
    let node_dir = i.node_dir();
    let r = i.python(
        As::User(&i.bob),
        RAW_WRITES,
        &[node_dir.to_str().unwrap(), i.shared().to_str().unwrap()],
    );
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{}", r.stdout);
    for l in &lines {
        assert!(
            l.ends_with(" EACCES") || l.ends_with(" EPERM"),
            "bob could: {l}\n{}",
            r.stdout
        );
    }
    assert_eq!(i.state_bytes(), before);
    assert_eq!(i.snapshot(), snap);
    // The same program as the service account succeeds at the first step: the test can fail.
    let svc = i.python(
        As::User(&i.svc),
        "import os,sys; os.open(sys.argv[1], os.O_RDWR); print('open-state-rw OK')",
        &[i.state_path().to_str().unwrap()],
    );
    svc.ok().out_has("open-state-rw OK");
}

#[test]
fn overrides_drop_to_the_caller_who_then_cannot_write_the_real_tree() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("ov"), &[]);
    alice_books(&i);
    let before = i.state_bytes();
    let bob = As::User(&i.bob);
    let shared = i.shared();
    let shared_s = shared.to_str().unwrap();
    // A config of bob's own that points at the real tree.
    let cfg = i.write_file(
        "bob-config.json",
        &serde_json::json!({ "shared": shared }).to_string(),
        0o644,
    );
    i.give(&cfg, &i.bob);
    let cfg_s = cfg.to_str().unwrap();
    let snap = i.snapshot();
    let env = [("PATH", "/usr/bin:/bin"), ("KLOIGOS_CONFIG", cfg_s)];
    type Try<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)]);
    let tries: Vec<Try> = vec![
        (vec!["--shared", shared_s, "alloc", "-w", &i.node], &[]),
        (
            vec!["--shared", shared_s, "alloc", "-w", &i.node, "--wait=1s"],
            &[],
        ),
        (vec!["--config", cfg_s, "alloc", "-w", &i.node], &[]),
        (vec!["alloc", "-w", &i.node], &env),
        (vec!["--config", cfg_s, "release", "--all"], &[]),
    ];
    for (args, env) in &tries {
        let r = if env.is_empty() {
            i.kloigos(bob, args)
        } else {
            i.kloigos_env(bob, env, args)
        };
        r.code(3).err_has("Permission denied");
        assert_eq!(
            i.state_bytes(),
            before,
            "`{}` changed state.json",
            args.join(" ")
        );
    }
    // The real tree's rules still apply: bob is no admin there, and it exists already.
    i.kloigos(
        bob,
        &[
            "--shared", shared_s, "admin", "add-node", "evil", "--cpus", "0",
        ],
    )
    .code(1)
    .err_has("needs an admin");
    i.kloigos(bob, &["--shared", shared_s, "admin", "init"])
        .code(1)
        .err_has("already exists");
    assert_eq!(i.snapshot(), snap);
    // The override works on bob's own tree: it runs as bob.
    let own = i.dir.path().join("bob-tree");
    std::fs::create_dir(&own).unwrap();
    i.give(&own, &i.bob);
    let own_shared = own.join("shared");
    let own_s = own_shared.to_str().unwrap();
    i.kloigos(
        bob,
        &["--shared", own_s, "admin", "init", "--admin", &i.bob.name],
    )
    .ok();
    i.kloigos(
        bob,
        &[
            "--shared", own_s, "admin", "add-node", "mine", "--cpus", "0-1",
        ],
    )
    .ok();
    i.kloigos(bob, &["--shared", own_s, "alloc", "-w", "mine"])
        .ok();
    assert_eq!(
        owner_mode(&own_shared.join("nodes/mine/state.json")).0,
        i.bob.uid
    );
}

/// A shared object whose constructor leaves a mark named after the uids
/// of whatever process loads it.
const PRELOAD_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/preload-%d-%d", MARKS, (int)getuid(), (int)geteuid());
    int fd = open(p, O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
}
"#;

fn marks(i: &Install) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(i.marks())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn environment_tricks_have_no_effect() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("en"), &[]);
    let bob = As::User(&i.bob);
    let d = i.dir.path();
    // LD_PRELOAD: a library that marks whoever loads it.
    let src = i.write_file("evil.c", PRELOAD_C, 0o644);
    let so = d.join("evil.so");
    kloigos_tests::cmd::must(
        "cc",
        &[
            "-shared",
            "-fPIC",
            &format!("-DMARKS=\"{}\"", i.marks().display()),
            "-o",
            so.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    std::fs::set_permissions(&so, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let so_s = so.to_str().unwrap();
    // Control: a plain program as bob does load it (so the check below can fail).
    let argv: Vec<OsString> = vec!["/usr/bin/true".into()];
    kloigos_tests::cmd::Run::of(&mut i.command(bob, &[("LD_PRELOAD", so_s)], &argv)).ok();
    assert_eq!(
        marks(&i),
        vec![format!("preload-{}-{}", i.bob.uid, i.bob.uid)]
    );
    std::fs::remove_file(
        i.marks()
            .join(format!("preload-{}-{}", i.bob.uid, i.bob.uid)),
    )
    .unwrap();
    // PATH: stand-ins for every program kloigos might run, each leaving a mark.
    let fake = d.join("fakebin");
    std::fs::create_dir(&fake).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for p in [
        "ssh",
        "nft",
        "hostname",
        "sh",
        "id",
        "getent",
        "systemctl",
        "git",
        "uname",
        "kloigos",
    ] {
        i.write_file(
            &format!("fakebin/{p}"),
            &format!(
                "#!/bin/sh\n: > {}/path-{p}-$(/usr/bin/id -u)\n",
                i.marks().display()
            ),
            0o755,
        );
    }
    let fake_path = format!("{}:/usr/bin:/bin", fake.display());
    let tz_file = i.write_file("tz-trap", "not a zone file", 0o644);
    let tz = format!(":{}", tz_file.display());
    let hostile = [
        ("PATH", fake_path.as_str()),
        ("LD_PRELOAD", so_s),
        ("LD_LIBRARY_PATH", d.to_str().unwrap()),
        ("IFS", "/"),
        ("TZ", "Pacific/Kiritimati"),
        ("LANG", "xx_XX.UTF-8"),
        ("LC_ALL", "xx_XX.UTF-8"),
        ("LOCPATH", d.to_str().unwrap()),
        ("TMPDIR", d.to_str().unwrap()),
        ("NO_COLOR", "1"),
    ];
    // Booking at 23:59 in the cluster's zone (UTC): the caller's TZ must not move it.
    let b = i
        .kloigos_env(
            bob,
            &hostile,
            &[
                "--json", "alloc", "-w", &i.node, "--at", "23:59", "-t", "1m",
            ],
        )
        .ok()
        .json();
    assert!(b["start"].as_str().unwrap().ends_with("T23:59:00Z"), "{b}");
    let calm = [("PATH", "/usr/bin:/bin"), ("NO_COLOR", "1")];
    let weird_tz = [
        ("PATH", "/usr/bin:/bin"),
        ("NO_COLOR", "1"),
        ("TZ", tz.as_str()),
    ];
    for args in [
        vec!["--json", "info"],
        vec!["--json", "list", "--all"],
        vec!["list"],
        vec!["check-login", &i.bob.name, &i.node],
    ] {
        let a = i.kloigos_env(bob, &calm, &args);
        let h = i.kloigos_env(bob, &hostile, &args);
        let w = i.kloigos_env(bob, &weird_tz, &args);
        assert_eq!((a.code, &a.stderr), (h.code, &h.stderr), "{args:?}");
        // Lines with the time left or the next free time move with the clock; the rest must match.
        let stable = |s: &str| {
            s.lines()
                .filter(|l| !l.contains(" left") && !l.contains("next_free"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(stable(&a.stdout), stable(&h.stdout), "{args:?}");
        assert_eq!(stable(&a.stdout), stable(&w.stdout), "{args:?}");
    }
    i.kloigos_env(bob, &hostile, &["release", "--all"]).ok();
    i.kloigos_env(bob, &hostile, &["doctor"]);
    assert_eq!(
        marks(&i),
        Vec::<String>::new(),
        "code chosen by the caller ran inside kloigos"
    );
}

/// Starts `kloigos ARGS` as `who` behind a shell that prints its pid and
/// waits for a line on stdin before exec'ing (the pid is kept across exec).
fn start_paused(i: &Install, who: As, args: &[&str]) -> (std::process::Child, u32) {
    let mut argv: Vec<OsString> = vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo $$; read go; exec \"$@\"".into(),
        "sh".into(),
        i.bin().into(),
    ];
    argv.extend(args.iter().map(OsString::from));
    let mut c = i.command(who, &[("PATH", "/usr/bin:/bin"), ("NO_COLOR", "1")], &argv);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().parse().unwrap())
}

fn host_part() -> String {
    let h = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    h.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[test]
fn symlinks_planted_where_tmp_files_go_are_never_followed() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("sy"), &[]);
    // A place the service account may write, where a followed link would create a file.
    let target_dir = i.dir.path().join("svc-owned");
    std::fs::create_dir(&target_dir).unwrap();
    i.give(&target_dir, &i.svc);
    let victim = target_dir.join("victim");
    // bob cannot plant anything in the tree (his attempt is the RAW_WRITES test's
    // symlink-tmp line); root plants here, as a stand-in for a compromised writer.
    let (child, pid) = start_paused(
        &i,
        As::User(&i.admin),
        &["admin", "policy", "max_duration=3d"],
    );
    let cluster = i.cluster_bytes();
    let link = i
        .shared()
        .join(format!("cluster.json.tmp.{}.{pid}", host_part()));
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut child = child;
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("File exists"), "{stderr}");
    assert!(!victim.exists(), "the planted link was followed");
    assert_eq!(i.cluster_bytes(), cluster);
    std::fs::remove_file(&link).unwrap();
    // In a node directory, the writer sweeps stray tmp entries under the lock: the link goes, unfollowed.
    let (mut child, pid) = start_paused(&i, As::User(&i.alice), &["alloc", "-w", &i.node]);
    let link = i
        .node_dir()
        .join(format!("state.json.tmp.{}.{pid}", host_part()));
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!victim.exists(), "the planted link was followed");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the planted link was not swept"
    );
    let m = std::fs::symlink_metadata(i.state_path()).unwrap();
    assert!(m.file_type().is_file() && m.uid() == i.svc.uid);
}

#[test]
fn node_names_that_could_escape_are_refused() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("nn"), &[]);
    alice_books(&i);
    let before = i.state_bytes();
    let snap = i.snapshot();
    let long = "a".repeat(64);
    let bad = ["../x", "a/b", "", &long, "a\x01b", "a\nb", "..", "/etc"];
    for who in [As::User(&i.bob), As::User(&i.admin)] {
        for n in bad {
            let id = format!("{n}:1");
            for args in [
                vec!["alloc", "-w", n],
                vec!["info", n],
                vec!["release", &id],
                vec!["extend", &id, "-t", "+1h"],
                vec!["check-login", &i.bob.name, n],
                vec!["release", "-w", n],
                vec!["admin", "add-node", n, "--cpus", "0"],
                vec!["admin", "drain", n],
            ] {
                let r = i.kloigos(who, &args);
                if matches!(who, As::User(u) if u.uid == i.bob.uid) && args[0] == "admin" {
                    // bob is refused as a non-admin before the name is even looked at.
                    r.code(1).err_has("needs an admin");
                    continue;
                }
                assert_eq!(r.code, 2, "{args:?} exit {}: {}", r.code, r.stderr);
                let named = r.stderr.contains("invalid node name")
                    || r.stderr.contains("invalid booking id");
                assert!(named, "{args:?}: {}", r.stderr);
            }
        }
    }
    assert_eq!(i.state_bytes(), before);
    assert_eq!(i.snapshot(), snap);
}

/// The stand-in for ssh used by `run`/`ssh` here: drops the host and `--`
/// and runs the rest locally (a test fixture; the real ssh is exercised by
/// the PAM tests).
const FAKE_SSH: &str = "#!/bin/sh\nshift; [ \"$1\" = -- ] && shift; exec \"$@\"\n";

/// Prints real/effective/saved uids and gids, the groups, and one variable.
const IDS: &str = "import os; print(os.getresuid(), os.getresgid(), sorted(os.getgroups()), os.environ.get('BOBS_VAR'))";

#[test]
fn commands_run_by_run_and_ssh_run_as_the_caller() {
    kloigos_tests::require_root!();
    let t = tag("ru");
    let g = TempGroup::create(&format!("kp{t}x"));
    let i = Install::new(&t, &[&g.name]);
    let ssh = i.write_file("bin/fake-ssh", FAKE_SSH, 0o755);
    let ssh_s = ssh.to_str().unwrap();
    let bob = As::User(&i.bob);
    let env = [
        ("PATH", "/usr/bin:/bin"),
        ("NO_COLOR", "1"),
        ("BOBS_VAR", "kept"),
    ];
    let extra = nix::unistd::Group::from_name(&g.name)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let mut groups = vec![i.bob.gid, extra];
    groups.sort();
    let want = format!(
        "({b}, {b}, {b}) ({g}, {g}, {g}) {groups:?} kept",
        b = i.bob.uid,
        g = i.bob.gid
    );
    let r = i.kloigos_env(
        bob,
        &env,
        &[
            "run",
            "--ssh",
            ssh_s,
            "-w",
            &i.node,
            "-t",
            "10m",
            "--",
            "/usr/bin/python3",
            "-c",
            IDS,
        ],
    );
    r.ok().err_has("booked");
    assert_eq!(r.stdout.trim(), want, "stderr: {}", r.stderr);
    // `id` says the same.
    let r = i.kloigos_env(
        bob,
        &env,
        &[
            "run",
            "--ssh",
            ssh_s,
            "-w",
            &i.node,
            "-t",
            "10m",
            "--",
            "/usr/bin/id",
        ],
    );
    r.ok();
    assert!(
        r.stdout.starts_with(&format!(
            "uid={}({}) gid={}",
            i.bob.uid, i.bob.name, i.bob.gid
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&g.name) && !r.stdout.contains(&i.svc.name),
        "{}",
        r.stdout
    );
    // run released what it booked; the bookings were made by the service account.
    let list = i.kloigos(bob, &["--json", "list"]).ok().json();
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(owner_mode(&i.state_path()).0, i.svc.uid);
    // ssh into a booking: the same identity.
    let b = i
        .kloigos(bob, &["--json", "alloc", "-w", &i.node])
        .ok()
        .json();
    let r = i.kloigos_env(
        bob,
        &env,
        &[
            "ssh",
            "--ssh",
            ssh_s,
            b["id"].as_str().unwrap(),
            "--",
            "/usr/bin/python3",
            "-c",
            IDS,
        ],
    );
    r.ok();
    assert_eq!(r.stdout.trim(), want);
}

/// The uids on a process's `Uid:` line and whether `sig` is in its blocked set.
fn proc_status(pid: u32) -> Option<(Vec<u32>, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uids = s
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let blk = s
        .lines()
        .find(|l| l.starts_with("SigBlk:"))?
        .split_whitespace()
        .nth(1)?;
    Some((uids, u64::from_str_radix(blk, 16).ok()?))
}

const KILL: &str = r#"
import errno, os, signal, sys
pid = int(sys.argv[1])
for s in ["SIGSTOP", "SIGKILL", "SIGTERM", "SIGINT", "SIGTSTP", "SIGHUP", "SIGALRM", "SIGUSR1"]:
    try:
        os.kill(pid, getattr(signal, s)); print(s, "OK")
    except OSError as e:
        print(s, errno.errorcode[e.errno])
"#;

#[test]
fn a_writer_holding_the_lock_cannot_be_signalled_by_users() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("sg"), &[]);
    let node = NodeName::new(&i.node).unwrap();
    let store = Store::new(i.shared(), Trust::service(i.svc.uid));
    // The test holds the node's lock, so alice's alloc waits inside its critical section.
    let held = store.lock(&node).unwrap();
    let (mut child, pid) = start_paused(
        &i,
        As::User(&i.alice),
        &["alloc", "-w", &i.node, "-t", "1h"],
    );
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let svc = i.svc.uid;
    let tstp = 1u64 << (libc_sig(nix::sys::signal::Signal::SIGTSTP) - 1);
    let waiting = wait_until(Duration::from_secs(10), || {
        proc_status(pid).is_some_and(|(u, blk)| u == vec![svc; 4] && blk & tstp != 0)
    });
    assert!(
        waiting,
        "alloc never reached its critical section as the service account: {:?}",
        proc_status(pid)
    );
    for who in [&i.bob, &i.alice] {
        let r = i.python(As::User(who), KILL, &[&pid.to_string()]);
        r.ok();
        for l in r.stdout.lines() {
            assert!(
                l.ends_with(" EPERM"),
                "{} could signal the writer: {l}",
                who.name
            );
        }
        assert_eq!(r.stdout.lines().count(), 8);
    }
    // It is still there, and finishes cleanly once the lock is free.
    assert!(proc_status(pid).is_some());
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = store.node(&node).unwrap();
    assert!(st.problems().is_empty(), "{:?}", st.problems());
    assert_eq!(st.bookings.len(), 1);
    assert_eq!(st.bookings[0].user.as_str(), i.alice.name);
}

fn libc_sig(s: nix::sys::signal::Signal) -> u32 {
    s as i32 as u32
}

#[test]
fn readers_refuse_state_files_someone_else_could_have_written() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("tr"), &[]);
    alice_books(&i);
    let alice = As::User(&i.alice);
    let state = i.state_path();
    let state_s = state.display().to_string();
    // Owned by bob (as if he had managed to write it).
    i.give(&state, &i.bob);
    i.kloigos(alice, &["alloc", "-w", &i.node])
        .code(3)
        .err_has(&state_s)
        .err_has(&format!("owned by uid {}", i.bob.uid));
    // check-login shows what PAM would do: refuse (on_error), naming the problem.
    i.kloigos(alice, &["check-login", &i.alice.name, &i.node])
        .code(1)
        .out_has("decided from: on_error")
        .out_has("refusing to trust it");
    i.give(&state, &i.svc);
    // Group-writable.
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
    let before = i.state_bytes();
    i.kloigos(alice, &["alloc", "-w", &i.node])
        .code(3)
        .err_has(&state_s)
        .err_has("mode 664 lets others write it");
    assert_eq!(i.state_bytes(), before);
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // A world-writable node directory.
    std::fs::set_permissions(
        i.node_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    i.kloigos(alice, &["alloc", "-w", &i.node])
        .code(3)
        .err_has(&i.node_dir().display().to_string())
        .err_has("lets others write it");
    std::fs::set_permissions(
        i.node_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // cluster.json owned by bob: nothing works.
    let cluster = i.shared().join("cluster.json");
    i.give(&cluster, &i.bob);
    i.kloigos(alice, &["info"])
        .code(3)
        .err_has("cluster.json")
        .err_has("not by a trusted owner");
    i.give(&cluster, &i.svc);
    assert_eq!(i.state_bytes(), before);
    i.kloigos(alice, &["alloc", "-w", &i.node]).ok();
}

#[test]
fn doctor_reports_a_good_install_and_names_what_breaks_it() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("dr"), &[]);
    std::fs::create_dir(i.etc().join("pam.d")).unwrap();
    i.write_file(
        "etc/pam.d/sshd",
        "@include common-account\naccount required pam_kloigos.so\n",
        0o644,
    );
    i.write_file(
        "etc/pam.d/common-account",
        "account required pam_unix.so\n",
        0o644,
    );
    // A fresh heartbeat, written as the housekeeper would (as the service account).
    let facts = serde_json::json!({"version": 1, "node": i.node, "heartbeat": jiff::Timestamp::now().to_string(), "enforcing": true});
    let fp = i.node_dir().join("facts.json");
    std::fs::write(&fp, facts.to_string()).unwrap();
    i.give(&fp, &i.svc);
    let statuses = |r: &kloigos_tests::cmd::Run| -> Vec<(String, String)> {
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["check"].as_str().unwrap().to_string(),
                    f["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let bob = As::User(&i.bob);
    // The node spec (0-3) names CPUs a smaller host lacks: doctor names
    // them and the set-node fix; after the fix the CPUs check is silent.
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let online = CpuSet::parse(online.trim()).unwrap();
    let spec = CpuSet::parse("0-3").unwrap();
    if let Some(lacks) = enforce::missing_cpus(&spec, Some(&online)) {
        let fit = enforce::present(&spec, &online).unwrap_or(online);
        i.kloigos(bob, &["doctor"])
            .code(1)
            .out_has(&format!(
                "FAIL  cpus: the spec of {} names CPUs {lacks} that this host does not have",
                i.node
            ))
            .out_has(&format!("kloigos admin set-node {} --cpus {fit}", i.node));
        i.kloigos(
            As::User(&i.admin),
            &["admin", "set-node", &i.node, "--cpus", &fit.to_string()],
        )
        .ok();
    }
    let r = i.kloigos(bob, &["--json", "doctor"]);
    let all_ok: Vec<(String, String)> = [
        "config",
        "binary",
        "service-account",
        "shared-tree",
        "locking",
        "clock",
        "pam",
        "housekeeper",
        "nft",
    ]
    .iter()
    .map(|c| (c.to_string(), "ok".to_string()))
    .collect();
    assert_eq!(statuses(&r), all_ok, "{}", r.stdout);
    assert_eq!(r.code, 0);
    i.kloigos(bob, &["doctor"])
        .ok()
        .out_has("ok    binary: ")
        .out_has("doctor: 9 ok, 0 warning(s), 0 failure(s)");
    // A `sufficient` before the module: a warning, still exit 0.
    i.write_file(
        "etc/pam.d/common-account",
        "account sufficient pam_localuser.so\n",
        0o644,
    );
    let r = i.kloigos(bob, &["--json", "doctor"]);
    r.ok();
    let pam = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "pam")
        .unwrap()
        .clone();
    assert_eq!(pam["status"], "warn", "{pam}");
    assert!(
        pam["detail"]
            .as_str()
            .unwrap()
            .contains("common-account:1 (sufficient pam_localuser.so)"),
        "{pam}"
    );
    // A writable state file, a writable binary: failures that name the file and the fix.
    std::fs::set_permissions(
        i.state_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    std::fs::set_permissions(
        i.bin(),
        std::os::unix::fs::PermissionsExt::from_mode(0o4775),
    )
    .unwrap();
    let r = i.kloigos(bob, &["doctor"]);
    r.code(1)
        .out_has(&format!(
            "FAIL  shared-tree: {} is writable by group or others",
            i.state_path().display()
        ))
        .out_has(&format!("fix: chmod go-w {}", i.state_path().display()))
        .out_has("FAIL  binary:");
    std::fs::set_permissions(
        i.state_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(
        i.bin(),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    // cluster.json disagrees with this host about the service uid.
    i.kloigos(
        As::User(&i.admin),
        &["admin", "policy", &format!("service_uid={}", i.svc.uid + 7)],
    )
    .ok();
    let r = i.kloigos(bob, &["doctor"]);
    r.code(1)
        .out_has(&format!("cluster.json says {}", i.svc.uid + 7));
    i.kloigos(
        As::User(&i.admin),
        &["admin", "policy", &format!("service_uid={}", i.svc.uid)],
    )
    .ok();
    // Ports on the node: a user cannot check nft; root can (and the table is not loaded here).
    i.kloigos(
        As::User(&i.admin),
        &["admin", "set-node", &i.node, "--ports", "20000-20099"],
    )
    .ok();
    let r = i.kloigos(bob, &["doctor"]);
    r.ok()
        .out_has("warn  nft: cannot check the nft table as a user");
    let r = i.kloigos(As::Root, &["--json", "doctor"]);
    let nft = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "nft")
        .unwrap()
        .clone();
    let loaded = kloigos_tests::cmd::run("nft", &["list", "table", "inet", "kloigos"]).code == 0;
    assert_eq!(nft["status"], if loaded { "ok" } else { "fail" }, "{nft}");
    // root's doctor switched to the service account for the rest: the clock probe worked.
    let clock = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "clock")
        .unwrap()
        .clone();
    assert_eq!(clock["status"], "ok", "{clock}");
}

/// Reads `child`'s stderr on a thread; lines arrive on the channel.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (bounded) for a line containing `text`; returns every line seen.
fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, text: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) {
        let hit = l.contains(text);
        seen.push(l);
        if hit {
            return seen;
        }
    }
    panic!("no line with {text:?} within 60 s; saw {seen:?}");
}

/// Waits for `child` to exit, at most a minute (then kills it and fails).
fn finish(mut child: std::process::Child) -> std::process::Output {
    let exited = wait_until(Duration::from_secs(60), || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = child.kill();
        panic!("the waiter did not exit within a minute");
    }
    child.wait_with_output().unwrap()
}

const TERM: &str = r#"
import os, signal, sys
os.kill(int(sys.argv[1]), signal.SIGTERM); print("OK")
"#;

/// Issue 15 item 5: `alloc --wait` waits as the caller (all four uids),
/// who can end it with SIGTERM; each attempt is a fresh setuid child that
/// books once room is made; a wait beyond max_wait is refused.
#[test]
fn alloc_wait_waits_as_the_caller_and_books_through_setuid_children() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("wt"), &[]);
    let whole = i
        .kloigos(
            As::User(&i.alice),
            &["--json", "alloc", "-w", &i.node, "--whole", "-t", "1h"],
        )
        .ok()
        .json();
    let id = whole["id"].as_str().unwrap().to_string();
    i.kloigos(As::User(&i.bob), &["alloc", "-w", &i.node, "--wait=3650d"])
        .code(1)
        .err_has("longer than the cluster's max_wait 1d");
    let before = i.state_bytes();

    // A waiter bob ends himself.
    let (mut child, pid) = start_paused(
        &i,
        As::User(&i.bob),
        &["alloc", "-w", &i.node, "-t", "1h", "--wait=1h"],
    );
    let lines = stderr_lines(&mut child);
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    wait_for_line(&lines, "waiting for a free slot");
    let bob = i.bob.uid;
    // Across several attempts (one every 2 s), the waiter stays bob's.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let (uids, _) = proc_status(pid).expect("the waiter is alive");
        assert_eq!(uids, vec![bob; 4], "the waiter runs as {uids:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    i.python(As::User(&i.bob), TERM, &[&pid.to_string()])
        .ok()
        .out_has("OK");
    let status = finish(child).status;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(nix::sys::signal::Signal::SIGTERM as i32),
        "{status:?}"
    );
    assert_eq!(i.state_bytes(), before, "the waiter wrote something");

    // A waiter that gets its slot once alice releases.
    let (mut child, _pid) = start_paused(
        &i,
        As::User(&i.bob),
        &["--json", "alloc", "-w", &i.node, "-t", "1h", "--wait=1h"],
    );
    let lines = stderr_lines(&mut child);
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    wait_for_line(&lines, "waiting for a free slot");
    i.kloigos(As::User(&i.alice), &["release", &id]).ok();
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0));
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["user"], i.bob.name.as_str());
    // Written by the setuid child: the tree stays the service account's.
    assert_eq!(owner_mode(&i.state_path()), (i.svc.uid, 0o644));
}

/// Issue 15 item 6: an account named like an AD user books and lists
/// through the setuid CLI.
#[test]
fn a_domain_account_books_and_lists_through_the_setuid_cli() {
    kloigos_tests::require_root!();
    let i = Install::new(&tag("dn"), &[]);
    let name = format!("k{}@ad.test", tag("d"));
    let user = kloigos_tests::setuid::domain_user(&name);
    let b = i
        .kloigos(
            As::User(&user),
            &[
                "--json", "alloc", "-w", &i.node, "-t", "1h", "-m", "from AD",
            ],
        )
        .ok()
        .json();
    assert_eq!(b["user"], name.as_str());
    assert_eq!(b["uid"], user.uid);
    let v = i.kloigos(As::User(&user), &["--json", "list"]).ok().json();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["user"], name.as_str());
    i.kloigos(As::User(&user), &["list"]).ok().out_has(&name);
    // Nothing named after the user appeared in the tree.
    let tree = i.snapshot().join("\n");
    assert!(!tree.contains("@ad.test"), "{tree}");
    i.kloigos(As::User(&user), &["release", "--all"]).ok();
}
