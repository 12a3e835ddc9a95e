//! `kloigos`: parse the command line, set up privileges and the store, call
//! kloigos-core, print. Exit codes: 0 ok, 1 refused, 2 usage, 3 storage.
#![deny(unsafe_code)]

mod admin;
mod book;
mod ctx;
mod dashboard;
mod demo;
mod doctor;
mod error;
mod info;
mod output;
mod session;
mod timeline;
mod watchdog;

use std::process::ExitCode;

use clap::Parser;
use kloigos_core::privilege::Privileges;

use kloigos_cli::args;
use kloigos_cli::args::{Cli, Cmd};

use crate::error::CliError;

fn main() -> ExitCode {
    // Record the caller and replace the environment before anything else
    // (argument parsing included) can look at it.
    let privs = match Privileges::start("kloigos") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kloigos: {e}");
            return ExitCode::from(3);
        }
    };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli, privs) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Messages may quote file contents and arguments: escape them.
            eprintln!(
                "kloigos: {}",
                kloigos_core::printable::escape(&e.to_string())
            );
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli, privs: Privileges) -> Result<u8, CliError> {
    // The demo builds its own cluster and needs no configuration.
    if let Cmd::Demo(a) = &cli.cmd {
        return demo::run(&a.dir, privs);
    }
    let ctx = ctx::Ctx::setup(&cli, privs)?;
    if reads_the_share(&cli.cmd) {
        watchdog::arm(&ctx)?;
    }
    match cli.cmd {
        Cmd::Info(a) => info::info(&ctx, &a),
        Cmd::Alloc(a) => book::alloc(&ctx, a.node.as_deref(), &a.spec, a.wait_attempt),
        Cmd::Run(a) => session::run(&ctx, &a),
        Cmd::Ssh(a) => session::ssh(&ctx, &a),
        Cmd::Release(a) => book::release(&ctx, &a),
        Cmd::Extend(a) => book::extend(&ctx, &a),
        Cmd::List(a) => book::list(&ctx, &a),
        Cmd::History(a) => book::history(&ctx, &a),
        Cmd::CheckLogin(a) => session::check_login(&ctx, &a),
        Cmd::Doctor => doctor::doctor(&ctx),
        Cmd::Timeline(a) => timeline::timeline(&ctx, &a),
        Cmd::Dashboard(a) => dashboard::dashboard(&ctx, &a),
        Cmd::Admin(a) => admin::admin(&ctx, a),
        Cmd::Demo(_) => unreachable!("handled above"),
    }
}

/// Whether `cmd` gets a deadline on the share (`cli.share_timeout_ms`).
/// `run` and `ssh` run programs for as long as the user wants (their own
/// bookings go through child `kloigos` commands, which have one), and
/// `admin fsck` reads every journal, which may rightly take longer.
fn reads_the_share(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Run(_) | Cmd::Ssh(_) | Cmd::Demo(_) => false,
        Cmd::Admin(a) => !matches!(a, args::AdminCmd::Fsck { .. }),
        _ => true,
    }
}
