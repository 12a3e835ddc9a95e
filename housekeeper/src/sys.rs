//! The system edge: pidfds (signals that reach exactly the process meant),
//! bounded waits on processes, the switch to the service account, running
//! external programs without a shell and with a timeout, and the few
//! `bpf()` commands of the cgroup v2 device fence ([`DeviceProg`]). The
//! rest of the housekeeper never says `unsafe`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid};

use crate::error::{Error, Result};

/// PATH used to find programs when the environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long an external program (nft, systemctl, loginctl, nvidia-smi) may
/// run, at most; less when the pass deadline is nearer.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a program's process group gets to die after SIGKILL before it
/// is left behind (a process stuck in the kernel cannot be waited for).
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Most of a program's stdout and stderr kept.
const MAX_PROGRAM_OUTPUT: u64 = 1 << 20;

/// A process held by a pid file descriptor: a signal sent through it
/// reaches that process or, once it has been reaped, none (a pid number
/// could meanwhile name another process; a pidfd cannot).
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
}

impl PidFd {
    /// Opens the process `pid` now is. `ErrorKind::NotFound` (ESRCH): no
    /// such process any more.
    pub fn open(pid: i32) -> std::io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags by value and touches no
        // memory of ours; on success it returns a new descriptor we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidFd { fd })
    }

    /// Sends `signal` to the process. ESRCH (it has exited) is success:
    /// the process is gone either way.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: a valid descriptor, a signal number, a null siginfo (the
        // kernel fills in a kill-like one) and flags 0; no memory is shared.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0 as libc::c_uint,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Waits up to `timeout` for every process in `procs` to exit (a pidfd
/// becomes readable when its process has exited); returns how many have
/// not. Bounded, never a sleep: `poll` returns as soon as they are gone.
pub fn wait_exited(procs: &[PidFd], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut fds: Vec<libc::pollfd> = procs
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !fds.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a live, exclusively borrowed array of
        // `fds.len()` pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        fds.retain(|f| f.revents == 0);
        if n == 0 || left.is_zero() {
            break;
        }
    }
    fds.len()
}

/// Waits up to `timeout` for `child` to exit and reaps it; `None` if it
/// still runs.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    if let Some(s) = child.try_wait()? {
        return Ok(Some(s));
    }
    // Our own unreaped child: its pid cannot name another process.
    let fd = PidFd::open(child.id() as i32)?;
    wait_exited(std::slice::from_ref(&fd), timeout);
    child.try_wait()
}

/// Ends `child` and its process group (it was started as the leader of its
/// own) and reaps it, waiting at most [`KILL_GRACE`]; false if it is still
/// there (stuck in the kernel), and then left behind.
pub fn kill_group(child: &mut Child) -> bool {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    matches!(wait_timeout(child, KILL_GRACE), Ok(Some(_)))
}

/// Ends this process at once, without unwinding, flushing or running exit
/// handlers (any of which could block behind the stuck thread); the kernel
/// closes every descriptor, which releases the pass lock.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// An anonymous file (memfd) for a program's input or output: no pipe that
/// can fill up or stay open, no name in any directory.
fn scratch(name: &std::ffi::CStr) -> std::io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of
    // the call; on success the kernel returns a new descriptor we own.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Runs `f` with effective uid/gid and groups of the service account, then
/// switches back to root. `None`: the account does not exist here, so `f`
/// runs as root (files owned by root are trusted as well).
pub fn as_service<T>(
    account: Option<(kloigos_core::ids::Uid, kloigos_core::ids::Gid)>,
    f: impl FnOnce() -> T,
) -> Result<T> {
    let Some((uid, gid)) = account else {
        return Ok(f());
    };
    if !nix::unistd::geteuid().is_root() {
        return Ok(f());
    }
    let saved = nix::unistd::getgroups()
        .map_err(|e| Error::Privilege(format!("read the supplementary groups: {e}")))?;
    // Groups, then gid, then uid; back in the reverse order.
    nix::unistd::setgroups(&[Gid::from_raw(gid.as_raw())])
        .and_then(|()| nix::unistd::setegid(Gid::from_raw(gid.as_raw())))
        .and_then(|()| nix::unistd::seteuid(Uid::from_raw(uid.as_raw())))
        .map_err(|e| {
            restore_root(&saved);
            Error::Privilege(format!("switch to the service account (uid {uid}): {e}"))
        })?;
    let out = f();
    restore_root(&saved);
    Ok(out)
}

fn restore_root(groups: &[Gid]) {
    let ok = nix::unistd::seteuid(Uid::from_raw(0))
        .and_then(|()| nix::unistd::setegid(Gid::from_raw(0)))
        .and_then(|()| nix::unistd::setgroups(groups));
    if let Err(e) = ok {
        // Going on with the wrong credentials would be worse than stopping.
        crate::log::error(&format!(
            "cannot switch back to root after writing as the service account: {e}; aborting"
        ));
        std::process::abort();
    }
}

/// Finds `program` on PATH (the environment's, else a default one).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program` with `args` (no shell), optionally feeding `stdin`;
/// returns stdout, or an error with its stderr. The program runs in a
/// process group of its own, killed whole after [`PROGRAM_TIMEOUT`] or at
/// the pass deadline, whichever comes first.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S], stdin: Option<&[u8]>) -> Result<String> {
    let timeout = crate::deadline::bound(PROGRAM_TIMEOUT);
    run_for(program, args, stdin, timeout)
}

/// [`run`] with an explicit timeout.
pub fn run_for<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<String> {
    let path = find_program(program).ok_or_else(|| Error::Spawn {
        program: program.into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let shown = || {
        let mut s = program.to_string();
        for a in args {
            s.push(' ');
            s.push_str(&a.as_ref().to_string_lossy());
        }
        s
    };
    let spawn_err = |source| Error::Spawn {
        program: program.into(),
        source,
    };
    let input = match stdin {
        Some(bytes) => {
            let mut f = scratch(c"kloigos-stdin").map_err(spawn_err)?;
            f.write_all(bytes)
                .and_then(|()| f.rewind())
                .map_err(spawn_err)?;
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    let mut out = scratch(c"kloigos-stdout").map_err(spawn_err)?;
    let mut err = scratch(c"kloigos-stderr").map_err(spawn_err)?;
    let mut child = Command::new(&path)
        .args(args)
        .stdin(input)
        .stdout(out.try_clone().map_err(spawn_err)?)
        .stderr(err.try_clone().map_err(spawn_err)?)
        .process_group(0)
        .spawn()
        .map_err(spawn_err)?;
    let status = match wait_timeout(&mut child, timeout) {
        Ok(Some(s)) => s,
        Ok(None) | Err(_) => {
            let reaped = kill_group(&mut child);
            return Err(Error::Timeout {
                program: shown(),
                secs: timeout.as_secs_f64(),
                reaped,
            });
        }
    };
    let read = |f: &mut File| {
        let mut text = Vec::new();
        let _ = f
            .rewind()
            .and_then(|()| (&*f).take(MAX_PROGRAM_OUTPUT).read_to_end(&mut text));
        String::from_utf8_lossy(&text).into_owned()
    };
    if !status.success() {
        return Err(Error::Command {
            program: shown(),
            status: status.to_string(),
            output: read(&mut err).trim().to_string(),
        });
    }
    Ok(read(&mut out))
}

// bpf(2) commands, program and attach types, flags (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// The most programs the kernel attaches to one group per attach type
/// (`BPF_CGROUP_MAX_PROGS`): a query never needs more room.
const MAX_ATTACHED: usize = 64;
/// Most of the verifier's log kept when it refuses a program.
const VERIFIER_LOG: usize = 16 * 1024;

/// `union bpf_attr` for `BPF_PROG_LOAD` (the fields up to
/// `expected_attach_type`; the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH` and `BPF_PROG_DETACH`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `union bpf_attr` for `BPF_PROG_QUERY`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_PROG_GET_FD_BY_ID`.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info`, up to the name (the kernel fills what fits).
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

/// Calls bpf(2) with `attr`; the result (a descriptor for some commands)
/// or the error.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` struct
    // laid out as the kernel's `union bpf_attr` for `cmd`, and its size is
    // passed with it; any buffer it points to is kept alive by the caller
    // for the duration of the call, with the length given beside it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A descriptor bpf(2) returned, owned.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: for this command a non-negative result is a new descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A cgroup device program held by a descriptor (the kernel keeps it while
/// it is attached somewhere or held open).
#[derive(Debug)]
pub struct DeviceProg {
    fd: OwnedFd,
}

/// Why the kernel refused to load a program.
#[derive(Debug)]
pub struct LoadError {
    /// What bpf(2) said.
    pub source: std::io::Error,
    /// The verifier's log (empty when it gave none).
    pub log: String,
}

impl DeviceProg {
    /// Loads `insns` (encoded `struct bpf_insn`s) as a
    /// `BPF_PROG_TYPE_CGROUP_DEVICE` program named `name` (at most 15
    /// bytes kept). When the kernel refuses it, loads it once more to get
    /// the verifier's log into the error.
    pub fn load(insns: &[u8], name: &str) -> std::result::Result<DeviceProg, LoadError> {
        let license = c"Dual MIT/GPL";
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let attr = |log: &mut Vec<u8>, level: u32| ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: (insns.len() / 8) as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: level,
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            prog_name,
            expected_attach_type: BPF_CGROUP_DEVICE,
            ..ProgLoadAttr::default()
        };
        let source = match bpf_fd(BPF_PROG_LOAD, &mut attr(&mut Vec::new(), 0)) {
            Ok(fd) => return Ok(DeviceProg { fd }),
            Err(e) => e,
        };
        let mut buf = vec![0u8; VERIFIER_LOG];
        let _ = bpf_fd(BPF_PROG_LOAD, &mut attr(&mut buf, 1));
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Err(LoadError {
            source,
            log: String::from_utf8_lossy(&buf[..end]).trim().to_string(),
        })
    }

    /// The program with kernel id `id`. `ErrorKind::NotFound` (ENOENT): no
    /// such program any more.
    pub fn by_id(id: u32) -> std::io::Result<DeviceProg> {
        let mut attr = GetFdAttr {
            prog_id: id,
            ..GetFdAttr::default()
        };
        bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr).map(|fd| DeviceProg { fd })
    }

    /// Its kernel id and name.
    pub fn info(&self) -> std::io::Result<(u32, String)> {
        let mut info = ProgInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<ProgInfo>() as u32,
            info: &mut info as *mut ProgInfo as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        let end = info.name.iter().position(|b| *b == 0).unwrap_or(16);
        Ok((
            info.id,
            String::from_utf8_lossy(&info.name[..end]).into_owned(),
        ))
    }

    /// Attaches it to the group open as `cgroup`, beside the programs there
    /// (`BPF_F_ALLOW_MULTI`: systemd's and others' stay, and the kernel runs
    /// them all; any one refusing refuses).
    pub fn attach(&self, cgroup: &File) -> std::io::Result<()> {
        let mut attr = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: self.fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: BPF_F_ALLOW_MULTI,
            ..AttachAttr::default()
        };
        bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
    }

    /// Detaches it from the group open as `cgroup`, leaving the others.
    pub fn detach(&self, cgroup: &File) -> std::io::Result<()> {
        let mut attr = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: self.fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..AttachAttr::default()
        };
        bpf(BPF_PROG_DETACH, &mut attr).map(drop)
    }
}

/// The ids of the device programs attached to the group open as `cgroup`
/// itself (not those inherited from its parents).
pub fn attached_device_progs(cgroup: &File) -> std::io::Result<Vec<u32>> {
    let mut ids = [0u32; MAX_ATTACHED];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: MAX_ATTACHED as u32,
        ..QueryAttr::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let n = (attr.prog_cnt as usize).min(MAX_ATTACHED);
    Ok(ids[..n].to_vec())
}

/// Opens the cgroup directory `dir` for the bpf(2) commands above.
pub fn open_cgroup(dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_fed_its_input_and_killed_with_its_group_at_the_timeout() {
        assert_eq!(
            run_for(
                "cat",
                &[] as &[&str],
                Some(b"table"),
                Duration::from_secs(30)
            )
            .unwrap(),
            "table"
        );
        match run_for(
            "sh",
            &["-c", "echo nope >&2; exit 3"],
            None,
            Duration::from_secs(30),
        ) {
            Err(Error::Command { status, output, .. }) => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(output, "nope");
            }
            other => panic!("{other:?}"),
        }
        // A program left running past its timeout is killed, with what it started.
        let t = Instant::now();
        match run_for(
            "sh",
            &["-c", "sleep 600 & wait"],
            None,
            Duration::from_millis(300),
        ) {
            Err(Error::Timeout { reaped, .. }) => assert!(reaped),
            other => panic!("{other:?}"),
        }
        // Far below the 600 s the program wanted.
        assert!(t.elapsed() < Duration::from_secs(60));
        // A child left behind holding stdout does not keep the run waiting
        // (with a pipe, reading to its end would have waited 600 s).
        let pid = run_for(
            "sh",
            &["-c", "sleep 600 & echo $!"],
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        let pid: i32 = pid.trim().parse().unwrap();
        PidFd::open(pid).unwrap().signal(libc::SIGKILL).unwrap();
    }

    #[test]
    fn a_signal_through_a_pidfd_reaches_the_process_and_the_wait_sees_it_exit() {
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        let fd = PidFd::open(child.id() as i32).unwrap();
        let held = [fd];
        assert_eq!(wait_exited(&held, Duration::ZERO), 1, "still running");
        held[0].signal(libc::SIGKILL).unwrap();
        assert_eq!(wait_exited(&held, Duration::from_secs(60)), 0);
        assert!(!child.wait().unwrap().success());
        // Reaped: the pidfd reaches nothing, and says so without error.
        held[0].signal(libc::SIGKILL).unwrap();
    }
}
