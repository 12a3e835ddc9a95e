//! `doctor`: checks an installation and says how to fix what is wrong.
//!
//! This side gathers facts (owners and modes, the PAM stack's text, a file
//! created on the share for its timestamp, `nft list`) and prints; the
//! judgements are in `kloigos_core::doctor`. One line per check; `--json`
//! gives a list of `{check, status, detail, fix}`. Exit 0 unless a check
//! FAILs, then 1.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::Timestamp;
use kloigos_core::doctor::{self, Entry, Finding, NftProbe, Stat, Status};
use kloigos_core::facts::Facts;
use kloigos_core::store::{self, FACTS_FILE, JOURNAL_FILE, LOCK_FILE, STATE_FILE};
use kloigos_core::users;
use nix::fcntl::OFlag;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::output::print_json;

/// The PAM service whose account phase must hold the module.
const PAM_SERVICE: &str = "sshd";
/// The module's file name.
const PAM_MODULE: &str = "pam_kloigos.so";

fn stat(path: &Path) -> Option<Stat> {
    fs::symlink_metadata(path).ok().map(|m| Stat {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
    })
}

/// `doctor`.
pub fn doctor(ctx: &Ctx) -> Result<u8> {
    let service_uid = ctx.privs.service_uid().or_else(|| {
        users::by_name(&ctx.config.service_user)
            .ok()
            .flatten()
            .map(|a| a.uid)
    });
    let configured = ctx.config_error.is_none();
    // While root still is root: the checks that need it.
    let nft = if configured {
        nft(ctx)
    } else {
        not_checked("nft")
    };
    // root's doctor switches now, so the clock probe writes as the writers do.
    if !ctx.overridden {
        ctx.privs.become_service()?;
    }
    let (binary, binary_owner) = binary(service_uid);
    let mut findings = vec![config_check(ctx, service_uid)];
    findings.push(binary);
    if configured {
        let policy = ctx.store.policy();
        let tree_owner = stat(ctx.store.root()).map(|s| s.uid);
        findings.push(doctor::check_service_account(
            &service_name(ctx),
            users::by_name(&service_name(ctx))
                .ok()
                .flatten()
                .map(|a| a.uid),
            policy.as_ref().ok().and_then(|p| p.service_uid),
            binary_owner,
            tree_owner,
        ));
        findings.push(tree(ctx, service_uid, policy.err()));
        findings.push(locking(ctx));
        findings.push(clock(ctx));
    } else {
        findings.push(not_checked("service-account"));
        findings.push(not_checked("shared-tree"));
        findings.push(not_checked("locking"));
        findings.push(not_checked("clock"));
    }
    findings.push(pam());
    findings.push(if configured {
        heartbeat(ctx)
    } else {
        not_checked("housekeeper")
    });
    findings.push(nft);
    if configured {
        findings.extend(cpus(ctx));
    }
    if ctx.json {
        print_json(&findings);
    } else {
        for f in &findings {
            println!("{:<5} {}: {}", f.status.to_string(), f.check, f.detail);
            if let Some(fix) = &f.fix {
                println!("      fix: {fix}");
            }
        }
        let count = |s: Status| findings.iter().filter(|f| f.status == s).count();
        println!(
            "doctor: {} ok, {} warning(s), {} failure(s)",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
    }
    Ok(doctor::exit_code(&findings))
}

fn not_checked(check: &str) -> Finding {
    Finding::warn(
        check,
        "not checked: it needs a readable configuration",
        "fix the config first (see the `config` line)",
    )
}

/// The service account's name: the binary owner's in setuid mode, else the configured one.
fn service_name(ctx: &Ctx) -> String {
    if ctx.privs.is_setuid() {
        if let Ok(Some(a)) = users::by_uid(ctx.privs.start_euid) {
            return a.name.to_string();
        }
    }
    ctx.config.service_user.clone()
}

fn config_check(ctx: &Ctx, service_uid: Option<u32>) -> Finding {
    let Some(path) = ctx.config_file.clone() else {
        return match &ctx.config_error {
            None => Finding::ok(
                "config",
                format!(
                    "--shared {} (no configuration file)",
                    ctx.config.shared.display()
                ),
            ),
            Some(e) => Finding::fail("config", e.clone(), "check the --shared directory"),
        };
    };
    let st = stat(&path);
    let summary = format!(
        "shared {}, node {}",
        ctx.config.shared.display(),
        ctx.config
            .node_name()
            .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string())
    );
    let loaded = match &ctx.config_error {
        None => Ok(summary.as_str()),
        Some(e) => Err(e.as_str()),
    };
    doctor::check_config(
        &path.display().to_string(),
        st.as_ref(),
        loaded,
        service_uid,
    )
}

/// The running binary; also returns its owner.
fn binary(service_uid: Option<u32>) -> (Finding, Option<u32>) {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            return (
                Finding::fail(
                    "binary",
                    format!("cannot find the running binary: {e}"),
                    "run doctor as the installed kloigos",
                ),
                None,
            )
        }
    };
    let Some(st) = stat(&exe) else {
        return (
            Finding::fail(
                "binary",
                format!("{} cannot be examined", exe.display()),
                "reinstall kloigos (./install.sh)",
            ),
            None,
        );
    };
    let nosuid = nix::sys::statvfs::statvfs(&exe)
        .map(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID))
        .unwrap_or(false);
    let parents: Vec<(String, Stat)> = exe
        .ancestors()
        .skip(1)
        .filter_map(|d| stat(d).map(|s| (d.display().to_string(), s)))
        .collect();
    (
        doctor::check_binary(
            &exe.display().to_string(),
            &st,
            service_uid,
            nosuid,
            &parents,
        ),
        Some(st.uid),
    )
}

/// Owners and modes of the shared tree: the root, cluster.json, nodes/ and
/// each node's directory and files.
fn tree(ctx: &Ctx, service_uid: Option<u32>, policy_error: Option<kloigos_core::Error>) -> Finding {
    let s = &ctx.store;
    let root = s.root();
    if stat(root).is_none() {
        return Finding::fail(
            "shared-tree",
            format!(
                "{} cannot be reached: the shared directory is not mounted",
                root.display()
            ),
            "mount the share (see /etc/fstab), or fix \"shared\" in the config",
        );
    }
    let mut entries = Vec::new();
    let mut add = |p: PathBuf, kind: Entry| {
        if let Some(st) = stat(&p) {
            entries.push((p.display().to_string(), st, kind));
        }
    };
    add(root.to_path_buf(), Entry::Dir);
    add(s.cluster_path(), Entry::File);
    add(root.join("cluster.lock"), Entry::Lock);
    add(s.nodes_dir(), Entry::Dir);
    let nodes = s.node_names().unwrap_or_default();
    for n in &nodes {
        let d = s.node_dir(n);
        add(d.clone(), Entry::Dir);
        for f in [STATE_FILE, JOURNAL_FILE, FACTS_FILE] {
            add(d.join(f), Entry::File);
        }
        add(d.join(LOCK_FILE), Entry::Lock);
    }
    let f = doctor::check_tree(&root.display().to_string(), &entries, service_uid);
    match policy_error {
        Some(e) if f.status == Status::Ok => {
            Finding::fail("shared-tree", e.to_string(), "see `kloigos admin fsck`")
        }
        _ => Finding {
            detail: if f.status == Status::Ok {
                format!("{}; {} node(s)", f.detail, nodes.len())
            } else {
                f.detail
            },
            ..f
        },
    }
}

/// Creates a file on the share and compares the time the server stamped
/// on it with this host's clock.
/// How the share's mount locks (read from /proc/self/mountinfo).
fn locking(ctx: &Ctx) -> Finding {
    let root = ctx.store.root();
    let found = kloigos_core::mount::locking_of(root).map_err(|e| e.to_string());
    doctor::check_locking(
        &root.display().to_string(),
        found.as_ref().map(|(m, l)| (m, l)).map_err(String::clone),
    )
}

fn clock(ctx: &Ctx) -> Finding {
    let root = ctx.store.root();
    let host = nix::unistd::gethostname()
        .map(|h| {
            h.to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        })
        .unwrap_or_default();
    let path = root.join(format!(".doctor-clock.{host}.{}", std::process::id()));
    let before = Timestamp::now();
    let made = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(&path)
        .and_then(|mut f| {
            f.write_all(b"kloigos doctor clock probe\n")?;
            f.sync_all()?;
            f.metadata()
        });
    let after = Timestamp::now();
    let _ = fs::remove_file(&path);
    let meta = match made {
        Ok(m) => m,
        Err(e) => {
            return Finding::warn(
                "clock",
                format!(
                    "cannot check the clock against {}: cannot create a file there ({e})",
                    root.display()
                ),
                "run doctor as the installed (setuid) kloigos or as root",
            )
        }
    };
    let remote = Timestamp::new(meta.mtime(), meta.mtime_nsec() as i32).unwrap_or(before);
    doctor::check_clock(
        doctor::skew_secs(before, after, remote),
        &root.display().to_string(),
    )
}

fn pam() -> Finding {
    let read = |name: &str| -> Option<String> {
        // Include names are file names under /etc/pam.d; nothing else is read.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        fs::read_to_string(Path::new("/etc/pam.d").join(name)).ok()
    };
    let account = doctor::pam_stack(PAM_SERVICE, "account", &read);
    let mut others = Vec::new();
    for kind in ["auth", "session", "password"] {
        others.extend(doctor::pam_stack(PAM_SERVICE, kind, &read).unwrap_or_default());
    }
    doctor::check_pam(
        PAM_SERVICE,
        PAM_MODULE,
        account.as_deref().map_err(String::as_str),
        &others,
    )
}

fn heartbeat(ctx: &Ctx) -> Finding {
    let node = match ctx.config.node_name() {
        Ok(n) => n,
        Err(e) => {
            return Finding::warn(
                "housekeeper",
                format!("cannot tell this host's node name: {e}"),
                "set \"node\" in the config",
            )
        }
    };
    let is_node = ctx.store.has_node(&node);
    let path = ctx.store.node_dir(&node).join(FACTS_FILE);
    let read: std::result::Result<Option<Facts>, String> = if !is_node || !path.exists() {
        Ok(None)
    } else {
        store::read_json(&path, ctx.store.trust())
            .map(Some)
            .map_err(|e| e.to_string())
    };
    doctor::check_heartbeat(
        node.as_str(),
        is_node,
        read.as_ref().map(Option::as_ref).map_err(String::as_str),
        Timestamp::now(),
    )
}

/// The CPUs of this host's node spec that the host lacks, if any (no line
/// otherwise: a node whose CPUs all exist needs no mention).
fn cpus(ctx: &Ctx) -> Option<Finding> {
    let node = ctx.config.node_name().ok()?;
    let spec = ctx.store.node(&node).ok()?.node.cpus;
    // A sysfs file of one short line; unreadable means not known, not missing.
    let text = fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let online = kloigos_core::cpuset::CpuSet::parse(text.trim()).ok()?;
    doctor::check_cpus(node.as_str(), &spec, &online)
}

/// Whether this node needs the nft table (it has ports and the housekeeper
/// manages nft), and if so whether it is loaded (root only).
fn nft(ctx: &Ctx) -> Finding {
    let needed = ctx
        .config
        .node_name()
        .ok()
        .filter(|_| ctx.config.housekeeper.nft)
        .and_then(|n| ctx.store.node(&n).ok())
        .and_then(|st| {
            st.node
                .ports
                .map(|p| format!("{} guards ports {p}", st.node.name))
        });
    let probe = if needed.is_none() || nix::unistd::geteuid().as_raw() != 0 {
        NftProbe::NotRoot
    } else {
        // PATH is the fixed safe one; no shell.
        match Command::new("nft")
            .args(["list", "table", "inet", "kloigos"])
            .output()
        {
            Ok(o) if o.status.success() => NftProbe::Present,
            Ok(o) => NftProbe::Missing(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => NftProbe::Missing(format!("cannot run nft: {e}")),
        }
    };
    doctor::check_nft(needed.as_deref(), &probe)
}
