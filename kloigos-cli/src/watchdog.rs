//! Ends a command whose shared directory stopped answering: a thread waits
//! for the deadline of `cli.share_timeout_ms` and, past it, prints what
//! was done (see `kloigos_core::deadline`) and exits 3, leaving behind the
//! thread blocked in the kernel on the share.

use std::path::PathBuf;

use kloigos_core::deadline::{self, GLOBAL};
use kloigos_core::Error;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::output::escape;

/// The watchdog's stack: it waits and prints one line.
const STACK: usize = 64 * 1024;

/// Starts the clock on `ctx`'s share, with its configured timeout.
pub fn arm(ctx: &Ctx) -> Result<()> {
    let timeout = ctx.config.cli.share_timeout()?;
    let share: PathBuf = ctx.store.root().to_path_buf();
    GLOBAL.arm(timeout);
    std::thread::Builder::new()
        .name("kloigos-watchdog".into())
        .stack_size(STACK)
        .spawn(move || {
            if let Some(what) = GLOBAL.wait_expiry() {
                eprintln!(
                    "kloigos: {}",
                    escape(&deadline::message(&share, GLOBAL.timeout(), what))
                );
                std::process::exit(3);
            }
        })
        .map_err(|e| Error::io("the watchdog thread", &e))?;
    Ok(())
}

/// The command is done with the share: what it prints from here on may
/// take as long as its reader wants (a pager), which is no hang.
pub fn done() {
    GLOBAL.disarm();
}
