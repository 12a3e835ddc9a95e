//! Cluster nodes on one machine, for install.sh and the end-to-end test:
//! a "node" is a network namespace on a private LAN plus its own hostname
//! (UTS namespace) and its own root file system layer (a mount namespace in
//! which `/etc`, `/usr/local`, `/usr/share`, `/var/lib` and the PAM module
//! directory are overlays whose writable upper layer is a scratch
//! directory). Whatever is installed on a node lands in its scratch layer;
//! the host's files are never written. Each node runs its own sshd.
//!
//! Also the helpers of the install.sh tests: running the script, free uids,
//! the PAM module directory, snapshots of a tree.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd::{must, run, Run};
use crate::poll::wait_until;
use crate::sys::{Netns, TempUser};

/// The repository's install.sh.
pub fn install_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("install.sh")
}

/// Runs install.sh with `args` (as the test process: root).
pub fn install_sh<S: AsRef<OsStr>>(args: &[S]) -> Run {
    Run::of(Command::new(install_script()).args(args))
}

/// The first uid at or above `from` that no user has and no group has as gid.
pub fn free_uid(from: u32) -> u32 {
    (from..from + 1000)
        .find(|&u| {
            run("getent", &["passwd", &u.to_string()]).code != 0
                && run("getent", &["group", &u.to_string()]).code != 0
        })
        .expect("a free uid")
}

/// The system's PAM module directory: where pam_unix.so lives (the same
/// search as install.sh's).
pub fn module_dir() -> PathBuf {
    let mut candidates = Vec::new();
    for base in ["/lib", "/usr/lib"] {
        if let Ok(rd) = std::fs::read_dir(base) {
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("-linux-gnu"))
                .map(|e| e.path().join("security"))
                .collect();
            v.sort();
            candidates.extend(v);
        }
    }
    for d in [
        "/lib64/security",
        "/usr/lib64/security",
        "/lib/security",
        "/usr/lib/security",
    ] {
        candidates.push(PathBuf::from(d));
    }
    candidates
        .into_iter()
        .find(|d| d.join("pam_unix.so").exists())
        .expect("a PAM module directory holding pam_unix.so")
}

/// Every path under `dir`: files with owner, group, mode, size and mtime;
/// directories with owner, group and mode (their mtimes move when entries
/// come and go). Sorted, to compare before and after.
pub fn snapshot(dir: &Path) -> Vec<String> {
    let d = dir.to_str().expect("utf-8");
    let dirs = run("find", &[d, "-type", "d", "-printf", "%p dir %U %G %m\\n"]);
    let rest = run(
        "find",
        &[d, "!", "-type", "d", "-printf", "%p %y %U %G %m %s %T@\\n"],
    );
    let mut v: Vec<String> = dirs
        .stdout
        .lines()
        .chain(rest.stdout.lines())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The private LAN of the nodes: a namespace holding a bridge
/// (10.232.0.254/24) that stands for the cluster's switch and for the
/// machine users ssh from. Nothing is routed to the host.
pub struct Lan {
    /// The namespace of the bridge and the ssh clients.
    pub ns: Netns,
}

/// The LAN's /24.
pub const SUBNET: &str = "10.232.0";

impl Lan {
    /// Creates the namespace `name` with bridge `br0`.
    pub fn create(name: &str) -> Lan {
        let ns = Netns::create(name);
        must("ip", &["-n", name, "link", "add", "br0", "type", "bridge"]);
        must(
            "ip",
            &[
                "-n",
                name,
                "addr",
                "add",
                &format!("{SUBNET}.254/24"),
                "dev",
                "br0",
            ],
        );
        must("ip", &["-n", name, "link", "set", "br0", "up"]);
        Lan { ns }
    }

    /// A command run in the LAN namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns.name, program]);
        c
    }
}

/// Sets the hostname and mounts the overlays, then holds the namespaces.
/// `$1` hostname, `$2` scratch dir, then pairs of (index, lower dir).
const NODE_SCRIPT: &str = r#"set -e
hostname "$1"; dir=$2; shift 2
while [ "$#" -gt 0 ]; do
  i=$1; lower=$2; shift 2
  mkdir -p "$dir/upper/$i" "$dir/work/$i"
  mount -t overlay "kloigos-node" -o "lowerdir=$lower,upperdir=$dir/upper/$i,workdir=$dir/work/$i" "$lower"
done
exec sleep infinity
"#;

/// One node: its network namespace on the LAN, its hostname, its own
/// layer over the system directories, and (once started) its sshd. All of
/// it goes on drop.
pub struct Node {
    /// Hostname and node name.
    pub name: String,
    /// Its address on the LAN.
    pub addr: String,
    /// Scratch dir: upper layers, sshd keys and config.
    pub dir: PathBuf,
    /// The directories overlaid, in order (their upper layers are `upper/<i>`).
    pub overlaid: Vec<PathBuf>,
    holder: Child,
    sshd: std::sync::Mutex<Option<Child>>,
    ns: Netns,
}

impl Node {
    /// Boots node `name` with address `.<host>` on `lan`, its scratch layer in `dir`.
    pub fn boot(lan: &Lan, ns_name: &str, name: &str, host: u8, dir: &Path) -> Node {
        let ns = Netns::create(ns_name);
        let veth = format!("v{host}");
        must(
            "ip",
            &[
                "-n",
                &lan.ns.name,
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns_name,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &lan.ns.name,
                "link",
                "set",
                &veth,
                "master",
                "br0",
                "up",
            ],
        );
        let addr = format!("{SUBNET}.{host}");
        must(
            "ip",
            &[
                "-n",
                ns_name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ],
        );
        must("ip", &["-n", ns_name, "link", "set", "eth0", "up"]);
        std::fs::create_dir_all(dir).expect("node dir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let overlaid = vec![
            PathBuf::from("/etc"),
            PathBuf::from("/usr/local"),
            PathBuf::from("/usr/share"),
            PathBuf::from("/var/lib"),
            module_dir(),
        ];
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns_name, "unshare", "--uts", "--mount"])
            .args([
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                NODE_SCRIPT,
                "sh",
            ])
            .arg(name)
            .arg(dir);
        for (i, d) in overlaid.iter().enumerate() {
            c.arg(i.to_string()).arg(d);
        }
        c.stdin(Stdio::null()).stdout(Stdio::null());
        let holder = c.spawn().expect("start the node's namespaces");
        let mut node = Node {
            name: name.to_string(),
            addr,
            dir: dir.to_path_buf(),
            overlaid,
            holder,
            sshd: std::sync::Mutex::new(None),
            ns,
        };
        // The holder execs `sleep` once every mount is in place.
        let pid = node.holder.id();
        let up = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        assert!(
            up,
            "node {name} did not come up: {:?}",
            node.holder.try_wait()
        );
        let h = node.run(&["hostname"]);
        assert_eq!(h.stdout.trim(), name, "node hostname: {h:?}");
        node
    }

    /// A command that runs `argv` on the node (its network, hostname and mounts), as root.
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.holder.id().to_string(),
            "--net",
            "--uts",
            "--mount",
            "--",
        ])
        .args(argv);
        c
    }

    /// Runs `argv` on the node as root.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Run {
        Run::of(&mut self.command(argv))
    }

    /// Runs `argv` on the node as `user` (setpriv: uid, gid, groups).
    pub fn run_as(&self, user: &TempUser, argv: &[&str]) -> Run {
        let mut v = vec![
            "setpriv".to_string(),
            format!("--reuid={}", user.uid),
            format!("--regid={}", user.gid),
            "--init-groups".into(),
            "--".into(),
        ];
        v.extend(argv.iter().map(|s| s.to_string()));
        self.run(&v)
    }

    /// The node's upper layer of `dir` (one of [`Node::overlaid`]).
    pub fn layer(&self, dir: &Path) -> PathBuf {
        let i = self
            .overlaid
            .iter()
            .position(|d| d == dir)
            .expect("an overlaid directory");
        self.dir.join("upper").join(i.to_string())
    }

    /// The state of the node that an install may change, as one sorted
    /// listing: accounts and groups, nftables tables, the PAM files (by
    /// hash), and every file under the directories install.sh writes.
    pub fn system_state(&self) -> Vec<String> {
        let moddir = module_dir();
        let script = r#"getent passwd | sed 's/^/passwd /'; getent group | sed 's/^/group /'
nft list tables | sed 's/^/nft /'
sha256sum /etc/pam.d/* | sed 's/^/pam /'
for d in "$@"; do
  [ -e "$d" ] || { echo "absent $d"; continue; }
  find "$d" -type d -printf 'dir %p %U %G %m\n'
  find "$d" ! -type d -printf 'file %p %y %U %G %m %s %T@\n'
done"#;
        let mut argv: Vec<String> = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
        for d in [
            "/etc/kloigos",
            "/etc/cron.d",
            "/etc/systemd/system",
            "/usr/local",
            "/usr/share/bash-completion/completions",
            "/usr/share/zsh/vendor-completions",
            "/usr/share/fish/vendor_completions.d",
            "/var/lib/kloigos",
        ] {
            argv.push(d.into());
        }
        argv.push(moddir.display().to_string());
        let r = self.run(&argv);
        let mut v: Vec<String> = r.stdout.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    /// Starts the node's sshd on port 22 of its address: its own host key,
    /// the node's /etc/pam.d (UsePAM), keys from `authorized/<user>` in the
    /// node's dir. Waits until it listens.
    pub fn start_sshd(&self, lan: &Lan) {
        let d = self.ssh_dir();
        let p = |n: &str| d.join(n).display().to_string();
        if !d.join("host").exists() {
            must(
                "ssh-keygen",
                &["-q", "-t", "ed25519", "-N", "", "-f", &p("host")],
            );
        }
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port 22\nListenAddress {}\nHostKey {}\nPidFile {}\nUsePAM yes\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile {}/%u\nStrictModes no\nUseDNS no\nPrintMotd no\nLogLevel VERBOSE\n",
                self.addr,
                p("host"),
                p("sshd.pid"),
                p("keys")
            ),
        )
        .expect("sshd_config");
        std::fs::create_dir_all("/run/sshd").expect("privsep dir");
        let mut c = self.command(&[
            "/usr/sbin/sshd",
            "-D",
            "-f",
            &p("sshd_config"),
            "-E",
            &p("log"),
        ]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        *self.sshd.lock().expect("sshd") = Some(c.spawn().expect("start sshd"));
        let addr = self.addr.clone();
        let up = wait_until(Duration::from_secs(10), || probe(lan, &addr));
        assert!(
            up,
            "sshd of {} did not listen; log:\n{}",
            self.name,
            self.sshd_log()
        );
    }

    /// The sshd scratch dir (with `keys/`), created on first use.
    fn ssh_dir(&self) -> PathBuf {
        let d = self.dir.join("ssh");
        std::fs::create_dir_all(d.join("keys")).expect("ssh dir");
        for p in [&d, &d.join("keys")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        d
    }

    /// Lets `user` log in to this node with `key_pub` (a public key line).
    pub fn authorize(&self, user: &str, key_pub: &str) {
        let path = self.ssh_dir().join("keys").join(user);
        std::fs::write(&path, key_pub).expect("authorized key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    /// sshd's log (-E).
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ssh/log")).unwrap_or_default()
    }

    /// Stops sshd.
    pub fn stop_sshd(&self) {
        let child = self.sshd.lock().map(|mut g| g.take()).unwrap_or_default();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The network namespace's name.
    pub fn netns(&self) -> &str {
        &self.ns.name
    }
}

/// Whether something listens on `addr`:22, seen from the LAN namespace.
fn probe(lan: &Lan, addr: &str) -> bool {
    let mut c = lan.command("python3");
    c.args([
        "-c",
        "import socket,sys; socket.create_connection((sys.argv[1], 22), 1).close()",
        addr,
    ]);
    Run::of(&mut c).code == 0
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_sshd();
        // The mounts live as long as a process holds the mount namespace.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// An ssh client key, used from the LAN namespace.
pub struct SshClient {
    /// The private key file.
    pub key: PathBuf,
}

impl SshClient {
    /// Generates a key in `dir`.
    pub fn new(dir: &Path) -> SshClient {
        let key = dir.join("id");
        must(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                key.to_str().expect("utf-8"),
            ],
        );
        SshClient { key }
    }

    /// The public key line.
    pub fn public(&self) -> String {
        std::fs::read_to_string(self.key.with_extension("pub")).expect("id.pub")
    }

    /// `ssh user@node -- command...` from the LAN, no prompts.
    pub fn ssh(&self, lan: &Lan, user: &str, node: &Node, command: &[&str]) -> Run {
        let mut c = lan.command("ssh");
        c.args(["-F", "/dev/null", "-i"])
            .arg(&self.key)
            .args(crate::pam::SSH_CLIENT_OPTS)
            .arg(format!("{user}@{}", node.addr))
            .arg("--")
            .args(command)
            .stdin(Stdio::null());
        Run::of(&mut c)
    }
}
