//! The shared harness of kloigos' CLI and system tests: built binaries, a
//! temporary cluster, throwaway users, network namespaces, polling.
//!
//! Each area keeps its helpers in its own module here, so test files stay a
//! few lines of intent.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cluster;
pub mod cmd;
pub mod fuse;
pub mod housekeeper;
pub mod nfs;
pub mod node;
pub mod nspawn;
pub mod pam;
pub mod poll;
pub mod rogue;
pub mod setuid;
pub mod skip;
pub mod sys;
pub mod views;

use std::path::PathBuf;

/// The directory holding the built binaries and `libpam_kloigos.so`
/// (`target/debug` or `target/release`): `KLOIGOS_BIN_DIR`, else found from
/// the running test or benchmark executable.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KLOIGOS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // Tests live in target/<profile>/deps/, benchmark binaries in target/<profile>/.
    let dir = exe.parent().expect("executable has a directory");
    match dir.file_name() {
        Some(n) if n == "deps" => dir.parent().expect("deps has a parent").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Path of a built binary, e.g. `bin("kloigos")`; panics with the fix when
/// it is missing (tests run after `cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first (./tests/run.sh does)",
        p.display()
    );
    p
}

/// Whether the tests run as root (system tests need it; CI runs as root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A uid from a number a test chose (never `u32::MAX`, which no account has).
pub fn uid(raw: u32) -> kloigos_core::ids::Uid {
    kloigos_core::ids::Uid::new(raw).expect("a uid")
}
