//! The `kloigos` command line as a library, so that tools built from the
//! same clap definitions (the man page and shell-completion generator,
//! crate `kloigos-gen`) cannot drift from the real binary.
#![forbid(unsafe_code)]

pub mod args;

/// Version and the git commit it was built from ("unknown commit" when the
/// source tree has no git metadata).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("KLOIGOS_GIT_COMMIT"),
    ")"
);
