//! Fixtures the unit tests of several modules share, so that a test reads
//! as the case it checks and a change to a format touches one builder.

use jiff::Timestamp;

use crate::cpuset::CpuSet;
use crate::ids::Uid;
use crate::names::{GroupName, NodeName, UserName};
use crate::node::NodeSpec;
use crate::policy::Policy;
use crate::state::{NodeState, Request, Size};

/// A timestamp from its RFC 3339 text; a typo fails the test at once.
pub(crate) fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A uid from a literal.
pub(crate) fn uid(raw: u32) -> Uid {
    Uid::new(raw).unwrap()
}

/// A request by `user` for themselves, without a note or bookings elsewhere.
pub(crate) fn request(
    user: &str,
    raw_uid: u32,
    size: Size,
    start: Timestamp,
    end: Timestamp,
) -> Request {
    let name = UserName::new(user).unwrap();
    Request {
        user: name.clone(),
        uid: uid(raw_uid),
        created_by: name,
        size,
        start,
        end,
        note: Default::default(),
        held_elsewhere: 0,
    }
}

/// The policy of the login tests: `ops` bypasses bookings, group `wheel`
/// administers.
pub(crate) fn gated_policy() -> Policy {
    Policy {
        bypass_users: vec![UserName::new("ops").unwrap()],
        admin_group: Some(GroupName::new("wheel").unwrap()),
        ..Policy::default()
    }
}

/// The node of the login tests.
pub(crate) fn node3() -> NodeName {
    NodeName::new("node3").unwrap()
}

/// When the login tests' bookings were made.
pub(crate) const BOOKED_AT: &str = "2026-11-23T09:00:00Z";

/// node3 (CPUs 0-3, in units of `unit_cpus`) with alice (uid 1001) booked
/// for `size` from 10:00 to 12:00 on 2026-11-23, under [`gated_policy`].
pub(crate) fn node3_with_alice(unit_cpus: Option<u32>, size: Size) -> NodeState {
    let mut st = NodeState::new(NodeSpec::new(node3(), CpuSet::parse("0-3").unwrap()));
    st.node.unit_cpus = unit_cpus;
    let r = request(
        "alice",
        1001,
        size,
        ts("2026-11-23T10:00:00Z"),
        ts("2026-11-23T12:00:00Z"),
    );
    st.book(&r, &gated_policy(), ts(BOOKED_AT), &[]).unwrap();
    st
}
