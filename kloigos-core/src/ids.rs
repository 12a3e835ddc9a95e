//! User and group ids as their own types, so that a uid cannot be passed
//! where a gid (or a count, or a CPU number) is meant, and "root" is a
//! name rather than a 0.
//!
//! Every `u32` but `u32::MAX` is a valid id: that one is `(uid_t)-1`, which
//! the set*id calls read as "leave unchanged", never an account. In files
//! an id is written as its bare number, as before these types.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

fn check_id(what: &'static str, raw: u32) -> Result<u32> {
    if raw == u32::MAX {
        return Err(Error::invalid(
            what,
            &raw.to_string(),
            "4294967295 is (uid_t)-1, which means \"unchanged\" to the kernel, never an account; use the account's real id",
        ));
    }
    Ok(raw)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u32);

        impl $name {
            /// Root's id.
            pub const ROOT: $name = $name(0);

            /// Checks `raw` (not `u32::MAX`) and wraps it.
            pub fn new(raw: u32) -> Result<$name> {
                check_id($what, raw).map($name)
            }

            /// The id as the kernel and the files write it.
            pub fn as_raw(self) -> u32 {
                self.0
            }

            /// Whether this is root's id.
            pub fn is_root(self) -> bool {
                self == $name::ROOT
            }
        }

        // An id reads as its number in every message, `{:?}` of a list
        // of them included, as the raw u32s it replaced did.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<$name> {
                let raw = s.parse::<u32>().map_err(|_| {
                    Error::invalid($what, &crate::printable::escape(s), "use a whole number")
                })?;
                $name::new(raw)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_u32(self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<$name, D::Error> {
                $name::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A user id.
    Uid, "uid"
);
id_type!(
    /// A group id.
    Gid, "gid"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_numbers_in_files_and_minus_one_is_refused() {
        let u = Uid::new(1001).unwrap();
        assert_eq!(serde_json::to_string(&u).unwrap(), "1001");
        assert_eq!(serde_json::from_str::<Uid>("1001").unwrap(), u);
        assert_eq!(serde_json::from_str::<Option<Gid>>("null").unwrap(), None);
        assert!(serde_json::from_str::<Uid>("4294967295").is_err());
        assert!(serde_json::from_str::<Uid>("-1").is_err());
        assert!(serde_json::from_str::<Uid>("\"1001\"").is_err());
        assert!(Gid::new(u32::MAX).is_err());
        assert_eq!("990".parse::<Uid>().unwrap().as_raw(), 990);
        assert!("x".parse::<Uid>().is_err());
        assert!(Uid::ROOT.is_root() && !u.is_root());
        assert_eq!(u.to_string(), "1001");
    }
}
