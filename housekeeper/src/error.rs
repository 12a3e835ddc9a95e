//! The one error type of the housekeeper. Every message names what failed
//! and, where there is one, what to do about it.

use std::io;
use std::path::PathBuf;

use kloigos_core::ids::Uid;

/// Everything a housekeeper pass can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line.
    #[error("{0}\n\n{usage}", usage = crate::USAGE)]
    Usage(String),
    /// The housekeeper must run as root to enforce anything.
    #[error("kloigos-housekeeper must run as root (it sets slices, loads nftables rules and ends processes); `--dry-run` works without")]
    NotRoot,
    /// A shared-store, configuration or format error from kloigos-core.
    #[error(transparent)]
    Core(#[from] kloigos_core::Error),
    /// A local file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// An external program could not be started.
    #[error("cannot run {program}: {source} (is it installed and on PATH?)")]
    Spawn {
        /// The program.
        program: String,
        /// What the system said.
        source: io::Error,
    },
    /// An external program ran and failed.
    #[error("{program} failed ({status}): {output}")]
    Command {
        /// The program and its arguments.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        output: String,
    },
    /// An external program ran past its time and was killed.
    #[error("{program} ran longer than {secs:.0} s and was killed{}", if *reaped { "" } else { " (it is stuck in the kernel and was left behind)" })]
    Timeout {
        /// The program and its arguments.
        program: String,
        /// The time it was given.
        secs: f64,
        /// Whether it could be reaped after the kill.
        reaped: bool,
    },
    /// Another pass holds the local lock.
    #[error("another housekeeper pass holds {0}; this one is skipped (passes never overlap)")]
    Busy(PathBuf),
    /// Switching to or from the service account failed.
    #[error("cannot {0}")]
    Privilege(String),
    /// The cgroup hierarchy cannot be used as configured.
    #[error("cgroups: {0}")]
    Cgroup(String),
    /// A file is larger than the housekeeper reads.
    #[error("{path}: larger than {max} bytes; not read (is this the file it should be?)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound, bytes.
        max: u64,
    },
    /// A directory holds more entries than the housekeeper reads.
    #[error("{dir}: more than {max} entries; not read (is this the directory it should be?)")]
    TooMany {
        /// The directory.
        dir: PathBuf,
        /// The bound.
        max: usize,
    },
    /// A path declared as a GPU's device node is not a character device.
    #[error("{0}: not a character device; housekeeper.gpu.devices lists GPU device nodes such as /dev/dri/renderD128")]
    NotDevice(PathBuf),
    /// A bpf(2) command of the cgroup v2 GPU fence failed.
    #[error("{what}: {source}")]
    Bpf {
        /// The command and the group it was for.
        what: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The kernel refused to load the GPU fence's device program.
    #[error("the kernel refused the GPU fence's device program: {source}{}", if log.is_empty() { String::new() } else { format!("; verifier: {log}") })]
    BpfRejected {
        /// What the kernel said.
        source: io::Error,
        /// The verifier's log.
        log: String,
    },
    /// No device controller the GPU fence can use.
    #[error("{0}")]
    NoFence(String),
    /// Ending a user's processes failed.
    #[error("ending the processes of uid {uid}: {msg}")]
    Kill {
        /// The user.
        uid: Uid,
        /// What went wrong.
        msg: String,
    },
}

impl Error {
    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The housekeeper's result type.
pub type Result<T> = std::result::Result<T, Error>;
