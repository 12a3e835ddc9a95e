//! The GPU fence: which GPU device nodes each user's processes may open.
//! A managed user with processes on the node may open the device node of
//! each GPU they hold by an active booking, and none of the others; the
//! driver's control nodes (`nvidiactl`, `nvidia-uvm`, `nvidia-modeset`,
//! `nvidia-caps/*`) stay open to everyone, as does every other device: only
//! the listed GPU minors are ever denied (the cgroup keeps its open policy,
//! so `/dev/fuse`, `/dev/kvm` and the rest keep working).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use crate::enforce::{ProcOwner, Rules, MAX_MANAGED_UID};
use crate::facts::Gpu;
use crate::state::NodeState;

/// The character-device major of NVIDIA GPUs (`/dev/nvidiaN`, minor N).
pub const NVIDIA_MAJOR: u32 = 195;

/// One user's device rules: GPU minors to open and to shut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRules {
    /// Minors of the GPUs the user holds.
    pub allow: Vec<u32>,
    /// Minors of every other GPU of the node.
    pub deny: Vec<u32>,
}

impl DeviceRules {
    /// The lines for the v1 `devices.allow` and `devices.deny` files, in
    /// the order to write them (shut first, then open).
    pub fn v1_lines(&self) -> (Vec<String>, Vec<String>) {
        let line = |m: &u32| format!("c {NVIDIA_MAJOR}:{m} rwm");
        (
            self.deny.iter().map(line).collect(),
            self.allow.iter().map(line).collect(),
        )
    }
}

/// Whether the housekeeper manages `owner`'s processes at all (the same
/// accounts it would end: not root, not system accounts, not the service
/// account, not a bypass user).
pub fn is_managed(rules: &Rules, owner: &ProcOwner) -> bool {
    let uid = owner.uid;
    uid != 0
        && uid >= rules.min_uid
        && uid <= MAX_MANAGED_UID
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
) -> BTreeMap<u32, DeviceRules> {
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
        let minors = |v: Vec<&Gpu>| {
            let mut m: Vec<u32> = v.iter().map(|g| g.minor).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        let allow = minors(allow);
        // A minor listed twice by a confused driver is shut, never opened.
        let deny = minors(deny);
        let allow = allow.into_iter().filter(|m| !deny.contains(m)).collect();
        out.insert(o.uid, DeviceRules { allow, deny });
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
    use crate::state::{Request, Size};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn gpu(index: u32, minor: u32) -> Gpu {
        Gpu {
            index,
            minor,
            uuid: None,
            name: String::new(),
            bus_id: format!("0000:0{index}:00.0"),
            numa_node: None,
            utilization: None,
            memory_used: None,
            memory_total: None,
        }
    }

    fn owner(uid: u32, name: &str) -> ProcOwner {
        ProcOwner {
            uid,
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
        let u = UserName::new("alice").unwrap();
        let req = Request {
            user: u.clone(),
            uid: 1001,
            created_by: u,
            size: Size::Units(2),
            start: now,
            end: ts("2026-11-23T11:00:00Z"),
            note: Default::default(),
            held_elsewhere: 0,
        };
        st.book(&req, &Policy::default(), now, &[]).unwrap();
        let policy = Policy {
            bypass_users: vec![UserName::new("ops").unwrap()],
            ..Policy::default()
        };
        let rules = Rules::new(&policy, Some(990), 60, None);
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
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), [1001, 1002]);
        assert_eq!(
            p[&1001],
            DeviceRules {
                allow: vec![4, 5],
                deny: vec![6, 7]
            }
        );
        assert_eq!(
            p[&1002],
            DeviceRules {
                allow: vec![],
                deny: vec![4, 5, 6, 7]
            }
        );
        let (deny, allow) = p[&1001].v1_lines();
        assert_eq!(deny, ["c 195:6 rwm", "c 195:7 rwm"]);
        assert_eq!(allow, ["c 195:4 rwm", "c 195:5 rwm"]);
        // Released: alice is shut out of all of them.
        st.release(
            &BookingId::parse("n1:1").unwrap(),
            ts("2026-11-23T10:30:00Z"),
        )
        .unwrap();
        let later = ts("2026-11-23T10:31:00Z");
        assert_eq!(
            plan(&rules, &st, later, &gpus, &owners)[&1001].allow,
            Vec::<u32>::new()
        );
        // A node without GPUs in its inventory fences nothing.
        assert!(plan(&rules, &st, now, &[], &owners).is_empty());
    }
}
