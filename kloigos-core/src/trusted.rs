//! The one way kloigos opens a file it trusts: through a [`TrustedDir`].
//!
//! A directory is opened once (`O_DIRECTORY|O_NOFOLLOW`), its owner and
//! mode checked with one `fstat` against a [`Trust`]; every file under it
//! is then opened, created, renamed, removed or looked at relative to that
//! handle (`openat`, `renameat`, `unlinkat`, `fstatat`), one name at a
//! time, never following a link. A directory swapped for a link after the
//! check changes nothing: the handle still names the directory that was
//! checked. sudo-rs's `secure_open` is the model.
//!
//! Every file read through a handle is checked too (a regular file, its
//! owner and mode trusted) and read whole, none larger than [`MAX_FILE`].

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::error::{Error, Result, Untrust};
use crate::store::{is_tmp, Trust, MAX_FILE};

/// A directory opened without following a link and checked once against
/// a [`Trust`]; every file kloigos trusts is reached through one.
#[derive(Debug)]
pub struct TrustedDir {
    fd: OwnedFd,
    path: PathBuf,
    trust: Trust,
}

/// What a directory entry is, the entry itself (a link is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// Anything else (a FIFO, a socket, a device).
    Other,
}

/// An entry of a [`TrustedDir`], as `fstatat` sees it (no link followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// What the entry is.
    pub kind: Kind,
    /// Its owner.
    pub uid: u32,
    /// Its permission bits.
    pub mode: u32,
}

impl TrustedDir {
    /// Opens the directory at `path` and checks it against `trust`. A link
    /// as its last component is refused, not followed ([`Untrust::Symlink`]);
    /// anything but a directory is [`Untrust::NotDirectory`].
    pub fn open(path: &Path, trust: &Trust) -> Result<TrustedDir> {
        let fd = nix::fcntl::open(path, dir_flags(true), Mode::empty())
            .map_err(|e| dir_error(path, e, || lstat_kind(path)))?;
        TrustedDir::checked(fd, path.into(), trust)
    }

    /// [`TrustedDir::open`], but `Ok(None)` when nothing is at `path`
    /// (ENOENT, and only ENOENT).
    pub fn open_if_any(path: &Path, trust: &Trust) -> Result<Option<TrustedDir>> {
        absent_is_none(TrustedDir::open(path, trust))
    }

    /// Opens the root of a tree as it is configured: a link there is
    /// followed (a site's mount point may be one); nothing below it is.
    pub fn open_root(path: &Path, trust: &Trust) -> Result<TrustedDir> {
        let fd = nix::fcntl::open(path, dir_flags(false), Mode::empty()).map_err(|e| {
            dir_error(path, e, || {
                fs::metadata(path).ok().map(|m| kind_of(m.file_type()))
            })
        })?;
        TrustedDir::checked(fd, path.into(), trust)
    }

    /// Where this directory was opened (for messages; never reopened).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whose files this directory, and everything read through it, must be.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The path of `name` in this directory, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the subdirectory `name`, checked as this one was.
    pub fn dir(&self, name: &str) -> Result<TrustedDir> {
        let path = self.entry(name)?;
        let fd = nix::fcntl::openat(&self.fd, name, dir_flags(true), Mode::empty())
            .map_err(|e| dir_error(&path, e, || self.kind(name)))?;
        TrustedDir::checked(fd, path, &self.trust)
    }

    /// [`TrustedDir::dir`], but `Ok(None)` when there is no entry `name`
    /// (ENOENT, and only ENOENT).
    pub fn dir_if_any(&self, name: &str) -> Result<Option<TrustedDir>> {
        absent_is_none(self.dir(name))
    }

    /// Creates the directory at `path` if it is missing, gives it `mode`
    /// (a link there followed, as [`TrustedDir::open_root`]) and opens it.
    pub fn make_root(path: &Path, mode: u32, trust: &Trust) -> Result<TrustedDir> {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(path, &e)),
        }
        let fd = open_untrusted_dir(path)?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
            .map_err(|e| Error::io(path, &e.into()))?;
        TrustedDir::checked(fd, path.into(), trust)
    }

    /// Creates the subdirectory `name` with `mode` and opens it; `Ok(None)`
    /// when something is already there (left as it is).
    pub fn create_dir(&self, name: &str, mode: u32) -> Result<Option<TrustedDir>> {
        let path = self.entry(name)?;
        match nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(mode)) {
            Ok(()) => self.chmod_dir(name, mode).map(Some),
            Err(Errno::EEXIST) => Ok(None),
            Err(e) => Err(Error::io(&path, &e.into())),
        }
    }

    /// Creates the subdirectory `name` if it is missing, gives it `mode`
    /// (also when it was there: one we own is narrowed back) and opens it.
    pub fn make_dir(&self, name: &str, mode: u32) -> Result<TrustedDir> {
        match self.create_dir(name, mode)? {
            Some(dir) => Ok(dir),
            None => self.chmod_dir(name, mode),
        }
    }

    /// Opens the subdirectory `name`, gives it `mode` (the umask narrowed
    /// `mkdirat`'s) and checks it.
    fn chmod_dir(&self, name: &str, mode: u32) -> Result<TrustedDir> {
        let path = self.entry(name)?;
        let fd = nix::fcntl::openat(&self.fd, name, dir_flags(true), Mode::empty())
            .map_err(|e| dir_error(&path, e, || self.kind(name)))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
            .map_err(|e| Error::io(&path, &e.into()))?;
        TrustedDir::checked(fd, path, &self.trust)
    }

    /// Reads the file `name` whole: a regular file (no link, no FIFO: the
    /// open never blocks) with a trusted owner and mode, checked with one
    /// `fstat` of the opened file, and no larger than [`MAX_FILE`].
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.entry(name)?;
        let f = self
            .open_file(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)
            .map_err(|e| file_error(&path, e))?;
        read_opened(f, &path, &self.trust)
    }

    /// [`TrustedDir::read`], but `Ok(None)` when there is no entry `name`
    /// (ENOENT, and only ENOENT: a dangling link is refused).
    pub fn read_if_any(&self, name: &str) -> Result<Option<Vec<u8>>> {
        absent_is_none(self.read(name))
    }

    /// Replaces the file `name` with `bytes` atomically: an exclusive tmp
    /// file created here, fsync, `renameat` over `name`, fsync of this
    /// directory. The file ends up mode 0644.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic_in(self.fd.as_fd(), &self.path, name, bytes)
    }

    /// Opens the journal-like file `name` to append to it (created 0644
    /// when missing), readable so its last byte can be checked; it must be
    /// a regular file with a trusted owner and mode.
    pub fn open_append(&self, name: &str) -> Result<File> {
        let path = self.entry(name)?;
        let f = self
            .open_file(
                name,
                OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NONBLOCK,
                0o644,
            )
            .map_err(|e| file_error(&path, e))?;
        self.check_opened(&f, &path)?;
        Ok(f)
    }

    /// Opens the lock file `name` (created 0600 when missing) to flock it.
    ///
    /// flock needs only a descriptor opened for reading, so a lock file
    /// others can read is one any user could lock to stall every writer:
    /// an older, readable one we own is narrowed to 0600 here.
    pub fn open_lock(&self, name: &str) -> Result<File> {
        let path = self.entry(name)?;
        let f = self
            .open_file(
                name,
                OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NONBLOCK,
                0o600,
            )
            .map_err(|e| file_error(&path, e))?;
        let meta = f.metadata().map_err(|e| Error::io(&path, &e))?;
        if meta.mode() & 0o077 != 0 && meta.uid() == nix::unistd::geteuid().as_raw() {
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(&path, &e))?;
        }
        self.check_opened(&f, &path)?;
        Ok(f)
    }

    /// Moves the entry `name` to `to_name` in `to` (`renameat`).
    pub fn rename(&self, name: &str, to: &TrustedDir, to_name: &str) -> Result<()> {
        let path = self.entry(name)?;
        to.entry(to_name)?;
        nix::fcntl::renameat(&self.fd, name, &to.fd, to_name)
            .map_err(|e| Error::io(&path, &e.into()))
    }

    /// Removes the file `name` (`unlinkat`; a directory is not removed).
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.entry(name)?;
        nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| Error::io(&path, &e.into()))
    }

    /// The entry `name` as `fstatat` sees it, not following a link;
    /// `Ok(None)` for ENOENT, and only ENOENT.
    pub fn stat(&self, name: &str) -> Result<Option<Stat>> {
        let path = self.entry(name)?;
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Stat {
                kind: kind_of_mode(st.st_mode),
                uid: st.st_uid,
                mode: st.st_mode & 0o7777,
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(Error::io(&path, &e.into())),
        }
    }

    /// Sets the mode of the file or directory `name` to `mode`, through a
    /// descriptor opened without following a link (`fchmod`). Only a
    /// regular file or a directory is opened (a FIFO or a device never
    /// is), and only the entry `fstatat` saw is changed.
    pub fn set_mode(&self, name: &str, mode: u32) -> Result<()> {
        let path = self.entry(name)?;
        let seen = nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io(&path, &e.into()))?;
        if !matches!(kind_of_mode(seen.st_mode), Kind::File | Kind::Dir) {
            return Err(Error::Untrusted {
                path,
                why: Untrust::NotRegular,
            });
        }
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| file_error(&path, e))?;
        let opened = nix::sys::stat::fstat(&fd).map_err(|e| Error::io(&path, &e.into()))?;
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino) {
            return Err(Error::Storage {
                path,
                msg: "was replaced while it was being checked; run the command again".into(),
            });
        }
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
            .map_err(|e| Error::io(&path, &e.into()))
    }

    /// The names in this directory (not `.` or `..`) and what each is,
    /// links not followed; unsorted.
    pub fn entries(&self) -> Result<Vec<(OsString, Kind)>> {
        // A descriptor of its own: reading entries moves the offset.
        let fd = nix::fcntl::openat(&self.fd, ".", dir_flags(true), Mode::empty())
            .map_err(|e| Error::io(&self.path, &e.into()))?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| Error::io(&self.path, &e.into()))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| Error::io(&self.path, &e.into()))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name.to_vec());
            let kind = match entry.file_type() {
                Some(nix::dir::Type::Directory) => Kind::Dir,
                Some(nix::dir::Type::File) => Kind::File,
                Some(nix::dir::Type::Symlink) => Kind::Symlink,
                Some(_) => Kind::Other,
                // Some file systems leave the type out: ask the entry itself.
                None => match nix::sys::stat::fstatat(
                    &self.fd,
                    name.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) => kind_of_mode(st.st_mode),
                    // Gone since the listing: not an entry any more.
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(Error::io(self.path.join(&name), &e.into())),
                },
            };
            out.push((name, kind));
        }
        Ok(out)
    }

    /// Removes tmp files left by writers that died between create and
    /// rename; returns how many. Callers hold the directory's lock, so no
    /// live writer owns one.
    pub fn sweep_tmp(&self) -> usize {
        let Ok(entries) = self.entries() else {
            return 0;
        };
        entries
            .iter()
            .filter(|(name, kind)| *kind != Kind::Dir && is_tmp(name))
            .filter_map(|(name, _)| name.to_str())
            .filter(|name| self.remove(name).is_ok())
            .count()
    }

    /// Checks the directory just opened as `fd` (one `fstat`).
    fn checked(fd: OwnedFd, path: PathBuf, trust: &Trust) -> Result<TrustedDir> {
        let meta = File::from(fd);
        let m = meta.metadata().map_err(|e| Error::io(&path, &e))?;
        if !m.is_dir() {
            // O_DIRECTORY makes this unreachable; kept so the check stands alone.
            return Err(Error::Untrusted {
                path,
                why: Untrust::NotDirectory,
            });
        }
        trust.check(&path, &m)?;
        Ok(TrustedDir {
            fd: OwnedFd::from(meta),
            path,
            trust: trust.clone(),
        })
    }

    /// Checks that `name` is one entry of this directory and returns its
    /// path for messages (see [`entry_path`]).
    fn entry(&self, name: &str) -> Result<PathBuf> {
        entry_path(&self.path, name)
    }

    /// What the entry `name` is, if `fstatat` can tell.
    fn kind(&self, name: &str) -> Option<Kind> {
        nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| kind_of_mode(st.st_mode))
    }

    /// Opens the file `name` here with `flags`, never following a link,
    /// close-on-exec.
    fn open_file(&self, name: &str, flags: OFlag, mode: u32) -> nix::Result<File> {
        nix::fcntl::openat(
            &self.fd,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map(File::from)
    }

    /// Checks the opened file `f` (at `path`): a regular file, trusted.
    fn check_opened(&self, f: &File, path: &Path) -> Result<()> {
        let meta = f.metadata().map_err(|e| Error::io(path, &e))?;
        if !meta.file_type().is_file() {
            return Err(Error::Untrusted {
                path: path.into(),
                why: Untrust::NotRegular,
            });
        }
        self.trust.check(path, &meta)
    }
}

/// The path of `name` in `dir`, once `name` is checked to be one entry
/// of it: no `/`, not `.` or `..`, not empty, no NUL.
fn entry_path(dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::invalid(
            "file name",
            name,
            format!(
                "a single name inside {} (no '/', not '.' or '..')",
                dir.display()
            ),
        ));
    }
    Ok(dir.join(name))
}

/// Flags to open a directory handle: read-only, close-on-exec, and
/// `O_NOFOLLOW` unless the caller follows a configured root's link.
fn dir_flags(no_follow: bool) -> OFlag {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if no_follow {
        flags | OFlag::O_NOFOLLOW
    } else {
        flags
    }
}

/// `Ok(None)` for an ENOENT error, the rest as it is.
fn absent_is_none<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.errno() == Some(nix::libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The error for a directory at `path` that did not open. Linux says
/// ENOTDIR for a link opened `O_DIRECTORY|O_NOFOLLOW` as for a file, so
/// `kind` (an `lstat`, only on this failure path) tells which it was.
fn dir_error(path: &Path, e: Errno, kind: impl FnOnce() -> Option<Kind>) -> Error {
    let why = match e {
        Errno::ENOTDIR | Errno::ELOOP => match kind() {
            Some(Kind::Symlink) => Untrust::Symlink,
            Some(Kind::File | Kind::Other) => Untrust::NotDirectory,
            // ENOTDIR from a component above, or gone since: as the system said.
            Some(Kind::Dir) | None => return Error::io(path, &e.into()),
        },
        _ => return Error::io(path, &e.into()),
    };
    Error::Untrusted {
        path: path.into(),
        why,
    }
}

/// The error for a file at `path` that did not open `O_NOFOLLOW`: ELOOP
/// is a link there.
fn file_error(path: &Path, e: Errno) -> Error {
    if e == Errno::ELOOP {
        Error::Untrusted {
            path: path.into(),
            why: Untrust::Symlink,
        }
    } else {
        Error::io(path, &e.into())
    }
}

/// What `path` itself is (an `lstat`), if it can be told.
fn lstat_kind(path: &Path) -> Option<Kind> {
    fs::symlink_metadata(path)
        .ok()
        .map(|m| kind_of(m.file_type()))
}

fn kind_of(t: fs::FileType) -> Kind {
    if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

fn kind_of_mode(mode: u32) -> Kind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Replaces `name` in the directory `dir` (opened as `dir_path`) with
/// `bytes`: see [`TrustedDir::write_atomic`]. The tmp file is created
/// `O_EXCL|O_NOFOLLOW`, so a link planted at its name is never written
/// through.
pub(crate) fn write_atomic_in(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<()> {
    let dest = entry_path(dir_path, name)?;
    let tmp = tmp_name(name);
    let mut f = nix::fcntl::openat(
        dir,
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map(File::from)
    .map_err(|e| Error::io(dir_path.join(&tmp), &e.into()))?;
    let done = (|| -> io::Result<()> {
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        nix::fcntl::renameat(dir, tmp.as_str(), dir, name)?;
        Ok(nix::unistd::fsync(dir)?)
    })();
    if let Err(e) = done {
        let _ = nix::unistd::unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(Error::io(&dest, &e));
    }
    Ok(())
}

/// Opens the directory at `path` for [`write_atomic_in`] without trusting
/// it (a link is followed, as the caller named it): for files kloigos
/// writes but never reads back as trusted.
pub(crate) fn open_untrusted_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(path, dir_flags(false), Mode::empty()).map_err(|e| Error::io(path, &e.into()))
}

/// The name of a writer's tmp file for `name`: host and pid, so that
/// writers on different nodes never share one.
pub(crate) fn tmp_name(name: &str) -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name}.tmp.{host}.{}", std::process::id())
}

/// Checks the opened file `f` (at `path`) with one `fstat` and reads it.
fn read_opened(mut f: File, path: &Path, trust: &Trust) -> Result<Vec<u8>> {
    let meta = f.metadata().map_err(|e| Error::io(path, &e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Untrusted {
            path: path.into(),
            why: Untrust::NotRegular,
        });
    }
    trust.check(path, &meta)?;
    if meta.len() > MAX_FILE {
        return Err(too_large(path, meta.len()));
    }
    read_sized(&mut f, meta.len()).map_err(|e| match e.kind() {
        io::ErrorKind::FileTooLarge => too_large(path, MAX_FILE + 1),
        _ => Error::io(path, &e),
    })
}

/// The error for a file at `path` of `len` bytes, beyond [`MAX_FILE`].
fn too_large(path: &Path, len: u64) -> Error {
    Error::Storage {
        path: path.into(),
        msg: format!(
            "is {len} bytes, more than the {} MiB kloigos reads; refusing to read it — a state file this large was flooded or damaged (`kloigos admin fsck`); an old journal can be moved aside",
            MAX_FILE >> 20
        ),
    }
}

/// Largest buffer sized up front from `fstat` (a file larger than this is
/// still read whole, the buffer growing as it goes).
const PRESIZE_MAX: usize = 16 << 20;

/// Reads `f` (a regular file `fstat` said is `len` bytes long) to its end.
///
/// `read_to_end` would `fstat` and `lseek` again to size its buffer and
/// always make a last `read` that returns 0. Here the buffer has room for
/// one byte more than `len`, so a file still `len` bytes long comes in one
/// `read` that returns short of the request: a regular file's `read`
/// returns short only at its end, so no second `read` is needed. A file
/// that grew or shrank since the `fstat` is read until `read` returns 0,
/// and never past [`MAX_FILE`] (`FileTooLarge`).
fn read_sized(f: &mut File, len: u64) -> io::Result<Vec<u8>> {
    let expected = usize::try_from(len).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; expected.min(PRESIZE_MAX).saturating_add(1)];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            let grown = buf.len().saturating_mul(2);
            buf.resize(grown, 0);
        }
        let asked = buf.len() - filled;
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled as u64 > MAX_FILE {
                    return Err(io::ErrorKind::FileTooLarge.into());
                }
                if filled == expected && n < asked {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Trust {
        Trust::root_and(crate::testing::uid(nix::unistd::geteuid().as_raw()))
    }

    #[test]
    fn a_handle_is_only_opened_on_a_trusted_directory() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let file = t.path().join("file");
        fs::write(&file, b"").unwrap();
        let why = |r: Result<TrustedDir>| match r {
            Err(Error::Untrusted { why, path }) => Some((why, path)),
            _ => None,
        };
        assert_eq!(
            why(TrustedDir::open(&link, &me())),
            Some((Untrust::Symlink, link.clone()))
        );
        assert_eq!(
            why(TrustedDir::open(&file, &me())),
            Some((Untrust::NotDirectory, file.clone()))
        );
        // The configured root may be a link; below it nothing is followed.
        let root = TrustedDir::open_root(&link, &me()).unwrap();
        fs::create_dir(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(real.join("sub"), real.join("sublink")).unwrap();
        assert!(root.dir("sub").is_ok());
        assert_eq!(
            why(root.dir("sublink")),
            Some((Untrust::Symlink, link.join("sublink")))
        );
        assert!(root.dir_if_any("absent").unwrap().is_none());
        fs::set_permissions(&real, fs::Permissions::from_mode(0o775)).unwrap();
        assert_eq!(
            why(TrustedDir::open(&real, &me())),
            Some((Untrust::Mode { mode: 0o775 }, real.clone()))
        );
        // Another user's: root gives it away, anyone else trusts a stranger.
        fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
        let trust = if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&real, Some(nix::unistd::Uid::from_raw(4243)), None).unwrap();
            me()
        } else {
            Trust::root_and(crate::testing::uid(4243))
        };
        assert!(matches!(
            why(TrustedDir::open(&real, &trust)),
            Some((Untrust::Owner { .. }, p)) if p == real
        ));
    }

    #[test]
    fn names_are_single_entries_of_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let dir = TrustedDir::open(t.path(), &me()).unwrap();
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "nul\0"] {
            assert!(
                matches!(
                    dir.read(bad),
                    Err(Error::Invalid {
                        what: "file name",
                        ..
                    })
                ),
                "{bad:?}"
            );
            assert!(matches!(
                dir.write_atomic(bad, b"x"),
                Err(Error::Invalid { .. })
            ));
        }
        assert!(fs::read_dir(t.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_handle_keeps_the_directory_it_checked_when_a_link_takes_its_place() {
        let t = tempfile::tempdir().unwrap();
        let (checked, planted) = (t.path().join("checked"), t.path().join("planted"));
        fs::create_dir(&checked).unwrap();
        fs::create_dir(&planted).unwrap();
        fs::write(checked.join("f"), b"checked").unwrap();
        fs::write(planted.join("f"), b"planted").unwrap();
        let dir = TrustedDir::open(&checked, &me()).unwrap();
        // Swapped after the check: the handle still reads and writes the
        // directory it checked, never the link's target.
        let moved = t.path().join("moved");
        fs::rename(&checked, &moved).unwrap();
        std::os::unix::fs::symlink(&planted, &checked).unwrap();
        assert_eq!(dir.read("f").unwrap(), b"checked");
        dir.write_atomic("g", b"new").unwrap();
        assert_eq!(fs::read(moved.join("g")).unwrap(), b"new");
        assert!(!planted.join("g").exists());
        // Entries and removal too.
        let mut names: Vec<_> = dir.entries().unwrap();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            names,
            vec![("f".into(), Kind::File), ("g".into(), Kind::File)]
        );
        dir.remove("g").unwrap();
        assert!(!moved.join("g").exists());
    }

    #[test]
    fn files_are_read_and_changed_only_when_regular_and_not_links() {
        let t = tempfile::tempdir().unwrap();
        let dir = TrustedDir::open(t.path(), &me()).unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), b"v").unwrap();
        fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), t.path().join("link")).unwrap();
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let why = |r: Result<Vec<u8>>| match r {
            Err(Error::Untrusted { why, .. }) => Some(why),
            _ => None,
        };
        assert_eq!(why(dir.read("link")), Some(Untrust::Symlink));
        assert_eq!(why(dir.read("fifo")), Some(Untrust::NotRegular));
        assert!(dir.read_if_any("link").is_err());
        assert_eq!(dir.read_if_any("absent").unwrap(), None);
        // Neither a lock, a journal nor a mode change goes through a link.
        assert!(matches!(
            dir.open_lock("link"),
            Err(Error::Untrusted {
                why: Untrust::Symlink,
                ..
            })
        ));
        assert!(matches!(
            dir.open_append("link"),
            Err(Error::Untrusted {
                why: Untrust::Symlink,
                ..
            })
        ));
        assert!(dir.set_mode("link", 0o644).is_err());
        assert!(dir.set_mode("fifo", 0o600).is_err());
        let victim = fs::metadata(outside.join("victim")).unwrap();
        assert_eq!(victim.mode() & 0o7777, 0o666);
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"v");
        assert_eq!(
            dir.stat("link").unwrap().map(|s| s.kind),
            Some(Kind::Symlink)
        );
        assert_eq!(dir.stat("absent").unwrap(), None);
        // A file others may write is narrowed through the handle.
        fs::write(t.path().join("open"), b"").unwrap();
        fs::set_permissions(t.path().join("open"), fs::Permissions::from_mode(0o664)).unwrap();
        assert!(dir.read("open").is_err());
        dir.set_mode("open", 0o644).unwrap();
        assert_eq!(dir.read("open").unwrap(), b"");
    }

    #[test]
    fn sized_reads_read_whole_files() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        for len in [0usize, 1, 4095, 4096, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            fs::write(&path, &data).unwrap();
            // A stale size (smaller or larger than the file) still reads it all.
            for said in [len as u64, 0, len as u64 / 2, len as u64 + 10] {
                let mut f = File::open(&path).unwrap();
                assert_eq!(read_sized(&mut f, said).unwrap(), data);
            }
        }
    }
}
