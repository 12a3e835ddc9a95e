//! The pass deadline and its watchdog.
//!
//! Every wait in a pass has a bound of its own (programs, hooks, the kill
//! rounds), and the pass as a whole has a deadline
//! (`housekeeper.pass_deadline_s`): past it the pass starts nothing new,
//! says what it left undone, and releases its lock. What no timeout can
//! cut, such as a read of a hung share blocked in the kernel, is left to
//! the watchdog: a thread that ends the whole process [`WATCHDOG_GRACE`]
//! after the deadline if the pass still runs, so the kernel closes the lock
//! file and the next pass is not skipped.

use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// How long after the deadline the watchdog waits before ending the
/// process: longer than any bounded step takes to notice the deadline
/// (programs and hooks are cut at it, then get a couple of seconds to die).
pub const WATCHDOG_GRACE: Duration = Duration::from_secs(10);
/// Exit code of a process ended by the watchdog.
pub const WATCHDOG_EXIT: i32 = 4;
/// How long the watchdog lets its syslog line take before exiting anyway.
const LOG_WAIT: Duration = Duration::from_secs(1);

/// What the running pass is doing, shared with the watchdog.
struct Progress {
    /// The running pass's deadline; `None` between passes.
    deadline: Option<Instant>,
    /// The pass's limit, for messages.
    limit: Duration,
    /// The step under way.
    step: String,
    /// Steps not started because the deadline had passed.
    undone: Vec<String>,
}

static PROGRESS: Mutex<Progress> = Mutex::new(Progress {
    deadline: None,
    limit: Duration::ZERO,
    step: String::new(),
    undone: Vec::new(),
});
static WAKE: Condvar = Condvar::new();
static WATCHDOG: Once = Once::new();

fn progress() -> MutexGuard<'static, Progress> {
    // The data stays consistent whatever panicked: plain assignments.
    PROGRESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pass under way; its deadline ends (and the watchdog stands down) when
/// dropped.
#[derive(Debug)]
pub struct Pass {
    deadline: Instant,
}

/// Starts a pass that may take `limit`, and the watchdog if it is not
/// running yet (one thread serves every pass of a `--watch` process).
pub fn begin(limit: Duration) -> Pass {
    WATCHDOG.call_once(|| {
        if let Err(e) = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(watch)
        {
            crate::log::error(&format!(
                "cannot start the pass watchdog ({e}); a pass blocked in the kernel would hold the lock"
            ));
        }
    });
    let deadline = Instant::now() + limit;
    let mut p = progress();
    p.deadline = Some(deadline);
    p.limit = limit;
    p.step = "starting".into();
    p.undone.clear();
    WAKE.notify_all();
    Pass { deadline }
}

impl Pass {
    /// The instant after which nothing new is started.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the deadline has passed.
    pub fn is_over(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Records that the pass is now at `what` (for the watchdog's message).
    pub fn at(&self, what: impl Into<String>) {
        progress().step = what.into();
    }

    /// Enters step `what` if the deadline has not passed; otherwise records
    /// it as undone and returns false.
    pub fn may_start(&self, what: impl Into<String>) -> bool {
        let what = what.into();
        let over = self.is_over();
        let mut p = progress();
        if over {
            p.undone.push(what);
        } else {
            p.step = what;
        }
        !over
    }

    /// The steps skipped so far because the deadline had passed.
    pub fn undone(&self) -> Vec<String> {
        progress().undone.clone()
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut p = progress();
        p.deadline = None;
        p.step.clear();
        WAKE.notify_all();
    }
}

/// `d`, or the time left before the running pass's deadline if that is
/// shorter (zero once it has passed). Outside a pass: `d`.
pub fn bound(d: Duration) -> Duration {
    match progress().deadline {
        Some(at) => d.min(at.saturating_duration_since(Instant::now())),
        None => d,
    }
}

/// The watchdog thread: sleeps until the running pass's deadline plus
/// [`WATCHDOG_GRACE`], and ends the process if that pass is still running.
fn watch() {
    let mut p = progress();
    loop {
        let Some(at) = p.deadline else {
            p = WAKE.wait(p).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let fire = at + WATCHDOG_GRACE;
        let now = Instant::now();
        if now < fire {
            p = WAKE
                .wait_timeout(p, fire - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        let msg = format!(
            "the pass is still running {} s after its deadline of {} s, blocked in: {}; \
             ending the process so the pass lock is released (the next pass starts afresh)",
            WATCHDOG_GRACE.as_secs(),
            p.limit.as_secs(),
            p.step
        );
        drop(p);
        expire(&msg);
    }
}

/// Says why, then ends the process. The stuck thread may hold the lock of
/// stderr or of syslog, so stderr is written without its lock and syslog is
/// given [`LOG_WAIT`] from a thread of its own.
fn expire(msg: &str) -> ! {
    let line = format!("kloigos-housekeeper: error: {msg}\n");
    let _ = nix::unistd::write(std::io::stderr(), line.as_bytes());
    let (tx, rx) = mpsc::channel();
    let text = msg.to_string();
    let _ = std::thread::Builder::new().spawn(move || {
        crate::log::to_syslog_error(&text);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(LOG_WAIT);
    crate::sys::exit_now(WATCHDOG_EXIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_past_the_deadline_are_recorded_as_undone_and_programs_bounded() {
        let pass = begin(Duration::from_secs(3600));
        assert!(pass.may_start("first"));
        assert!(bound(Duration::from_secs(5)) <= Duration::from_secs(5));
        assert!(pass.undone().is_empty());
        drop(pass);
        assert_eq!(bound(Duration::from_secs(7)), Duration::from_secs(7));
        let pass = begin(Duration::ZERO);
        assert!(pass.is_over());
        assert!(!pass.may_start("facts"));
        assert!(!pass.may_start("hooks"));
        assert_eq!(
            pass.undone(),
            vec!["facts".to_string(), "hooks".to_string()]
        );
        assert_eq!(bound(Duration::from_secs(5)), Duration::ZERO);
        // Dropped before the watchdog's grace runs out: it stands down.
        drop(pass);
        assert_eq!(bound(Duration::from_secs(5)), Duration::from_secs(5));
    }
}
