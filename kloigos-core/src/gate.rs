//! The login gate: the decision `pam_kloigos.so` takes at every SSH login and
//! `kloigos check-login` (and `kloigos ssh`) show, with where the answer
//! came from and the line that goes to the log.
//!
//! Two halves, so the decision can be audited apart from the reading:
//! - [`decide`] is a pure function of [`Inputs`]: no threads, no I/O, no
//!   clock. Order of the decision:
//!   1. root (uid 0) is let in, whatever the files say;
//!   2. the policy sorts out accounts outside the managed range (ignored),
//!      bypass users and admins (let in). That policy is the share's; a
//!      local copy's only while it is fresh (`cache_max_age_s`), or when
//!      the share could not be read in time;
//!   3. this node's state on the share decides: an active booking lets the
//!      user in. A cluster without `nodes/<node>` (ENOENT, nothing else)
//!      means this host is not a node: ignored, with a warning;
//!   4. when the share cannot be read (not mounted, unreadable, corrupt,
//!      untrusted, too slow), a fresh local copy decides; failing that,
//!      `on_error`.
//! - [`check`] reads what the decision needs: the local copy (local disk)
//!   synchronously, and the share, when [`share_needed`] says so, on one
//!   helper thread with a timed receive (a hung NFS read must not hang
//!   sshd; the thread is left behind on timeout).

use std::fmt::{self, Write as _};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::access::{decide_login, login_without_state, Login, SubUids, SUBUID_FILE};
use crate::config::{Config, OnError};
use crate::error::{Error, Result};
use crate::ids::Uid;
use crate::names::NodeName;
use crate::policy::Policy;
use crate::state::NodeState;
use crate::store::{parse_json, read_trusted_if_any, LocalCopy, Store, Trust};
use crate::users::{self, Account};

/// Where a login decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No node state was needed (root, unmanaged account, bypass user,
    /// admin, unknown user); the policy came from the share or the copy.
    Policy,
    /// This node's state as read from the shared tree just now.
    Shared,
    /// The housekeeper's local copy, because the share could not be used.
    LocalCopy,
    /// Nothing trustworthy could be read: the configured `on_error` decided.
    OnError,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Policy => "policy",
            Source::Shared => "shared",
            Source::LocalCopy => "local-copy",
            Source::OnError => "on_error",
        })
    }
}

/// A login decision with its provenance, ready to act on and to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The verdict; for a denial its reason is the message for the user.
    pub login: Login,
    /// Where the verdict came from.
    pub source: Source,
    /// The node decided for, when known.
    pub node: Option<NodeName>,
    /// Whether the log line deserves a warning (fallbacks, "not a node").
    pub warn: bool,
    /// What went wrong on the way (read errors that caused a fallback);
    /// always logged.
    pub problems: Vec<String>,
    /// Extra detail for `debug` logging (policy source, timings).
    pub detail: Vec<String>,
    /// The user's name, for the log line.
    user: String,
    /// The user's uid, when the account exists.
    uid: Option<Uid>,
}

impl Decision {
    fn new(user: &str, uid: Option<Uid>, login: Login, source: Source) -> Decision {
        Decision {
            login,
            source,
            node: None,
            warn: false,
            problems: Vec::new(),
            detail: Vec::new(),
            user: user.to_string(),
            uid,
        }
    }

    /// The one line that goes to syslog: user, node, verdict, source, reason
    /// (which names the booking when one lets the user in) and the problems
    /// met; with `debug`, the detail too. Text that comes from outside (the
    /// user name, reasons, problems, detail) is quoted and escaped, so no
    /// name can forge a field or a line.
    pub fn log_line(&self, debug: bool) -> String {
        let verdict = match self.login {
            Login::Ignore(_) => "ignore",
            Login::Allow(_) => "allow",
            Login::Deny(_) => "deny",
        };
        let mut line = String::with_capacity(192);
        line.push_str("user=");
        push_quoted(&mut line, &[&self.user]);
        if let Some(uid) = self.uid {
            let _ = write!(line, " uid={uid}");
        }
        // A NodeName is validated: [A-Za-z0-9._-] only.
        if let Some(n) = &self.node {
            let _ = write!(line, " node={n}");
        }
        let _ = write!(line, " result={verdict} source={} reason=", self.source);
        push_quoted(&mut line, &[self.login.reason()]);
        let lists = [
            ("problems", &self.problems, true),
            ("detail", &self.detail, debug),
        ];
        for (name, items, shown) in lists {
            if shown && !items.is_empty() {
                let _ = write!(line, " {name}=");
                let items: Vec<&str> = items.iter().map(String::as_str).collect();
                push_quoted(&mut line, &items);
            }
        }
        line
    }
}

/// `text` as one double-quoted log field (see [`push_quoted`]): text from
/// outside (a user name) cannot pass for other fields of the line.
pub fn quoted(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    push_quoted(&mut s, &[text]);
    s
}

/// Appends `items`, joined by "; ", as one double-quoted field: `"` and
/// `\` are escaped with a backslash, control and line- or
/// direction-changing characters as `\u{..}`.
fn push_quoted(line: &mut String, items: &[&str]) {
    line.push('"');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            line.push_str("; ");
        }
        for c in item.chars() {
            match c {
                '"' | '\\' => {
                    line.push('\\');
                    line.push(c);
                }
                c if c.is_control()
                    || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
                {
                    let _ = write!(line, "\\u{{{:x}}}", u32::from(c));
                }
                c => line.push(c),
            }
        }
    }
    line.push('"');
}

/// What the share says about this node: the cluster policy and the node's
/// state, `None` when the cluster has no `nodes/<node>` (not a node).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedView {
    /// The policy from `cluster.json`.
    pub policy: Policy,
    /// This node's state; `None`: this host is not a node of the cluster.
    pub state: Option<NodeState>,
}

/// Why the share gave no [`SharedView`].
#[derive(Debug)]
pub enum ShareFailure {
    /// A read failed (not mounted, I/O error, corrupt, untrusted).
    Read(Error),
    /// The reader did not answer in time; its thread is left behind.
    TimedOut(Duration),
    /// The reader thread died (panicked) without an answer.
    Died,
    /// The reader thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for ShareFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareFailure::Read(e) => e.fmt(f),
            ShareFailure::TimedOut(d) => write!(
                f,
                "no answer within {} ms (hung or slow NFS?)",
                d.as_millis()
            ),
            ShareFailure::Died => f.write_str("the reader thread died without an answer"),
            ShareFailure::Spawn(e) => write!(f, "cannot start the reader thread: {e}"),
        }
    }
}

/// What became of the share for one decision.
#[derive(Debug)]
pub enum ShareRead {
    /// Not read: the local copy's fresh policy decided without it.
    NotRead,
    /// Read (or tried) under the deadline.
    Read(std::result::Result<Box<SharedView>, ShareFailure>),
}

/// Everything a decision is made from, read before [`decide`], which does no I/O.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The user logging in (looked up).
    pub user: &'a Account,
    /// This node.
    pub node: &'a NodeName,
    /// The instant of the login.
    pub now: Timestamp,
    /// What to do when nothing trustworthy can be read.
    pub on_error: OnError,
    /// How old a local copy may be and still decide.
    pub cache_max_age_s: u64,
    /// The subordinate uid ranges, never gated.
    pub subuids: &'a SubUids,
    /// The housekeeper's local copy, `None` when there is none, or why it
    /// cannot be used.
    pub copy: &'a Result<Option<LocalCopy>>,
    /// The share, as read for this decision.
    pub share: &'a ShareRead,
}

/// Whether a local copy made at `copied_at` may decide at `now`.
pub fn is_fresh(copied_at: Timestamp, now: Timestamp, max_age_s: u64) -> bool {
    let age = now.as_second() - copied_at.as_second();
    age >= 0 && age.unsigned_abs() <= max_age_s
}

/// The local copy, when it is fresh.
fn fresh<'a>(i: &'a Inputs<'_>) -> Option<&'a LocalCopy> {
    match i.copy {
        Ok(Some(c)) if is_fresh(c.copied_at, i.now, i.cache_max_age_s) => Some(c),
        _ => None,
    }
}

/// Whether the share must be read for this decision: not for root, nor for
/// a user a fresh local copy's policy decides alone (an admin gets in while
/// NFS hangs).
pub fn share_needed(
    user: &Account,
    copy: &Result<Option<LocalCopy>>,
    subuids: &SubUids,
    now: Timestamp,
    cache_max_age_s: u64,
) -> bool {
    if user.uid.is_root() {
        return false;
    }
    match copy {
        Ok(Some(c)) if is_fresh(c.copied_at, now, cache_max_age_s) => {
            login_without_state(&c.policy, subuids, user).is_none()
        }
        _ => true,
    }
}

/// The login decision: see the module doc for the order. Pure.
pub fn decide(i: &Inputs<'_>) -> Decision {
    let user = i.user;
    let verdict = |login: Login, source: Source| {
        let mut d = Decision::new(user.name.as_str(), Some(user.uid), login, source);
        d.node = Some(i.node.clone());
        d
    };
    if user.uid.is_root() {
        return verdict(Login::Allow("root is never gated".into()), Source::Policy);
    }
    let mut problems = Vec::new();
    if let Err(e) = i.copy {
        problems.push(format!("local copy unusable: {e}"));
    }
    let failure = match i.share {
        ShareRead::Read(Ok(view)) => {
            let mut d = match login_without_state(&view.policy, i.subuids, user) {
                Some(login) => verdict(login, Source::Policy),
                None => match &view.state {
                    Some(st) => verdict(
                        decide_login(&view.policy, i.subuids, user, st, i.now),
                        Source::Shared,
                    ),
                    None => not_a_node(verdict, i.node, Source::Shared),
                },
            };
            d.detail.push("policy from the share".into());
            // A copy that could not be read did not decide, but is still
            // something for an admin to fix.
            d.problems = problems;
            return d;
        }
        ShareRead::Read(Err(f)) => Some(f),
        ShareRead::NotRead => None,
    };
    if let Some(f) = failure {
        problems.push(format!("shared tree: {f}"));
    }
    let copy = match i.copy {
        Ok(Some(c)) => Some(c),
        _ => None,
    };
    let fresh = fresh(i);
    // The copy's policy: while fresh, or (any age) now that the share
    // could not be read in time.
    if let Some(c) = fresh.or(copy.filter(|_| failure.is_some())) {
        if let Some(login) = login_without_state(&c.policy, i.subuids, user) {
            let mut d = verdict(login, Source::Policy);
            d.detail
                .push(format!("policy from the local copy of {}", c.copied_at));
            d.problems = problems;
            d.warn = failure.is_some();
            return d;
        }
    }
    let mut d = match (fresh, copy) {
        (Some(c), _) => match &c.state {
            Some(st) if st.node.name == *i.node => verdict(
                decide_login(&c.policy, i.subuids, user, st, i.now),
                Source::LocalCopy,
            ),
            Some(st) => {
                problems.push(format!(
                    "local copy describes node '{}', not '{}'",
                    st.node.name, i.node
                ));
                on_error(user, i.on_error, Some(i.node))
            }
            None => not_a_node(verdict, i.node, Source::LocalCopy),
        },
        (None, Some(c)) => {
            problems.push(format!(
                "local copy of {} is older than cache_max_age_s={}",
                c.copied_at, i.cache_max_age_s
            ));
            on_error(user, i.on_error, Some(i.node))
        }
        (None, None) => {
            if failure.is_none() {
                problems.push("the share was not read and there is no fresh local copy".into());
            }
            on_error(user, i.on_error, Some(i.node))
        }
    };
    d.problems = problems;
    d.warn = true;
    d
}

fn not_a_node(
    verdict: impl Fn(Login, Source) -> Decision,
    node: &NodeName,
    source: Source,
) -> Decision {
    let mut d = verdict(
        Login::Ignore(format!(
            "this host ('{node}') is not a node of the cluster (no nodes/{node}/); not gating it — set \"node\" in the config if that is wrong"
        )),
        source,
    );
    d.warn = true;
    d
}

fn on_error(user: &Account, on_error: OnError, node: Option<&NodeName>) -> Decision {
    let login = match on_error {
        OnError::Allow => Login::Allow("the booking state cannot be read; on_error=allow".into()),
        OnError::Deny => Login::Deny(format!(
            "kloigos cannot read the bookings of {} right now, so logins are refused; try again later or ask an admin",
            node.map_or_else(|| "this host".to_string(), |n| n.to_string())
        )),
    };
    let mut d = Decision::new(user.name.as_str(), Some(user.uid), login, Source::OnError);
    d.node = node.cloned();
    d.warn = true;
    d
}

/// The decision for a user name that has no account: not kloigos' business.
pub fn unknown_user(name: &str) -> Decision {
    Decision::new(
        name,
        None,
        Login::Ignore(format!("no account named '{name}': not managed")),
        Source::Policy,
    )
}

/// The decision when the node-local configuration itself cannot be used:
/// root still gets in, everyone else gets `on_error`.
pub fn without_config(user: &Account, on_error_is: OnError, error: &Error) -> Decision {
    let mut d = if user.uid.is_root() {
        Decision::new(
            user.name.as_str(),
            Some(Uid::ROOT),
            Login::Allow("root is never gated".into()),
            Source::Policy,
        )
    } else {
        on_error(user, on_error_is, None)
    };
    d.problems.push(format!("configuration: {error}"));
    d.warn = true;
    d
}

/// The decision when the account database cannot be asked about `name`
/// (NSS failure): `on_error`.
pub fn lookup_failed(name: &str, on_error: OnError, error: &Error) -> Decision {
    let login = match on_error {
        OnError::Allow => Login::Allow("the account cannot be looked up; on_error=allow".into()),
        OnError::Deny => Login::Deny(
            "kloigos cannot look up this account right now, so the login is refused; try again later or ask an admin".into(),
        ),
    };
    let mut d = Decision::new(name, None, login, Source::OnError);
    d.problems.push(format!("account lookup: {error}"));
    d.warn = true;
    d
}

/// Where the gate reads, and whom it believes.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    /// The shared directory.
    pub shared: &'a Path,
    /// The housekeeper's local copy; `None` when none applies (a caller's
    /// own tree: a copy on this host belongs to the installed cluster).
    pub copy: Option<&'a Path>,
    /// Whose files are believed.
    pub trust: &'a Trust,
    /// The subordinate uid list.
    pub subuid: &'a Path,
}

impl<'a> Sources<'a> {
    /// The installed cluster of `config`, believing `trust`.
    pub fn of(config: &'a Config, trust: &'a Trust) -> Sources<'a> {
        Sources {
            shared: &config.shared,
            copy: Some(&config.housekeeper.state_copy),
            trust,
            subuid: Path::new(SUBUID_FILE),
        }
    }
}

/// Reads the local copy at `path`: `Ok(None)` when there is none.
pub fn read_copy(path: &Path, trust: &Trust) -> Result<Option<LocalCopy>> {
    match read_trusted_if_any(path, trust)? {
        Some(bytes) => parse_json(path, &bytes).map(Some),
        None => Ok(None),
    }
}

/// The reader thread's stack: its reads and JSON parsing need little.
const READER_STACK: usize = 256 * 1024;

/// Runs `read` on a helper thread and waits for its answer at most
/// `timeout`; past that, the thread is left behind (it may be stuck in
/// the kernel on a hung NFS server) and the decision goes on without it.
pub fn with_deadline<T: Send + 'static>(
    timeout: Duration,
    read: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, ShareFailure> {
    // Room for the answer: a thread that answers late never blocks.
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("kloigos-read".into())
        .stack_size(READER_STACK)
        .spawn(move || {
            let _ = tx.send(read());
        })
        .map_err(ShareFailure::Spawn)?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(ShareFailure::Read),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ShareFailure::TimedOut(timeout)),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ShareFailure::Died),
    }
}

/// Reads the share's policy and this node's state (see
/// [`Store::node_if_any`]: only ENOENT for `nodes/<node>` is "not a node").
pub fn read_share(store: &Store, node: &NodeName) -> Result<SharedView> {
    let policy = store.login_policy()?;
    let state = store.node_if_any(node)?;
    Ok(SharedView { policy, state })
}

/// The login decision for `user` on `node`, reading `from`: the one path
/// of the PAM module, `check-login` and `ssh`.
pub fn check(
    from: &Sources<'_>,
    pam: &crate::config::PamConfig,
    user: &Account,
    node: &NodeName,
    now: Timestamp,
) -> Decision {
    let started = Instant::now();
    let copy = match from.copy {
        Some(path) => read_copy(path, from.trust),
        None => Ok(None),
    };
    let subuids = SubUids::read(from.subuid);
    let share = if share_needed(user, &copy, &subuids, now, pam.cache_max_age_s) {
        let store = Store::new(from.shared, from.trust.clone());
        let node = node.clone();
        let timeout = Duration::from_millis(pam.timeout_ms);
        ShareRead::Read(with_deadline(timeout, move || {
            read_share(&store, &node).map(Box::new)
        }))
    } else {
        ShareRead::NotRead
    };
    let mut d = decide(&Inputs {
        user,
        node,
        now,
        on_error: pam.on_error,
        cache_max_age_s: pam.cache_max_age_s,
        subuids: &subuids,
        copy: &copy,
        share: &share,
    });
    if let Some(why) = subuids.problem {
        d.problems.push(why);
    }
    d.detail
        .push(format!("decided in {} us", started.elapsed().as_micros()));
    d
}

/// Who the gate trusts: root and the service account `config.service_user`
/// (root alone, and a note why, when it cannot be looked up).
pub fn trust_for(config: &Config) -> (Trust, Option<String>) {
    let name = &config.service_user;
    match users::by_name(name) {
        Ok(Some(a)) => (Trust::root_and(a.uid), None),
        Ok(None) => (
            Trust::root_only(),
            Some(format!(
                "service account '{name}' does not exist here; trusting root-owned files only"
            )),
        ),
        Err(e) => (
            Trust::root_only(),
            Some(format!("{e}; trusting root-owned files only")),
        ),
    }
}

/// The PAM module's decision for the user named `name` on this host:
/// the account looked up, then [`check`] on the installed cluster of
/// `config`, trusting root and the service account.
pub fn check_name(config: &Config, name: &str, now: Timestamp) -> Decision {
    let on_error = config.pam.on_error;
    let user = match users::by_name(name) {
        Ok(Some(a)) => a,
        Ok(None) => return unknown_user(name),
        Err(e) => return lookup_failed(name, on_error, &e),
    };
    let node = match config.node_name() {
        Ok(n) => n,
        Err(e) => return without_config(&user, on_error, &e),
    };
    let (trust, note) = trust_for(config);
    let mut d = check(&Sources::of(config, &trust), &config.pam, &user, &node, now);
    d.detail.extend(note);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::UserName;
    use crate::state::Size;
    use crate::testing::{gated_policy as policy, node3, node3_with_alice, ts};

    const NOW: &str = "2026-11-23T11:00:00Z";

    /// node3 with alice (uid 1001) booked whole 10:00-12:00 on 2026-11-23.
    fn state() -> NodeState {
        node3_with_alice(None, Size::Whole)
    }

    fn alice() -> Account {
        Account::new("alice", 1001, &["alice"]).unwrap()
    }
    fn bob() -> Account {
        Account::new("bob", 1002, &["bob"]).unwrap()
    }
    fn ops() -> Account {
        Account::new("ops", 1100, &["ops"]).unwrap()
    }

    fn up(state: Option<NodeState>) -> ShareRead {
        ShareRead::Read(Ok(Box::new(SharedView {
            policy: Policy::default(),
            state,
        })))
    }

    fn failed(e: Error) -> ShareRead {
        ShareRead::Read(Err(ShareFailure::Read(e)))
    }

    fn eio() -> ShareRead {
        failed(Error::io(
            "/nfs/kloigos/nodes/node3",
            &std::io::Error::from_raw_os_error(5),
        ))
    }

    fn copy_at(at: &str, state: Option<NodeState>) -> Result<Option<LocalCopy>> {
        Ok(Some(LocalCopy::new(ts(at), policy(), state)))
    }

    const FRESH: &str = "2026-11-23T10:55:00Z";
    const STALE: &str = "2020-01-01T00:00:00Z";

    fn run(
        user: &Account,
        copy: &Result<Option<LocalCopy>>,
        share: &ShareRead,
        on_error: OnError,
    ) -> Decision {
        decide(&Inputs {
            user,
            node: &node3(),
            now: ts(NOW),
            on_error,
            cache_max_age_s: 600,
            subuids: &SubUids::default(),
            copy,
            share,
        })
    }

    fn verdict(d: &Decision) -> (&'static str, Source) {
        let v = match d.login {
            Login::Allow(_) => "allow",
            Login::Deny(_) => "deny",
            Login::Ignore(_) => "ignore",
        };
        (v, d.source)
    }

    #[test]
    fn the_share_decides_when_it_answers() {
        let share = up(Some(state()));
        let d = run(&alice(), &Ok(None), &share, OnError::Deny);
        assert_eq!(verdict(&d), ("allow", Source::Shared));
        assert!(d.login.reason().contains("node3:1"), "{d:?}");
        let d = run(&bob(), &Ok(None), &share, OnError::Allow);
        assert_eq!(
            d.login,
            Login::Deny("no booking for bob on node3 — book with: kloigos alloc -w node3".into())
        );
        // The share's policy names no bypass user: ops is a stranger there.
        assert_eq!(
            verdict(&run(&ops(), &Ok(None), &share, OnError::Allow)),
            ("deny", Source::Shared)
        );
        let root = Account::new("root", 0, &[]).unwrap();
        assert_eq!(
            verdict(&run(&root, &Ok(None), &ShareRead::NotRead, OnError::Deny)),
            ("allow", Source::Policy)
        );
        let sys = Account::new("daemon", 2, &[]).unwrap();
        assert_eq!(
            verdict(&run(&sys, &Ok(None), &share, OnError::Deny)),
            ("ignore", Source::Policy)
        );
    }

    #[test]
    fn a_stale_copy_listing_a_bypass_user_is_overruled_by_a_healthy_share() {
        let stale = copy_at(STALE, Some(state()));
        assert!(share_needed(
            &ops(),
            &stale,
            &SubUids::default(),
            ts(NOW),
            600
        ));
        let d = run(&ops(), &stale, &up(Some(state())), OnError::Allow);
        assert_eq!(verdict(&d), ("deny", Source::Shared), "{d:?}");
        // Fresh, the copy's policy decides alone: the share is not needed.
        let fresh = copy_at(FRESH, Some(state()));
        assert!(!share_needed(
            &ops(),
            &fresh,
            &SubUids::default(),
            ts(NOW),
            600
        ));
        let d = run(&ops(), &fresh, &ShareRead::NotRead, OnError::Deny);
        assert_eq!(verdict(&d), ("allow", Source::Policy));
        // The share cannot be read in time: the stale copy's policy serves
        // for bypass users and admins, never for a booking.
        let d = run(&ops(), &stale, &eio(), OnError::Deny);
        assert_eq!(verdict(&d), ("allow", Source::Policy));
        assert!(d.warn && d.log_line(false).contains("os error 5"), "{d:?}");
        let adm = Account::new("carol", 1200, &["carol", "wheel"]).unwrap();
        assert_eq!(
            verdict(&run(&adm, &stale, &eio(), OnError::Deny)),
            ("allow", Source::Policy)
        );
        let d = run(&alice(), &stale, &eio(), OnError::Deny);
        assert_eq!(verdict(&d), ("deny", Source::OnError));
        assert!(d.log_line(false).contains("older than cache_max_age_s=600"));
    }

    #[test]
    fn an_unreadable_share_falls_back_to_a_fresh_copy_else_on_error() {
        let fresh = copy_at(FRESH, Some(state()));
        for share in [eio(), failed(Error::NotMounted { path: "/x".into() })] {
            let d = run(&alice(), &fresh, &share, OnError::Deny);
            assert_eq!(verdict(&d), ("allow", Source::LocalCopy));
            let d = run(&bob(), &fresh, &share, OnError::Allow);
            assert_eq!(verdict(&d), ("deny", Source::LocalCopy), "the copy decides");
            assert!(d.warn);
            let d = run(&bob(), &Ok(None), &share, OnError::Deny);
            assert_eq!(verdict(&d), ("deny", Source::OnError));
            let d = run(&bob(), &Ok(None), &share, OnError::Allow);
            assert_eq!(verdict(&d), ("allow", Source::OnError));
        }
        for f in [
            ShareFailure::TimedOut(Duration::from_millis(150)),
            ShareFailure::Died,
        ] {
            let d = run(&bob(), &Ok(None), &ShareRead::Read(Err(f)), OnError::Deny);
            assert_eq!(verdict(&d), ("deny", Source::OnError));
        }
        // A copy of another node is not used; an unusable copy is reported.
        let mut other = state();
        other.node.name = NodeName::new("node4").unwrap();
        let d = run(
            &alice(),
            &copy_at(FRESH, Some(other)),
            &eio(),
            OnError::Deny,
        );
        assert_eq!(verdict(&d), ("deny", Source::OnError));
        let bad = Err(Error::Untrusted {
            path: "/var/lib/kloigos/state.json".into(),
            why: crate::error::Untrust::Mode { mode: 0o666 },
        });
        let d = run(&alice(), &bad, &eio(), OnError::Deny);
        assert_eq!(verdict(&d), ("deny", Source::OnError));
        assert!(d.log_line(false).contains("local copy unusable: "), "{d:?}");
        // ... but does not decide when the share answers (and is still said).
        let d = run(&alice(), &bad, &up(Some(state())), OnError::Deny);
        assert_eq!(verdict(&d), ("allow", Source::Shared));
        assert!(d.log_line(false).contains("local copy unusable: "), "{d:?}");
    }

    #[test]
    fn only_a_node_the_share_lacks_is_not_a_node() {
        let d = run(&bob(), &Ok(None), &up(None), OnError::Deny);
        assert_eq!(verdict(&d), ("ignore", Source::Shared));
        assert!(d.warn && d.login.reason().contains("not a node"), "{d:?}");
        // Every other failure to look nodes/<node> up is an error.
        for e in [
            Error::Untrusted {
                path: "/nfs/kloigos/nodes/node3".into(),
                why: crate::error::Untrust::NotDirectory,
            },
            Error::io(
                "/nfs/kloigos/nodes/node3",
                &std::io::Error::from_raw_os_error(nix::libc::ELOOP),
            ),
            Error::io(
                "/nfs/kloigos/nodes/node3",
                &std::io::Error::from_raw_os_error(nix::libc::EACCES),
            ),
        ] {
            let d = run(&bob(), &Ok(None), &failed(e), OnError::Deny);
            assert_eq!(verdict(&d), ("deny", Source::OnError), "{d:?}");
        }
    }

    #[test]
    fn users_outside_the_managed_range_are_ignored() {
        let share = up(Some(state()));
        let far = Account::new("far", 200_000, &[]).unwrap();
        assert_eq!(
            verdict(&run(&far, &Ok(None), &share, OnError::Deny)),
            ("deny", Source::Shared)
        );
        let nobody = Account::new("nobody", 65_534, &[]).unwrap();
        assert_eq!(
            verdict(&run(&nobody, &Ok(None), &share, OnError::Deny)),
            ("ignore", Source::Policy)
        );
        let sub = SubUids::parse("far:200000:1000\n");
        let d = decide(&Inputs {
            user: &far,
            node: &node3(),
            now: ts(NOW),
            on_error: OnError::Deny,
            cache_max_age_s: 600,
            subuids: &sub,
            copy: &Ok(None),
            share: &share,
        });
        assert_eq!(verdict(&d), ("ignore", Source::Policy));
    }

    #[test]
    fn the_share_is_read_unless_root_or_a_fresh_policy_decides_alone() {
        let none = SubUids::default();
        let now = ts(NOW);
        let root = Account::new("root", 0, &[]).unwrap();
        let fresh = copy_at(FRESH, Some(state()));
        let stale = copy_at(STALE, Some(state()));
        assert!(!share_needed(&root, &Ok(None), &none, now, 600));
        assert!(share_needed(&alice(), &fresh, &none, now, 600));
        assert!(share_needed(&ops(), &Ok(None), &none, now, 600));
        assert!(share_needed(&ops(), &stale, &none, now, 600));
        assert!(!share_needed(&ops(), &fresh, &none, now, 600));
        // A copy from the future is not fresh.
        let ahead = copy_at("2026-11-23T11:05:00Z", Some(state()));
        assert!(share_needed(&ops(), &ahead, &none, now, 600));
        // Not read, nothing fresh: on_error, never a guess.
        let d = run(&alice(), &stale, &ShareRead::NotRead, OnError::Deny);
        assert_eq!(verdict(&d), ("deny", Source::OnError));
    }

    #[test]
    fn log_fields_from_outside_are_quoted_and_escaped() {
        let name = "nobody1 uid=0 node=vm result=allow source=policy";
        let d = unknown_user(name);
        let line = d.log_line(false);
        assert!(
            line.starts_with(&format!("user=\"{name}\" result=ignore source=policy")),
            "{line}"
        );
        let mut d = unknown_user("a\"b\\c\nd\u{1b}[2J\u{202e}");
        d.problems.push("x\ry".into());
        d.detail.push("z".into());
        let line = d.log_line(true);
        assert!(
            line.starts_with("user=\"a\\\"b\\\\c\\u{a}d\\u{1b}[2J\\u{202e}\" "),
            "{line}"
        );
        assert!(line.contains("problems=\"x\\u{d}y\""), "{line}");
        assert!(line.ends_with("detail=\"z\""), "{line}");
        assert!(!line.chars().any(char::is_control), "{line}");
        assert!(!d.log_line(false).contains("detail="));
        // The session hook's field: the same quoting.
        assert_eq!(quoted("a\"b\nc"), "\"a\\\"b\\u{a}c\"");
    }

    #[test]
    fn missing_config_and_failed_lookups() {
        let e = Error::io(
            "/etc/kloigos/config.json",
            &std::io::Error::from_raw_os_error(2),
        );
        assert!(matches!(
            without_config(&bob(), OnError::Deny, &e).login,
            Login::Deny(_)
        ));
        assert!(matches!(
            without_config(&bob(), OnError::Allow, &e).login,
            Login::Allow(_)
        ));
        let root = Account::new("root", 0, &[]).unwrap();
        let d = without_config(&root, OnError::Deny, &e);
        assert!(matches!(d.login, Login::Allow(_)));
        assert!(d.log_line(false).contains("config.json"));
        let d = lookup_failed("bob", OnError::Deny, &e);
        assert!(matches!(d.login, Login::Deny(_)) && d.warn);
    }

    #[test]
    fn the_deadline_cuts_a_hung_read_and_a_panic_is_an_error() {
        let (release, hold) = mpsc::channel::<()>();
        let r = with_deadline(Duration::from_millis(100), move || {
            let _ = hold.recv();
            Ok(())
        });
        assert!(matches!(r, Err(ShareFailure::TimedOut(_))), "{r:?}");
        drop(release);
        let r: std::result::Result<(), _> =
            with_deadline(Duration::from_secs(30), || panic!("reader bug"));
        assert!(matches!(r, Err(ShareFailure::Died)), "{r:?}");
        let r = with_deadline(Duration::from_secs(30), || Ok(7));
        assert_eq!(r.unwrap(), 7);
    }

    #[test]
    fn real_files_on_disk() {
        let t = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let trust = Trust::root_and(crate::testing::uid(me));
        let store = Store::new(t.path().join("shared"), trust.clone());
        store.init(&policy()).unwrap();
        let by = UserName::new("root").unwrap();
        store.add_node(&state(), &by, ts(NOW)).unwrap();
        let copy_path = t.path().join("copy.json");
        let mut c = Config::with_shared(store.root());
        c.housekeeper.state_copy = copy_path.clone();
        let subuid = t.path().join("subuid");
        let from = Sources {
            subuid: &subuid,
            ..Sources::of(&c, &trust)
        };
        let go = |user: &Account| check(&from, &c.pam, user, &node3(), ts(NOW));
        // alice's booking is read through the share; bob has none.
        assert_eq!(verdict(&go(&alice())), ("allow", Source::Shared));
        assert_eq!(verdict(&go(&bob())), ("deny", Source::Shared));
        // A zone this host does not know: the gate needs none.
        let cluster = store.cluster_path();
        let text = std::fs::read_to_string(&cluster).unwrap();
        std::fs::write(&cluster, text.replace("\"UTC\"", "\"Mars/Olympus_Mons\"")).unwrap();
        assert_eq!(verdict(&go(&alice())), ("allow", Source::Shared));
        // nodes/node3 a regular file: an error, not "not a node".
        let dir = store.node_dir(&node3());
        std::fs::rename(&dir, t.path().join("away")).unwrap();
        std::fs::write(&dir, b"").unwrap();
        let d = go(&bob());
        assert_eq!(verdict(&d), ("deny", Source::OnError), "{d:?}");
        // With a fresh local copy, it decides instead.
        let lc = LocalCopy::new(ts(FRESH), policy(), Some(state()));
        std::fs::write(&copy_path, crate::store::to_json(&lc)).unwrap();
        assert_eq!(verdict(&go(&alice())), ("allow", Source::LocalCopy));
        assert_eq!(read_copy(&copy_path, &trust).unwrap(), Some(lc));
        std::fs::write(&copy_path, b"{").unwrap();
        assert!(read_copy(&copy_path, &trust).is_err());
        // Really absent: not a node.
        std::fs::remove_file(&dir).unwrap();
        let d = go(&bob());
        assert_eq!(verdict(&d), ("ignore", Source::Shared), "{d:?}");
    }
}
