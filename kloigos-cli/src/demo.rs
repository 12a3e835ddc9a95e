//! `demo [DIR]`: builds a throwaway cluster in DIR (no root, no NFS) and
//! takes a narrated tour by running the real commands, each printed before
//! its output so it can be copied.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{CliError, Result};
use crate::privilege::Privileges;

/// Marks a directory as a demo this command may wipe and rebuild.
const MARKER: &str = ".kloigos-demo";

struct Tour {
    exe: PathBuf,
    shared: PathBuf,
}

impl Tour {
    fn say(&self, text: &str) {
        println!("\n## {text}");
    }

    /// Runs `kloigos --shared DIR ARGS`, echoing the command; returns the exit code.
    fn kloigos(&self, args: &[&str]) -> Result<i32> {
        let shown: Vec<String> = args.iter().map(|a| quote(a)).collect();
        println!(
            "$ kloigos --shared {} {}",
            self.shared.display(),
            shown.join(" ")
        );
        let status = Command::new(&self.exe)
            .arg("--shared")
            .arg(&self.shared)
            .args(args)
            .status()
            .map_err(|e| CliError::Usage(format!("cannot run {}: {e}", self.exe.display())))?;
        Ok(status.code().unwrap_or(-1))
    }

    /// Like `kloigos`, but the step must succeed for the tour to go on.
    fn must(&self, args: &[&str]) -> Result<()> {
        match self.kloigos(args)? {
            0 => Ok(()),
            code => Err(CliError::Usage(format!(
                "demo step `kloigos {}` failed (exit {code})",
                args.join(" ")
            ))),
        }
    }

    /// `check-login` quietly, for polling.
    fn allowed(&self, user: &str, node: &str) -> Result<bool> {
        let out = Command::new(&self.exe)
            .arg("--shared")
            .arg(&self.shared)
            .args(["check-login", user, node])
            .output()
            .map_err(|e| CliError::Usage(format!("cannot run {}: {e}", self.exe.display())))?;
        Ok(out.status.success())
    }
}

/// Quotes an argument for display the way a shell user would type it.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=+@".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn prepare(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if dir.join(MARKER).exists() {
            fs::remove_dir_all(dir).map_err(|e| {
                CliError::Usage(format!(
                    "cannot clear the old demo in {}: {e}",
                    dir.display()
                ))
            })?;
        } else if !empty {
            return Err(CliError::Usage(format!(
                "{} exists and is not a kloigos demo; pick another directory: kloigos demo DIR",
                dir.display()
            )));
        }
    }
    fs::create_dir_all(dir)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    fs::write(
        dir.join(MARKER),
        "built by `kloigos demo`; safe to delete\n",
    )
    .map_err(|e| CliError::Usage(format!("cannot write in {}: {e}", dir.display())))
}

/// `demo [DIR]`.
pub fn run(dir: &Path, privs: Privileges) -> Result<u8> {
    // A demo never needs the service account: run as the caller throughout.
    privs.drop_to_caller()?;
    let me = privs.caller_account()?;
    let dir =
        std::path::absolute(dir).map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))?;
    prepare(&dir)?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Usage(format!("cannot find the kloigos binary: {e}")))?;
    let tour = Tour {
        exe,
        shared: dir.join("shared"),
    };
    // root is never gated, so as root the demo books for `daemon`, which
    // every Linux has (`nobody` is never gated either).
    let cast = if me.uid.is_root() {
        Cast {
            holder: "daemon".into(),
            stranger: "bin",
            as_holder: vec!["-u", "daemon"],
        }
    } else {
        Cast {
            holder: me.name.to_string(),
            stranger: "daemon",
            as_holder: vec![],
        }
    };
    println!("kloigos demo: a throwaway cluster in {} (no root, no NFS; delete the directory when done).", dir.display());
    create_cluster(&tour, me.name.as_str())?;
    book_and_log_in(&tour, &cast)?;
    watch_a_booking_expire(&tour, &cast)?;
    show_capacity_and_views(&tour, &cast)?;
    print_what_next(&tour, &dir);
    Ok(0)
}

/// Who the tour books for, and who it shows being turned away.
struct Cast {
    /// The user who books.
    holder: String,
    /// A user without a booking.
    stranger: &'static str,
    /// What `alloc` needs to book for the holder (`-u daemon` as root).
    as_holder: Vec<&'static str>,
}

impl Cast {
    /// `args` plus what books for the holder.
    fn alloc<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(&self.as_holder);
        all
    }
}

/// The cluster with `admin` as its admin, and three nodes: one with ports,
/// GPUs and a label, a whole-node one, one open on weekdays only.
fn create_cluster(tour: &Tour, admin: &str) -> Result<()> {
    tour.say("An admin creates the cluster and its nodes. This demo gates every account but root (min_uid=1), so the tour works with the accounts every Linux has.");
    tour.must(&["admin", "init", "--name", "demo", "--admin", admin])?;
    tour.must(&[
        "admin",
        "policy",
        "min_uid=1",
        "max_duration=1d",
        "min_duration=1s",
    ])?;
    tour.must(&[
        "admin",
        "add-node",
        "node1",
        "--cpus",
        "0-63",
        "--unit-cpus",
        "16",
        "--ports",
        "20000-23999",
        "--gpus",
        "0-3",
        "-l",
        "gpu",
    ])?;
    tour.must(&["admin", "add-node", "node2", "--cpus", "0-15"])?;
    tour.must(&[
        "admin",
        "add-node",
        "node3",
        "--cpus",
        "0-31",
        "--unit-cpus",
        "8",
        "--window",
        "Mon-Fri 08:00-20:00",
    ])
}

/// Two bookings, `info`, and the login decision for the holder and a stranger.
fn book_and_log_in(tour: &Tour, cast: &Cast) -> Result<()> {
    let holder = cast.holder.as_str();
    tour.say(&format!("{holder} books two units of node1 (32 CPUs, their ports and their 2 GPUs) for two hours, then one more GPU wherever it fits best."));
    tour.must(&cast.alloc(&[
        "alloc",
        "-w",
        "node1",
        "--units",
        "2",
        "-t",
        "2h",
        "-m",
        "demo training run",
    ]))?;
    tour.must(&cast.alloc(&["alloc", "--gpus", "1", "-t", "90m"]))?;

    tour.say("info: who holds what, what is free, and until when.");
    tour.must(&["info"])?;

    tour.say("The PAM module takes this decision at every SSH login: the holder gets in, a stranger does not.");
    tour.kloigos(&["check-login", holder, "node1"])?;
    tour.kloigos(&["check-login", cast.stranger, "node1"])?;
    Ok(())
}

/// A 3-second booking: the holder gets in, then, once it expired, not.
fn watch_a_booking_expire(tour: &Tour, cast: &Cast) -> Result<()> {
    let holder = cast.holder.as_str();
    tour.say(&format!("A short booking: {holder} holds node2 for 3 seconds, then it expires and the door closes again."));
    tour.must(&cast.alloc(&["alloc", "-w", "node2", "-t", "3s"]))?;
    tour.kloigos(&["check-login", holder, "node2"])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while tour.allowed(holder, "node2")? {
        if Instant::now() > deadline {
            return Err(CliError::Usage(
                "the 3-second booking did not expire within 15 s; is the clock moving?".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    tour.kloigos(&["check-login", holder, "node2"])?;
    Ok(())
}

/// A refused whole-node booking, the timeline and the journal's summary.
fn show_capacity_and_views(tour: &Tour, cast: &Cast) -> Result<()> {
    tour.say("Capacity is enforced: node1 is partly booked, so a whole-node booking is refused with the earliest time it would fit.");
    tour.kloigos(&cast.alloc(&["alloc", "-w", "node1", "--whole", "-t", "1h"]))?;

    tour.say("The next 24 hours at a glance: a row per unit, a bar per booking, node3's closed hours shaded.");
    tour.must(&["timeline", "--width", "100"])?;

    tour.say("Everything is journaled: booked CPU- and GPU-hours per user.");
    tour.must(&["history", "--summary"])
}

/// Commands to try next on the demo cluster.
fn print_what_next(tour: &Tour, dir: &Path) {
    let s = tour.shared.display();
    println!(
        "\n## Explore further (the cluster stays in {}):",
        dir.display()
    );
    for cmd in [
        "info --json",
        "list --all",
        "alloc --at +1h -t 30m -w node3",
        "timeline --span 7d --fits 'gpus=2,t=4h'",
        "extend node1:1 -t +30m",
        "release node1:1",
        "history",
        "admin drain node2 -r 'disk swap'",
        "admin fsck",
    ] {
        println!("  kloigos --shared {s} {cmd}");
    }
}
