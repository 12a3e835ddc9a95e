//! Who may do what: logins (the PAM decision, also shown by `check-login`)
//! and actions on bookings and nodes.

use jiff::Timestamp;

use crate::booking::Booking;
use crate::error::{Error, Result};
use crate::names::UserName;
use crate::policy::Policy;
use crate::state::NodeState;
use crate::users::Account;

/// The outcome of a login check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Not kloigos' business (unknown user, system account, not a node): PAM_IGNORE.
    Ignore(String),
    /// Let in: PAM_SUCCESS.
    Allow(String),
    /// Keep out: PAM_PERM_DENIED, with the message for the user.
    Deny(String),
}

impl Login {
    /// The reason, for logs and `check-login`.
    pub fn reason(&self) -> &str {
        match self {
            Login::Ignore(r) | Login::Allow(r) | Login::Deny(r) => r,
        }
    }
}

/// Whether `who` is an admin: root, a listed admin, or in the admin group.
pub fn is_admin(policy: &Policy, who: &Account) -> bool {
    who.uid == 0
        || policy.admins.contains(&who.name)
        || policy
            .admin_group
            .as_ref()
            .is_some_and(|g| who.in_group(g.as_str()))
}

/// The part of the login decision that needs no node state: system accounts
/// are ignored; root, bypass users and admins are let in. `None`: the
/// booking decides. PAM calls this before touching the shared tree, so an
/// admin gets in while NFS is down.
pub fn login_without_state(policy: &Policy, user: &Account) -> Option<Login> {
    if user.uid == 0 {
        return Some(Login::Allow("root is never gated".into()));
    }
    if user.uid < policy.min_uid {
        return Some(Login::Ignore(format!(
            "uid {} is below min_uid {}: a system account, not managed",
            user.uid, policy.min_uid
        )));
    }
    if policy.bypass_users.contains(&user.name) {
        return Some(Login::Allow(format!("{} is a bypass user", user.name)));
    }
    if is_admin(policy, user) {
        return Some(Login::Allow(format!("{} is a cluster admin", user.name)));
    }
    None
}

/// The full login decision for `user` on the node whose state is `state` at `now`.
pub fn decide_login(policy: &Policy, user: &Account, state: &NodeState, now: Timestamp) -> Login {
    if let Some(d) = login_without_state(policy, user) {
        return d;
    }
    let node = &state.node.name;
    let mine = |b: &&Booking| b.user == user.name && b.uid == user.uid;
    if let Some(b) = state.active(now).find(mine) {
        return Login::Allow(format!("booking {} holds until {}", b.id, b.end));
    }
    if let Some(b) = state.bookings.iter().filter(mine).find(|b| b.start > now) {
        return Login::Deny(format!(
            "{}'s booking {} on {node} starts at {}; log in then",
            user.name, b.id, b.start
        ));
    }
    Login::Deny(format!(
        "no booking for {} on {node} — book with: kloigos alloc -w {node}",
        user.name
    ))
}

/// Checks that `caller` may act on bookings of `owner` (themselves, or any as admin).
pub fn may_act_for(policy: &Policy, caller: &Account, owner: &UserName) -> Result<()> {
    if &caller.name == owner || is_admin(policy, caller) {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{} may act only on their own bookings; {owner}'s belong to {owner} (admins: root, the `admins` list or the admin group)",
        caller.name
    )))
}

/// Checks that `caller` may book at all (the optional booking group).
pub fn may_book(policy: &Policy, caller: &Account) -> Result<()> {
    match &policy.booking_group {
        Some(g) if !caller.in_group(g.as_str()) && !is_admin(policy, caller) => {
            Err(Error::Refused(format!(
                "booking is limited to members of group '{g}'; ask an admin to add {} to it",
                caller.name
            )))
        }
        _ => Ok(()),
    }
}

/// Checks that `caller` is an admin, for `admin` commands.
pub fn require_admin(policy: &Policy, caller: &Account, what: &str) -> Result<()> {
    if is_admin(policy, caller) {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "`{what}` needs an admin (root, a user listed in cluster.json `admins`, or a member of its `admin_group`); {} is none",
        caller.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuset::CpuSet;
    use crate::names::NodeName;
    use crate::node::NodeSpec;
    use crate::state::{Request, Size};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn setup() -> (Policy, NodeState) {
        let policy = Policy {
            bypass_users: vec![UserName::new("ops").unwrap()],
            admin_group: Some(UserName::new("wheel").unwrap()),
            ..Policy::default()
        };
        let mut st = NodeState::new(NodeSpec::new(
            NodeName::new("node3").unwrap(),
            CpuSet::parse("0-3").unwrap(),
        ));
        st.node.unit_cpus = Some(2);
        let alice = UserName::new("alice").unwrap();
        for (start, end) in [
            ("2026-11-23T10:00:00Z", "2026-11-23T12:00:00Z"),
            ("2026-11-24T10:00:00Z", "2026-11-24T12:00:00Z"),
        ] {
            let r = Request {
                user: alice.clone(),
                uid: 1001,
                created_by: alice.clone(),
                size: Size::Units(1),
                start: ts(start),
                end: ts(end),
                note: Default::default(),
                held_elsewhere: 0,
            };
            st.book(&r, &policy, ts("2026-11-23T09:00:00Z"), &[])
                .unwrap();
        }
        (policy, st)
    }

    #[test]
    fn login_decisions() {
        let (p, st) = setup();
        let alice = Account::new("alice", 1001, &["alice"]).unwrap();
        let bob = Account::new("bob", 1002, &["bob"]).unwrap();
        let now = ts("2026-11-23T11:00:00Z");
        assert!(
            matches!(decide_login(&p, &alice, &st, now), Login::Allow(r) if r.contains("node3:1"))
        );
        let d = decide_login(&p, &bob, &st, now);
        assert_eq!(
            d,
            Login::Deny("no booking for bob on node3 — book with: kloigos alloc -w node3".into())
        );
        // Between the two bookings: denied, told when the next one starts.
        let d = decide_login(&p, &alice, &st, ts("2026-11-23T13:00:00Z"));
        assert!(
            matches!(&d, Login::Deny(r) if r.contains("starts at 2026-11-24T10:00:00Z")),
            "{d:?}"
        );
        // Expired.
        assert!(matches!(
            decide_login(&p, &alice, &st, ts("2026-11-25T00:00:00Z")),
            Login::Deny(_)
        ));
        // Same name, other uid: not the booking's holder.
        let impostor = Account::new("alice", 1500, &[]).unwrap();
        assert!(matches!(
            decide_login(&p, &impostor, &st, now),
            Login::Deny(_)
        ));
    }

    #[test]
    fn privileged_and_system_accounts_skip_the_state() {
        let (p, _) = setup();
        let sys = Account::new("daemon", 2, &[]).unwrap();
        assert!(matches!(
            login_without_state(&p, &sys),
            Some(Login::Ignore(_))
        ));
        let root = Account::new("root", 0, &[]).unwrap();
        assert!(matches!(
            login_without_state(&p, &root),
            Some(Login::Allow(_))
        ));
        let ops = Account::new("ops", 1100, &[]).unwrap();
        assert!(matches!(
            login_without_state(&p, &ops),
            Some(Login::Allow(_))
        ));
        let adm = Account::new("carol", 1200, &["carol", "wheel"]).unwrap();
        assert!(matches!(
            login_without_state(&p, &adm),
            Some(Login::Allow(_))
        ));
        let bob = Account::new("bob", 1002, &["bob"]).unwrap();
        assert_eq!(login_without_state(&p, &bob), None);
    }

    #[test]
    fn authorization_names_the_rule() {
        let (p, _) = setup();
        let bob = Account::new("bob", 1002, &["bob"]).unwrap();
        let alice = UserName::new("alice").unwrap();
        let e = may_act_for(&p, &bob, &alice).unwrap_err().to_string();
        assert!(e.contains("only on their own bookings"), "{e}");
        let adm = Account::new("carol", 1200, &["wheel"]).unwrap();
        may_act_for(&p, &adm, &alice).unwrap();
        assert!(require_admin(&p, &bob, "admin drain")
            .unwrap_err()
            .to_string()
            .contains("needs an admin"));
        let gated = Policy {
            booking_group: Some(UserName::new("gpu").unwrap()),
            ..p
        };
        assert!(may_book(&gated, &bob)
            .unwrap_err()
            .to_string()
            .contains("group 'gpu'"));
    }
}
