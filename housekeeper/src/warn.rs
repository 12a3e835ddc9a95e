//! Messages to a user's terminals (like `write`): every terminal one of the
//! user's processes has as its controlling terminal, if the user owns it.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use kloigos_core::ids::Uid;

use crate::procfs::Proc;

/// The device path of a controlling terminal number, for ptys and consoles.
pub fn tty_path(tty_nr: i32) -> Option<PathBuf> {
    if tty_nr <= 0 {
        return None;
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        136..=143 => Some(PathBuf::from(format!(
            "/dev/pts/{}",
            (major - 136) * 256 + minor
        ))),
        4 if minor < 64 => Some(PathBuf::from(format!("/dev/tty{minor}"))),
        _ => None,
    }
}

/// Writes `message` to each terminal of `uid`; returns how many got it.
pub fn to_terminals(uid: Uid, procs: &[Proc], message: &str) -> usize {
    let ttys: BTreeSet<PathBuf> = procs
        .iter()
        .filter(|p| p.is_live_of(uid))
        .filter_map(|p| tty_path(p.tty_nr))
        .collect();
    let text = format!("\r\n\x07{}\r\n", message.replace('\n', "\r\n"));
    let mut n = 0;
    for tty in ttys {
        let Ok(mut f) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tty)
        else {
            continue;
        };
        // Only a character device the user owns: never someone else's terminal.
        let ok = f
            .metadata()
            .is_ok_and(|m| m.file_type().is_char_device() && m.uid() == uid.as_raw());
        if ok && f.write_all(text.as_bytes()).is_ok() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_numbers() {
        assert_eq!(tty_path(34816 + 3), Some(PathBuf::from("/dev/pts/3")));
        assert_eq!(
            tty_path((137 << 8) | 2),
            Some(PathBuf::from("/dev/pts/258"))
        );
        assert_eq!(tty_path((4 << 8) | 1), Some(PathBuf::from("/dev/tty1")));
        assert_eq!(tty_path(0), None);
        assert_eq!(tty_path((5 << 8) | 1), None);
    }
}
