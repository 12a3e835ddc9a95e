//! Cluster policy, the content of `<shared>/cluster.json`.

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::duration::Dur;
use crate::error::{Error, Result};
use crate::ids::Uid;
use crate::names::{GroupName, UserName};

/// The on-disk format version every kloigos file carries.
pub const FORMAT_VERSION: u32 = 1;

/// Cluster-wide rules: who administers, who is never gated, and the limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// File format version; see [`FORMAT_VERSION`].
    pub version: u32,
    /// Display name of the cluster.
    #[serde(default)]
    pub name: String,
    /// The service account that owns the shared tree.
    #[serde(default = "default_service_user")]
    pub service_user: UserName,
    /// Its uid, the same on every node; `doctor` checks it.
    #[serde(default)]
    pub service_uid: Option<Uid>,
    /// Users who may administer the cluster and act for others (root always may).
    #[serde(default)]
    pub admins: Vec<UserName>,
    /// Members of this group are admins too.
    #[serde(default)]
    pub admin_group: Option<GroupName>,
    /// Users who may always log in and whose processes are never killed.
    #[serde(default)]
    pub bypass_users: Vec<UserName>,
    /// When set, only members of this group (and admins) may book.
    #[serde(default)]
    pub booking_group: Option<GroupName>,
    /// Accounts below this uid are system accounts: never gated, never managed.
    #[serde(default = "default_min_uid")]
    pub min_uid: Uid,
    /// Accounts above this uid are never gated or managed (none: no bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uid: Option<Uid>,
    /// Booking length when `-t` is not given.
    #[serde(default = "default_duration")]
    pub default_duration: Dur,
    /// Longest booking, and longest extension target from its start.
    #[serde(default = "max_duration")]
    pub max_duration: Dur,
    /// How far ahead a booking may start.
    #[serde(default = "max_ahead")]
    pub max_ahead: Dur,
    /// Most current and future bookings one user may hold at once (0: no limit).
    #[serde(default)]
    pub max_active_per_user: u32,
    /// Most current and future bookings one user may hold on one node
    /// (0: no limit). Future bookings count: each one takes room in the
    /// node's state, which every login reads.
    #[serde(default = "max_bookings_per_user_node")]
    pub max_bookings_per_user_node: u32,
    /// Shortest booking.
    #[serde(default = "min_duration")]
    pub min_duration: Dur,
    /// Longest `alloc --wait`.
    #[serde(default = "max_wait")]
    pub max_wait: Dur,
    /// When the housekeeper warns a user before their booking ends.
    #[serde(default = "warn_before")]
    pub warn_before: Vec<Dur>,
    /// IANA time zone in which windows and local times are read.
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Process limit per booked unit for the user slice (none: no limit).
    #[serde(default)]
    pub tasks_max_per_unit: Option<u64>,
}

fn default_service_user() -> UserName {
    // A literal that satisfies the name rule.
    UserName::new("kloigos").expect("valid literal")
}
fn default_min_uid() -> Uid {
    // A literal, not u32::MAX.
    Uid::new(1000).expect("valid literal")
}
fn dur(secs: u64) -> Dur {
    // Literals below are all within Dur's bounds.
    Dur::from_secs(secs).expect("valid literal")
}
fn default_duration() -> Dur {
    dur(3600)
}
fn max_duration() -> Dur {
    dur(7 * 86_400)
}
fn max_ahead() -> Dur {
    dur(30 * 86_400)
}
fn max_bookings_per_user_node() -> u32 {
    16
}
fn min_duration() -> Dur {
    dur(60)
}
fn max_wait() -> Dur {
    dur(86_400)
}
fn warn_before() -> Vec<Dur> {
    vec![dur(900), dur(120)]
}
fn default_tz() -> String {
    "UTC".into()
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            version: FORMAT_VERSION,
            name: String::new(),
            service_user: default_service_user(),
            service_uid: None,
            admins: Vec::new(),
            admin_group: None,
            bypass_users: Vec::new(),
            booking_group: None,
            min_uid: default_min_uid(),
            max_uid: None,
            default_duration: default_duration(),
            max_duration: max_duration(),
            max_ahead: max_ahead(),
            max_active_per_user: 0,
            max_bookings_per_user_node: max_bookings_per_user_node(),
            min_duration: min_duration(),
            max_wait: max_wait(),
            warn_before: warn_before(),
            timezone: default_tz(),
            tasks_max_per_unit: None,
        }
    }
}

impl Policy {
    /// Checks what serde cannot: version, time zone, coherent limits.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_version(self.version)?;
        self.tz()?;
        if let Some(max) = self.max_uid.filter(|m| *m < self.min_uid) {
            return Err(format!(
                "max_uid {max} is below min_uid {}: no account would be managed",
                self.min_uid
            ));
        }
        if self.default_duration > self.max_duration {
            return Err(format!(
                "default_duration {} is longer than max_duration {}",
                self.default_duration, self.max_duration
            ));
        }
        if self.min_duration > self.default_duration {
            return Err(format!(
                "min_duration {} is longer than default_duration {}",
                self.min_duration, self.default_duration
            ));
        }
        Ok(())
    }

    /// The cluster time zone.
    pub fn tz(&self) -> std::result::Result<TimeZone, String> {
        TimeZone::get(&self.timezone).map_err(|_| {
            format!(
                "unknown time zone '{}'; use an IANA name such as Europe/Paris or UTC",
                self.timezone
            )
        })
    }

    /// The cluster time zone, falling back to UTC (validated files never need it).
    pub fn tz_or_utc(&self) -> TimeZone {
        self.tz().unwrap_or(TimeZone::UTC)
    }

    /// Sets one field from its JSON name and a textual value (`admin policy KEY=VALUE`).
    pub fn set_field(&mut self, key: &str, value: &str) -> Result<()> {
        let mut doc = serde_json::to_value(&*self).map_err(|e| Error::Refused(e.to_string()))?;
        let obj = doc
            .as_object_mut()
            .ok_or_else(|| Error::Refused("policy is not an object".into()))?;
        // Fields left out of the file while unset (so older readers, which
        // refuse unknown fields, still read it) are known all the same.
        obj.entry("max_uid").or_insert(serde_json::Value::Null);
        if key == "version" || !obj.contains_key(key) {
            let keys: Vec<&str> = obj
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "version")
                .collect();
            return Err(Error::invalid(
                "policy field",
                key,
                format!("known fields: {}", keys.join(", ")),
            ));
        }
        // Lists are given comma-separated; empty text clears optional fields.
        let v = match &obj[key] {
            serde_json::Value::Array(_) => serde_json::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| serde_json::Value::String(s.into()))
                    .collect(),
            ),
            _ if value.is_empty() => serde_json::Value::Null,
            serde_json::Value::Number(_) => serde_json::Value::Number(
                value
                    .parse::<u64>()
                    .map_err(|_| {
                        Error::invalid("policy value", value, format!("{key} takes a whole number"))
                    })?
                    .into(),
            ),
            _ if key == "service_uid" || key == "tasks_max_per_unit" || key == "max_uid" => {
                serde_json::Value::Number(
                    value
                        .parse::<u64>()
                        .map_err(|_| {
                            Error::invalid(
                                "policy value",
                                value,
                                format!("{key} takes a whole number"),
                            )
                        })?
                        .into(),
                )
            }
            _ => serde_json::Value::String(value.into()),
        };
        obj.insert(key.into(), v);
        let new: Policy = serde_json::from_value(doc)
            .map_err(|e| Error::invalid("policy value", value, format!("for {key}: {e}")))?;
        new.validate()
            .map_err(|e| Error::invalid("policy value", value, e))?;
        *self = new;
        Ok(())
    }
}

/// Refuses a file written by a newer kloigos instead of guessing at it.
pub fn check_version(version: u32) -> std::result::Result<(), String> {
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this kloigos reads version {FORMAT_VERSION}; upgrade kloigos on this host"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::uid;

    #[test]
    fn minimal_file_gets_defaults() {
        let p: Policy = serde_json::from_str(r#"{"version":1}"#).unwrap();
        assert_eq!(p.min_uid, uid(1000));
        assert_eq!(p.default_duration.secs(), 3600);
        assert_eq!(p.max_bookings_per_user_node, 16);
        assert_eq!(p.min_duration.secs(), 60);
        assert_eq!(p.max_wait.secs(), 86_400);
        p.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = serde_json::from_str::<Policy>(r#"{"version":1,"admin":["x"]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `admin`"), "{e}");
    }

    #[test]
    fn newer_version_is_refused_with_advice() {
        let p = Policy {
            version: 2,
            ..Policy::default()
        };
        assert!(p.validate().unwrap_err().contains("upgrade kloigos"));
    }

    #[test]
    fn set_field_parses_by_type() {
        let mut p = Policy::default();
        p.set_field("max_duration", "2d").unwrap();
        p.set_field("admins", "alice, bob").unwrap();
        p.set_field("max_active_per_user", "3").unwrap();
        p.set_field("timezone", "Europe/Paris").unwrap();
        p.set_field("admin_group", "wheel").unwrap();
        p.set_field("admin_group", "").unwrap();
        p.set_field("min_duration", "5m").unwrap();
        p.set_field("max_wait", "2h").unwrap();
        p.set_field("max_bookings_per_user_node", "4").unwrap();
        assert_eq!(
            (
                p.min_duration.secs(),
                p.max_wait.secs(),
                p.max_bookings_per_user_node
            ),
            (300, 7200, 4)
        );
        let e = p.set_field("min_duration", "2h").unwrap_err().to_string();
        assert!(e.contains("min_duration 2h"), "{e}");
        assert_eq!(p.max_duration.secs(), 172_800);
        assert_eq!(p.admins.len(), 2);
        assert_eq!(p.max_active_per_user, 3);
        assert_eq!(p.admin_group, None);
        assert!(p
            .set_field("timezone", "Mars/Base")
            .unwrap_err()
            .to_string()
            .contains("IANA"));
        assert!(p
            .set_field("nope", "1")
            .unwrap_err()
            .to_string()
            .contains("known fields"));
        assert!(p.set_field("admins", "../x").is_err());
        assert_eq!(p.timezone, "Europe/Paris");
        p.set_field("max_uid", "70000").unwrap();
        assert_eq!(p.max_uid, Some(uid(70000)));
        assert!(p.set_field("max_uid", "10").is_err(), "below min_uid");
        p.set_field("max_uid", "").unwrap();
        assert_eq!(p.max_uid, None);
        // Unset, it is left out of the file (older readers refuse unknown fields).
        assert!(!String::from_utf8(crate::store::to_json(&p))
            .unwrap()
            .contains("max_uid"));
    }
}
