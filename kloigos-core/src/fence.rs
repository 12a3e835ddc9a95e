//! The GPU fence: which GPU device nodes each user's processes may open.
//! A managed user with processes on the node may open the device node of
//! each GPU they hold by an active booking, and none of the others; the
//! driver's control nodes (`nvidiactl`, `nvidia-uvm`, `nvidia-modeset`,
//! `nvidia-caps/*`) stay open to everyone, as does every other device: only
//! the listed GPU minors are ever denied (the cgroup keeps its open policy,
//! so `/dev/fuse`, `/dev/kvm` and the rest keep working).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use crate::enforce::{ProcOwner, Rules};
use crate::facts::Gpu;
use crate::ids::Uid;
use crate::state::NodeState;

/// The character-device major of NVIDIA GPUs (`/dev/nvidiaN`, minor N).
pub const NVIDIA_MAJOR: u32 = 195;

/// A character device's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl DevNum {
    /// Splits a `st_rdev` as Linux encodes it (glibc's `gnu_dev_major/minor`).
    pub fn from_rdev(rdev: u64) -> DevNum {
        DevNum {
            major: (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32,
            minor: ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32,
        }
    }

    /// The GPU's device number.
    pub fn of(g: &Gpu) -> DevNum {
        DevNum {
            major: g.major,
            minor: g.minor,
        }
    }
}

/// One user's device rules: GPU device numbers to open and to shut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRules {
    /// The GPUs the user holds.
    pub allow: Vec<DevNum>,
    /// Every other GPU of the node.
    pub deny: Vec<DevNum>,
}

impl DeviceRules {
    /// The lines for the v1 `devices.allow` and `devices.deny` files, in
    /// the order to write them (shut first, then open).
    pub fn v1_lines(&self) -> (Vec<String>, Vec<String>) {
        let line = |d: &DevNum| format!("c {}:{} rwm", d.major, d.minor);
        (
            self.deny.iter().map(line).collect(),
            self.allow.iter().map(line).collect(),
        )
    }
}

/// Whether the housekeeper manages `owner`'s processes at all (the same
/// accounts it would end: the one uid rule of [`Rules::unmanaged`], not the
/// service account, not a bypass user).
pub fn is_managed(rules: &Rules, owner: &ProcOwner) -> bool {
    let uid = owner.uid;
    !uid.is_root()
        && rules.unmanaged(uid).is_none()
        && Some(uid) != rules.service_uid
        && !owner
            .user
            .as_ref()
            .is_some_and(|n| rules.bypass.contains(n))
}

/// The device rules of every managed user with processes at `now`, from
/// the node's active bookings and its GPU inventory. Empty when the node
/// has no GPUs in its inventory.
pub fn plan(
    rules: &Rules,
    state: &NodeState,
    now: Timestamp,
    gpus: &[Gpu],
    owners: &[ProcOwner],
) -> BTreeMap<Uid, DeviceRules> {
    let mut out = BTreeMap::new();
    if gpus.is_empty() {
        return out;
    }
    for o in owners
        .iter()
        .filter(|o| o.processes > 0 && is_managed(rules, o))
    {
        let held: BTreeSet<u32> = state
            .active(now)
            .filter(|b| b.uid == o.uid)
            .filter_map(|b| b.gpus.as_ref())
            .flat_map(|g| g.indices().iter().copied())
            .collect();
        let (allow, deny): (Vec<&Gpu>, Vec<&Gpu>) =
            gpus.iter().partition(|g| held.contains(&g.index));
        let numbers = |v: Vec<&Gpu>| {
            let mut m: Vec<DevNum> = v.into_iter().map(DevNum::of).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        let allow = numbers(allow);
        // A number listed twice by a confused driver is shut, never opened.
        let deny = numbers(deny);
        let allow = allow.into_iter().filter(|m| !deny.contains(m)).collect();
        out.insert(o.uid, DeviceRules { allow, deny });
    }
    out
}

/// A process seen holding a GPU device open: which one, and the process
/// (pid and start time, so a reused pid is never mistaken for it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// The process.
    pub pid: i32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start: u64,
    /// Its owner.
    pub uid: Uid,
    /// The device it holds.
    pub dev: DevNum,
}

impl Holder {
    /// The key a stray is remembered by between passes.
    pub fn key(&self) -> String {
        format!("{}:{}", self.pid, self.start)
    }
}

/// What to do about the holders of GPUs their users do not hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Strays {
    /// Seen for the first time: warn their users.
    pub warn: Vec<Holder>,
    /// Seen for `grace_s` or longer: end them.
    pub end: Vec<Holder>,
    /// When each stray still around was first seen (the next pass's memory).
    pub seen_next: BTreeMap<String, Timestamp>,
}

/// Decides about `holders` at `now`: a holder is a stray when its user's
/// rules deny the device it holds; a stray is warned when first seen and
/// ended once `grace_s` has passed since (at once with a grace of 0).
/// `seen` is the previous pass's memory.
pub fn strays(
    plan: &BTreeMap<Uid, DeviceRules>,
    holders: &[Holder],
    seen: &BTreeMap<String, Timestamp>,
    grace_s: u64,
    now: Timestamp,
) -> Strays {
    let mut out = Strays::default();
    for h in holders {
        if !plan.get(&h.uid).is_some_and(|r| r.deny.contains(&h.dev)) {
            continue;
        }
        let key = h.key();
        let first = match seen.get(&key) {
            Some(t) => *t,
            None => {
                out.warn.push(h.clone());
                now
            }
        };
        if now.as_second() - first.as_second() >= grace_s as i64 {
            out.end.push(h.clone());
        } else {
            out.seen_next.insert(key, first);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::booking::BookingId;
    use crate::cpuset::CpuSet;
    use crate::gpuset::GpuSet;
    use crate::names::{NodeName, UserName};
    use crate::node::NodeSpec;
    use crate::policy::Policy;
    use crate::state::Size;
    use crate::testing::{request, ts, uid};

    fn gpu(index: u32, minor: u32) -> Gpu {
        Gpu {
            index,
            major: NVIDIA_MAJOR,
            minor,
            uuid: None,
            name: String::new(),
            bus_id: format!("0000:0{index}:00.0"),
            numa_node: None,
            utilization: None,
            memory_used: None,
            memory_total: None,
            idle_since: None,
        }
    }

    fn owner(raw: u32, name: &str) -> ProcOwner {
        ProcOwner {
            uid: uid(raw),
            user: Some(UserName::new(name).unwrap()),
            processes: 1,
        }
    }

    #[test]
    fn holders_open_their_gpus_and_everyone_else_is_shut_out() {
        let mut spec = NodeSpec::new(NodeName::new("n1").unwrap(), CpuSet::parse("0-3").unwrap());
        spec.unit_cpus = Some(1);
        spec.gpus = Some(GpuSet::parse("0-3").unwrap());
        let mut st = NodeState::new(spec);
        let now = ts("2026-11-23T10:00:00Z");
        let req = request(
            "alice",
            1001,
            Size::Units(2),
            now,
            ts("2026-11-23T11:00:00Z"),
        );
        st.book(&req, &Policy::default(), now, &[]).unwrap();
        let policy = Policy {
            bypass_users: vec![UserName::new("ops").unwrap()],
            ..Policy::default()
        };
        let rules = Rules::new(&policy, Some(uid(990)), 60, None);
        // Minors need not follow indices.
        let gpus = [gpu(0, 4), gpu(1, 5), gpu(2, 6), gpu(3, 7)];
        let owners = [
            owner(1001, "alice"),
            owner(1002, "bob"),
            owner(0, "root"),
            owner(990, "kloigos"),
            owner(1003, "ops"),
            owner(500, "daemon"),
            ProcOwner {
                processes: 0,
                ..owner(1004, "gone")
            },
        ];
        let p = plan(&rules, &st, now, &gpus, &owners);
        assert_eq!(
            p.keys().copied().collect::<Vec<_>>(),
            [uid(1001), uid(1002)]
        );
        let d = |m: &[u32]| -> Vec<DevNum> {
            m.iter()
                .map(|&minor| DevNum {
                    major: NVIDIA_MAJOR,
                    minor,
                })
                .collect()
        };
        assert_eq!(
            p[&uid(1001)],
            DeviceRules {
                allow: d(&[4, 5]),
                deny: d(&[6, 7])
            }
        );
        assert_eq!(
            p[&uid(1002)],
            DeviceRules {
                allow: vec![],
                deny: d(&[4, 5, 6, 7])
            }
        );
        let (deny, allow) = p[&uid(1001)].v1_lines();
        assert_eq!(deny, ["c 195:6 rwm", "c 195:7 rwm"]);
        assert_eq!(allow, ["c 195:4 rwm", "c 195:5 rwm"]);
        // Released: alice is shut out of all of them.
        st.release(
            &BookingId::parse("n1:1").unwrap(),
            ts("2026-11-23T10:30:00Z"),
        )
        .unwrap();
        let later = ts("2026-11-23T10:31:00Z");
        assert!(plan(&rules, &st, later, &gpus, &owners)[&uid(1001)]
            .allow
            .is_empty());
        // A node without GPUs in its inventory fences nothing.
        assert!(plan(&rules, &st, now, &[], &owners).is_empty());
    }

    #[test]
    fn device_numbers_decode_as_the_kernel_encodes_them() {
        // makedev(195, 3), makedev(226, 128), makedev(259, 300000).
        assert_eq!(
            DevNum::from_rdev(0xc303),
            DevNum {
                major: 195,
                minor: 3
            }
        );
        assert_eq!(
            DevNum::from_rdev(0xe280),
            DevNum {
                major: 226,
                minor: 128
            }
        );
        let big = (300_000u64 & 0xff) | ((259u64 & 0xfff) << 8) | ((300_000u64 & !0xff) << 12);
        assert_eq!(
            DevNum::from_rdev(big),
            DevNum {
                major: 259,
                minor: 300_000
            }
        );
    }

    #[test]
    fn a_stray_is_warned_when_first_seen_and_ended_after_the_grace() {
        let gpu0 = DevNum {
            major: 195,
            minor: 0,
        };
        let gpu1 = DevNum {
            major: 195,
            minor: 1,
        };
        let plan: BTreeMap<Uid, DeviceRules> = [(
            uid(1001),
            DeviceRules {
                allow: vec![gpu0],
                deny: vec![gpu1],
            },
        )]
        .into();
        let h = |pid, dev| Holder {
            pid,
            start: 7,
            uid: uid(1001),
            dev,
        };
        // Its own GPU is no stray; another's is; an unmanaged uid is not judged.
        let holders = [
            h(10, gpu0),
            h(11, gpu1),
            Holder {
                uid: Uid::ROOT,
                ..h(12, gpu1)
            },
        ];
        let t0 = ts("2026-11-23T10:00:00Z");
        let s = strays(&plan, &holders, &BTreeMap::new(), 60, t0);
        assert_eq!(s.warn, [h(11, gpu1)]);
        assert!(s.end.is_empty());
        assert_eq!(s.seen_next.get("11:7"), Some(&t0));
        // Within the grace: kept, not warned again.
        let t1 = ts("2026-11-23T10:00:59Z");
        let s1 = strays(&plan, &holders, &s.seen_next, 60, t1);
        assert!(s1.warn.is_empty() && s1.end.is_empty());
        assert_eq!(s1.seen_next, s.seen_next);
        // After it: ended, and forgotten.
        let s2 = strays(
            &plan,
            &holders,
            &s1.seen_next,
            60,
            ts("2026-11-23T10:01:00Z"),
        );
        assert_eq!(s2.end, [h(11, gpu1)]);
        assert!(s2.seen_next.is_empty());
        // A pid reused by another process is a new stray; a grace of 0 ends at once.
        let reused = Holder {
            start: 8,
            ..h(11, gpu1)
        };
        let s3 = strays(&plan, std::slice::from_ref(&reused), &s.seen_next, 0, t1);
        assert_eq!(
            (s3.warn.clone(), s3.end.clone()),
            (vec![reused.clone()], vec![reused])
        );
    }
}
