//! Packaging and operator experience: the man pages and completions
//! generated from the clap definitions, `kloigos --version` with and
//! without git, and the Debian package built by `packaging/deb/build.sh`,
//! installed for real with dpkg, checked, used (`kloigos doctor` against a
//! scratch cluster, `kloigos-pam` on a scratch PAM directory through
//! pamtester), removed and purged with apt-get.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kloigos_tests::cmd::{must, run, Run};
use kloigos_tests::sys::TempUser;
use kloigos_tests::{bin, bin_dir};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `groff -ww -man -z` prints nothing (no warnings) and `man -l` renders
/// the page with its NAME section.
#[track_caller]
fn check_page(page: &Path) {
    let p = page.to_str().expect("utf-8 path");
    // zcat -f: installed pages are gzipped.
    let g = run("sh", &["-c", "zcat -f \"$1\" | groff -ww -man -z", "_", p]);
    g.ok();
    assert!(g.stderr.is_empty(), "groff warns about {p}:\n{}", g.stderr);
    let m = Run::of(
        Command::new("man")
            .args(["-l", p])
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0"),
    );
    m.ok();
    // Not a terminal: man-db overstrikes bold ("N\x08N"); take that out.
    let mut text = String::new();
    for c in m.stdout.chars() {
        if c == '\x08' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    assert!(
        text.contains("NAME") && text.lines().count() > 8,
        "man -l {p} rendered too little:\n{text}"
    );
}

#[test]
fn man_pages_and_completions_are_generated_and_render() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    run(bin("kloigos-gen"), &[out, "--date", "2026-11-23"])
        .ok()
        .out_has("man page(s)");
    // One completion per shell, under the names install.sh looks for.
    for (file, marker) in [
        ("kloigos.bash", "complete -F"),
        ("_kloigos", "#compdef kloigos"),
        ("kloigos.fish", "complete -c kloigos"),
    ] {
        let text = fs::read_to_string(tmp.path().join("completions").join(file))
            .unwrap_or_else(|e| panic!("completions/{file}: {e}"));
        assert!(text.contains(marker), "{file} lacks {marker:?}");
        assert!(
            text.contains("check-login") && text.contains("partition"),
            "{file} lacks subcommands or global flags"
        );
    }
    let man = tmp.path().join("man");
    let main = fs::read_to_string(man.join("kloigos.1")).unwrap();
    for want in [
        ".SH SYNOPSIS",
        ".SH \"EXIT STATUS\"",
        ".SH FILES",
        "pam_kloigos",
    ] {
        assert!(main.contains(want), "kloigos.1 lacks {want:?}");
    }
    assert!(
        main.contains(env!("CARGO_PKG_VERSION")),
        "no version in kloigos.1"
    );
    // A page per subcommand, admin's included.
    for page in [
        "kloigos-alloc.1",
        "kloigos-doctor.1",
        "kloigos-admin-add-node.1",
    ] {
        assert!(man.join(page).is_file(), "{page} missing");
    }
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert!(pages.len() >= 15, "only {} pages", pages.len());
    // The hand-written section 8 pages.
    for p in ["kloigos-housekeeper.8", "pam_kloigos.8", "kloigos-pam.8"] {
        pages.push(workspace().join("packaging/man").join(p));
    }
    for p in &pages {
        check_page(p);
    }
    run(bin("kloigos-gen"), &[]).code(2).err_has("OUTDIR");
}

/// Builds `kloigos-cli/build.rs` on its own and runs it as cargo would,
/// with the manifest directory in `src` (a tree that is not the workspace).
fn build_script_commit(tmp: &Path, src: &Path) -> String {
    let script = tmp.join("build-script");
    if !script.exists() {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let build_rs = workspace().join("kloigos-cli/build.rs");
        run(
            rustc,
            &[
                "--edition=2021",
                "-o",
                script.to_str().unwrap(),
                build_rs.to_str().unwrap(),
            ],
        )
        .ok();
    }
    let manifest = src.join("kloigos-cli");
    fs::create_dir_all(&manifest).unwrap();
    let r = Run::of(
        Command::new(&script)
            .env("CARGO_MANIFEST_DIR", &manifest)
            .env_remove("KLOIGOS_GIT_COMMIT")
            .env_remove("GIT_DIR"),
    );
    r.ok();
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix("cargo:rustc-env=KLOIGOS_GIT_COMMIT="))
        .unwrap_or_else(|| panic!("no commit line:\n{}", r.stdout))
        .to_string()
}

#[test]
fn version_shows_the_git_commit_or_unknown_commit() {
    let v = run(bin("kloigos"), &["--version"]);
    v.ok().out_has(env!("CARGO_PKG_VERSION"));
    let head = run(
        "git",
        &[
            "-C",
            workspace().to_str().unwrap(),
            "rev-parse",
            "--short=12",
            "HEAD",
        ],
    );
    if head.code == 0 {
        v.out_has(&format!("({})", head.stdout.trim()));
    }
    let tmp = tempfile::tempdir().unwrap();
    // A source tree without .git (a release tarball).
    let plain = tmp.path().join("plain");
    assert_eq!(build_script_commit(tmp.path(), &plain), "unknown commit");
    // A tree without .git of its own, inside someone else's repository.
    let outer = tmp.path().join("outer");
    fs::create_dir_all(&outer).unwrap();
    if run("git", &["init", "-q", outer.to_str().unwrap()]).code == 0 {
        assert_eq!(
            build_script_commit(tmp.path(), &outer.join("kloigos-0.1.0")),
            "unknown commit"
        );
    }
}

// ---------------------------------------------------------------------------
// The Debian package, installed for real.

const PKG: &str = "kloigos";

fn exists(p: &str) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn is_installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", PKG])
        .stdout
        .contains("install ok installed")
}

/// Purges the package (and what the test added) if a step failed midway.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        if run("dpkg-query", &["-W", "-f=${Status}", PKG]).code == 0 {
            let _ = run("dpkg", &["--purge", "--force-all", PKG]);
        }
        let _ = fs::remove_dir_all("/etc/kloigos");
        let _ = fs::remove_dir_all("/var/lib/kloigos");
    }
}

/// A free uid (and gid) in the system range, for install.conf.
fn free_system_id() -> u32 {
    (900..1000)
        .rev()
        .find(|id| {
            let s = id.to_string();
            run("getent", &["passwd", &s]).code != 0 && run("getent", &["group", &s]).code != 0
        })
        .expect("a free uid and gid between 900 and 999")
}

/// The directory of this system's pam_unix.so (where the module must go).
fn pam_module_dir() -> String {
    let r = must("dpkg-query", &["-S", "*/security/pam_unix.so"]);
    let path = r
        .stdout
        .lines()
        .next()
        .unwrap()
        .rsplit(": ")
        .next()
        .unwrap();
    Path::new(path.trim())
        .parent()
        .unwrap()
        .display()
        .to_string()
}

#[track_caller]
fn owner_mode(p: &str) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn apt(args: &[&str]) -> Run {
    Run::of(
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// pamtester for `user` through the sshd account stack of `pam_dir`,
/// mounted over /etc/pam.d in a private mount namespace.
fn pamtester(pam_dir: &Path, user: &str) -> Run {
    pamtester_ops(pam_dir, user, &["acct_mgmt"])
}

/// pamtester for `user` through the sshd stack of `pam_dir` (mounted over
/// /etc/pam.d in a private mount namespace), doing `ops`.
fn pamtester_ops(pam_dir: &Path, user: &str, ops: &[&str]) -> Run {
    let mut args = vec![
        "--mount",
        "sh",
        "-c",
        "d=$1; shift; mount --bind \"$d\" /etc/pam.d && exec pamtester sshd \"$@\"",
        "_",
        pam_dir.to_str().unwrap(),
        user,
    ];
    args.extend(ops);
    run("unshare", &args)
}

/// The PAM environment that the session stack of `pam_dir`'s sshd leaves
/// for `user`: a copy of the directory whose sshd stack ends with pam_exec
/// running env (still "sshd": the module acts for that service only).
fn session_env(tmp: &Path, pam_dir: &Path, user: &str) -> String {
    let copy = tmp.join("pam.d-env");
    let log = tmp.join("session-env.log");
    let _ = fs::remove_dir_all(&copy);
    let _ = fs::remove_file(&log);
    must(
        "cp",
        &["-a", pam_dir.to_str().unwrap(), copy.to_str().unwrap()],
    );
    let mut stack = fs::read_to_string(copy.join("sshd")).unwrap();
    stack.push_str(&format!(
        "session required pam_exec.so log={} /usr/bin/env\n",
        log.display()
    ));
    fs::write(copy.join("sshd"), stack).unwrap();
    pamtester_ops(&copy, user, &["open_session"])
        .ok()
        .out_has("successfully opened a session");
    fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()))
}

#[test]
fn debian_package_installs_works_removes_and_purges_cleanly() {
    kloigos_tests::require_root!();
    for (what, busy) in [
        ("the package kloigos is installed", is_installed()),
        (
            "a 'kloigos' account exists",
            run("getent", &["passwd", "kloigos"]).code == 0,
        ),
        (
            "a 'kloigos' group exists",
            run("getent", &["group", "kloigos"]).code == 0,
        ),
        ("/etc/kloigos exists", exists("/etc/kloigos")),
        ("/var/lib/kloigos exists", exists("/var/lib/kloigos")),
    ] {
        kloigos_tests::require!(
            !busy,
            format!(
                "{what} on this machine, and the package test would change it: \
                 run it on a machine without kloigos installed"
            )
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let pam_before = fs::read("/etc/pam.d/sshd").ok();

    // 1. Build the .deb from the debug binaries.
    let out = tmp.path().join("out");
    let built = Run::of(
        Command::new(workspace().join("packaging/deb/build.sh"))
            .args(["--no-build", "--bin-dir"])
            .arg(bin_dir())
            .arg("--out")
            .arg(&out),
    );
    built.ok();
    let deb = built.stdout.lines().last().unwrap().trim().to_string();
    assert!(
        deb.ends_with(&format!(
            "kloigos_{}_{}.deb",
            env!("CARGO_PKG_VERSION"),
            must("dpkg", &["--print-architecture"]).stdout.trim()
        )),
        "{deb}"
    );
    let info = must("dpkg-deb", &["-f", &deb, "Depends", "Recommends"]).stdout;
    assert!(
        info.contains("libpam0g") && info.contains("nftables"),
        "{info}"
    );
    let listing = must("dpkg-deb", &["-c", &deb]).stdout;
    assert!(
        !listing.lines().any(|l| l.starts_with("-rws")),
        "the package must not ship a setuid file:\n{listing}"
    );
    let shipped: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();

    // 2. Install, with the uid chosen in install.conf.
    let _cleanup = Cleanup;
    let uid = free_system_id();
    fs::create_dir_all("/etc/kloigos").unwrap();
    fs::write("/etc/kloigos/install.conf", format!("KLOIGOS_UID={uid}\n")).unwrap();
    let inst = Run::of(
        Command::new("dpkg")
            .args(["-i", &deb])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    inst.ok().out_has("kloigos-pam enable");
    assert!(is_installed());

    // 3. Files, modes, owners.
    let acct = must("getent", &["passwd", "kloigos"]).stdout;
    assert!(
        acct.starts_with(&format!("kloigos:x:{uid}:{uid}:")),
        "{acct}"
    );
    assert!(
        acct.trim_end().ends_with(":/nonexistent:/usr/sbin/nologin"),
        "{acct}"
    );
    assert_eq!(owner_mode("/usr/bin/kloigos"), (uid, uid, 0o4755));
    assert_eq!(
        must("dpkg-statoverride", &["--list", "/usr/bin/kloigos"])
            .stdout
            .trim(),
        "kloigos kloigos 4755 /usr/bin/kloigos"
    );
    assert_eq!(owner_mode("/usr/sbin/kloigos-housekeeper"), (0, 0, 0o755));
    assert_eq!(owner_mode("/usr/bin/kloigos-dashboard"), (0, 0, 0o755));
    assert_eq!(owner_mode("/usr/sbin/kloigos-pam"), (0, 0, 0o755));
    let module = format!("{}/pam_kloigos.so", pam_module_dir());
    assert_eq!(owner_mode(&module), (0, 0, 0o644));
    for f in [
        "/usr/share/man/man1/kloigos.1.gz",
        "/usr/share/man/man1/kloigos-alloc.1.gz",
        "/usr/share/man/man8/kloigos-housekeeper.8.gz",
        "/usr/share/man/man8/pam_kloigos.8.gz",
        "/usr/share/man/man8/kloigos-pam.8.gz",
        "/usr/share/bash-completion/completions/kloigos",
        "/usr/share/zsh/vendor-completions/_kloigos",
        "/usr/share/fish/vendor_completions.d/kloigos.fish",
        "/usr/share/doc/kloigos/examples/config.example.json",
        "/usr/share/doc/kloigos/copyright",
    ] {
        assert!(
            fs::metadata(f).is_ok_and(|m| m.len() > 0),
            "{f} missing or empty"
        );
        assert_eq!(owner_mode(f), (0, 0, 0o644), "{f}");
    }
    for page in ["kloigos", "kloigos-housekeeper", "pam_kloigos"] {
        let w = run("man", &["-w", page]);
        w.ok();
        check_page(Path::new(w.stdout.trim()));
    }
    let units = if module.starts_with("/usr/") {
        "/usr/lib"
    } else {
        "/lib"
    };
    for u in ["kloigos-housekeeper.service", "kloigos-housekeeper.timer"] {
        assert!(exists(&format!("{units}/systemd/system/{u}")), "{u}");
    }
    if exists("/run/systemd/system") {
        eprintln!("note: systemd is PID 1; the timer path is exercised in the nspawn tests");
    } else {
        // No systemd: the cron entry.
        let cron = fs::read_to_string("/etc/cron.d/kloigos-housekeeper").expect("cron entry");
        assert!(
            cron.contains("root /usr/sbin/kloigos-housekeeper --once"),
            "{cron}"
        );
    }
    assert_eq!(
        fs::read("/etc/pam.d/sshd").ok(),
        pam_before,
        "PAM must not be wired automatically"
    );
    run("/usr/bin/kloigos", &["--version"])
        .ok()
        .out_has(env!("CARGO_PKG_VERSION"));

    // 4. A scratch cluster, the housekeeper, and doctor.
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let s = shared.to_str().unwrap();
    must("chown", &[&format!("{uid}:{uid}"), s]);
    fs::write(
        "/etc/kloigos/config.json",
        format!(
            r#"{{"shared": "{s}", "node": "debnode",
  "housekeeper": {{"slices": "none", "nft": false, "kill": false}}}}"#
        ),
    )
    .unwrap();
    run("/usr/bin/kloigos", &["admin", "init", "--name", "debtest"]).ok();
    run(
        "/usr/bin/kloigos",
        &["admin", "add-node", "debnode", "--cpus", "0"],
    )
    .ok();
    run("/usr/sbin/kloigos-housekeeper", &["--once"]).ok();
    let doc = run("/usr/bin/kloigos", &["doctor", "--json"]);
    let findings = doc.json();
    let status = |check: &str| -> (String, String) {
        let f = findings
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no {check} finding:\n{}", doc.stdout));
        (
            f["status"].as_str().unwrap().to_string(),
            f["fix"].as_str().unwrap_or("").to_string(),
        )
    };
    for check in [
        "config",
        "binary",
        "service-account",
        "shared-tree",
        "clock",
        "housekeeper",
        "nft",
    ] {
        assert_eq!(status(check).0, "ok", "{check}:\n{}", doc.stdout);
    }
    // PAM is not wired yet: doctor says so, and how.
    let (pam, fix) = status("pam");
    assert_eq!(pam, "fail", "{}", doc.stdout);
    assert!(fix.contains("account required pam_kloigos.so"), "{fix}");
    doc.code(1);

    // 5. kloigos-pam on a copy of /etc/pam.d, through pamtester with the
    //    installed module: root still gets in, a user without a booking not.
    if pam_before.is_some() {
        let pam_dir = tmp.path().join("pam.d");
        must("cp", &["-a", "/etc/pam.d", pam_dir.to_str().unwrap()]);
        let pd = pam_dir.to_str().unwrap();
        let user = TempUser::create("kldebu1", &[]);
        pamtester(&pam_dir, &user.name).ok();
        run("/usr/sbin/kloigos-pam", &["enable", "--pam-dir", pd])
            .ok()
            .out_has("root still passes");
        let sshd = fs::read_to_string(pam_dir.join("sshd")).unwrap();
        let inc = sshd.find("@include common-account").expect("include");
        let line = sshd
            .find("\naccount required pam_kloigos.so\n")
            .expect("line");
        assert!(line > inc, "{sshd}");
        // The session hook: once, after every other session module (so
        // that pam_env's files cannot override its variables).
        let lines: Vec<&str> = sshd.lines().collect();
        let hooks: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains("pam_kloigos.so") && lines[i].starts_with("session"))
            .collect();
        assert_eq!(hooks.len(), 1, "{sshd}");
        assert_eq!(lines[hooks[0]], "session optional pam_kloigos.so");
        assert!(
            !lines[hooks[0] + 1..]
                .iter()
                .any(|l| l.starts_with("session") || l.starts_with("@include common-session")),
            "{sshd}"
        );
        run("/usr/sbin/kloigos-pam", &["status", "--pam-dir", pd])
            .ok()
            .out_has("enabled")
            .out_has("session: ")
            .out_has("session optional pam_kloigos.so");
        pamtester(&pam_dir, "root").ok();
        pamtester(&pam_dir, &user.name).code(1);
        // No booking: refused at the account stage, yet the session hook
        // never denies; a session opens, without the variables.
        pamtester_ops(&pam_dir, &user.name, &["open_session", "close_session"])
            .ok()
            .out_has("successfully opened a session");
        let env = session_env(tmp.path(), &pam_dir, &user.name);
        assert!(!env.contains("KLOIGOS_"), "{env}");
        // Booked: in, and the session gets the booking's variables.
        let b = run(
            "/usr/bin/kloigos",
            &[
                "--json", "alloc", "-w", "debnode", "-u", &user.name, "-t", "1h",
            ],
        )
        .ok()
        .json();
        let id = b["id"].as_str().expect("booking id").to_string();
        pamtester(&pam_dir, &user.name).ok();
        pamtester_ops(&pam_dir, &user.name, &["open_session", "close_session"])
            .ok()
            .out_has("successfully opened a session");
        let env = session_env(tmp.path(), &pam_dir, &user.name);
        for want in [format!("KLOIGOS_BOOKING={id}"), "KLOIGOS_CPUS=0".into()] {
            assert!(env.lines().any(|l| l == want), "lacks {want}:\n{env}");
        }
        run("/usr/bin/kloigos", &["release", &id]).ok();
        run("/usr/sbin/kloigos-pam", &["enable", "--pam-dir", pd])
            .ok()
            .out_has("unchanged");
        run("/usr/sbin/kloigos-pam", &["disable", "--pam-dir", pd]).ok();
        assert_eq!(fs::read(pam_dir.join("sshd")).ok(), pam_before);
        run("/usr/sbin/kloigos-pam", &["status", "--pam-dir", pd])
            .ok()
            .out_has("disabled")
            .out_has("no pam_kloigos.so session line");
        pamtester(&pam_dir, &user.name).ok();
        // Enabled once more: apt remove (below) takes both lines out again.
        run("/usr/sbin/kloigos-pam", &["enable", "--pam-dir", pd]).ok();
        assert_ne!(fs::read(pam_dir.join("sshd")).ok(), pam_before);
    } else {
        // The rest of the test still runs; this part is counted as skipped
        // (a failure under CI).
        kloigos_tests::skip::skip(
            "no /etc/pam.d/sshd, so kloigos-pam is not exercised: apt-get install openssh-server",
        );
    }

    // 6. apt remove: the programs and the schedule go; the account, the
    //    configuration and the statoverride stay until purge. The prerm
    //    takes the PAM lines out of /etc/pam.d: here the scratch copy
    //    enabled above, mounted there in a private mount namespace.
    if pam_before.is_some() {
        let pam_dir = tmp.path().join("pam.d");
        Run::of(
            Command::new("unshare")
                .args(["--mount", "sh", "-c"])
                .arg("mount --bind \"$1\" /etc/pam.d && exec apt-get remove -y -q kloigos")
                .arg("_")
                .arg(&pam_dir)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .ok();
        assert_eq!(
            fs::read(pam_dir.join("sshd")).ok(),
            pam_before,
            "apt remove left kloigos lines in sshd"
        );
    } else {
        apt(&["remove", "-y", "-q", PKG]).ok();
    }
    assert!(run("dpkg-query", &["-W", "-f=${Status}", PKG])
        .stdout
        .contains("config-files"));
    for f in [
        "/usr/bin/kloigos",
        "/usr/sbin/kloigos-housekeeper",
        &module,
        "/etc/cron.d/kloigos-housekeeper",
    ] {
        assert!(!exists(f), "{f} left after remove");
    }
    assert!(run("getent", &["passwd", "kloigos"]).code == 0);
    assert!(exists("/etc/kloigos/config.json"));

    // 7. apt purge: nothing of the package is left; the shared data is.
    apt(&["purge", "-y", "-q", PKG]).ok();
    let status = run("dpkg-query", &["-W", "-f=${Status}", PKG]).stdout;
    assert!(
        !status.contains("installed") || status.contains("not-installed"),
        "still known to dpkg after purge: {status}"
    );
    assert_ne!(
        run("getent", &["passwd", "kloigos"]).code,
        0,
        "account left"
    );
    assert_ne!(run("getent", &["group", "kloigos"]).code, 0, "group left");
    assert_ne!(
        run("dpkg-statoverride", &["--list", "/usr/bin/kloigos"]).code,
        0,
        "statoverride left"
    );
    for d in [
        "/etc/kloigos",
        "/var/lib/kloigos",
        "/usr/share/doc/kloigos",
        "/usr/share/kloigos",
    ] {
        assert!(!exists(d), "{d} left after purge");
    }
    let left: Vec<&String> = shipped.iter().filter(|p| exists(p)).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert_eq!(fs::read("/etc/pam.d/sshd").ok(), pam_before);
    assert!(
        shared.join("cluster.json").is_file(),
        "the shared data must stay"
    );
    assert!(shared.join("nodes/debnode/state.json").is_file());
}
