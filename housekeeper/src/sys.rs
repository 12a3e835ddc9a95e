//! The system edge: the one `fork` (for the kill helper), the switch to the
//! service account, and running external programs without a shell. The
//! rest of the housekeeper never says `unsafe`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use crate::error::{Error, Result};

/// PATH used to find programs when the environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit codes of the kill helper, one per step that can fail.
const HELPER_SETGROUPS: i32 = 10;
const HELPER_SETRESGID: i32 = 11;
const HELPER_SETRESUID: i32 = 12;
const HELPER_STILL_PRIVILEGED: i32 = 13;
const HELPER_KILL: i32 = 14;

/// Sends `signal` to every process of `uid` at once, from a child that has
/// become `uid`: supplementary groups dropped, then gid, then uid, each
/// checked, then `kill(-1, signal)`, which reaches exactly the processes
/// that user may signal (its own), all of them in one kernel walk, however
/// fast they fork. Returns once the helper has exited.
///
/// The helper is a plain `fork` whose child makes only raw system calls
/// (async-signal-safe, and safe after fork even if the parent had threads):
/// no allocation, no locks, no exec of anything a user could have changed.
/// The raw `setgroups`/`setresgid`/`setresuid` syscalls act on the calling
/// thread only, which in the child is the whole process.
pub fn signal_all_as(uid: u32, gid: u32, signal: i32) -> Result<()> {
    if uid == 0 {
        // kill(-1) as root would hit every process on the machine.
        return Err(Error::Kill {
            uid,
            msg: "refusing to signal as root".into(),
        });
    }
    let (u, g) = (uid as libc::uid_t, gid as libc::gid_t);
    // SAFETY: fork has no memory-safety preconditions; the child below only
    // calls async-signal-safe raw syscalls and `_exit`, never returning into
    // Rust code that could observe state copied mid-update.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Kill {
            uid,
            msg: format!("fork failed: {}", std::io::Error::last_os_error()),
        });
    }
    if pid == 0 {
        // SAFETY: raw syscalls with plain integer arguments and a null list
        // of length 0; `_exit` never returns. Each step is checked and the
        // child exits before `kill` unless it holds exactly `uid`.
        unsafe {
            if libc::syscall(
                libc::SYS_setgroups,
                0 as libc::size_t,
                std::ptr::null::<libc::gid_t>(),
            ) != 0
            {
                libc::_exit(HELPER_SETGROUPS);
            }
            if libc::syscall(libc::SYS_setresgid, g, g, g) != 0 {
                libc::_exit(HELPER_SETRESGID);
            }
            if libc::syscall(libc::SYS_setresuid, u, u, u) != 0 {
                libc::_exit(HELPER_SETRESUID);
            }
            if libc::syscall(libc::SYS_getuid) as libc::uid_t != u
                || libc::syscall(libc::SYS_geteuid) as libc::uid_t != u
            {
                libc::_exit(HELPER_STILL_PRIVILEGED);
            }
            // ESRCH: nothing left to signal, which is success here.
            if libc::kill(-1, signal) != 0 && *libc::__errno_location() != libc::ESRCH {
                libc::_exit(HELPER_KILL);
            }
            libc::_exit(0);
        }
    }
    let child = Pid::from_raw(pid);
    let status = loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    match status {
        Ok(WaitStatus::Exited(_, 0)) => Ok(()),
        Ok(WaitStatus::Exited(_, code)) => {
            let step = match code {
                HELPER_SETGROUPS => "setgroups",
                HELPER_SETRESGID => "setresgid",
                HELPER_SETRESUID => "setresuid",
                HELPER_STILL_PRIVILEGED => "checking the uid after setresuid",
                HELPER_KILL => "kill(-1)",
                _ => "an unknown step",
            };
            Err(Error::Kill {
                uid,
                msg: format!("the kill helper failed at {step} (exit {code})"),
            })
        }
        Ok(other) => Err(Error::Kill {
            uid,
            msg: format!("the kill helper ended abnormally: {other:?}"),
        }),
        Err(e) => Err(Error::Kill {
            uid,
            msg: format!("waiting for the kill helper: {e}"),
        }),
    }
}

/// Runs `f` with effective uid/gid and groups of the service account, then
/// switches back to root. `None`: the account does not exist here, so `f`
/// runs as root (files owned by root are trusted as well).
pub fn as_service<T>(account: Option<(u32, u32)>, f: impl FnOnce() -> T) -> Result<T> {
    let Some((uid, gid)) = account else {
        return Ok(f());
    };
    if !nix::unistd::geteuid().is_root() {
        return Ok(f());
    }
    let saved = nix::unistd::getgroups()
        .map_err(|e| Error::Privilege(format!("read the supplementary groups: {e}")))?;
    // Groups, then gid, then uid; back in the reverse order.
    nix::unistd::setgroups(&[Gid::from_raw(gid)])
        .and_then(|()| nix::unistd::setegid(Gid::from_raw(gid)))
        .and_then(|()| nix::unistd::seteuid(Uid::from_raw(uid)))
        .map_err(|e| {
            restore_root(&saved);
            Error::Privilege(format!("switch to the service account (uid {uid}): {e}"))
        })?;
    let out = f();
    restore_root(&saved);
    Ok(out)
}

fn restore_root(groups: &[Gid]) {
    let ok = nix::unistd::seteuid(Uid::from_raw(0))
        .and_then(|()| nix::unistd::setegid(Gid::from_raw(0)))
        .and_then(|()| nix::unistd::setgroups(groups));
    if let Err(e) = ok {
        // Going on with the wrong credentials would be worse than stopping.
        crate::log::error(&format!(
            "cannot switch back to root after writing as the service account: {e}; aborting"
        ));
        std::process::abort();
    }
}

/// Finds `program` on PATH (the environment's, else a default one).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program` with `args` (no shell), optionally feeding `stdin`;
/// returns stdout, or an error with its stderr.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S], stdin: Option<&[u8]>) -> Result<String> {
    let path = find_program(program).ok_or_else(|| Error::Spawn {
        program: program.into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let shown = || {
        let mut s = program.to_string();
        for a in args {
            s.push(' ');
            s.push_str(&a.as_ref().to_string_lossy());
        }
        s
    };
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.into(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the program's failure below.
        let _ = pipe.write_all(input);
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        program: program.into(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            program: shown(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
