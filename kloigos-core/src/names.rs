//! Validated names: nodes, users, groups, labels. A name that reaches a path or a
//! file has been through one of these types.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

fn check_name(what: &'static str, text: &str, max: usize, extra: &[char]) -> Result<()> {
    let mut chars = text.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(&c));
    if !first_ok || !rest_ok || text.len() > max {
        let hint = format!(
            "use 1 to {max} characters: letters, digits{}, starting with a letter or digit",
            extra.iter().map(|c| format!(", '{c}'")).collect::<String>()
        );
        return Err(Error::invalid(what, &crate::printable::escape(text), hint));
    }
    Ok(())
}

/// Longest account name accepted, in bytes.
pub const MAX_ACCOUNT_NAME: usize = 256;

/// The rule for account (user and group) names: what NSS back ends such as
/// SSSD hand out (`kuser@ad.example`, `_svc`, `DOMAIN.user`), minus what
/// could change the meaning of a line or a path: 1 to 256 bytes of
/// printable characters, no whitespace, `/` or `:`, no leading `-`, and not
/// `.` or `..`. Names never become paths (the files kloigos writes are
/// named by node, and cgroups by uid), which keeps the rule this wide.
fn check_account(what: &'static str, text: &str) -> Result<()> {
    let ok = !text.is_empty()
        && text.len() <= MAX_ACCOUNT_NAME
        && !text.starts_with('-')
        && text != "."
        && text != ".."
        && !text
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || crate::printable::is_control(c));
    if !ok {
        return Err(Error::invalid(
            what,
            &crate::printable::escape(text),
            format!(
                "use 1 to {MAX_ACCOUNT_NAME} bytes of printable characters without whitespace, '/' or ':', not starting with '-' and not '.' or '..'"
            ),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $extra:expr) => {
        name_type!($(#[$doc])* $name, $what, |what, text| check_name(what, text, $max, $extra));
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `text` and wraps it.
            pub fn new(text: &str) -> Result<Self> {
                let check: fn(&'static str, &str) -> Result<()> = $check;
                check($what, text)?;
                Ok(Self(text.to_string()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                crate::text::from_str(d, concat!("a ", $what), Self::new)
            }
        }
    };
}

name_type!(
    /// A node name: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`; safe as one path component.
    NodeName, "node name", 63, &['.', '_', '-']
);
name_type!(
    /// A user name as found in the passwd database (see `check_account`
    /// for the rule).
    UserName, "user name", check_account
);
name_type!(
    /// A group name as found in the group database (the rule of user names).
    GroupName, "group name", check_account
);
name_type!(
    /// A node label (`gpu`, `bigmem`) or partition name.
    Label, "label", 63, &['.', '_', '-']
);

impl NodeName {
    /// This host's short name (up to the first dot), as the default node name.
    pub fn from_hostname() -> Result<NodeName> {
        let host = nix::unistd::gethostname().map_err(|e| Error::Storage {
            path: "/proc/sys/kernel/hostname".into(),
            msg: format!("cannot read the host name: {e}"),
        })?;
        let host = host.to_string_lossy();
        let short = host.split('.').next().unwrap_or_default();
        NodeName::new(short).map_err(|_| {
            Error::invalid(
                "node name",
                short,
                "this host name cannot be a node name; set \"node\" in /etc/kloigos/config.json",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_that_could_escape_a_directory_are_refused() {
        for bad in [
            "", "..", ".", "../x", "a/b", "-x", ".hidden", "a\nb", "a b", "é", "a\0",
        ] {
            assert!(NodeName::new(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(NodeName::new(&"a".repeat(64)).is_err());
        for good in ["node3", "n", "gpu-01.lab", "A_1", &"a".repeat(63)] {
            assert_eq!(NodeName::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn account_names_take_what_nss_gives_but_nothing_that_splits_a_line_or_a_path() {
        for good in [
            "alice",
            "kuser@ad.test",
            "_svc",
            "DOMAIN.user",
            "a$",
            "Åsa",
            &"u".repeat(256),
        ] {
            assert_eq!(UserName::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            "-rf",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a\u{1b}[2J",
            "a\u{7f}",
            "a\u{85}",
            "a\u{202e}b",
            "a\u{a0}b",
            &"u".repeat(257),
        ] {
            assert!(UserName::new(bad).is_err(), "{bad:?} was accepted");
        }
        let e = UserName::new("x\u{1b}]0;t\u{7}").unwrap_err().to_string();
        assert!(!e.contains('\u{1b}') && e.contains("printable"), "{e}");
    }

    #[test]
    fn error_names_the_text_and_the_rule() {
        let e = NodeName::new("../etc").unwrap_err().to_string();
        assert!(e.contains("node name '../etc'"), "{e}");
        assert!(e.contains("letters, digits"), "{e}");
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<NodeName>("\"a/b\"").is_err());
        assert_eq!(
            serde_json::from_str::<UserName>("\"alice\"")
                .unwrap()
                .as_str(),
            "alice"
        );
    }
}
