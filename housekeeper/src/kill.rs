//! Ending every process of a user who holds no booking.
//!
//! Root signals each process of the user itself, through a pidfd: /proc is
//! scanned for the user's processes, each is opened with `pidfd_open`, its
//! owner checked again through the open pidfd's pid (a pid number may have
//! been reused between the scan and the open; the pidfd cannot be), and the
//! signal sent with `pidfd_send_signal`. Nothing of the housekeeper ever
//! runs as the user, so the user can stop, trace or outwait nothing of it.
//!
//! SIGTERM (and SIGCONT, so that stopped processes act on it) to all of
//! them, a short wait, then SIGKILL rounds: each round
//! scans /proc afresh (a forking user's new children are found by the next
//! one) and waits on the pidfds for the processes to die. The rounds are
//! bounded in number and by the pass deadline.
//!
//! Why not `cgroup.kill`: a user's session cgroup (and user@.service) also
//! holds root processes, such as the sshd session process or a `sudo`, and
//! cgroup.kill ends everything in the group whatever its owner; on hosts
//! without systemd there is no per-user cgroup at all; and users without a
//! booking, the ones ended here, have no kloigos cgroup.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use kloigos_core::ids::Uid;

use crate::error::{Error, Result};
use crate::procfs;
use crate::sys::{self, PidFd};

/// How long processes get to exit after SIGTERM.
pub const TERM_WAIT: Duration = Duration::from_millis(300);
/// How long each SIGKILL round waits for the processes signalled to die.
const KILL_WAIT: Duration = Duration::from_millis(200);
/// SIGKILL rounds before giving up until the next pass.
const KILL_ROUNDS: u32 = 64;
/// Most pidfds held open at once for waiting (the rest are signalled and
/// closed at once): bounded below any descriptor limit.
const MAX_HELD: usize = 256;

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

/// Ends every process of `uid`, starting no new round after `until`.
pub fn end_user(uid: Uid, until: Instant) -> Result<Outcome> {
    if uid.is_root() {
        return Err(Error::Kill {
            uid,
            msg: "refusing to end root's processes".into(),
        });
    }
    let start = Instant::now();
    if procfs::pids_to_end(uid).is_empty() {
        return Ok(Outcome::default());
    }
    logind_terminate(uid);
    let mut seen = BTreeSet::new();
    let term_wait = TERM_WAIT.min(until.saturating_duration_since(Instant::now()));
    let mut remaining = signal_round(uid, libc::SIGTERM, term_wait, &mut seen)?;
    let mut rounds = 0;
    while remaining > 0 && rounds < KILL_ROUNDS && Instant::now() < until {
        rounds += 1;
        remaining = signal_round(uid, libc::SIGKILL, KILL_WAIT, &mut seen)?;
    }
    Ok(Outcome {
        killed: seen.len() as u64,
        remaining,
        rounds,
        elapsed: start.elapsed(),
    })
}

/// Sends `signal` to every process of `uid` seen now, waits up to `wait`
/// for them to exit, and returns how many processes of `uid` are live then.
fn signal_round(uid: Uid, signal: i32, wait: Duration, seen: &mut BTreeSet<i32>) -> Result<usize> {
    let mut held: Vec<PidFd> = Vec::new();
    for pid in procfs::pids_to_end(uid) {
        let fd = match PidFd::open(pid) {
            Ok(fd) => fd,
            // Exited since the scan.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => {
                return Err(Error::Kill {
                    uid,
                    msg: format!("pidfd_open({pid}): {e} (Linux 5.3 or later is needed)"),
                })
            }
        };
        // The pidfd now pins the process: if the pid was reused, this reads
        // the new process, which is then left alone; if the process is
        // reaped meanwhile, the signal below reaches nothing.
        if !procfs::is_to_end(pid, uid) {
            continue;
        }
        // A stopped process acts on SIGTERM only once continued (as
        // systemd does, SIGCONT follows it); SIGKILL needs no help.
        let also_cont = (signal == libc::SIGTERM).then_some(libc::SIGCONT);
        for sig in std::iter::once(signal).chain(also_cont) {
            fd.signal(sig).map_err(|e| Error::Kill {
                uid,
                msg: format!("pidfd_send_signal({pid}, {sig}): {e}"),
            })?;
        }
        seen.insert(pid);
        if held.len() < MAX_HELD {
            held.push(fd);
        }
    }
    sys::wait_exited(&held, wait);
    Ok(procfs::pids_to_end(uid).len())
}

/// Where logind tracks the user, ends their sessions and their user@
/// service (and so lingering units) the supported way first.
fn logind_terminate(uid: Uid) {
    if !Path::new(&format!("/run/systemd/users/{uid}")).exists() {
        return;
    }
    if let Err(e) = sys::run("loginctl", &["terminate-user", &uid.to_string()], None) {
        crate::log::error(&format!(
            "loginctl terminate-user {uid}: {e}; ending the processes directly"
        ));
    }
}
