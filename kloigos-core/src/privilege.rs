//! The CLI's privilege model: installed setuid to the service account
//! (never root), it records the caller, replaces the environment, and
//! switches identity with checked calls only.
//!
//! - Writes to the shared tree run with real, effective and saved uid all set
//!   to the service account, so the caller cannot signal or stop the process
//!   while it holds a lock.
//! - Overrides (`--shared`, `--config`) and anything exec'd (`ssh`, a user
//!   command) run after a full, verified drop back to the caller.
//! - root uses the service account for writes too, so files keep one owner
//!   and NFS root_squash does not get in the way.

use std::ffi::OsString;
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use crate::error::{Error, Result};

/// The fixed PATH every kloigos process runs with.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest time a process may hold a node lock before the kernel ends it
/// (SIGALRM); the atomic rename keeps the state valid when that happens.
pub const LOCK_HOLD_LIMIT: Duration = Duration::from_secs(30);

fn denied(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage {
        path: "/proc/self/status".into(),
        msg: format!("cannot {what}: {e}; is kloigos installed setuid to the service account (mode 4755)?"),
    }
}

/// Who started the process and what it may become.
#[derive(Debug, Clone)]
pub struct Privileges {
    /// The caller's real uid.
    pub caller_uid: u32,
    /// The caller's real gid.
    pub caller_gid: u32,
    /// The effective uid at start (the service account when setuid).
    pub start_euid: u32,
    /// The service account's uid and gid, when it exists.
    pub service: Option<(u32, u32)>,
    /// The caller's environment as it was, handed back only to programs
    /// exec'd after the drop to the caller.
    pub caller_env: Vec<(OsString, OsString)>,
}

impl Privileges {
    /// Records the caller, sets a 022 umask and replaces the environment with
    /// a fixed one (`PATH` only). Variables the CLI honours (`NO_COLOR`,
    /// `KLOIGOS_CONFIG`) must be read from [`Privileges::caller_var`].
    pub fn start(service_user: &str) -> Result<Privileges> {
        let ids = nix::unistd::getresuid().map_err(|e| denied("read the process uids", e))?;
        let gids = nix::unistd::getresgid().map_err(|e| denied("read the process gids", e))?;
        let service = crate::users::by_name(service_user).ok().flatten().map(|a| (a.uid, a.gid));
        let caller_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (k, _) in &caller_env {
            std::env::remove_var(k);
        }
        std::env::set_var("PATH", SAFE_PATH);
        nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        Ok(Privileges {
            caller_uid: ids.real.as_raw(),
            caller_gid: gids.real.as_raw(),
            start_euid: ids.effective.as_raw(),
            service,
            caller_env,
        })
    }

    /// A variable from the caller's original environment.
    pub fn caller_var(&self, name: &str) -> Option<&OsString> {
        self.caller_env.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Whether the binary runs setuid (effective uid differs from the caller's).
    pub fn is_setuid(&self) -> bool {
        self.caller_uid != self.start_euid
    }

    /// Becomes the service account for writing: setuid mode sets all three
    /// uids to it; root switches groups, gid and uid to it; a plain user (no
    /// setuid, e.g. on their own demo tree) stays themselves. Verified by
    /// reading the ids back.
    pub fn become_service(&self) -> Result<()> {
        if self.is_setuid() {
            let u = Uid::from_raw(self.start_euid);
            nix::unistd::setresuid(u, u, u).map_err(|e| denied("switch to the service account", e))?;
            return verify_uids(self.start_euid);
        }
        if self.caller_uid == 0 {
            if let Some((uid, gid)) = self.service {
                let g = Gid::from_raw(gid);
                nix::unistd::setgroups(&[g]).map_err(|e| denied("set the service account's groups", e))?;
                nix::unistd::setresgid(g, g, g).map_err(|e| denied("switch to the service group", e))?;
                let u = Uid::from_raw(uid);
                nix::unistd::setresuid(u, u, u).map_err(|e| denied("switch to the service account", e))?;
                verify_gids(gid)?;
                return verify_uids(uid);
            }
        }
        Ok(())
    }

    /// Drops for good to the caller: real, effective and saved uid become the
    /// caller's, and getting the start uid back must fail. Groups and gid are
    /// the caller's already (the binary is setuid, not setgid).
    pub fn drop_to_caller(&self) -> Result<()> {
        let u = Uid::from_raw(self.caller_uid);
        nix::unistd::setresuid(u, u, u).map_err(|e| denied("drop to the caller's uid", e))?;
        verify_uids(self.caller_uid)?;
        let g = nix::unistd::getresgid().map_err(|e| denied("read the process gids", e))?;
        if g.effective.as_raw() != self.caller_gid && self.caller_uid != 0 {
            return Err(denied("keep the caller's gid", format!("effective gid is {}", g.effective)));
        }
        if self.caller_uid != 0 && self.start_euid != self.caller_uid && nix::unistd::setuid(Uid::from_raw(self.start_euid)).is_ok() {
            return Err(denied("drop privileges for good", "the service uid could be regained"));
        }
        Ok(())
    }
}

fn verify_uids(want: u32) -> Result<()> {
    let ids = nix::unistd::getresuid().map_err(|e| denied("read the process uids", e))?;
    let got = [ids.real.as_raw(), ids.effective.as_raw(), ids.saved.as_raw()];
    if got != [want; 3] {
        return Err(denied("set all three uids", format!("they are {got:?}, wanted {want}")));
    }
    Ok(())
}

fn verify_gids(want: u32) -> Result<()> {
    let ids = nix::unistd::getresgid().map_err(|e| denied("read the process gids", e))?;
    let got = [ids.real.as_raw(), ids.effective.as_raw(), ids.saved.as_raw()];
    if got != [want; 3] {
        return Err(denied("set all three gids", format!("they are {got:?}, wanted {want}")));
    }
    Ok(())
}

/// While alive, terminal stop and interrupt signals are held back (delivered
/// when it drops) and an alarm bounds how long the process may live.
#[derive(Debug)]
pub struct CriticalSection {
    old: SigSet,
}

impl CriticalSection {
    /// Blocks SIGTSTP, SIGTTIN, SIGTTOU, SIGINT, SIGQUIT and SIGHUP and arms
    /// an alarm of [`LOCK_HOLD_LIMIT`].
    pub fn enter() -> CriticalSection {
        let mut set = SigSet::empty();
        for s in [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU, Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        // Blocking signals of our own process cannot fail with valid arguments.
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old));
        nix::unistd::alarm::set(LOCK_HOLD_LIMIT.as_secs() as u32);
        CriticalSection { old }
    }
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        nix::unistd::alarm::cancel();
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}
