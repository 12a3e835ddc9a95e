//! Getting onto a node: `check-login`, `ssh`, `run`.
//!
//! `ssh` and `run` have dropped to the caller for good before they get
//! here (see `Ctx::setup`); `run` makes and ends its booking through child
//! `kloigos` processes, which are setuid again on their own.

use std::os::unix::process::CommandExt;
use std::process::Command;

use kloigos_core::access::Login;
use kloigos_core::booking::{Booking, BookingId};
use kloigos_core::gate::{self, Decision, Source, Sources};
use kloigos_core::names::NodeName;
use kloigos_core::users;
use kloigos_core::Error;
use serde_json::json;

use crate::args::{AllocSpec, CheckLoginArgs, RunArgs, SshArgs};
use crate::ctx::{node_arg, Ctx};
use crate::error::{CliError, Result};
use crate::output::{escape, print_json};

/// The login decision for `user` on `node`: the PAM module's own gate and
/// reads, with this command's store and trust. The local copy a config
/// names serves that config's share only: on another tree (`--shared`) it
/// does not apply.
fn decide(ctx: &Ctx, user: &users::Account, node: &NodeName) -> Decision {
    let mut from = Sources::of(&ctx.config, ctx.store.trust());
    from.shared = ctx.store.root();
    if from.shared != ctx.config.shared.as_path() {
        from.copy = None;
    }
    // The instant as PAM takes it (not cut to whole seconds as for display),
    // so both decide alike at a booking's edge.
    let now = jiff::Timestamp::now();
    gate::check(&from, &ctx.config.pam, user, node, now)
}

/// `check-login USER [NODE]`: exit 0 when allowed or not gated, 1 when refused.
pub fn check_login(ctx: &Ctx, a: &CheckLoginArgs) -> Result<u8> {
    let node = match &a.node {
        Some(n) => node_arg(n)?,
        None => ctx.config.node_name()?,
    };
    let decision = match users::by_name(&a.user)? {
        Some(account) => decide(ctx, &account, &node),
        None => gate::unknown_user(&a.user),
    };
    let word = match &decision.login {
        Login::Allow(_) => "allow",
        Login::Deny(_) => "deny",
        Login::Ignore(_) => "ignore",
    };
    if ctx.json {
        print_json(&json!({
            "user": a.user,
            "node": node,
            "decision": word,
            "reason": decision.login.reason(),
            "source": decision.source.to_string(),
            "problems": decision.problems,
        }));
    } else {
        println!(
            "{word}: {} on {node}: {}",
            escape(&a.user),
            escape(decision.login.reason())
        );
        if !matches!(decision.source, Source::Shared | Source::Policy) {
            println!("  decided from: {}", escape(&decision.source.to_string()));
        }
        for p in &decision.problems {
            println!("  problem: {}", escape(p));
        }
    }
    Ok(if matches!(decision.login, Login::Deny(_)) {
        1
    } else {
        0
    })
}

/// Resolves `ssh`'s target (a booking id or a node) to a node the caller may enter.
fn enter(ctx: &Ctx, target: &str) -> Result<NodeName> {
    let node = if target.contains(':') {
        let id = BookingId::parse(target)?;
        let st = ctx.store.node(&id.node)?;
        let b = st
            .get(&id)
            .ok_or_else(|| Error::Refused(format!("no booking {id} (see `kloigos list`)")))?;
        if b.user != ctx.caller.name {
            return Err(Error::Refused(format!("{id} belongs to {}, not to you", b.user)).into());
        }
        id.node
    } else {
        node_arg(target)?
    };
    match decide(ctx, &ctx.caller, &node).login {
        Login::Deny(why) => Err(Error::Refused(why).into()),
        _ => Ok(node),
    }
}

/// The ssh command line, run as the caller with the caller's environment.
/// Refuses unless the process has fully dropped to the caller (uids, gids
/// and groups read back), which `Ctx::setup` does for `run` and `ssh`.
fn ssh_command(
    ctx: &Ctx,
    program: &std::path::Path,
    node: &NodeName,
    command: &[String],
) -> Result<Command> {
    ctx.privs.verify_dropped()?;
    let mut c = Command::new(program);
    c.env_clear()
        .envs(ctx.privs.caller_env.iter().map(|(k, v)| (k, v)));
    c.arg(node.as_str());
    if !command.is_empty() {
        c.arg("--").args(command);
    }
    Ok(c)
}

/// `ssh ID|NODE [-- CMD...]`: checks first (OpenSSH shows a refused key
/// login only as "Connection closed"), then execs ssh as the caller.
pub fn ssh(ctx: &Ctx, a: &SshArgs) -> Result<u8> {
    let node = enter(ctx, &a.target)?;
    let err = ssh_command(ctx, &a.ssh, &node, &a.command)?.exec();
    Err(CliError::Usage(format!(
        "cannot run {}: {err}",
        a.ssh.display()
    )))
}

/// The `alloc` flags that reproduce `spec` for a child `kloigos alloc`.
pub(crate) fn spec_args(spec: &AllocSpec) -> Vec<String> {
    let mut v = Vec::new();
    let mut opt = |flag: &str, val: &Option<String>| {
        if let Some(x) = val {
            v.push(flag.to_string());
            v.push(x.clone());
        }
    };
    opt("--worker", &spec.worker);
    opt("--time", &spec.time);
    opt("--at", &spec.at);
    opt("--units", &spec.units.map(|n| n.to_string()));
    opt("--cpus", &spec.cpus.map(|n| n.to_string()));
    opt("--gpus", &spec.gpus.map(|n| n.to_string()));
    opt("--note", &spec.note);
    opt("--user", &spec.user);
    if spec.whole {
        v.push("--whole".into());
    }
    for l in &spec.labels {
        v.extend(["--label".into(), l.clone()]);
    }
    if let Some(w) = &spec.wait {
        v.push(format!("--wait={w}"));
    }
    v
}

/// A child `kloigos` (this same binary, setuid on its own) with the global flags.
pub(crate) fn child(ctx: &Ctx) -> Result<Command> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Usage(format!("cannot find the kloigos binary: {e}")))?;
    let mut c = Command::new(exe);
    c.env_clear()
        .env("PATH", crate::privilege::SAFE_PATH)
        .args(&ctx.passthrough);
    if let Some(nc) = ctx.privs.caller_var("NO_COLOR") {
        c.env("NO_COLOR", nc);
    }
    Ok(c)
}

/// `run`: book (or reuse an active booking on `-w NODE`), ssh there, run
/// the command or a shell, and release the booking it made at the end.
pub fn run(ctx: &Ctx, a: &RunArgs) -> Result<u8> {
    let now = ctx.now();
    let reuse: Option<Booking> = match &a.spec.worker {
        Some(w) if a.spec.user.is_none() => {
            let node = node_arg(w)?;
            ctx.store
                .node(&node)?
                .active(now)
                .find(|b| b.user == ctx.caller.name)
                .cloned()
        }
        _ => None,
    };
    let (booking, made) = match reuse {
        Some(b) => {
            eprintln!("kloigos: using your booking {} on {}", b.id, b.node);
            (b, false)
        }
        None => {
            let out = child(ctx)?
                .arg("--json")
                .arg("alloc")
                .args(spec_args(&a.spec))
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| CliError::Usage(format!("cannot run kloigos alloc: {e}")))?;
            if !out.status.success() {
                return Ok(out.status.code().unwrap_or(3) as u8);
            }
            let b: Booking = serde_json::from_slice(&out.stdout)
                .map_err(|e| CliError::Usage(format!("kloigos alloc printed no booking: {e}")))?;
            eprintln!("kloigos: booked {} on {} until {}", b.id, b.node, b.end);
            (b, true)
        }
    };
    let status = ssh_command(ctx, &a.ssh, &booking.node, &a.command).and_then(|mut c| {
        // The booking's variables replace any the caller carried; a
        // CUDA_VISIBLE_DEVICES of theirs would name GPUs they may not hold.
        c.env_remove("CUDA_VISIBLE_DEVICES");
        c.envs(booking.session_env());
        c.status()
            .map_err(|e| CliError::Usage(format!("cannot run {}: {e}", a.ssh.display())))
    });
    if made {
        let rel = child(ctx)?
            .arg("release")
            .arg(booking.id.to_string())
            // stdout belongs to the command's output; our own words go to stderr.
            .stdout(std::process::Stdio::null())
            .status();
        match rel {
            Ok(s) if s.success() => eprintln!("kloigos: released {}", booking.id),
            _ => eprintln!(
                "kloigos: could not release {}; run `kloigos release {}`",
                booking.id, booking.id
            ),
        }
    }
    status.map(|s| s.code().map(|c| c.clamp(0, 255) as u8).unwrap_or(1))
}
