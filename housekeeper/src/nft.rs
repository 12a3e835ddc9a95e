//! The `inet kloigos` nftables table: loaded whole with `nft -f` only when
//! it differs from what is live.
//!
//! "What is live" is known without running `nft`: the housekeeper records
//! the file it loaded together with the kernel's ruleset generation number
//! (read over netlink, NFT_MSG_GETGEN), the boot and the network namespace.
//! While the generation has not moved, the table still holds that file; when
//! anything changed the ruleset (another table included), the table is
//! reloaded, which is atomic and idempotent. An idle pass runs no program.

use std::os::fd::AsRawFd;

use kloigos_core::enforce::NftSeen;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use nix::sys::time::TimeVal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the last pass left in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRecord {
    /// Boot the record is from.
    pub boot_id: String,
    /// Network namespace (inode of /proc/self/ns/net).
    pub netns: u64,
    /// Ruleset generation right after the load.
    pub generation: u32,
    /// The file loaded; `None` when the table was removed.
    pub loaded: Option<String>,
}

/// Where this process runs, and the ruleset generation there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Here {
    /// Boot id.
    pub boot_id: String,
    /// Network namespace inode.
    pub netns: u64,
    /// Current generation.
    pub generation: u32,
}

impl Here {
    /// Reads boot, namespace and generation.
    pub fn now() -> Result<Here> {
        use std::os::unix::fs::MetadataExt;
        let netns = std::fs::metadata("/proc/self/ns/net")
            .map_err(|e| Error::io("/proc/self/ns/net", e))?
            .ino();
        Ok(Here {
            boot_id: crate::procfs::boot_id(),
            netns,
            generation: generation()?,
        })
    }

    /// What the table holds, judged from the last pass's record.
    pub fn seen(&self, record: Option<&NftRecord>) -> NftSeen {
        match record {
            Some(r)
                if r.boot_id == self.boot_id
                    && r.netns == self.netns
                    && r.generation == self.generation =>
            {
                match &r.loaded {
                    Some(text) => NftSeen::Loaded(text.clone()),
                    None => NftSeen::Absent,
                }
            }
            _ => NftSeen::Unknown,
        }
    }
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;

/// The nftables ruleset generation of this network namespace.
pub fn generation() -> Result<u32> {
    let err = |msg: String| Error::io("netlink NFT_MSG_GETGEN", std::io::Error::other(msg));
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| err(format!("socket: {e}")))?;
    // The kernel answers at once; the bound is for the day it does not.
    socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &TimeVal::new(2, 0))
        .map_err(|e| err(format!("setsockopt SO_RCVTIMEO: {e}")))?;
    // nlmsghdr (16 bytes) + nfgenmsg (4 bytes: family, version, res_id).
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    socket::send(fd.as_raw_fd(), &req, MsgFlags::empty()).map_err(|e| err(format!("send: {e}")))?;
    let mut buf = [0u8; 1024];
    let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| err(format!("recv: {e}")))?;
    parse_generation(&buf[..n]).map_err(err)
}

fn parse_generation(msg: &[u8]) -> std::result::Result<u32, String> {
    let u16_at = |i: usize| msg.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let ty = u16_at(4).ok_or("short reply")?;
    if ty == NLMSG_ERROR {
        let code = msg
            .get(16..20)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        return Err(format!(
            "kernel refused: {}",
            std::io::Error::from_raw_os_error(-code)
        ));
    }
    if ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(format!("unexpected reply type {ty}"));
    }
    // Attributes follow nlmsghdr (16) and nfgenmsg (4), each 4-aligned.
    let mut i = 20;
    while let (Some(len), Some(kind)) = (u16_at(i), u16_at(i + 2)) {
        let len = usize::from(len);
        if len < 4 {
            break;
        }
        if kind & 0x3fff == NFTA_GEN_ID {
            let b = msg.get(i + 4..i + 8).ok_or("short attribute")?;
            return Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        }
        i += (len + 3) & !3;
    }
    Err("no generation id in the reply".into())
}

/// Loads `file` with `nft -f -`: one transaction, all or nothing.
pub fn load(file: &str) -> Result<()> {
    crate::sys::run("nft", &["-f", "-"], Some(file.as_bytes())).map(|_| ())
}

/// A line diff for `--dry-run`: lines only in `old` with `-`, only in `new` with `+`.
pub fn diff(old: Option<&str>, new: &str) -> String {
    let old_lines: Vec<&str> = old.map(|o| o.lines().collect()).unwrap_or_default();
    let new_lines: Vec<&str> = new.lines().collect();
    let mut out = String::new();
    for l in &old_lines {
        if !new_lines.contains(l) {
            out.push_str(&format!("  - {l}\n"));
        }
    }
    for l in &new_lines {
        if !old_lines.contains(l) {
            out.push_str(&format!("  + {l}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_reply_is_parsed() {
        let mut m = vec![0u8; 20];
        m[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        m.extend_from_slice(&77u32.to_be_bytes());
        assert_eq!(parse_generation(&m), Ok(77));
        let mut e = vec![0u8; 20];
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(parse_generation(&e).unwrap_err().contains("refused"));
    }

    #[test]
    fn a_record_counts_only_for_the_same_boot_namespace_and_generation() {
        let here = Here {
            boot_id: "b".into(),
            netns: 7,
            generation: 3,
        };
        let rec = NftRecord {
            boot_id: "b".into(),
            netns: 7,
            generation: 3,
            loaded: Some("x".into()),
        };
        assert_eq!(here.seen(Some(&rec)), NftSeen::Loaded("x".into()));
        assert_eq!(
            here.seen(Some(&NftRecord {
                loaded: None,
                ..rec.clone()
            })),
            NftSeen::Absent
        );
        assert_eq!(
            here.seen(Some(&NftRecord {
                generation: 4,
                ..rec.clone()
            })),
            NftSeen::Unknown
        );
        assert_eq!(
            here.seen(Some(&NftRecord {
                netns: 8,
                ..rec.clone()
            })),
            NftSeen::Unknown
        );
        assert_eq!(here.seen(None), NftSeen::Unknown);
    }

    #[test]
    fn diff_shows_changes() {
        assert_eq!(diff(Some("a\nb\n"), "a\nc\n"), "  - b\n  + c\n");
        assert_eq!(diff(None, "a\n"), "  + a\n");
    }
}
