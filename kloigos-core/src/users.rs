//! Accounts as the decisions see them, looked up through nix (never the
//! `users` crate).

use nix::unistd::{Gid, Group, Uid, User};

use crate::error::{Error, Result};
use crate::names::UserName;

/// A user account: name, uid, primary gid and the names of all its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: UserName,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Names of the primary and supplementary groups.
    pub groups: Vec<String>,
}

impl Account {
    /// Builds an account from plain parts (tests, and callers that looked it up elsewhere).
    pub fn new(name: &str, uid: u32, groups: &[&str]) -> Result<Account> {
        Ok(Account {
            name: UserName::new(name)?,
            uid,
            gid: uid,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    /// Whether the account is in group `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

fn from_user(u: User) -> Result<Account> {
    let name = UserName::new(&u.name)?;
    let mut groups = Vec::new();
    if let Ok(Some(g)) = Group::from_gid(u.gid) {
        groups.push(g.name);
    }
    let cname = std::ffi::CString::new(u.name.clone())
        .map_err(|_| Error::invalid("user name", &u.name, "names cannot contain NUL"))?;
    if let Ok(gids) = nix::unistd::getgrouplist(&cname, u.gid) {
        for gid in gids {
            if let Ok(Some(g)) = Group::from_gid(gid) {
                if !groups.contains(&g.name) {
                    groups.push(g.name);
                }
            }
        }
    }
    Ok(Account {
        name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups,
    })
}

/// Looks up an account by name; `Ok(None)` when it does not exist.
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

/// Looks up an account by uid; `Ok(None)` when it does not exist.
pub fn by_uid(uid: u32) -> Result<Option<Account>> {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => from_user(u).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Storage {
            path: "/etc/passwd".into(),
            msg: format!("cannot look up uid {uid}: {e}"),
        }),
    }
}

/// The gid of group `name`, if it exists.
pub fn group_gid(name: &str) -> Option<u32> {
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// The name of group `gid`, if it exists.
pub fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}
