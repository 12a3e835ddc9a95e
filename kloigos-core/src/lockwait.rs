//! Waiting for a node's lock: one try, then one blocking `flock` on a
//! helper thread, given up at a deadline.
//!
//! A waiter that polls makes one lock call per try, and over NFS each is a
//! round trip to the server; waiters that poll also win in no particular
//! order, so one can starve while others come and go. A blocking `flock`
//! instead queues the request where every waiter is seen: the local
//! kernel's list of blocked locks, or on NFS the server's (NLM on NFSv3,
//! which grants by callback; NFSv4.1+, which notifies the waiter). Waiters
//! are then served roughly in arrival order, with one or two lock calls
//! each.
//!
//! `flock` has no timed form, so the blocking call runs on a helper thread
//! and the caller waits for it at most its deadline. A helper that gets the
//! lock after its caller gave up closes the file at once, which releases
//! the lock: an abandoned waiter never holds it.

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;

/// Lock calls made by this process (tries and blocking calls), for
/// measurements.
static ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// How many lock calls this process has made so far.
pub fn attempts() -> u64 {
    ATTEMPTS.load(Ordering::Relaxed)
}

/// The helper thread's stack: it makes one system call.
const HELPER_STACK: usize = 64 * 1024;

/// What the helper thread hands back, under one mutex so that giving up
/// and getting the lock cannot both happen.
#[derive(Default)]
struct Handoff {
    /// The caller stopped waiting: a lock got later must be dropped.
    abandoned: bool,
    /// The helper's answer.
    done: Option<io::Result<File>>,
}

/// Takes an exclusive `flock` on `file` within `wait`: `Ok(Some(file))`
/// locked, `Ok(None)` when the wait ran out, `Err` for any other failure
/// (ENOLCK included: callers name it).
pub fn lock_within(file: File, wait: Duration) -> io::Result<Option<File>> {
    ATTEMPTS.fetch_add(1, Ordering::Relaxed);
    match file.try_lock() {
        Ok(()) => return Ok(Some(file)),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(e),
    }
    if wait.is_zero() {
        return Ok(None);
    }
    // The share answered (the lock is busy): waiting for it is not a hang.
    crate::deadline::GLOBAL.extend(wait);
    let deadline = Instant::now() + wait;
    let shared = Arc::new((Mutex::new(Handoff::default()), Condvar::new()));
    let theirs = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("kloigos-lock".into())
        .stack_size(HELPER_STACK)
        .spawn(move || {
            ATTEMPTS.fetch_add(1, Ordering::Relaxed);
            let got = file.lock().map(|()| file);
            let (m, cv) = &*theirs;
            let mut h = m.lock().unwrap_or_else(|e| e.into_inner());
            if h.abandoned {
                // Closing the file releases the lock we got too late.
                drop(got);
                return;
            }
            h.done = Some(got);
            cv.notify_one();
        })?;
    let (m, cv) = &*shared;
    let mut h = m.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(r) = h.done.take() {
            return r.map(Some);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            h.abandoned = true;
            return Ok(None);
        }
        h = cv
            .wait_timeout(h, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// The error for a failed `flock` of the lock file at `path`: ENOLCK (the
/// NFS client got no lock from the server) is [`Error::NoLocks`], which
/// points at lockd/statd and the mount options; any other keeps its errno.
pub fn lock_error(path: &Path, e: &io::Error) -> Error {
    if e.raw_os_error() == Some(nix::libc::ENOLCK) {
        Error::NoLocks { path: path.into() }
    } else {
        Error::io(path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn open(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    #[test]
    fn enolck_is_its_own_error_pointing_at_lockd_and_the_mount() {
        let p = Path::new("/nfs/kloigos/nodes/n1/lock");
        let e = lock_error(p, &io::Error::from_raw_os_error(nix::libc::ENOLCK));
        assert!(matches!(&e, Error::NoLocks { path } if path == p), "{e:?}");
        assert_eq!(e.kind(), crate::ErrorKind::Storage);
        let msg = e.to_string();
        for part in [
            "no locks available (ENOLCK)",
            "rpc.statd",
            "lockd",
            "mount options",
            "kloigos doctor",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        let other = lock_error(p, &io::Error::from_raw_os_error(nix::libc::EIO));
        assert_eq!(other.errno(), Some(nix::libc::EIO));
    }

    /// A lock file in a fresh temporary directory, its path, and a handle
    /// holding its lock.
    fn held_lock() -> (tempfile::TempDir, std::path::PathBuf, File) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("lock");
        let held = open(&p);
        held.lock().unwrap();
        (t, p, held)
    }

    #[test]
    fn a_free_lock_is_taken_with_one_call() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("lock");
        let f = lock_within(open(&p), Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert!(matches!(open(&p).try_lock(), Err(TryLockError::WouldBlock)));
        drop(f);
        open(&p).try_lock().unwrap();
    }

    #[test]
    fn a_waiter_that_gave_up_never_holds_the_lock() {
        let (_t, p, held) = held_lock();
        assert!(lock_within(open(&p), Duration::from_millis(30))
            .unwrap()
            .is_none());
        // The helper is still blocked in flock; it gets the lock when we
        // release it, sees it was abandoned and lets go.
        drop(held);
        let next = lock_within(open(&p), Duration::from_secs(60))
            .unwrap()
            .expect("the abandoned helper kept the lock");
        drop(next);
    }

    /// How many requests wait, blocked, for a flock on the file at `p`
    /// (`->` lines of /proc/locks, which name the file by device and inode).
    fn queued(p: &std::path::Path) -> usize {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        let dev = nix::sys::stat::major(m.dev());
        let min = nix::sys::stat::minor(m.dev());
        let id = format!(" {dev:02x}:{min:02x}:{} ", m.ino());
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter(|l| l.contains("-> FLOCK") && l.contains(&id))
            .count()
    }

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let (_t, p, held) = held_lock();
        let (tx, rx) = mpsc::channel();
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (p2, tx) = (p.clone(), tx.clone());
            waiters.push(std::thread::spawn(move || {
                let f = lock_within(open(&p2), Duration::from_secs(120))
                    .unwrap()
                    .unwrap();
                // Sent while holding the lock: the channel's order is the lock's.
                tx.send(i).unwrap();
                drop(f);
            }));
            // The next waiter comes once this one is queued in the kernel.
            let until = Instant::now() + Duration::from_secs(60);
            while queued(&p) < i + 1 {
                assert!(Instant::now() < until, "waiter {i} never queued");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(held);
        for w in waiters {
            w.join().unwrap();
        }
        let order: Vec<usize> = rx.try_iter().collect();
        assert_eq!(order, vec![0, 1, 2, 3]);
    }
}
