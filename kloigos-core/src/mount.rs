//! Which mount holds the shared directory, and whether its file locks are
//! shared between nodes.
//!
//! Writers exclude each other with `flock` on a node's lock file. On NFS
//! that is a lock on the server, seen by every client, unless the client
//! was mounted with `local_lock=flock`, `local_lock=all` or `nolock`: then
//! each client keeps its locks to itself, writers on different nodes
//! overwrite each other and bookings are lost. This module reads
//! `/proc/self/mountinfo` (parsed by pure functions) so that writers can
//! refuse such a mount and `doctor` can show it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the kernel lists this process's mounts.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Largest mountinfo read (a host with thousands of mounts stays far below).
const MAX_MOUNTINFO: u64 = 4 << 20;

/// One line of `/proc/self/mountinfo`: the fields kloigos uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (octal escapes decoded).
    pub point: PathBuf,
    /// The file system type (`nfs`, `nfs4`, `ext4`, ...).
    pub fstype: String,
    /// What is mounted (`server:/export`).
    pub source: String,
    /// Per-mount options, then the file system's own ("super") options.
    pub options: Vec<String>,
}

impl Mount {
    /// Whether the mount has option `name` (`nolock`), or `name=value`
    /// for any value when `name` ends in `=`.
    fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().map(String::as_str).find(|o| {
            if name.ends_with('=') {
                o.starts_with(name)
            } else {
                *o == name
            }
        })
    }
}

/// Decodes the octal escapes (`\040` for a space) the kernel writes in
/// mount points.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parses one mountinfo line; `None` for a line that does not have the
/// kernel's shape (id, parent, dev, root, point, options, optional fields,
/// `-`, type, source, super options).
pub fn parse_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let point = fields.nth(4)?;
    let mount_opts = fields.next()?;
    // Optional fields (`shared:1`, `master:2`) run up to the lone "-".
    fields.by_ref().find(|f| *f == "-")?;
    let fstype = fields.next()?;
    let source = fields.next()?;
    let super_opts = fields.next().unwrap_or_default();
    Some(Mount {
        point: unescape(point),
        fstype: fstype.to_string(),
        source: source.to_string(),
        options: mount_opts
            .split(',')
            .chain(super_opts.split(','))
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Parses a whole mountinfo text, in the kernel's order (later lines are
/// mounted over earlier ones); malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// The mount that holds `path` (absolute, with no `..` or links left):
/// the longest mount point that is a prefix of it, component by
/// component; of several at the same point, the last mounted.
pub fn containing<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.point)
            && best.is_none_or(|b| m.point.components().count() >= b.point.components().count())
        {
            best = Some(m);
        }
    }
    best
}

/// How a mount's `flock` locks are seen by other machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locking {
    /// An NFS mount whose locks go to the server: every node sees them.
    Shared {
        /// The file system type (`nfs`, `nfs4`).
        fstype: String,
        /// Its `vers=` option, if shown.
        version: Option<String>,
    },
    /// An NFS mount whose locks stay on this client: writers on other
    /// nodes do not exclude each other.
    ClientOnly {
        /// The option that makes them local (`local_lock=flock`, `nolock`).
        option: String,
    },
    /// Not NFS: locks are this machine's kernel's, shared with every
    /// process here (right for a one-machine cluster; for several nodes
    /// only if this file system shares them).
    Kernel {
        /// The file system type.
        fstype: String,
    },
}

impl Locking {
    /// How `m` locks.
    pub fn of(m: &Mount) -> Locking {
        if !matches!(m.fstype.as_str(), "nfs" | "nfs4") {
            return Locking::Kernel {
                fstype: m.fstype.clone(),
            };
        }
        // `nolock` (NFSv2/3: no NLM) shows with `local_lock=all`; name it, the option admins typed.
        let local = m.option("nolock").map(str::to_string).or_else(|| {
            m.option("local_lock=")
                .filter(|o| matches!(*o, "local_lock=flock" | "local_lock=all"))
                .map(str::to_string)
        });
        match local {
            Some(option) => Locking::ClientOnly { option },
            None => Locking::Shared {
                fstype: m.fstype.clone(),
                version: m
                    .option("vers=")
                    .map(|o| o.trim_start_matches("vers=").to_string()),
            },
        }
    }

    /// Whether writers may write on such a mount.
    pub fn is_safe(&self) -> bool {
        !matches!(self, Locking::ClientOnly { .. })
    }
}

impl fmt::Display for Locking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locking::Shared { fstype, version } => write!(
                f,
                "{fstype}{}: locks go to the server, shared by every node",
                version
                    .as_deref()
                    .map(|v| format!(" (vers={v})"))
                    .unwrap_or_default()
            ),
            Locking::ClientOnly { option } => write!(
                f,
                "NFS with {option}: locks stay on this client, so writers on different nodes do not exclude each other"
            ),
            Locking::Kernel { fstype } => write!(
                f,
                "{fstype}: locks are this machine's kernel's (not NFS; right for a one-machine cluster)"
            ),
        }
    }
}

/// The fix for a mount that locks locally.
pub fn fix(option: &str) -> String {
    format!(
        "remount the share without `{option}` (NFS's default, `local_lock=none`, keeps locks on the server; for NFSv3 lockd and rpc.statd must run)"
    )
}

/// Reads this process's mount table, bounded in size.
pub fn read_mounts() -> Result<Vec<Mount>> {
    let path = Path::new(MOUNTINFO);
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, &e))?;
    let mut text = String::new();
    f.take(MAX_MOUNTINFO)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(path, &e))?;
    Ok(parse(&text))
}

/// The mount that holds `dir` and how it locks. `dir` is resolved first
/// (links, `..`), since a mount point is matched by its real path.
pub fn locking_of(dir: &Path) -> Result<(Mount, Locking)> {
    let real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, &e))?;
    let mounts = read_mounts()?;
    let m = containing(&mounts, &real).ok_or_else(|| Error::Storage {
        path: real.clone(),
        msg: format!("is on no mount listed in {MOUNTINFO}; cannot tell how its locks work"),
    })?;
    let locking = Locking::of(m);
    Ok((m.clone(), locking))
}

/// Refuses to write in `dir` when its mount keeps locks on this client.
pub fn check_shared_locking(dir: &Path) -> Result<()> {
    match locking_of(dir)? {
        (m, Locking::ClientOnly { option }) => Err(Error::LocalLocking {
            path: m.point,
            option,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Linux 6.x writes them for the mounts kloigos meets.
    const NFS4: &str = "645 30 0:58 / /nfs/kloigos rw,relatime shared:318 - nfs4 fs1:/srv/kloigos rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,local_lock=none,addr=10.0.0.1";
    const NFS4_FLOCK: &str = "646 30 0:59 / /nfs/kloigos rw,relatime shared:319 - nfs4 fs1:/srv/kloigos rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,local_lock=flock,addr=10.0.0.1";
    const NFS3: &str = "700 30 0:60 / /nfs/kloigos rw,relatime shared:330 - nfs fs1:/srv/kloigos rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.1,mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=10.0.0.1";
    const NFS3_NOLOCK: &str = "701 30 0:61 / /nfs/kloigos rw,relatime shared:331 - nfs fs1:/srv/kloigos rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,nolock,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.1,mountvers=3,mountport=20048,mountproto=udp,local_lock=all,addr=10.0.0.1";
    const NFS3_ALL: &str = "702 30 0:62 / /nfs/kloigos rw,relatime shared:332 - nfs fs1:/srv/kloigos rw,vers=3,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.1,mountvers=3,mountproto=tcp,local_lock=all,addr=10.0.0.1";
    const NFS4_POSIX: &str = "703 30 0:63 / /nfs/kloigos rw,relatime - nfs4 fs1:/srv/kloigos rw,vers=4.1,hard,proto=tcp,sec=sys,clientaddr=10.0.0.2,local_lock=posix,addr=10.0.0.1";
    const ROOT: &str = "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro";
    const NFS_ROOT: &str =
        "30 25 0:26 / /nfs rw,nosuid,nodev shared:10 - tmpfs tmpfs rw,size=1024k,mode=755";

    fn locking(line: &str) -> Locking {
        Locking::of(&parse_line(line).unwrap())
    }

    #[test]
    fn nfs_lines_parse_with_their_super_options() {
        let m = parse_line(NFS4).unwrap();
        assert_eq!(m.point, Path::new("/nfs/kloigos"));
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("nfs4", "fs1:/srv/kloigos")
        );
        assert!(m.options.iter().any(|o| o == "relatime"));
        assert_eq!(m.option("local_lock="), Some("local_lock=none"));
        assert_eq!(m.option("nolock"), None);
        // No optional fields at all, and a truncated line.
        assert_eq!(parse_line(NFS4_POSIX).unwrap().fstype, "nfs4");
        assert_eq!(parse_line("645 30 0:58 / /nfs/kloigos rw"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn shared_nfs_locking_is_safe_on_both_versions() {
        assert_eq!(
            locking(NFS4),
            Locking::Shared {
                fstype: "nfs4".into(),
                version: Some("4.2".into())
            }
        );
        assert_eq!(
            locking(NFS3),
            Locking::Shared {
                fstype: "nfs".into(),
                version: Some("3".into())
            }
        );
        // local_lock=posix makes only fcntl locks local; flock still goes to the server.
        assert!(locking(NFS4_POSIX).is_safe());
        assert!(locking(ROOT).is_safe());
        assert_eq!(
            locking(ROOT),
            Locking::Kernel {
                fstype: "ext4".into()
            }
        );
    }

    #[test]
    fn local_locking_options_are_refused_by_name() {
        for (line, option) in [
            (NFS4_FLOCK, "local_lock=flock"),
            (NFS3_NOLOCK, "nolock"),
            (NFS3_ALL, "local_lock=all"),
        ] {
            let l = locking(line);
            assert_eq!(
                l,
                Locking::ClientOnly {
                    option: option.into()
                },
                "{line}"
            );
            assert!(!l.is_safe());
            assert!(l.to_string().contains(option), "{l}");
            assert!(fix(option).contains(option));
        }
    }

    #[test]
    fn the_longest_mount_point_holds_the_path_component_by_component() {
        let text = [ROOT, NFS_ROOT, NFS4, NFS4_FLOCK].join("\n");
        let mounts = parse(&text);
        // Two mounts on /nfs/kloigos: the later one is on top.
        let m = containing(&mounts, Path::new("/nfs/kloigos/nodes/n1")).unwrap();
        assert_eq!(m.option("local_lock="), Some("local_lock=flock"));
        // /nfs/kloigos2 is not under /nfs/kloigos.
        let m = containing(&mounts, Path::new("/nfs/kloigos2/nodes")).unwrap();
        assert_eq!(m.fstype, "tmpfs");
        assert_eq!(
            containing(&mounts, Path::new("/srv")).unwrap().fstype,
            "ext4"
        );
        assert_eq!(containing(&mounts[1..], Path::new("/srv")), None);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let line = "80 25 0:70 / /mnt/my\\040share rw - nfs4 fs1:/x rw,vers=4.2,local_lock=none";
        let m = parse_line(line).unwrap();
        assert_eq!(m.point, Path::new("/mnt/my share"));
        assert_eq!(unescape("a\\134b\\01"), Path::new("a\\b\\01"));
    }

    #[test]
    fn this_process_finds_the_mount_of_a_real_directory() {
        let t = tempfile::tempdir().unwrap();
        let (m, locking) = locking_of(t.path()).unwrap();
        assert!(t.path().canonicalize().unwrap().starts_with(&m.point));
        assert!(locking.is_safe(), "{locking}");
        check_shared_locking(t.path()).unwrap();
        let e = locking_of(&t.path().join("absent")).unwrap_err();
        assert_eq!(e.errno(), Some(nix::libc::ENOENT));
    }
}
