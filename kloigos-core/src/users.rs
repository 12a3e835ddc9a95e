//! Accounts as the decisions see them, looked up through nix (never the
//! `users` crate).
//!
//! An account's groups are looked up only when first asked for
//! ([`Account::in_group`], [`Account::groups`]): most decisions (the PAM
//! gate of a cluster without an admin group, most CLI commands) never need
//! them, and the lookup reads the group database once per group.

use std::sync::OnceLock;

use nix::unistd::{Group, User};

use crate::error::{Error, Result};
use crate::ids::{Gid, Uid};
use crate::names::UserName;

/// A user account: name, uid, primary gid and the names of all its groups.
#[derive(Debug, Clone)]
pub struct Account {
    /// Login name.
    pub name: UserName,
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Names of the primary and supplementary groups, once looked up.
    groups: OnceLock<Vec<String>>,
}

impl Account {
    /// Builds an account from plain parts (tests, and callers that looked it up elsewhere).
    pub fn new(name: &str, uid: u32, groups: &[&str]) -> Result<Account> {
        Ok(Account {
            name: UserName::new(name)?,
            uid: Uid::new(uid)?,
            gid: Gid::new(uid)?,
            groups: OnceLock::from(groups.iter().map(|g| g.to_string()).collect::<Vec<_>>()),
        })
    }

    /// Names of the primary and supplementary groups (looked up in the
    /// group database on first use; a group that cannot be looked up is
    /// left out).
    pub fn groups(&self) -> &[String] {
        self.groups
            .get_or_init(|| lookup_groups(self.name.as_str(), self.gid))
    }

    /// Whether the account is in group `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups().iter().any(|g| g == group)
    }
}

impl PartialEq for Account {
    fn eq(&self, other: &Account) -> bool {
        self.name == other.name
            && self.uid == other.uid
            && self.gid == other.gid
            && self.groups() == other.groups()
    }
}

impl Eq for Account {}

/// The names of the groups of user `name` whose primary group is `gid`:
/// the primary group first, then the supplementary ones, no duplicates.
fn lookup_groups(name: &str, gid: Gid) -> Vec<String> {
    let gid = nix::unistd::Gid::from_raw(gid.as_raw());
    let mut groups = Vec::new();
    if let Ok(Some(g)) = Group::from_gid(gid) {
        groups.push(g.name);
    }
    // A user name never holds a NUL (UserName checks it); no NUL, no groups.
    let Ok(cname) = std::ffi::CString::new(name) else {
        return groups;
    };
    if let Ok(gids) = nix::unistd::getgrouplist(&cname, gid) {
        for gid in gids {
            if let Ok(Some(g)) = Group::from_gid(gid) {
                if !groups.contains(&g.name) {
                    groups.push(g.name);
                }
            }
        }
    }
    groups
}

fn from_user(u: User) -> Result<Account> {
    let name = UserName::new(&u.name)?;
    if u.name.contains('\0') {
        return Err(Error::invalid(
            "user name",
            &u.name,
            "names cannot contain NUL",
        ));
    }
    Ok(Account {
        name,
        uid: Uid::new(u.uid.as_raw())?,
        gid: Gid::new(u.gid.as_raw())?,
        groups: OnceLock::new(),
    })
}

/// Looks up an account by name; `Ok(None)` when it does not exist. Its
/// groups are looked up later, when first asked for.
pub fn by_name(name: &str) -> Result<Option<Account>> {
    match User::from_name(name) {
        Ok(Some(u)) => from_user(u).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Storage {
            path: "/etc/passwd".into(),
            msg: format!("cannot look up user '{name}': {e}"),
        }),
    }
}

/// Looks up an account by uid; `Ok(None)` when it does not exist. Its
/// groups are looked up later, when first asked for.
pub fn by_uid(uid: Uid) -> Result<Option<Account>> {
    match User::from_uid(nix::unistd::Uid::from_raw(uid.as_raw())) {
        Ok(Some(u)) => from_user(u).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Storage {
            path: "/etc/passwd".into(),
            msg: format!("cannot look up uid {uid}: {e}"),
        }),
    }
}

/// The gid of group `name`, if it exists.
pub fn group_gid(name: &str) -> Option<Gid> {
    Group::from_name(name)
        .ok()
        .flatten()
        .and_then(|g| Gid::new(g.gid.as_raw()).ok())
}

/// The name of group `gid`, if it exists.
pub fn group_name(gid: Gid) -> Option<String> {
    Group::from_gid(nix::unistd::Gid::from_raw(gid.as_raw()))
        .ok()
        .flatten()
        .map(|g| g.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_given_are_kept_and_compared() {
        let a = Account::new("alice", 1001, &["alice", "wheel"]).unwrap();
        assert!(a.in_group("wheel") && !a.in_group("gpu"));
        assert_eq!(a.groups(), ["alice", "wheel"]);
        assert_eq!(a.clone(), a);
        assert_ne!(a, Account::new("alice", 1001, &["alice"]).unwrap());
    }

    #[test]
    fn groups_are_looked_up_on_first_use_only() {
        let Some(root) = by_name("root").unwrap() else {
            return;
        };
        assert_eq!(root.groups.get(), None, "not looked up yet");
        let primary = group_name(root.gid);
        let groups = root.groups().to_vec();
        assert_eq!(groups.first(), primary.as_ref());
        assert_eq!(root.groups.get(), Some(&groups));
        assert!(primary.is_none_or(|g| root.in_group(&g)));
        // The same account, looked up again, compares equal.
        assert_eq!(by_name("root").unwrap(), Some(root));
    }
}
