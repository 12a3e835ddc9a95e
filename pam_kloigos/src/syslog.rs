//! Security events to syslog, facility authpriv, with no logger crate: one
//! plain `syslog(3)` call per line, as Linux-PAM's own `pam_syslog` makes.
//!
//! `openlog`/`closelog` are never called: both act on the host process's
//! one syslog connection (sshd's ident and flags). So each line carries its
//! facility and a `pam_kloigos(service:account)` prefix, and libc frames it
//! as the host's own lines (`<PRI>Mmm dd hh:mm:ss ident[pid]: text`).
//! Without a daemon listening, libc drops the line; logging never fails a
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

/// `prefix: text`, cut to [`MAX_LINE`] bytes on a character boundary, NUL
/// bytes (which would end the C string) shown as `\0`.
pub fn message(prefix: &str, text: &str) -> CString {
    let mut line = format!("{prefix}: {text}");
    if line.contains('\0') {
        line = line.replace('\0', "\\0");
    }
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    // No NUL is left in it.
    CString::new(line).unwrap_or_default()
}

/// Logs `text` with `prefix` at `pri` to authpriv.
pub fn log(pri: Priority, prefix: &str, text: &str) {
    let msg = message(prefix, text);
    // SAFETY: the format is the literal "%s" and its one argument a
    // NUL-terminated string that outlives the call; syslog(3) is
    // thread-safe and needs no openlog.
    unsafe { libc::syslog(libc::LOG_AUTHPRIV | pri.raw(), c"%s".as_ptr(), msg.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_and_keep_no_nul() {
        let m = message("pam_kloigos(sshd:account)", "user=\"a\0b\"");
        assert_eq!(
            m.to_str().unwrap(),
            "pam_kloigos(sshd:account): user=\"a\\0b\""
        );
        let long = "é".repeat(MAX_LINE);
        let m = message("p", &long);
        assert!(m.as_bytes().len() <= MAX_LINE);
        assert!(m.to_str().is_ok(), "cut on a character boundary");
    }
}
