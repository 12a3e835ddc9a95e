//! A FUSE file system served by the test itself, speaking the kernel's
//! protocol on `/dev/fuse` directly (no libfuse, no daemon package), for the
//! failures a real NFS share shows: a server that stops answering, so every
//! access blocks the way a hard mount does, and a server that fails every
//! request with EIO, as a soft mount does.
//!
//! Every kernel of this kind has FUSE, unlike autofs or the NFS client, so
//! these tests run on any machine the suite runs on.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// What the server does with every request after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Never answers: the caller blocks until it is killed (the kernel then
    /// sends an interrupt, answered with EINTR so the caller can exit) or the
    /// mount goes away. A hard NFS mount whose server died.
    Hang,
    /// Answers every request with EIO: a soft mount whose server timed out.
    Eio,
}

/// One request the server read, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A name looked up in the root directory.
    Lookup(String),
    /// The kernel interrupted a request we had not answered (its caller got
    /// a signal).
    Interrupt,
    /// Any other request, by opcode.
    Other(u32),
}

/// A mounted FUSE file system served by a thread of this process. Dropping
/// it unmounts it and closes the connection, which ends every blocked call
/// with an error.
pub struct FuseMount {
    /// The mount point.
    pub path: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    dev: Option<Arc<File>>,
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;
/// `struct fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, extlen, padding.
const IN_HEADER: usize = 40;
/// The kernel's minimum read buffer for /dev/fuse is 8 KiB plus a page.
const BUF: usize = 1 << 20;

impl FuseMount {
    /// Mounts a server with `behaviour` on `path` (an existing empty directory).
    pub fn new(path: &Path, behaviour: Behaviour) -> FuseMount {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap_or_else(|e| {
                panic!("/dev/fuse: {e} (the kernel's fuse module is needed: `modprobe fuse`)")
            });
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        mount(
            Some("kloigos-test"),
            path,
            Some("fuse.kloigos-test"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount -t fuse on {}: {e}", path.display()));
        let dev = Arc::new(dev);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (dev, seen, stop) = (dev.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || serve(&dev, behaviour, &seen, &stop))
        };
        FuseMount {
            path: path.to_path_buf(),
            seen,
            stop,
            server: Some(server),
            dev: Some(dev),
        }
    }

    /// The requests read so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        // Closing the last /dev/fuse handle aborts the connection: anything
        // still waiting on this server fails with ENOTCONN and goes on.
        self.dev.take();
    }
}

/// Reads requests until told to stop; answers them as `behaviour` says.
fn serve(dev: &File, behaviour: Behaviour, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; BUF];
    let mut reader = dev;
    while !stop.load(Ordering::SeqCst) {
        if !crate::poll::readable(dev.as_fd(), "/dev/fuse") {
            continue;
        }
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            // ENOENT: the request was interrupted before we read it; ENODEV: unmounted.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => panic!("read /dev/fuse: {e}"),
        };
        assert!(n >= IN_HEADER, "short FUSE request: {n} bytes");
        let opcode = u32_at(&buf, 4);
        let unique = u64_at(&buf, 8);
        let body = &buf[IN_HEADER..n];
        let record = |s: Seen| seen.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        match opcode {
            FUSE_INIT => reply(dev, unique, 0, &init_out(body)),
            FUSE_FORGET | FUSE_BATCH_FORGET => {}
            FUSE_INTERRUPT => {
                record(Seen::Interrupt);
                // Let the interrupted caller go: it is being killed.
                reply(dev, u64_at(body, 0), -libc::EINTR, &[]);
            }
            FUSE_DESTROY => {
                reply(dev, unique, 0, &[]);
                return;
            }
            _ => {
                record(if opcode == FUSE_LOOKUP {
                    let name = body.split(|&b| b == 0).next().unwrap_or_default();
                    Seen::Lookup(String::from_utf8_lossy(name).into_owned())
                } else {
                    Seen::Other(opcode)
                });
                if behaviour == Behaviour::Eio {
                    reply(dev, unique, -libc::EIO, &[]);
                }
            }
        }
    }
}

/// `struct fuse_init_out` (64 bytes since protocol 7.23) for the kernel's `fuse_init_in`.
fn init_out(init_in: &[u8]) -> Vec<u8> {
    let major = u32_at(init_in, 0);
    assert_eq!(major, 7, "FUSE protocol major {major}, expected 7");
    let minor = u32_at(init_in, 4).min(31);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&7u32.to_ne_bytes());
    out.extend_from_slice(&minor.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // max_readahead
    out.extend_from_slice(&0u32.to_ne_bytes()); // flags: none asked for
    out.extend_from_slice(&1u16.to_ne_bytes()); // max_background
    out.extend_from_slice(&1u16.to_ne_bytes()); // congestion_threshold
    out.extend_from_slice(&4096u32.to_ne_bytes()); // max_write
    out.extend_from_slice(&1u32.to_ne_bytes()); // time_gran
    out.resize(64, 0);
    out
}

/// Writes one answer (`struct fuse_out_header` + body); a request the
/// kernel already gave up on (ENOENT) needs none.
fn reply(mut dev: &File, unique: u64, error: i32, body: &[u8]) {
    let len = u32::try_from(16 + body.len()).expect("small reply");
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&error.to_ne_bytes());
    msg.extend_from_slice(&unique.to_ne_bytes());
    msg.extend_from_slice(body);
    match dev.write(&msg) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => panic!("write /dev/fuse: {e}"),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Whether process `pid` is asleep in the kernel right now (state S or D in
/// /proc/PID/stat): with [`Behaviour::Hang`], a process blocked on the mount.
pub fn is_blocked(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name's closing parenthesis.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('S') | Some('D'))
}

/// How long the tests wait for a process to block, or for the server to see
/// a request: generous, since only a hang makes it time out.
pub const PATIENCE: Duration = Duration::from_secs(20);
