//! How long a command may wait on the shared directory, and what it has
//! done when it gives up.
//!
//! A hard NFS mount whose server is gone blocks a read in the kernel for
//! as long as the server stays away; no timeout on our side can cut that
//! call short. What a command can do is stop waiting: a watchdog thread
//! (see the CLI) waits for the deadline and, past it, ends the process
//! with a message naming the share, leaving the blocked thread behind.
//!
//! A writer must then leave nothing half-done, and must not be told less
//! than it knows. Writers mark the span from their first write to the
//! confirmed read-back ([`Deadline::writing`]); giving up and starting to
//! write exclude each other under one mutex, so the watchdog knows which
//! of three things is true: nothing was written; a write was under way (it
//! may or may not be on the share: the rename is atomic, so the state is
//! either the old or the new one, never half); or writes were confirmed
//! and nothing more was started. A writer that finds the deadline already
//! passed does not start: the process is about to end.
//!
//! A lock that is busy proves the share answers: waiting for it extends
//! the deadline by the lock wait ([`Deadline::extend`]), so a long queue
//! of writers is not mistaken for a hung server.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the process had done with the share when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// Nothing was written.
    NothingWritten,
    /// A write had started and was not confirmed: it may or may not be there.
    MidWrite,
    /// `n` writes were confirmed, and no other had started.
    AfterWrites(u32),
}

#[derive(Debug, Default)]
struct State {
    /// When the watchdog gives up; `None`: not armed (or disarmed).
    until: Option<Instant>,
    /// The timeout armed, for messages.
    timeout: Duration,
    /// Writes under way (started, not yet confirmed or failed).
    writing: u32,
    /// Writes finished.
    written: u32,
    /// The watchdog gave up: no write may start.
    expired: bool,
}

/// One process's deadline on the share (the CLI uses [`GLOBAL`]).
#[derive(Debug, Default)]
pub struct Deadline {
    state: Mutex<State>,
    changed: Condvar,
}

/// The process's deadline, used by the store's writers and the CLI.
pub static GLOBAL: Deadline = Deadline {
    state: Mutex::new(State {
        until: None,
        timeout: Duration::ZERO,
        writing: 0,
        written: 0,
        expired: false,
    }),
    changed: Condvar::new(),
};

impl Deadline {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the clock: the share must have answered within `timeout`.
    pub fn arm(&self, timeout: Duration) {
        let mut s = self.lock();
        s.until = Some(Instant::now() + timeout);
        s.timeout = timeout;
        self.changed.notify_all();
    }

    /// Stops the clock: the command is done with the share (its answer is
    /// being printed, or it goes on to wait for something else).
    pub fn disarm(&self) {
        let mut s = self.lock();
        s.until = None;
        self.changed.notify_all();
    }

    /// Moves the deadline `by` later (a busy lock: the share answers).
    pub fn extend(&self, by: Duration) {
        let mut s = self.lock();
        if let Some(u) = s.until.as_mut() {
            *u += by;
        }
    }

    /// The timeout armed, with every extension left out.
    pub fn timeout(&self) -> Duration {
        self.lock().timeout
    }

    /// Marks a write from its first byte to its confirmation; the write is
    /// over when the guard drops. Never returns once the deadline has
    /// passed: the watchdog has told the user nothing was written and is
    /// ending the process, so nothing may be.
    pub fn writing(&self) -> Writing<'_> {
        let mut s = self.lock();
        while s.expired {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.writing += 1;
        Writing(self)
    }

    /// Waits until the deadline passes (`Some`: what had been done, and no
    /// write will start from now on) or the clock is stopped (`None`).
    pub fn wait_expiry(&self) -> Option<GaveUp> {
        let mut s = self.lock();
        loop {
            let until = s.until?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.expired = true;
                return Some(match (s.writing, s.written) {
                    (0, 0) => GaveUp::NothingWritten,
                    (0, n) => GaveUp::AfterWrites(n),
                    _ => GaveUp::MidWrite,
                });
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A write under way (see [`Deadline::writing`]); dropped without
/// [`Writing::confirm`], the write failed and its caller reports that.
#[derive(Debug)]
pub struct Writing<'a>(&'a Deadline);

impl Writing<'_> {
    /// The write is on the share: a fresh read showed it.
    pub fn confirm(self) {
        self.0.lock().written += 1;
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.lock().writing -= 1;
    }
}

/// The message for a command that gave up on the share at `share` after
/// `timeout`, having done `what`.
pub fn message(share: &std::path::Path, timeout: Duration, what: GaveUp) -> String {
    let head = format!(
        "{}: the shared directory did not answer within {} s",
        share.display(),
        timeout.as_secs_f64()
    );
    let tail = "is the file server up and the share mounted? see `kloigos doctor`";
    match what {
        GaveUp::NothingWritten => format!("{head}; gave up, nothing was changed — {tail}"),
        GaveUp::MidWrite => format!(
            "{head} while this change was being written; it may or may not have been made: check with `kloigos list` once the share answers — {tail}"
        ),
        GaveUp::AfterWrites(n) => format!(
            "{head}; gave up after {n} confirmed change(s), which stand (check with `kloigos list`) — {tail}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_unarmed_or_disarmed_deadline_never_fires() {
        let d = Deadline::default();
        assert_eq!(d.wait_expiry(), None);
        d.arm(Duration::from_secs(3600));
        let d = Arc::new(d);
        let w = {
            let d = d.clone();
            std::thread::spawn(move || d.wait_expiry())
        };
        d.disarm();
        assert_eq!(w.join().unwrap(), None);
    }

    #[test]
    fn expiry_says_what_was_written() {
        let d = Deadline::default();
        d.arm(Duration::ZERO);
        assert_eq!(d.wait_expiry(), Some(GaveUp::NothingWritten));

        let d = Deadline::default();
        d.arm(Duration::from_millis(1));
        let w = d.writing();
        assert_eq!(d.wait_expiry(), Some(GaveUp::MidWrite));
        drop(w);

        let d = Deadline::default();
        d.writing().confirm();
        // A failed write is its caller's to report: not counted as made.
        drop(d.writing());
        d.arm(Duration::ZERO);
        assert_eq!(d.wait_expiry(), Some(GaveUp::AfterWrites(1)));
    }

    #[test]
    fn no_write_starts_once_the_deadline_passed() {
        let d = Arc::new(Deadline::default());
        d.arm(Duration::ZERO);
        assert_eq!(d.wait_expiry(), Some(GaveUp::NothingWritten));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let d = d.clone();
            std::thread::spawn(move || {
                let _w = d.writing();
                let _ = tx.send(());
            })
        };
        // The writer stays parked: the process would be ending now.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        assert!(!writer.is_finished());
        // (Left parked; the test process ends it.)
    }

    #[test]
    fn a_busy_lock_pushes_the_deadline_back() {
        let d = Arc::new(Deadline::default());
        d.arm(Duration::from_millis(50));
        d.extend(Duration::from_secs(3600));
        let w = {
            let d = d.clone();
            std::thread::spawn(move || d.wait_expiry())
        };
        // Still waiting well past the first deadline; then stopped.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!w.is_finished());
        d.disarm();
        assert_eq!(w.join().unwrap(), None);
        assert_eq!(d.timeout(), Duration::from_millis(50));
    }

    #[test]
    fn messages_name_the_share_and_doctor() {
        let p = std::path::Path::new("/nfs/kloigos");
        let t = Duration::from_millis(1500);
        let m = message(p, t, GaveUp::NothingWritten);
        assert!(
            m.starts_with("/nfs/kloigos: the shared directory did not answer within 1.5 s"),
            "{m}"
        );
        assert!(
            m.contains("nothing was changed") && m.contains("kloigos doctor"),
            "{m}"
        );
        let m = message(p, t, GaveUp::MidWrite);
        assert!(
            m.contains("may or may not have been made") && m.contains("kloigos list"),
            "{m}"
        );
        let m = message(p, t, GaveUp::AfterWrites(2));
        assert!(m.contains("2 confirmed change(s)"), "{m}");
    }
}
