//! The CLI's privilege model: installed setuid to the service account
//! (never root), it records the caller, replaces the environment, and
//! switches identity with checked calls only.
//!
//! - Writes to the shared tree run with real, effective and saved uid all set
//!   to the service account, so the caller cannot signal or stop the process
//!   while it holds a lock.
//! - Overrides (`--shared`, `--config`) and anything exec'd (`ssh`, a user
//!   command) run after a full, verified drop back to the caller: groups,
//!   gid and uid, each read back.
//! - root uses the service account for writes too (groups, gid, uid), so
//!   files keep one owner and NFS root_squash does not get in the way.
//!
//! Order of the switches, as in sudo: supplementary groups, then gid, then uid.

use std::ffi::OsString;
use std::time::Duration;

use kloigos_core::error::{Error, Result};
use kloigos_core::ids::{Gid, Uid};
use kloigos_core::users;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;

/// The fixed PATH every kloigos process runs with.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest time a process may hold a node lock before the kernel ends it
/// (SIGALRM); the atomic rename keeps the state valid when that happens.
pub const LOCK_HOLD_LIMIT: Duration = Duration::from_secs(30);

/// The signals held back while a node lock is held: the ones a terminal
/// sends (which bypass the kill(2) permission check) plus SIGHUP.
pub const HELD_SIGNALS: [Signal; 6] = [
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
];

fn denied(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage {
        path: "/proc/self/status".into(),
        msg: format!("cannot {what}: {e}; is kloigos installed setuid to the service account (owner kloigos, mode 4755)?"),
    }
}

/// Who started the process and what it may become.
#[derive(Debug, Clone)]
pub struct Privileges {
    /// The caller's real uid.
    pub caller_uid: Uid,
    /// The caller's real gid.
    pub caller_gid: Gid,
    /// The caller's supplementary groups at start (sorted, deduplicated);
    /// the setuid binary never changes them, so a drop back must find them again.
    pub caller_groups: Vec<Gid>,
    /// The effective uid at start (the service account when setuid).
    pub start_euid: Uid,
    /// The service account's uid and gid, when known: in setuid mode the
    /// binary's owner (whatever its name) and its primary group; otherwise
    /// the account named at start (or by the configuration).
    pub service: Option<(Uid, Gid)>,
    /// The caller's environment as it was, handed back only to programs
    /// exec'd after the drop to the caller.
    pub caller_env: Vec<(OsString, OsString)>,
}

impl Privileges {
    /// Records the caller, replaces the environment with a fixed one (`PATH`
    /// only) before anything else looks at it, unblocks every signal (a
    /// caller could exec us with SIGALRM blocked to defeat the hold-time
    /// bound) and sets a 022 umask. Variables the CLI honours (`NO_COLOR`,
    /// `KLOIGOS_CONFIG`) must be read from [`Privileges::caller_var`].
    pub fn start(service_user: &str) -> Result<Privileges> {
        // First: nothing below (NSS, time zones, locale) may see the caller's variables.
        let caller_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (k, _) in &caller_env {
            std::env::remove_var(k);
        }
        std::env::set_var("PATH", SAFE_PATH);
        nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        // Unblocking signals of our own process cannot fail with valid arguments.
        let _ =
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        let [real, effective, _] = read_uids()?;
        let [real_gid, effective_gid, _] = read_gids()?;
        let caller_groups = current_groups()?;
        let setuid = real != effective;
        let service = if setuid {
            // The binary's owner is the service account; its group from the user database.
            let gid = users::by_uid(effective)
                .ok()
                .flatten()
                .map_or(effective_gid, |a| a.gid);
            Some((effective, gid))
        } else {
            users::by_name(service_user)
                .ok()
                .flatten()
                .map(|a| (a.uid, a.gid))
        };
        Ok(Privileges {
            caller_uid: real,
            caller_gid: real_gid,
            caller_groups,
            start_euid: effective,
            service,
            caller_env,
        })
    }

    /// The caller's account: kloigos books for named users, so a uid
    /// without one is refused.
    pub fn caller_account(&self) -> Result<users::Account> {
        users::by_uid(self.caller_uid)?.ok_or_else(|| {
            Error::Refused(format!(
                "uid {} has no account in the user database; kloigos books for named users",
                self.caller_uid
            ))
        })
    }

    /// A variable from the caller's original environment.
    pub fn caller_var(&self, name: &str) -> Option<&OsString> {
        self.caller_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether the binary runs setuid (effective uid differs from the caller's).
    pub fn is_setuid(&self) -> bool {
        self.caller_uid != self.start_euid
    }

    /// The uid whose files readers trust besides root: the binary's owner in
    /// setuid mode, else the service account if it exists.
    pub fn service_uid(&self) -> Option<Uid> {
        if self.is_setuid() {
            Some(self.start_euid)
        } else {
            self.service.map(|(u, _)| u)
        }
    }

    /// Becomes the service account for writing, with real, effective and
    /// saved uid all set to it (so the caller cannot signal the process):
    /// - a user running the setuid binary switches the three uids (groups
    ///   and gid stay theirs: an unprivileged process cannot change them);
    /// - root switches groups, gid and uid, whether it ran the setuid binary
    ///   or a plain one and the service account exists (NFS root_squash);
    /// - a plain user without setuid (their own demo tree) stays themselves.
    ///
    /// Every switch is verified by reading the ids back. Call
    /// [`Privileges::drop_to_caller`] before this, never after.
    pub fn become_service(&self) -> Result<()> {
        if self.caller_uid.is_root() {
            // In setuid mode `service` is the binary's owner (set by `start`).
            let Some((uid, gid)) = self.service else {
                return Ok(());
            };
            if uid.is_root() {
                return Ok(());
            }
            if self.is_setuid() {
                // root ran the setuid binary: euid 0 back (the real uid is 0) to be allowed to set groups.
                nix::unistd::seteuid(nix_uid(Uid::ROOT))
                    .map_err(|e| denied("take back root's effective uid", e))?;
            }
            let g = nix_gid(gid);
            nix::unistd::setgroups(&[g])
                .map_err(|e| denied("set the service account's groups", e))?;
            nix::unistd::setresgid(g, g, g)
                .map_err(|e| denied("switch to the service group", e))?;
            let u = nix_uid(uid);
            nix::unistd::setresuid(u, u, u)
                .map_err(|e| denied("switch to the service account", e))?;
            verify_groups(&[gid])?;
            verify_gids(gid)?;
            return verify_uids(uid);
        }
        if self.is_setuid() {
            let u = nix_uid(self.start_euid);
            nix::unistd::setresuid(u, u, u)
                .map_err(|e| denied("switch to the service account", e))?;
            return verify_uids(self.start_euid);
        }
        Ok(())
    }

    /// For root running the setuid binary: takes back effective uid 0 (the
    /// real uid), e.g. for `doctor`'s root-only checks. Does nothing for
    /// anyone else; [`Privileges::become_service`] still works afterwards.
    pub fn keep_root_caller(&self) -> Result<()> {
        if self.caller_uid.is_root() && self.is_setuid() {
            nix::unistd::seteuid(nix_uid(Uid::ROOT))
                .map_err(|e| denied("take back root's effective uid", e))?;
        }
        Ok(())
    }

    /// Drops for good to the caller, in sudo's order: supplementary groups
    /// (never changed by a setuid binary, so they must still be the ones
    /// found at start), then real, effective and saved gid, then the three
    /// uids. Each is read back; getting the start uid back must then fail.
    pub fn drop_to_caller(&self) -> Result<()> {
        verify_groups(&self.caller_groups)?;
        let g = nix_gid(self.caller_gid);
        nix::unistd::setresgid(g, g, g).map_err(|e| denied("drop to the caller's gid", e))?;
        let u = nix_uid(self.caller_uid);
        nix::unistd::setresuid(u, u, u).map_err(|e| denied("drop to the caller's uid", e))?;
        verify_groups(&self.caller_groups)?;
        verify_gids(self.caller_gid)?;
        verify_uids(self.caller_uid)?;
        if !self.caller_uid.is_root()
            && self.start_euid != self.caller_uid
            && nix::unistd::setuid(nix_uid(self.start_euid)).is_ok()
        {
            return Err(denied(
                "drop privileges for good",
                "the service uid could be regained",
            ));
        }
        Ok(())
    }
}

impl Privileges {
    /// Checks, by reading them back, that the process runs entirely as the
    /// caller (three uids, three gids, the groups found at start); called
    /// right before exec'ing anything on the caller's behalf.
    pub fn verify_dropped(&self) -> Result<()> {
        verify_uids(self.caller_uid)?;
        verify_gids(self.caller_gid)?;
        verify_groups(&self.caller_groups)
    }
}

/// The process's supplementary groups, sorted and deduplicated.
pub fn current_groups() -> Result<Vec<Gid>> {
    let mut g = nix::unistd::getgroups()
        .map_err(|e| denied("read the supplementary groups", e))?
        .into_iter()
        .map(|g| Gid::new(g.as_raw()))
        .collect::<Result<Vec<Gid>>>()?;
    g.sort_unstable();
    g.dedup();
    Ok(g)
}

/// Compares a group list read back with the one wanted, as sets.
fn groups_match(got: &[Gid], want: &[Gid]) -> bool {
    let mut w = want.to_vec();
    w.sort_unstable();
    w.dedup();
    got == w.as_slice()
}

fn verify_groups(want: &[Gid]) -> Result<()> {
    let got = current_groups()?;
    if !groups_match(&got, want) {
        return Err(denied(
            "set the supplementary groups",
            format!("they are {got:?}, wanted {want:?}"),
        ));
    }
    Ok(())
}

/// The real, effective and saved uids.
fn read_uids() -> Result<[Uid; 3]> {
    let ids = nix::unistd::getresuid().map_err(|e| denied("read the process uids", e))?;
    let [r, e, s] = [ids.real, ids.effective, ids.saved].map(|u| Uid::new(u.as_raw()));
    Ok([r?, e?, s?])
}

/// The real, effective and saved gids.
fn read_gids() -> Result<[Gid; 3]> {
    let ids = nix::unistd::getresgid().map_err(|e| denied("read the process gids", e))?;
    let [r, e, s] = [ids.real, ids.effective, ids.saved].map(|g| Gid::new(g.as_raw()));
    Ok([r?, e?, s?])
}

fn nix_uid(u: Uid) -> nix::unistd::Uid {
    nix::unistd::Uid::from_raw(u.as_raw())
}

fn nix_gid(g: Gid) -> nix::unistd::Gid {
    nix::unistd::Gid::from_raw(g.as_raw())
}

fn verify_uids(want: Uid) -> Result<()> {
    verify_three("uids", read_uids()?, want)
}

fn verify_gids(want: Gid) -> Result<()> {
    verify_three("gids", read_gids()?, want)
}

/// Checks that real, effective and saved ids all read back as `want`.
fn verify_three<T: PartialEq + Copy + std::fmt::Debug + std::fmt::Display>(
    what: &str,
    got: [T; 3],
    want: T,
) -> Result<()> {
    if got != [want; 3] {
        return Err(denied(
            &format!("set all three {what}"),
            format!("they are {got:?}, wanted {want}"),
        ));
    }
    Ok(())
}

/// While alive, terminal stop and interrupt signals ([`HELD_SIGNALS`]) are
/// held back (delivered when it drops) and an alarm bounds how long the
/// process may live. SIGSTOP and SIGKILL cannot be blocked: what protects a
/// lock holder from them is that its three uids are the service account's.
#[derive(Debug)]
pub struct CriticalSection {
    old: SigSet,
}

impl CriticalSection {
    /// Blocks [`HELD_SIGNALS`], makes sure SIGALRM is not blocked, and arms
    /// an alarm of [`LOCK_HOLD_LIMIT`].
    pub fn enter() -> CriticalSection {
        let mut set = SigSet::empty();
        for s in HELD_SIGNALS {
            set.add(s);
        }
        let mut old = SigSet::empty();
        // Changing our own signal mask cannot fail with valid arguments.
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old));
        let mut alarm = SigSet::empty();
        alarm.add(Signal::SIGALRM);
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&alarm), None);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gids(raw: &[u32]) -> Vec<Gid> {
        raw.iter().map(|g| Gid::new(*g).unwrap()).collect()
    }

    #[test]
    fn group_lists_compare_as_sets() {
        assert!(groups_match(&gids(&[10, 20]), &gids(&[20, 10, 10])));
        assert!(!groups_match(&gids(&[10, 20, 30]), &gids(&[10, 20])));
        assert!(!groups_match(&gids(&[10]), &gids(&[10, 20])));
        assert!(groups_match(&[], &[]));
    }

    #[test]
    fn critical_section_holds_terminal_signals_and_restores_the_mask() {
        // Signal masks are per thread: this test's thread only.
        let before = SigSet::thread_get_mask().unwrap();
        {
            let _c = CriticalSection::enter();
            let inside = SigSet::thread_get_mask().unwrap();
            for s in HELD_SIGNALS {
                assert!(inside.contains(s), "{s:?} not blocked");
            }
            assert!(!inside.contains(Signal::SIGALRM));
        }
        let after = SigSet::thread_get_mask().unwrap();
        for s in HELD_SIGNALS {
            assert_eq!(before.contains(s), after.contains(s), "{s:?}");
        }
    }

    #[test]
    fn a_process_that_is_not_setuid_trusts_the_named_account() {
        let p = Privileges {
            caller_uid: Uid::new(1000).unwrap(),
            caller_gid: Gid::new(1000).unwrap(),
            caller_groups: gids(&[1000]),
            start_euid: Uid::new(1000).unwrap(),
            service: Some((Uid::new(990).unwrap(), Gid::new(990).unwrap())),
            caller_env: vec![("HOME".into(), "/home/a".into())],
        };
        assert!(!p.is_setuid());
        assert_eq!(p.service_uid(), Uid::new(990).ok());
        assert_eq!(p.caller_var("HOME").unwrap(), "/home/a");
        let s = Privileges {
            start_euid: Uid::new(991).unwrap(),
            ..p
        };
        assert!(s.is_setuid());
        assert_eq!(s.service_uid(), Uid::new(991).ok());
    }
}
