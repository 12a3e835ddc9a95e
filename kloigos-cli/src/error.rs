//! The CLI's error type and its exit codes.

use kloigos_core::ErrorKind;

/// Everything that ends a `kloigos` command with a non-zero status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A refusal, usage or storage error from core.
    #[error(transparent)]
    Core(#[from] kloigos_core::Error),
    /// A command-line problem the parser could not catch.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The exit code: 1 refused, 2 usage, 3 storage.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Core(e) => match e.kind() {
                ErrorKind::Refused => 1,
                ErrorKind::Usage => 2,
                ErrorKind::Storage => 3,
            },
            CliError::Usage(_) => 2,
        }
    }
}

/// The CLI's result type.
pub type Result<T> = std::result::Result<T, CliError>;
