//! The one error type of kloigos-core.
//!
//! Every variant says what went wrong and, where there is one, what would
//! work instead. [`Error::kind`] sorts them into the exit-code classes of the
//! CLI contract.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Which class of failure an error is; the CLI maps it to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was understood and refused (no capacity, not allowed, no booking): exit 1.
    Refused,
    /// The request itself is malformed (bad duration, bad name, bad flag value): exit 2.
    Usage,
    /// The shared store cannot be used (unreachable, locked, corrupt, untrusted): exit 3.
    Storage,
}

/// Everything that can go wrong in kloigos-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value given by the user (argument or config field) does not parse.
    #[error("invalid {what} '{text}': {hint}")]
    Invalid {
        /// What was being parsed ("duration", "node name", ...).
        what: &'static str,
        /// The offending text, as given.
        text: String,
        /// What would be accepted.
        hint: String,
    },
    /// A request that parses but is refused, with the rule that refused it.
    #[error("{0}")]
    Refused(String),
    /// A refusal for lack of capacity (an `alloc --wait` keeps trying on these).
    #[error("{0}")]
    Full(String),
    /// A file could not be read, written, locked or trusted.
    #[error("{path}: {msg}")]
    Storage {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// A file or directory could not be read, written or locked: the
    /// system's error, its errno kept for callers to match on.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A file or directory is there but kloigos may not believe it.
    #[error("{path}: {why}")]
    Untrusted {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong with it, and the fix.
        why: Untrust,
    },
    /// No `cluster.json` where the shared directory should be.
    #[error("{path}: not found: the shared directory is not mounted or not initialised (`kloigos admin init`)")]
    NotMounted {
        /// Where `cluster.json` was looked for.
        path: PathBuf,
    },
    /// A file exists but its content is not what kloigos wrote.
    #[error("{path}: {msg} (run `kloigos admin fsck` for details)")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The share's mount keeps file locks on this client (`local_lock=flock`
    /// or `=all`, `nolock`): writers on other nodes would not be excluded.
    #[error("{path}: the share is mounted with `{option}`, so its locks stay on this client and writers on other nodes do not exclude each other; refusing to write, since bookings would be lost — {}", crate::mount::fix(option))]
    LocalLocking {
        /// The mount point.
        path: PathBuf,
        /// The option that makes locks local.
        option: String,
    },
    /// `flock` failed with ENOLCK: the NFS client got no lock from the server.
    #[error("{path}: no locks available (ENOLCK): the NFS client could not get a lock from the server — on NFSv3 start rpc.statd and lockd (`systemctl start rpc-statd`) on this node and the server; on NFSv4 check the mount options (`kloigos doctor`)")]
    NoLocks {
        /// The lock file.
        path: PathBuf,
    },
    /// A write was renamed into place but a fresh read does not show it:
    /// another writer replaced the file without holding the lock.
    #[error(
        "{path}: the share lost this write: is locking shared between nodes? see `kloigos doctor`"
    )]
    LostWrite {
        /// The file whose new content is not there.
        path: PathBuf,
    },
    /// A node's lock stayed taken past the deadline.
    #[error("{node} is busy (its lock is held by another kloigos command); try again")]
    Busy {
        /// The node whose lock was not obtained.
        node: String,
    },
}

impl Error {
    /// The exit-code class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { .. } => ErrorKind::Usage,
            Error::Refused(_) | Error::Full(_) => ErrorKind::Refused,
            Error::Storage { .. }
            | Error::Io { .. }
            | Error::Untrusted { .. }
            | Error::NotMounted { .. }
            | Error::Corrupt { .. }
            | Error::Busy { .. }
            | Error::LocalLocking { .. }
            | Error::NoLocks { .. }
            | Error::LostWrite { .. } => ErrorKind::Storage,
        }
    }

    /// An [`Error::Invalid`] for `what`, quoting `text`.
    pub fn invalid(what: &'static str, text: &str, hint: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            text: text.to_string(),
            hint: hint.into(),
        }
    }

    /// An [`Error::Io`] for an I/O failure on `path`, keeping its errno.
    pub fn io(path: impl Into<PathBuf>, err: &io::Error) -> Error {
        // io::Error is not Clone; its errno (or kind and text) is what matters.
        let source = match err.raw_os_error() {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(err.kind(), err.to_string()),
        };
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The errno of an [`Error::Io`], if it has one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Why a file or directory is not believed (see [`Error::Untrusted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrust {
    /// Owned by someone other than the trusted owners.
    Owner {
        /// Its owner.
        uid: u32,
        /// The owners that would be trusted.
        trusted: Vec<u32>,
    },
    /// Group- or world-writable.
    Mode {
        /// Its permission bits.
        mode: u32,
    },
    /// A symbolic link, which readers never follow.
    Symlink,
    /// Not a regular file (a FIFO, a device, a directory).
    NotRegular,
    /// Not a directory where one is expected.
    NotDirectory,
}

impl fmt::Display for Untrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrust::Owner { uid, trusted } => write!(
                f,
                "owned by uid {uid}, not by a trusted owner (uids {trusted:?}); refusing to trust it — `chown` it to the service account"
            ),
            Untrust::Mode { mode } => write!(
                f,
                "mode {mode:o} lets others write it; refusing to trust it — `chmod go-w` it"
            ),
            Untrust::Symlink => f.write_str("is a symbolic link; refusing to follow it"),
            Untrust::NotRegular => f.write_str("is not a regular file; refusing to read it"),
            Untrust::NotDirectory => {
                f.write_str("is not a directory; refusing to use it — only a directory made by kloigos belongs here")
            }
        }
    }
}

/// The result type of kloigos-core.
pub type Result<T> = std::result::Result<T, Error>;
