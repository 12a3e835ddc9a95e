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
//! Every file is read whole, and none larger than [`MAX_FILE`].

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use nix::fcntl::OFlag;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Untrust};
use crate::facts::Facts;
use crate::journal::{self, Event};
use crate::names::NodeName;
use crate::policy::{check_version, Policy, FORMAT_VERSION};
use crate::state::NodeState;

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
    owners: Vec<u32>,
}

impl Trust {
    /// Files owned by root or the service account (PAM, housekeeper, setuid CLI).
    pub fn service(service_uid: u32) -> Trust {
        Trust {
            owners: vec![0, service_uid],
        }
    }

    /// Also trust files owned by `uid` (a user running on their own tree).
    pub fn also(mut self, uid: u32) -> Trust {
        if !self.owners.contains(&uid) {
            self.owners.push(uid);
        }
        self
    }

    /// Checks owner and mode of an opened file or directory.
    pub fn check(&self, path: &Path, meta: &fs::Metadata) -> Result<()> {
        let why = if !self.owners.contains(&meta.uid()) {
            Untrust::Owner {
                uid: meta.uid(),
                trusted: self.owners.clone(),
            }
        } else if meta.mode() & 0o022 != 0 {
            Untrust::Mode {
                mode: meta.mode() & 0o7777,
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
/// mode, whose directory is trusted too. Never follows a symlink and never
/// blocks on a FIFO.
pub fn read_trusted(path: &Path, trust: &Trust) -> Result<Vec<u8>> {
    check_parent(path, trust, false)?;
    read_trusted_file(path, trust)
}

/// [`read_trusted`], but `Ok(None)` when the file or its directory does
/// not exist (an optional file: no error is built for its absence).
pub fn read_trusted_if_any(path: &Path, trust: &Trust) -> Result<Option<Vec<u8>>> {
    if !check_parent(path, trust, true)? {
        return Ok(None);
    }
    match open_no_follow(path) {
        Ok(f) => read_opened(f, path, trust).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(open_error(path, &e)),
    }
}

/// Checks the directory `path` is in; `Ok(false)` when it does not exist
/// and `missing_ok`.
fn check_parent(path: &Path, trust: &Trust, missing_ok: bool) -> Result<bool> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(true);
    };
    match fs::metadata(dir) {
        Ok(meta) => trust.check(dir, &meta).map(|()| true),
        Err(e) if missing_ok && e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(dir, &e)),
    }
}

/// [`read_trusted`] once the caller has checked the directory: opens the
/// file (no symlink, no blocking, close-on-exec), checks the opened file
/// with one `fstat`, and reads it in as few `read`s as its size allows.
fn read_trusted_file(path: &Path, trust: &Trust) -> Result<Vec<u8>> {
    let f = open_no_follow(path).map_err(|e| open_error(path, &e))?;
    read_opened(f, path, trust)
}

/// Opens `path` to read: no symlink, no blocking, close-on-exec.
fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
}

/// The error for a failed [`open_no_follow`] of `path`.
fn open_error(path: &Path, e: &io::Error) -> Error {
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        Error::Untrusted {
            path: path.into(),
            why: Untrust::Symlink,
        }
    } else {
        Error::io(path, e)
    }
}

/// Checks the opened file `f` (at `path`) with one `fstat` and reads it.
fn read_opened(mut f: File, path: &Path, trust: &Trust) -> Result<Vec<u8>> {
    let meta = f.metadata().map_err(|e| Error::io(path, &e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Untrusted {
            path: path.into(),
            why: Untrust::NotRegular,
        });
    }
    trust.check(path, &meta)?;
    if meta.len() > MAX_FILE {
        return Err(too_large(path, meta.len()));
    }
    read_sized(&mut f, meta.len()).map_err(|e| match e.kind() {
        io::ErrorKind::FileTooLarge => too_large(path, MAX_FILE + 1),
        _ => Error::io(path, &e),
    })
}

/// The error for a file at `path` of `len` bytes, beyond [`MAX_FILE`].
fn too_large(path: &Path, len: u64) -> Error {
    Error::Storage {
        path: path.into(),
        msg: format!(
            "is {len} bytes, more than the {} MiB kloigos reads; refusing to read it — a state file this large was flooded or damaged (`kloigos admin fsck`); an old journal can be moved aside",
            MAX_FILE >> 20
        ),
    }
}

/// Largest buffer sized up front from `fstat` (a file larger than this is
/// still read whole, the buffer growing as it goes).
const PRESIZE_MAX: usize = 16 << 20;

/// Reads `f` (a regular file `fstat` said is `len` bytes long) to its end.
///
/// `read_to_end` would `fstat` and `lseek` again to size its buffer and
/// always make a last `read` that returns 0. Here the buffer has room for
/// one byte more than `len`, so a file still `len` bytes long comes in one
/// `read` that returns short of the request: a regular file's `read`
/// returns short only at its end, so no second `read` is needed. A file
/// that grew or shrank since the `fstat` is read until `read` returns 0,
/// and never past [`MAX_FILE`] (`FileTooLarge`).
fn read_sized(f: &mut File, len: u64) -> io::Result<Vec<u8>> {
    let expected = usize::try_from(len).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; expected.min(PRESIZE_MAX).saturating_add(1)];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            let grown = buf.len().saturating_mul(2);
            buf.resize(grown, 0);
        }
        let asked = buf.len() - filled;
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled as u64 > MAX_FILE {
                    return Err(io::ErrorKind::FileTooLarge.into());
                }
                if filled == expected && n < asked {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
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
    read_json_in(path, trust, false)
}

/// [`read_json`]; with `dir_checked`, the caller has just checked the
/// file's directory (owner and mode), so the first attempt does not check
/// it again. Retries always check it.
fn read_json_in<T: DeserializeOwned>(path: &Path, trust: &Trust, dir_checked: bool) -> Result<T> {
    let mut attempt = 0;
    loop {
        let bytes = if dir_checked && attempt == 0 {
            read_trusted_file(path, trust)
        } else {
            read_trusted(path, trust)
        };
        let r = bytes.and_then(|b| parse_json(path, &b));
        match r {
            Err(e) if attempt < 3 && transient(&e) => {
                attempt += 1;
                // Back off briefly: the writer's rename or NFS's attribute cache settles.
                std::thread::sleep(Duration::from_millis(15 * attempt));
            }
            other => return other,
        }
    }
}

fn tmp_name(name: &str) -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name}.tmp.{host}.{}", std::process::id())
}

/// Replaces `dir/name` with `bytes` atomically: exclusive tmp file, fsync,
/// rename, fsync of the directory. The file ends up mode 0644.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(tmp_name(name));
    let dest = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, &e))?;
    let done = (|| -> io::Result<()> {
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&dest, &e));
    }
    Ok(())
}

/// Serializes a value as pretty JSON with a final newline.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our types serialize infallibly (no maps with non-string keys).
    let mut v = serde_json::to_vec_pretty(value).expect("kloigos types serialize");
    v.push(b'\n');
    v
}

/// An exclusive lock on a node; released when dropped (closing the file
/// releases the flock).
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
}

impl NodeLock {
    /// Takes the lock file at `path`, waiting at most `wait` (see
    /// [`crate::lockwait`]).
    ///
    /// The lock file is mode 0600: flock needs only a descriptor opened for
    /// reading, so a file others can read is a file any user could lock to
    /// stall every writer of the node. An older, readable one we own is
    /// narrowed to 0600 here.
    pub fn acquire(path: &Path, node: &NodeName, wait: Duration) -> Result<NodeLock> {
        // Before the lock: a writer that cannot finish its writes must not start them.
        lift_fsize_limit()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(path)
            .map_err(|e| Error::io(path, &e))?;
        if let Ok(meta) = file.metadata() {
            if meta.mode() & 0o077 != 0 && meta.uid() == nix::unistd::geteuid().as_raw() {
                file.set_permissions(fs::Permissions::from_mode(0o600))
                    .map_err(|e| Error::io(path, &e))?;
            }
        }
        match crate::lockwait::lock_within(file, wait) {
            Ok(Some(file)) => Ok(NodeLock { _file: file }),
            Ok(None) => Err(Error::Busy {
                node: node.to_string(),
            }),
            Err(e) => Err(crate::lockwait::lock_error(path, &e)),
        }
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

    /// Creates a new cluster: the root (if missing), `nodes/`, `cluster.json`.
    pub fn init(&self, policy: &Policy) -> Result<()> {
        if self.cluster_path().exists() {
            return Err(Error::Refused(format!(
                "{} already exists; this directory already holds a cluster (see `kloigos admin policy`)",
                self.cluster_path().display()
            )));
        }
        let writing = crate::deadline::GLOBAL.writing();
        for dir in [self.root.clone(), self.nodes_dir()] {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&dir, &e)),
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(&dir, &e))?;
        }
        write_atomic(&self.root, CLUSTER_FILE, &to_json(policy))?;
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
        read_json(&path, &self.trust).map_err(|e| match e {
            // The share's root or its cluster.json is not there.
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Error::NotMounted { path }
            }
            e => e,
        })
    }

    /// Rewrites the cluster policy under the cluster lock.
    pub fn update_policy(&self, f: impl FnOnce(&mut Policy) -> Result<()>) -> Result<Policy> {
        let lock_node = NodeName::new("cluster").expect("valid literal");
        crate::mount::check_shared_locking(&self.root)?;
        let _lock = NodeLock::acquire(&self.root.join("cluster.lock"), &lock_node, self.lock_wait)?;
        let mut p = self.policy()?;
        f(&mut p)?;
        p.validate().map_err(Error::Refused)?;
        let writing = crate::deadline::GLOBAL.writing();
        write_atomic(&self.root, CLUSTER_FILE, &to_json(&p))?;
        writing.confirm();
        Ok(p)
    }

    /// Names of all nodes, sorted. Entries that are not valid node names are
    /// skipped (`fsck` reports them).
    pub fn node_names(&self) -> Result<Vec<NodeName>> {
        let dir = self.nodes_dir();
        let rd = fs::read_dir(&dir).map_err(|e| Error::io(&dir, &e))?;
        let mut names: Vec<NodeName> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().and_then(|s| NodeName::new(s).ok()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether `node` exists in this cluster.
    pub fn has_node(&self, node: &NodeName) -> bool {
        self.node_dir(node).is_dir()
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
        // The root as configured may be a link (a site's mount point);
        // below it, nothing is followed.
        let meta = fs::metadata(&self.root).map_err(|e| Error::io(&self.root, &e))?;
        self.check_dir(&self.root, &meta)?;
        self.trusted_dir(&self.nodes_dir())?;
        let dir = self.node_dir(node);
        match fs::symlink_metadata(&dir) {
            Ok(meta) => self.check_dir(&dir, &meta)?,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::io(&dir, &e)),
        }
        let path = dir.join(STATE_FILE);
        let st: NodeState = read_json_in(&path, &self.trust, true)?;
        if st.node.name != *node {
            return Err(Error::Corrupt {
                path,
                msg: format!(
                    "describes node '{}' but sits in the directory of '{node}'",
                    st.node.name
                ),
            });
        }
        Ok(Some(st))
    }

    /// Checks that `dir` is a trusted directory (a symbolic link is not one).
    fn trusted_dir(&self, dir: &Path) -> Result<()> {
        let meta = fs::symlink_metadata(dir).map_err(|e| Error::io(dir, &e))?;
        self.check_dir(dir, &meta)
    }

    /// [`Store::trusted_dir`] with `dir`'s metadata (not followed) in hand.
    fn check_dir(&self, dir: &Path, meta: &fs::Metadata) -> Result<()> {
        let why = if meta.file_type().is_symlink() {
            Untrust::Symlink
        } else if !meta.is_dir() {
            Untrust::NotDirectory
        } else {
            return self.trust.check(dir, meta);
        };
        Err(Error::Untrusted {
            path: dir.into(),
            why,
        })
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
        let path = self.node_dir(node).join(FACTS_FILE);
        // Facts are optional: a node without a housekeeper has none, which is no reason to retry.
        if !path.exists() {
            return None;
        }
        read_json(&path, &self.trust).ok()
    }

    /// Writes a node's facts (done by that node's housekeeper only).
    pub fn write_facts(&self, facts: &Facts) -> Result<()> {
        write_atomic(&self.node_dir(&facts.node), FACTS_FILE, &to_json(facts))
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
        let dir = self.node_dir(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Refused(format!(
                    "node '{name}' already exists; change it with `kloigos admin set-node {name}`"
                )))
            }
            Err(e) => return Err(Error::io(&dir, &e)),
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io(&dir, &e))?;
        crate::mount::check_shared_locking(&dir)?;
        let _lock = NodeLock::acquire(&dir.join(LOCK_FILE), name, self.lock_wait)?;
        let _writing = crate::deadline::GLOBAL.writing();
        let ev = Event::node(
            now,
            by,
            journal::Action::AddNode,
            name,
            format!("cpus {}", state.node.cpus),
        );
        let appended = self.append_journal(name, &[ev])?;
        write_atomic(&dir, STATE_FILE, &to_json(state)).inspect_err(|_| {
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
        let dir = self.node_dir(node);
        let _lock = self.lock(node)?;
        let st = self.node(node)?;
        check(&st)?;
        let graveyard = self.root.join("deleted");
        match fs::create_dir(&graveyard) {
            Ok(()) => {
                let _ = fs::set_permissions(&graveyard, fs::Permissions::from_mode(0o755));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&graveyard, &e)),
        }
        let dest = graveyard.join(format!("{node}.{}", Timestamp::now().as_second()));
        let _writing = crate::deadline::GLOBAL.writing();
        fs::rename(&dir, &dest).map_err(|e| Error::io(&dir, &e))?;
        Ok(dest)
    }

    /// Takes a node's lock, on a share whose locks are shared between
    /// nodes (see [`crate::mount`]).
    pub fn lock(&self, node: &NodeName) -> Result<NodeLock> {
        if !self.has_node(node) {
            return Err(self.no_such_node(node));
        }
        // A lock that would not exclude the writers of other nodes is refused.
        crate::mount::check_shared_locking(&self.node_dir(node))?;
        NodeLock::acquire(&self.node_dir(node).join(LOCK_FILE), node, self.lock_wait)
    }

    /// The writer's protocol: lock, sweep stray tmp files, read, let `f`
    /// change the state, prune, refuse a state that breaks an invariant,
    /// journal `f`'s events, write atomically, unlock. When `f` changes
    /// nothing and has no events, nothing is written.
    pub fn update_node<T>(
        &self,
        node: &NodeName,
        now: Timestamp,
        f: impl FnOnce(&mut NodeState) -> Result<(T, Vec<Event>)>,
    ) -> Result<T> {
        let _lock = self.lock(node)?;
        let dir = self.node_dir(node);
        sweep_tmp(&dir);
        let mut st = self.node(node)?;
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
        let appended = self.append_journal(node, &events)?;
        let bytes = to_json(&st);
        if let Err(e) = write_atomic(&dir, STATE_FILE, &bytes) {
            if let Some(a) = appended {
                a.undo();
            }
            return Err(e);
        }
        crate::commit::check_written(&self.state_path(node), &bytes, &self.trust)?;
        writing.confirm();
        Ok(out)
    }

    /// Appends events to a node's journal and fsyncs it (callers hold the
    /// node's lock). A line left torn by an older writer is closed first,
    /// so the new events start on a line of their own; a write that fails
    /// half way is cut back off. Returns how to undo the append.
    fn append_journal(&self, node: &NodeName, events: &[Event]) -> Result<Option<Appended>> {
        if events.is_empty() {
            return Ok(None);
        }
        let path = self.node_dir(node).join(JOURNAL_FILE);
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o644)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&path)
            .map_err(|e| Error::io(&path, &e))?;
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

    /// A node's journal: events, and the numbers of lines that did not parse.
    pub fn journal(&self, node: &NodeName) -> Result<(Vec<Event>, Vec<usize>)> {
        self.journal_at(&self.node_dir(node).join(JOURNAL_FILE))
    }

    /// Journals of deleted nodes, for `history`.
    pub fn deleted_journals(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(self.root.join("deleted")) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.path().join(JOURNAL_FILE))
            .filter(|p| p.is_file())
            .collect()
    }

    /// Reads a journal file by path (a missing journal is empty).
    pub fn journal_at(&self, path: &Path) -> Result<(Vec<Event>, Vec<usize>)> {
        Ok(match read_trusted_if_any(path, &self.trust)? {
            Some(bytes) => journal::parse(&String::from_utf8_lossy(&bytes)),
            None => (Vec::new(), Vec::new()),
        })
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

/// Removes tmp files left by writers that died between create and rename.
/// Only called under the node's lock, so no live writer owns one.
pub fn sweep_tmp(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name();
        if is_tmp(&name) && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
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

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn store(dir: &Path) -> Store {
        let s = Store::new(dir.join("shared"), Trust::service(4242).also(me()));
        s.init(&Policy::default()).unwrap();
        s
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
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
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
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
        let path = s.state_path(&n);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).unwrap();
        let e = s.node(&n).unwrap_err().to_string();
        assert!(e.contains("chmod go-w") && e.contains("state.json"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let strict = Store::new(s.root(), Trust::service(4242));
        if me() != 0 {
            let e = strict.node(&n).unwrap_err().to_string();
            assert!(e.contains("not by a trusted owner"), "{e}");
        }
    }

    #[test]
    fn corrupt_and_newer_files_name_the_file() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
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
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
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
        let trust = Trust::service(me());
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
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
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
        let s = Store::new(t.path().join("absent"), Trust::service(me()));
        assert!(matches!(s.login_policy(), Err(Error::NotMounted { .. })));
        assert!(matches!(
            check_mounted(s.root()),
            Err(Error::NotMounted { .. })
        ));
    }

    #[test]
    fn tmp_files_refuse_planted_links_and_are_swept() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
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
        let t = tempfile::tempdir().unwrap();
        let mut s = store(t.path());
        let n = add(&s, "n1");
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
    fn sized_reads_read_whole_files() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        for len in [0usize, 1, 4095, 4096, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            fs::write(&path, &data).unwrap();
            // A stale size (smaller or larger than the file) still reads it all.
            for said in [len as u64, 0, len as u64 / 2, len as u64 + 10] {
                let mut f = File::open(&path).unwrap();
                assert_eq!(read_sized(&mut f, said).unwrap(), data);
            }
        }
    }

    #[test]
    fn files_past_max_file_are_refused_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
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
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
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
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let n = add(&s, "n1");
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

    #[test]
    fn missing_cluster_file_says_not_mounted() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path(), Trust::service(1).also(me()));
        assert!(s.policy().unwrap_err().to_string().contains("not mounted"));
    }
}
