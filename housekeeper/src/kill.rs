//! Ending every process of a user who holds no booking.
//!
//! SIGTERM to all of them at once, a short wait, then SIGKILL to all of them
//! at once, each from a helper that has become the user (see
//! [`crate::sys::signal_all_as`]); after each round /proc is checked, and the
//! round repeated while anything of the user is left. The loop is bounded by
//! rounds, never by `kill(-1)` returning ESRCH: that never comes while any
//! other process exists in the PID namespace.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::procfs;

/// How long processes get to exit after SIGTERM.
pub const TERM_WAIT: Duration = Duration::from_millis(300);
/// How long each SIGKILL round waits for /proc to empty.
const KILL_WAIT: Duration = Duration::from_millis(200);
/// SIGKILL rounds before giving up until the next pass.
const KILL_ROUNDS: u32 = 8;

/// What ending a user's processes achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Distinct processes seen and signalled.
    pub killed: u64,
    /// Live processes still there at the end (stuck in the kernel, usually).
    pub remaining: usize,
    /// SIGKILL rounds used.
    pub rounds: u32,
    /// Time taken.
    pub elapsed: Duration,
}

/// Waits up to `wait` for `uid` to have no live process; records the pids seen.
fn wait_gone(uid: u32, wait: Duration, seen: &mut BTreeSet<i32>) -> usize {
    let deadline = Instant::now() + wait;
    loop {
        let left = procfs::live_pids_of(uid);
        seen.extend(&left);
        if left.is_empty() || Instant::now() >= deadline {
            return left.len();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ends every process of `uid` (primary group `gid`, used by the helper).
pub fn end_user(uid: u32, gid: u32) -> Result<Outcome> {
    if uid == 0 {
        return Err(Error::Kill {
            uid,
            msg: "refusing to end root's processes".into(),
        });
    }
    let start = Instant::now();
    let mut seen: BTreeSet<i32> = procfs::live_pids_of(uid).into_iter().collect();
    if seen.is_empty() {
        return Ok(Outcome::default());
    }
    logind_terminate(uid);
    crate::sys::signal_all_as(uid, gid, libc::SIGTERM)?;
    let mut remaining = wait_gone(uid, TERM_WAIT, &mut seen);
    let mut rounds = 0;
    while remaining > 0 && rounds < KILL_ROUNDS {
        rounds += 1;
        crate::sys::signal_all_as(uid, gid, libc::SIGKILL)?;
        remaining = wait_gone(uid, KILL_WAIT, &mut seen);
    }
    Ok(Outcome {
        killed: seen.len() as u64,
        remaining,
        rounds,
        elapsed: start.elapsed(),
    })
}

/// Where logind tracks the user, ends their sessions and their user@
/// service (and so lingering units) the supported way first.
fn logind_terminate(uid: u32) {
    if !Path::new(&format!("/run/systemd/users/{uid}")).exists() {
        return;
    }
    if let Err(e) = crate::sys::run("loginctl", &["terminate-user", &uid.to_string()], None) {
        crate::log::error(&format!(
            "loginctl terminate-user {uid}: {e}; ending the processes directly"
        ));
    }
}
