//! What /proc and /sys say: processes with their owners, memory, load,
//! uptime, CPUs and NUMA nodes.

use std::collections::BTreeMap;
use std::fs;

use kloigos_core::cpuset::CpuSet;
use kloigos_core::facts::Numa;
use kloigos_core::ids::Uid;

/// One process, as much of it as the housekeeper needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Real, effective and saved uid.
    pub uids: [Uid; 3],
    /// State letter (`R`, `S`, `D`, `Z`, ...).
    pub state: char,
    /// Controlling terminal as the kernel encodes it (0: none).
    pub tty_nr: i32,
    /// User plus system CPU time, in clock ticks.
    pub ticks: u64,
}

impl Proc {
    /// Whether the process belongs to `uid` (any of its three uids) and is
    /// not a zombie: the processes a helper running as `uid` can signal.
    pub fn is_live_of(&self, uid: Uid) -> bool {
        self.is_live() && self.uids.contains(&uid)
    }

    /// Whether the process still runs (zombies and dead tasks do not).
    pub fn is_live(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// The pids of the live processes of `uid` in `procs` (see [`Proc::is_live_of`]).
pub fn live_pids(procs: &[Proc], uid: Uid) -> Vec<i32> {
    procs
        .iter()
        .filter(|p| p.is_live_of(uid))
        .map(|p| p.pid)
        .collect()
}

/// Parses the `Uid:` line of /proc/PID/status.
fn parse_status_uids(status: &str) -> Option<[Uid; 3]> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let mut it = line["Uid:".len()..]
        .split_whitespace()
        .map(|s| s.parse::<Uid>());
    Some([it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?])
}

/// Parses state, tty_nr and utime+stime from /proc/PID/stat (the command
/// name in parentheses may hold anything, so fields count from its end).
fn parse_stat(stat: &str) -> Option<(char, i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) session(3) tty_nr(4) ... utime(11) stime(12).
    let state = f.first()?.chars().next()?;
    let tty = f.get(4)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((state, tty, ticks))
}

/// Reads one process; `None` if it vanished meanwhile or is a kernel thread
/// without a status.
pub fn read_proc(pid: i32) -> Option<Proc> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uids = parse_status_uids(&status)?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, tty_nr, ticks) = parse_stat(&stat)?;
    Some(Proc {
        pid,
        uids,
        state,
        tty_nr,
        ticks,
    })
}

/// Every process visible now.
pub fn scan() -> Vec<Proc> {
    pids().into_iter().filter_map(read_proc).collect()
}

/// The ids of all processes visible now.
pub fn pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect()
}

/// Largest /proc status file read (they are a few KiB).
const MAX_STATUS: u64 = 64 * 1024;

/// Reads /proc/PID/status, bounded; `None` if the process is gone.
fn status_of(pid: i32) -> Option<String> {
    use std::io::Read;
    let f = fs::File::open(format!("/proc/{pid}/status")).ok()?;
    let mut text = String::new();
    f.take(MAX_STATUS).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Whether a process with this status is one the kill path ends for
/// `uid`: not a zombie, with `uid` as its real or saved uid. Those are the
/// processes `uid` itself may signal; one that only borrows `uid` as its
/// effective uid (a root daemon acting for the user) is not the user's.
fn is_to_end_status(status: &str, uid: Uid) -> bool {
    let zombie = status
        .lines()
        .find(|l| l.starts_with("State:"))
        .is_some_and(|l| l.contains('Z') || l.contains("X (dead)"));
    !zombie && parse_status_uids(status).is_some_and(|[r, _, s]| r == uid || s == uid)
}

/// Whether process `pid` is now one to end for `uid` (see [`pids_to_end`]).
pub fn is_to_end(pid: i32, uid: Uid) -> bool {
    status_of(pid).is_some_and(|s| is_to_end_status(&s, uid))
}

/// The processes to end for `uid` now: live, with `uid` as real or saved
/// uid, read through /proc/PID/status only (the kill loop's scan, kept cheap).
pub fn pids_to_end(uid: Uid) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| is_to_end(*pid, uid))
        .collect()
}

/// Live processes and CPU ticks per uid (a process counts for each distinct uid it holds).
pub fn by_uid(procs: &[Proc]) -> BTreeMap<Uid, (u32, u64)> {
    let mut m: BTreeMap<Uid, (u32, u64)> = BTreeMap::new();
    for p in procs.iter().filter(|p| p.is_live()) {
        let mut uids = p.uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        for u in uids {
            let e = m.entry(u).or_default();
            e.0 += 1;
            e.1 += p.ticks;
        }
    }
    m
}

/// `MemTotal` and `MemAvailable` from /proc/meminfo, in bytes.
pub fn meminfo() -> (u64, u64) {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (get("MemTotal:"), get("MemAvailable:"))
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|s| s.parse::<f64>().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// Seconds since boot.
pub fn uptime() -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
        })
        .map_or(0, |s| s as u64)
}

/// CPUs online.
pub fn cpus_online() -> Option<CpuSet> {
    let t = fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    CpuSet::parse(t.trim()).ok()
}

/// NUMA nodes with CPUs, from /sys/devices/system/node.
pub fn numa() -> Vec<Numa> {
    let Ok(rd) = fs::read_dir("/sys/devices/system/node") else {
        return Vec::new();
    };
    let mut out: Vec<Numa> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let id: u32 = name.to_str()?.strip_prefix("node")?.parse().ok()?;
            let list = fs::read_to_string(e.path().join("cpulist")).ok()?;
            let cpus = CpuSet::parse(list.trim()).ok()?;
            Some(Numa { id, cpus })
        })
        .collect();
    out.sort_by_key(|n| n.id);
    out
}

/// Clock ticks per second, for CPU use.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// This boot's id, to tell records of an earlier boot apart.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::uid;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let stat = "42 (a) b) S 1 42 42 34816 42 4194560 1 0 0 0 7 5 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat(stat), Some(('S', 34816, 12)));
    }

    #[test]
    fn status_uids() {
        let s = "Name:\tsh\nState:\tS (sleeping)\nUid:\t1001\t1001\t0\t1001\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_status_uids(s), Some([uid(1001), uid(1001), uid(0)]));
    }

    #[test]
    fn only_real_or_saved_uid_makes_a_process_the_users() {
        let st = |state: &str, uids: &str| format!("Name:\tx\nState:\t{state}\nUid:\t{uids}\t0\n");
        assert!(is_to_end_status(
            &st("S (sleeping)", "1001\t1001\t1001"),
            uid(1001)
        ));
        assert!(is_to_end_status(
            &st("T (stopped)", "1001\t0\t0"),
            uid(1001)
        ));
        assert!(is_to_end_status(
            &st("R (running)", "0\t0\t1001"),
            uid(1001)
        ));
        assert!(!is_to_end_status(
            &st("S (sleeping)", "0\t1001\t0"),
            uid(1001)
        ));
        assert!(!is_to_end_status(
            &st("Z (zombie)", "1001\t1001\t1001"),
            uid(1001)
        ));
        assert!(!is_to_end_status(
            &st("S (sleeping)", "1002\t1002\t1002"),
            uid(1001)
        ));
    }

    #[test]
    fn this_process_is_seen() {
        let me = read_proc(std::process::id() as i32).unwrap();
        assert!(me.is_live());
        assert!(me.uids.contains(&uid(nix::unistd::getuid().as_raw())));
        assert!(meminfo().0 > 0);
    }
}
