//! `kloigos admin ...`: cluster and node administration.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kloigos_core::access::require_admin;
use kloigos_core::cpuset::CpuSet;
use kloigos_core::gpuset::GpuSet;
use kloigos_core::journal::{Action, Event};
use kloigos_core::names::{Label, NodeName, UserName};
use kloigos_core::node::{Drain, NodeSpec};
use kloigos_core::policy::Policy;
use kloigos_core::ports::PortRange;
use kloigos_core::size::parse_size;
use kloigos_core::state::NodeState;
use kloigos_core::store::{self, Store};
use kloigos_core::trusted::{Kind, TrustedDir};
use kloigos_core::window::Window;
use kloigos_core::Error;

use crate::args::{AdminCmd, InitArgs, NodeFlags};
use crate::ctx::{node_arg, Ctx};
use crate::error::{CliError, Result};
use crate::output::{escape, print_json};
use crate::privilege::CriticalSection;

/// Dispatches `admin` subcommands.
pub fn admin(ctx: &Ctx, cmd: AdminCmd) -> Result<u8> {
    if let AdminCmd::Init(a) = &cmd {
        return init(ctx, a);
    }
    let policy = ctx.policy()?;
    match cmd {
        AdminCmd::Init(_) => unreachable!("handled above"),
        AdminCmd::AddNode { name, flags } => {
            require_admin(&policy, &ctx.caller, "admin add-node")?;
            add_node(ctx, &name, &flags)
        }
        AdminCmd::SetNode {
            name,
            flags,
            no_ports,
            no_gpus,
            clear_labels,
            clear_windows,
        } => {
            require_admin(&policy, &ctx.caller, "admin set-node")?;
            let clear = Clear {
                ports: no_ports,
                gpus: no_gpus,
                labels: clear_labels,
                windows: clear_windows,
            };
            set_node(ctx, &name, &flags, clear)
        }
        AdminCmd::DelNode { name, force } => {
            require_admin(&policy, &ctx.caller, "admin del-node")?;
            del_node(ctx, &name, force)
        }
        AdminCmd::Drain { name, reason } => {
            require_admin(&policy, &ctx.caller, "admin drain")?;
            drain(ctx, &name, Some(reason))
        }
        AdminCmd::Resume { name } => {
            require_admin(&policy, &ctx.caller, "admin resume")?;
            drain(ctx, &name, None)
        }
        AdminCmd::Policy { settings } => policy_cmd(ctx, policy, &settings),
        AdminCmd::Fsck { repair } => {
            if repair {
                require_admin(&policy, &ctx.caller, "admin fsck --repair")?;
            }
            fsck(ctx, repair)
        }
    }
}

fn init(ctx: &Ctx, a: &InitArgs) -> Result<u8> {
    // On the configured (real) tree only root creates the cluster; on your own tree (--shared) you may.
    if !ctx.overridden && !ctx.privs.caller_uid.is_root() {
        return Err(Error::Refused(
            "`admin init` on the configured shared directory needs root (install.sh runs it)"
                .into(),
        )
        .into());
    }
    let mut policy = Policy {
        name: a.name.clone(),
        timezone: a.timezone.clone(),
        admins: a
            .admins
            .iter()
            .map(|u| UserName::new(u))
            .collect::<kloigos_core::Result<_>>()?,
        service_uid: ctx.privs.service.map(|(u, _)| u),
        ..Policy::default()
    };
    policy.service_user = UserName::new(&ctx.config.service_user)?;
    policy
        .validate()
        .map_err(|m| Error::invalid("--timezone", &a.timezone, m))?;
    ctx.store.init(&policy)?;
    if ctx.json {
        print_json(&policy);
    } else {
        println!(
            "created cluster in {}; next: kloigos admin add-node NAME --cpus LIST",
            ctx.store.root().display()
        );
    }
    Ok(0)
}

fn apply_flags(spec: &mut NodeSpec, f: &NodeFlags) -> kloigos_core::Result<()> {
    if let Some(c) = &f.cpus {
        spec.cpus = CpuSet::parse(c)?;
    }
    if let Some(u) = f.unit_cpus {
        spec.unit_cpus = Some(u);
    }
    if let Some(p) = &f.ports {
        spec.ports = Some(PortRange::parse(p)?);
    }
    if let Some(g) = &f.gpus {
        spec.gpus = Some(GpuSet::parse(g)?);
    }
    if let Some(m) = &f.mem_per_unit {
        spec.mem_per_unit = Some(parse_size(m)?);
    }
    for l in &f.labels {
        let l = Label::new(l)?;
        if !spec.labels.contains(&l) {
            spec.labels.push(l);
        }
    }
    for w in &f.windows {
        spec.windows.push(Window::parse(w)?);
    }
    spec.validate()
}

fn add_node(ctx: &Ctx, name: &str, f: &NodeFlags) -> Result<u8> {
    let name = node_arg(name)?;
    let cpus = f
        .cpus
        .as_deref()
        .ok_or_else(|| CliError::Usage("add-node needs --cpus LIST (e.g. --cpus 0-63)".into()))?;
    let mut spec = NodeSpec::new(name, CpuSet::parse(cpus)?);
    apply_flags(&mut spec, f)?;
    let st = NodeState::new(spec);
    let critical = CriticalSection::enter();
    ctx.store.add_node(&st, &ctx.caller.name, ctx.now())?;
    drop(critical);
    if ctx.json {
        print_json(&st.node);
    } else {
        println!(
            "added {}: {} CPUs in {} unit(s) of {}{}",
            st.node.name,
            st.node.cpus.len(),
            st.node.units_total(),
            st.node.cpus_per_unit(),
            st.node
                .ports
                .map(|p| format!(", ports {p}"))
                .unwrap_or_default()
                + &gpus_text(&st.node)
        );
    }
    Ok(0)
}

/// `, GPUs 0-3 (1 per unit)`, or nothing on a node without GPUs.
fn gpus_text(spec: &NodeSpec) -> String {
    spec.gpus
        .as_ref()
        .map(|g| format!(", GPUs {g} ({} per unit)", spec.gpus_per_unit()))
        .unwrap_or_default()
}

/// What `set-node` removes before applying its flags.
struct Clear {
    ports: bool,
    gpus: bool,
    labels: bool,
    windows: bool,
}

fn set_node(ctx: &Ctx, name: &str, f: &NodeFlags, clear: Clear) -> Result<u8> {
    let node = node_arg(name)?;
    let now = ctx.now();
    let spec = ctx.write_node(&node, |st| {
        let mut spec = st.node.clone();
        if clear.ports {
            spec.ports = None;
        }
        if clear.gpus {
            spec.gpus = None;
        }
        if clear.labels {
            spec.labels.clear();
        }
        if clear.windows {
            spec.windows.clear();
        }
        apply_flags(&mut spec, f)?;
        // Current bookings keep their CPUs, ports and GPUs: refuse a layout that would move them.
        let moved: Vec<String> = st
            .bookings
            .iter()
            .filter(|b| b.is_current_or_future(now))
            .filter(|b| {
                b.units[1] >= spec.units_total()
                    || spec.run_cpus(b.units[0], b.units[1]) != b.cpus
                    || spec.run_ports(b.units[0], b.units[1]) != b.ports
                    || spec.run_gpus(b.units[0], b.units[1]) != b.gpus
            })
            .map(|b| b.id.to_string())
            .collect();
        if !moved.is_empty() {
            return Err(Error::Refused(format!(
                "bookings {} would change {} under this layout; wait until they end or release them first",
                moved.join(", "),
                if spec.gpus.is_some() || st.node.gpus.is_some() {
                    "CPUs, ports or GPUs"
                } else {
                    "CPUs or ports"
                }
            )));
        }
        st.node = spec.clone();
        let ev = Event::node(now, &ctx.caller.name, Action::SetNode, &node, format!("{spec:?}").chars().take(300).collect::<String>());
        Ok((spec, vec![ev]))
    })?;
    if ctx.json {
        print_json(&spec);
    } else {
        println!(
            "updated {}: {} unit(s) of {} CPUs{}",
            spec.name,
            spec.units_total(),
            spec.cpus_per_unit(),
            gpus_text(&spec)
        );
    }
    Ok(0)
}

fn del_node(ctx: &Ctx, name: &str, force: bool) -> Result<u8> {
    let node = node_arg(name)?;
    let now = ctx.now();
    let _critical = CriticalSection::enter();
    let dest = ctx.store.delete_node(&node, |st| {
        let live: Vec<String> = st
            .bookings
            .iter()
            .filter(|b| b.is_current_or_future(now))
            .map(|b| b.id.to_string())
            .collect();
        if !live.is_empty() && !force {
            return Err(Error::Refused(format!(
                "{node} has current or future bookings ({}); release them, or pass --force",
                live.join(", ")
            )));
        }
        Ok(())
    })?;
    println!("removed {node}; its history is kept in {}", dest.display());
    Ok(0)
}

fn drain(ctx: &Ctx, name: &str, reason: Option<String>) -> Result<u8> {
    let node = node_arg(name)?;
    let now = ctx.now();
    let by = ctx.caller.name.clone();
    ctx.write_node(&node, |st| {
        let (action, detail) = match &reason {
            Some(r) => {
                st.node.drained = Some(Drain {
                    reason: r.clone(),
                    by: by.clone(),
                    since: now,
                });
                (Action::Drain, r.clone())
            }
            None => {
                if st.node.drained.is_none() {
                    return Err(Error::Refused(format!("{node} is not drained")));
                }
                st.node.drained = None;
                (Action::Resume, String::new())
            }
        };
        Ok(((), vec![Event::node(now, &by, action, &node, detail)]))
    })?;
    match reason {
        Some(r) => {
            println!("drained {node} ({r}): running bookings continue, new ones are refused")
        }
        None => println!("resumed {node}: it takes bookings again"),
    }
    Ok(0)
}

fn policy_cmd(ctx: &Ctx, policy: Policy, settings: &[String]) -> Result<u8> {
    let policy = if settings.is_empty() {
        policy
    } else {
        require_admin(&policy, &ctx.caller, "admin policy KEY=VALUE")?;
        let pairs = settings
            .iter()
            .map(|s| {
                s.split_once('=').ok_or_else(|| {
                    CliError::Usage(format!("'{s}': write KEY=VALUE, e.g. max_duration=2d"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let _critical = CriticalSection::enter();
        ctx.store.update_policy(|p| {
            for (k, v) in &pairs {
                p.set_field(k, v)?;
            }
            Ok(())
        })?
    };
    if ctx.json {
        print_json(&policy);
    } else if !settings.is_empty() {
        for s in settings {
            println!("set {s}");
        }
    } else if let serde_json::Value::Object(m) = serde_json::to_value(&policy).unwrap_or_default() {
        for (k, v) in m {
            println!("{k} = {v}");
        }
    }
    Ok(0)
}

/// One finding of `fsck`.
struct Finding {
    path: String,
    problem: String,
    repaired: bool,
}

/// A walk over the shared tree collecting findings.
struct Fsck<'a> {
    store: &'a Store,
    repair: bool,
    found: Vec<Finding>,
}

impl Fsck<'_> {
    fn note(&mut self, path: &Path, problem: String, repaired: bool) {
        self.found.push(Finding {
            path: path.display().to_string(),
            problem,
            repaired,
        });
    }

    /// Owner and mode as readers check them; with --repair, drops group/other
    /// write bits on files this process owns. For the root as configured
    /// (a link there is noted, never followed to be changed).
    fn check_mode(&mut self, path: &Path) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        if meta.file_type().is_symlink() {
            self.note(
                path,
                "is a symbolic link; kloigos never follows them".into(),
                false,
            );
        } else if let Err(e) = self.store.trust().check(path, &meta) {
            let mine = meta.uid() == nix::unistd::geteuid().as_raw();
            let fixed = self.repair
                && meta.mode() & 0o022 != 0
                && mine
                && narrow_no_follow(path, &meta).is_ok();
            self.note(path, e.to_string(), fixed);
        }
    }

    /// [`Fsck::check_mode`] for the entry `name` of `dir`, looked at and
    /// repaired through that handle.
    fn check_entry(&mut self, dir: &TrustedDir, name: &str) {
        let path = dir.join(name);
        let Ok(Some(st)) = dir.stat(name) else {
            return;
        };
        if st.kind == Kind::Symlink {
            self.note(
                &path,
                "is a symbolic link; kloigos never follows them".into(),
                false,
            );
        } else if let Err(e) = self.store.trust().check_ids(&path, st.uid, st.mode) {
            let mine = st.uid == nix::unistd::geteuid().as_raw();
            let fixed = self.repair
                && st.mode & 0o022 != 0
                && mine
                && dir.set_mode(name, st.mode & 0o7755).is_ok();
            self.note(&path, e.to_string(), fixed);
        }
    }

    fn node(&mut self, node: &NodeName) {
        let store = self.store;
        let state_path = store.state_path(node);
        match store.node(node) {
            Ok(st) => {
                for p in st.problems() {
                    self.note(&state_path, p, false);
                }
            }
            Err(e) => self.note(&state_path, e.to_string(), false),
        }
        // The rest goes through the node directory's handle. One that does
        // not open (a link, untrusted) made the read above fail, which is
        // noted, and is neither walked nor repaired.
        let Ok(Some(dir)) = store.open_node_if_any(node) else {
            return;
        };
        let journal_path = dir.join(store::JOURNAL_FILE);
        if let Ok((_, bad)) = store.journal(node) {
            if !bad.is_empty() {
                let fixed = self.repair && set_aside_journal_lines(store, node, &bad).is_ok();
                self.note(
                    &journal_path,
                    format!("line(s) {bad:?} are not valid events"),
                    fixed,
                );
            }
        }
        let facts_path = dir.join(store::FACTS_FILE);
        if matches!(dir.stat(store::FACTS_FILE), Ok(Some(_))) {
            if let Err(e) =
                store::read_json_at::<kloigos_core::facts::Facts>(&dir, store::FACTS_FILE)
            {
                self.note(&facts_path, e.to_string(), false);
            }
        }
        let Ok(entries) = dir.entries() else { return };
        for (name, _) in entries {
            let path = dir.path().join(&name);
            if store::is_tmp(&name) {
                // Sweeping takes the lock, so no live writer's tmp file is touched.
                let fixed = self.repair && store.lock(node).map(|l| l.dir().sweep_tmp()).is_ok();
                self.note(
                    &path,
                    "stray tmp file from an interrupted writer".into(),
                    fixed,
                );
                continue;
            }
            let known = [
                store::STATE_FILE,
                store::LOCK_FILE,
                store::JOURNAL_FILE,
                store::FACTS_FILE,
            ];
            match name.to_str() {
                Some(n) if known.contains(&n) || n.starts_with("journal.jsonl.bad") => {
                    self.check_entry(&dir, n)
                }
                _ => self.note(&path, "orphan: not a kloigos file".into(), false),
            }
        }
    }
}

/// Drops group/other write bits of `path` (lstat'ed as `seen`) through a
/// descriptor opened without following a link, if it is still that file.
fn narrow_no_follow(path: &Path, seen: &fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)?;
    let now = f.metadata()?;
    if (now.dev(), now.ino()) != (seen.dev(), seen.ino()) {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    f.set_permissions(fs::Permissions::from_mode(seen.mode() & 0o7755))
}

fn fsck(ctx: &Ctx, repair: bool) -> Result<u8> {
    let _critical = repair.then(CriticalSection::enter);
    let store = &ctx.store;
    let mut f = Fsck {
        store,
        repair,
        found: Vec::new(),
    };
    f.check_mode(store.root());
    f.check_mode(&store.cluster_path());
    if let Err(e) = store.policy() {
        f.note(&store.cluster_path(), e.to_string(), false);
    }
    let nodes_dir = store.nodes_dir();
    f.check_mode(&nodes_dir);
    // The nodes are walked through a handle on `nodes/`; one that cannot
    // be trusted (noted above) is not walked.
    let nodes = match store.open_nodes() {
        Ok(nodes) => Some(nodes),
        Err(Error::Untrusted { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let entries = match &nodes {
        Some(dir) => dir.entries()?,
        None => Vec::new(),
    };
    for (name, kind) in entries {
        let path = nodes_dir.join(&name);
        // A link with a node's name is looked at (and named) as the node it claims to be.
        let node = name
            .to_str()
            .and_then(|n| NodeName::new(n).ok())
            .filter(|_| matches!(kind, Kind::Dir | Kind::Symlink));
        match (node, &nodes) {
            (Some(node), Some(dir)) => {
                f.check_entry(dir, node.as_str());
                f.node(&node);
            }
            _ => f.note(&path, "orphan: not a node directory (invalid name or not a directory); move it out of nodes/".into(), false),
        }
    }
    let problems = f.found.iter().filter(|x| !x.repaired).count();
    if ctx.json {
        let v: Vec<_> = f
            .found
            .iter()
            .map(|x| serde_json::json!({"path": x.path, "problem": x.problem, "repaired": x.repaired}))
            .collect();
        print_json(&serde_json::json!({"problems": v, "ok": problems == 0}));
    } else {
        for x in &f.found {
            println!(
                "{}{}: {}",
                if x.repaired { "repaired " } else { "" },
                escape(&x.path),
                escape(&x.problem)
            );
        }
        println!(
            "{}",
            if problems == 0 {
                "fsck: clean".to_string()
            } else {
                format!("fsck: {problems} problem(s)")
            }
        );
    }
    Ok(if problems == 0 { 0 } else { 3 })
}

/// Moves unparsable journal lines to `journal.jsonl.bad` under the node lock.
fn set_aside_journal_lines(
    store: &Store,
    node: &NodeName,
    bad: &[usize],
) -> kloigos_core::Result<()> {
    let lock = store.lock(node)?;
    let dir = lock.dir();
    // Through the node directory's handle, as every shared file.
    let bytes = dir.read(store::JOURNAL_FILE)?;
    let text = String::from_utf8_lossy(&bytes);
    let (mut keep, mut drop) = (String::new(), String::new());
    for (i, line) in text.lines().enumerate() {
        let target = if bad.contains(&(i + 1)) {
            &mut drop
        } else {
            &mut keep
        };
        target.push_str(line);
        target.push('\n');
    }
    let mut old = dir
        .read_if_any("journal.jsonl.bad")?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    old.push_str(&drop);
    dir.write_atomic("journal.jsonl.bad", old.as_bytes())?;
    dir.write_atomic(store::JOURNAL_FILE, keep.as_bytes())?;
    Ok(())
}
