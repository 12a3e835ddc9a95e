//! Benchmark of `pam_kloigos.so`: full in-process PAM cycles
//! (pam_start, pam_acct_mgmt, pam_end) through libpam, against two
//! baselines measured in the same run:
//! - `pam_permit.so`: the cost of PAM itself;
//! - `pam_exec.so` running a small shell checker that reads a status file,
//!   the way Kiwi gates logins today.
//!
//! Goals: at most 0.3 ms added over pam_permit per decision, and at least
//! 50x faster than the pam_exec checker. Prints per-cycle medians and
//! ratios; not a timed test.
//!
//! The stacks live in a scratch PAM configuration directory
//! (`pam_start_confdir`), so /etc/pam.d is never touched; the user is the
//! ubiquitous `nobody` (uid 65534), so no account is created. Root is needed
//! only because the module believes only root-owned configuration and state.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kloigos_core::names::UserName;
use kloigos_core::policy::Policy;
use kloigos_core::state::{Request, Size};
use kloigos_core::store::{to_json, LocalCopy};
use kloigos_tests::cluster::TempCluster;

const PAM_SUCCESS: c_int = 0;
const PAM_CONV_ERR: c_int = 19;
const USER: &str = "nobody";

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "bench-pam needs root: pam_kloigos believes only root-owned configuration and state files"
        );
        std::process::exit(2);
    }
    let nobody = nix::unistd::User::from_name(USER)
        .expect("getpwnam")
        .expect("user nobody");

    // A cluster where nobody holds this node for the next hour.
    let cluster = TempCluster::new();
    let node = cluster.add_node("bench-node", "0-3", None, None);
    let now = Timestamp::now();
    let name = UserName::new(USER).expect("name");
    let req = Request {
        user: name.clone(),
        uid: nobody.uid.as_raw(),
        created_by: name,
        size: Size::Whole,
        start: now,
        end: now + SignedDuration::from_hours(1),
        note: String::new(),
        held_elsewhere: 0,
    };
    cluster
        .store
        .update_node(&node, now, |st| {
            let b = st.book(&req, &Policy::default(), now, &[])?;
            Ok((b.id, vec![]))
        })
        .expect("book");
    let dir = cluster.dir.path();
    let copy = dir.join("local-copy.json");
    let state = cluster.store.node(&node).expect("state");
    let lc = LocalCopy::new(now, cluster.store.policy().expect("policy"), Some(state));
    std::fs::write(&copy, to_json(&lc)).expect("local copy");
    let config = |copy: &Path| {
        serde_json::json!({
            "shared": cluster.shared(),
            "node": node.to_string(),
            "housekeeper": { "state_copy": copy },
        })
        .to_string()
    };
    std::fs::write(dir.join("config.json"), config(&copy)).expect("config");
    std::fs::write(
        dir.join("config-nocopy.json"),
        config(&dir.join("absent.json")),
    )
    .expect("config");

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
                dir.join("config.json").display()
            ),
        ),
        (
            "bench-kloigos-nocopy",
            format!(
                "account required {} config={} services=bench-kloigos-nocopy\n",
                so.display(),
                dir.join("config-nocopy.json").display()
            ),
        ),
        (
            "bench-exec",
            format!("account required pam_exec.so quiet {}\n", checker.display()),
        ),
    ];
    for (svc, text) in &stacks {
        std::fs::write(confdir.join(svc), text).expect("stack");
    }

    let cycles: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    // A second argument `kloigos` measures only the module (for profiling).
    if std::env::args().nth(2).as_deref() == Some("kloigos") {
        let k = measure("bench-kloigos", &confdir, cycles, PAM_SUCCESS);
        println!("pam_kloigos (with local copy): {:.4} ms", ms(k));
        return;
    }
    let permit = measure("bench-permit", &confdir, cycles, PAM_SUCCESS);
    let kloigos = measure("bench-kloigos", &confdir, cycles, PAM_SUCCESS);
    let nocopy = measure("bench-kloigos-nocopy", &confdir, cycles, PAM_SUCCESS);
    let exec = measure("bench-exec", &confdir, (cycles / 10).max(50), PAM_SUCCESS);

    let added = ms(kloigos) - ms(permit);
    let added_nocopy = ms(nocopy) - ms(permit);
    let vs_exec = ms(exec) / ms(kloigos);
    println!("bench-pam: median per pam_start/pam_acct_mgmt/pam_end cycle, user {USER} booked");
    println!(
        "  pam_permit                       {:>9.4} ms  ({cycles} cycles)",
        ms(permit)
    );
    println!(
        "  pam_kloigos (with local copy)    {:>9.4} ms  ({cycles} cycles)",
        ms(kloigos)
    );
    println!(
        "  pam_kloigos (no local copy)      {:>9.4} ms  ({cycles} cycles)",
        ms(nocopy)
    );
    println!(
        "  pam_exec + shell checker         {:>9.4} ms  ({} cycles)",
        ms(exec),
        (cycles / 10).max(50)
    );
    println!(
        "  added over pam_permit: {added:.4} ms (no copy: {added_nocopy:.4} ms)  goal <= 0.3 ms: {}",
        if added <= 0.3 && added_nocopy <= 0.3 { "met" } else { "MISSED" }
    );
    println!(
        "  ratio pam_exec checker / pam_kloigos: {vs_exec:.1}x  goal >= 50x: {}",
        if vs_exec >= 50.0 { "met" } else { "MISSED" }
    );
    println!(
        "  ratio pam_kloigos / pam_permit: {:.2}x",
        ms(kloigos) / ms(permit)
    );
}
