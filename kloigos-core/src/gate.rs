//! The login gate: the decision `pam_kloigos.so` takes at every SSH login and
//! `kloigos check-login` shows, with where the answer came from and the line
//! that goes to the log.
//!
//! Order of the decision (DESIGN.md, "PAM account module"):
//! 1. system accounts are ignored; root, bypass users and admins are let in,
//!    decided from a policy read *before* the node state: the housekeeper's
//!    local copy when it is there and trusted (any age), else `cluster.json`
//!    from the share, read with the deadline;
//! 2. this node's `state.json` is read from the share on a helper thread with
//!    a deadline (a hung NFS read must not hang sshd; the thread is left
//!    behind on timeout) and decides: an active booking lets the user in.
//!    The same thread, started first, has read the local copy meanwhile
//!    (while the caller looked the user up), and without a usable copy goes
//!    on to the share by itself, so a decision starts one thread and waits
//!    on it as little as it can.
//!    The policy for this step is the share's `cluster.json`, read on the
//!    same thread, unless a fresh local copy gives it: then `cluster.json`
//!    is only checked to be there (the share is mounted);
//! 3. when the share is unreachable, slow, corrupt or untrusted, a fresh local
//!    copy decides instead; failing that, `on_error`.
//!
//! No `cluster.json` means the share is not mounted (an error, step 3); a
//! readable cluster without `nodes/<node>/` means this host is not a node:
//! ignored, with a warning.
//!
//! The reading is injected ([`SharedReader`], [`LocalCopyReader`]) so the
//! whole decision is tested here without disks, NFS or clocks.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::access::{decide_login, login_without_state, Login};
use crate::config::{Config, OnError};
use crate::error::{Error, Result};
use crate::names::NodeName;
use crate::policy::Policy;
use crate::state::NodeState;
use crate::store::{check_mounted, read_trusted_if_any, LoginCopy, Store, Trust};
use crate::users::{self, Account};

/// Where a login decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No node state was needed (system account, root, bypass user, admin,
    /// unknown user); the policy came from the local copy or the share.
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
    uid: Option<u32>,
}

impl Decision {
    fn new(user: &str, uid: Option<u32>, login: Login, source: Source) -> Decision {
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
    /// met; with `debug`, the detail too. Never contains a newline.
    pub fn log_line(&self, debug: bool) -> String {
        let verdict = match self.login {
            Login::Ignore(_) => "ignore",
            Login::Allow(_) => "allow",
            Login::Deny(_) => "deny",
        };
        // One buffer: this runs once per login, between the answer and
        // the PAM code.
        let mut line = String::with_capacity(192);
        let _ = write!(line, "user={}", self.user);
        if let Some(uid) = self.uid {
            let _ = write!(line, " uid={uid}");
        }
        if let Some(n) = &self.node {
            let _ = write!(line, " node={n}");
        }
        let _ = write!(
            line,
            " result={verdict} source={} reason=\"{}\"",
            self.source,
            self.login.reason()
        );
        let mut list = |name: &str, items: &[String]| {
            let _ = write!(line, " {name}=\"");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    line.push_str("; ");
                }
                line.push_str(item);
            }
            line.push('"');
        };
        if !self.problems.is_empty() {
            list("problems", &self.problems);
        }
        if debug && !self.detail.is_empty() {
            list("detail", &self.detail);
        }
        if line.contains(['\n', '\r']) {
            line = line.replace(['\n', '\r'], " ");
        }
        line
    }
}

/// What the share says about this node: the cluster policy and the node's
/// state, `None` when the cluster has no `nodes/<node>/` (not a node).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedView {
    /// The policy from `cluster.json`.
    pub policy: Policy,
    /// This node's state; `None`: this host is not a node of the cluster.
    pub state: Option<NodeState>,
}

/// Reads the shared tree. Called on a helper thread under a deadline, so it
/// may block (a hung NFS server) without hanging the caller.
pub trait SharedReader: Send + Sync + 'static {
    /// Reads `cluster.json` as the gate needs it (see
    /// [`Store::login_policy`]); a missing file means the share is not
    /// mounted.
    fn policy(&self) -> Result<Policy>;
    /// Reads `nodes/<node>/state.json`; `Ok(None)` when the cluster (whose
    /// `cluster.json` was read or checked to be there) has no such node.
    fn node(&self, node: &NodeName) -> Result<Option<NodeState>>;
    /// Checks that the share is mounted (its `cluster.json` is there),
    /// without reading the policy; by default by reading it.
    fn mounted(&self) -> Result<()> {
        self.policy().map(|_| ())
    }
    /// Told the service account's uid by a fresh local copy (the
    /// housekeeper looked it up), so a reader that would look the account
    /// up itself need not. Ignored by default.
    fn service_uid_hint(&self, _uid: u32) {}
}

/// Reads the housekeeper's local copy: `Ok(None)` when there is none.
/// Local disk, read on the decision's reader thread (see `Reader`) while
/// the caller looks the user up.
pub trait LocalCopyReader: Send + Sync + 'static {
    /// The copy, if one exists; an error when it exists but cannot be
    /// trusted or parsed.
    fn local_copy(&self) -> Result<Option<LoginCopy>>;
}

/// The real shared tree, through [`Store`].
#[derive(Debug, Clone)]
pub struct StoreReader {
    store: Store,
}

impl StoreReader {
    /// Reads the tree at `store`'s root with its trust.
    pub fn new(store: Store) -> StoreReader {
        StoreReader { store }
    }
}

impl SharedReader for StoreReader {
    fn policy(&self) -> Result<Policy> {
        self.store.login_policy()
    }

    fn mounted(&self) -> Result<()> {
        check_mounted(self.store.root())
    }

    fn node(&self, node: &NodeName) -> Result<Option<NodeState>> {
        self.store.node_if_any(node)
    }
}

/// The real local copy file, read with [`read_trusted`].
#[derive(Debug, Clone)]
pub struct LocalCopyFile {
    path: PathBuf,
    trust: Trust,
}

impl LocalCopyFile {
    /// The copy at `path`, believed only if owned as `trust` says.
    pub fn new(path: impl Into<PathBuf>, trust: Trust) -> LocalCopyFile {
        LocalCopyFile {
            path: path.into(),
            trust,
        }
    }
}

impl LocalCopyReader for LocalCopyFile {
    fn local_copy(&self) -> Result<Option<LoginCopy>> {
        match read_trusted_if_any(&self.path, &self.trust)? {
            Some(bytes) => LoginCopy::parse(&self.path, bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// Why a read under a deadline gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineError {
    /// The reader did not answer in time; its thread is left behind.
    TimedOut(Duration),
    /// The helper thread could not be started.
    Spawn(String),
    /// The reader died (panicked) without answering.
    Died,
}

impl fmt::Display for DeadlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadlineError::TimedOut(d) => write!(
                f,
                "no answer within {} ms (hung or slow NFS?)",
                d.as_millis()
            ),
            DeadlineError::Spawn(e) => write!(f, "cannot start the reader thread: {e}"),
            DeadlineError::Died => f.write_str("the reader thread died without an answer"),
        }
    }
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

/// The decision when the node-local configuration itself cannot be read:
/// root still gets in, everyone else gets `on_error`.
pub fn without_config(user: &Account, on_error: OnError, error: &Error) -> Decision {
    if user.uid == 0 {
        let mut d = Decision::new(
            user.name.as_str(),
            Some(0),
            Login::Allow("root is never gated".into()),
            Source::Policy,
        );
        d.problems.push(format!("configuration: {error}"));
        d.warn = true;
        return d;
    }
    let mut d = on_error_decision(user, on_error, None);
    d.problems.push(format!("configuration: {error}"));
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

fn on_error_decision(user: &Account, on_error: OnError, node: Option<&NodeName>) -> Decision {
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

/// Everything [`check_with`] needs besides the readers.
#[derive(Debug, Clone)]
pub struct GateParams<'a> {
    /// The node-local configuration (its `pam` section gives `on_error` and
    /// `cache_max_age_s`).
    pub config: &'a Config,
    /// The user logging in.
    pub user: Who<'a>,
    /// The node to decide for; `None`: from the config, else the host name.
    pub node: Option<NodeName>,
    /// The instant of the login.
    pub now: Timestamp,
    /// The whole budget for reading the share (both reads together).
    pub timeout: Duration,
}

/// How long a wait between the decision and its reader thread polls before
/// it sleeps. Falling asleep and being woken costs tens of microseconds
/// (more in a VM), as much as the reads themselves; a healthy share answers
/// well within this, so a fast decision never sleeps. Bounded: a slow share
/// costs at most this much CPU before the ordinary sleeping wait.
const SPIN: Duration = Duration::from_micros(200);

/// Polls `rx` for up to [`SPIN`]; `None`: nothing yet (or the sender is gone;
/// the sleeping wait that follows tells which).
fn spin_recv<T>(rx: &mpsc::Receiver<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if start.elapsed() < SPIN => {
                std::hint::spin_loop();
            }
            Err(mpsc::TryRecvError::Empty) => return None,
        }
    }
}

/// Waits for the next message on `rx` without a deadline: polls for up to
/// [`SPIN`], then sleeps. `None`: the sender is gone.
fn wait_for<T>(rx: &mpsc::Receiver<T>) -> Option<T> {
    spin_recv(rx).or_else(|| rx.recv().ok())
}

/// The share's reader and the node, for an [`Order::Policy`].
type ShareOrder = (Arc<dyn SharedReader>, Option<NodeName>);

/// What the reader thread of a decision is told to do: first read the
/// local copy, then (the order bringing the share's reader) the share.
enum Order {
    /// Read the local copy (local disk) and hand it over, first. With a
    /// share order: when there is no usable copy, go on to that
    /// [`Order::Policy`] at once, without waiting to be told (see
    /// [`usable`]).
    Copy(Arc<dyn LocalCopyReader>, Option<ShareOrder>),
    /// Read `cluster.json` and hand it over; with a node, read its state
    /// right after (else wait for an [`Order::Node`] naming it, or end).
    Policy(Arc<dyn SharedReader>, Option<NodeName>),
    /// A fresh local copy's policy serves: only check that `cluster.json`
    /// is there (the share is mounted), then read this node's state.
    State(Arc<dyn SharedReader>, NodeName),
    /// After [`Order::Policy`] without a node: read this node's state.
    Node(NodeName),
    /// Every read answered: run this job (see [`Reader::run_after`]).
    Run(Job),
}

/// Work the reader thread does for the caller once its reads are done.
pub type Job = Box<dyn FnOnce() + Send>;

/// What the reader thread of a decision hands over, in this order.
enum Read {
    /// The local copy, read first (boxed: it is the largest answer).
    Copy(Result<Option<Box<LoginCopy>>>),
    /// `cluster.json` (or `None`: only checked to be there).
    Head(Result<Option<Policy>>),
    /// This node's state, read only when asked for.
    Node(Result<Option<NodeState>>),
}

/// The one helper thread of a login decision, with the decision's deadline.
///
/// It is started before anything else (see [`Reader::start`]), so that its
/// start, which takes tens of microseconds, overlaps the caller's reading
/// of the configuration; then it reads the local copy while the caller
/// looks the user up. It reads the share when told: it reads
/// `cluster.json` (or, with a fresh copy, only checks it is there) and the
/// node's state when the node is named, and hands them over; or ends when
/// told nothing. So the share is never touched for a user the local copy's
/// policy decides. Without a usable copy it goes on to the share at once,
/// as every decision but root's then reads it. One thread serves every
/// read of a decision, then may run a last job for the caller while the
/// caller goes on ([`Reader::run_after`]: the PAM module's log line).
pub struct Reader {
    /// The thread's answers; `Err` when it could not be started.
    rx: std::result::Result<mpsc::Receiver<Read>, DeadlineError>,
    /// Orders for the thread. Dropping it ends a thread that waits for one.
    go: mpsc::SyncSender<Order>,
    /// How many answers the thread still owes. An order whose answer is
    /// already owed (the thread went on to the share by itself, or was
    /// given the node with the policy) is not sent again.
    owed: u32,
    /// Whether an answer came too late (or never): the thread may be stuck.
    late: bool,
    /// Whether the copy's order carried a share order (see
    /// [`Order::Copy`]) and, if so, whether that named the node.
    follow_up: Option<bool>,
    /// When the decision began: the deadline counts from here.
    started: Instant,
    deadline: Instant,
    /// The whole budget, for the message on timeout.
    budget: Duration,
}

impl Reader {
    /// Starts the reader thread of a login decision (see [`check`]); it
    /// waits for orders. The decision's deadline counts from now.
    pub fn start() -> Reader {
        let started = Instant::now();
        // Room for every answer: a late thread never blocks on a send, it
        // just fails once the decision has gone. Orders are sent one at a
        // time, each only when the thread is known to wait for it.
        let (tx, rx) = mpsc::sync_channel(3);
        let (go, go_rx) = mpsc::sync_channel::<Order>(1);
        let spawned = std::thread::Builder::new()
            .name("kloigos-read".into())
            .stack_size(READER_STACK)
            .spawn(move || {
                // Every order is served until the decision drops its end,
                // so a job handed over after the reads runs here.
                let mut next = serve(&go_rx, &tx);
                while let Some(order) = next.take().or_else(|| wait_for(&go_rx)) {
                    if let Order::Run(job) = order {
                        job();
                    }
                }
            });
        Reader {
            rx: spawned
                .map(|_| rx)
                .map_err(|e| DeadlineError::Spawn(e.to_string())),
            go,
            owed: 0,
            late: false,
            follow_up: None,
            started,
            deadline: started,
            budget: Duration::ZERO,
        }
    }

    /// Sends an order; the thread waits for it (or is gone, which the
    /// answer then shows), so this never blocks.
    fn order(&mut self, order: Order) {
        self.owed += match &order {
            Order::Copy(..) | Order::Policy(_, None) | Order::Node(_) => 1,
            Order::Policy(_, Some(_)) | Order::State(..) => 2,
            Order::Run(_) => 0,
        };
        let _ = self.go.send(order);
    }

    /// The next answer, waiting at most until the deadline.
    fn next(&mut self) -> std::result::Result<Read, DeadlineError> {
        let rx = self.rx.as_ref().map_err(Clone::clone)?;
        let read = match spin_recv(rx) {
            Some(r) => Ok(r),
            None => {
                let left = self.deadline.saturating_duration_since(Instant::now());
                rx.recv_timeout(left).map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => DeadlineError::TimedOut(self.budget),
                    mpsc::RecvTimeoutError::Disconnected => DeadlineError::Died,
                })
            }
        };
        match &read {
            // A failed cluster.json ends the thread's reads.
            Ok(Read::Head(Err(_))) => self.owed = 0,
            Ok(_) => self.owed = self.owed.saturating_sub(1),
            Err(_) => self.late = true,
        }
        read
    }

    /// Has the thread run `job` once it has answered every order, so the
    /// caller can go on meanwhile; [`Done`] tells when it has. When the
    /// thread cannot take it (never started, still reading, late or gone),
    /// `job` runs here, now, and `None` is returned.
    pub fn run_after(&mut self, job: Job) -> Option<Done> {
        let (done_tx, done) = mpsc::sync_channel(1);
        let run: Job = Box::new(move || {
            job();
            let _ = done_tx.send(());
        });
        if self.rx.is_err() || self.late || self.owed != 0 {
            run();
            return None;
        }
        // Every order has been answered, so the thread waits for the next
        // one and the channel has room.
        match self.go.try_send(Order::Run(run)) {
            Ok(()) => Some(Done(done)),
            Err(mpsc::TrySendError::Full(order) | mpsc::TrySendError::Disconnected(order)) => {
                if let Order::Run(run) = order {
                    run();
                }
                None
            }
        }
    }

    /// Has the thread read the local copy while the caller goes on; with
    /// `then`, the share's reader and the node, it goes on to read
    /// `cluster.json` and the node's state at once when there is no usable
    /// copy (see [`Order::Copy`]).
    fn order_copy(&mut self, local: &Arc<dyn LocalCopyReader>, then: Option<ShareOrder>) {
        self.follow_up = then.as_ref().map(|(_, node)| node.is_some());
        self.order(Order::Copy(Arc::clone(local), then));
    }

    /// The local copy [`Reader::order_copy`] asked for; read here when no
    /// thread could be started.
    fn copy(&mut self, local: &Arc<dyn LocalCopyReader>) -> Result<Option<LoginCopy>> {
        if self.rx.is_err() {
            return local.local_copy();
        }
        let why = match self.next() {
            Ok(Read::Copy(r)) => {
                if let (Some(node_named), false) = (self.follow_up, usable(&r)) {
                    self.owed += if node_named { 2 } else { 1 };
                }
                return r.map(|c| c.map(|c| *c));
            }
            Ok(_) => "the reader answered out of order (a bug)".to_string(),
            Err(e) => e.to_string(),
        };
        Err(Error::Storage {
            path: PathBuf::new(),
            msg: format!("reading it: {why}"),
        })
    }

    /// Sends the first share order (unless the thread went on to the share
    /// by itself, see [`Order::Copy`]), runs `meanwhile` (if still there)
    /// while the thread reads, and waits for the answer: `cluster.json` for
    /// [`Order::Policy`], `None` once the share is known to be mounted for
    /// [`Order::State`].
    fn head(
        &mut self,
        order: Order,
        meanwhile: &mut Option<&mut dyn FnMut()>,
    ) -> std::result::Result<Option<Policy>, String> {
        if self.owed == 0 {
            self.order(order);
        }
        if let Some(f) = meanwhile.take() {
            f();
        }
        match self.next() {
            Ok(Read::Head(r)) => r.map_err(|e| e.to_string()),
            Ok(_) => Err("the reader answered out of order (a bug)".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `node`'s state from the share, after [`Reader::head`] (which may
    /// have named the node already; it must be the same).
    fn node(&mut self, node: NodeName) -> std::result::Result<Option<NodeState>, String> {
        if self.owed == 0 {
            self.order(Order::Node(node));
        }
        match self.next() {
            Ok(Read::Node(r)) => r.map_err(|e| e.to_string()),
            Ok(_) => Err("the reader answered out of order (a bug)".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The reader thread's reads, as [`Reader`] orders them: the local copy,
/// then the share. Returns an order it was given but does not serve (a
/// [`Order::Run`]), or `None` when the orders ended or the decision has
/// gone.
fn serve(go_rx: &mpsc::Receiver<Order>, tx: &mpsc::SyncSender<Read>) -> Option<Order> {
    let mut order = wait_for(go_rx);
    if let Some(Order::Copy(local, then)) = order {
        let copy = local.local_copy().map(|c| c.map(Box::new));
        let go_on = !usable(&copy);
        tx.send(Read::Copy(copy)).ok()?;
        order = match then {
            Some((shared, node)) if go_on => Some(Order::Policy(shared, node)),
            _ => wait_for(go_rx),
        };
    }
    let (shared, head, state) = match order {
        Some(Order::Policy(shared, node)) => {
            let head = shared.policy().map(Some);
            // A node already named: read its state before handing over the
            // policy, so the caller is woken once for both.
            let state = match &node {
                Some(n) if head.is_ok() => Some(shared.node(n)),
                _ => None,
            };
            (shared, head, state)
        }
        Some(Order::State(shared, n)) => match shared.mounted() {
            Ok(()) => {
                let state = shared.node(&n);
                (shared, Ok(None), Some(state))
            }
            Err(e) => (shared, Err(e), None),
        },
        other => return other,
    };
    let failed = head.is_err();
    tx.send(Read::Head(head)).ok()?;
    if failed {
        return None;
    }
    let state = match state {
        Some(s) => s,
        None => match wait_for(go_rx) {
            Some(Order::Node(n)) => shared.node(&n),
            other => return other,
        },
    };
    tx.send(Read::Node(state)).ok()?;
    None
}

/// Tells when a job handed to the reader thread ([`Reader::run_after`]) has run.
#[derive(Debug)]
pub struct Done(mpsc::Receiver<()>);

impl Done {
    /// Waits at most `limit` for the job to have run; whether it has.
    pub fn wait(&self, limit: Duration) -> bool {
        match self.0.try_recv() {
            Ok(()) => true,
            Err(mpsc::TryRecvError::Disconnected) => false,
            Err(mpsc::TryRecvError::Empty) => self.0.recv_timeout(limit).is_ok(),
        }
    }
}

/// Whether a local copy read can serve the decision: without one, the
/// share gives the policy too, so a reader told how (see [`Order::Copy`])
/// goes on to read it at once.
fn usable<T>(copy: &Result<Option<T>>) -> bool {
    matches!(copy, Ok(Some(_)))
}

/// The reader thread's stack: its reads and JSON parsing need little, and
/// a small stack is cheaper to hand back when the thread ends.
const READER_STACK: usize = 128 * 1024;

/// Whose login is decided.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// An account already looked up.
    Account(&'a Account),
    /// A user name, looked up while the reader thread reads the local copy.
    Name(&'a str),
}

/// The login decision with injected readers; see the module doc for the order.
///
/// Every file is read by one helper thread (see [`Reader`]), started
/// first: it reads the local copy while this thread looks the user up
/// (when given a name), then reads the share when told to, or at once when
/// there is no usable copy. The local copy is read before the share, never
/// at the same time.
pub fn check_with(
    p: &GateParams<'_>,
    shared: Arc<dyn SharedReader>,
    local: Arc<dyn LocalCopyReader>,
) -> Decision {
    decide_with(p, &mut Reader::start(), shared, local, &mut || {})
}

/// [`check_with`] with its reader thread already started (for `p.user`);
/// `meanwhile` runs on this thread while the reader thread reads the share
/// (not at all when the share is not read).
fn decide_with(
    p: &GateParams<'_>,
    reader: &mut Reader,
    shared: Arc<dyn SharedReader>,
    local: Arc<dyn LocalCopyReader>,
    meanwhile: &mut dyn FnMut(),
) -> Decision {
    let mut meanwhile = Some(meanwhile);
    let started = reader.started;
    reader.deadline = started + p.timeout;
    reader.budget = p.timeout;
    let mut problems = Vec::new();
    let mut detail = Vec::new();
    let finish = |mut d: Decision, problems: Vec<String>, mut detail: Vec<String>| {
        detail.push(format!("decided in {} ms", started.elapsed().as_millis()));
        d.problems.extend(problems);
        d.detail.extend(detail);
        d
    };

    // This node's name: from the arguments, the config or the host name.
    let node = p.node.clone().map_or_else(|| p.config.node_name(), Ok);

    // The local copy serves twice: its policy (any age) for step 1, and as
    // the fallback (when fresh) for step 3. Read by the reader thread while
    // this one looks the user up. Without a usable copy the share is read
    // for everyone but root (its policy decides step 1, and the node's
    // state comes with it), so the thread goes on to it by itself. Root is
    // known here only by name; another uid-0 account without a copy costs
    // a share read nobody waits for.
    let root = match p.user {
        Who::Account(a) => a.uid == 0,
        Who::Name(name) => name == "root",
    };
    let then = (!root).then(|| (Arc::clone(&shared), node.as_ref().ok().cloned()));
    reader.order_copy(&local, then);
    let looked_up;
    let user = match p.user {
        Who::Account(a) => a,
        Who::Name(name) => match users::by_name(name) {
            Ok(Some(a)) => {
                looked_up = a;
                &looked_up
            }
            Ok(None) => return unknown_user(name),
            Err(e) => return lookup_failed(name, p.config.pam.on_error, &e),
        },
    };
    let copy = match reader.copy(&local) {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            detail.push("no local copy".into());
            None
        }
        Err(e) => {
            problems.push(format!("local copy unusable: {e}"));
            None
        }
    };
    let max_age = p.config.pam.cache_max_age_s;
    let fresh = copy.as_ref().filter(|c| c.is_fresh(p.now, max_age));
    // The housekeeper looked the service account up when it made a fresh
    // copy: the share's reader need not look it up again.
    if let Some(uid) = fresh.and_then(|c| c.service_uid) {
        shared.service_uid_hint(uid);
    }

    // Step 1: the decision that needs no node state, from the copy's
    // policy, else from the share's.
    let mut share_policy = None;
    let policy = match &copy {
        Some(c) => {
            detail.push(format!("policy from the local copy of {}", c.copied_at));
            Some(&c.policy)
        }
        // Root is let in whatever the files say: the share is not read for root.
        None if user.uid == 0 => None,
        // Without a copy the share is read anyway: the node's state comes
        // with `cluster.json`, in one trip (the node name is local).
        None => match reader.head(
            Order::Policy(Arc::clone(&shared), node.as_ref().ok().cloned()),
            &mut meanwhile,
        ) {
            Ok(pol) => {
                detail.push("policy from the share".into());
                share_policy = pol;
                share_policy.as_ref()
            }
            Err(e) => {
                problems.push(format!("shared tree: {e}"));
                None
            }
        },
    };
    match policy {
        Some(pol) => {
            if let Some(login) = login_without_state(pol, user) {
                let d = Decision::new(user.name.as_str(), Some(user.uid), login, Source::Policy);
                // Problems that did not matter for this user are detail.
                detail.extend(problems);
                return finish(d, Vec::new(), detail);
            }
        }
        None => {
            // No policy at all: only root is decided without one.
            if user.uid == 0 {
                let d = Decision::new(
                    user.name.as_str(),
                    Some(0),
                    Login::Allow("root is never gated".into()),
                    Source::Policy,
                );
                detail.extend(problems);
                return finish(d, Vec::new(), detail);
            }
            // Neither a local copy nor the share gave a policy: nothing to fall back on.
            let d = on_error_decision(user, p.config.pam.on_error, p.node.as_ref());
            return finish(d, problems, detail);
        }
    }

    // Step 2: this node's state from the share, under what is left of the
    // deadline, with the share's policy; or with a fresh local copy's, when
    // there is one, as the share's `cluster.json` is then only checked to be
    // there (no `cluster.json`: the share is not mounted, as in step 3).
    let node = match node {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("node name: {e}"));
            let d = on_error_decision(user, p.config.pam.on_error, None);
            return finish(d, problems, detail);
        }
    };
    let read = match share_policy {
        Some(pol) => reader.node(node.clone()).map(|st| (Some(pol), st)),
        None => {
            let order = match fresh {
                Some(_) => Order::State(Arc::clone(&shared), node.clone()),
                None => Order::Policy(Arc::clone(&shared), Some(node.clone())),
            };
            reader
                .head(order, &mut meanwhile)
                .and_then(|pol| reader.node(node.clone()).map(|st| (pol, st)))
        }
    };
    let err = match read {
        Ok((share, state)) => {
            // The share's policy, else (cluster.json only checked to be
            // there) the fresh copy's.
            let Some(pol) = share.as_ref().or(fresh.map(|c| &c.policy)) else {
                let e = "the reader answered without the policy (a bug)";
                problems.push(format!("shared tree: {e}"));
                let d = on_error_decision(user, p.config.pam.on_error, Some(&node));
                return finish(d, problems, detail);
            };
            if share.is_none() {
                detail.push("cluster.json is there; the fresh copy's policy serves".into());
            }
            let mut d = match &state {
                Some(st) => decide_from(pol, user, st, &node, p.now, Source::Shared),
                None => not_a_node(user, &node, Source::Shared),
            };
            d.node = Some(node);
            return finish(d, problems, detail);
        }
        Err(e) => e,
    };
    problems.push(format!("shared tree: {err}"));

    // Step 3: a fresh local copy, else on_error.
    let mut d = match &copy {
        Some(c) if !c.is_fresh(p.now, max_age) => {
            problems.push(format!(
                "local copy of {} is older than cache_max_age_s={max_age}",
                c.copied_at
            ));
            on_error_decision(user, p.config.pam.on_error, Some(&node))
        }
        // The copy's state is parsed only now, when it is needed.
        Some(c) => match c.state() {
            Ok(Some(st)) if st.node.name == node => {
                decide_from(&c.policy, user, &st, &node, p.now, Source::LocalCopy)
            }
            Ok(Some(st)) => {
                problems.push(format!(
                    "local copy describes node '{}', not '{node}'",
                    st.node.name
                ));
                on_error_decision(user, p.config.pam.on_error, Some(&node))
            }
            Ok(None) => not_a_node(user, &node, Source::LocalCopy),
            Err(e) => {
                problems.push(format!("local copy unusable: {e}"));
                on_error_decision(user, p.config.pam.on_error, Some(&node))
            }
        },
        None => on_error_decision(user, p.config.pam.on_error, Some(&node)),
    };
    d.warn = true;
    d.node = Some(node);
    finish(d, problems, detail)
}

fn decide_from(
    policy: &Policy,
    user: &Account,
    state: &NodeState,
    node: &NodeName,
    now: Timestamp,
    source: Source,
) -> Decision {
    let login = decide_login(policy, user, state, now);
    let mut d = Decision::new(user.name.as_str(), Some(user.uid), login, source);
    d.node = Some(node.clone());
    d
}

fn not_a_node(user: &Account, node: &NodeName, source: Source) -> Decision {
    let mut d = Decision::new(
        user.name.as_str(),
        Some(user.uid),
        Login::Ignore(format!(
            "this host ('{node}') is not a node of the cluster (no nodes/{node}/); not gating it — set \"node\" in the config if that is wrong"
        )),
        source,
    );
    d.node = Some(node.clone());
    d.warn = true;
    d
}

/// Who the gate trusts: root and the service account `service_user` (looked
/// up by name; root alone when the account does not exist here).
fn trust_for_user(service_user: &str) -> (Trust, Option<String>) {
    match users::by_name(service_user) {
        Ok(Some(a)) => (Trust::service(a.uid), None),
        Ok(None) => (
            Trust::service(0),
            Some(format!(
                "service account '{service_user}' does not exist here; trusting root-owned files only"
            )),
        ),
        Err(e) => (
            Trust::service(0),
            Some(format!("{e}; trusting root-owned files only")),
        ),
    }
}

/// The gate's trust, [`trust_for_user`], with the service account looked up
/// only when a file needs it: a file is read believing root alone first,
/// and only a refusal for its owner looks the account up (once per
/// decision) and reads the file again believing root and the account. The
/// outcome is the one [`trust_for_user`]'s trust gives (a file root alone may be
/// trusted with is one root and the account may be trusted with, and every
/// other refusal or failure comes before or regardless of the owner); a
/// tree owned by root needs no lookup.
#[derive(Debug)]
struct LazyTrust {
    service_user: String,
    full: OnceLock<(Trust, Option<String>)>,
}

impl LazyTrust {
    fn new(service_user: &str) -> Arc<LazyTrust> {
        Arc::new(LazyTrust {
            service_user: service_user.to_string(),
            full: OnceLock::new(),
        })
    }

    /// Runs the read `f` with root's trust, then, if the owner was refused,
    /// with the full trust.
    fn read<T>(&self, f: impl Fn(&Trust) -> Result<T>) -> Result<T> {
        let root = Trust::service(0);
        // Once looked up, the full trust serves directly.
        if let Some((full, _)) = self.full.get() {
            return f(full);
        }
        match f(&root) {
            Err(e) if refused_owner(&e) => {
                let (full, _) = self.full.get_or_init(|| trust_for_user(&self.service_user));
                if *full == root {
                    Err(e)
                } else {
                    f(full)
                }
            }
            other => other,
        }
    }

    /// What the account lookup had to say, if it was made and has finished.
    fn note(&self) -> Option<String> {
        self.full.get().and_then(|(_, note)| note.clone())
    }
}

/// Whether `e` is [`Trust::check`]'s refusal of a file's (or its
/// directory's) owner.
fn refused_owner(e: &Error) -> bool {
    matches!(
        e,
        Error::Untrusted {
            why: crate::error::Untrust::Owner { .. },
            ..
        }
    )
}

/// The share through [`Store`], with a [`LazyTrust`].
struct LazyStoreReader {
    root: PathBuf,
    trust: Arc<LazyTrust>,
}

impl SharedReader for LazyStoreReader {
    fn policy(&self) -> Result<Policy> {
        self.trust
            .read(|t| Store::new(&self.root, t.clone()).login_policy())
    }

    fn node(&self, node: &NodeName) -> Result<Option<NodeState>> {
        self.trust
            .read(|t| StoreReader::new(Store::new(&self.root, t.clone())).node(node))
    }

    fn mounted(&self) -> Result<()> {
        check_mounted(&self.root)
    }

    fn service_uid_hint(&self, uid: u32) {
        // Set before the first share read is ordered, so no lookup has
        // started; a lookup already made wins.
        let _ = self.trust.full.set((Trust::service(uid), None));
    }
}

/// The local copy through [`LocalCopyFile`], with a [`LazyTrust`].
struct LazyLocalCopy {
    path: PathBuf,
    trust: Arc<LazyTrust>,
}

impl LocalCopyReader for LazyLocalCopy {
    fn local_copy(&self) -> Result<Option<LoginCopy>> {
        self.trust
            .read(|t| LocalCopyFile::new(&self.path, t.clone()).local_copy())
    }
}

/// The login decision on this host for the user named `user`, with the
/// reader thread started for it (see [`Reader::start`]), reading the real
/// share and local copy named by `config`, trusting files owned by root or
/// the service account (known from a fresh local copy, else looked up only
/// for a file root does not own). `meanwhile` runs on this thread while the
/// reader thread reads the share (not at all when the share is not read):
/// the caller's own work that does not need the answer. The reader stays
/// the caller's, to hand the thread a last job ([`Reader::run_after`]).
/// Used by the PAM module.
pub fn check(
    config: &Config,
    reader: &mut Reader,
    user: &str,
    node: Option<NodeName>,
    now: Timestamp,
    timeout: Duration,
    meanwhile: &mut dyn FnMut(),
) -> Decision {
    // One trust for both readers: the local copy is read before the reader
    // thread is told to read the share (see check_with).
    let trust = LazyTrust::new(&config.service_user);
    let shared = Arc::new(LazyStoreReader {
        root: config.shared.clone(),
        trust: Arc::clone(&trust),
    });
    let local = Arc::new(LazyLocalCopy {
        path: config.housekeeper.state_copy.clone(),
        trust: Arc::clone(&trust),
    });
    let p = GateParams {
        config,
        user: Who::Name(user),
        node,
        now,
        timeout,
    };
    let mut d = decide_with(&p, reader, shared, local, meanwhile);
    d.detail.extend(trust.note());
    d
}

/// Path of the local copy for `config` (for messages).
pub fn local_copy_path(config: &Config) -> &Path {
    &config.housekeeper.state_copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuset::CpuSet;
    use crate::names::UserName;
    use crate::node::NodeSpec;
    use crate::state::{Request, Size};
    use crate::store::{read_trusted, LocalCopy};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-11-23T11:00:00Z";

    fn policy() -> Policy {
        Policy {
            bypass_users: vec![UserName::new("ops").unwrap()],
            admin_group: Some(UserName::new("wheel").unwrap()),
            ..Policy::default()
        }
    }

    fn node3() -> NodeName {
        NodeName::new("node3").unwrap()
    }

    /// node3 with alice (uid 1001) booked 10:00-12:00 on 2026-11-23.
    fn state() -> NodeState {
        let mut st = NodeState::new(NodeSpec::new(node3(), CpuSet::parse("0-3").unwrap()));
        let alice = UserName::new("alice").unwrap();
        let r = Request {
            user: alice.clone(),
            uid: 1001,
            created_by: alice,
            size: Size::Whole,
            start: ts("2026-11-23T10:00:00Z"),
            end: ts("2026-11-23T12:00:00Z"),
            note: String::new(),
            held_elsewhere: 0,
        };
        st.book(&r, &policy(), ts("2026-11-23T09:00:00Z"), &[])
            .unwrap();
        st
    }

    fn alice() -> Account {
        Account::new("alice", 1001, &["alice"]).unwrap()
    }
    fn bob() -> Account {
        Account::new("bob", 1002, &["bob"]).unwrap()
    }

    /// What the fake share does on each read.
    #[derive(Clone)]
    enum Share {
        Ok(Option<NodeState>),
        NotMounted,
        Corrupt,
        Slow(Duration, Option<NodeState>),
        Hang,
        Panic,
    }

    struct FakeShare {
        how: Share,
        reads: AtomicUsize,
        // Released when the test ends so a hung reader thread can finish.
        hang: Arc<Mutex<()>>,
    }

    impl FakeShare {
        fn new(how: Share) -> Arc<FakeShare> {
            Arc::new(FakeShare {
                how,
                reads: AtomicUsize::new(0),
                hang: Arc::new(Mutex::new(())),
            })
        }
    }

    impl SharedReader for FakeShare {
        fn policy(&self) -> Result<Policy> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            match &self.how {
                Share::NotMounted => Err(Error::Storage {
                    path: "/nfs/kloigos/cluster.json".into(),
                    msg: "not found: the shared directory is not mounted".into(),
                }),
                Share::Slow(d, _) => {
                    std::thread::sleep(*d);
                    Ok(policy())
                }
                Share::Hang => {
                    let _g = self.hang.lock();
                    Ok(policy())
                }
                Share::Panic => panic!("reader bug"),
                _ => Ok(policy()),
            }
        }

        fn node(&self, _node: &NodeName) -> Result<Option<NodeState>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            match &self.how {
                Share::Ok(s) | Share::Slow(_, s) => Ok(s.clone()),
                Share::Corrupt => Err(Error::Corrupt {
                    path: "/nfs/kloigos/nodes/node3/state.json".into(),
                    msg: "is not valid JSON".into(),
                }),
                Share::Hang => {
                    let _g = self.hang.lock();
                    Ok(Some(state()))
                }
                Share::NotMounted | Share::Panic => Ok(None),
            }
        }
    }

    /// A local copy, or the message of its read error.
    #[derive(Clone)]
    struct FakeCopy(std::result::Result<Option<LocalCopy>, String>);

    impl LocalCopyReader for FakeCopy {
        fn local_copy(&self) -> Result<Option<LoginCopy>> {
            match &self.0 {
                Ok(c) => Ok(c.clone().map(LoginCopy::from)),
                Err(e) => Err(Error::Storage {
                    path: "/var/lib/kloigos/state.json".into(),
                    msg: e.clone(),
                }),
            }
        }
    }

    fn no_copy() -> FakeCopy {
        FakeCopy(Ok(None))
    }

    fn copy_at(at: &str, state: Option<NodeState>) -> FakeCopy {
        FakeCopy(Ok(Some(LocalCopy::new(ts(at), policy(), state))))
    }

    fn config(on_error: OnError) -> Config {
        let mut c = Config::with_shared("/nfs/kloigos");
        c.node = Some(node3());
        c.pam.on_error = on_error;
        c.pam.cache_max_age_s = 600;
        c
    }

    fn run(user: &Account, share: Arc<FakeShare>, copy: &FakeCopy, on_error: OnError) -> Decision {
        run_at(user, share, copy, on_error, NOW, Duration::from_millis(500))
    }

    fn run_at(
        user: &Account,
        share: Arc<FakeShare>,
        copy: &FakeCopy,
        on_error: OnError,
        now: &str,
        timeout: Duration,
    ) -> Decision {
        let c = config(on_error);
        let p = GateParams {
            config: &c,
            user: Who::Account(user),
            node: None,
            now: ts(now),
            timeout,
        };
        check_with(&p, share, Arc::new(copy.clone()))
    }

    #[test]
    fn booked_user_is_let_in_from_the_share() {
        let d = run(
            &alice(),
            FakeShare::new(Share::Ok(Some(state()))),
            &no_copy(),
            OnError::Deny,
        );
        assert!(
            matches!(&d.login, Login::Allow(r) if r.contains("node3:1")),
            "{d:?}"
        );
        assert_eq!(d.source, Source::Shared);
        let line = d.log_line(false);
        assert!(
            line.starts_with("user=alice uid=1001 node=node3 result=allow source=shared reason=\"booking node3:1"),
            "{line}"
        );
        assert!(!line.contains("detail="), "{line}");
        assert!(
            d.log_line(true).contains("detail=\""),
            "{}",
            d.log_line(true)
        );
    }

    #[test]
    fn stranger_and_expired_and_future_are_denied() {
        let d = run(
            &bob(),
            FakeShare::new(Share::Ok(Some(state()))),
            &no_copy(),
            OnError::Allow,
        );
        assert_eq!(
            d.login,
            Login::Deny("no booking for bob on node3 — book with: kloigos alloc -w node3".into())
        );
        for at in ["2026-11-23T12:00:00Z", "2026-11-23T09:59:59Z"] {
            let d = run_at(
                &alice(),
                FakeShare::new(Share::Ok(Some(state()))),
                &no_copy(),
                OnError::Allow,
                at,
                Duration::from_millis(500),
            );
            assert!(matches!(d.login, Login::Deny(_)), "{at}: {d:?}");
            assert_eq!(d.source, Source::Shared);
        }
    }

    #[test]
    fn privileged_users_are_decided_from_the_copy_without_touching_the_share() {
        let ops = Account::new("ops", 1100, &["ops"]).unwrap();
        let adm = Account::new("carol", 1200, &["carol", "wheel"]).unwrap();
        let root = Account::new("root", 0, &["root"]).unwrap();
        let sys = Account::new("daemon", 2, &["daemon"]).unwrap();
        // An old copy is fine for the policy.
        let copy = copy_at("2020-01-01T00:00:00Z", None);
        for (u, allow) in [(&ops, true), (&adm, true), (&root, true), (&sys, false)] {
            let share = FakeShare::new(Share::Hang);
            let _g = share.hang.lock().unwrap();
            let d = run(u, Arc::clone(&share), &copy, OnError::Deny);
            assert_eq!(d.source, Source::Policy, "{d:?}");
            assert_eq!(matches!(d.login, Login::Allow(_)), allow, "{d:?}");
            assert_eq!(share.reads.load(Ordering::SeqCst), 0, "{}", u.name);
        }
    }

    #[test]
    fn without_a_copy_the_policy_comes_from_the_share() {
        let ops = Account::new("ops", 1100, &["ops"]).unwrap();
        let share = FakeShare::new(Share::Ok(Some(state())));
        let d = run(&ops, Arc::clone(&share), &no_copy(), OnError::Deny);
        assert!(matches!(d.login, Login::Allow(_)));
        // Without a copy the share is read whoever logs in: the node's
        // state comes with cluster.json, in one trip to the reader thread.
        assert_eq!(
            share.reads.load(Ordering::SeqCst),
            2,
            "cluster.json and state"
        );
        // Share down, no copy: admins get on_error, root still gets in.
        let d = run(
            &ops,
            FakeShare::new(Share::NotMounted),
            &no_copy(),
            OnError::Deny,
        );
        assert!(matches!(d.login, Login::Deny(_)));
        assert_eq!(d.source, Source::OnError);
        assert!(
            d.log_line(false).contains("not mounted"),
            "{}",
            d.log_line(false)
        );
        let root = Account::new("root", 0, &[]).unwrap();
        let d = run(
            &root,
            FakeShare::new(Share::NotMounted),
            &no_copy(),
            OnError::Deny,
        );
        assert!(matches!(d.login, Login::Allow(_)));
    }

    #[test]
    fn without_a_usable_copy_the_reader_goes_on_to_the_share_unasked() {
        let broken = FakeCopy(Err("unexpected end of JSON".into()));
        for copy in [no_copy(), broken] {
            let share = FakeShare::new(Share::Ok(Some(state())));
            let local: Arc<dyn LocalCopyReader> = Arc::new(copy);
            let mut reader = Reader::start();
            reader.deadline = reader.started + Duration::from_secs(5);
            reader.order_copy(&local, Some((Arc::clone(&share) as _, Some(node3()))));
            assert!(!usable(&reader.copy(&local)));
            // Nobody has asked for the share, yet cluster.json and the
            // node's state are read...
            let until = Instant::now() + Duration::from_secs(5);
            while share.reads.load(Ordering::SeqCst) < 2 && Instant::now() < until {
                std::thread::yield_now();
            }
            assert_eq!(share.reads.load(Ordering::SeqCst), 2);
            // ... and handed over when asked, without being read again.
            let order = Order::Policy(Arc::clone(&share) as _, Some(node3()));
            assert_eq!(reader.head(order, &mut None), Ok(Some(policy())));
            assert_eq!(reader.node(node3()), Ok(Some(state())));
            assert_eq!(share.reads.load(Ordering::SeqCst), 2);
        }
        // Root (by name, before the lookup) never hands the share to the
        // thread: once decided, the test holds the only reference.
        let c = config(OnError::Deny);
        let p = GateParams {
            config: &c,
            user: Who::Name("root"),
            node: None,
            now: ts(NOW),
            timeout: Duration::from_secs(5),
        };
        let share = FakeShare::new(Share::Ok(Some(state())));
        let d = check_with(&p, Arc::clone(&share) as _, Arc::new(no_copy()));
        assert!(matches!(d.login, Login::Allow(_)), "{d:?}");
        assert_eq!(Arc::strong_count(&share), 1);
        assert_eq!(share.reads.load(Ordering::SeqCst), 0);
    }

    /// Runs the decision for `user` with `share` and `copy` on `reader`,
    /// then hands it a job; whether the job ran on the reader thread, and
    /// whether it had run once the returned `Done` (if any) said so.
    fn last_job(
        user: Who<'_>,
        share: Arc<FakeShare>,
        copy: FakeCopy,
        timeout: Duration,
    ) -> (bool, bool) {
        let c = config(OnError::Deny);
        let p = GateParams {
            config: &c,
            user,
            node: None,
            now: ts(NOW),
            timeout,
        };
        let mut reader = Reader::start();
        let _ = decide_with(&p, &mut reader, share, Arc::new(copy), &mut || {});
        let on_thread = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&on_thread);
        let done = reader.run_after(Box::new(move || {
            let name = std::thread::current().name().map(str::to_string);
            *seen.lock().unwrap() = Some(name.as_deref() == Some("kloigos-read"));
        }));
        drop(reader);
        let waited = done.is_none_or(|d| d.wait(Duration::from_secs(5)));
        let ran = *on_thread.lock().unwrap();
        (ran == Some(true), waited && ran.is_some())
    }

    #[test]
    fn the_reader_thread_runs_a_last_job_only_when_its_reads_are_done() {
        let fresh = copy_at("2026-11-23T10:55:00Z", Some(state()));
        let five = Duration::from_secs(5);
        // Reads done (share read, or a privileged user decided by the
        // copy): the thread runs it, and Done says when it has.
        let share = FakeShare::new(Share::Ok(Some(state())));
        assert_eq!(
            last_job(Who::Account(&alice()), share, fresh.clone(), five),
            (true, true)
        );
        let ops = Account::new("ops", 1100, &["ops"]).unwrap();
        let share = FakeShare::new(Share::Ok(Some(state())));
        assert_eq!(
            last_job(Who::Account(&ops), share, fresh.clone(), five),
            (true, true)
        );
        let share = FakeShare::new(Share::NotMounted);
        assert_eq!(
            last_job(Who::Account(&bob()), share, no_copy(), five),
            (true, true)
        );
        // The thread still reads (its answer came too late, or was never
        // waited for): the job runs here, at once.
        let share = FakeShare::new(Share::Hang);
        let guard = share.hang.lock().unwrap();
        let hung = Arc::clone(&share);
        let short = Duration::from_millis(50);
        assert_eq!(
            last_job(Who::Account(&alice()), hung, fresh, short),
            (false, true)
        );
        let unknown = Who::Name("no-such-kloigos-user");
        let hung = Arc::clone(&share);
        assert_eq!(last_job(unknown, hung, no_copy(), five), (false, true));
        drop(guard);
    }

    #[test]
    fn not_a_node_is_ignored_with_a_warning_but_not_mounted_is_an_error() {
        let d = run(
            &bob(),
            FakeShare::new(Share::Ok(None)),
            &no_copy(),
            OnError::Deny,
        );
        assert!(
            matches!(&d.login, Login::Ignore(r) if r.contains("not a node")),
            "{d:?}"
        );
        assert!(d.warn);
        let d = run(
            &bob(),
            FakeShare::new(Share::NotMounted),
            &no_copy(),
            OnError::Deny,
        );
        assert_eq!(d.source, Source::OnError);
        assert!(matches!(d.login, Login::Deny(_)));
        let d = run(
            &bob(),
            FakeShare::new(Share::NotMounted),
            &no_copy(),
            OnError::Allow,
        );
        assert!(matches!(d.login, Login::Allow(_)));
    }

    #[test]
    fn broken_share_falls_back_to_a_fresh_copy_only() {
        let fresh = copy_at("2026-11-23T10:55:00Z", Some(state()));
        let stale = copy_at("2026-11-23T10:00:00Z", Some(state()));
        let d = run(
            &alice(),
            FakeShare::new(Share::Corrupt),
            &fresh,
            OnError::Deny,
        );
        assert_eq!(d.source, Source::LocalCopy);
        assert!(matches!(d.login, Login::Allow(_)));
        assert!(d.log_line(false).contains("is not valid JSON"));
        let d = run(
            &bob(),
            FakeShare::new(Share::Corrupt),
            &fresh,
            OnError::Allow,
        );
        assert_eq!(d.source, Source::LocalCopy);
        assert!(
            matches!(d.login, Login::Deny(_)),
            "the copy decides, not on_error"
        );
        let d = run(
            &alice(),
            FakeShare::new(Share::Corrupt),
            &stale,
            OnError::Deny,
        );
        assert_eq!(d.source, Source::OnError);
        assert!(matches!(d.login, Login::Deny(_)));
        assert!(d.log_line(false).contains("older than cache_max_age_s=600"));
        let d = run(
            &alice(),
            FakeShare::new(Share::Corrupt),
            &stale,
            OnError::Allow,
        );
        assert!(matches!(d.login, Login::Allow(_)));
        // A copy of another node is not used.
        let mut other = state();
        other.node.name = NodeName::new("node4").unwrap();
        let wrong = copy_at("2026-11-23T10:55:00Z", Some(other));
        let d = run(
            &alice(),
            FakeShare::new(Share::Corrupt),
            &wrong,
            OnError::Deny,
        );
        assert_eq!(d.source, Source::OnError);
        // An untrusted copy is reported and ignored.
        let bad = FakeCopy(Err("mode 666 lets others write it".into()));
        let d = run(
            &alice(),
            FakeShare::new(Share::Corrupt),
            &bad,
            OnError::Deny,
        );
        assert_eq!(d.source, Source::OnError);
        assert!(
            d.log_line(false).contains("local copy unusable: "),
            "{}",
            d.log_line(false)
        );
    }

    #[test]
    fn a_hung_share_is_cut_off_at_the_deadline() {
        let share = FakeShare::new(Share::Hang);
        let guard = share.hang.lock().unwrap();
        let fresh = copy_at("2026-11-23T10:55:00Z", Some(state()));
        let t = Instant::now();
        let d = run_at(
            &alice(),
            Arc::clone(&share),
            &fresh,
            OnError::Deny,
            NOW,
            Duration::from_millis(150),
        );
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
        assert_eq!(d.source, Source::LocalCopy);
        assert!(matches!(d.login, Login::Allow(_)));
        assert!(
            d.log_line(false).contains("no answer within 1"),
            "{}",
            d.log_line(false)
        );
        // No copy: the deadline covers both reads together.
        let t = Instant::now();
        let d = run_at(
            &bob(),
            Arc::clone(&share),
            &no_copy(),
            OnError::Deny,
            NOW,
            Duration::from_millis(150),
        );
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(d.source, Source::OnError);
        drop(guard);
    }

    #[test]
    fn a_slow_share_within_the_deadline_still_answers() {
        let share = FakeShare::new(Share::Slow(Duration::from_millis(30), Some(state())));
        let d = run(&alice(), share, &no_copy(), OnError::Deny);
        assert_eq!(d.source, Source::Shared);
        assert!(matches!(d.login, Login::Allow(_)));
    }

    #[test]
    fn a_panicking_reader_is_an_error_not_a_crash() {
        let d = run(
            &bob(),
            FakeShare::new(Share::Panic),
            &no_copy(),
            OnError::Deny,
        );
        assert_eq!(d.source, Source::OnError);
        assert!(d.log_line(false).contains("died"), "{}", d.log_line(false));
    }

    #[test]
    fn unknown_user_and_missing_config() {
        let d = unknown_user("ghost");
        assert!(matches!(d.login, Login::Ignore(_)));
        assert_eq!(
            d.log_line(false),
            "user=ghost result=ignore source=policy reason=\"no account named 'ghost': not managed\""
        );
        let e = Error::Storage {
            path: "/etc/kloigos/config.json".into(),
            msg: "No such file or directory (os error 2)".into(),
        };
        assert!(matches!(
            without_config(&bob(), OnError::Deny, &e).login,
            Login::Deny(_)
        ));
        assert!(matches!(
            without_config(&bob(), OnError::Allow, &e).login,
            Login::Allow(_)
        ));
        let d = lookup_failed("bob", OnError::Deny, &e);
        assert!(matches!(d.login, Login::Deny(_)) && d.warn);
        assert!(matches!(
            lookup_failed("bob", OnError::Allow, &e).login,
            Login::Allow(_)
        ));
        let root = Account::new("root", 0, &[]).unwrap();
        let d = without_config(&root, OnError::Deny, &e);
        assert!(matches!(d.login, Login::Allow(_)));
        assert!(d.log_line(false).contains("config.json"));
    }

    #[test]
    fn log_lines_stay_on_one_line() {
        let mut d = unknown_user("x");
        d.problems.push("a\nb\rc".into());
        assert!(!d.log_line(true).contains(['\n', '\r']));
    }

    #[test]
    fn lazy_trust_believes_root_and_the_service_account_only() {
        // Needs root (to give files away) and an account to stand in for
        // the service account.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let Some(svc) = users::by_name("nobody").unwrap() else {
            return;
        };
        let t = tempfile::tempdir().unwrap();
        let root_store = Store::new(t.path().join("shared"), Trust::service(0));
        root_store.init(&policy()).unwrap();
        let give = |path: &Path, uid: u32| {
            nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
        };
        let cluster = root_store.cluster_path();
        // Root-owned: believed, and no account is looked up.
        let trust = LazyTrust::new("no-such-kloigos-account");
        let r = LazyStoreReader {
            root: root_store.root().to_path_buf(),
            trust: Arc::clone(&trust),
        };
        assert_eq!(r.policy().unwrap(), policy());
        assert!(trust.full.get().is_none(), "no lookup for root's files");
        // Owned by the service account: believed after one lookup.
        give(root_store.root(), svc.uid);
        give(&cluster, svc.uid);
        let trust = LazyTrust::new("nobody");
        let r = LazyStoreReader {
            root: root_store.root().to_path_buf(),
            trust: Arc::clone(&trust),
        };
        assert_eq!(r.policy().unwrap(), policy());
        assert_eq!(
            trust.full.get().map(|(t, _)| t),
            Some(&Trust::service(svc.uid))
        );
        // ... but not when the service account is another one, or missing.
        for name in ["root", "no-such-kloigos-account"] {
            let trust = LazyTrust::new(name);
            let r = LazyStoreReader {
                root: root_store.root().to_path_buf(),
                trust: Arc::clone(&trust),
            };
            let e = r.policy().unwrap_err().to_string();
            assert!(e.contains("not by a trusted owner"), "{name}: {e}");
        }
        let note = LazyTrust::new("no-such-kloigos-account");
        let _ = note.read(|t| read_trusted(&cluster, t));
        assert!(note
            .note()
            .is_some_and(|n| n.contains("does not exist here")));
        // The local copy likewise; other refusals are not retried.
        let copy_path = t.path().join("copy.json");
        let c = LocalCopy::new(ts(NOW), policy(), Some(state()));
        std::fs::write(&copy_path, crate::store::to_json(&c)).unwrap();
        give(&copy_path, svc.uid);
        let local = LazyLocalCopy {
            path: copy_path.clone(),
            trust: LazyTrust::new("nobody"),
        };
        assert_eq!(read_back(local.local_copy().unwrap()), Some(c));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = local.local_copy().unwrap_err().to_string();
        assert!(e.contains("lets others write it"), "{e}");
        let missing = LazyLocalCopy {
            path: t.path().join("absent.json"),
            trust: LazyTrust::new("nobody"),
        };
        assert_eq!(missing.local_copy().unwrap(), None);
        assert!(missing.trust.full.get().is_none());
    }

    #[test]
    fn a_fresh_copy_gives_the_policy_and_cluster_json_is_only_checked() {
        let t = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let store = Store::new(t.path().join("shared"), Trust::service(me));
        store.init(&policy()).unwrap();
        let by = UserName::new("root").unwrap();
        let mut st = state();
        st.bookings.clear();
        store.add_node(&st, &by, ts(NOW)).unwrap();
        let c = config(OnError::Deny);
        let go = |copy: &FakeCopy| {
            let p = GateParams {
                config: &c,
                user: Who::Account(&bob()),
                node: None,
                now: ts(NOW),
                timeout: Duration::from_secs(5),
            };
            check_with(
                &p,
                Arc::new(StoreReader::new(store.clone())),
                Arc::new(copy.clone()),
            )
        };
        // An unparsable cluster.json: with a fresh copy the share's state
        // still decides (bob has no booking); with a stale one, it is an error.
        std::fs::write(store.cluster_path(), b"{").unwrap();
        let fresh = copy_at("2026-11-23T10:55:00Z", Some(state()));
        let d = go(&fresh);
        assert_eq!(d.source, Source::Shared, "{d:?}");
        assert!(matches!(d.login, Login::Deny(_)), "{d:?}");
        let stale = copy_at("2026-11-23T10:00:00Z", Some(state()));
        let d = go(&stale);
        assert_eq!(d.source, Source::OnError, "{d:?}");
        assert!(d.log_line(false).contains("cluster.json"), "{d:?}");
        // No cluster.json: not mounted, whatever the copy; the fresh copy decides.
        std::fs::remove_file(store.cluster_path()).unwrap();
        let d = go(&fresh);
        assert_eq!(d.source, Source::LocalCopy, "{d:?}");
        assert!(d.log_line(false).contains("not mounted"), "{d:?}");
        // Not a node stays "not a node" with a fresh copy.
        std::fs::write(store.cluster_path(), crate::store::to_json(&policy())).unwrap();
        std::fs::rename(store.node_dir(&node3()), t.path().join("gone")).unwrap();
        let d = go(&fresh);
        assert!(
            matches!(&d.login, Login::Ignore(r) if r.contains("not a node")),
            "{d:?}"
        );
    }

    #[test]
    fn real_files_on_disk() {
        // The real readers against a temp tree: missing copy, trusted copy, not a node.
        let t = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let trust = Trust::service(me);
        let store = Store::new(t.path().join("shared"), trust.clone());
        let r = StoreReader::new(store.clone());
        assert!(r.policy().unwrap_err().to_string().contains("not mounted"));
        store.init(&policy()).unwrap();
        assert_eq!(r.node(&node3()).unwrap(), None);
        // A zone this host does not know: the CLI refuses the policy, the
        // gate (which needs no zone) still reads it.
        let cluster = store.cluster_path();
        let text = std::fs::read_to_string(&cluster).unwrap();
        let text = text.replace("\"UTC\"", "\"Mars/Olympus_Mons\"");
        std::fs::write(&cluster, &text).unwrap();
        assert!(store
            .policy()
            .unwrap_err()
            .to_string()
            .contains("Mars/Olympus_Mons"));
        assert_eq!(r.policy().unwrap().timezone, "Mars/Olympus_Mons");
        let copy_path = t.path().join("copy.json");
        let lc = LocalCopyFile::new(&copy_path, trust.clone());
        assert_eq!(lc.local_copy().unwrap(), None);
        let c = LocalCopy::new(ts(NOW), policy(), Some(state()));
        std::fs::write(&copy_path, crate::store::to_json(&c)).unwrap();
        assert_eq!(read_back(lc.local_copy().unwrap()), Some(c));
        std::fs::write(&copy_path, b"{").unwrap();
        assert!(lc.local_copy().is_err());
    }

    /// The copy as the housekeeper wrote it, from what the gate read.
    fn read_back(read: Option<LoginCopy>) -> Option<LocalCopy> {
        read.map(|c| {
            let state = c.state().unwrap();
            LocalCopy::new(c.copied_at, c.policy, state).with_service_uid(c.service_uid)
        })
    }

    #[test]
    fn a_copy_whose_state_is_broken_serves_its_policy_but_not_the_fallback() {
        // The state part is parsed only for the fallback: the policy still
        // decides an admin, the fallback is on_error, naming the file.
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("copy.json");
        let c = LocalCopy::new(ts("2026-11-23T10:59:00Z"), policy(), Some(state()));
        let text = String::from_utf8(crate::store::to_json(&c)).unwrap();
        std::fs::write(&path, text.replace("\"node3\"", "\"no such/node\"")).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let local = Arc::new(LocalCopyFile::new(&path, Trust::service(me)));
        let ops = Account::new("ops", 1100, &["ops"]).unwrap();
        let c = config(OnError::Deny);
        let run = |user: &Account, share| {
            let p = GateParams {
                config: &c,
                user: Who::Account(user),
                node: None,
                now: ts(NOW),
                timeout: Duration::from_secs(5),
            };
            check_with(&p, share, Arc::clone(&local) as _)
        };
        let d = run(&ops, FakeShare::new(Share::NotMounted));
        assert!(matches!(d.login, Login::Allow(_)), "{d:?}");
        assert_eq!(d.source, Source::Policy);
        let d = run(&alice(), FakeShare::new(Share::NotMounted));
        assert!(matches!(d.login, Login::Deny(_)), "{d:?}");
        assert_eq!(d.source, Source::OnError);
        let line = d.log_line(false);
        assert!(line.contains("local copy unusable"), "{line}");
        assert!(line.contains(&*path.to_string_lossy()), "{line}");
        // With the share up, the broken part never matters.
        let d = run(&alice(), FakeShare::new(Share::Ok(Some(state()))));
        assert!(matches!(d.login, Login::Allow(_)), "{d:?}");
        assert_eq!(d.source, Source::Shared);
    }
}
