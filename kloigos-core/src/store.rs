//! The shared store: `cluster.json` and `nodes/<node>/{state.json, lock,
//! journal.jsonl, facts.json}` on a directory every node mounts.
//!
//! Writers check that no file size limit can cut a write short, lock the
//! node (flock, mapped to NFS byte-range locks by Linux NFS clients), read,
//! validate, append the change's events to the journal and fsync it, then
//! write a tmp file, fsync, rename over `state.json`, fsync the directory,
//! read it back through a fresh open (see [`crate::commit`]), unlock. A
//! share whose mount keeps locks on the client is refused before the lock
//! (see [`crate::mount`]). The journal goes first so that a booking never exists without
//! its event: a writer that dies between the two leaves an event for a
//! change that did not happen (history shows it; the state is right), never
//! the reverse; a state write that fails cuts the journal back to where it
//! was. Readers take no lock: a rename shows them the old or the new file,
//! never half.
//!
//! Every file is read whole, and none larger than [`MAX_FILE`]; every file
//! is opened, written, renamed and locked through a [`TrustedDir`] on its
//! directory (see [`crate::trusted`]), below a root that may be a link.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Untrust};
use crate::facts::Facts;
use crate::ids::Uid;
use crate::journal::{self, Event};
use crate::names::NodeName;
use crate::policy::{check_version, Policy, FORMAT_VERSION};
use crate::state::NodeState;
use crate::trusted::{self, Kind, TrustedDir};

/// File name of the cluster policy.
pub const CLUSTER_FILE: &str = "cluster.json";
/// File name of a node's state.
pub const STATE_FILE: &str = "state.json";
/// File name of a node's lock.
pub const LOCK_FILE: &str = "lock";
/// File name of a node's journal.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// File name of a node's facts.
pub const FACTS_FILE: &str = "facts.json";
/// Largest file kloigos reads (state, policy, journal, facts, the local
/// copy): a bigger one is refused, naming the file, rather than parsed at
/// every login.
pub const MAX_FILE: u64 = 16 << 20;
/// How long an interactive writer waits for a node lock by default.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Whose files a reader believes: owners allowed, and never group- or
/// world-writable files (like sshd's StrictModes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    owners: Vec<Uid>,
}

impl Trust {
    /// Files owned by root only: a node's own configuration, the
    /// housekeeper's record and hooks.
    pub fn root_only() -> Trust {
        Trust {
            owners: vec![Uid::ROOT],
        }
    }

    /// Files owned by root or the service account `service` (PAM, the
    /// housekeeper, the setuid CLI reading the shared tree).
    pub fn root_and(service: Uid) -> Trust {
        Trust::root_only().also(service)
    }

    /// Also trust files owned by `uid` (a user running on their own tree).
    pub fn also(mut self, uid: Uid) -> Trust {
        if !self.owners.contains(&uid) {
            self.owners.push(uid);
        }
        self
    }

    /// Checks owner and mode of an opened file or directory.
    pub fn check(&self, path: &Path, meta: &fs::Metadata) -> Result<()> {
        self.check_ids(path, meta.uid(), meta.mode())
    }

    /// [`Trust::check`] with the owner and mode in hand (an `fstatat`'s).
    pub fn check_ids(&self, path: &Path, uid: u32, mode: u32) -> Result<()> {
        let why = if !self.owners.iter().any(|o| o.as_raw() == uid) {
            Untrust::Owner {
                uid,
                trusted: self.owners.clone(),
            }
        } else if mode & 0o022 != 0 {
            Untrust::Mode {
                mode: mode & 0o7777,
            }
        } else {
            return Ok(());
        };
        Err(Error::Untrusted {
            path: path.into(),
            why,
        })
    }
}

/// Reads a whole file that must be a regular file with a trusted owner and
/// mode, whose directory is trusted too: through a [`TrustedDir`] of its
/// directory. Never follows a symlink and never blocks on a FIFO.
pub fn read_trusted(path: &Path, trust: &Trust) -> Result<Vec<u8>> {
    let (dir, name) = split(path)?;
    TrustedDir::open(dir, trust)?.read(name)
}

/// [`read_trusted`], but `Ok(None)` when the file or its directory does
/// not exist (an optional file: no error is built for its absence).
pub fn read_trusted_if_any(path: &Path, trust: &Trust) -> Result<Option<Vec<u8>>> {
    let (dir, name) = split(path)?;
    match TrustedDir::open_if_any(dir, trust)? {
        Some(dir) => dir.read_if_any(name),
        None => Ok(None),
    }
}

/// A file's path as its directory (`.` for a bare name) and its name.
fn split(path: &Path) -> Result<(&Path, &str)> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::invalid(
            "file path",
            &path.display().to_string(),
            "a path to a file whose name is UTF-8",
        )
    })?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

/// The version of a kloigos JSON file when it opens, as `to_json` writes
/// it, with `{"version": <digits>` (whitespace allowed around the tokens);
/// `None` for any other start (the caller then takes the slow path).
///
/// Only a hint: [`parse_json`] believes it only after the typed parse of
/// the whole file succeeded, which proves the file valid JSON with exactly
/// one top-level `"version"` (our types all have the field, and a
/// duplicate field fails the typed parse), so this number is that field.
fn leading_version(bytes: &[u8]) -> Option<u32> {
    fn ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }
    let mut i = ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(bytes, i + 1);
    let key = b"\"version\"";
    if !bytes.get(i..)?.starts_with(key) {
        return None;
    }
    i = ws(bytes, i + key.len());
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i = ws(bytes, i + 1);
    let start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let digits = &bytes[start..i];
    // JSON numbers have no leading zeros; anything else is the slow path's.
    if digits.is_empty() || digits.len() > 10 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let i = ws(bytes, i);
    if !matches!(bytes.get(i), Some(b',' | b'}')) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Parses a kloigos JSON file, naming the file on failure.
///
/// A newer file gets the upgrade message, not a field error, and a file
/// without `"version"` says so. A good file (its known version first, as
/// kloigos writes it) is parsed once; any other is probed for its version
/// first, as before, to name what is wrong with it. `T` is one of the
/// versioned kloigos types (a `version` field), as the fast path assumes.
pub fn parse_json<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    if leading_version(bytes).is_some_and(|v| check_version(v).is_ok()) {
        if let Ok(t) = serde_json::from_slice(bytes) {
            return Ok(t);
        }
    }
    parse_json_probed(path, bytes)
}

/// [`parse_json`]'s slow path: the version probe, then the typed parse.
fn parse_json_probed<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    // Check the version first so a newer file gets the upgrade message, not a field error.
    #[derive(Deserialize)]
    struct Versioned {
        version: Option<u32>,
    }
    match serde_json::from_slice::<Versioned>(bytes) {
        Ok(Versioned { version: Some(v) }) => check_version(v).map_err(|msg| Error::Corrupt {
            path: path.into(),
            msg,
        })?,
        Ok(Versioned { version: None }) => {
            return Err(Error::Corrupt {
                path: path.into(),
                msg: "has no \"version\" field; it was not written by kloigos".into(),
            })
        }
        Err(e) => {
            return Err(Error::Corrupt {
                path: path.into(),
                msg: format!("is not valid JSON ({e})"),
            })
        }
    }
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        path: path.into(),
        msg: format!("does not match the format ({e})"),
    })
}

/// Parses a JSON file that carries no version (the node-local config).
pub fn parse_json_unversioned<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        path: path.into(),
        msg: format!("is not a valid kloigos configuration ({e})"),
    })
}

/// Whether an error is one a lock-free reader should retry: the file was
/// being replaced (ENOENT, ESTALE) or read half-written over NFS.
fn transient(e: &Error) -> bool {
    match e {
        Error::Corrupt { .. } => true,
        Error::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(nix::libc::ENOENT | nix::libc::ESTALE)
        ),
        _ => false,
    }
}

/// Reads and parses a trusted JSON file, retrying transient failures a few times.
pub fn read_json<T: DeserializeOwned>(path: &Path, trust: &Trust) -> Result<T> {
    retrying(|| read_trusted(path, trust).and_then(|b| parse_json(path, &b)))
}

/// [`read_json`] of the file `name` in `dir`, through that handle.
pub fn read_json_at<T: DeserializeOwned>(dir: &TrustedDir, name: &str) -> Result<T> {
    let path = dir.join(name);
    retrying(|| dir.read(name).and_then(|b| parse_json(&path, &b)))
}

/// Runs `attempt`, and again (three times at most) while it fails in a way
/// a lock-free reader should retry (see [`transient`]).
fn retrying<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match attempt() {
            Err(e) if tries < 3 && transient(&e) => {
                tries += 1;
                // Back off briefly: the writer's rename or NFS's attribute cache settles.
                std::thread::sleep(Duration::from_millis(15 * tries));
            }
            other => return other,
        }
    }
}

/// Replaces `dir/name` with `bytes` atomically: exclusive tmp file, fsync,
/// rename, fsync of the directory; the file ends up mode 0644. `dir` is
/// taken as named (a link is followed) and not checked: this is for files
/// kloigos writes but never trusts (the dashboard's, metrics, drop-ins).
/// Files it trusts are written with [`TrustedDir::write_atomic`].
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let fd = trusted::open_untrusted_dir(dir)?;
    trusted::write_atomic_in(fd.as_fd(), dir, name, bytes)
}

/// Serializes a value as pretty JSON with a final newline.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our types serialize infallibly (no maps with non-string keys).
    let mut v = serde_json::to_vec_pretty(value).expect("kloigos types serialize");
    v.push(b'\n');
    v
}

/// What a lock guards, as a busy error names it: a node, the cluster
/// policy, or one of a host's own locks. Not a [`NodeName`], so that the
/// cluster's lock can never be mistaken for a node called "cluster".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockLabel {
    /// A node's lock.
    Node(NodeName),
    /// The cluster policy's lock.
    Cluster,
    /// A lock of this host's own (the housekeeper's pass lock).
    Local(&'static str),
}

impl std::fmt::Display for LockLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockLabel::Node(n) => write!(f, "{n}"),
            LockLabel::Cluster => f.write_str("the cluster policy"),
            LockLabel::Local(what) => f.write_str(what),
        }
    }
}

/// An exclusive lock on a node; released when dropped (closing the file
/// releases the flock). It keeps the handle of the directory it locks, so
/// the holder writes through the directory it checked.
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
    dir: TrustedDir,
}

impl NodeLock {
    /// Takes the lock file `name` in `dir`, waiting at most `wait` (see
    /// [`crate::lockwait`]).
    ///
    /// The lock file is mode 0600 (see [`TrustedDir::open_lock`]).
    pub fn acquire(
        dir: TrustedDir,
        name: &str,
        label: &LockLabel,
        wait: Duration,
    ) -> Result<NodeLock> {
        // Before the lock: a writer that cannot finish its writes must not start them.
        lift_fsize_limit()?;
        let file = dir.open_lock(name)?;
        match crate::lockwait::lock_within(file, wait) {
            Ok(Some(file)) => Ok(NodeLock { _file: file, dir }),
            Ok(None) => Err(Error::Busy {
                lock: label.to_string(),
            }),
            Err(e) => Err(crate::lockwait::lock_error(&dir.join(name), &e)),
        }
    }

    /// The directory this lock is in (a node's, or the tree's root).
    pub fn dir(&self) -> &TrustedDir {
        &self.dir
    }
}

/// A handle on one shared tree.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    trust: Trust,
    /// How long writers wait for a node lock.
    pub lock_wait: Duration,
}

impl Store {
    /// A store rooted at `root`, believing files owned as `trust` says.
    pub fn new(root: impl Into<PathBuf>, trust: Trust) -> Store {
        Store {
            root: root.into(),
            trust,
            lock_wait: LOCK_WAIT,
        }
    }

    /// The shared directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Who this store trusts.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Path of `cluster.json`.
    pub fn cluster_path(&self) -> PathBuf {
        self.root.join(CLUSTER_FILE)
    }

    /// Directory of the nodes.
    pub fn nodes_dir(&self) -> PathBuf {
        self.root.join("nodes")
    }

    /// Directory of one node (the name is validated by its type).
    pub fn node_dir(&self, node: &NodeName) -> PathBuf {
        self.nodes_dir().join(node.as_str())
    }

    /// Path of a node's `state.json`.
    pub fn state_path(&self, node: &NodeName) -> PathBuf {
        self.node_dir(node).join(STATE_FILE)
    }

    /// The shared directory, opened and checked: a link there is followed
    /// (a site's mount point may be one), nothing below it is.
    pub fn open_root(&self) -> Result<TrustedDir> {
        TrustedDir::open_root(&self.root, &self.trust)
    }

    /// `nodes/`, opened and checked.
    pub fn open_nodes(&self) -> Result<TrustedDir> {
        self.open_root()?.dir(NODES_DIR)
    }

    /// A node's directory, opened and checked; `Ok(None)` only for ENOENT
    /// of `nodes/<node>` (see [`Store::node_if_any`]).
    pub fn open_node_if_any(&self, node: &NodeName) -> Result<Option<TrustedDir>> {
        self.open_nodes()?.dir_if_any(node.as_str())
    }

    /// Creates a new cluster: the root (if missing), `nodes/`, `cluster.json`.
    pub fn init(&self, policy: &Policy) -> Result<()> {
        // Any entry there, even a link, is a cluster not to overwrite.
        let cluster = self.cluster_path();
        match fs::symlink_metadata(&cluster) {
            Ok(_) => {
                return Err(Error::Refused(format!(
                    "{} already exists; this directory already holds a cluster (see `kloigos admin policy`)",
                    cluster.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&cluster, &e)),
        }
        let writing = crate::deadline::GLOBAL.writing();
        let root = TrustedDir::make_root(&self.root, 0o755, &self.trust)?;
        root.make_dir(NODES_DIR, 0o755)?;
        root.write_atomic(CLUSTER_FILE, &to_json(policy))?;
        writing.confirm();
        Ok(())
    }

    /// Reads and validates the cluster policy. A missing file means the
    /// share is not mounted (or not initialised) and is an error.
    pub fn policy(&self) -> Result<Policy> {
        let p = self.login_policy()?;
        p.validate().map_err(|msg| Error::Corrupt {
            path: self.cluster_path(),
            msg,
        })?;
        Ok(p)
    }

    /// The cluster policy as the login gate reads it: parsed and its
    /// version checked, as [`Store::policy`], but its time zone and limits
    /// not checked. A login decision uses neither, so a zone this host's
    /// tzdata lacks does not lock the node's users out; and looking a zone
    /// up first lists the whole zone database, about a millisecond in every
    /// new sshd process.
    pub fn login_policy(&self) -> Result<Policy> {
        let path = self.cluster_path();
        retrying(|| {
            let bytes = self.open_root()?.read(CLUSTER_FILE)?;
            parse_json(&path, &bytes)
        })
        .map_err(|e| match e {
            // The share's root or its cluster.json is not there.
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Error::NotMounted { path }
            }
            e => e,
        })
    }

    /// Rewrites the cluster policy under the cluster lock.
    pub fn update_policy(&self, f: impl FnOnce(&mut Policy) -> Result<()>) -> Result<Policy> {
        crate::mount::check_shared_locking(&self.root)?;
        let lock = NodeLock::acquire(
            self.open_root()?,
            "cluster.lock",
            &LockLabel::Cluster,
            self.lock_wait,
        )?;
        let mut p = self.policy()?;
        f(&mut p)?;
        p.validate().map_err(Error::Refused)?;
        let writing = crate::deadline::GLOBAL.writing();
        lock.dir().write_atomic(CLUSTER_FILE, &to_json(&p))?;
        writing.confirm();
        Ok(p)
    }

    /// Names of all nodes, sorted. Entries that are not valid node names,
    /// or neither a directory nor a link, are skipped (`fsck` reports
    /// them). A link with a node's name is listed: reading it then fails,
    /// naming it, rather than the node silently missing.
    pub fn node_names(&self) -> Result<Vec<NodeName>> {
        let mut names: Vec<NodeName> = self
            .open_nodes()?
            .entries()?
            .into_iter()
            .filter(|(_, kind)| matches!(kind, Kind::Dir | Kind::Symlink))
            .filter_map(|(name, _)| name.to_str().and_then(|s| NodeName::new(s).ok()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether `node` exists in this cluster: a directory in a trusted
    /// `nodes/`, or a link there (which every read and write then refuses,
    /// naming it).
    pub fn has_node(&self, node: &NodeName) -> bool {
        self.open_nodes()
            .and_then(|nodes| nodes.stat(node.as_str()))
            .is_ok_and(|st| st.is_some_and(|st| matches!(st.kind, Kind::Dir | Kind::Symlink)))
    }

    /// Reads a node's state lock-free.
    pub fn node(&self, node: &NodeName) -> Result<NodeState> {
        self.node_if_any(node)?
            .ok_or_else(|| self.no_such_node(node))
    }

    /// Reads a node's state lock-free; `Ok(None)` when there is no such
    /// node. Only ENOENT for `nodes/<node>`, in a tree whose root and
    /// `nodes/` are trusted directories, means "no such node": any other
    /// failure (`nodes` not a directory, `nodes/<node>` a file or a link,
    /// EACCES, EIO, ELOOP, ENOTDIR) is an error, so that a login gate or
    /// a housekeeper never takes a broken tree for "not a node".
    pub fn node_if_any(&self, node: &NodeName) -> Result<Option<NodeState>> {
        self.node_in(&self.open_nodes()?, node)
    }

    /// [`Store::node`] through `nodes`, a handle from [`Store::open_nodes`]:
    /// a reader of many nodes opens the root and `nodes/` once (over NFS,
    /// each open is a round trip to the server).
    pub fn node_at(&self, nodes: &TrustedDir, node: &NodeName) -> Result<NodeState> {
        self.node_in(nodes, node)?
            .ok_or_else(|| self.no_such_node(node))
    }

    fn node_in(&self, nodes: &TrustedDir, node: &NodeName) -> Result<Option<NodeState>> {
        let path = self.state_path(node);
        retrying(|| match nodes.dir_if_any(node.as_str())? {
            Some(dir) => {
                let bytes = dir.read(STATE_FILE)?;
                parse_json(&path, &bytes).map(Some)
            }
            None => Ok(None),
        })?
        .map(|st| named(st, node, path))
        .transpose()
    }

    /// A node's state read through `dir`, its directory (a writer's, under
    /// the lock it holds there).
    fn state_in(&self, dir: &TrustedDir, node: &NodeName) -> Result<NodeState> {
        named(read_json_at(dir, STATE_FILE)?, node, dir.join(STATE_FILE))
    }

    fn no_such_node(&self, node: &NodeName) -> Error {
        let known = self
            .node_names()
            .map(|v| {
                v.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        Error::Refused(format!("no node '{node}' in this cluster (nodes: {known})"))
    }

    /// Reads a node's facts, if its housekeeper has written any.
    pub fn facts(&self, node: &NodeName) -> Option<Facts> {
        self.facts_at(&self.open_nodes().ok()?, node)
    }

    /// [`Store::facts`] through `nodes`, a handle from [`Store::open_nodes`].
    pub fn facts_at(&self, nodes: &TrustedDir, node: &NodeName) -> Option<Facts> {
        let dir = nodes.dir_if_any(node.as_str()).ok()??;
        // Facts are optional: a node without a housekeeper has none, which is no reason to retry.
        dir.stat(FACTS_FILE).ok()??;
        read_json_at(&dir, FACTS_FILE).ok()
    }

    /// Writes a node's facts (done by that node's housekeeper only).
    pub fn write_facts(&self, facts: &Facts) -> Result<()> {
        let dir = self
            .open_node_if_any(&facts.node)?
            .ok_or_else(|| self.no_such_node(&facts.node))?;
        dir.write_atomic(FACTS_FILE, &to_json(facts))
    }

    /// Creates a node with an empty booking list.
    pub fn add_node(
        &self,
        state: &NodeState,
        by: &crate::names::UserName,
        now: Timestamp,
    ) -> Result<()> {
        state.node.validate()?;
        let name = &state.node.name;
        let Some(dir) = self.open_nodes()?.create_dir(name.as_str(), 0o755)? else {
            return Err(Error::Refused(format!(
                "node '{name}' already exists; change it with `kloigos admin set-node {name}`"
            )));
        };
        crate::mount::check_shared_locking(&self.node_dir(name))?;
        let lock = NodeLock::acquire(
            dir,
            LOCK_FILE,
            &LockLabel::Node(name.clone()),
            self.lock_wait,
        )?;
        let _writing = crate::deadline::GLOBAL.writing();
        let ev = Event::node(
            now,
            by,
            journal::Action::AddNode,
            name,
            format!("cpus {}", state.node.cpus),
        );
        let appended = append_journal(lock.dir(), &[ev])?;
        lock.dir()
            .write_atomic(STATE_FILE, &to_json(state))
            .inspect_err(|_| {
                if let Some(a) = appended {
                    a.undo();
                }
            })
    }

    /// Moves a node's directory out of `nodes/` into `deleted/`, keeping
    /// its journal for `history`. `check` runs under the lock and may refuse.
    pub fn delete_node(
        &self,
        node: &NodeName,
        check: impl FnOnce(&NodeState) -> Result<()>,
    ) -> Result<PathBuf> {
        let lock = self.lock(node)?;
        let st = self.state_in(lock.dir(), node)?;
        check(&st)?;
        let root = self.open_root()?;
        let graveyard = match root.create_dir(DELETED_DIR, 0o755)? {
            Some(dir) => dir,
            None => root.dir(DELETED_DIR)?,
        };
        let dest = format!("{node}.{}", Timestamp::now().as_second());
        let _writing = crate::deadline::GLOBAL.writing();
        root.dir(NODES_DIR)?
            .rename(node.as_str(), &graveyard, &dest)?;
        Ok(graveyard.join(&dest))
    }

    /// Takes a node's lock, on a share whose locks are shared between
    /// nodes (see [`crate::mount`]); the lock holds the node's directory
    /// handle.
    pub fn lock(&self, node: &NodeName) -> Result<NodeLock> {
        let dir = self
            .open_node_if_any(node)?
            .ok_or_else(|| self.no_such_node(node))?;
        // A lock that would not exclude the writers of other nodes is refused.
        crate::mount::check_shared_locking(&self.node_dir(node))?;
        NodeLock::acquire(
            dir,
            LOCK_FILE,
            &LockLabel::Node(node.clone()),
            self.lock_wait,
        )
    }

    /// The writer's protocol: lock, sweep stray tmp files, read, let `f`
    /// change the state, prune, refuse a state that breaks an invariant,
    /// journal `f`'s events, write atomically, unlock. When `f` changes
    /// nothing and has no events, nothing is written. Every step goes
    /// through the node directory's handle the lock holds.
    pub fn update_node<T>(
        &self,
        node: &NodeName,
        now: Timestamp,
        f: impl FnOnce(&mut NodeState) -> Result<(T, Vec<Event>)>,
    ) -> Result<T> {
        let lock = self.lock(node)?;
        let dir = lock.dir();
        dir.sweep_tmp();
        let mut st = self.state_in(dir, node)?;
        let before = st.clone();
        let (out, events) = f(&mut st)?;
        if events.is_empty() && st == before {
            // Nothing changed: the files stay as they are (inode and mtime too).
            return Ok(out);
        }
        st.prune(now);
        let problems = st.problems();
        if !problems.is_empty() {
            return Err(Error::Corrupt {
                path: self.state_path(node),
                msg: format!(
                    "refusing to write a state that breaks its rules: {}",
                    problems.join("; ")
                ),
            });
        }
        // From here to the read-back, a command that gives up says so.
        let writing = crate::deadline::GLOBAL.writing();
        // The events first, then the state (see the module's doc).
        let appended = append_journal(dir, &events)?;
        let bytes = to_json(&st);
        if let Err(e) = dir.write_atomic(STATE_FILE, &bytes) {
            if let Some(a) = appended {
                a.undo();
            }
            return Err(e);
        }
        // By path, not through the lock's handle: a fresh lookup of the node's
        // directory and file, as another node's reader would make.
        crate::commit::check_written(&self.state_path(node), &bytes, &self.trust)?;
        writing.confirm();
        Ok(out)
    }

    /// A node's journal: events, and the numbers of lines that did not parse.
    pub fn journal(&self, node: &NodeName) -> Result<(Vec<Event>, Vec<usize>)> {
        let bytes = match self.open_node_if_any(node)? {
            Some(dir) => dir.read_if_any(JOURNAL_FILE)?,
            None => None,
        };
        Ok(parse_journal(bytes))
    }

    /// Journals of deleted nodes, for `history`. A journal that is there
    /// but cannot be trusted is listed too, so that reading it names it.
    pub fn deleted_journals(&self) -> Vec<PathBuf> {
        let Ok(Some(graveyard)) = self.open_root().and_then(|r| r.dir_if_any(DELETED_DIR)) else {
            return Vec::new();
        };
        let Ok(entries) = graveyard.entries() else {
            return Vec::new();
        };
        entries
            .into_iter()
            .filter(|(_, kind)| matches!(kind, Kind::Dir | Kind::Symlink))
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| {
                // Only a journal seen to be absent is left out.
                !matches!(
                    graveyard.dir(name).and_then(|d| d.stat(JOURNAL_FILE)),
                    Ok(None)
                )
            })
            .map(|name| graveyard.join(&name).join(JOURNAL_FILE))
            .collect()
    }

    /// Reads a journal file by path (a missing journal is empty), through
    /// a handle of its directory.
    pub fn journal_at(&self, path: &Path) -> Result<(Vec<Event>, Vec<usize>)> {
        Ok(parse_journal(read_trusted_if_any(path, &self.trust)?))
    }
}

/// The directory of the nodes in a shared tree.
const NODES_DIR: &str = "nodes";
/// Where deleted nodes' directories go.
const DELETED_DIR: &str = "deleted";

/// `st`, read from `path`, if it describes `node`.
fn named(st: NodeState, node: &NodeName, path: PathBuf) -> Result<NodeState> {
    if st.node.name != *node {
        return Err(Error::Corrupt {
            path,
            msg: format!(
                "describes node '{}' but sits in the directory of '{node}'",
                st.node.name
            ),
        });
    }
    Ok(st)
}

/// A journal's events and bad line numbers (a missing journal is empty).
fn parse_journal(bytes: Option<Vec<u8>>) -> (Vec<Event>, Vec<usize>) {
    match bytes {
        Some(bytes) => journal::parse(&String::from_utf8_lossy(&bytes)),
        None => (Vec::new(), Vec::new()),
    }
}

/// Appends events to a node's journal in `dir` and fsyncs it (callers
/// hold the node's lock). A line left torn by an older writer is closed
/// first, so the new events start on a line of their own; a write that
/// fails half way is cut back off. Returns how to undo the append.
fn append_journal(dir: &TrustedDir, events: &[Event]) -> Result<Option<Appended>> {
    if events.is_empty() {
        return Ok(None);
    }
    let path = dir.join(JOURNAL_FILE);
    let mut f = dir.open_append(JOURNAL_FILE)?;
    let len = f.metadata().map_err(|e| Error::io(&path, &e))?.len();
    let text = journal::lines(
        events,
        ends_mid_line(&f, len).map_err(|e| Error::io(&path, &e))?,
    );
    match f.write_all(&text).and_then(|()| f.sync_data()) {
        Ok(()) => Ok(Some(Appended { file: f, len })),
        Err(e) => {
            Appended { file: f, len }.undo();
            Err(Error::io(&path, &e))
        }
    }
}

/// A journal append that can be taken back: the journal and its length before.
struct Appended {
    file: File,
    len: u64,
}

impl Appended {
    /// Cuts the journal back to its length before the append (best effort:
    /// a failure leaves an event for a change that did not happen, which
    /// the module's ordering accepts).
    fn undo(self) {
        let _ = self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data());
    }
}

/// Whether the file `f`, `len` bytes long, ends inside a line (its last
/// byte is not a newline): a writer cut short left a fragment there.
fn ends_mid_line(f: &File, len: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    f.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

/// Makes sure no file size limit (RLIMIT_FSIZE) can cut a write short: a
/// write stopped half way by SIGXFSZ would tear the journal or leave a
/// booking without its event. A soft limit under an unlimited hard one is
/// raised; a finite hard limit cannot be, and is refused with the fix.
/// Called before a node's lock is taken, so nothing has been written yet.
pub fn lift_fsize_limit() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let here = || PathBuf::from("/proc/self/limits");
    let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).map_err(|e| Error::Storage {
        path: here(),
        msg: format!("cannot read RLIMIT_FSIZE: {e}"),
    })?;
    if soft == RLIM_INFINITY {
        return Ok(());
    }
    if hard != RLIM_INFINITY {
        return Err(Error::Refused(format!(
            "RLIMIT_FSIZE (the file size limit) is set to {hard} bytes; kloigos writes the shared files only without one, so that no write is cut short — run it from a shell without that limit (`ulimit -f unlimited`, or `prlimit --fsize=unlimited`)"
        )));
    }
    setrlimit(Resource::RLIMIT_FSIZE, RLIM_INFINITY, RLIM_INFINITY).map_err(|e| Error::Storage {
        path: here(),
        msg: format!("cannot lift the soft RLIMIT_FSIZE of {soft} bytes: {e}"),
    })
}

/// Checks that the share at `root` is mounted, its `cluster.json` there
/// (a link not followed), without reading it; [`Store::policy`]'s error
/// when it is not.
pub fn check_mounted(root: &Path) -> Result<()> {
    let path = root.join(CLUSTER_FILE);
    match fs::symlink_metadata(&path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotMounted { path }),
        Err(e) => Err(Error::io(&path, &e)),
    }
}

/// Whether a directory entry is one of our tmp files.
pub fn is_tmp(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.contains(".json.tmp."))
}

/// What the housekeeper keeps on local disk for PAM: the policy and this
/// node's state as last read from the share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCopy {
    /// File format version.
    pub version: u32,
    /// When the housekeeper read the share.
    pub copied_at: Timestamp,
    /// The cluster policy.
    pub policy: Policy,
    /// This node's state; `None` when this host is not a node of the cluster.
    pub state: Option<NodeState>,
    /// The service account's uid on this host when the copy was made (the
    /// housekeeper looked it up), for admins reading the copy; the login
    /// gate looks the account up itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_uid: Option<u32>,
}

impl LocalCopy {
    /// A copy made at `now`.
    pub fn new(now: Timestamp, policy: Policy, state: Option<NodeState>) -> LocalCopy {
        LocalCopy {
            version: FORMAT_VERSION,
            copied_at: now,
            policy,
            state,
            service_uid: None,
        }
    }

    /// The copy, recording the service account's uid on this host.
    pub fn with_service_uid(mut self, uid: Option<u32>) -> LocalCopy {
        self.service_uid = uid;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuset::CpuSet;
    use crate::names::UserName;
    use crate::node::NodeSpec;
    use crate::trusted::tmp_name;
    use std::fs::OpenOptions;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn store(dir: &Path) -> Store {
        let s = Store::new(
            dir.join("shared"),
            Trust::root_and(crate::testing::uid(4242)).also(crate::testing::uid(me())),
        );
        s.init(&Policy::default()).unwrap();
        s
    }

    /// A tree in a fresh temporary directory with one node, `n1`.
    fn one_node() -> (tempfile::TempDir, Store, NodeName) {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
        (t, s, n)
    }

    fn add(s: &Store, name: &str) -> NodeName {
        let n = NodeName::new(name).unwrap();
        let st = NodeState::new(NodeSpec::new(n.clone(), CpuSet::parse("0-3").unwrap()));
        s.add_node(&st, &UserName::new("root").unwrap(), Timestamp::now())
            .unwrap();
        n
    }

    #[test]
    fn init_add_read() {
        let (_t, s, n) = one_node();
        assert_eq!(s.node_names().unwrap(), vec![n.clone()]);
        assert_eq!(s.node(&n).unwrap().node.name, n);
        assert!(s
            .init(&Policy::default())
            .unwrap_err()
            .to_string()
            .contains("already"));
        let (ev, bad) = s.journal(&n).unwrap();
        assert_eq!((ev.len(), bad.len()), (1, 0));
    }

    #[test]
    fn untrusted_owner_and_mode_are_refused() {
        let (_t, s, n) = one_node();
        let path = s.state_path(&n);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).unwrap();
        let e = s.node(&n).unwrap_err().to_string();
        assert!(e.contains("chmod go-w") && e.contains("state.json"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let strict = Store::new(s.root(), Trust::root_and(crate::testing::uid(4242)));
        if me() != 0 {
            let e = strict.node(&n).unwrap_err().to_string();
            assert!(e.contains("not by a trusted owner"), "{e}");
        }
    }

    #[test]
    fn corrupt_and_newer_files_name_the_file() {
        let (_t, s, n) = one_node();
        let path = s.state_path(&n);
        fs::write(&path, b"{\"version\":1, \"seq\": ").unwrap();
        let e = s.node(&n).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }));
        assert!(
            e.to_string().contains("state.json: is not valid JSON"),
            "{e}"
        );
        fs::write(&path, b"{\"version\":2}").unwrap();
        assert!(s
            .node(&n)
            .unwrap_err()
            .to_string()
            .contains("upgrade kloigos"));
        fs::write(&path, b"{}").unwrap();
        assert!(s
            .node(&n)
            .unwrap_err()
            .to_string()
            .contains("no \"version\""));
    }

    #[test]
    fn symlinks_and_fifos_are_not_followed() {
        let (_t, s, n) = one_node();
        let path = s.state_path(&n);
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(s
            .node(&n)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(s
            .node(&n)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }

    #[test]
    fn an_optional_file_may_be_missing_but_not_untrusted() {
        let t = tempfile::tempdir().unwrap();
        let trust = Trust::root_and(crate::testing::uid(me()));
        let path = t.path().join("copy.json");
        assert_eq!(read_trusted_if_any(&path, &trust).unwrap(), None);
        let in_missing_dir = t.path().join("absent").join("copy.json");
        assert_eq!(read_trusted_if_any(&in_missing_dir, &trust).unwrap(), None);
        fs::write(&path, b"{}").unwrap();
        assert_eq!(
            read_trusted_if_any(&path, &trust).unwrap(),
            Some(b"{}".to_vec())
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let e = read_trusted_if_any(&path, &trust).unwrap_err();
        assert!(e.to_string().contains("lets others write it"), "{e}");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        let e = read_trusted_if_any(&path, &trust).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A dangling link is there too: refused, not taken for no file.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(t.path().join("nowhere"), &path).unwrap();
        assert!(read_trusted_if_any(&path, &trust).is_err());
    }

    #[test]
    fn only_enoent_means_no_such_node() {
        let (t, s, n) = one_node();
        let absent = NodeName::new("n2").unwrap();
        assert_eq!(s.node_if_any(&absent).unwrap(), None);
        let dir = s.node_dir(&n);
        let moved = t.path().join("n1-moved");
        fs::rename(&dir, &moved).unwrap();
        // nodes/<node> a regular file, a symlink loop, a link to a real
        // node directory: errors, never "no such node".
        fs::write(&dir, b"").unwrap();
        let e = s.node_if_any(&n).unwrap_err();
        assert!(
            matches!(&e, Error::Untrusted { why: Untrust::NotDirectory, path } if *path == dir),
            "{e:?}"
        );
        fs::remove_file(&dir).unwrap();
        std::os::unix::fs::symlink(&dir, &dir).unwrap();
        let e = s.node_if_any(&n).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Untrusted {
                    why: Untrust::Symlink,
                    ..
                }
            ),
            "{e:?}"
        );
        fs::remove_file(&dir).unwrap();
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        assert!(s.node_if_any(&n).is_err());
        fs::remove_file(&dir).unwrap();
        fs::rename(&moved, &dir).unwrap();
        assert!(s.node_if_any(&n).unwrap().is_some());
        // `nodes` itself a regular file: an error for every node, absent or not.
        let nodes = s.nodes_dir();
        fs::rename(&nodes, t.path().join("nodes-moved")).unwrap();
        fs::write(&nodes, b"").unwrap();
        for node in [&n, &absent] {
            let e = s.node_if_any(node).unwrap_err();
            assert!(
                matches!(&e, Error::Untrusted { why: Untrust::NotDirectory, path } if *path == nodes),
                "{e:?}"
            );
        }
        // No `nodes` at all: the tree is not whole, an error too.
        fs::remove_file(&nodes).unwrap();
        let e = s.node_if_any(&absent).unwrap_err();
        assert_eq!(e.errno(), Some(nix::libc::ENOENT), "{e:?}");
    }

    #[test]
    fn errors_keep_their_errno_and_retries_follow_it() {
        let missing = Error::io("/x", &io::Error::from_raw_os_error(nix::libc::ENOENT));
        let stale = Error::io("/x", &io::Error::from_raw_os_error(nix::libc::ESTALE));
        let eio = Error::io("/x", &io::Error::from_raw_os_error(nix::libc::EIO));
        assert_eq!(eio.errno(), Some(nix::libc::EIO));
        assert!(transient(&missing) && transient(&stale) && !transient(&eio));
        // A message that merely reads like ENOENT is not one.
        let worded = Error::Storage {
            path: "/x".into(),
            msg: io::Error::from_raw_os_error(nix::libc::ENOENT).to_string(),
        };
        assert!(!transient(&worded));
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(
            t.path().join("absent"),
            Trust::root_and(crate::testing::uid(me())),
        );
        assert!(matches!(s.login_policy(), Err(Error::NotMounted { .. })));
        assert!(matches!(
            check_mounted(s.root()),
            Err(Error::NotMounted { .. })
        ));
    }

    #[test]
    fn tmp_files_refuse_planted_links_and_are_swept() {
        let (t, s, n) = one_node();
        let dir = s.node_dir(&n);
        let planted = dir.join(tmp_name(STATE_FILE));
        std::os::unix::fs::symlink(t.path().join("victim"), &planted).unwrap();
        assert!(write_atomic(&dir, STATE_FILE, b"x").is_err());
        assert!(!t.path().join("victim").exists());
        fs::write(dir.join("state.json.tmp.other.1"), b"junk").unwrap();
        s.update_node(&n, Timestamp::now(), |_| Ok(((), vec![])))
            .unwrap();
        assert!(!dir.join("state.json.tmp.other.1").exists());
    }

    #[test]
    fn busy_lock_times_out_with_a_clear_message() {
        let (_t, mut s, n) = one_node();
        let held = s.lock(&n).unwrap();
        s.lock_wait = Duration::from_millis(50);
        let e = s
            .update_node(&n, Timestamp::now(), |_| Ok(((), vec![])))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "n1 is busy (its lock is held by another kloigos command); try again"
        );
        drop(held);
        s.update_node(&n, Timestamp::now(), |_| Ok(((), vec![])))
            .unwrap();
    }

    #[test]
    fn one_pass_parse_keeps_the_version_messages() {
        assert_eq!(leading_version(b" {\n \"version\" : 1,\"x\":2}"), Some(1));
        assert_eq!(leading_version(b"{\"version\":12}"), Some(12));
        for b in [
            &b"{\"seq\":1,\"version\":1}"[..],
            b"{\"version\":01}",
            b"{\"version\":-1}",
            b"{\"version\":1.0}",
            b"{\"version\":null}",
            b"[1]",
            b"",
        ] {
            assert_eq!(leading_version(b), None, "{}", String::from_utf8_lossy(b));
        }
        let path = Path::new("p.json");
        let p: Policy = parse_json(path, &to_json(&Policy::default())).unwrap();
        assert_eq!(p, Policy::default());
        let e = parse_json::<Policy>(path, b"{\"version\":1,\"version\":1}").unwrap_err();
        assert!(e.to_string().contains("is not valid JSON"), "{e}");
        let e = parse_json::<Policy>(path, b"{\"version\":2}").unwrap_err();
        assert!(e.to_string().contains("upgrade kloigos"), "{e}");
        let e = parse_json::<Policy>(path, b"{\"version\":1,\"nope\":1}").unwrap_err();
        assert!(e.to_string().contains("does not match the format"), "{e}");
    }

    #[test]
    fn files_past_max_file_are_refused_naming_the_file() {
        let (_t, s, n) = one_node();
        let path = s.state_path(&n);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(MAX_FILE + 1).unwrap();
        let e = s.node(&n).unwrap_err();
        assert!(matches!(e, Error::Storage { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("state.json") && msg.contains("16 MiB"),
            "{msg}"
        );
        let journal = s.node_dir(&n).join(JOURNAL_FILE);
        OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap()
            .set_len(MAX_FILE + 1)
            .unwrap();
        assert!(s
            .journal(&n)
            .unwrap_err()
            .to_string()
            .contains("journal.jsonl"));
    }

    #[test]
    fn an_append_after_a_torn_line_starts_a_line_of_its_own() {
        let (_t, s, n) = one_node();
        let journal = s.node_dir(&n).join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(b"{\"time\":\"2026-11-23T10:00:00Z\",\"by\"")
            .unwrap();
        let by = UserName::new("root").unwrap();
        s.update_node(&n, Timestamp::now(), |_| {
            Ok((
                (),
                vec![Event::node(
                    Timestamp::now(),
                    &by,
                    journal::Action::Drain,
                    &n,
                    "x",
                )],
            ))
        })
        .unwrap();
        let (ev, bad) = s.journal(&n).unwrap();
        assert_eq!(bad, vec![2]);
        assert_eq!(ev.last().unwrap().action, journal::Action::Drain);
        let text = fs::read_to_string(&journal).unwrap();
        assert!(text.ends_with('\n'));
        // A journal that ends cleanly gets no blank line.
        s.update_node(&n, Timestamp::now(), |_| {
            Ok((
                (),
                vec![Event::node(
                    Timestamp::now(),
                    &by,
                    journal::Action::Resume,
                    &n,
                    "",
                )],
            ))
        })
        .unwrap();
        let text = fs::read_to_string(&journal).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(!text.contains("\n\n"));
    }

    #[test]
    fn a_failed_state_write_takes_its_events_back_and_no_change_writes_nothing() {
        use std::os::unix::fs::MetadataExt;
        let (_t, s, n) = one_node();
        let dir = s.node_dir(&n);
        let journal = dir.join(JOURNAL_FILE);
        let before = fs::read(&journal).unwrap();
        // A directory where the tmp file goes: the state write fails (and
        // the sweep of stray tmp files cannot remove it).
        let blocker = dir.join(tmp_name(STATE_FILE));
        fs::create_dir(&blocker).unwrap();
        let by = UserName::new("root").unwrap();
        let e = s
            .update_node(&n, Timestamp::now(), |st| {
                st.seq += 1;
                Ok((
                    (),
                    vec![Event::node(
                        Timestamp::now(),
                        &by,
                        journal::Action::Drain,
                        &n,
                        "x",
                    )],
                ))
            })
            .unwrap_err();
        assert_eq!(e.errno(), Some(nix::libc::EEXIST), "{e}");
        assert_eq!(fs::read(&journal).unwrap(), before);
        assert_eq!(s.node(&n).unwrap().seq, 0);
        fs::remove_dir(&blocker).unwrap();
        // Nothing changed, nothing to journal: the files stay as they are.
        let stamp = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (m.ino(), m.mtime(), m.mtime_nsec())
        };
        let (st0, j0) = (stamp(&s.state_path(&n)), stamp(&journal));
        s.update_node(&n, Timestamp::now(), |_| Ok(((), vec![])))
            .unwrap();
        assert_eq!((stamp(&s.state_path(&n)), stamp(&journal)), (st0, j0));
    }

    /// Facts for `node`, as a housekeeper writes them.
    fn facts_of(node: &NodeName) -> Facts {
        serde_json::from_value(serde_json::json!({
            "version": 1, "node": node, "heartbeat": Timestamp::now(),
        }))
        .unwrap()
    }

    /// Every file under `dir` and its bytes, to see that nothing changed.
    fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let bytes = fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        v.sort();
        v
    }

    /// Every read and every write of a node, and what each gave.
    fn every_access(s: &Store, n: &NodeName) -> Vec<(&'static str, Result<()>)> {
        let by = UserName::new("root").unwrap();
        let drain = || {
            vec![Event::node(
                Timestamp::now(),
                &by,
                journal::Action::Drain,
                n,
                "x",
            )]
        };
        let journal_path = s.node_dir(n).join(JOURNAL_FILE);
        vec![
            ("node", s.node(n).map(drop)),
            ("node_if_any", s.node_if_any(n).map(drop)),
            ("journal", s.journal(n).map(drop)),
            ("journal_at", s.journal_at(&journal_path).map(drop)),
            ("lock", s.lock(n).map(drop)),
            (
                "update_node",
                s.update_node(n, Timestamp::now(), |st| {
                    st.seq += 1;
                    Ok(((), drain()))
                }),
            ),
            ("write_facts", s.write_facts(&facts_of(n))),
            ("delete_node", s.delete_node(n, |_| Ok(())).map(drop)),
        ]
    }

    #[test]
    fn a_linked_node_directory_is_refused_by_every_read_and_write() {
        let (t, s, n) = one_node();
        let dir = s.node_dir(&n);
        // A copy the store would trust in every other way, linked in.
        let elsewhere = t.path().join("elsewhere");
        fs::rename(&dir, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let before = contents(&elsewhere);
        for (what, r) in every_access(&s, &n) {
            let e = r.expect_err(what);
            assert!(
                matches!(&e, Error::Untrusted { why: Untrust::Symlink, path } if *path == dir),
                "{what}: {e:?}"
            );
            assert!(
                e.to_string().contains("nodes/n1: is a symbolic link"),
                "{what}: {e}"
            );
        }
        assert!(s.facts(&n).is_none());
        // Listed, so that readers of every node name it.
        assert!(s.has_node(&n));
        assert_eq!(s.node_names().unwrap(), vec![n.clone()]);
        // Not taken for a free name either.
        let st = NodeState::new(NodeSpec::new(n.clone(), CpuSet::parse("0").unwrap()));
        let by = UserName::new("root").unwrap();
        assert!(matches!(
            s.add_node(&st, &by, Timestamp::now()),
            Err(Error::Refused(_))
        ));
        // Nothing was written through the link.
        assert_eq!(contents(&elsewhere), before);
        assert!(fs::symlink_metadata(&dir).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_linked_state_file_is_refused_by_every_read_and_write() {
        let (t, s, n) = one_node();
        let path = s.state_path(&n);
        let target = t.path().join("state-copy.json");
        fs::rename(&path, &target).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let (state, journal) = (fs::read(&target).unwrap(), s.journal(&n).unwrap());
        for (what, r) in every_access(&s, &n) {
            if let "journal" | "journal_at" | "lock" | "write_facts" = what {
                // These do not read state.json, and go through.
                assert!(r.is_ok(), "{what}: {r:?}");
                continue;
            }
            let e = r.expect_err(what);
            assert!(
                matches!(&e, Error::Untrusted { why: Untrust::Symlink, path: p } if *p == path),
                "{what}: {e:?}"
            );
            assert!(
                e.to_string().contains("n1/state.json: is a symbolic link"),
                "{what}: {e}"
            );
        }
        assert_eq!(fs::read(&target).unwrap(), state);
        assert_eq!(s.journal(&n).unwrap(), journal);
        assert!(fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_node_directory_of_another_user_is_refused_by_every_read_and_write() {
        let (_t, s, n) = one_node();
        let dir = s.node_dir(&n);
        // Root can give it away; anyone else makes it one others may write.
        let stranger = 4243;
        if me() == 0 {
            nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(stranger)), None).unwrap();
        } else {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
        }
        let untrusted = |e: &Error| match e {
            Error::Untrusted {
                why: Untrust::Owner { uid, .. },
                path,
            } => *uid == stranger && *path == dir,
            Error::Untrusted {
                why: Untrust::Mode { mode },
                path,
            } => me() != 0 && *mode == 0o775 && *path == dir,
            _ => false,
        };
        let before = contents(&dir);
        for (what, r) in every_access(&s, &n) {
            let e = r.expect_err(what);
            assert!(untrusted(&e), "{what}: {e:?}");
            assert!(e.to_string().contains("nodes/n1: "), "{what}: {e}");
        }
        assert!(s.facts(&n).is_none());
        assert_eq!(contents(&dir), before);
    }

    /// The local copy's directory (and any file's read by path: the
    /// config, the housekeeper's record) as a link, or another user's:
    /// refused, naming the directory; before, its metadata was read
    /// through the link and the file opened by path.
    #[test]
    fn a_local_file_in_a_linked_or_foreign_directory_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let trust = Trust::root_and(crate::testing::uid(me()));
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        let copy = LocalCopy::new(Timestamp::now(), Policy::default(), None);
        fs::write(real.join("state.json"), to_json(&copy)).unwrap();
        let linked = t.path().join("linked");
        std::os::unix::fs::symlink(&real, &linked).unwrap();
        let path = linked.join("state.json");
        let is_link = |e: Error| matches!(&e, Error::Untrusted { why: Untrust::Symlink, path } if *path == linked);
        assert!(is_link(read_trusted(&path, &trust).unwrap_err()));
        assert!(is_link(read_trusted_if_any(&path, &trust).unwrap_err()));
        assert!(is_link(crate::gate::read_copy(&path, &trust).unwrap_err()));
        assert!(is_link(TrustedDir::open(&linked, &trust).unwrap_err()));
        // The same file through its real directory is read.
        let direct = real.join("state.json");
        assert_eq!(crate::gate::read_copy(&direct, &trust).unwrap(), Some(copy));
        // Another user's directory: root gives it away, anyone else trusts a stranger.
        let trust = if me() == 0 {
            nix::unistd::chown(&real, Some(nix::unistd::Uid::from_raw(4243)), None).unwrap();
            trust
        } else {
            Trust::root_and(crate::testing::uid(4243))
        };
        let e = crate::gate::read_copy(&direct, &trust).unwrap_err();
        assert!(
            matches!(&e, Error::Untrusted { why: Untrust::Owner { .. }, path } if *path == real),
            "{e:?}"
        );
        let before = fs::read(&direct).unwrap();
        let e = TrustedDir::open(&real, &trust)
            .and_then(|d| d.write_atomic("state.json", b"{}"))
            .unwrap_err();
        assert!(matches!(e, Error::Untrusted { .. }), "{e:?}");
        assert_eq!(fs::read(&direct).unwrap(), before);
    }

    #[test]
    fn a_deleted_node_keeps_its_journal_for_history() {
        let (_t, s, n) = one_node();
        let refused = s.delete_node(&n, |_| Err(Error::Refused("in use".into())));
        assert!(matches!(refused, Err(Error::Refused(_))));
        assert!(s.has_node(&n) && s.deleted_journals().is_empty());
        let dest = s.delete_node(&n, |_| Ok(())).unwrap();
        assert!(!s.has_node(&n));
        assert_eq!(dest.parent(), Some(s.root().join("deleted").as_path()));
        assert!(dest
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("n1."));
        let graveyard = fs::metadata(s.root().join("deleted")).unwrap();
        assert_eq!(graveyard.mode() & 0o7777, 0o755);
        assert_eq!(s.deleted_journals(), vec![dest.join(JOURNAL_FILE)]);
        let (ev, bad) = s.journal_at(&dest.join(JOURNAL_FILE)).unwrap();
        assert_eq!((ev.len(), bad.len()), (1, 0));
        assert_eq!(ev[0].action, journal::Action::AddNode);
        // A deleted node whose journal became a link is listed, so that
        // reading it names it; one without a journal is left out.
        let n2 = add(&s, "n2");
        let dest2 = s.delete_node(&n2, |_| Ok(())).unwrap();
        fs::remove_file(dest2.join(JOURNAL_FILE)).unwrap();
        std::os::unix::fs::symlink(dest.join(JOURNAL_FILE), dest2.join(JOURNAL_FILE)).unwrap();
        let n3 = add(&s, "n3");
        let dest3 = s.delete_node(&n3, |_| Ok(())).unwrap();
        fs::remove_file(dest3.join(JOURNAL_FILE)).unwrap();
        let mut listed = s.deleted_journals();
        listed.sort();
        assert_eq!(
            listed,
            vec![dest.join(JOURNAL_FILE), dest2.join(JOURNAL_FILE)]
        );
        let e = s.journal_at(&dest2.join(JOURNAL_FILE)).unwrap_err();
        assert!(
            matches!(&e, Error::Untrusted { why: Untrust::Symlink, path } if *path == dest2.join(JOURNAL_FILE)),
            "{e:?}"
        );
    }

    #[test]
    fn missing_cluster_file_says_not_mounted() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(
            t.path(),
            Trust::root_and(crate::testing::uid(1)).also(crate::testing::uid(me())),
        );
        assert!(s.policy().unwrap_err().to_string().contains("not mounted"));
    }
}
