//! Benchmark of `pam_kloigos.so`: full in-process PAM cycles
//! (pam_start, pam_acct_mgmt, pam_end) through libpam, against three
//! baselines measured in the same run:
//! - `pam_permit.so`: the cost of PAM itself;
//! - `pam_exec.so` running a small shell checker that reads a status file,
//!   the way Kiwi gates logins today;
//! - `pam_exec.so` running the same checker in Python.
//!
//! Goals, read on the time each checker adds over pam_permit (a cycle's
//! own PAM cost, pam_start/pam_end and the stack, is the same for every
//! module and is no checker's work): at most 1 ms added per decision,
//! restated as ratios against this run's baselines: (a) at most 0.25x of
//! what the pam_exec shell checker adds, and (b) at most 1x of what the
//! pam_exec Python checker adds. An SSH login takes about 250 ms, so
//! either is well under 1% of it. (The answer within `timeout_ms` on a
//! hung share is the pam system tests' to show.) Prints per-cycle medians,
//! the added times and the ratios; not a timed test.
//!
//! Fairness: `pam_kloigos.so` is linked `-z nodelete`, so it stays loaded
//! across cycles; the bench holds `pam_permit.so` and `pam_exec.so` open too,
//! so no stack pays a module load per cycle (the reloading cost of
//! pam_permit is measured first and printed for reference). The scratch
//! configuration directory has an empty `other` file, as every real one has
//! one, so libpam does not log "no default config" at every pam_start.
//!
//! pam_kloigos runs on three stacks: with the housekeeper's local copy,
//! without it, and on a share owned by the service account (here the
//! stand-in `daemon`, as the installed tree is owned by `kloigos`). The
//! goals are read on the slowest of the three.
//!
//! Every decision logs a line, as on a real node: the bench runs itself
//! again inside a mount namespace whose `/dev/log` is a listening syslog
//! stand-in (another process), so the module pays for its `syslog(3)` call,
//! and the lines are counted.
//!
//! The stacks live in a scratch PAM configuration directory
//! (`pam_start_confdir`), so /etc/pam.d is never touched; the user is the
//! ubiquitous `bin` (uid 2; the clusters' `min_uid` is 1), so no account is
//! created. Root is needed only because the module believes only root-owned
//! configuration and state.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kloigos_core::names::{NodeName, UserName};
use kloigos_core::policy::Policy;
use kloigos_core::state::{Request, Size};
use kloigos_core::store::{to_json, LocalCopy};
use kloigos_tests::bench::{report, Goal};
use kloigos_tests::cluster::TempCluster;
use kloigos_tests::pam::SyslogSink;
use kloigos_tests::uid;

const PAM_SUCCESS: c_int = 0;
const PAM_CONV_ERR: c_int = 19;
const USER: &str = "bin";

#[repr(C)]
struct PamMessage {
    _style: c_int,
    _msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    _resp: *mut c_char,
    _retcode: c_int,
}

type ConvFn = unsafe extern "C" fn(
    c_int,
    *mut *const PamMessage,
    *mut *mut PamResponse,
    *mut c_void,
) -> c_int;

#[repr(C)]
struct PamConv {
    conv: Option<ConvFn>,
    appdata: *mut c_void,
}

// glibc >= 2.34 has dlopen in libc itself.
unsafe extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
}

const RTLD_NOW: c_int = 2;

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_start_confdir(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        confdir: *const c_char,
        pamh: *mut *mut c_void,
    ) -> c_int;
    fn pam_acct_mgmt(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_end(pamh: *mut c_void, status: c_int) -> c_int;
}

/// A conversation that answers nothing (the measured paths never converse).
unsafe extern "C" fn no_conv(
    _n: c_int,
    _msg: *mut *const PamMessage,
    _resp: *mut *mut PamResponse,
    _data: *mut c_void,
) -> c_int {
    PAM_CONV_ERR
}

/// One full cycle; returns pam_acct_mgmt's code.
fn cycle(service: &CStr, user: &CStr, confdir: &CStr) -> c_int {
    let conv = PamConv {
        conv: Some(no_conv),
        appdata: std::ptr::null_mut(),
    };
    let mut pamh: *mut c_void = std::ptr::null_mut();
    // SAFETY: every pointer is a valid NUL-terminated string or the conv
    // struct, all alive for the whole cycle; pamh is an out-pointer.
    let rc = unsafe {
        pam_start_confdir(
            service.as_ptr(),
            user.as_ptr(),
            &conv,
            confdir.as_ptr(),
            &mut pamh,
        )
    };
    assert_eq!(rc, PAM_SUCCESS, "pam_start failed ({rc})");
    // SAFETY: pamh came from a successful pam_start and is used on this thread only.
    let code = unsafe { pam_acct_mgmt(pamh, 0) };
    // SAFETY: as above; pamh is not used after pam_end.
    unsafe { pam_end(pamh, code) };
    code
}

/// Median per-cycle time of `n` cycles (after `n / 10` warm-up cycles),
/// checking every cycle answers `want`.
fn measure(service: &str, confdir: &Path, n: usize, want: c_int) -> Duration {
    let s = CString::new(service).expect("service");
    let u = CString::new(USER).expect("user");
    let d = CString::new(confdir.to_str().expect("utf-8")).expect("confdir");
    for _ in 0..n / 10 {
        assert_eq!(cycle(&s, &u, &d), want, "{service}: unexpected PAM code");
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let code = cycle(&s, &u, &d);
        times.push(t.elapsed());
        assert_eq!(code, want, "{service}: unexpected PAM code");
    }
    times.sort();
    times[n / 2]
}

fn module() -> PathBuf {
    let dir = match std::env::var_os("KLOIGOS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .expect("own path")
            .parent()
            .expect("target/<profile>")
            .to_path_buf(),
    };
    let so = dir.join("libpam_kloigos.so");
    assert!(
        so.exists(),
        "{} missing: build the workspace first",
        so.display()
    );
    so
}

/// Keeps PAM module `name` (from libpam's module directory) loaded for the
/// life of the process, as `-z nodelete` keeps pam_kloigos: libpam's
/// dlclose at pam_end then leaves it mapped.
fn keep_loaded(name: &str) {
    let dir = [
        "/lib/x86_64-linux-gnu/security",
        "/usr/lib/x86_64-linux-gnu/security",
        "/lib/security",
        "/usr/lib/security",
        "/lib64/security",
    ]
    .iter()
    .map(Path::new)
    .find(|d| d.join(name).exists())
    .unwrap_or_else(|| panic!("{name} not found in the usual PAM module directories"));
    let path = CString::new(dir.join(name).to_str().expect("utf-8")).expect("path");
    // SAFETY: path is a valid NUL-terminated string; the handle is never
    // closed (on purpose: the module stays loaded), and a PAM module's
    // constructors have no preconditions.
    let handle = unsafe { dlopen(path.as_ptr(), RTLD_NOW) };
    assert!(
        !handle.is_null(),
        "dlopen {} failed",
        dir.join(name).display()
    );
}

/// The scratch cluster of one pam_kloigos stack (`min_uid` 1): [`USER`]
/// booked on its node for the next hour, and the housekeeper's local copy
/// of it (which records the service account's uid, when the account
/// exists, as the housekeeper's does).
struct Setup {
    cluster: TempCluster,
    node: NodeName,
}

fn setup(user: &nix::unistd::User, now: Timestamp, service_uid: Option<u32>) -> Setup {
    let policy = Policy {
        min_uid: uid(1),
        ..Policy::default()
    };
    let cluster = TempCluster::with_policy(policy.clone());
    let node = cluster.add_node("bench-node", "0-3", None, None);
    let name = UserName::new(USER).expect("name");
    let req = Request {
        user: name.clone(),
        uid: uid(user.uid.as_raw()),
        created_by: name,
        size: Size::Whole,
        start: now,
        end: now + SignedDuration::from_hours(1),
        note: Default::default(),
        held_elsewhere: 0,
    };
    cluster
        .store
        .update_node(&node, now, |st| {
            let b = st.book(&req, &policy, now, &[])?;
            Ok((b.id, vec![]))
        })
        .expect("book");
    let state = cluster.store.node(&node).expect("state");
    let lc = LocalCopy::new(now, cluster.store.policy().expect("policy"), Some(state))
        .with_service_uid(service_uid);
    std::fs::write(cluster.dir.path().join("local-copy.json"), to_json(&lc)).expect("local copy");
    Setup { cluster, node }
}

impl Setup {
    /// Writes `name` (a config file in the cluster's dir) with `copy` as the local copy.
    fn config(&self, name: &str, copy: &Path, service_user: &str) -> PathBuf {
        let text = serde_json::json!({
            "shared": self.cluster.shared(),
            "node": self.node.to_string(),
            "service_user": service_user,
            "housekeeper": { "state_copy": copy },
        })
        .to_string();
        let path = self.cluster.dir.path().join(name);
        std::fs::write(&path, text).expect("config");
        path
    }
}

/// Gives the tree under `dir` to `uid` (not following symlinks).
fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    nix::unistd::chown(dir, Some(uid), Some(gid)).expect("chown");
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let t = e.file_type().expect("type");
        if t.is_dir() {
            chown_tree(&e.path(), uid.as_raw(), gid.as_raw());
        } else {
            nix::unistd::chown(&e.path(), Some(uid), Some(gid)).expect("chown");
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Set in the bench's own re-run inside the mount namespace.
const INSIDE: &str = "KLOIGOS_BENCH_PAM_SYSLOG";

fn main() {
    // pam_kloigos believes only root-owned configuration and state files.
    kloigos_tests::require_root!();
    if std::env::var_os(INSIDE).is_none() {
        std::process::exit(with_syslog());
    }
    bench();
}

/// Runs the bench again inside a mount namespace whose `/dev/log` is a
/// listening syslog stand-in (this machine runs no syslog daemon), so each
/// decision pays for its log line as on a real node: connect and send.
/// Returns the exit code.
fn with_syslog() -> i32 {
    let sink = SyslogSink::new();
    let me = std::env::current_exe().expect("own path");
    let status = sink
        .command(None, me.to_str().expect("utf-8 path"))
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1")
        .status()
        .expect("run the bench in a mount namespace (unshare, from util-linux)");
    // Every decision logs a line; a few arrive after the run ends.
    let lines = |sink: &SyslogSink| {
        sink.lines()
            .iter()
            .filter(|l| l.contains("pam_kloigos("))
            .count()
    };
    let mut seen = lines(&sink);
    kloigos_tests::poll::wait_until(Duration::from_secs(2), || {
        let now = lines(&sink);
        let settled = now == seen;
        seen = now;
        settled && now > 0
    });
    println!("  syslog stand-in at /dev/log received {seen} pam_kloigos lines");
    if status.success() && seen == 0 {
        eprintln!("bench-pam: pam_kloigos logged nothing to /dev/log");
        return 1;
    }
    status.code().unwrap_or(1)
}

fn bench() {
    let user = nix::unistd::User::from_name(USER)
        .expect("getpwnam")
        .expect("user bin");

    // Clusters where the user holds the node for the next hour: files owned
    // by root (as the bench runs), and a second one owned by the service
    // account's stand-in `daemon`, as an installed share is by `kloigos`.
    let now = Timestamp::now();
    let root_owned = setup(&user, now, None);
    let dir = root_owned.cluster.dir.path();
    let copy = dir.join("local-copy.json");
    // The service account named by these two does not exist here: the module
    // trusts root-owned files only, and needs no account lookup to do so.
    let with_copy = root_owned.config("config.json", &copy, "kloigos");
    let no_copy = root_owned.config("config-nocopy.json", &dir.join("absent.json"), "kloigos");
    let svc = nix::unistd::User::from_name("daemon")
        .expect("getpwnam")
        .expect("user daemon");
    let svc_owned = setup(&user, now, Some(svc.uid.as_raw()));
    chown_tree(
        svc_owned.cluster.shared(),
        svc.uid.as_raw(),
        svc.gid.as_raw(),
    );
    let svc_dir = svc_owned.cluster.dir.path();
    let svc_config = svc_owned.config("config.json", &svc_dir.join("local-copy.json"), "daemon");

    // Kiwi's way: a shell script, run by pam_exec, reads a status file.
    let status = dir.join("status");
    std::fs::write(
        &status,
        format!("{USER} until {}\n", now + SignedDuration::from_hours(1)),
    )
    .expect("status");
    let checker = dir.join("check.sh");
    std::fs::write(
        &checker,
        format!(
            "#!/bin/sh\n# Let PAM_USER in if the status file names them as the holder.\n\
             read -r holder rest < {} || exit 1\n[ \"$holder\" = \"$PAM_USER\" ] || exit 1\nexit 0\n",
            status.display()
        ),
    )
    .expect("checker");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&checker, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    // The same checker in Python.
    let py_checker = dir.join("check.py");
    std::fs::write(
        &py_checker,
        format!(
            "import os, sys\n# Let PAM_USER in if the status file names them as the holder.\n\
             with open({:?}) as f:\n    holder = f.readline().split()[0]\n\
             sys.exit(0 if holder == os.environ.get('PAM_USER') else 1)\n",
            status.display().to_string()
        ),
    )
    .expect("python checker");

    // The scratch PAM configuration directory, removed with the cluster's temp dir.
    let confdir = dir.join("pam.d");
    std::fs::create_dir(&confdir).expect("pam.d");
    let so = module();
    let stacks = [
        (
            "bench-permit",
            "account required pam_permit.so\n".to_string(),
        ),
        (
            "bench-kloigos",
            format!(
                "account required {} config={} services=bench-kloigos\n",
                so.display(),
                with_copy.display()
            ),
        ),
        (
            "bench-kloigos-nocopy",
            format!(
                "account required {} config={} services=bench-kloigos-nocopy\n",
                so.display(),
                no_copy.display()
            ),
        ),
        (
            "bench-kloigos-svc",
            format!(
                "account required {} config={} services=bench-kloigos-svc\n",
                so.display(),
                svc_config.display()
            ),
        ),
        // Every real PAM configuration has one; without it libpam logs
        // "no default config other" at every pam_start.
        ("other", "# no default stack in this bench\n".to_string()),
        (
            "bench-exec",
            format!("account required pam_exec.so quiet {}\n", checker.display()),
        ),
        (
            "bench-exec-python",
            format!(
                "account required pam_exec.so quiet /usr/bin/python3 {}\n",
                py_checker.display()
            ),
        ),
    ];
    for (name, text) in &stacks {
        std::fs::write(confdir.join(name), text).expect("stack");
    }

    let cycles: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    // A second argument `kloigos`, `kloigos-nocopy` or `kloigos-svc`
    // measures only that stack (for profiling).
    if let Some(only) = std::env::args().nth(2) {
        assert!(
            stacks
                .iter()
                .any(|(n, _)| n.strip_prefix("bench-") == Some(only.as_str())),
            "unknown stack '{only}': use kloigos, kloigos-nocopy or kloigos-svc"
        );
        let d = measure(&format!("bench-{only}"), &confdir, cycles, PAM_SUCCESS);
        println!("bench-{only}: {:.4} ms", ms(d));
        return;
    }
    let exec_cycles = (cycles / 10).max(50);
    let python_cycles = (cycles / 50).max(30);
    // pam_permit as libpam runs it by default: loaded and unloaded each cycle.
    let permit_reloaded = measure("bench-permit", &confdir, cycles, PAM_SUCCESS);
    keep_loaded("pam_permit.so");
    keep_loaded("pam_exec.so");
    let permit = measure("bench-permit", &confdir, cycles, PAM_SUCCESS);
    let kloigos = measure("bench-kloigos", &confdir, cycles, PAM_SUCCESS);
    let nocopy = measure("bench-kloigos-nocopy", &confdir, cycles, PAM_SUCCESS);
    let svc_kloigos = measure("bench-kloigos-svc", &confdir, cycles, PAM_SUCCESS);
    let exec = measure("bench-exec", &confdir, exec_cycles, PAM_SUCCESS);
    let python = measure("bench-exec-python", &confdir, python_cycles, PAM_SUCCESS);

    let added = |d: Duration| ms(d) - ms(permit);
    let kloigos_stacks = [
        ("pam_kloigos (with local copy)", kloigos),
        ("pam_kloigos (no local copy)", nocopy),
        (
            "pam_kloigos (share owned by the service account)",
            svc_kloigos,
        ),
    ];
    let (worst_name, worst) = kloigos_stacks
        .iter()
        .copied()
        .max_by_key(|(_, d)| *d)
        .expect("stacks");
    println!("bench-pam: median per pam_start/pam_acct_mgmt/pam_end cycle, user {USER} booked");
    println!(
        "  (every module stays loaded across cycles: pam_kloigos is linked -z nodelete, the bench holds pam_permit and pam_exec open;"
    );
    println!(
        "   pam_permit reloaded at every cycle, libpam's default, costs {:.4} ms;",
        ms(permit_reloaded)
    );
    println!("   pam_kloigos's log line, one syslog(3) call, is inside each cycle)");
    let row = |name: &str, d: Duration, n: usize| {
        println!("  {name:<52} {:>9.4} ms  ({n} cycles)", ms(d));
    };
    row("pam_permit", permit, cycles);
    for (name, d) in kloigos_stacks {
        row(name, d, cycles);
    }
    row("pam_exec + shell checker", exec, exec_cycles);
    row("pam_exec + Python checker", python, python_cycles);
    println!("  added over pam_permit (the checker's own work):");
    for (name, d) in kloigos_stacks {
        println!("    {name:<50} {:>9.4} ms", added(d));
    }
    for (name, d) in [
        ("pam_exec + shell checker", exec),
        ("pam_exec + Python checker", python),
    ] {
        println!("    {name:<50} {:>9.4} ms", added(d));
    }
    let worst_added = added(worst);
    println!(
        "  budget: at most 1 ms added per decision, as ratios of added time on the slowest pam_kloigos stack ({worst_name}):"
    );
    report(
        "pam-added-vs-shell-checker",
        worst_added,
        "pam_exec + shell checker, added",
        added(exec),
        "ms",
        Goal::AtMost(0.25),
    );
    report(
        "pam-added-vs-python-checker",
        worst_added,
        "pam_exec + Python checker, added",
        added(python),
        "ms",
        Goal::AtMost(1.0),
    );
    for (name, d) in kloigos_stacks {
        println!(
            "    {name:<50} {:>6.3}x of shell, {:>6.3}x of Python",
            added(d) / added(exec),
            added(d) / added(python)
        );
    }
    println!(
        "  ratio slowest pam_kloigos / pam_permit per cycle: {:.2}x",
        ms(worst) / ms(permit)
    );
}
