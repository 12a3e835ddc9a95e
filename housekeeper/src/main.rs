//! kloigos-housekeeper: the root-run node agent. Each pass reads the
//! cluster policy and this node's bookings and makes the node match them:
//! per-user CPU/memory/task limits, the nftables port rules, warnings before
//! a booking ends, ending the processes of users without a booking, facts,
//! the local state copy for PAM, metrics and release hooks.
//!
//! Run every minute by cron or a systemd timer (`--once`, the default), or
//! `--watch INTERVAL`. `--dry-run` prints the plan and changes nothing.
//! A pass has a deadline (`housekeeper.pass_deadline_s`); one still blocked
//! a little after it is ended by a watchdog with exit code 4 (see
//! `deadline`), so no pass keeps the lock.
#![deny(unsafe_code)]

mod dashboard;
mod deadline;
mod error;
mod facts;
mod fence;
mod gpu;
mod hooks;
mod kill;
mod log;
mod metrics;
mod nft;
mod pass;
mod procfs;
mod record;
mod slices;
// The syscalls without a safe wrapper (pidfds, memfd, fork-free exits).
#[allow(unsafe_code)]
mod sys;
#[cfg(test)]
mod testing;
mod warn;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use error::{Error, Result};

/// The usage text, shown with usage errors and by `--help`.
pub const USAGE: &str = "usage: kloigos-housekeeper [--once | --watch INTERVAL] [--dry-run] [--uninstall] [--config PATH]

  --once             one pass, then exit (the default; for cron or a systemd timer)
  --watch INTERVAL   a pass every INTERVAL (60, 90s, 5m, ...) until stopped
  --dry-run          print the plan (slices, nft changes, processes to end, hooks); change nothing
  --uninstall        remove the nftables table and every limit set, then exit
  --config PATH      node configuration (default /etc/kloigos/config.json)";

/// Parsed command line.
#[derive(Debug)]
struct Args {
    watch: Option<Duration>,
    opts: pass::Options,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Args>> {
    let mut watch = None;
    let mut once = false;
    let mut opts = pass::Options {
        config: PathBuf::from(kloigos_core::config::DEFAULT_PATH),
        dry_run: false,
        uninstall: false,
    };
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
        };
        match flag.as_str() {
            "--once" => once = true,
            "--dry-run" | "-n" => opts.dry_run = true,
            "--uninstall" => opts.uninstall = true,
            "--config" | "-c" => opts.config = PathBuf::from(value("--config")?),
            "--watch" => {
                let text = value("--watch")?;
                let d = kloigos_core::duration::Dur::parse(&text)
                    .map_err(|e| Error::Usage(format!("--watch: {e}")))?;
                if d.secs() == 0 {
                    return Err(Error::Usage(
                        "--watch needs an interval of at least 1 s".into(),
                    ));
                }
                watch = Some(Duration::from_secs(d.secs()));
            }
            "--help" | "-h" => return Ok(None),
            "--version" | "-V" => {
                println!("kloigos-housekeeper {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(Error::Usage(format!("unknown argument '{other}'"))),
        }
    }
    if once && watch.is_some() {
        return Err(Error::Usage("--once and --watch exclude each other".into()));
    }
    if opts.uninstall && watch.is_some() {
        return Err(Error::Usage("--uninstall runs once; drop --watch".into()));
    }
    Ok(Some(Args { watch, opts }))
}

fn exit_for(e: &Error) -> ExitCode {
    match e {
        Error::Usage(_) => ExitCode::from(2),
        Error::Core(c) if c.kind() == kloigos_core::ErrorKind::Usage => ExitCode::from(2),
        Error::Core(_) => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kloigos-housekeeper: {e}");
            return exit_for(&e);
        }
    };
    if !args.opts.dry_run && !nix::unistd::geteuid().is_root() {
        eprintln!("kloigos-housekeeper: {}", Error::NotRoot);
        return ExitCode::from(1);
    }
    log::init();
    let Some(every) = args.watch else {
        return match pass::run(&args.opts) {
            // The state could not be used: reported, nothing destructive done.
            Ok(r) if r.degraded.is_some() => ExitCode::from(3),
            // The deadline came first: logged with what was left undone.
            Ok(r) if !r.unfinished.is_empty() => ExitCode::from(1),
            Ok(_) => ExitCode::SUCCESS,
            Err(Error::Busy(p)) => {
                log::note(&Error::Busy(p).to_string());
                ExitCode::SUCCESS
            }
            Err(e) => {
                log::error(&e.to_string());
                exit_for(&e)
            }
        };
    };
    loop {
        let started = std::time::Instant::now();
        match pass::run(&args.opts) {
            Ok(_) => {}
            Err(e @ Error::Usage(_)) => {
                log::error(&e.to_string());
                return exit_for(&e);
            }
            Err(e) => log::error(&e.to_string()),
        }
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Option<Args>> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        let a = parse(&["--watch", "90s", "--dry-run", "--config=/x.json"])
            .unwrap()
            .unwrap();
        assert_eq!(a.watch, Some(Duration::from_secs(90)));
        assert!(a.opts.dry_run);
        assert_eq!(a.opts.config, PathBuf::from("/x.json"));
        assert!(parse(&["--once", "--watch", "1m"])
            .unwrap_err()
            .to_string()
            .contains("exclude"));
        assert!(parse(&["--frobnicate"])
            .unwrap_err()
            .to_string()
            .contains("unknown argument '--frobnicate'"));
        assert!(parse(&["--watch"])
            .unwrap_err()
            .to_string()
            .contains("needs a value"));
        assert!(parse(&["--watch", "soon"])
            .unwrap_err()
            .to_string()
            .contains("--watch"));
        assert!(parse(&["--help"]).unwrap().is_none());
    }
}
