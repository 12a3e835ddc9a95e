//! What a writer does at and after its point of no return.
//!
//! A write is confirmed only once a fresh open of the file shows it: on a
//! share whose locks do not exclude every writer, another node may rename
//! its own file over ours between our rename and our answer, and the user
//! must then hear that the write was lost, never that it was made.

use std::path::Path;

use crate::error::{Error, Result};
use crate::store::{read_trusted, Trust};

/// Reads `path` back through a fresh open and checks that it holds
/// `written`, byte for byte; [`Error::LostWrite`] when it holds something
/// else. The caller still holds the lock, so under working locks no other
/// writer can have replaced the file.
pub fn check_written(path: &Path, written: &[u8], trust: &Trust) -> Result<()> {
    let now = read_trusted(path, trust)?;
    if now != written {
        return Err(Error::LostWrite { path: path.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_file_replaced_after_the_rename_is_a_lost_write() {
        let t = tempfile::tempdir().unwrap();
        let trust = Trust::service(nix::unistd::geteuid().as_raw());
        crate::store::write_atomic(t.path(), "state.json", b"mine\n").unwrap();
        let path = t.path().join("state.json");
        check_written(&path, b"mine\n", &trust).unwrap();
        // Another node's writer, which did not see our lock, renames its own over ours.
        crate::store::write_atomic(t.path(), "state.json", b"theirs\n").unwrap();
        let e = check_written(&path, b"mine\n", &trust).unwrap_err();
        assert!(
            matches!(&e, Error::LostWrite { path: p } if *p == path),
            "{e:?}"
        );
        assert_eq!(e.kind(), ErrorKind::Storage);
        assert!(
            e.to_string().contains(
                "the share lost this write: is locking shared between nodes? see `kloigos doctor`"
            ),
            "{e}"
        );
    }
}
