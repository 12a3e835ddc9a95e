//! Helpers of the views' tests (`timeline`, `dashboard`): a cluster on a
//! fixed clock with every case the views must draw, golden files, the
//! dashboard server, headless Chromium and tmux.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jiff::Timestamp;
use kloigos_core::booking::Note;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::facts::Facts;
use kloigos_core::ids::Uid;
use kloigos_core::names::{Label, NodeName, UserName};
use kloigos_core::node::{Drain, NodeSpec};
use kloigos_core::policy::Policy;
use kloigos_core::state::{NodeState, Request, Size};
use kloigos_core::window::Window;

use crate::cluster::TempCluster;
use crate::cmd::Run;
use crate::poll::wait_until;

/// The fixed clock of the fixture: Saturday 24 October 2026, 22:30 in
/// Paris, the night summer time ends (Sunday 03:00 CEST becomes 02:00 CET).
pub const NOW: &str = "2026-10-24T20:30:00Z";

/// The note of bob's booking: markup and a terminal title escape (OSC 0).
pub const HOSTILE_NOTE: &str = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\"> \u{1b}]0;pwned\u{7} done";

/// Parses an RFC 3339 time.
pub fn ts(text: &str) -> Timestamp {
    text.parse().expect("RFC 3339 time")
}

/// The account name and uid running the tests: the fixture gives one
/// booking to this uid (under the name "dora"), so it is "yours".
pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn book(st: &mut NodeState, user: &str, uid: u32, units: u32, span: (&str, &str), note: &str) {
    let start = ts(span.0);
    let u = UserName::new(user).expect("user name");
    let req = Request {
        user: u.clone(),
        uid: Uid::new(uid).expect("a uid"),
        created_by: u,
        size: Size::Units(units),
        start,
        end: ts(span.1),
        note: Note::new(note).expect("fixture note"),
        held_elsewhere: 0,
    };
    // Booked "just before" it starts (or at NOW for later ones), as alloc would have.
    let at = start.min(ts(NOW));
    st.book(&req, &Policy::default(), at, &[])
        .expect("fixture booking");
}

/// Sets booking `i`'s note to `text` as a file would hold it, past the
/// input check (reading accepts any note, so old files still load).
fn plant_note(st: &mut NodeState, i: usize, text: &str) {
    let mut v = serde_json::to_value(&*st).expect("state to JSON");
    v["bookings"][i]["note"] = text.into();
    *st = serde_json::from_value(v).expect("state from JSON");
}

fn spec(name: &str, cpus: &str, unit_cpus: Option<u32>) -> NodeSpec {
    let mut s = NodeSpec::new(
        NodeName::new(name).expect("node name"),
        CpuSet::parse(cpus).expect("cpus"),
    );
    s.unit_cpus = unit_cpus;
    s
}

/// Writes facts for `node` with a heartbeat `age_s` seconds before NOW.
pub fn heartbeat(c: &TempCluster, node: &str, age_s: i64, load: f64) {
    let facts: Facts = serde_json::from_value(serde_json::json!({
        "version": 1,
        "node": node,
        "heartbeat": Timestamp::from_second(ts(NOW).as_second() - age_s).expect("time"),
        "load": [load, load, load],
        "enforcing": true,
    }))
    .expect("facts");
    c.store.write_facts(&facts).expect("write facts");
}

/// The fixture, in Europe/Paris, at [`NOW`]:
/// - `alpha` (4 units of 2 CPUs, label `big`): alice across midnight and the
///   DST change (u0-1, Sat 21:00 CEST to Sun 03:00 CET) and again on Sunday
///   (two bookings); bob with [`HOSTILE_NOTE`]; dora (the uid running the
///   tests: "yours") on Sunday afternoon;
/// - `beta` (one unit): carol's booking runs, then the node was drained;
/// - `gamma` (2 units of 4 CPUs): open Mon-Fri 08:00-20:00 only, erin on
///   Monday morning; its heartbeat is two hours old (stale).
pub fn fixture() -> TempCluster {
    let policy = Policy {
        name: "lab".into(),
        timezone: "Europe/Paris".into(),
        ..Policy::default()
    };
    let c = TempCluster::with_policy(policy);
    let root = UserName::new("root").expect("name");

    let mut a = spec("alpha", "0-7", Some(2));
    a.labels = vec![Label::new("big").expect("label")];
    let mut alpha = NodeState::new(a);
    book(
        &mut alpha,
        "alice",
        2001,
        2,
        ("2026-10-24T19:00:00Z", "2026-10-25T02:00:00Z"),
        "",
    );
    book(
        &mut alpha,
        "bob",
        2002,
        1,
        ("2026-10-24T22:00:00Z", "2026-10-25T06:00:00Z"),
        "",
    );
    // Refused at input, so planted as an older version or a hand edit could have.
    plant_note(&mut alpha, 1, HOSTILE_NOTE);
    book(
        &mut alpha,
        "alice",
        2001,
        1,
        ("2026-10-25T09:00:00Z", "2026-10-25T13:00:00Z"),
        "eval",
    );
    book(
        &mut alpha,
        "dora",
        my_uid(),
        2,
        ("2026-10-25T14:00:00Z", "2026-10-25T18:00:00Z"),
        "mine",
    );

    let mut beta = NodeState::new(spec("beta", "0-3", None));
    book(
        &mut beta,
        "carol",
        2003,
        1,
        ("2026-10-24T18:00:00Z", "2026-10-25T08:00:00Z"),
        "",
    );
    beta.node.drained = Some(Drain {
        reason: "disk swap".into(),
        by: root.clone(),
        since: ts("2026-10-24T20:00:00Z"),
    });

    let mut g = spec("gamma", "0-7", Some(4));
    g.windows = vec![Window::parse("Mon-Fri 08:00-20:00").expect("window")];
    let mut gamma = NodeState::new(g);
    book(
        &mut gamma,
        "erin",
        2004,
        1,
        ("2026-10-26T08:00:00Z", "2026-10-26T11:00:00Z"),
        "",
    );

    for st in [&alpha, &beta, &gamma] {
        c.store.add_node(st, &root, ts(NOW)).expect("add node");
    }
    heartbeat(&c, "alpha", 30, 1.5);
    heartbeat(&c, "beta", 60, 0.2);
    heartbeat(&c, "gamma", 7200, 0.0);
    c
}

/// A cluster of `nodes` nodes of 8 units, each unit booked back to back
/// (4 to 9 hours, with gaps) over the week from [`NOW`]: the dashboard's
/// scale case.
pub fn big_cluster(nodes: u32) -> TempCluster {
    let c = TempCluster::with_policy(Policy {
        timezone: "Europe/Paris".into(),
        ..Policy::default()
    });
    let root = UserName::new("root").expect("name");
    let users = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    let now = ts(NOW).as_second();
    for n in 0..nodes {
        let mut st = NodeState::new(spec(&format!("node{n:03}"), "0-31", Some(4)));
        for unit in 0..8u32 {
            let mut t = now - 3 * 3600 + i64::from((n * 7 + unit * 13) % 5) * 3600;
            let mut k = 0u32;
            while t < now + 7 * 86_400 {
                let len = i64::from(4 + (n + unit + k) % 6) * 3600;
                let user = users[((n + unit * 3 + k) % 8) as usize];
                let start = Timestamp::from_second(t).expect("time");
                let end = Timestamp::from_second(t + len).expect("time");
                let u = UserName::new(user).expect("name");
                let req = Request {
                    user: u.clone(),
                    uid: Uid::new(3000 + (n + unit + k) % 8).expect("a uid"),
                    created_by: u,
                    size: Size::Units(1),
                    start,
                    end,
                    note: Note::new(&format!("run {k}")).expect("note"),
                    held_elsewhere: 0,
                };
                // Placement may pick another free unit; that only moves the bar.
                let _ = st.book(&req, &Policy::default(), start.min(ts(NOW)), &[]);
                t += len + i64::from((k % 3) * 3600);
                k += 1;
            }
        }
        c.store.add_node(&st, &root, ts(NOW)).expect("add node");
        heartbeat(&c, &format!("node{n:03}"), 30, 1.0);
    }
    c
}

/// Compares `actual` with `tests/golden/NAME`; with `KLOIGOS_BLESS=1` writes it instead.
#[track_caller]
pub fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    if std::env::var_os("KLOIGOS_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("golden dir");
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with KLOIGOS_BLESS=1 cargo test -p kloigos-tests --test views",
            path.display()
        )
    });
    if want != actual {
        let first = want
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(actual.lines().count()));
        panic!(
            "output differs from {} from line {}:\n--- want\n{}\n--- got\n{}\n(if the change is intended: KLOIGOS_BLESS=1)",
            path.display(),
            first + 1,
            want.escape_debug(),
            actual.escape_debug()
        );
    }
}

/// A program the system tests need, or a failure naming its package.
pub fn need_program(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install the Debian package {package} (apt-get install {package}; ./tests/run.sh does)"
    );
    p
}

/// Runs `cmd` to completion, killing it after `limit` (a hung browser must
/// not hang the suite).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut status = None;
    let done = wait_until(limit, || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} still ran after {limit:?}; killed");
    }
    let stdout = reader.join().expect("reader");
    let stderr = err_reader.join().expect("reader");
    Run {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `kloigos-dashboard` serving `dir` on a free port of 127.0.0.1; killed on drop.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Server {
    /// Starts the server and waits for the address it prints.
    pub fn start(dir: &Path) -> Server {
        Server::spawn(
            Command::new(crate::bin("kloigos-dashboard"))
                .arg("--dir")
                .arg(dir)
                .args(["--listen", "127.0.0.1:0"]),
        )
    }

    /// Starts `cmd`, which ends up serving (e.g. `kloigos dashboard --serve`),
    /// and waits for the line saying where.
    pub fn spawn(cmd: &mut Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("http://") {
                    let _ = tx.send(line);
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server printed where it listens");
        let addr = line
            .trim()
            .rsplit_once("http://")
            .map(|(_, a)| a.trim_end_matches('/').to_string())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Server { child, addr }
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Sends raw bytes, returns the whole answer (the server closes after one).
    pub fn raw(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        // The server may answer and close before taking everything of an over-long head.
        let _ = s.write_all(request);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Whether the server process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the rest of argv and prints the CPU seconds (user + system) it and
/// every process it waited for used: a load-independent measure, unlike
/// wall-clock time on a shared machine.
const CPU_WRAPPER: &str = "import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write('\\nkloigos-cpu-seconds %.3f\\n' % (r.ru_utime + r.ru_stime))
sys.exit(code)
";

/// The CPU seconds a command run by [`chromium`] used, from its stderr.
pub fn cpu_seconds(r: &Run) -> f64 {
    r.stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("kloigos-cpu-seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no CPU figure in:\n{}", r.stderr))
}

/// Debian's chromium, headless, with a fresh profile: `extra` then `url`;
/// its CPU time is in the output (see [`cpu_seconds`]).
pub fn chromium(url: &str, extra: &[&str]) -> Run {
    let bin = need_program("/usr/bin/chromium", "chromium");
    let python = need_program("/usr/bin/python3", "python3");
    let profile = tempfile::Builder::new()
        .prefix("kloigos-chromium-")
        .tempdir()
        .expect("profile dir");
    let mut cmd = Command::new(python);
    cmd.args(["-c", CPU_WRAPPER])
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url);
    run_bounded(&mut cmd, Duration::from_secs(180))
}

/// The DOM after the page's script ran (virtual time lets the fetch of
/// `cluster.json` and the rendering finish before the dump), and the CPU
/// seconds chromium used.
pub fn dump_dom_cpu(url: &str) -> (String, f64) {
    let r = chromium(url, &["--virtual-time-budget=10000", "--dump-dom"]);
    assert_eq!(r.code, 0, "chromium failed:\n{}", r.stderr);
    let cpu = cpu_seconds(&r);
    (r.stdout, cpu)
}

/// The DOM after the page's script ran.
pub fn dump_dom(url: &str) -> String {
    dump_dom_cpu(url).0
}

/// `target/test-artifacts/NAME`, its directory created.
pub fn artifact(name: &str) -> PathBuf {
    let dir = crate::bin_dir()
        .parent()
        .map(|t| t.join("test-artifacts"))
        .expect("target dir");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir.join(name)
}

/// A tmux server of its own (socket in a temp dir), killed on drop.
pub struct Tmux {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Tmux {
    /// A session running `sh` in a window of `cols` x `rows`.
    pub fn new(cols: u16, rows: u16) -> Tmux {
        let bin = need_program("/usr/bin/tmux", "tmux");
        let dir = tempfile::Builder::new()
            .prefix("kloigos-tmux-")
            .tempdir()
            .expect("tmux dir");
        let t = Tmux { dir, bin };
        let r = t.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            "env",
            "-i",
            "PS1=$ ",
            "TERM=tmux-256color",
            "/bin/sh",
        ]);
        assert_eq!(r.code, 0, "tmux new-session: {}", r.stderr);
        // Typing before the shell's first prompt would put the prompt
        // after the echoed line, in front of the program's first line.
        t.wait_for("$");
        t
    }

    fn run(&self, args: &[&str]) -> Run {
        let sock = self.dir.path().join("sock");
        run_bounded(
            Command::new(&self.bin).arg("-S").arg(&sock).args(args),
            Duration::from_secs(30),
        )
    }

    /// Types `line` and Enter.
    pub fn type_line(&self, line: &str) {
        assert_eq!(self.run(&["send-keys", "-l", line]).code, 0);
        assert_eq!(self.run(&["send-keys", "Enter"]).code, 0);
    }

    /// The pane's text, wrapped lines joined (`-J`), with escapes when `escapes`.
    pub fn capture(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-J"];
        if escapes {
            args.push("-e");
        }
        self.run(&args).stdout
    }

    /// The pane's title (a terminal escape in output could change it).
    pub fn title(&self) -> String {
        self.run(&["display-message", "-p", "#{pane_title}"])
            .stdout
            .trim()
            .to_string()
    }

    /// The pane's width.
    pub fn width(&self) -> usize {
        self.run(&["display-message", "-p", "#{pane_width}"])
            .stdout
            .trim()
            .parse()
            .expect("pane width")
    }

    /// Waits until the pane shows `text`.
    pub fn wait_for(&self, text: &str) -> String {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(60), || {
            last = self.capture(false);
            last.contains(text)
        });
        assert!(ok, "the pane never showed {text:?}:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
