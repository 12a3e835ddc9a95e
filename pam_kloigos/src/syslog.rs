//! Security events to syslog, facility authpriv, with no logger crate.
//!
//! A decision's lines go on a datagram connection to the syslog daemon's
//! socket, `/dev/log` ([`Log::open`]), opened early: the PAM hook opens it
//! while the reader thread reads the share. The decision's line is then
//! sent by that reader thread, its reads done, while the PAM call returns,
//! and pam_end waits until it is sent (see the crate's `LogSent`), so a
//! login does not wait for the daemon to wake up, and no line is lost to a
//! program that exits after pam_end. The connection is kept for the next
//! decision of the same process, as libc keeps its own, which is the one
//! piece of state of ours: closing it cost each login a few microseconds,
//! and a process exit closes it for free. A send that fails (the daemon
//! restarted) drops it, and the next decision connects again.
//!
//! Lines are framed as libc's `syslog(3)` frames them (`<PRI>Mmm dd
//! hh:mm:ss ident[pid]: text`, ident being the program's short name), so
//! they read like the host's own. libc's `openlog`/`closelog` are never
//! called: both act on the host process's one syslog connection (sshd's
//! ident and flags), which is why, like Linux-PAM's own `pam_syslog`, each
//! line carries its facility and a `pam_kloigos(service:account)` prefix.
//!
//! When no daemon listens (no `/dev/log`), lines are dropped, as libc drops
//! them for a process that did not ask for `LOG_CONS`; when `/dev/log` is
//! a stream socket, or a send fails, the line goes through libc's
//! `syslog(3)`, which copes with both. Logging never fails a login, and a
//! stuck daemon holds a login (or its pam_end) up for at most
//! [`SEND_TIMEOUT`].

use std::borrow::Cow;
use std::ffi::{c_char, CStr, CString};
use std::fmt::Write as _;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Longest message sent (bytes), like sudo-rs: a line a syslog daemon keeps whole.
pub const MAX_LINE: usize = 960;

/// The syslog daemon's socket.
const DEV_LOG: &str = "/dev/log";

/// How long a send may wait for a daemon whose queue is full.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// Syslog severities the module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The module could not work as configured.
    Err,
    /// A fallback or a surprising setup (not a node, share unreadable).
    Warning,
    /// A denial.
    Notice,
    /// An ordinary decision.
    Info,
}

impl Priority {
    fn raw(self) -> libc::c_int {
        match self {
            Priority::Err => libc::LOG_ERR,
            Priority::Warning => libc::LOG_WARNING,
            Priority::Notice => libc::LOG_NOTICE,
            Priority::Info => libc::LOG_INFO,
        }
    }
}

/// Where a decision's lines go.
#[derive(Debug)]
pub struct Log {
    to: To,
    /// Where the connection goes back when the decision is done.
    keep: Option<&'static Kept>,
}

/// Where lines go.
#[derive(Debug)]
enum To {
    /// A datagram connection to the daemon.
    Daemon(UnixDatagram),
    /// No daemon listens: lines are dropped.
    Nobody,
    /// Through libc's `syslog(3)` (a stream socket, or a refused connection).
    Libc,
}

/// A connection kept between decisions.
#[derive(Debug)]
pub struct Kept(Mutex<Option<UnixDatagram>>);

impl Kept {
    /// Nothing kept yet.
    pub const fn new() -> Kept {
        Kept(Mutex::new(None))
    }

    fn take(&self) -> Option<UnixDatagram> {
        // Only take and put run under the lock, and neither panics.
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn put(&self, socket: UnixDatagram) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Two decisions at once in one process: the second connection closes.
        slot.get_or_insert(socket);
    }
}

impl Default for Kept {
    fn default() -> Kept {
        Kept::new()
    }
}

/// The connection to `/dev/log`, kept for the life of the process.
static DEV_LOG_KEPT: Kept = Kept::new();

impl Log {
    /// The connection to `/dev/log`: the one kept from an earlier decision,
    /// else a new one.
    pub fn open() -> Log {
        Log::open_kept(DEV_LOG, &DEV_LOG_KEPT)
    }

    /// The connection to the syslog socket at `path` kept in `kept`, else
    /// a new one, to be kept there once this decision is done.
    pub fn open_kept(path: &str, kept: &'static Kept) -> Log {
        match kept.take() {
            Some(s) => Log {
                to: To::Daemon(s),
                keep: Some(kept),
            },
            None => {
                let mut log = Log::open_at(path);
                log.keep = Some(kept);
                log
            }
        }
    }

    /// A new connection to the syslog socket at `path`, closed when done
    /// (tests use their own socket).
    pub fn open_at(path: &str) -> Log {
        let connected = UnixDatagram::unbound().and_then(|s| {
            s.connect(path)?;
            s.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(s)
        });
        let to = match connected {
            Ok(s) => To::Daemon(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => To::Nobody,
            Err(_) => To::Libc,
        };
        Log { to, keep: None }
    }

    /// Sends `prefix: line` at `priority` to the authpriv facility.
    pub fn send(&mut self, priority: Priority, prefix: &str, line: &str) {
        let parts = [prefix, ": ", line];
        match &self.to {
            To::Nobody => {}
            To::Daemon(s) => {
                let framed = frame(priority, &parts);
                if s.send(framed.line.as_bytes()).is_err() {
                    // Not kept: the next decision connects again.
                    self.keep = None;
                    libc_syslog(priority, framed.text());
                }
            }
            To::Libc => {
                let mut text = String::new();
                sanitize_into(&mut text, &parts, MAX_LINE);
                libc_syslog(priority, &text);
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let (Some(kept), To::Daemon(s)) =
            (self.keep, std::mem::replace(&mut self.to, To::Nobody))
        {
            kept.put(s);
        }
    }
}

/// Sends one line on a connection of its own (for the rare lines logged
/// outside a decision).
pub fn log(priority: Priority, prefix: &str, line: &str) {
    Log::open().send(priority, prefix, line);
}

/// Appends the concatenation of `parts` to `out`, cut to at most `max`
/// bytes on a character boundary, control characters made spaces (no log
/// injection through a user or file name).
fn sanitize_into(out: &mut String, parts: &[&str], max: usize) {
    let start = out.len();
    out.reserve(parts.iter().map(|p| p.len()).sum::<usize>().min(max));
    for c in parts.iter().flat_map(|p| p.chars()) {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() - start + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
}

/// A line framed for the daemon, and where its text starts.
pub struct Framed {
    /// The whole datagram.
    pub line: String,
    text_at: usize,
}

impl Framed {
    /// The cleaned text, without the frame (for libc's syslog, which frames it).
    pub fn text(&self) -> &str {
        &self.line[self.text_at..]
    }
}

/// The concatenation of `parts`, cleaned as [`sanitize_into`] cleans it and
/// framed as libc's syslog(3) frames one: priority with the authpriv
/// facility, local time, the program's short name and pid. One buffer.
pub fn frame(priority: Priority, parts: &[&str]) -> Framed {
    let pri = libc::LOG_AUTHPRIV | priority.raw();
    let mut line = String::with_capacity(MAX_LINE + 64);
    let _ = write!(line, "<{pri}>");
    local_time(&mut line);
    let _ = write!(line, " {}[{}]: ", ident(), std::process::id());
    let text_at = line.len();
    sanitize_into(&mut line, parts, MAX_LINE);
    Framed { line, text_at }
}

/// Appends now in local time as syslog writes it: `Nov  3 09:05:01`.
fn local_time(out: &mut String) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time(NULL) only reads the clock.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: tm is plain data that localtime_r fills in; both pointers are
    // valid for the call. localtime_r is thread-safe (it is what libc's own
    // syslog uses).
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            out.push_str("Jan  1 00:00:00");
            return;
        }
        tm
    };
    let month = MONTHS.get(tm.tm_mon as usize).copied().unwrap_or("Jan");
    let _ = write!(
        out,
        "{month} {:>2} {:02}:{:02}:{:02}",
        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
    );
}

unsafe extern "C" {
    /// glibc's short program name, the ident of libc's syslog(3) when the
    /// program has not set one.
    static program_invocation_short_name: *const c_char;
}

/// The program's short name, as libc's syslog(3) names it.
fn ident() -> Cow<'static, str> {
    // SAFETY: glibc sets this pointer before any code of ours runs and
    // points it at a NUL-terminated string that lives as long as the
    // process; it is read, never written.
    let p = unsafe { program_invocation_short_name };
    if p.is_null() {
        return Cow::Borrowed("pam_kloigos");
    }
    // SAFETY: non-null, NUL-terminated, alive for the whole process (above).
    unsafe { CStr::from_ptr(p) }.to_string_lossy()
}

/// Sends `text` through libc's syslog(3).
fn libc_syslog(priority: Priority, text: &str) {
    // sanitize_into() replaced every control character, NUL included.
    let Ok(msg) = CString::new(text) else { return };
    // SAFETY: the format is a literal "%s" consuming exactly one argument,
    // a valid NUL-terminated string that outlives the call; syslog(3) is
    // thread-safe in glibc and has no other precondition.
    unsafe {
        libc::syslog(
            libc::LOG_AUTHPRIV | priority.raw(),
            c"%s".as_ptr(),
            msg.as_ptr(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_capped_and_cleaned() {
        let sanitize = |parts: &[&str], max| {
            let mut out = String::from("kept ");
            sanitize_into(&mut out, parts, max);
            out
        };
        assert_eq!(sanitize(&["a\nb", "\0c"], 100), "kept a b c");
        assert_eq!(sanitize(&["ééé"], 5), "kept éé");
        assert_eq!(sanitize(&[&"x".repeat(5000)], MAX_LINE).len(), 5 + MAX_LINE);
    }

    #[test]
    fn lines_are_framed_as_libc_frames_them() {
        let framed = frame(
            Priority::Notice,
            &["pam_kloigos(sshd:account)", ": user=bob\n"],
        );
        assert_eq!(framed.text(), "pam_kloigos(sshd:account): user=bob ");
        let line = framed.line;
        // authpriv (10 << 3) | notice (5)
        let rest = line.strip_prefix("<85>").expect(&line);
        // "Mmm dd hh:mm:ss " then "ident[pid]: text"
        let (stamp, tail) = rest.split_at(16);
        assert!(
            stamp.ends_with(' ') && stamp.as_bytes()[9] == b':',
            "{line}"
        );
        let want = format!(
            "[{}]: pam_kloigos(sshd:account): user=bob",
            std::process::id()
        );
        assert!(tail.ends_with(&format!("{want} ")), "{line}");
        assert!(!tail.starts_with('['), "no ident: {line}");
    }

    #[test]
    fn a_listening_daemon_gets_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let daemon = UnixDatagram::bind(&path).unwrap();
        let mut log = Log::open_at(path.to_str().unwrap());
        assert!(matches!(log.to, To::Daemon(_)), "{log:?}");
        log.send(
            Priority::Info,
            "pam_kloigos(test:account)",
            "user=alice\nresult=allow",
        );
        let mut buf = [0u8; 2048];
        let n = daemon.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("<86>"), "{got}");
        assert!(
            got.ends_with(": pam_kloigos(test:account): user=alice result=allow"),
            "{got}"
        );
    }

    #[test]
    fn without_a_daemon_lines_are_dropped_and_a_stream_socket_goes_to_libc() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none");
        let mut log = Log::open_at(missing.to_str().unwrap());
        assert!(matches!(log.to, To::Nobody), "{log:?}");
        log.send(Priority::Info, "pam_kloigos(test:account)", "dropped");
        let stream = dir.path().join("stream");
        let _listener = std::os::unix::net::UnixListener::bind(&stream).unwrap();
        let log = Log::open_at(stream.to_str().unwrap());
        assert!(matches!(log.to, To::Libc), "{log:?}");
    }

    /// The fd of a log's daemon connection.
    fn fd(log: &Log) -> i32 {
        use std::os::fd::AsRawFd;
        match &log.to {
            To::Daemon(s) => s.as_raw_fd(),
            other => panic!("not connected: {other:?}"),
        }
    }

    #[test]
    fn the_connection_is_kept_for_the_next_decision_until_a_send_fails() {
        static KEPT: Kept = Kept::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let path_str = path.to_str().unwrap();
        let recv = |daemon: &UnixDatagram| {
            let mut buf = [0u8; 2048];
            let n = daemon.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let daemon = UnixDatagram::bind(&path).unwrap();
        let mut first = Log::open_kept(path_str, &KEPT);
        first.send(Priority::Info, "p", "one");
        let fd1 = fd(&first);
        drop(first);
        assert!(recv(&daemon).ends_with("p: one"));
        // The next decision gets the same connection; while it holds it,
        // nothing is kept.
        let mut second = Log::open_kept(path_str, &KEPT);
        assert_eq!(fd(&second), fd1);
        assert!(KEPT.take().is_none());
        second.send(Priority::Info, "p", "two");
        drop(second);
        assert!(recv(&daemon).ends_with("p: two"));
        // The daemon restarts: the kept connection's send fails (the line
        // goes to libc) and it is not kept; the next decision connects to
        // the new daemon.
        drop(daemon);
        std::fs::remove_file(&path).unwrap();
        let daemon = UnixDatagram::bind(&path).unwrap();
        let mut third = Log::open_kept(path_str, &KEPT);
        assert_eq!(fd(&third), fd1);
        third.send(Priority::Info, "p", "to libc");
        assert!(third.keep.is_none());
        drop(third);
        assert!(KEPT.take().is_none());
        let mut fourth = Log::open_kept(path_str, &KEPT);
        fourth.send(Priority::Info, "p", "four");
        drop(fourth);
        assert!(recv(&daemon).ends_with("p: four"));
        assert!(KEPT.take().is_some());
    }
}
