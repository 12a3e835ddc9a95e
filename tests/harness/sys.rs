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

    /// [`TempUser::create`] with `extra` useradd options (`--badname`,
    /// `-u UID`). Retried while useradd finds /etc/passwd locked: parallel
    /// tests (and other suites) add users at the same time.
    pub fn create_with(name: &str, groups: &[&str], extra: &[&str]) -> TempUser {
        static LOCK: Mutex<()> = Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _ = run("userdel", &["-r", "-f", name]);
        // No subordinate uids: useradd would hand out ranges from 100000 up,
        // which the gate never manages, so a test user at such a uid (200000)
        // would stop being gated while another test's user exists.
        let mut args = vec![
            "-m",
            "-s",
            "/bin/bash",
            "-K",
            "SUB_UID_COUNT=0",
            "-K",
            "SUB_GID_COUNT=0",
        ];
        let joined = groups.join(",");
        if !groups.is_empty() {
            args.extend(["-G", joined.as_str()]);
        }
        args.extend(extra);
        args.push(name);
        let mut last = None;
        for _ in 0..50 {
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
            std::thread::sleep(Duration::from_millis(100));
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
