//! `dashboard --out DIR [--serve ADDR]`: the static site, written as the
//! caller (the command dropped to them before reading anything). Serving is
//! done by the separate `kloigos-dashboard` program, exec'd after the
//! drop, so that this setuid binary carries no HTTP code.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use kloigos_core::dashboard;

use crate::args::DashboardArgs;
use crate::book::read_all;
use crate::ctx::Ctx;
use crate::error::{CliError, Result};
use crate::timeline::what_if_now;

/// The server program, installed beside `kloigos`.
pub const SERVER: &str = "kloigos-dashboard";

/// `dashboard`.
pub fn dashboard(ctx: &Ctx, a: &DashboardArgs) -> Result<u8> {
    // Files written here belong to the caller, never to the service account.
    ctx.privs.verify_dropped()?;
    let policy = ctx.policy()?;
    let now = what_if_now(ctx, a.now.as_deref(), &policy.tz_or_utc())?;
    let (mut states, bad) = read_all(ctx)?;
    states.sort_by(|x, y| x.node.name.cmp(&y.node.name));
    let nodes = states
        .into_iter()
        .map(|s| {
            let facts = ctx.store.facts(&s.node.name);
            (s, facts)
        })
        .collect();
    let bad_count = bad.len();
    crate::watchdog::done();
    let snap = dashboard::snapshot(&policy, nodes, bad, now);
    let out = std::path::absolute(&a.out)
        .map_err(|e| CliError::Usage(format!("--out {}: {e}", a.out.display())))?;
    dashboard::write_site(&out, &snap)?;
    if !ctx.json {
        println!(
            "wrote {} and {} ({} nodes)",
            out.join(dashboard::PAGE_FILE).display(),
            dashboard::SNAPSHOT_FILE,
            snap.nodes.len()
        );
    }
    if let Some(addr) = &a.serve {
        return Err(serve(ctx, &out, addr));
    }
    Ok(if bad_count == 0 { 0 } else { 3 })
}

/// Execs the server on `dir`; returns only on failure.
fn serve(ctx: &Ctx, dir: &Path, addr: &str) -> CliError {
    let server = match server_path() {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Err(e) = ctx.privs.verify_dropped() {
        return e.into();
    }
    let err = std::process::Command::new(&server)
        .arg("--dir")
        .arg(dir)
        .arg("--listen")
        .arg(addr)
        .exec();
    kloigos_core::Error::io(&server, &err).into()
}

fn server_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| kloigos_core::Error::io("/proc/self/exe", &e))?;
    let path = exe
        .parent()
        .map(|d| d.join(SERVER))
        .unwrap_or_else(|| PathBuf::from(SERVER));
    if !path.is_file() {
        return Err(kloigos_core::Error::Storage {
            path,
            msg: format!(
                "{SERVER} is not installed beside kloigos; install it there, or serve the --out directory with any web server"
            ),
        }
        .into());
    }
    Ok(path)
}
