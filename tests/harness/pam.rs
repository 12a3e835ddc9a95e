//! Fixtures for the PAM module's system tests: scratch `/etc/pam.d` service
//! files, a `/dev/log` listener visible only inside a mount namespace,
//! pamtester runs, and a real sshd with its own keys and PAM stack.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cmd::{must, run, Run};
use crate::poll::wait_until;
use crate::sys::{TempGroup, TempUser};

/// The built module, by absolute path.
pub fn module() -> PathBuf {
    crate::bin("libpam_kloigos.so")
}

/// Device nodes bind-mounted into the namespace's private `/dev`.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Runs `"$@"` in the current (fresh, private) mount namespace after making
/// `/dev` a scratch directory holding the usual nodes plus our `log`
/// socket, and, unless `$2` is `-`, `$2` bind-mounted over `/etc/pam.d`.
const NS_SCRIPT: &str = r#"set -e
dev=$1; pamd=$2; shift 2
for n in null zero full random urandom tty; do
  if [ -e "/dev/$n" ]; then mount --bind "/dev/$n" "$dev/$n"; fi
done
mount --rbind "$dev" /dev
if [ "$pamd" != - ]; then mount --bind "$pamd" /etc/pam.d; fi
exec "$@"
"#;

/// Options of every test ssh client: keys only, no prompts, no known hosts.
pub const SSH_CLIENT_OPTS: &[&str] = &[
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "ConnectTimeout=10",
    "-o",
    "LogLevel=ERROR",
];

/// A syslog listener: a datagram socket that a mount namespace sees as
/// `/dev/log` (this machine runs no syslogd). Collects every line.
pub struct SyslogSink {
    dir: tempfile::TempDir,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl SyslogSink {
    /// Binds the socket and starts collecting.
    pub fn new() -> SyslogSink {
        let dir = tempfile::Builder::new()
            .prefix("kloigos-devlog-")
            .tempdir()
            .expect("temp dir");
        let dev = dir.path().join("dev");
        std::fs::create_dir(&dev).expect("mkdir dev");
        // Processes that dropped privileges still need /dev/null.
        for d in [dir.path(), dev.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for n in DEV_NODES {
            std::fs::write(dev.join(n), b"").expect("mount point");
        }
        let sock = UnixDatagram::bind(dev.join("log")).expect("bind /dev/log stand-in");
        std::fs::set_permissions(dev.join("log"), std::fs::Permissions::from_mode(0o666))
            .expect("chmod log");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&lines), Arc::clone(&stop));
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while !s.load(Ordering::SeqCst) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                    l.lock().expect("lines").push(line);
                }
            }
        });
        SyslogSink {
            dir,
            lines,
            stop,
            reader: Some(reader),
        }
    }

    /// A command that runs `program` inside a new mount namespace where
    /// `/dev/log` is this sink (and `pam_d`, if given, is `/etc/pam.d`).
    pub fn command(&self, pam_d: Option<&Path>, program: &str) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            NS_SCRIPT,
            "sh",
        ])
        .arg(self.dir.path().join("dev"))
        .arg(pam_d.map_or_else(|| PathBuf::from("-"), Path::to_path_buf))
        .arg(program);
        c
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// How many lines have arrived (to look only at later ones).
    pub fn count(&self) -> usize {
        self.lines.lock().expect("lines").len()
    }

    /// Waits for a line after the first `after` that contains every one of
    /// `needles`.
    pub fn wait_for(&self, after: usize, needles: &[&str], timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.lines()[after.min(self.count())..]
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            found.is_some()
        });
        found
    }
}

impl Default for SyslogSink {
    fn default() -> Self {
        SyslogSink::new()
    }
}

impl Drop for SyslogSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A scratch service file `/etc/pam.d/<name>`, removed on drop.
pub struct PamService {
    /// The service name.
    pub name: String,
    path: PathBuf,
}

impl PamService {
    /// Writes `/etc/pam.d/<name>` with `text`.
    pub fn create(name: &str, text: &str) -> PamService {
        let path = Path::new("/etc/pam.d").join(name);
        std::fs::write(&path, text).expect("write pam.d service");
        PamService {
            name: name.to_string(),
            path,
        }
    }

    /// Replaces the file's content.
    pub fn set(&self, text: &str) {
        std::fs::write(&self.path, text).expect("rewrite pam.d service");
    }

    /// A stack that makes the module's three answers tell apart through
    /// pamtester: success jumps to pam_permit (exit 0), PAM_IGNORE falls on
    /// pam_deny ("Authentication failure"), a denial ends the stack with the
    /// module's own code ("Permission denied").
    pub fn stack(module_args: &str) -> String {
        format!(
            "account [success=1 ignore=ignore default=die] {} {module_args}\n\
             account requisite pam_deny.so\n\
             account required pam_permit.so\n",
            module().display()
        )
    }

    /// A stack in which a later module succeeds, as `pam_unix` does in a
    /// real sshd stack: the module is `required` and `pam_permit` follows,
    /// so a PAM_IGNORE where a denial was due shows up as a login.
    pub fn permissive_stack(module_args: &str) -> String {
        format!(
            "account required {} {module_args}\n\
             account required pam_permit.so\n",
            module().display()
        )
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a PAM stack built by [`PamService::stack`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// PAM_SUCCESS.
    Allow,
    /// PAM_PERM_DENIED.
    Deny,
    /// PAM_IGNORE.
    Ignore,
    /// Anything else, with pamtester's output.
    Other(String),
}

/// One pamtester run: verdict, output, and how long it took.
#[derive(Debug)]
pub struct Pamtested {
    /// The stack's answer.
    pub verdict: Verdict,
    /// pamtester's output (the module's PAM_ERROR_MSG lands on stderr).
    pub run: Run,
    /// Wall time of the whole run.
    pub took: Duration,
}

/// Runs `pamtester SERVICE USER acct_mgmt` inside `sink`'s namespace, in its
/// own process group, with extra environment `env`.
pub fn pamtester(sink: &SyslogSink, service: &str, user: &str, env: &[(&str, &str)]) -> Pamtested {
    if let Err(why) = crate::skip::need("pamtester", "pamtester") {
        panic!("{why}");
    }
    let mut c = sink.command(None, "pamtester");
    c.args(["-v", service, user, "acct_mgmt"]).process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    let t = Instant::now();
    let run = Run::of(&mut c);
    let took = t.elapsed();
    let verdict = if run.code == 0 {
        Verdict::Allow
    } else if run.stderr.contains("pamtester: Permission denied") {
        Verdict::Deny
    } else if run.stderr.contains("pamtester: Authentication failure") {
        Verdict::Ignore
    } else {
        Verdict::Other(format!("{}{}", run.stdout, run.stderr))
    };
    Pamtested { verdict, run, took }
}

/// A throwaway user (see [`TempUser::create_with`]).
pub fn user(name: &str, groups: &[&str]) -> TempUser {
    TempUser::create(name, groups)
}

/// `groupadd` with the same lock and retries as [`user`].
pub fn group(name: &str) -> TempGroup {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _ = run("groupdel", &[name]);
    for _ in 0..50 {
        if run("groupadd", &[name]).code == 0 {
            return TempGroup {
                name: name.to_string(),
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("groupadd {name} kept failing");
}

/// A real sshd on a free loopback port, in its own mount namespace where
/// `/etc/pam.d` is a scratch directory holding only its `sshd` stack, with
/// its own host key, config and per-user authorized keys. Killed on drop.
pub struct Sshd {
    /// Scratch dir: keys, config, pam.d, log.
    pub dir: tempfile::TempDir,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Child,
}

impl Sshd {
    /// Starts sshd with the module on its account stack (`module_args`),
    /// logging to `sink` (syslog) and to `log` in its dir (-E).
    pub fn start(sink: &SyslogSink, module_args: &str) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("kloigos-sshd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let p = |n: &str| d.join(n).to_str().expect("utf-8").to_string();
        must(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", &p("host")],
        );
        must(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", &p("id")],
        );
        std::fs::create_dir(d.join("keys")).expect("mkdir keys");
        std::fs::set_permissions(d.join("keys"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::create_dir(d.join("pam.d")).expect("mkdir pam.d");
        std::fs::write(
            d.join("pam.d/sshd"),
            format!(
                "auth required pam_deny.so\n\
                 account required {} {module_args}\n\
                 session required pam_permit.so\n\
                 password required pam_deny.so\n",
                module().display()
            ),
        )
        .expect("pam.d/sshd");
        std::fs::write(
            d.join("pam.d/other"),
            "auth required pam_deny.so\naccount required pam_deny.so\n\
             session required pam_deny.so\npassword required pam_deny.so\n",
        )
        .expect("pam.d/other");
        std::fs::create_dir_all("/run/sshd").expect("privsep dir");
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nUsePAM yes\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile {}/%u\nStrictModes no\nUseDNS no\nPrintMotd no\nLogLevel VERBOSE\n",
                p("host"),
                p("sshd.pid"),
                p("keys")
            ),
        )
        .expect("sshd_config");
        let mut c = sink.command(Some(&d.join("pam.d")), "/usr/sbin/sshd");
        c.args(["-D", "-f", &p("sshd_config"), "-E", &p("log")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().expect("start sshd");
        let sshd = Sshd { dir, port, child };
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "sshd did not listen on {port}; its log:\n{}",
            sshd.log()
        );
        sshd
    }

    /// Lets `user` log in with this sshd's client key.
    pub fn authorize(&self, user: &str) {
        let key = std::fs::read_to_string(self.dir.path().join("id.pub")).expect("id.pub");
        let path = self.dir.path().join("keys").join(user);
        std::fs::write(&path, key).expect("authorized key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    /// `ssh user@127.0.0.1 -- command...` with the client key, no config,
    /// no prompts.
    pub fn ssh(&self, user: &str, command: &[&str]) -> Run {
        let key = self.dir.path().join("id");
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-i"])
            .arg(&key)
            .args(["-p", &self.port.to_string()])
            .args(SSH_CLIENT_OPTS)
            .arg(format!("{user}@127.0.0.1"))
            .arg("--")
            .args(command)
            .stdin(Stdio::null());
        Run::of(&mut c)
    }

    /// sshd's own log (-E).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Lines of sshd's log.
    pub fn log_lines(&self) -> Vec<String> {
        match std::fs::File::open(self.dir.path().join("log")) {
            Ok(f) => BufReader::new(f).lines().map_while(Result::ok).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The child is sshd itself (unshare and sh exec into it); its
        // per-connection children exit with their connections.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// The first uid from `uid` up that no range of /etc/subuid covers: a
/// person's uid far above 60000 (as LDAP or sssd hand out), even on a
/// machine where some account made by plain `useradd` holds a subordinate
/// range there (kloigos rightly never manages those).
pub fn person_uid_from(uid: u32) -> u32 {
    let sub = kloigos_core::access::SubUids::read(Path::new("/etc/subuid"));
    let mut u = uid;
    while sub.contains(kloigos_core::ids::Uid::new(u).expect("a uid")) {
        u += 1;
    }
    u
}
