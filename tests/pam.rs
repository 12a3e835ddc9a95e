//! System tests of `pam_kloigos.so` (as root): the built module through
//! pamtester on scratch `/etc/pam.d` services, and through a real sshd with
//! key logins. Every test makes its own users, cluster and service file and
//! removes them; syslog lines are caught on a `/dev/log` that exists only
//! inside the test's mount namespace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kloigos_core::booking::BookingId;
use kloigos_core::names::{GroupName, NodeName, UserName};
use kloigos_core::policy::Policy;
use kloigos_core::state::{Request, Size};
use kloigos_core::store::{to_json, LocalCopy};
use kloigos_tests::cluster::TempCluster;
use kloigos_tests::cmd::{run, Run};
use kloigos_tests::fuse::{Behaviour, FuseMount, Seen, PATIENCE};
use kloigos_tests::pam::{self, pamtester, PamService, Pamtested, Sshd, SyslogSink, Verdict};
use kloigos_tests::poll::wait_until;
use kloigos_tests::sys::TempUser;
use kloigos_tests::uid;

/// A way to spoil the state file.
type Spoil<'a> = Box<dyn Fn() + 'a>;

const LOG_WAIT: Duration = Duration::from_secs(5);

/// How far past its deadline a decision may come and still count as "cut
/// off at the deadline": wide, for a loaded 2-core machine, yet far below
/// the forever of a read that was not cut off.
const SLACK: Duration = Duration::from_millis(2600);

/// A unique short suffix for names (users, services) of one test.
fn tag(t: &str) -> String {
    format!("{t}{}", std::process::id() % 100_000)
}

/// One gated node: a cluster with node `node`, a config for it, a scratch
/// PAM service running the module, and a syslog sink.
struct Gate {
    cluster: TempCluster,
    node: NodeName,
    sink: SyslogSink,
    service: PamService,
    config: PathBuf,
    copy: PathBuf,
    /// The cluster policy (kept: tests remove cluster.json).
    policy: Policy,
}

impl Gate {
    fn new(t: &str, policy: Policy) -> Gate {
        let cluster = TempCluster::with_policy(policy.clone());
        let node = cluster.add_node(&format!("n-{}", tag(t)), "0-3", None, None);
        let config = cluster.dir.path().join("pam-config.json");
        let copy = cluster.dir.path().join("local-copy.json");
        let service = PamService::create(&format!("kloigos-test-{}", tag(t)), "");
        let g = Gate {
            cluster,
            node,
            sink: SyslogSink::new(),
            service,
            config,
            copy,
            policy,
        };
        g.write_config(&g.node.to_string(), "deny", 1500);
        g.args("");
        g
    }

    fn write_config(&self, node: &str, on_error: &str, timeout_ms: u64) {
        let c = serde_json::json!({
            "shared": self.cluster.shared(),
            "node": node,
            "pam": { "on_error": on_error, "timeout_ms": timeout_ms, "cache_max_age_s": 600 },
            "housekeeper": { "state_copy": self.copy },
        });
        std::fs::write(&self.config, c.to_string()).expect("write config");
    }

    /// Sets the module's arguments (config= and services= for this service
    /// are added unless `raw` arguments say otherwise).
    fn args(&self, extra: &str) {
        self.service.set(&PamService::stack(&format!(
            "config={} services={} {extra}",
            self.config.display(),
            self.service.name
        )));
    }

    fn raw_args(&self, args: &str) {
        self.service.set(&PamService::stack(args));
    }

    /// Books the node for `user` over `[now+from, now+to)` (seconds).
    fn book(&self, user: &TempUser, from: i64, to: i64) -> BookingId {
        let now = Timestamp::now();
        let at = |s: i64| now.checked_add(SignedDuration::from_secs(s)).expect("time");
        let name = UserName::new(&user.name).expect("name");
        let req = Request {
            user: name.clone(),
            uid: uid(user.uid),
            created_by: name,
            size: Size::Whole,
            start: at(from),
            end: at(to),
            note: Default::default(),
            held_elsewhere: 0,
        };
        // Booked "at" one minute before its start, so past spans are accepted.
        let booked_at = at(from.min(0) - 60);
        self.cluster
            .store
            .update_node(&self.node, now, |st| {
                let b = st.book(&req, &Policy::default(), booked_at, &[])?;
                Ok((b.id, vec![]))
            })
            .expect("book")
    }

    fn release(&self, id: &BookingId) {
        self.cluster
            .store
            .update_node(&self.node, Timestamp::now(), |st| {
                st.release(id, Timestamp::now())?;
                Ok(((), vec![]))
            })
            .expect("release");
    }

    /// Writes the housekeeper's local copy as of `age_s` seconds ago.
    fn write_copy(&self, age_s: i64) {
        let policy = self.policy.clone();
        let state = self.cluster.store.node(&self.node).expect("state");
        let at = Timestamp::now()
            .checked_sub(SignedDuration::from_secs(age_s))
            .expect("time");
        std::fs::write(
            &self.copy,
            to_json(&LocalCopy::new(at, policy, Some(state))),
        )
        .expect("write copy");
    }

    fn state_path(&self) -> PathBuf {
        self.cluster.store.state_path(&self.node)
    }

    /// Runs the stack for `user`; returns the result and the module's log line.
    fn check(&self, user: &str) -> (Pamtested, String) {
        self.check_env(user, &[])
    }

    fn check_env(&self, user: &str, env: &[(&str, &str)]) -> (Pamtested, String) {
        let before = self.sink.count();
        let r = pamtester(&self.sink, &self.service.name, user, env);
        let line = self
            .sink
            .wait_for(
                before,
                &["pam_kloigos(", &format!("user=\"{user}\"")],
                LOG_WAIT,
            )
            .unwrap_or_default();
        (r, line)
    }

    /// Sets a stack in which pam_permit follows the module (see
    /// [`PamService::permissive_stack`]).
    fn permissive(&self, extra: &str) {
        self.service.set(&PamService::permissive_stack(&format!(
            "config={} services={} {extra}",
            self.config.display(),
            self.service.name
        )));
    }

    /// `kloigos --config CONFIG --json check-login USER NODE`, as root or
    /// as `by`: its decision ("allow", "deny", "ignore") and source.
    fn check_login(&self, user: &str, by: Option<&TempUser>) -> (String, String) {
        let kloigos = kloigos_tests::bin("kloigos");
        let mut c = match by {
            Some(u) => {
                let mut c = std::process::Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .arg("--init-groups")
                    .arg(&kloigos);
                c
            }
            None => std::process::Command::new(&kloigos),
        };
        c.arg("--config").arg(&self.config).args([
            "--json",
            "check-login",
            user,
            self.node.as_str(),
        ]);
        let r = kloigos_tests::cmd::Run::of(&mut c);
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("check-login printed no JSON ({e}): {r:?}"));
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        (field("decision"), field("source"))
    }

    /// Runs the stack for `user`, and check-login as root: both must take
    /// the decision `want` ("allow", "deny", "ignore") from `source`.
    /// Returns the module's log line.
    #[track_caller]
    fn agree(&self, user: &str, want: &str, source: &str) -> String {
        let (r, line) = self.check(user);
        assert!(
            line.contains(&format!("result={want} source={source} ")),
            "{user}: PAM {:?}\nlog: {line}",
            r.verdict
        );
        let pam = match want {
            "deny" => Verdict::Deny,
            _ => Verdict::Allow,
        };
        assert_eq!(r.verdict, pam, "{user}: {:?}\nlog: {line}", r.run);
        assert_eq!(
            self.check_login(user, None),
            (want.to_string(), source.to_string()),
            "check-login disagrees with PAM's {line}"
        );
        line
    }

    #[track_caller]
    fn expect(&self, user: &str, want: Verdict) -> (Pamtested, String) {
        let (r, line) = self.check(user);
        assert_eq!(
            r.verdict,
            want,
            "{user}: {:?}\nlog: {line}\nall log lines: {:#?}",
            r.run,
            self.sink.lines()
        );
        (r, line)
    }
}

#[test]
fn booked_user_is_allowed_and_others_are_denied_with_the_reason() {
    kloigos_tests::require_root!();
    let g = Gate::new("bk", Policy::default());
    let booked = pam::user(&format!("kpa{}", tag("")), &[]);
    let stranger = pam::user(&format!("kpb{}", tag("")), &[]);
    let later = pam::user(&format!("kpc{}", tag("")), &[]);
    let expired = pam::user(&format!("kpd{}", tag("")), &[]);
    let id = g.book(&booked, -60, 3600);
    g.book(&later, 3600, 7200);
    g.book(&expired, -7200, -3600);

    let (_, line) = g.expect(&booked.name, Verdict::Allow);
    assert!(line.contains(&format!("node={}", g.node)), "{line}");
    assert!(
        line.contains(&format!("booking {id} holds until")),
        "{line}"
    );
    assert!(line.contains("result=allow source=shared"), "{line}");
    // Authpriv (10 << 3) | info (6).
    assert!(line.starts_with("<86>"), "{line}");

    let (r, line) = g.expect(&stranger.name, Verdict::Deny);
    let msg = format!(
        "no booking for {} on {} — book with: kloigos alloc -w {}",
        stranger.name, g.node, g.node
    );
    assert!(
        r.run.stderr.contains(&msg),
        "conversation message missing: {}",
        r.run.stderr
    );
    assert!(
        line.contains("result=deny source=shared") && line.contains(&msg),
        "{line}"
    );
    assert!(line.starts_with("<85>"), "a denial is a notice: {line}");

    let (r, _) = g.expect(&later.name, Verdict::Deny);
    assert!(r.run.stderr.contains("starts at"), "{}", r.run.stderr);
    g.expect(&expired.name, Verdict::Deny);

    // Released: refused at the next login.
    g.release(&id);
    g.expect(&booked.name, Verdict::Deny);
}

#[test]
fn bypass_admin_and_root_get_in_with_the_shared_dir_removed() {
    kloigos_tests::require_root!();
    let admins = pam::group(&format!("kpadm{}", tag("")));
    let policy = Policy {
        bypass_users: vec![UserName::new(&format!("kpe{}", tag(""))).expect("name")],
        admin_group: Some(GroupName::new(&admins.name).expect("name")),
        ..Policy::default()
    };
    let g = Gate::new("byp", policy);
    let bypass = pam::user(&format!("kpe{}", tag("")), &[]);
    let admin = pam::user(&format!("kpf{}", tag("")), &[&admins.name]);
    let stranger = pam::user(&format!("kpg{}", tag("")), &[]);
    // With the share up and no local copy: the policy comes from the share.
    g.expect(&bypass.name, Verdict::Allow);
    // A copy two days old still gives the policy for this first step.
    g.write_copy(2 * 86_400);
    std::fs::remove_dir_all(g.cluster.shared()).expect("rm shared");
    let (_, line) = g.expect(&bypass.name, Verdict::Allow);
    assert!(
        line.contains("is a bypass user") && line.contains("source=policy"),
        "{line}"
    );
    let (_, line) = g.expect(&admin.name, Verdict::Allow);
    assert!(line.contains("is a cluster admin"), "{line}");
    g.expect("root", Verdict::Allow);
    // Everyone else: the copy is stale, so on_error (deny).
    let (_, line) = g.expect(&stranger.name, Verdict::Deny);
    assert!(
        line.contains("source=on_error") && line.contains("older than cache_max_age_s"),
        "{line}"
    );
    // No copy either: root still gets in, the admin gets on_error.
    std::fs::remove_file(&g.copy).expect("rm copy");
    g.expect("root", Verdict::Allow);
    g.expect(&admin.name, Verdict::Deny);
}

#[test]
fn unknown_users_and_system_accounts_are_ignored() {
    kloigos_tests::require_root!();
    let g = Gate::new("unk", Policy::default());
    let (_, line) = g.expect(&format!("kpghost{}", tag("")), Verdict::Ignore);
    assert!(
        line.contains("result=ignore") && line.contains("no account named"),
        "{line}"
    );
    let (_, line) = g.expect("daemon", Verdict::Ignore);
    assert!(line.contains("below min_uid"), "{line}");
}

#[test]
fn a_host_that_is_not_a_node_is_ignored_but_an_unmounted_share_is_an_error() {
    kloigos_tests::require_root!();
    let g = Gate::new("nn", Policy::default());
    let u = pam::user(&format!("kph{}", tag("")), &[]);
    g.write_config("login-node", "deny", 1500);
    let (_, line) = g.expect(&u.name, Verdict::Ignore);
    assert!(line.contains("not a node of the cluster"), "{line}");
    // Authpriv warning (10 << 3 | 4).
    assert!(line.starts_with("<84>"), "{line}");
    // No cluster.json: the share is not mounted; that is an error, not "not a node".
    g.write_config(&g.node.to_string(), "deny", 1500);
    std::fs::remove_file(g.cluster.store.cluster_path()).expect("rm cluster.json");
    let (_, line) = g.expect(&u.name, Verdict::Deny);
    assert!(
        line.contains("source=on_error") && line.contains("not mounted"),
        "{line}"
    );
    g.write_config("login-node", "deny", 1500);
    g.expect(&u.name, Verdict::Deny);
    g.args("on_error=allow");
    g.expect(&u.name, Verdict::Allow);
}

#[test]
fn services_not_listed_are_ignored() {
    kloigos_tests::require_root!();
    let g = Gate::new("svc", Policy::default());
    let u = pam::user(&format!("kpi{}", tag("")), &[]);
    g.expect(&u.name, Verdict::Deny);
    g.raw_args(&format!(
        "config={} services=sshd,login debug",
        g.config.display()
    ));
    let r = pamtester(&g.sink, &g.service.name, &u.name, &[]);
    assert_eq!(r.verdict, Verdict::Ignore, "{:?}", r.run);
    // With debug, the skip is logged (and names the list); no decision is taken.
    let skip = g
        .sink
        .wait_for(0, &["is not in services=sshd,login"], LOG_WAIT);
    assert!(skip.is_some(), "{:#?}", g.sink.lines());
    assert!(
        !g.sink.lines().iter().any(|l| l.contains("result=ignore")),
        "{:#?}",
        g.sink.lines()
    );
    // Default list: sshd only.
    g.raw_args(&format!("config={}", g.config.display()));
    let r = pamtester(&g.sink, &g.service.name, &u.name, &[]);
    assert_eq!(r.verdict, Verdict::Ignore, "{:?}", r.run);
}

#[test]
fn environment_variables_have_no_effect() {
    kloigos_tests::require_root!();
    let g = Gate::new("env", Policy::default());
    let u = pam::user(&format!("kpj{}", tag("")), &[]);
    // A config that would let everyone in.
    let open = g.cluster.dir.path().join("open.json");
    std::fs::write(
        &open,
        r#"{"shared":"/nonexistent","pam":{"on_error":"allow"}}"#,
    )
    .expect("write");
    let env = [
        ("KLOIGOS_CONFIG", open.to_str().expect("utf-8")),
        ("KLOIGOS_SHARED", "/nonexistent"),
        ("KLOIGOS_NODE", "elsewhere"),
        ("TZ", "Pacific/Kiritimati"),
    ];
    let (r, _) = g.check_env(&u.name, &env);
    assert_eq!(r.verdict, Verdict::Deny, "{:?}", r.run);
    // Without config=, the module reads /etc/kloigos/config.json, never $KLOIGOS_CONFIG.
    g.raw_args(&format!("services={}", g.service.name));
    let (r, line) = g.check_env(&u.name, &env);
    if !Path::new("/etc/kloigos/config.json").exists() {
        assert_eq!(r.verdict, Verdict::Deny, "{:?}", r.run);
        assert!(line.contains("/etc/kloigos"), "{line}");
        assert!(!line.contains("open.json"), "{line}");
    }
}

#[test]
fn corrupt_or_untrusted_state_is_denied_unless_on_error_allows() {
    kloigos_tests::require_root!();
    let g = Gate::new("cor", Policy::default());
    let u = pam::user(&format!("kpk{}", tag("")), &[]);
    g.book(&u, -60, 3600);
    g.expect(&u.name, Verdict::Allow);
    let good = std::fs::read(g.state_path()).expect("state");
    let cases: [(&str, Spoil<'_>); 3] = [
        (
            "is not valid JSON",
            Box::new(|| {
                std::fs::write(g.state_path(), b"{\"version\":1, \"seq\": ").expect("write")
            }),
        ),
        (
            "not by a trusted owner",
            Box::new(|| {
                std::fs::write(g.state_path(), &good).expect("write");
                nix::unistd::chown(
                    &g.state_path(),
                    Some(nix::unistd::Uid::from_raw(u.uid)),
                    None,
                )
                .expect("chown");
            }),
        ),
        (
            "lets others write it",
            Box::new(|| {
                std::fs::remove_file(g.state_path()).expect("rm");
                std::fs::write(g.state_path(), &good).expect("write");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(g.state_path(), std::fs::Permissions::from_mode(0o664))
                    .expect("chmod");
            }),
        ),
    ];
    for (why, spoil) in cases {
        spoil();
        g.args("");
        let (_, line) = g.expect(&u.name, Verdict::Deny);
        assert!(
            line.contains("source=on_error") && line.contains(why),
            "{why}: {line}"
        );
        g.args("on_error=allow");
        let (_, line) = g.expect(&u.name, Verdict::Allow);
        assert!(line.contains("source=on_error"), "{line}");
    }
}

#[test]
fn fifos_in_the_tree_are_answered_within_the_timeout() {
    kloigos_tests::require_root!();
    let g = Gate::new("fifo", Policy::default());
    let u = pam::user(&format!("kpl{}", tag("")), &[]);
    g.book(&u, -60, 3600);
    g.write_config(&g.node.to_string(), "deny", 300);
    let fifo = |p: &Path| {
        std::fs::remove_file(p).expect("rm");
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    };
    fifo(&g.state_path());
    let (r, line) = g.expect(&u.name, Verdict::Deny);
    assert!(r.took < Duration::from_millis(300) + SLACK, "{:?}", r.took);
    assert!(line.contains("not a regular file"), "{line}");
    fifo(&g.cluster.store.cluster_path());
    let (r, line) = g.expect(&u.name, Verdict::Deny);
    assert!(r.took < Duration::from_millis(300) + SLACK, "{:?}", r.took);
    assert!(line.contains("not a regular file"), "{line}");
}

#[test]
fn a_hung_share_is_cut_off_at_timeout_ms() {
    kloigos_tests::require_root!();
    let g = Gate::new("hang", Policy::default());
    let booked = pam::user(&format!("kpm{}", tag("")), &[]);
    let stranger = pam::user(&format!("kpn{}", tag("")), &[]);
    g.book(&booked, -60, 3600);
    g.write_copy(10);
    // The shared path now sits on a FUSE mount whose server never answers:
    // a hard NFS mount whose server died.
    let mnt = g.cluster.dir.path().join("hung");
    std::fs::create_dir(&mnt).expect("mkdir");
    let hang = FuseMount::new(&mnt, Behaviour::Hang);
    let share = mnt.join("share");
    let c = serde_json::json!({
        "shared": share,
        "node": g.node.to_string(),
        "pam": { "on_error": "deny", "timeout_ms": 400, "cache_max_age_s": 600 },
        "housekeeper": { "state_copy": g.copy },
    });
    std::fs::write(&g.config, c.to_string()).expect("config");
    let lookups = || {
        hang.seen()
            .iter()
            .filter(|s| **s == Seen::Lookup("share".into()))
            .count()
    };
    let interrupts = || {
        hang.seen()
            .iter()
            .filter(|s| **s == Seen::Interrupt)
            .count()
    };

    // The mount really blocks: a reader (a process: a blocked thread would
    // hold the name's dentry and stall every later lookup of it) is still
    // waiting at three times the module's deadline.
    let mut probe = std::process::Command::new("stat")
        .arg(share.join("cluster.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("stat");
    assert!(
        wait_until(PATIENCE, || lookups() == 1),
        "the server never saw the lookup: {:?}",
        hang.seen()
    );
    std::thread::sleep(Duration::from_millis(3 * 400));
    assert!(
        probe.try_wait().expect("wait").is_none(),
        "a read of the hung share returned: {:?}",
        hang.seen()
    );
    probe.kill().expect("kill the probe");
    probe.wait().expect("reap the probe");
    assert_eq!(interrupts(), 1, "{:?}", hang.seen());

    // A fresh local copy answers at the deadline, while the module's own
    // read of the share is still blocked: the server got it, never answered
    // it, and was told to give up on it only when pamtester exited.
    let (r, line) = g.expect(&booked.name, Verdict::Allow);
    assert!(
        r.took >= Duration::from_millis(400) && r.took < Duration::from_millis(400) + SLACK,
        "{:?}",
        r.took
    );
    assert!(
        line.contains("source=local-copy") && line.contains("no answer within"),
        "{line}"
    );
    assert_eq!(lookups(), 2, "{:?}", hang.seen());
    assert!(
        wait_until(PATIENCE, || interrupts() == 2),
        "the module's read was answered or never interrupted: {:?}",
        hang.seen()
    );
    let (r, _) = g.expect(&stranger.name, Verdict::Deny);
    assert!(r.took < Duration::from_millis(400) + SLACK, "{:?}", r.took);
    // check-login reads through the same gate and gives the same answers.
    let check_login = |user: &str| {
        Run::of(
            std::process::Command::new(kloigos_tests::bin("kloigos"))
                .arg("--config")
                .arg(&g.config)
                .args(["check-login", user, g.node.as_str()])
                .env("NO_COLOR", "1"),
        )
    };
    check_login(&booked.name)
        .ok()
        .out_has("allow")
        .out_has("decided from: local-copy");
    check_login(&stranger.name).code(1).out_has("deny");

    // Without a copy, on_error, as fast.
    std::fs::remove_file(&g.copy).expect("rm copy");
    let (r, line) = g.expect(&booked.name, Verdict::Deny);
    assert!(r.took < Duration::from_millis(400) + SLACK, "{:?}", r.took);
    assert!(line.contains("source=on_error"), "{line}");
    check_login(&booked.name).code(1).out_has("deny");
    // timeout_ms= in the stack line wins over the config.
    g.args("timeout_ms=100");
    let (r, line) = g.expect(&booked.name, Verdict::Deny);
    assert!(r.took < Duration::from_millis(100) + SLACK, "{:?}", r.took);
    assert!(line.contains("100 ms"), "{line}");
}

#[test]
fn a_fresh_local_copy_stands_in_for_the_share_and_a_stale_one_does_not() {
    kloigos_tests::require_root!();
    let g = Gate::new("copy", Policy::default());
    let booked = pam::user(&format!("kpo{}", tag("")), &[]);
    let stranger = pam::user(&format!("kpq{}", tag("")), &[]);
    g.book(&booked, -60, 3600);
    g.write_copy(30);
    std::fs::remove_file(g.cluster.store.cluster_path()).expect("unmount, as it were");
    let (_, line) = g.expect(&booked.name, Verdict::Allow);
    assert!(line.contains("source=local-copy"), "{line}");
    let (_, line) = g.expect(&stranger.name, Verdict::Deny);
    assert!(line.contains("source=local-copy"), "{line}");
    g.write_copy(3600);
    let (_, line) = g.expect(&booked.name, Verdict::Deny);
    assert!(
        line.contains("source=on_error") && line.contains("older than"),
        "{line}"
    );
    // A fresh copy someone else could have written is not believed.
    g.write_copy(30);
    nix::unistd::chown(
        &g.copy,
        Some(nix::unistd::Uid::from_raw(stranger.uid)),
        None,
    )
    .expect("chown");
    let (_, line) = g.expect(&booked.name, Verdict::Deny);
    assert!(
        line.contains("local copy unusable") && line.contains("not by a trusted owner"),
        "{line}"
    );
}

#[test]
fn the_module_exports_only_pam_sm_symbols_and_stays_loaded() {
    kloigos_tests::require_root!();
    let so = pam::module();
    let so = so.to_str().expect("utf-8");
    let nm = run("nm", &["-D", "--defined-only", so]);
    assert_eq!(nm.code, 0, "{nm:?}");
    let symbols: Vec<&str> = nm
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(symbols.contains(&"pam_sm_acct_mgmt"), "{symbols:?}");
    let other: Vec<&&str> = symbols
        .iter()
        .filter(|s| !s.starts_with("pam_sm_"))
        .collect();
    assert!(other.is_empty(), "exported beyond pam_sm_*: {other:?}");
    // A reader thread left behind at the deadline runs this library's code:
    // PAM's dlclose must not unmap it.
    let dynamic = run("readelf", &["-d", so]);
    assert!(dynamic.stdout.contains("NODELETE"), "{}", dynamic.stdout);
}

#[test]
fn sshd_lets_the_booked_user_in_and_keeps_others_out() {
    kloigos_tests::require_root!();
    let g = Gate::new("ssh", Policy::default());
    let booked = pam::user(&format!("kpr{}", tag("")), &[]);
    let stranger = pam::user(&format!("kps{}", tag("")), &[]);
    let id = g.book(&booked, -60, 3600);
    let sshd = Sshd::start(&g.sink, &format!("config={} debug", g.config.display()));
    sshd.authorize(&booked.name);
    sshd.authorize(&stranger.name);

    let r = sshd.ssh(&booked.name, &["id", "-un"]);
    assert_eq!(
        r.code,
        0,
        "booked login failed: {r:?}\nsshd log:\n{}\nsyslog: {:#?}",
        sshd.log(),
        g.sink.lines()
    );
    assert_eq!(r.stdout.trim(), booked.name);
    let line = g.sink.wait_for(
        0,
        &[
            "pam_kloigos(sshd:account)",
            &format!("user=\"{}\"", booked.name),
        ],
        LOG_WAIT,
    );
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains(&format!("booking {id}"))),
        "{line:?}"
    );

    let before = g.sink.count();
    let r = sshd.ssh(&stranger.name, &["true"]);
    assert_ne!(r.code, 0, "stranger got in: {r:?}");
    let denied = format!(
        "Access denied for user {} by PAM account configuration",
        stranger.name
    );
    assert!(
        kloigos_tests::poll::wait_until(LOG_WAIT, || sshd
            .log_lines()
            .iter()
            .any(|l| l.contains(&denied))),
        "sshd log lacks {denied:?}:\n{}",
        sshd.log()
    );
    let line = g.sink.wait_for(
        before,
        &[&format!("user=\"{}\"", stranger.name), "result=deny"],
        LOG_WAIT,
    );
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("no booking for")),
        "{line:?}"
    );

    g.release(&id);
    let r = sshd.ssh(&booked.name, &["true"]);
    assert_ne!(r.code, 0, "released booking still logs in: {r:?}");
    let denied = format!(
        "Access denied for user {} by PAM account configuration",
        booked.name
    );
    assert!(
        kloigos_tests::poll::wait_until(LOG_WAIT, || sshd
            .log_lines()
            .iter()
            .any(|l| l.contains(&denied))),
        "{}",
        sshd.log()
    );
}

#[test]
fn a_nodes_entry_that_is_not_a_directory_is_an_error_not_a_login() {
    kloigos_tests::require_root!();
    let g = Gate::new("brk", Policy::default());
    // pam_permit follows: a PAM_IGNORE here would be a login.
    g.permissive("");
    let stranger = pam::user(&format!("kpt{}", tag("")), &[]);
    let booked = pam::user(&format!("kpu{}", tag("")), &[]);
    g.book(&booked, -60, 3600);
    g.agree(&stranger.name, "deny", "shared");
    let dir = g.cluster.store.node_dir(&g.node);
    let away = g.cluster.dir.path().join("node-away");
    std::fs::rename(&dir, &away).expect("move node dir");
    let nodes = g.cluster.store.nodes_dir();
    let nodes_away = g.cluster.dir.path().join("nodes-away");
    let cases: [(&str, Spoil<'_>, Spoil<'_>); 3] = [
        (
            "is not a directory",
            Box::new(|| std::fs::write(&dir, b"").expect("plain file")),
            Box::new(|| std::fs::remove_file(&dir).expect("rm")),
        ),
        (
            "is a symbolic link",
            Box::new(|| std::os::unix::fs::symlink(&dir, &dir).expect("symlink loop")),
            Box::new(|| std::fs::remove_file(&dir).expect("rm")),
        ),
        (
            "is not a directory",
            Box::new(|| {
                std::fs::rename(&nodes, &nodes_away).expect("move nodes");
                std::fs::write(&nodes, b"").expect("nodes a plain file");
            }),
            Box::new(|| {
                std::fs::remove_file(&nodes).expect("rm");
                std::fs::rename(&nodes_away, &nodes).expect("nodes back");
            }),
        ),
    ];
    for (why, spoil, mend) in cases {
        spoil();
        for u in [&stranger, &booked] {
            let line = g.agree(&u.name, "deny", "on_error");
            assert!(line.contains(why), "{why}: {line}");
        }
        mend();
    }
    std::fs::rename(&away, &dir).expect("node dir back");
    g.agree(&booked.name, "allow", "shared");
}

#[test]
fn an_unreadable_nodes_dir_denies_a_non_root_check_login() {
    kloigos_tests::require_root!();
    use std::os::unix::fs::PermissionsExt;
    let g = Gate::new("acc", Policy::default());
    g.permissive("");
    let stranger = pam::user(&format!("kpv{}", tag("")), &[]);
    // The user may reach the config and the share, but not into nodes/.
    for p in [g.cluster.dir.path(), g.config.as_path()] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    assert_eq!(
        g.check_login(&stranger.name, Some(&stranger)),
        ("deny".to_string(), "shared".to_string())
    );
    let nodes = g.cluster.store.nodes_dir();
    std::fs::set_permissions(&nodes, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // The user's own reader gets EACCES: an error, never "not a node".
    assert_eq!(
        g.check_login(&stranger.name, Some(&stranger)),
        ("deny".to_string(), "on_error".to_string())
    );
    // PAM reads as root: the booking state decides, as before.
    g.agree(&stranger.name, "deny", "shared");
}

#[test]
fn a_stale_copy_listing_a_bypass_user_does_not_overrule_a_healthy_share() {
    kloigos_tests::require_root!();
    let g = Gate::new("stale", Policy::default());
    g.permissive("");
    let stranger = pam::user(&format!("kpw{}", tag("")), &[]);
    let listed = Policy {
        bypass_users: vec![UserName::new(&stranger.name).expect("name")],
        ..Policy::default()
    };
    let state = g.cluster.store.node(&g.node).expect("state");
    let write = |at: &str| {
        let copy = LocalCopy::new(
            at.parse().expect("time"),
            listed.clone(),
            Some(state.clone()),
        );
        std::fs::write(&g.copy, to_json(&copy)).expect("write copy");
    };
    write("2020-01-01T00:00:00Z");
    let line = g.agree(&stranger.name, "deny", "shared");
    assert!(line.contains("no booking for"), "{line}");
    // Fresh, the copy's policy decides (the share is not read for it).
    write(&Timestamp::now().to_string());
    let (r, line) = g.check(&stranger.name);
    assert_eq!(r.verdict, Verdict::Allow, "{line}");
    assert!(
        line.contains("result=allow source=policy") && line.contains("is a bypass user"),
        "{line}"
    );
}

#[test]
fn users_far_above_60000_are_gated() {
    kloigos_tests::require_root!();
    let g = Gate::new("far", Policy::default());
    g.permissive("");
    let ldap = TempUser::with_uid("kp-far-ldap", 70_000);
    // 200000, sssd's first uid, unless a subordinate range covers it here.
    let sssd = TempUser::with_uid("kp-far-sssd", pam::person_uid_from(200_000));
    let id = g.book(&ldap, -60, 3600);
    g.agree(&ldap.name, "allow", "shared");
    let line = g.agree(&sssd.name, "deny", "shared");
    assert!(line.contains(&format!("uid={}", sssd.uid)), "{line}");
    g.release(&id);
    // From now: the released booking ended just now.
    g.book(&sssd, 0, 3600);
    g.agree(&ldap.name, "deny", "shared");
    g.agree(&sssd.name, "allow", "shared");
    // max_uid bounds the range: above it, not gated.
    let bounded = Policy {
        max_uid: Some(uid(100_000)),
        ..Policy::default()
    };
    std::fs::write(g.cluster.store.cluster_path(), to_json(&bounded)).expect("policy");
    let line = g.agree(&ldap.name, "deny", "shared");
    assert!(line.contains("uid=70000"), "{line}");
    let line = g.agree(&sssd.name, "ignore", "policy");
    assert!(line.contains("above max_uid 100000"), "{line}");
    eprintln!("gated users at uids {} and {}", ldap.uid, sssd.uid);
}

#[test]
fn an_io_error_on_the_nodes_entry_is_an_error_not_a_login() {
    kloigos_tests::require_root!();
    let g = Gate::new("eio", Policy::default());
    // pam_permit follows: a PAM_IGNORE here would be a login.
    g.permissive("");
    let stranger = pam::user(&format!("kpx{}", tag("")), &[]);
    let booked = pam::user(&format!("kpy{}", tag("")), &[]);
    g.book(&booked, -60, 3600);
    g.agree(&booked.name, "allow", "shared");
    // nodes/<node> is a FUSE mount whose server answers EIO: a soft NFS
    // mount that timed out.
    let dir = g.cluster.store.node_dir(&g.node);
    let away = g.cluster.dir.path().join("node-away");
    std::fs::rename(&dir, &away).expect("move node dir");
    std::fs::create_dir(&dir).expect("mount point");
    let eio = FuseMount::new(&dir, Behaviour::Eio);
    for u in [&stranger, &booked] {
        let line = g.agree(&u.name, "deny", "on_error");
        assert!(line.contains("os error 5"), "{line}");
    }
    drop(eio);
    std::fs::remove_dir(&dir).expect("rm mount point");
    std::fs::rename(&away, &dir).expect("node dir back");
    g.agree(&booked.name, "allow", "shared");
}

/// Issue 15 item 6: an account named like an AD user (`kuser@ad.test`) is
/// gated like any other: booked it gets in, a stranger of the same kind
/// is denied, neither is "cannot look up this account".
#[test]
fn domain_account_names_are_gated_like_any_other() {
    kloigos_tests::require_root!();
    let g = Gate::new("ad", Policy::default());
    let booked = kloigos_tests::setuid::domain_user(&format!("k{}@ad.test", tag("a")));
    let stranger = kloigos_tests::setuid::domain_user(&format!("k{}@ad.test", tag("b")));
    g.book(&booked, -60, 3600);
    let (_, line) = g.expect(&booked.name, Verdict::Allow);
    assert!(line.contains("result=allow"), "{line}");
    let (r, line) = g.expect(&stranger.name, Verdict::Deny);
    assert!(r.run.stderr.contains("no booking for"), "{}", r.run.stderr);
    assert!(!line.contains("cannot look up"), "{line}");
}
