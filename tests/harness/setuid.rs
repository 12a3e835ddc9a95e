//! A real setuid installation for the privilege tests: the built `kloigos`
//! copied into a scratch directory on a suid file system, owned by a
//! throwaway service account, mode 4755; a shared tree owned by that
//! account; throwaway users alice, bob and an admin; and a way to run any
//! program as any of them.
//!
//! The installed binary reads `/etc/kloigos/config.json` (without an
//! override it never drops to the caller, which is what these tests are
//! about), so every command runs in its own mount namespace where `/etc`
//! is an overlay of the install's scratch `etc/` on top of the real one:
//! the real `/etc` is never written, and parallel tests see their own
//! configuration (and, for `doctor`, their own `/etc/pam.d` files).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{must, run, Run};
use crate::sys::TempUser;

/// Mounts the overlay on /etc, then execs the rest: `$1` is the upper etc dir.
const NS_SCRIPT: &str = r#"set -e
etc=$1; shift
/usr/bin/mount -t overlay kloigos-etc -o lowerdir="$etc":/etc /etc
exec "$@"
"#;

/// Who runs a command.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// root (the test process's identity).
    Root,
    /// A throwaway user, through `setpriv --reuid --regid --init-groups`.
    User(&'a TempUser),
}

/// A setuid installation with its users and shared tree; everything is
/// removed on drop (users with their processes and homes, the scratch dir).
pub struct Install {
    /// The service account owning the binary and the shared tree.
    pub svc: TempUser,
    /// A user who books.
    pub alice: TempUser,
    /// The hostile user.
    pub bob: TempUser,
    /// A user listed in cluster.json `admins`.
    pub admin: TempUser,
    /// The node of the cluster (CPUs 0-3, one CPU per unit).
    pub node: String,
    /// The scratch dir under /var/tmp (0755, so every user can traverse it).
    pub dir: tempfile::TempDir,
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

impl Install {
    /// Builds it: users `kp<tag>s` (service), `kp<tag>a`, `kp<tag>b`,
    /// `kp<tag>m` (admin, plus `admin_groups`), bob in `bob_groups`; the
    /// binary; the config; `admin init` and `admin add-node` run as root
    /// through the installed binary (so they write as the service account).
    pub fn new(tag: &str, bob_groups: &[&str]) -> Install {
        let dir = tempfile::Builder::new()
            .prefix("kloigos-priv-")
            .tempdir_in("/var/tmp")
            .expect("scratch dir in /var/tmp");
        chmod(dir.path(), 0o755);
        let opts = must(
            "findmnt",
            &["-no", "OPTIONS", "-T", dir.path().to_str().expect("utf-8")],
        );
        assert!(
            !opts.stdout.split(',').any(|o| o.trim() == "nosuid"),
            "{} is on a nosuid file system ({}); the setuid tests need one without nosuid",
            dir.path().display(),
            opts.stdout.trim()
        );
        let svc = crate::pam::user(&format!("kp{tag}s"), &[]);
        let alice = crate::pam::user(&format!("kp{tag}a"), &[]);
        let bob = crate::pam::user(&format!("kp{tag}b"), bob_groups);
        let admin = crate::pam::user(&format!("kp{tag}m"), &[]);
        let install = Install {
            svc,
            alice,
            bob,
            admin,
            node: format!("n{tag}"),
            dir,
        };
        let d = install.dir.path();
        for sub in ["bin", "etc", "etc/kloigos", "marks"] {
            std::fs::create_dir(d.join(sub)).expect("mkdir");
            chmod(&d.join(sub), 0o755);
        }
        // Marks left by code that must not run (preloaded libraries, PATH stand-ins): anyone may write.
        chmod(&d.join("marks"), 0o1777);
        std::fs::copy(crate::bin("kloigos"), install.bin()).expect("copy kloigos");
        chown(&install.bin(), install.svc.uid, install.svc.gid);
        // chown clears the setuid bit: set the mode after it.
        chmod(&install.bin(), 0o4755);
        std::fs::create_dir(install.shared()).expect("mkdir shared");
        chown(&install.shared(), install.svc.uid, install.svc.gid);
        chmod(&install.shared(), 0o755);
        let cfg = serde_json::json!({
            "shared": install.shared(),
            "node": install.node,
            "service_user": install.svc.name,
        });
        std::fs::write(d.join("etc/kloigos/config.json"), cfg.to_string()).expect("config");
        chmod(&d.join("etc/kloigos/config.json"), 0o644);
        install
            .kloigos(As::Root, &["admin", "init", "--admin", &install.admin.name])
            .ok();
        install
            .kloigos(
                As::Root,
                &[
                    "admin",
                    "add-node",
                    &install.node,
                    "--cpus",
                    "0-3",
                    "--unit-cpus",
                    "1",
                ],
            )
            .ok();
        install
    }

    /// The installed setuid binary.
    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin/kloigos")
    }

    /// The shared tree.
    pub fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// The scratch etc dir laid over /etc in each command's namespace.
    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// The directory where forbidden code leaves marks.
    pub fn marks(&self) -> PathBuf {
        self.dir.path().join("marks")
    }

    /// The node's directory.
    pub fn node_dir(&self) -> PathBuf {
        self.shared().join("nodes").join(&self.node)
    }

    /// The node's state.json.
    pub fn state_path(&self) -> PathBuf {
        self.node_dir().join("state.json")
    }

    /// The node's state.json, byte for byte.
    pub fn state_bytes(&self) -> Vec<u8> {
        std::fs::read(self.state_path()).expect("read state.json")
    }

    /// cluster.json, byte for byte.
    pub fn cluster_bytes(&self) -> Vec<u8> {
        std::fs::read(self.shared().join("cluster.json")).expect("read cluster.json")
    }

    /// A command that runs `argv` as `who` in a fresh mount namespace with
    /// this install's /etc overlay, with exactly the environment `env`
    /// (plus nothing: `env -i`).
    pub fn command(&self, who: As, env: &[(&str, &str)], argv: &[OsString]) -> Command {
        let mut c = Command::new("/usr/bin/unshare");
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                NS_SCRIPT,
                "sh",
            ])
            .arg(self.etc());
        if let As::User(u) = who {
            c.arg("/usr/bin/setpriv")
                .arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .args(["--init-groups", "--"]);
        }
        c.args(["/usr/bin/env", "-i"]);
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.args(argv);
        c
    }

    /// Runs the installed kloigos as `who` with a plain environment.
    pub fn kloigos(&self, who: As, args: &[&str]) -> Run {
        self.kloigos_env(who, &[("PATH", "/usr/bin:/bin"), ("NO_COLOR", "1")], args)
    }

    /// Runs the installed kloigos as `who` with exactly `env`.
    pub fn kloigos_env(&self, who: As, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut argv: Vec<OsString> = vec![self.bin().into()];
        argv.extend(args.iter().map(OsString::from));
        Run::of(&mut self.command(who, env, &argv))
    }

    /// Runs `/usr/bin/python3 -c CODE ARGS...` as `who`.
    pub fn python(&self, who: As, code: &str, args: &[&str]) -> Run {
        let mut argv: Vec<OsString> = vec!["/usr/bin/python3".into(), "-c".into(), code.into()];
        argv.extend(args.iter().map(OsString::from));
        Run::of(&mut self.command(who, &[("PATH", "/usr/bin:/bin")], &argv))
    }

    /// Every path under the scratch dir with its owner and mode, sorted:
    /// a snapshot to compare before and after a refused command.
    pub fn snapshot(&self) -> Vec<String> {
        let r = run(
            "find",
            &[
                self.dir.path().to_str().expect("utf-8"),
                "-printf",
                "%p %U %m %s\\n",
            ],
        );
        let mut v: Vec<String> = r.stdout.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    /// Writes `text` to `dir/name` owned by root, mode `mode`.
    pub fn write_file(&self, rel: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::write(&p, text).expect("write file");
        chmod(&p, mode);
        p
    }

    /// Gives `path` to `user` (uid and gid).
    pub fn give(&self, path: &Path, user: &TempUser) {
        chown(path, user.uid, user.gid);
    }
}

/// A throwaway account with a name outside the classic `[a-z_][a-z0-9_-]*`
/// rule, as SSSD or winbind hand out (`kuser@ad.test`): `useradd
/// --badname`, retried while another test holds the passwd lock. Removed
/// on drop like any [`TempUser`].
pub fn domain_user(name: &str) -> TempUser {
    TempUser::create_with(name, &[], &["--badname"])
}
