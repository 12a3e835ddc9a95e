//! Security events to syslog, facility authpriv, through libc directly (no
//! logger crate, no global state of ours).
//!
//! The module calls neither `openlog` nor `closelog`: both act on the host
//! process's one syslog connection (sshd's ident and its open socket), so,
//! like Linux-PAM's own `pam_syslog`, each line carries its facility and a
//! `pam_kloigos(service:account)` prefix instead. When no syslog daemon
//! listens (`/dev/log` absent), libc drops the line: logging never fails a
//! login.

use std::ffi::CString;

/// Longest message sent (bytes), like sudo-rs: a line a syslog daemon keeps whole.
pub const MAX_LINE: usize = 960;

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

/// Cuts `line` to at most `max` bytes on a character boundary and removes
/// control characters (no log injection through a user or file name).
pub fn sanitize(line: &str, max: usize) -> String {
    let mut out = String::with_capacity(line.len().min(max));
    for c in line.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Sends `prefix: line` at `priority` to the authpriv facility.
pub fn log(priority: Priority, prefix: &str, line: &str) {
    let text = sanitize(&format!("{prefix}: {line}"), MAX_LINE);
    // sanitize() replaced every control character, NUL included.
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
        assert_eq!(sanitize("a\nb\0c", 100), "a b c");
        assert_eq!(sanitize("ééé", 5), "éé");
        assert_eq!(sanitize(&"x".repeat(5000), MAX_LINE).len(), MAX_LINE);
    }

    #[test]
    fn logging_without_a_syslog_daemon_is_harmless() {
        log(
            Priority::Info,
            "pam_kloigos(test:account)",
            "unit test line",
        );
    }
}
