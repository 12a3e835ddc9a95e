//! The one error type of kloigos-core.
//!
//! Every variant says what went wrong and, where there is one, what would
//! work instead. [`Error::kind`] sorts them into the exit-code classes of the
//! CLI contract.

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
    /// A file exists but its content is not what kloigos wrote.
    #[error("{path}: {msg} (run `kloigos admin fsck` for details)")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
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
            Error::Storage { .. } | Error::Corrupt { .. } | Error::Busy { .. } => {
                ErrorKind::Storage
            }
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

    /// An [`Error::Storage`] for an I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, err: &std::io::Error) -> Error {
        Error::Storage {
            path: path.into(),
            msg: err.to_string(),
        }
    }
}

/// The result type of kloigos-core.
pub type Result<T> = std::result::Result<T, Error>;
