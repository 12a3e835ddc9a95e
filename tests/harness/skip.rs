//! Tests that cannot run here say so, and never pass in silence.
//!
//! Under `CI=true` a test that cannot run fails, naming what is missing and
//! how to get it: a green CI run means every test ran. Elsewhere (a
//! developer's machine, not root) it prints `SKIPPED: <test>: <reason>` and
//! appends that line to the file named by `KLOIGOS_SKIPPED`, which
//! `tests/run.sh` counts at the end.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

/// Whether this run is CI's (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1")
}

/// Gives up on the current test because `why` (what is missing and how to
/// get it): a failure under CI, a counted `SKIPPED` line elsewhere. The
/// caller returns right after.
pub fn skip(why: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("main");
    if in_ci() {
        panic!("{test} cannot run here: {why} (CI=true: a test that cannot run fails)");
    }
    let line = format!("SKIPPED: {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("KLOIGOS_SKIPPED") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            panic!(
                "{}: {e} (KLOIGOS_SKIPPED names the skip list)",
                path.to_string_lossy()
            );
        }
    }
}

/// `Err(why)` when `program` is not on PATH, naming the Debian package that
/// has it (every one is in tests/apt-packages.txt, which ./tests/run.sh
/// installs as root).
pub fn need(program: &str, package: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    if found {
        Ok(())
    } else {
        Err(format!(
            "{program} is not installed: apt-get install {package} \
             (tests/apt-packages.txt lists it; ./tests/run.sh installs it as root)"
        ))
    }
}

/// Returns from the current test unless running as root (see [`skip`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::skip::skip("it needs root: run ./tests/run.sh as root");
            return;
        }
    };
}

/// Returns from the current test unless `cond` holds; `why` says what is
/// missing and how to get it (see [`skip`]).
#[macro_export]
macro_rules! require {
    ($cond:expr, $why:expr) => {
        if !$cond {
            $crate::skip::skip(&$why);
            return;
        }
    };
}

/// Returns the `Ok` value, or returns from the current test with the `Err`
/// text as the reason (see [`skip`]).
#[macro_export]
macro_rules! require_ok {
    ($res:expr) => {
        match $res {
            Ok(v) => v,
            Err(why) => {
                $crate::skip::skip(&why);
                return;
            }
        }
    };
}
