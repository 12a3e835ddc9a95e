//! System fixtures for root-only tests: throwaway users and network
//! namespaces, created for a test and removed when dropped.

use std::sync::Mutex;
use std::time::Duration;

use crate::cmd::{must, run};

/// A local user created with `useradd` and removed (with its home) on drop.
pub struct TempUser {
    /// Login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl TempUser {
    /// Creates user `name` (deleting a leftover of the same name first),
    /// with a home directory and a shell, in the extra `groups` given.
    pub fn create(name: &str, groups: &[&str]) -> TempUser {
        TempUser::create_with(name, groups, &[])
    }

    /// [`TempUser::create`] with `extra` useradd options (`--badname`).
    pub fn create_with(name: &str, groups: &[&str], extra: &[&str]) -> TempUser {
        let mut args = vec!["-m", "-s", "/bin/bash"];
        let joined = groups.join(",");
        if !groups.is_empty() {
            args.extend(["-G", joined.as_str()]);
        }
        args.extend(extra);
        TempUser::add(name, &args, || {
            let _ = run("userdel", &["-r", "-f", name]);
        })
    }

    /// User `name` at a fixed `uid` (for the housekeeper's tests, in a band
    /// of the test's own: see `housekeeper`'s module docs), with a group of
    /// its own and `/bin/sh`. A leftover of an earlier run goes first, with
    /// its processes: the account of that name, the one holding that uid,
    /// the group `name`.
    pub fn with_uid(name: &str, uid: u32) -> TempUser {
        let uid_s = uid.to_string();
        let _ = run("pkill", &["-KILL", "-u", &uid_s]);
        let args = ["-m", "-s", "/bin/sh", "-u", &uid_s, "-U"];
        TempUser::add(name, &args, || {
            let holder = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten();
            for old in [Some(name.to_string()), holder.map(|u| u.name)]
                .into_iter()
                .flatten()
            {
                let _ = run("userdel", &["-r", "-f", &old]);
            }
            let _ = run("groupdel", &[name]);
        })
    }

    /// `useradd OPTIONS... name` without subordinate uids, after `clear`
    /// has removed what stands in the way, retried while it fails: useradd
    /// and userdel fail while another process (a parallel test, another
    /// suite) holds the passwd lock.
    fn add(name: &str, options: &[&str], clear: impl Fn()) -> TempUser {
        static LOCK: Mutex<()> = Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // No subordinate uids: useradd would hand out ranges from 100000 up,
        // which the gate never manages, so a test user at such a uid (200000)
        // would stop being gated while another test's user exists.
        let mut args = vec!["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0"];
        args.extend(options);
        args.push(name);
        let mut last = None;
        for attempt in 1..=50 {
            clear();
            let r = run("useradd", &args);
            if r.code == 0 {
                let u = nix::unistd::User::from_name(name)
                    .expect("getpwnam")
                    .expect("user just created");
                return TempUser {
                    name: name.to_string(),
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                };
            }
            last = Some(r);
            std::thread::sleep(Duration::from_millis(20 * attempt.min(10)));
        }
        panic!("useradd {args:?} kept failing: {last:?}");
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        // End anything left running, then remove the account and its home.
        let _ = run("pkill", &["-KILL", "-u", &self.name]);
        let _ = run("userdel", &["-r", "-f", &self.name]);
    }
}

/// A group created with `groupadd` and removed on drop.
pub struct TempGroup {
    /// Group name.
    pub name: String,
}

impl TempGroup {
    /// Creates group `name` (removing a leftover first).
    pub fn create(name: &str) -> TempGroup {
        let _ = run("groupdel", &[name]);
        must("groupadd", &[name]);
        TempGroup {
            name: name.to_string(),
        }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = run("groupdel", &[&self.name]);
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> Netns {
        let _ = run("ip", &["netns", "del", name]);
        must("ip", &["netns", "add", name]);
        must("ip", &["-n", name, "link", "set", "lo", "up"]);
        Netns {
            name: name.to_string(),
        }
    }

    /// Arguments that run a program inside the namespace: `ip netns exec NAME ...`.
    pub fn exec_args<'a>(&'a self, program: &'a [&'a str]) -> Vec<&'a str> {
        let mut v = vec!["netns", "exec", self.name.as_str()];
        v.extend_from_slice(program);
        v
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}
