//! install.sh into scratch roots (DESTDIR): files, modes and owners,
//! idempotence, --dry-run, --uninstall back to the state before, each clear
//! error, and --enable-pam on a scratch pam.d checked with pamtester (and
//! rolled back when root would be locked out).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kloigos_tests::cmd::{run, Run};
use kloigos_tests::node::{free_uid, install_sh, module_dir, snapshot};
use kloigos_tests::require_root;

/// A scratch dir under /var/tmp with an empty install root, a shared
/// directory owned by a free uid (no account: DESTDIR installs create none),
/// and a pam.d directory.
struct Scratch {
    dir: tempfile::TempDir,
    uid: u32,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kloigos-inst-{tag}-"))
            .tempdir_in("/var/tmp")
            .expect("scratch dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let uid = free_uid(58700 + 10 * (tag.len() as u32 % 20));
        let me = Scratch { dir, uid };
        for d in ["root", "shared", "pamd"] {
            std::fs::create_dir(me.path(d)).expect("mkdir");
        }
        std::os::unix::fs::chown(me.path("shared"), Some(uid), Some(uid)).expect("chown");
        me
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    /// The usual arguments of an install into this scratch root.
    fn args(&self) -> Vec<String> {
        vec![
            "--destdir".into(),
            self.root().display().to_string(),
            "--uid".into(),
            self.uid.to_string(),
            "--service-user".into(),
            format!("kinst{}", self.uid),
            "--shared".into(),
            self.path("shared").display().to_string(),
            "--bin-dir".into(),
            kloigos_tests::bin_dir().display().to_string(),
            "--node".into(),
            "nodeA".into(),
        ]
    }

    fn install(&self, extra: &[&str]) -> Run {
        let mut a = self.args();
        a.extend(extra.iter().map(|s| s.to_string()));
        install_sh(&a)
    }

    fn uninstall(&self, extra: &[&str]) -> Run {
        let mut a = vec![
            "--destdir".to_string(),
            self.root().display().to_string(),
            "--uninstall".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        install_sh(&a)
    }

    fn snap(&self) -> Vec<String> {
        snapshot(&self.root())
    }
}

fn mode_owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn install_destdir_files_modes_rerun_dry_run_and_uninstall() {
    require_root!();
    let s = Scratch::new("main");
    let before = s.snap();

    let dry = s.install(&["--dry-run"]);
    dry.ok()
        .out_has("would")
        .out_has("dry run: nothing was changed");
    assert_eq!(s.snap(), before, "--dry-run changed the scratch root");

    let r = s.install(&[]);
    r.ok()
        .out_has("skipped (DESTDIR): create the account")
        .out_has("skipped: shell completions");
    let root = s.root();
    assert_eq!(
        mode_owner(&root.join("usr/local/bin/kloigos")),
        (0o4755, s.uid, s.uid),
        "kloigos must be setuid to the service uid"
    );
    assert_eq!(
        mode_owner(&root.join("usr/local/bin/kloigos-dashboard")),
        (0o755, 0, 0)
    );
    assert_eq!(
        mode_owner(&root.join("usr/local/sbin/kloigos-housekeeper")),
        (0o755, 0, 0)
    );
    let moddir = module_dir();
    let module = root
        .join(moddir.strip_prefix("/").expect("absolute"))
        .join("pam_kloigos.so");
    assert_eq!(mode_owner(&module), (0o644, 0, 0));
    assert_eq!(
        std::fs::read(&module).expect("module"),
        std::fs::read(kloigos_tests::bin("libpam_kloigos.so")).expect("built module")
    );
    let cfg_path = root.join("etc/kloigos/config.json");
    assert_eq!(mode_owner(&cfg_path), (0o644, 0, 0));
    let cfg =
        kloigos_core::config::Config::parse(&cfg_path, &std::fs::read(&cfg_path).expect("config"))
            .expect("the installed config parses");
    assert_eq!(cfg.shared, s.path("shared"));
    assert_eq!(cfg.node.as_ref().map(|n| n.as_str()), Some("nodeA"));
    assert_eq!(cfg.service_user, format!("kinst{}", s.uid));
    assert!(
        cfg.partitions.is_empty(),
        "the example's partitions are not copied"
    );
    // No systemd here: the cron entry, pointing at the installed housekeeper.
    let cron = std::fs::read_to_string(root.join("etc/cron.d/kloigos-housekeeper")).expect("cron");
    assert!(
        cron.contains("root /usr/local/sbin/kloigos-housekeeper --once"),
        "{cron}"
    );
    assert!(root.join("etc/kloigos/hooks/release.d").is_dir());
    assert_eq!(mode_owner(&root.join("var/lib/kloigos")), (0o755, 0, 0));
    let manifest =
        std::fs::read_to_string(root.join("var/lib/kloigos/install-manifest")).expect("manifest");
    assert!(manifest.contains("usr/local/bin/kloigos\n"), "{manifest}");
    // A scratch install creates no account on this host.
    assert!(run("getent", &["passwd", &format!("kinst{}", s.uid)]).code != 0);

    let installed = s.snap();
    let again = s.install(&[]);
    again.ok().out_has("unchanged:");
    assert!(
        !again.stdout.contains("install.sh: install "),
        "{}",
        again.stdout
    );
    assert_eq!(s.snap(), installed, "re-running changed something");

    s.uninstall(&["--dry-run"])
        .ok()
        .out_has("dry run: nothing was changed");
    assert_eq!(
        s.snap(),
        installed,
        "--uninstall --dry-run changed something"
    );
    s.uninstall(&[])
        .ok()
        .out_has("skipped (DESTDIR): kloigos-housekeeper --uninstall")
        .out_has("the shared directory is untouched");
    assert_eq!(
        s.snap(),
        before,
        "--uninstall did not restore the scratch root"
    );
    assert_eq!(mode_owner(&s.path("shared")), (0o755, s.uid, s.uid));
    eprintln!("install: destdir install, re-run, dry runs and uninstall -> ok");
}

#[test]
fn install_prefix_systemd_and_build_dry_run() {
    require_root!();
    let s = Scratch::new("prefix");
    let before = s.snap();
    // The build path, printed only (the suite builds once, in debug).
    let mut a = s.args();
    let i = a.iter().position(|x| x == "--bin-dir").expect("bin-dir");
    a.drain(i..i + 2);
    a.push("--dry-run".into());
    install_sh(&a)
        .ok()
        .out_has("cargo build --release")
        .out_has("dry run: nothing was changed");
    assert_eq!(s.snap(), before);
    // Cargo builds where CARGO_TARGET_DIR says, and install.sh looks there.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let want = format!("kloigos-gen {}/release ", elsewhere.path().display());
    Run::of(
        Command::new(kloigos_tests::node::install_script())
            .args(&a)
            .env("CARGO_TARGET_DIR", elsewhere.path()),
    )
    .ok()
    .out_has(&want);
    assert_eq!(s.snap(), before);

    s.install(&["--prefix", "/opt/kloigos", "--scheduler", "systemd"])
        .ok()
        .out_has("skipped (DESTDIR): systemctl daemon-reload");
    let root = s.root();
    assert_eq!(
        mode_owner(&root.join("opt/kloigos/bin/kloigos")),
        (0o4755, s.uid, s.uid)
    );
    let svc = std::fs::read_to_string(root.join("etc/systemd/system/kloigos-housekeeper.service"))
        .expect("service unit");
    assert!(
        svc.contains("ExecStart=/opt/kloigos/sbin/kloigos-housekeeper --once"),
        "{svc}"
    );
    assert!(root
        .join("etc/systemd/system/kloigos-housekeeper.timer")
        .is_file());
    assert!(!root.join("etc/cron.d").exists());
    s.uninstall(&[]).ok();
    assert_eq!(s.snap(), before);
    eprintln!("install: --prefix, systemd units, build dry run -> ok");
}

#[test]
fn install_edited_config_is_kept() {
    require_root!();
    let s = Scratch::new("edited");
    s.install(&[]).ok();
    let cfg = s.root().join("etc/kloigos/config.json");
    let edited = std::fs::read_to_string(&cfg)
        .expect("config")
        .replace("\"grace_s\": 60", "\"grace_s\": 5");
    std::fs::write(&cfg, &edited).expect("edit");
    s.install(&[])
        .ok()
        .out_has("kept the existing")
        .out_has("not overwritten");
    assert_eq!(std::fs::read_to_string(&cfg).expect("config"), edited);
    s.uninstall(&[]).ok().out_has("edited since install");
    assert_eq!(std::fs::read_to_string(&cfg).expect("config"), edited);
    assert!(!s.root().join("usr/local/bin/kloigos").exists());
    eprintln!("install: an edited config.json is neither overwritten nor removed -> ok");
}

#[test]
fn install_clear_errors() {
    require_root!();
    let s = Scratch::new("errors");
    let before = s.snap();
    let user = kloigos_tests::pam::user("kinsterr", &[]);

    // Not root: run as a throwaway user.
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--init-groups", "--"])
        .arg(kloigos_tests::node::install_script())
        .args(s.args());
    let r = Run::of(&mut c);
    r.code(1).err_has("must run as root");

    // Shared path missing.
    let mut a = s.args();
    let i = a.iter().position(|x| x == "--shared").expect("shared");
    a[i + 1] = s.path("no-such-dir").display().to_string();
    install_sh(&a)
        .code(1)
        .err_has("does not exist: mount the NFS export there first");

    // Shared path owned by someone else.
    a[i + 1] = s.path("pamd").display().to_string();
    install_sh(&a)
        .code(1)
        .err_has("is owned by uid 0, not by")
        .err_has(&format!("chown {}:{}", s.uid, s.uid));

    // The uid belongs to another user.
    let mut a = s.args();
    let i = a.iter().position(|x| x == "--uid").expect("uid");
    a[i + 1] = user.uid.to_string();
    install_sh(&a).code(1).err_has(&format!(
        "uid {} is already taken by the user kinsterr",
        user.uid
    ));

    // The account exists with another uid.
    let mut a = s.args();
    let i = a.iter().position(|x| x == "--service-user").expect("svc");
    a[i + 1] = "kinsterr".into();
    install_sh(&a)
        .code(1)
        .err_has("the account kinsterr exists with uid");

    // No PAM modules: the module directory hidden by an empty tmpfs.
    let moddir = module_dir();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs none \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(&moddir)
        .arg(kloigos_tests::node::install_script())
        .args(s.args());
    Run::of(&mut c).code(1).err_has("libpam missing");

    // Usage errors name the argument.
    install_sh(&["--uid".to_string(), "abc".into()])
        .code(2)
        .err_has("--uid 'abc' is not a number");
    install_sh(&["--frobnicate".to_string()])
        .code(2)
        .err_has("unknown argument '--frobnicate'");
    s.uninstall(&[]).code(1).err_has("no install manifest");

    assert_eq!(s.snap(), before, "a refused install wrote something");
    eprintln!("install: clear errors (not root, shared missing, wrong owner, uid clash, name clash, libpam missing) -> ok");
}

/// A minimal sshd stack in the Debian shape (`@include common-account`).
fn write_pamd(s: &Scratch, sshd: &str) -> PathBuf {
    let d = s.path("pamd");
    std::fs::write(d.join("sshd"), sshd).expect("sshd");
    std::fs::copy("/etc/pam.d/common-account", d.join("common-account")).expect("common-account");
    std::fs::write(
        d.join("other"),
        "auth required pam_deny.so\naccount required pam_deny.so\n",
    )
    .expect("other");
    d.join("sshd")
}

const SSHD_STACK: &str = "# test stack\nauth required pam_deny.so\naccount required pam_nologin.so\n@include common-account\nsession required pam_permit.so\npassword required pam_deny.so\n";

#[test]
fn install_enable_pam_checks_with_pamtester_and_uninstall_restores() {
    require_root!();
    let s = Scratch::new("pamok");
    let sshd = write_pamd(&s, SSHD_STACK);
    let pamd = s.path("pamd").display().to_string();
    let orig = std::fs::read(&sshd).expect("sshd");

    let r = s.install(&["--enable-pam", "--pam-dir", &pamd]);
    r.ok().out_has("checked with pamtester: root still passes");
    let text = std::fs::read_to_string(&sshd).expect("sshd");
    let lines: Vec<&str> = text.lines().collect();
    let inc = lines
        .iter()
        .position(|l| *l == "@include common-account")
        .expect("include");
    assert!(lines[inc + 1].starts_with("# kloigos:"), "{text}");
    assert_eq!(lines[inc + 2], "account required pam_kloigos.so", "{text}");
    // The session hook after the last session module (pam_env's files
    // cannot override its variables), once.
    let sess = lines
        .iter()
        .position(|l| *l == "session required pam_permit.so")
        .expect("session");
    assert!(lines[sess + 1].starts_with("# kloigos:"), "{text}");
    assert_eq!(lines[sess + 2], "session optional pam_kloigos.so", "{text}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("pam_kloigos.so"))
            .count(),
        2,
        "{text}"
    );
    let backup = s.root().join("var/lib/kloigos/pam-backup/sshd");
    assert_eq!(std::fs::read(&backup).expect("backup"), orig);

    let wired = std::fs::read(&sshd).expect("sshd");
    s.install(&["--enable-pam", "--pam-dir", &pamd])
        .ok()
        .out_has("already has pam_kloigos.so");
    assert_eq!(std::fs::read(&sshd).expect("sshd"), wired);

    s.uninstall(&[]).ok().out_has("restore");
    assert_eq!(std::fs::read(&sshd).expect("sshd"), orig);
    assert!(!backup.exists());

    // Edited after install: only the kloigos lines go.
    s.install(&["--enable-pam", "--pam-dir", &pamd]).ok();
    let mut edited = std::fs::read_to_string(&sshd).expect("sshd");
    edited.push_str("session optional pam_env.so\n");
    std::fs::write(&sshd, &edited).expect("edit");
    s.uninstall(&[]).ok().out_has("edited since install");
    let mut want = String::from_utf8(orig).expect("utf-8");
    want.push_str("session optional pam_env.so\n");
    assert_eq!(std::fs::read_to_string(&sshd).expect("sshd"), want);
    eprintln!(
        "install: --enable-pam verified by pamtester, idempotent, undone by --uninstall -> ok"
    );
}

/// Runs `pamtester -v SERVICE USER OPS...` in the view of the system as
/// installed into `s` (as install.sh checks it): the staged /etc and module
/// directory laid over the live ones, `pamd` in place of /etc/pam.d.
fn pamtester_in_view(s: &Scratch, pamd: &Path, service: &str, user: &str, ops: &[&str]) -> Run {
    let root = s.root();
    let moddir = module_dir();
    let staged_mods = root.join(moddir.strip_prefix("/").expect("absolute"));
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "set -e; root=$1; mods=$2; staged=$3; pamd=$4; shift 4\n\
             mount -t overlay kloigos-view -o \"lowerdir=$root/etc:/etc\" /etc\n\
             mount -t overlay kloigos-view -o \"lowerdir=$staged:$mods\" \"$mods\"\n\
             mount --bind \"$pamd\" /etc/pam.d\n\
             exec pamtester -v \"$@\"",
        )
        .arg("sh")
        .arg(&root)
        .arg(&moddir)
        .arg(&staged_mods)
        .arg(pamd)
        .arg(service)
        .arg(user)
        .args(ops);
    Run::of(&mut c)
}

#[test]
fn install_enable_pam_session_hook_sets_the_variables_and_never_denies() {
    require_root!();
    let s = Scratch::new("pamsession");
    let sshd = write_pamd(&s, SSHD_STACK);
    let pamd = s.path("pamd");
    let pd = pamd.display().to_string();
    let orig = std::fs::read(&sshd).expect("sshd");
    s.install(&["--enable-pam", "--pam-dir", &pd])
        .ok()
        .out_has("add 'session optional pam_kloigos.so'")
        .out_has("root still passes the sshd account stack and opens a session");

    // The installed config pointed at a cluster holding nodeA, where one
    // user holds a booking and another none (put back before uninstalling).
    let cluster = kloigos_tests::cluster::TempCluster::new();
    cluster.add_node("nodeA", "0-1", Some(1), None);
    let booked = kloigos_tests::pam::user("kinsbkd", &[]);
    let unbooked = kloigos_tests::pam::user("kinsfree", &[]);
    let b = cluster
        .run(&[
            "--json",
            "alloc",
            "-w",
            "nodeA",
            "-u",
            &booked.name,
            "-t",
            "1h",
        ])
        .ok()
        .json();
    let id = b["id"].as_str().expect("booking id").to_string();
    let cfg_path = s.root().join("etc/kloigos/config.json");
    let cfg_orig = std::fs::read(&cfg_path).expect("config");
    let mut cfg: serde_json::Value = serde_json::from_slice(&cfg_orig).expect("config json");
    cfg["shared"] = serde_json::json!(cluster.shared());
    std::fs::write(&cfg_path, cfg.to_string()).expect("config");

    // A copy of the installed stack that then prints the PAM environment
    // its session stack left (pam_exec hands it to env). Still "sshd": the
    // module acts for that service only.
    let env_log = s.path("env.log");
    let pamd_env = s.path("pamd-env");
    std::fs::create_dir(&pamd_env).expect("mkdir");
    for f in ["common-account", "other"] {
        std::fs::copy(pamd.join(f), pamd_env.join(f)).expect("copy");
    }
    let mut stack = std::fs::read_to_string(&sshd).expect("sshd");
    stack.push_str(&format!(
        "session required pam_exec.so log={} /usr/bin/env\n",
        env_log.display()
    ));
    std::fs::write(pamd_env.join("sshd"), stack).expect("sshd copy");
    let session_env = |user: &str| -> String {
        let _ = std::fs::remove_file(&env_log);
        let r = pamtester_in_view(&s, &pamd_env, "sshd", user, &["open_session"]);
        r.ok().out_has("successfully opened a session");
        std::fs::read_to_string(&env_log).expect("env log")
    };

    // The booked user gets in, and the session gets the booking's variables.
    pamtester_in_view(&s, &pamd, "sshd", &booked.name, &["acct_mgmt"]).ok();
    pamtester_in_view(
        &s,
        &pamd,
        "sshd",
        &booked.name,
        &["open_session", "close_session"],
    )
    .ok()
    .out_has("successfully opened a session");
    let env = session_env(&booked.name);
    for want in [
        format!("KLOIGOS_BOOKING={id}"),
        "KLOIGOS_CPUS=0".to_string(),
    ] {
        assert!(env.lines().any(|l| l == want), "lacks {want}:\n{env}");
    }
    // The unbooked one is refused by the account line, but the session
    // hook never denies: a session opens, without variables.
    pamtester_in_view(&s, &pamd, "sshd", &unbooked.name, &["acct_mgmt"])
        .code(1)
        .err_has("Permission denied");
    pamtester_in_view(
        &s,
        &pamd,
        "sshd",
        &unbooked.name,
        &["open_session", "close_session"],
    )
    .ok()
    .out_has("successfully opened a session");
    let env = session_env(&unbooked.name);
    assert!(!env.contains("KLOIGOS_"), "{env}");

    std::fs::write(&cfg_path, &cfg_orig).expect("config");
    s.uninstall(&[]).ok().out_has("restore");
    assert_eq!(std::fs::read(&sshd).expect("sshd"), orig);
    assert!(!s.root().join("var/lib/kloigos").exists());
    eprintln!("install: the session hook sets the booking's variables, never denies, and goes with --uninstall -> ok");
}

#[test]
fn install_enable_pam_adds_the_session_line_to_an_older_install() {
    require_root!();
    let s = Scratch::new("pamupgrade");
    let sshd = write_pamd(&s, SSHD_STACK);
    let pamd = s.path("pamd").display().to_string();
    let orig = std::fs::read(&sshd).expect("sshd");
    s.install(&["--enable-pam", "--pam-dir", &pamd]).ok();
    // As an install.sh without the session hook left it: the account line only.
    let text = std::fs::read_to_string(&sshd).expect("sshd");
    let older: String = text
        .lines()
        .filter(|l| {
            !l.contains("session optional pam_kloigos.so") && !l.contains("booking's variables")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(older.contains("account required pam_kloigos.so"), "{older}");
    std::fs::write(&sshd, &older).expect("older");
    let manifest = s.root().join("var/lib/kloigos/install-manifest");
    let m = std::fs::read_to_string(&manifest).expect("manifest");
    let sum = run("sha256sum", &[sshd.to_str().expect("utf-8")]);
    let older_sum = sum
        .stdout
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    let m: String = m
        .lines()
        .map(|l| {
            if l.starts_with("pam\t") {
                let mut f: Vec<&str> = l.split('\t').collect();
                f[3] = &older_sum;
                f.join("\t")
            } else {
                l.to_string()
            }
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&manifest, m).expect("manifest");

    s.install(&["--enable-pam", "--pam-dir", &pamd])
        .ok()
        .out_has("kept the backup")
        .out_has("add 'session optional pam_kloigos.so'");
    let now = std::fs::read_to_string(&sshd).expect("sshd");
    assert_eq!(
        now, text,
        "the session line goes where a fresh install puts it"
    );
    s.uninstall(&[]).ok().out_has("restore");
    assert_eq!(std::fs::read(&sshd).expect("sshd"), orig);
    eprintln!("install: --enable-pam on an older install adds just the session line -> ok");
}

#[test]
fn install_enable_pam_rolls_back_when_root_would_be_locked_out() {
    require_root!();
    let s = Scratch::new("pamrollback");
    let sshd = write_pamd(&s, SSHD_STACK);
    let pamd = s.path("pamd").display().to_string();
    let orig = std::fs::read(&sshd).expect("sshd");

    // A module that cannot load: `account required` then fails for everyone.
    let bins = s.path("broken-bin");
    std::fs::create_dir(&bins).expect("mkdir");
    for b in ["kloigos", "kloigos-housekeeper"] {
        std::fs::copy(kloigos_tests::bin(b), bins.join(b)).expect("copy");
    }
    std::fs::write(bins.join("libpam_kloigos.so"), b"not an ELF file").expect("junk");
    let mut a = s.args();
    let i = a.iter().position(|x| x == "--bin-dir").expect("bin-dir");
    a[i + 1] = bins.display().to_string();
    a.extend(["--enable-pam".to_string(), "--pam-dir".into(), pamd.clone()]);
    install_sh(&a)
        .code(1)
        .err_has("rolled back")
        .err_has("is as before");
    assert_eq!(std::fs::read(&sshd).expect("sshd"), orig);
    assert!(!s.root().join("var/lib/kloigos/pam-backup/sshd").exists());

    // A stack that already refuses root is left alone.
    let broken = "account requisite pam_deny.so\n";
    write_pamd(&s, broken);
    s.install(&["--enable-pam", "--pam-dir", &pamd])
        .code(1)
        .err_has("already refuses root");
    assert_eq!(std::fs::read_to_string(&sshd).expect("sshd"), broken);
    s.uninstall(&[]).ok();
    eprintln!("install: a PAM change that locks root out is rolled back -> ok");
}

#[test]
fn install_sh_is_shellcheck_clean() {
    // shellcheck is in tests/apt-packages.txt; ./tests/run.sh installs it as root.
    kloigos_tests::require_ok!(kloigos_tests::skip::need("shellcheck", "shellcheck"));
    let script = kloigos_tests::node::install_script();
    let r = run("shellcheck", &[script.to_str().expect("utf-8")]);
    assert_eq!(
        r.code, 0,
        "shellcheck install.sh:\n{}{}",
        r.stdout, r.stderr
    );
    // User input never goes through eval.
    let text = std::fs::read_to_string(&script).expect("install.sh");
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("eval ") || l.contains(" eval ")),
        "install.sh uses eval"
    );
}

#[test]
fn install_completions_when_generated_files_exist() {
    require_root!();
    let s = Scratch::new("completions");
    let before = s.snap();
    // Prebuilt binaries with generated completions next to them (the
    // layout install.sh looks for: <bin-dir>/completions/).
    let bins = s.path("bin");
    std::fs::create_dir_all(bins.join("completions")).expect("mkdir");
    for b in ["kloigos", "kloigos-housekeeper", "libpam_kloigos.so"] {
        std::fs::copy(kloigos_tests::bin(b), bins.join(b)).expect("copy");
    }
    for (f, text) in [
        ("kloigos.bash", "complete -F _kloigos kloigos\n"),
        ("_kloigos", "#compdef kloigos\n"),
        ("kloigos.fish", "complete -c kloigos\n"),
    ] {
        std::fs::write(bins.join("completions").join(f), text).expect("completion");
    }
    let mut a = s.args();
    let i = a.iter().position(|x| x == "--bin-dir").expect("bin-dir");
    a[i + 1] = bins.display().to_string();
    install_sh(&a).ok();
    let root = s.root();
    for (p, head) in [
        (
            "usr/share/bash-completion/completions/kloigos",
            "complete -F",
        ),
        ("usr/share/zsh/vendor-completions/_kloigos", "#compdef"),
        (
            "usr/share/fish/vendor_completions.d/kloigos.fish",
            "complete -c",
        ),
    ] {
        let text = std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(text.starts_with(head), "{p}: {text}");
        assert_eq!(mode_owner(&root.join(p)), (0o644, 0, 0));
    }
    s.uninstall(&[]).ok();
    assert_eq!(s.snap(), before);
    eprintln!("install: shell completions installed when generated -> ok");
}

#[test]
fn install_in_a_systemd_container_enables_the_timer() {
    require_root!();
    let rootfs = kloigos_tests::require_ok!(kloigos_tests::nspawn::rootfs());
    let s = Scratch::new("systemd-container");
    let repo = kloigos_tests::node::install_script()
        .parent()
        .expect("repo")
        .to_path_buf();
    let shared = s.path("shared");
    let name = format!("kinst{}", std::process::id());
    // The binaries are wherever cargo built them (CARGO_TARGET_DIR may
    // point outside the repository).
    let built = kloigos_tests::bin_dir();
    let bin_dir = "/kloigos-bin";
    let c = kloigos_tests::nspawn::Container::boot(
        &rootfs,
        &name,
        &[
            (&repo, "/src", true),
            (&built, bin_dir, true),
            (&shared, "/srv/kloigos", false),
        ],
    )
    .unwrap_or_else(|why| panic!("the container did not boot: {why}"));
    let uid = s.uid.to_string();
    let before = c.exec(&[
        "sh",
        "-c",
        "getent passwd; getent group; systemctl list-unit-files 'kloigos*'",
    ]);
    let args = [
        "/src/install.sh",
        "--uid",
        &uid,
        "--shared",
        "/srv/kloigos",
        "--bin-dir",
        bin_dir,
    ];
    let r = c.exec(&args);
    assert_eq!(
        r.code, 0,
        "install.sh in the container:\n{}{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stdout
            .contains("enable the timer kloigos-housekeeper.timer"),
        "{}",
        r.stdout
    );
    let id = c.exec(&["id", "-u", "kloigos"]);
    assert_eq!(id.stdout.trim(), uid, "{id:?}");
    let svc = c.exec(&["getent", "passwd", "kloigos"]).stdout;
    assert!(svc.contains(":/nonexistent:/usr/sbin/nologin"), "{svc}");
    for q in ["is-enabled", "is-active"] {
        let r = c.exec(&["systemctl", q, "kloigos-housekeeper.timer"]);
        assert_eq!(r.code, 0, "timer {q}: {r:?}");
    }
    assert!(
        c.exec(&["test", "-e", "/etc/cron.d/kloigos-housekeeper"])
            .code
            != 0
    );
    // The installed service runs a pass: the cluster made by the first admin.
    let k = "/usr/local/bin/kloigos";
    let node = c.exec(&["hostname", "-s"]).stdout.trim().to_string();
    for argv in [
        vec![k, "admin", "init"],
        vec![k, "admin", "add-node", &node, "--cpus", "0"],
        vec!["systemctl", "start", "kloigos-housekeeper.service"],
    ] {
        let r = c.exec(&argv);
        let log = c.exec(&[
            "journalctl",
            "-u",
            "kloigos-housekeeper.service",
            "--no-pager",
        ]);
        assert_eq!(r.code, 0, "{argv:?}: {r:?}\n{}", log.stdout);
    }
    let facts = shared.join("nodes").join(&node).join("facts.json");
    assert!(
        facts.is_file(),
        "the housekeeper service wrote no {}: {}",
        facts.display(),
        c.exec(&[
            "journalctl",
            "-u",
            "kloigos-housekeeper.service",
            "--no-pager"
        ])
        .stdout
    );
    let again = c.exec(&args);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        !again.stdout.contains("enable the timer"),
        "{}",
        again.stdout
    );

    let r = c.exec(&["/src/install.sh", "--uninstall"]);
    assert_eq!(
        r.code, 0,
        "uninstall in the container:\n{}{}",
        r.stdout, r.stderr
    );
    let after = c.exec(&[
        "sh",
        "-c",
        "getent passwd; getent group; systemctl list-unit-files 'kloigos*'",
    ]);
    assert_eq!(
        after.stdout, before.stdout,
        "uninstall left the container changed"
    );
    assert!(c.exec(&["test", "-e", "/usr/local/bin/kloigos"]).code != 0);
    assert_eq!(
        mode_owner(&shared),
        (0o755, s.uid, s.uid),
        "shared dir kept"
    );
    eprintln!("install: systemd node: account created, timer enabled, all undone -> ok");
}
