//! Waiting on conditions by polling them, never by sleeping a fixed time.

use std::time::{Duration, Instant};

/// Polls `cond` every few milliseconds until it holds or `timeout` passes;
/// returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits up to 50 ms for `fd` to be readable, so that a server loop can
/// check its stop flag between waits; `what` names the descriptor if the
/// wait itself fails.
pub fn readable(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(50u8)) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => false,
        Ok(_) => true,
        Err(e) => panic!("poll {what}: {e}"),
    }
}
