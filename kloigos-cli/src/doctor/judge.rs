//! `kloigos doctor`'s judgements: pure functions from what the CLI observed
//! (file owners and modes, a PAM stack's text, a heartbeat, a clock reading)
//! to findings, each with a status and, when something is wrong, a fix.
//!
//! The CLI gathers the facts and prints; nothing here touches the system.

use std::fmt;

use jiff::Timestamp;
use serde::Serialize;

use kloigos_core::cpuset::CpuSet;
use kloigos_core::facts::{Facts, STALE_AFTER_SECS};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but something deserves attention (or could not be checked).
    Warn,
    /// Broken or unsafe; `doctor` exits 1.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of `doctor`'s report (`--json`: `{check, status, detail, fix}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check: `config`, `binary`, `service-account`, `shared-tree`,
    /// `locking`, `clock`, `pam`, `housekeeper`, `nft`.
    pub check: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it; `None` when nothing needs doing.
    pub fix: Option<String>,
}

impl Finding {
    /// A passed check.
    pub fn ok(check: &str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with its fix.
    pub fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// A problem found by a check: how bad, what, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// How bad.
    pub status: Status,
    /// What is wrong.
    pub what: String,
    /// How to fix it.
    pub fix: String,
}

impl Problem {
    fn new(status: Status, what: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem {
            status,
            what: what.into(),
            fix: fix.into(),
        }
    }
}

/// At most this many problems are spelled out in one finding.
const MAX_LISTED: usize = 8;

/// One finding from several problems: the worst status, the problems joined
/// (the first [`MAX_LISTED`]), their distinct fixes joined; `ok_detail` when
/// there are none.
pub fn combine(check: &str, ok_detail: impl Into<String>, problems: &[Problem]) -> Finding {
    let Some(worst) = problems.iter().map(|p| p.status).max() else {
        return Finding::ok(check, ok_detail);
    };
    let mut what: Vec<String> = problems
        .iter()
        .take(MAX_LISTED)
        .map(|p| p.what.clone())
        .collect();
    if problems.len() > MAX_LISTED {
        what.push(format!("and {} more", problems.len() - MAX_LISTED));
    }
    let mut fixes: Vec<&str> = Vec::new();
    for p in problems {
        if !fixes.contains(&p.fix.as_str()) {
            fixes.push(&p.fix);
        }
    }
    Finding {
        check: check.into(),
        status: worst,
        detail: what.join("; "),
        fix: Some(fixes.join("; ")),
    }
}

/// `doctor`'s exit code: 1 when anything failed, else 0.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.status == Status::Fail))
}

/// Owner and mode of a file, as `lstat` saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
}

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

impl Stat {
    /// Permission bits (with setuid, setgid, sticky).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    /// Whether it is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    /// Whether it is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
}

fn who(uid: u32, service_uid: Option<u32>) -> String {
    match (uid, service_uid) {
        (0, _) => "root".into(),
        (u, Some(s)) if u == s => format!("the service account (uid {u})"),
        (u, _) => format!("uid {u}"),
    }
}

/// The installed `kloigos` binary: setuid to the service account (never
/// root), mode 4755, on a file system that honours setuid, in directories
/// only root or the service account can change. `parents` are the
/// binary's ancestor directories, nearest first.
pub fn check_binary(
    path: &str,
    st: &Stat,
    service_uid: Option<u32>,
    nosuid_mount: bool,
    parents: &[(String, Stat)],
) -> Finding {
    let mut p = Vec::new();
    let owner_fix = match service_uid {
        Some(s) => format!("chown {s} {path} && chmod 4755 {path}"),
        None => format!("chown kloigos {path} && chmod 4755 {path}"),
    };
    if !st.is_file() {
        p.push(Problem::new(
            Status::Fail,
            format!("{path} is not a regular file"),
            "reinstall kloigos (./install.sh)",
        ));
    }
    if st.perm() & S_ISUID != 0 && st.uid == 0 {
        p.push(Problem::new(
            Status::Fail,
            format!("{path} is setuid root; kloigos must never run as root"),
            owner_fix.clone(),
        ));
    } else if st.perm() & S_ISUID == 0 {
        p.push(Problem::new(
            Status::Fail,
            format!(
                "{path} is not setuid (mode {:04o}): users cannot write the shared tree",
                st.perm()
            ),
            owner_fix.clone(),
        ));
    } else if service_uid.is_some_and(|s| s != st.uid) {
        p.push(Problem::new(
            Status::Fail,
            format!(
                "{path} is owned by {}, not by the service account",
                who(st.uid, service_uid)
            ),
            owner_fix.clone(),
        ));
    }
    if st.perm() & 0o022 != 0 {
        p.push(Problem::new(
            Status::Fail,
            format!(
                "{path} is writable by group or others (mode {:04o})",
                st.perm()
            ),
            format!("chmod 4755 {path}"),
        ));
    } else if st.perm() & S_ISGID != 0 {
        p.push(Problem::new(
            Status::Warn,
            format!(
                "{path} is also setgid (mode {:04o}); kloigos needs only setuid",
                st.perm()
            ),
            format!("chmod 4755 {path}"),
        ));
    }
    if nosuid_mount {
        p.push(Problem::new(
            Status::Fail,
            format!("{path} lies on a file system mounted nosuid: the setuid bit is ignored"),
            "install kloigos on a file system mounted without nosuid (e.g. /usr/local/bin)",
        ));
    }
    for (dir, d) in parents {
        let trusted_owner = d.uid == 0 || Some(d.uid) == service_uid;
        let writable = d.perm() & 0o022 != 0 && d.perm() & S_ISVTX == 0;
        if !trusted_owner || writable {
            p.push(Problem::new(
                Status::Fail,
                format!(
                    "directory {dir} (owner {}, mode {:04o}) lets someone other than root replace the binary",
                    who(d.uid, service_uid),
                    d.perm()
                ),
                format!("chown root {dir} && chmod go-w {dir}"),
            ));
        }
    }
    combine(
        "binary",
        format!(
            "{path}: owned by {}, mode {:04o}",
            who(st.uid, service_uid),
            st.perm()
        ),
        &p,
    )
}

/// What a path in the shared tree is, which decides its expected mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A directory: 0755.
    Dir,
    /// A data file (cluster.json, state.json, journal, facts): 0644.
    File,
    /// A lock file: 0600, so no user can hold it.
    Lock,
}

/// The problem with one entry of the shared tree, if any: it must be owned
/// by the service account (root would lock the writers out), never a
/// symlink, never group/world-writable, readable by everyone (PAM reads it
/// as root, users read it), lock files readable by nobody else.
pub fn tree_entry(path: &str, st: &Stat, kind: Entry, service_uid: Option<u32>) -> Option<Problem> {
    let chown = |p: &str| match service_uid {
        Some(s) => format!("chown {s} {p}"),
        None => format!("chown kloigos {p}"),
    };
    if st.is_symlink() {
        return Some(Problem::new(
            Status::Fail,
            format!("{path} is a symbolic link; kloigos never follows them"),
            format!("replace {path} with the real file or directory"),
        ));
    }
    let (want, type_ok) = match kind {
        Entry::Dir => (0o755, st.is_dir()),
        Entry::File => (0o644, st.is_file()),
        Entry::Lock => (0o600, st.is_file()),
    };
    if !type_ok {
        return Some(Problem::new(
            Status::Fail,
            format!(
                "{path} is not a {}",
                if kind == Entry::Dir {
                    "directory"
                } else {
                    "regular file"
                }
            ),
            format!("move {path} aside; `kloigos admin fsck` shows what belongs there"),
        ));
    }
    if st.perm() & 0o022 != 0 {
        return Some(Problem::new(
            Status::Fail,
            format!(
                "{path} is writable by group or others (mode {:04o}); readers refuse it",
                st.perm()
            ),
            format!("chmod go-w {path}"),
        ));
    }
    if service_uid.is_some_and(|s| s != st.uid) {
        return Some(Problem::new(
            Status::Fail,
            format!(
                "{path} is owned by {}, not by the service account",
                who(st.uid, service_uid)
            ),
            chown(path),
        ));
    }
    let unreadable = match kind {
        Entry::Dir => st.perm() & 0o005 != 0o005,
        Entry::File => st.perm() & 0o004 == 0,
        Entry::Lock => false,
    };
    if unreadable {
        return Some(Problem::new(
            Status::Fail,
            format!(
                "{path} is not readable by others (mode {:04o}); users and PAM cannot read it",
                st.perm()
            ),
            format!("chmod {want:o} {path}"),
        ));
    }
    if kind == Entry::Lock && st.perm() & 0o077 != 0 {
        return Some(Problem::new(
            Status::Warn,
            format!("{path} is readable by others (mode {:04o}): any user could hold the lock and stall writers", st.perm()),
            format!("chmod 600 {path}"),
        ));
    }
    if st.perm() != want {
        return Some(Problem::new(
            Status::Warn,
            format!("{path} has mode {:04o}, expected {want:04o}", st.perm()),
            format!("chmod {want:o} {path}"),
        ));
    }
    None
}

/// The whole shared tree from its entries.
pub fn check_tree(
    root: &str,
    entries: &[(String, Stat, Entry)],
    service_uid: Option<u32>,
) -> Finding {
    let problems: Vec<Problem> = entries
        .iter()
        .filter_map(|(p, st, k)| tree_entry(p, st, *k, service_uid))
        .collect();
    combine(
        "shared-tree",
        format!(
            "{root}: {} entries owned by {}, modes as expected",
            entries.len(),
            service_uid.map_or("root".into(), |u| who(u, service_uid))
        ),
        &problems,
    )
}

/// The node-local configuration: where it came from, its owner and mode
/// (`None` when it was not a file, e.g. `--shared`), and whether it loaded.
pub fn check_config(
    path: &str,
    st: Option<&Stat>,
    loaded: Result<&str, &str>,
    service_uid: Option<u32>,
) -> Finding {
    let mut p = Vec::new();
    if let Some(st) = st {
        if st.uid != 0 && Some(st.uid) != service_uid {
            p.push(Problem::new(
                Status::Warn,
                format!("{path} is owned by {}, not root", who(st.uid, service_uid)),
                format!("chown root {path}"),
            ));
        }
        if st.perm() & 0o022 != 0 {
            p.push(Problem::new(
                Status::Fail,
                format!(
                    "{path} is writable by group or others (mode {:04o})",
                    st.perm()
                ),
                format!("chmod 644 {path}"),
            ));
        }
    }
    match loaded {
        Ok(summary) => combine("config", format!("{path}: valid ({summary})"), &p),
        Err(e) => {
            p.push(Problem::new(
                Status::Fail,
                e.to_string(),
                format!("fix {path} (see config.example.json), or reinstall with ./install.sh"),
            ));
            combine("config", "", &p)
        }
    }
}

/// The service account: it exists here, with the uid cluster.json records
/// (the same on every node), and owns the binary and the shared tree.
pub fn check_service_account(
    name: &str,
    local_uid: Option<u32>,
    policy_uid: Option<u32>,
    binary_owner: Option<u32>,
    tree_owner: Option<u32>,
) -> Finding {
    let check = "service-account";
    let Some(uid) = local_uid else {
        let hint = policy_uid.map_or("UID".to_string(), |u| u.to_string());
        return Finding::fail(
            check,
            format!("no account '{name}' on this host"),
            format!(
                "useradd --system --uid {hint} --no-create-home --shell /usr/sbin/nologin {name} (the uid every node uses)"
            ),
        );
    };
    let mut p = Vec::new();
    match policy_uid {
        None => p.push(Problem::new(
            Status::Warn,
            format!("cluster.json records no service_uid (here '{name}' is uid {uid})"),
            format!("kloigos admin policy service_uid={uid}"),
        )),
        Some(pu) if pu != uid => p.push(Problem::new(
            Status::Fail,
            format!("'{name}' is uid {uid} here but cluster.json says {pu}; every node must use the same uid"),
            format!("usermod --uid {pu} {name} (then chown the binary again)"),
        )),
        Some(_) => {}
    }
    if let Some(b) = binary_owner.filter(|b| *b != uid) {
        p.push(Problem::new(
            Status::Fail,
            format!("the binary is owned by uid {b}, not by '{name}' (uid {uid})"),
            format!("chown {name} BINARY && chmod 4755 BINARY"),
        ));
    }
    if let Some(t) = tree_owner.filter(|t| *t != uid) {
        p.push(Problem::new(
            Status::Fail,
            format!("the shared tree is owned by uid {t}, not by '{name}' (uid {uid})"),
            format!("chown -R {name}: SHARED (on the file server)"),
        ));
    }
    combine(
        check,
        format!("'{name}' exists with uid {uid}, as cluster.json says"),
        &p,
    )
}

/// Seconds this host's clock is ahead (negative: behind) of the shared file
/// system, from a file created between local readings `before` and
/// `after` whose modification time the server set to `remote`.
pub fn skew_secs(before: Timestamp, after: Timestamp, remote: Timestamp) -> f64 {
    let secs = |a: Timestamp, b: Timestamp| a.duration_since(b).as_secs_f64();
    if remote < before {
        secs(before, remote)
    } else if remote > after {
        -secs(remote, after)
    } else {
        0.0
    }
}

/// Skew up to this much is fine (file times are coarse).
pub const SKEW_OK_SECS: f64 = 2.0;
/// Skew beyond this moves booking starts and ends visibly: a failure.
pub const SKEW_FAIL_SECS: f64 = 30.0;

/// The clock check from a measured skew.
pub fn check_clock(skew: f64, shared: &str) -> Finding {
    let fix = "synchronise this host and the file server with NTP (chrony or systemd-timesyncd)";
    let detail = if skew >= 0.0 {
        format!("this host's clock is {skew:.1} s ahead of the file system of {shared}")
    } else {
        format!(
            "this host's clock is {:.1} s behind the file system of {shared}",
            -skew
        )
    };
    if skew.abs() <= SKEW_OK_SECS {
        Finding::ok("clock", format!("{detail} (within {SKEW_OK_SECS} s)"))
    } else if skew.abs() <= SKEW_FAIL_SECS {
        Finding::warn("clock", detail, fix)
    } else {
        Finding::fail(
            "clock",
            format!("{detail}: bookings start and end at the wrong moment"),
            fix,
        )
    }
}

/// The locking check: how the mount holding the shared directory `shared`
/// locks (`found`: its mount point and source, and its mode; or why that
/// could not be read). Fails when locks stay on this client, since writers
/// on other nodes would then not exclude each other.
pub fn check_locking(
    shared: &str,
    found: std::result::Result<
        (&kloigos_core::mount::Mount, &kloigos_core::mount::Locking),
        String,
    >,
) -> Finding {
    use kloigos_core::mount::Locking;
    let (m, locking) = match found {
        Ok(f) => f,
        Err(e) => {
            return Finding::warn(
                "locking",
                format!("cannot tell how {shared} locks: {e}"),
                "check that the share is mounted (`findmnt -T` on it)",
            )
        }
    };
    let detail = format!(
        "{shared} is on {} ({}): {locking}",
        m.point.display(),
        m.source
    );
    match locking {
        Locking::ClientOnly { option } => Finding::fail(
            "locking",
            format!("{detail}; writers refuse to write there"),
            kloigos_core::mount::fix(option),
        ),
        Locking::Shared { .. } | Locking::Kernel { .. } => Finding::ok("locking", detail),
    }
}

/// One module line of a PAM stack, after includes were expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PamLine {
    /// `file:line` it came from.
    pub origin: String,
    /// The management group (`account`, `auth`, ...), without a leading `-`.
    pub kind: String,
    /// The line began with `-` (a missing module is skipped silently).
    pub dash: bool,
    /// The control (`required`, `sufficient`, `[success=1 default=ignore]`).
    pub control: String,
    /// The module path or name.
    pub module: String,
    /// The module's arguments.
    pub args: Vec<String>,
    /// Which substacks enclose the line (empty: the service's own stack).
    pub scope: Vec<usize>,
}

impl PamLine {
    /// Whether the module is `name` (given as a bare name or a path).
    pub fn is_module(&self, name: &str) -> bool {
        self.module.rsplit('/').next() == Some(name)
    }

    /// For a bracketed control, the action for `value` (falling back to `default`).
    fn action(&self, value: &str) -> Option<String> {
        let inner = self.control.strip_prefix('[')?.strip_suffix(']')?;
        let mut default = None;
        for pair in inner.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                if k == value {
                    return Some(v.to_string());
                }
                if k == "default" {
                    default = Some(v.to_string());
                }
            }
        }
        default
    }
}

/// Splits PAM configuration text into logical lines: comments dropped,
/// backslash continuations joined, `[...]` kept as one word.
fn pam_words(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            start = i + 1;
        }
        let line = raw.split('#').next().unwrap_or_default();
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut depth = 0;
        for c in pending.chars() {
            match c {
                '[' => {
                    depth += 1;
                    cur.push(c);
                }
                ']' if depth > 0 => {
                    depth -= 1;
                    cur.push(c);
                }
                c if c.is_whitespace() && depth == 0 => {
                    if !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            words.push(cur);
        }
        if !words.is_empty() {
            out.push((start, words));
        }
        pending.clear();
    }
    out
}

/// Expands the `kind` lines of PAM service `service` (`@include`,
/// `include`, `substack`), reading files through `read` (a name under
/// /etc/pam.d → its text). Errors name the missing file or a loop.
pub fn pam_stack(
    service: &str,
    kind: &str,
    read: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<PamLine>, String> {
    let mut out = Vec::new();
    let mut next_scope = 0;
    expand(service, kind, read, &[], &mut out, &mut next_scope, 0)?;
    Ok(out)
}

fn expand(
    file: &str,
    kind: &str,
    read: &dyn Fn(&str) -> Option<String>,
    scope: &[usize],
    out: &mut Vec<PamLine>,
    next_scope: &mut usize,
    depth: usize,
) -> Result<(), String> {
    if depth > 8 {
        return Err(format!(
            "includes nest deeper than 8 levels at /etc/pam.d/{file} (a loop?)"
        ));
    }
    let text = read(file).ok_or_else(|| format!("/etc/pam.d/{file} cannot be read"))?;
    for (n, words) in pam_words(&text) {
        if words[0] == "@include" {
            let target = words
                .get(1)
                .ok_or_else(|| format!("/etc/pam.d/{file}:{n}: @include without a file"))?;
            expand(target, kind, read, scope, out, next_scope, depth + 1)?;
            continue;
        }
        let (dash, k) = match words[0].strip_prefix('-') {
            Some(k) => (true, k),
            None => (false, words[0].as_str()),
        };
        if k != kind || words.len() < 3 {
            continue;
        }
        match words[1].as_str() {
            "include" => expand(&words[2], kind, read, scope, out, next_scope, depth + 1)?,
            "substack" => {
                *next_scope += 1;
                let mut inner = scope.to_vec();
                inner.push(*next_scope);
                expand(&words[2], kind, read, &inner, out, next_scope, depth + 1)?;
            }
            _ => out.push(PamLine {
                origin: format!("/etc/pam.d/{file}:{n}"),
                kind: k.to_string(),
                dash,
                control: words[1].clone(),
                module: words[2].clone(),
                args: words[3..].to_vec(),
                scope: scope.to_vec(),
            }),
        }
    }
    Ok(())
}

/// Whether `line`, when it succeeds, ends the (sub)stack it is in.
fn ends_on_success(line: &PamLine) -> bool {
    line.control == "sufficient" || line.action("success").as_deref() == Some("done")
}

/// Checks that `module` (e.g. `pam_kloigos.so`) sits in the account phase
/// of PAM service `service`, with a control that lets its denial count,
/// and that no earlier `sufficient` (or `success=done`, or a `success=N`
/// jump over it) can skip it. `account` is the expanded account stack;
/// `other_phases` the modules of the other phases (to say where it is
/// instead).
pub fn check_pam(
    service: &str,
    module: &str,
    account: Result<&[PamLine], &str>,
    other_phases: &[PamLine],
) -> Finding {
    let file = format!("/etc/pam.d/{service}");
    let add =
        format!("add `account required {module}` to {file} (after `@include common-account`)");
    let account = match account {
        Ok(a) => a,
        Err(e) => {
            return Finding::fail(
                "pam",
                format!("cannot read the PAM stack of {service}: {e}"),
                add,
            )
        }
    };
    let Some(k) = account.iter().position(|l| l.is_module(module)) else {
        return Finding::fail("pam", not_in_account(module, &file, other_phases), add);
    };
    let me = &account[k];
    let mut p: Vec<Problem> = control_problem(me, module).into_iter().collect();
    p.extend(line_problems(me, service));
    p.extend(skips_over(account, k, module));
    combine(
        "pam",
        format!(
            "{module} is in the account phase of {file} ({} {})",
            me.control, me.origin
        ),
        &p,
    )
}

/// Why logins are not gated when `module` is not in the account phase of `file`.
fn not_in_account(module: &str, file: &str, other_phases: &[PamLine]) -> String {
    let elsewhere: Vec<String> = other_phases
        .iter()
        .filter(|l| l.is_module(module))
        .map(|l| format!("{} ({})", l.origin, l.kind))
        .collect();
    if elsewhere.is_empty() {
        format!("{module} is not in the account phase of {file}: logins are not gated")
    } else {
        format!(
            "{module} is only in other phases ({}): only the account phase gates logins",
            elsewhere.join(", ")
        )
    }
}

/// What is wrong with the module line's control: one that ignores its
/// denial fails, one whose denial may not end the login warns.
fn control_problem(me: &PamLine, module: &str) -> Option<Problem> {
    let fix = format!("use `account required {module}` at {}", me.origin);
    match me.control.as_str() {
        "required" | "requisite" => None,
        "sufficient" | "optional" => Some(Problem::new(
            Status::Fail,
            format!(
                "{} uses control `{}`: its denial is ignored",
                me.origin, me.control
            ),
            fix,
        )),
        _ => {
            let on_deny = me.action("perm_denied");
            (!matches!(on_deny.as_deref(), Some("bad" | "die"))).then(|| {
                Problem::new(
                    Status::Warn,
                    format!(
                        "{} uses control {}: a denial (perm_denied) may not end the login",
                        me.origin, me.control
                    ),
                    fix,
                )
            })
        }
    }
}

/// What else on the module line can switch it off: a leading `-`, and a
/// `services=` argument that leaves out `service`.
fn line_problems(me: &PamLine, service: &str) -> Vec<Problem> {
    let mut p = Vec::new();
    if me.dash {
        p.push(Problem::new(
            Status::Warn,
            format!(
                "{} starts with `-`: if the module file is missing, PAM skips it silently",
                me.origin
            ),
            format!("drop the leading `-` at {}", me.origin),
        ));
    }
    if let Some(s) = me.args.iter().find_map(|a| a.strip_prefix("services=")) {
        if !s.split(',').any(|x| x == service) {
            p.push(Problem::new(
                Status::Warn,
                format!(
                    "{} has services={s}, which does not list {service}: the module ignores it",
                    me.origin
                ),
                format!("add {service} to services= at {}", me.origin),
            ));
        }
    }
    p
}

/// The lines before the module's (at `k` in `account`) that can skip it
/// when they succeed: ones that end the stack, and jumps over it.
fn skips_over(account: &[PamLine], k: usize, module: &str) -> Vec<Problem> {
    let me = &account[k];
    let mut p = Vec::new();
    for (i, l) in account[..k].iter().enumerate() {
        // Only a line in a stack that encloses the module can skip it.
        if !me.scope.starts_with(&l.scope) {
            continue;
        }
        let skip = if ends_on_success(l) {
            Some(format!(
                "{} ({} {}) ends the account stack when it succeeds",
                l.origin, l.control, l.module
            ))
        } else if let Some(n) = l.action("success").and_then(|v| v.parse::<usize>().ok()) {
            let between = account[i + 1..=k]
                .iter()
                .filter(|x| x.scope == l.scope)
                .count();
            (l.scope == me.scope && between <= n).then(|| {
                format!(
                    "{} ({} {}) jumps over it when it succeeds",
                    l.origin, l.control, l.module
                )
            })
        } else {
            None
        };
        if let Some(why) = skip {
            p.push(Problem::new(
                Status::Warn,
                format!("{why}, skipping {module} at {}", me.origin),
                format!("move `account required {module}` above {}", l.origin),
            ));
        }
    }
    p
}

/// The housekeeper's heartbeat on this node. `facts` is `Ok(None)` when no
/// facts.json exists, `Err` when one exists but cannot be read.
pub fn check_heartbeat(
    node: &str,
    is_node: bool,
    facts: Result<Option<&Facts>, &str>,
    now: Timestamp,
) -> Finding {
    let install = "install the housekeeper's timer (./install.sh), or run `kloigos-housekeeper --once` to see why it fails";
    if !is_node {
        return Finding::ok(
            "housekeeper",
            format!("this host ({node}) is not a node of the cluster: no housekeeper expected"),
        );
    }
    let f = match facts {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Finding::fail(
                "housekeeper",
                format!("no facts.json for {node}: the housekeeper has never run here"),
                install,
            )
        }
        Err(e) => {
            return Finding::fail(
                "housekeeper",
                format!("facts.json of {node} cannot be read: {e}"),
                install,
            )
        }
    };
    let age = now.as_second() - f.heartbeat.as_second();
    if f.is_stale(now) {
        return Finding::fail(
            "housekeeper",
            format!("last heartbeat of {node} was {age} s ago (stale after {STALE_AFTER_SECS} s): bookings are not enforced"),
            install,
        );
    }
    if let Some(e) = &f.error {
        return Finding::warn(
            "housekeeper",
            format!("heartbeat {age} s ago, but its last pass reported: {e}"),
            "fix what it reports; `kloigos-housekeeper --once --dry-run` shows the plan",
        );
    }
    if !f.enforcing {
        return Finding::warn(
            "housekeeper",
            format!("heartbeat {age} s ago, but it is not enforcing bookings"),
            "see `kloigos-housekeeper --once --dry-run`",
        );
    }
    Finding::ok("housekeeper", format!("heartbeat of {node} {age} s ago"))
}

/// The node spec's CPUs against the CPUs this host has online: a finding
/// only when the spec names CPUs the host lacks (the housekeeper then
/// confines their bookings to the CPUs that exist), `None` otherwise.
pub fn check_cpus(node: &str, spec: &CpuSet, online: &CpuSet) -> Option<Finding> {
    let missing = kloigos_core::enforce::missing_cpus(spec, Some(online))?;
    Some(Finding::fail(
        "cpus",
        format!(
            "the spec of {node} names CPUs {missing} that this host does not have \
             (its CPUs {spec}; online here {online}): bookings of them are confined to the CPUs that exist"
        ),
        format!(
            "`{}` (bookings that hold the missing CPUs must end or be released first)",
            kloigos_core::enforce::set_node_cpus_fix(node, spec, online)
        ),
    ))
}

/// What the CLI could learn about the nftables table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftProbe {
    /// Not run as root: `nft list` needs it.
    NotRoot,
    /// `nft list table inet kloigos` succeeded.
    Present,
    /// It failed, with nft's message.
    Missing(String),
}

/// The nft check: needed only when this node has ports to guard and the
/// housekeeper manages nft.
pub fn check_nft(needed: Option<&str>, probe: &NftProbe) -> Finding {
    let Some(why) = needed else {
        return Finding::ok("nft", "no port ranges to guard here: no nft table needed");
    };
    match probe {
        NftProbe::NotRoot => Finding::warn(
            "nft",
            format!("cannot check the nft table as a user ({why})"),
            "run `sudo kloigos doctor` to check it",
        ),
        NftProbe::Present => Finding::ok("nft", format!("table inet kloigos is loaded ({why})")),
        NftProbe::Missing(e) => Finding::fail(
            "nft",
            format!("table inet kloigos is not loaded ({why}): {}", e.trim()),
            "run `kloigos-housekeeper --once` (it loads the table) and check its output",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(kind: u32, perm: u32, uid: u32) -> Stat {
        Stat {
            uid,
            gid: uid,
            mode: kind | perm,
        }
    }

    fn pam<'a>(files: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.to_string())
        }
    }

    #[test]
    fn binary_must_be_setuid_to_the_service_account_never_root() {
        let good = check_binary(
            "/usr/bin/kloigos",
            &st(S_IFREG, 0o4755, 990),
            Some(990),
            false,
            &[],
        );
        assert_eq!(good.status, Status::Ok, "{good:?}");
        let root = check_binary(
            "/usr/bin/kloigos",
            &st(S_IFREG, 0o4755, 0),
            Some(990),
            false,
            &[],
        );
        assert_eq!(root.status, Status::Fail);
        assert!(root.detail.contains("setuid root"), "{root:?}");
        let plain = check_binary("/b", &st(S_IFREG, 0o755, 990), Some(990), false, &[]);
        assert!(plain.detail.contains("not setuid"), "{plain:?}");
        let writable = check_binary("/b", &st(S_IFREG, 0o4777, 990), Some(990), false, &[]);
        assert_eq!(writable.status, Status::Fail);
        assert_eq!(writable.fix.as_deref(), Some("chmod 4755 /b"));
        let nosuid = check_binary("/b", &st(S_IFREG, 0o4755, 990), Some(990), true, &[]);
        assert!(nosuid.detail.contains("nosuid"), "{nosuid:?}");
        let dir = check_binary(
            "/b",
            &st(S_IFREG, 0o4755, 990),
            Some(990),
            false,
            &[("/opt".into(), st(S_IFDIR, 0o777, 0))],
        );
        assert!(dir.detail.contains("directory /opt"), "{dir:?}");
        let tmp = check_binary(
            "/b",
            &st(S_IFREG, 0o4755, 990),
            Some(990),
            false,
            &[("/tmp".into(), st(S_IFDIR, 0o1777, 0))],
        );
        assert_eq!(tmp.status, Status::Ok);
    }

    #[test]
    fn tree_entries_name_the_file_and_the_fix() {
        // What doctor says of `path` with that file type, mode and owner,
        // in a tree the service account (990) owns.
        let entry =
            |path: &str, fmt, mode, uid, e| tree_entry(path, &st(fmt, mode, uid), e, Some(990));
        assert_eq!(entry("/s/nodes", S_IFDIR, 0o755, 990, Entry::Dir), None);
        assert_eq!(entry("/s/n/lock", S_IFREG, 0o600, 990, Entry::Lock), None);
        let w = entry("/s/n/state.json", S_IFREG, 0o664, 990, Entry::File).unwrap();
        assert_eq!(
            (w.status, w.fix.as_str()),
            (Status::Fail, "chmod go-w /s/n/state.json")
        );
        let o = entry("/s/n/state.json", S_IFREG, 0o644, 1001, Entry::File).unwrap();
        assert!(o.what.contains("owned by uid 1001"), "{o:?}");
        let l = entry("/s/n/lock", S_IFREG, 0o644, 990, Entry::Lock).unwrap();
        assert_eq!(l.status, Status::Warn);
        let hidden = entry("/s/n/state.json", S_IFREG, 0o600, 990, Entry::File).unwrap();
        assert!(hidden.what.contains("not readable"), "{hidden:?}");
        let link = entry("/s/n/state.json", S_IFLNK, 0o777, 990, Entry::File).unwrap();
        assert!(link.what.contains("symbolic link"));
        let f = check_tree(
            "/s",
            &[("/s".into(), st(S_IFDIR, 0o775, 990), Entry::Dir)],
            Some(990),
        );
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.starts_with("/s is writable"), "{f:?}");
    }

    #[test]
    fn service_account_uid_must_match_cluster_json() {
        assert_eq!(
            check_service_account("kloigos", Some(990), Some(990), Some(990), Some(990)).status,
            Status::Ok
        );
        let missing = check_service_account("kloigos", None, Some(990), None, None);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.fix.unwrap().contains("--uid 990"));
        let other = check_service_account("kloigos", Some(991), Some(990), Some(991), Some(991));
        assert!(other.detail.contains("says 990"), "{other:?}");
        assert_eq!(
            check_service_account("kloigos", Some(990), None, None, None).status,
            Status::Warn
        );
    }

    #[test]
    fn clock_skew_thresholds() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let (b, a) = (t("2026-01-01T00:00:10Z"), t("2026-01-01T00:00:11Z"));
        assert_eq!(skew_secs(b, a, t("2026-01-01T00:00:10.5Z")), 0.0);
        assert_eq!(skew_secs(b, a, t("2026-01-01T00:00:00Z")), 10.0);
        assert_eq!(skew_secs(b, a, t("2026-01-01T00:01:11Z")), -60.0);
        assert_eq!(check_clock(0.5, "/s").status, Status::Ok);
        assert_eq!(check_clock(10.0, "/s").status, Status::Warn);
        let f = check_clock(-60.0, "/s");
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("60.0 s behind"), "{f:?}");
    }

    #[test]
    fn locking_fails_on_client_only_locks_with_the_fix() {
        let line = |opts: &str| {
            kloigos_core::mount::parse_line(&format!(
                "645 30 0:58 / /nfs/kloigos rw,relatime shared:318 - nfs4 fs1:/srv/kloigos rw,vers=4.2,hard,{opts},addr=10.0.0.1"
            ))
            .unwrap()
        };
        let good = line("local_lock=none");
        let f = check_locking(
            "/nfs/kloigos",
            Ok((&good, &kloigos_core::mount::Locking::of(&good))),
        );
        assert_eq!(f.status, Status::Ok);
        assert!(
            f.detail.contains("nfs4 (vers=4.2): locks go to the server"),
            "{f:?}"
        );
        for opts in [
            "local_lock=flock",
            "local_lock=all",
            "nolock,local_lock=all",
        ] {
            let bad = line(opts);
            let f = check_locking(
                "/nfs/kloigos",
                Ok((&bad, &kloigos_core::mount::Locking::of(&bad))),
            );
            assert_eq!(f.status, Status::Fail, "{opts}");
            let named = opts.split(',').next().unwrap();
            assert!(f.detail.contains(named), "{f:?}");
            assert!(
                f.fix
                    .as_deref()
                    .unwrap()
                    .contains(&format!("without `{named}`")),
                "{f:?}"
            );
        }
        let f = check_locking("/nfs/kloigos", Err("no such file".into()));
        assert_eq!(f.status, Status::Warn);
    }

    const COMMON: &str = "# here are the per-package modules\n\
        account\t[success=1 new_authtok_reqd=done default=ignore]\tpam_unix.so\n\
        account\trequisite\t\t\tpam_deny.so\n\
        account\trequired\t\t\tpam_permit.so\n";

    #[test]
    fn pam_module_after_common_account_is_ok() {
        let sshd = "@include common-auth\naccount    required     pam_nologin.so\n@include common-account\n\
                    account required /lib/security/pam_kloigos.so services=sshd \\\n  debug\n";
        let files = [
            ("sshd", sshd),
            ("common-account", COMMON),
            ("common-auth", "auth required pam_unix.so\n"),
        ];
        let read = pam(&files);
        let stack = pam_stack("sshd", "account", &read).unwrap();
        assert_eq!(stack.len(), 5);
        assert_eq!(
            stack[1].control,
            "[success=1 new_authtok_reqd=done default=ignore]"
        );
        assert_eq!(stack[4].args, vec!["services=sshd", "debug"]);
        assert_eq!(stack[4].origin, "/etc/pam.d/sshd:4");
        let f = check_pam("sshd", "pam_kloigos.so", Ok(&stack), &[]);
        assert_eq!(f.status, Status::Ok, "{f:?}");
    }

    #[test]
    fn pam_module_after_a_sufficient_is_warned_about() {
        let sshd = "account sufficient pam_localuser.so\naccount required pam_kloigos.so\n";
        let files = [("sshd", sshd)];
        let stack = pam_stack("sshd", "account", &pam(&files)).unwrap();
        let f = check_pam("sshd", "pam_kloigos.so", Ok(&stack), &[]);
        assert_eq!(f.status, Status::Warn);
        assert!(
            f.detail
                .contains("/etc/pam.d/sshd:1 (sufficient pam_localuser.so) ends the account stack"),
            "{f:?}"
        );
        assert!(f
            .fix
            .unwrap()
            .contains("move `account required pam_kloigos.so` above /etc/pam.d/sshd:1"));
        // A jump that lands on the module skips it; one that stops short does not.
        let jump =
            "account [success=1 default=ignore] pam_unix.so\naccount required pam_kloigos.so\n";
        let stack = pam_stack("sshd", "account", &pam(&[("sshd", jump)])).unwrap();
        assert!(check_pam("sshd", "pam_kloigos.so", Ok(&stack), &[])
            .detail
            .contains("jumps over it"));
        let stack = pam_stack(
            "sshd",
            "account",
            &pam(&[
                (
                    "sshd",
                    "@include common-account\naccount required pam_kloigos.so\n",
                ),
                ("common-account", COMMON),
            ]),
        )
        .unwrap();
        assert_eq!(
            check_pam("sshd", "pam_kloigos.so", Ok(&stack), &[]).status,
            Status::Ok
        );
        // A sufficient inside a finished substack does not skip it.
        let sub = "account substack mine\naccount required pam_kloigos.so\n";
        let stack = pam_stack(
            "sshd",
            "account",
            &pam(&[
                ("sshd", sub),
                ("mine", "account sufficient pam_permit.so\n"),
            ]),
        )
        .unwrap();
        assert_eq!(stack[0].scope, vec![1]);
        assert_eq!(
            check_pam("sshd", "pam_kloigos.so", Ok(&stack), &[]).status,
            Status::Ok
        );
    }

    #[test]
    fn pam_module_missing_or_toothless_fails() {
        let stack = pam_stack(
            "sshd",
            "account",
            &pam(&[("sshd", "account required pam_unix.so\n")]),
        )
        .unwrap();
        let auth = pam_stack(
            "sshd",
            "auth",
            &pam(&[("sshd", "auth required pam_kloigos.so\n")]),
        )
        .unwrap();
        let f = check_pam("sshd", "pam_kloigos.so", Ok(&stack), &auth);
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail
                .contains("only in other phases (/etc/pam.d/sshd:1 (auth))"),
            "{f:?}"
        );
        let stack = pam_stack(
            "sshd",
            "account",
            &pam(&[("sshd", "account optional pam_kloigos.so\n")]),
        )
        .unwrap();
        assert!(check_pam("sshd", "pam_kloigos.so", Ok(&stack), &[])
            .detail
            .contains("denial is ignored"));
        let stack = pam_stack(
            "sshd",
            "account",
            &pam(&[("sshd", "-account required pam_kloigos.so services=login\n")]),
        )
        .unwrap();
        let f = check_pam("sshd", "pam_kloigos.so", Ok(&stack), &[]);
        assert_eq!(f.status, Status::Warn);
        assert!(
            f.detail.contains("services=login") && f.detail.contains("starts with `-`"),
            "{f:?}"
        );
        let e = pam_stack("sshd", "account", &pam(&[("sshd", "@include nowhere\n")])).unwrap_err();
        assert!(e.contains("/etc/pam.d/nowhere"), "{e}");
        let e = pam_stack("sshd", "account", &pam(&[("sshd", "@include sshd\n")])).unwrap_err();
        assert!(e.contains("loop"), "{e}");
    }

    #[test]
    fn heartbeat_freshness() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let mut f: Facts = serde_json::from_value(serde_json::json!({
            "version": 1, "node": "n1", "heartbeat": "2026-01-01T11:59:30Z", "enforcing": true
        }))
        .unwrap();
        assert_eq!(
            check_heartbeat("n1", true, Ok(Some(&f)), now).status,
            Status::Ok
        );
        assert_eq!(
            check_heartbeat("n1", true, Ok(None), now).status,
            Status::Fail
        );
        assert_eq!(
            check_heartbeat("login", false, Ok(None), now).status,
            Status::Ok
        );
        f.heartbeat = "2026-01-01T11:50:00Z".parse().unwrap();
        let stale = check_heartbeat("n1", true, Ok(Some(&f)), now);
        assert!(stale.detail.contains("600 s ago"), "{stale:?}");
        f.heartbeat = now;
        f.error = Some("cannot read state".into());
        assert_eq!(
            check_heartbeat("n1", true, Ok(Some(&f)), now).status,
            Status::Warn
        );
    }

    #[test]
    fn nft_only_when_needed_and_only_as_root() {
        assert_eq!(check_nft(None, &NftProbe::NotRoot).status, Status::Ok);
        assert_eq!(
            check_nft(Some("ports 20000-29999"), &NftProbe::NotRoot).status,
            Status::Warn
        );
        assert_eq!(check_nft(Some("p"), &NftProbe::Present).status, Status::Ok);
        let f = check_nft(
            Some("p"),
            &NftProbe::Missing("Error: No such file or directory\n".into()),
        );
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.ends_with("No such file or directory"), "{f:?}");
    }

    #[test]
    fn findings_combine_and_decide_the_exit_code() {
        let f = combine("x", "fine", &[]);
        assert_eq!(f, Finding::ok("x", "fine"));
        let p = vec![
            Problem::new(Status::Warn, "a", "fa"),
            Problem::new(Status::Fail, "b", "fb"),
            Problem::new(Status::Warn, "c", "fa"),
        ];
        let f = combine("x", "", &p);
        assert_eq!(
            (f.status, f.detail.as_str(), f.fix.as_deref()),
            (Status::Fail, "a; b; c", Some("fa; fb"))
        );
        assert_eq!(exit_code(&[Finding::ok("a", ""), f.clone()]), 1);
        assert_eq!(
            exit_code(&[Finding::ok("a", ""), Finding::warn("b", "", "")]),
            0
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["status"], "fail");
        assert_eq!(json["check"], "x");
    }

    #[test]
    fn cpus_the_host_lacks_are_named_with_the_set_node_fix() {
        let spec = CpuSet::parse("0-3").unwrap();
        let two = CpuSet::parse("0-1").unwrap();
        let f = check_cpus("vm", &spec, &two).unwrap();
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("names CPUs 2-3"), "{}", f.detail);
        assert!(f.detail.contains("online here 0-1"), "{}", f.detail);
        assert!(
            f.fix
                .as_deref()
                .unwrap()
                .contains("kloigos admin set-node vm --cpus 0-1"),
            "{:?}",
            f.fix
        );
        assert_eq!(check_cpus("vm", &two, &spec), None);
    }
}
