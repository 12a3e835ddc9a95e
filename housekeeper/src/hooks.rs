//! Release hooks: executables in `<hooks_dir>/release.d/`, run in name
//! order for each booking that ended since the last pass, with a clean
//! environment, a timeout, and their output logged.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kloigos_core::booking::Booking;
use kloigos_core::store::Trust;
use kloigos_core::trusted::{Kind, TrustedDir};

use crate::error::{Error, Result};

/// How long one hook may run before its process group is killed (less
/// when the pass deadline is nearer).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Most output logged per hook.
const MAX_OUTPUT: usize = 4096;

/// The hooks to run, in name order: regular executable files owned by root,
/// not writable by others, with plain names (no dot files or editor backups,
/// as run-parts), in a `release.d` that is itself root's, not a link and
/// not writable by others (so no one else can swap a hook once it is
/// checked). Others are skipped with a log line.
pub fn list(hooks_dir: &Path) -> Vec<PathBuf> {
    list_trusting(hooks_dir, &Trust::root_only())
}

/// [`list`], believing `trust` instead of root alone.
fn list_trusting(hooks_dir: &Path, trust: &Trust) -> Vec<PathBuf> {
    let dir = match TrustedDir::open_if_any(&hooks_dir.join("release.d"), trust) {
        Ok(Some(dir)) => dir,
        Ok(None) => return Vec::new(),
        Err(err) => {
            crate::log::error(&format!("release hooks skipped: {err}"));
            return Vec::new();
        }
    };
    let Ok(entries) = dir.entries() else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for (name, kind) in entries {
        let Some(name) = name.to_str() else { continue };
        let plain = !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            && !name.ends_with('~');
        let Ok(Some(st)) = dir.stat(name) else {
            continue;
        };
        if !plain || kind != Kind::File || st.kind != Kind::File || st.mode & 0o111 == 0 {
            continue;
        }
        let path = dir.join(name);
        if let Err(err) = trust.check_ids(&path, st.uid, st.mode) {
            crate::log::error(&format!("release hook skipped: {err}"));
            continue;
        }
        out.push(path);
    }
    out.sort();
    out
}

/// The environment a hook gets for `b`.
pub fn env_for(b: &Booking) -> Vec<(&'static str, String)> {
    vec![
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("KLOIGOS_USER", b.user.to_string()),
        ("KLOIGOS_UID", b.uid.to_string()),
        ("KLOIGOS_BOOKING", b.id.to_string()),
        ("KLOIGOS_NODE", b.node.to_string()),
        ("KLOIGOS_CPUS", b.cpus.to_string()),
        (
            "KLOIGOS_PORTS",
            b.ports.map(|p| p.to_string()).unwrap_or_default(),
        ),
        ("KLOIGOS_START", b.start.to_string()),
        ("KLOIGOS_END", b.end.to_string()),
    ]
}

/// Runs one hook for one booking; `Ok(true)` when it exited 0 in time.
/// Output goes to a scratch file in `scratch_dir` (no pipe to fill up), then to the log.
pub fn run(hook: &Path, b: &Booking, scratch_dir: &Path) -> Result<bool> {
    let out_path = scratch_dir.join("hook-output.tmp");
    let _ = fs::remove_file(&out_path);
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&out_path)
        .map_err(|e| Error::io(&out_path, e))?;
    let _ = fs::remove_file(&out_path);
    let clone = |f: &File| f.try_clone().map_err(|e| Error::io(&out_path, e));
    let mut child = Command::new(hook)
        .env_clear()
        .envs(env_for(b))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(clone(&out)?)
        .stderr(clone(&out)?)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: hook.display().to_string(),
            source,
        })?;
    // The hook's own limit, or less when the pass deadline is nearer.
    let timeout = crate::deadline::bound(HOOK_TIMEOUT);
    let (status, reaped) = match crate::sys::wait_timeout(&mut child, timeout) {
        Ok(Some(s)) => (Some(s), true),
        Ok(None) | Err(_) => (None, crate::sys::kill_group(&mut child)),
    };
    let mut text = Vec::new();
    let _ = out.rewind();
    let _ = out.by_ref().take(MAX_OUTPUT as u64).read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    let name = hook.display();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        crate::log::note(&format!("hook {name} ({}): {line}", b.id));
    }
    match status {
        Some(s) if s.success() => {
            crate::log::event(&format!(
                "release hook {name} ran for {} ({})",
                b.id, b.user
            ));
            Ok(true)
        }
        Some(s) => {
            crate::log::error(&format!("release hook {name} for {} failed: {s}", b.id));
            Ok(false)
        }
        None => {
            let why = if timeout < HOOK_TIMEOUT {
                "was killed at the pass deadline".to_string()
            } else {
                format!(
                    "ran longer than {} s and was killed",
                    HOOK_TIMEOUT.as_secs()
                )
            };
            let stuck = if reaped {
                ""
            } else {
                " (it is stuck in the kernel and was left behind)"
            };
            crate::log::error(&format!("release hook {name} for {} {why}{stuck}", b.id));
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, mode: u32) {
        fs::write(path, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn only_plain_trusted_executables_in_a_trusted_directory_are_hooks() {
        let t = tempfile::tempdir().unwrap();
        let trust = Trust::root_and(
            kloigos_core::ids::Uid::new(nix::unistd::geteuid().as_raw()).expect("a real uid"),
        );
        let hooks = t.path().join("hooks");
        let dir = hooks.join("release.d");
        assert!(list_trusting(&hooks, &trust).is_empty());
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        write(&dir.join("20-b"), 0o755);
        write(&dir.join("10-a"), 0o700);
        write(&dir.join(".hidden"), 0o755);
        write(&dir.join("backup~"), 0o755);
        write(&dir.join("30-not-executable"), 0o644);
        write(&dir.join("40-others-may-write"), 0o775);
        std::os::unix::fs::symlink(dir.join("10-a"), dir.join("50-link")).unwrap();
        fs::create_dir(dir.join("60-dir")).unwrap();
        assert_eq!(
            list_trusting(&hooks, &trust),
            vec![dir.join("10-a"), dir.join("20-b")]
        );
        // A release.d others may write, or one that is a link: no hooks.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(list_trusting(&hooks, &trust).is_empty());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let moved = t.path().join("real-release.d");
        fs::rename(&dir, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        assert!(list_trusting(&hooks, &trust).is_empty());
    }
}
