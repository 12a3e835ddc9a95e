//! Logging by audience: what the housekeeper did to users (processes ended,
//! rules loaded, limits set) goes to syslog and stderr; problems likewise;
//! progress notes to stderr only. An idle pass prints nothing, so cron mails
//! only when something happened.

use nix::syslog::{self, Facility, LogFlags, Priority, Severity};

/// Longest line sent to syslog; longer ones are cut (like sudo-rs does).
const MAX_LINE: usize = 960;

/// Opens the syslog connection once, tagged `kloigos-housekeeper`.
pub fn init() {
    let _ = syslog::openlog(
        Some(c"kloigos-housekeeper"),
        LogFlags::LOG_PID,
        Facility::LOG_DAEMON,
    );
}

fn to_syslog(severity: Severity, msg: &str) {
    let mut line: String = msg.replace(['\n', '\r'], " ");
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    let _ = syslog::syslog(Priority::new(severity, Facility::LOG_DAEMON), line.as_str());
}

/// Something the pass did to the node or its users.
pub fn event(msg: &str) {
    eprintln!("kloigos-housekeeper: {msg}");
    to_syslog(Severity::LOG_NOTICE, msg);
}

/// A problem: the pass goes on where it safely can.
pub fn error(msg: &str) {
    eprintln!("kloigos-housekeeper: error: {msg}");
    to_syslog(Severity::LOG_ERR, msg);
}

/// A problem sent to syslog only (for the watchdog, which writes stderr itself).
pub fn to_syslog_error(msg: &str) {
    to_syslog(Severity::LOG_ERR, msg);
}

/// A note for whoever watches stderr.
pub fn note(msg: &str) {
    eprintln!("kloigos-housekeeper: {msg}");
}
