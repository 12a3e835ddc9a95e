//! Who may do what: logins (the PAM decision, also shown by `check-login`)
//! and actions on bookings and nodes.

use std::io::Read as _;
use std::path::Path;

use jiff::Timestamp;

use crate::booking::Booking;
use crate::error::{Error, Result};
use crate::ids::Uid;
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
    who.uid.is_root()
        || policy.admins.contains(&who.name)
        || policy
            .admin_group
            .as_ref()
            .is_some_and(|g| who.in_group(g.as_str()))
}

/// The `nobody` account's uid, never managed.
pub const NOBODY_UID: u32 = 65_534;

/// systemd's dynamic users (`DynamicUser=`), never managed.
pub const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61_184..=65_519;

/// Where subordinate uid ranges are listed.
pub const SUBUID_FILE: &str = "/etc/subuid";

/// Largest `/etc/subuid` read; a larger one is not believed.
const SUBUID_MAX: u64 = 1 << 20;

/// The subordinate uid ranges of `/etc/subuid` (rootless containers'
/// uids, which are never people), or why they could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubUids {
    /// `(first, count)` of each range.
    ranges: Vec<(u32, u32)>,
    /// Why the file could not be read; then no range is excluded, so every
    /// uid in the managed range is gated (failing closed).
    pub problem: Option<String>,
}

impl SubUids {
    /// Parses `name:first:count` lines; lines that do not parse are skipped
    /// (their uids stay managed).
    pub fn parse(text: &str) -> SubUids {
        let ranges = text
            .lines()
            .filter_map(|l| {
                let mut f = l.trim().split(':');
                let (_, first, count) = (f.next()?, f.next()?, f.next()?);
                Some((first.parse().ok()?, count.parse().ok()?))
            })
            .collect();
        SubUids {
            ranges,
            problem: None,
        }
    }

    /// Reads `path` (at most 1 MiB); a missing file lists no range.
    pub fn read(path: &Path) -> SubUids {
        let unreadable = |why: String| SubUids {
            ranges: Vec::new(),
            problem: Some(format!(
                "{}: {why}; its subordinate uids are gated like any other",
                path.display()
            )),
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return SubUids::default(),
            Err(e) => return unreadable(e.to_string()),
        };
        let mut text = String::new();
        match file.take(SUBUID_MAX + 1).read_to_string(&mut text) {
            Ok(n) if n as u64 > SUBUID_MAX => unreadable(format!("larger than {SUBUID_MAX} bytes")),
            Ok(_) => SubUids::parse(&text),
            Err(e) => unreadable(e.to_string()),
        }
    }

    /// Whether `uid` lies in a subordinate range.
    pub fn contains(&self, uid: Uid) -> bool {
        let uid = uid.as_raw();
        self.ranges.iter().any(|&(first, count)| {
            uid >= first && u64::from(uid) < u64::from(first) + u64::from(count)
        })
    }
}

/// Why `uid` is not a managed account, or `None` when it is: managed means
/// `min_uid ..= max_uid`, minus `nobody`, systemd's dynamic users and the
/// subordinate ranges. The one rule of the login gate, `check-login` and the
/// housekeeper. Root (uid 0) is below every `min_uid` kloigos accepts.
pub fn unmanaged(policy: &Policy, sub: &SubUids, uid: Uid) -> Option<String> {
    unmanaged_in(policy.min_uid, policy.max_uid, sub, uid)
}

/// [`unmanaged`] with the policy's bounds given apart.
pub fn unmanaged_in(min_uid: Uid, max_uid: Option<Uid>, sub: &SubUids, uid: Uid) -> Option<String> {
    if uid < min_uid {
        return Some(format!(
            "uid {uid} is below min_uid {min_uid}: a system account, not managed"
        ));
    }
    if let Some(max) = max_uid.filter(|m| uid > *m) {
        return Some(format!("uid {uid} is above max_uid {max}: not managed"));
    }
    if uid.as_raw() == NOBODY_UID {
        return Some(format!("uid {uid} is nobody: not managed"));
    }
    if DYNAMIC_UIDS.contains(&uid.as_raw()) {
        return Some(format!(
            "uid {uid} is one of systemd's dynamic users: not managed"
        ));
    }
    if sub.contains(uid) {
        return Some(format!(
            "uid {uid} is a subordinate uid ({SUBUID_FILE}): not managed"
        ));
    }
    None
}

/// The part of the login decision that needs no node state: accounts
/// outside the managed range ([`unmanaged`]) are ignored; root, bypass
/// users and admins are let in. `None`: the booking decides.
pub fn login_without_state(policy: &Policy, sub: &SubUids, user: &Account) -> Option<Login> {
    if user.uid.is_root() {
        return Some(Login::Allow("root is never gated".into()));
    }
    if let Some(why) = unmanaged(policy, sub, user.uid) {
        return Some(Login::Ignore(why));
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
pub fn decide_login(
    policy: &Policy,
    sub: &SubUids,
    user: &Account,
    state: &NodeState,
    now: Timestamp,
) -> Login {
    if let Some(d) = login_without_state(policy, sub, user) {
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
    use crate::names::GroupName;
    use crate::state::Size;
    use crate::testing::{gated_policy, node3_with_alice, request, ts, uid, BOOKED_AT};

    /// node3 in units of 2 CPUs, alice booked for one unit 10:00-12:00 on
    /// 2026-11-23 and again on 2026-11-24.
    fn setup() -> (Policy, NodeState) {
        let policy = gated_policy();
        let mut st = node3_with_alice(Some(2), Size::Units(1));
        let next_day = request(
            "alice",
            1001,
            Size::Units(1),
            ts("2026-11-24T10:00:00Z"),
            ts("2026-11-24T12:00:00Z"),
        );
        st.book(&next_day, &policy, ts(BOOKED_AT), &[]).unwrap();
        (policy, st)
    }

    #[test]
    fn login_decisions() {
        let (p, st) = setup();
        let alice = Account::new("alice", 1001, &["alice"]).unwrap();
        let bob = Account::new("bob", 1002, &["bob"]).unwrap();
        let now = ts("2026-11-23T11:00:00Z");
        assert!(
            matches!(decide_login(&p, &SubUids::default(), &alice, &st, now), Login::Allow(r) if r.contains("node3:1"))
        );
        let d = decide_login(&p, &SubUids::default(), &bob, &st, now);
        assert_eq!(
            d,
            Login::Deny("no booking for bob on node3 — book with: kloigos alloc -w node3".into())
        );
        // Between the two bookings: denied, told when the next one starts.
        let d = decide_login(
            &p,
            &SubUids::default(),
            &alice,
            &st,
            ts("2026-11-23T13:00:00Z"),
        );
        assert!(
            matches!(&d, Login::Deny(r) if r.contains("starts at 2026-11-24T10:00:00Z")),
            "{d:?}"
        );
        // Expired.
        assert!(matches!(
            decide_login(
                &p,
                &SubUids::default(),
                &alice,
                &st,
                ts("2026-11-25T00:00:00Z")
            ),
            Login::Deny(_)
        ));
        // Same name, other uid: not the booking's holder.
        let impostor = Account::new("alice", 1500, &[]).unwrap();
        assert!(matches!(
            decide_login(&p, &SubUids::default(), &impostor, &st, now),
            Login::Deny(_)
        ));
    }

    #[test]
    fn privileged_and_system_accounts_skip_the_state() {
        let (p, _) = setup();
        let sys = Account::new("daemon", 2, &[]).unwrap();
        assert!(matches!(
            login_without_state(&p, &SubUids::default(), &sys),
            Some(Login::Ignore(_))
        ));
        let root = Account::new("root", 0, &[]).unwrap();
        assert!(matches!(
            login_without_state(&p, &SubUids::default(), &root),
            Some(Login::Allow(_))
        ));
        let ops = Account::new("ops", 1100, &[]).unwrap();
        assert!(matches!(
            login_without_state(&p, &SubUids::default(), &ops),
            Some(Login::Allow(_))
        ));
        let adm = Account::new("carol", 1200, &["carol", "wheel"]).unwrap();
        assert!(matches!(
            login_without_state(&p, &SubUids::default(), &adm),
            Some(Login::Allow(_))
        ));
        let bob = Account::new("bob", 1002, &["bob"]).unwrap();
        assert_eq!(login_without_state(&p, &SubUids::default(), &bob), None);
    }

    #[test]
    fn one_uid_rule_with_max_uid_nobody_dynamic_and_subordinate_ranges() {
        let none = SubUids::default();
        let mut p = Policy::default();
        // Unbounded by default: LDAP/AD uids far above 60000 are managed.
        // u32::MAX - 1 is the highest uid there is (see `Uid`).
        for raw in [1000, 59_999, 60_000, 70_000, 200_000, u32::MAX - 1] {
            assert_eq!(unmanaged(&p, &none, uid(raw)), None, "{raw}");
        }
        for raw in [0, 999, NOBODY_UID, 61_184, 65_519] {
            assert!(unmanaged(&p, &none, uid(raw)).is_some(), "{raw}");
        }
        assert_eq!(unmanaged(&p, &none, uid(61_183)), None);
        assert_eq!(unmanaged(&p, &none, uid(65_520)), None);
        p.max_uid = Some(uid(70_000));
        assert_eq!(unmanaged(&p, &none, uid(70_000)), None);
        assert!(unmanaged(&p, &none, uid(70_001))
            .unwrap()
            .contains("max_uid 70000"));
        p.max_uid = None;
        let sub = SubUids::parse("alice:100000:65536\nbad line\nbob:x:1\n");
        assert!(unmanaged(&p, &sub, uid(100_000))
            .unwrap()
            .contains("subordinate"));
        assert!(unmanaged(&p, &sub, uid(165_535)).is_some());
        assert_eq!(unmanaged(&p, &sub, uid(165_536)), None);
        assert_eq!(unmanaged(&p, &sub, uid(99_999)), None);
        // A user at 200000 is gated: a stranger is denied through the state.
        let far = Account::new("far", 200_000, &[]).unwrap();
        assert_eq!(login_without_state(&p, &sub, &far), None);
    }

    #[test]
    fn subuid_reads_are_bounded_and_fail_closed() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("subuid");
        assert_eq!(SubUids::read(&path), SubUids::default());
        std::fs::write(&path, "u:300000:10\n").unwrap();
        assert!(SubUids::read(&path).contains(uid(300_005)));
        std::fs::write(&path, vec![b'#'; (SUBUID_MAX + 1) as usize]).unwrap();
        let big = SubUids::read(&path);
        assert!(
            big.problem.as_deref().unwrap().contains("larger than"),
            "{big:?}"
        );
        // A directory cannot be read: nothing excluded, and said why.
        let dir = SubUids::read(t.path());
        assert!(
            dir.problem.is_some() && !dir.contains(uid(300_005)),
            "{dir:?}"
        );
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
            booking_group: Some(GroupName::new("gpu").unwrap()),
            ..p
        };
        assert!(may_book(&gated, &bob)
            .unwrap_err()
            .to_string()
            .contains("group 'gpu'"));
    }
}
