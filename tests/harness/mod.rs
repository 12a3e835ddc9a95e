//! The shared harness of kloigos' CLI and system tests: built binaries, a
//! temporary cluster, throwaway users, network namespaces, polling.
//!
//! Each area keeps its helpers in its own module here, so test files stay a
//! few lines of intent.

pub mod cluster;
pub mod cmd;
pub mod pam;
pub mod poll;
pub mod sys;

use std::path::PathBuf;

/// The directory holding the built binaries and `libpam_kloigos.so`
/// (`target/debug` or `target/release`): `KLOIGOS_BIN_DIR`, else the parent
/// of the test executable's `deps/` directory.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KLOIGOS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
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

/// Skips the current test (with a visible note) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("SKIPPED (needs root): {}", module_path!());
            return;
        }
    };
}
