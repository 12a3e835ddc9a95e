//! A rogue writer: another node's kloigos whose lock ours did not see (a
//! share mounted with `local_lock=flock`), played deterministically.
//!
//! A fanotify permission mark on a node's directory stops every open of
//! that directory until this process answers. A writer opens the directory
//! twice: to sweep stray tmp files before it writes, and to fsync it after
//! the rename of `state.json`. At each open the rogue reads `state.json`;
//! once it differs from what the rogue started with (the writer's rename
//! is done), it renames its own `state.json` (the old content) over it,
//! then lets the open go on. The writer's read-back then comes after the
//! rogue's write, every time, with no timing involved.
//!
//! [`Rogue::stall`] plays a share that stops answering right after the
//! rename instead: it holds that open unanswered until it is dropped.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};

/// What the rogue does at the first open after the rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Renames the old `state.json` back over the writer's.
    Replace,
    /// Leaves the open unanswered until the rogue is dropped.
    Stall,
}

/// A running rogue writer on one node directory; stops when dropped.
pub struct Rogue {
    stop: Arc<AtomicBool>,
    overwrote: Arc<Mutex<usize>>,
    thread: Option<JoinHandle<()>>,
}

impl Rogue {
    /// Watches `node_dir`; the first time its `state.json` has changed, puts
    /// back what it holds now. `Err` says why this kernel cannot (no
    /// fanotify permission events), for the test to skip.
    pub fn new(node_dir: &Path) -> Result<Rogue, String> {
        Rogue::start(node_dir, Mode::Replace)
    }

    /// Watches `node_dir`; the first time its `state.json` has changed,
    /// holds the open that saw it until dropped.
    pub fn stall(node_dir: &Path) -> Result<Rogue, String> {
        Rogue::start(node_dir, Mode::Stall)
    }

    /// How many opens the rogue held (see [`Rogue::stall`]).
    pub fn stalled(&self) -> usize {
        self.overwrote()
    }

    fn start(node_dir: &Path, mode: Mode) -> Result<Rogue, String> {
        let state = node_dir.join("state.json");
        let original = std::fs::read(&state).expect("read state.json");
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| format!("fanotify_init: {e} (it needs root and a kernel with fanotify)"))?;
        fan.mark(
            MarkFlags::FAN_MARK_ADD,
            MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_ONDIR,
            nix::fcntl::AT_FDCWD,
            Some(node_dir),
        )
        .map_err(|e| {
            format!(
                "fanotify_mark FAN_OPEN_PERM: {e} (the kernel needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let overwrote = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, overwrote, dir) = (stop.clone(), overwrote.clone(), node_dir.to_path_buf());
            std::thread::spawn(move || {
                serve(&fan, mode, &dir, &state, &original, &stop, &overwrote)
            })
        };
        Ok(Rogue {
            stop,
            overwrote,
            thread: Some(thread),
        })
    }

    /// How many times the rogue replaced `state.json`.
    pub fn overwrote(&self) -> usize {
        *self.overwrote.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers every open of the directory (always allowing it, so no writer
/// is left blocked), replacing `state` once first when it has changed.
fn serve(
    fan: &Fanotify,
    mode: Mode,
    dir: &Path,
    state: &Path,
    original: &[u8],
    stop: &AtomicBool,
    overwrote: &Mutex<usize>,
) {
    let mut held = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(fan.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(50u8)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => panic!("poll fanotify: {e}"),
        }
        let events = match fan.read_events() {
            Ok(ev) => ev,
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => panic!("read fanotify: {e}"),
        };
        for ev in events {
            let mut n = overwrote.lock().unwrap_or_else(|e| e.into_inner());
            if *n == 0 && std::fs::read(state).is_ok_and(|now| now != original) {
                *n += 1;
                if mode == Mode::Stall {
                    held.push(ev);
                    continue;
                }
                let tmp = dir.join("state.json.rogue");
                std::fs::write(&tmp, original).expect("rogue tmp file");
                std::fs::rename(&tmp, state).expect("rogue rename");
            }
            drop(n);
            allow(fan, &ev);
        }
    }
    for ev in &held {
        allow(fan, ev);
    }
}

/// Lets the open of `ev` go on.
fn allow(fan: &Fanotify, ev: &nix::sys::fanotify::FanotifyEvent) {
    if let Some(fd) = ev.fd() {
        // The opener may be gone already (then there is no one to answer).
        let _ = fan.write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW));
    }
}
