//! Bookings and their ids.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cpuset::CpuSet;
use crate::error::{Error, Result};
use crate::names::{NodeName, UserName};
use crate::ports::PortRange;

/// A booking's id, `<node>:<seq>`, unique in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BookingId {
    /// The node the booking is on.
    pub node: NodeName,
    /// Its sequence number in that node's state.
    pub seq: u64,
}

impl BookingId {
    /// Parses `node3:12`.
    pub fn parse(text: &str) -> Result<BookingId> {
        let bad = || {
            Error::invalid(
                "booking id",
                text,
                "ids look like node3:12 (see `kloigos list`)",
            )
        };
        let (node, seq) = text.rsplit_once(':').ok_or_else(bad)?;
        Ok(BookingId {
            node: NodeName::new(node).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for BookingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.seq)
    }
}

impl Serialize for BookingId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BookingId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::text::from_str(d, "a booking id such as \"node1:7\"", BookingId::parse)
    }
}

/// One booking: a user holds a run of units on a node for `[start, end)`.
///
/// This is also the JSON object every command prints for a booking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Booking {
    /// `<node>:<seq>`.
    pub id: BookingId,
    /// The node booked.
    pub node: NodeName,
    /// Who holds it.
    pub user: UserName,
    /// Their uid, so nodes agree on the account even if names drift.
    pub uid: u32,
    /// First and last unit, inclusive.
    pub units: [u32; 2],
    /// The CPUs of those units.
    pub cpus: CpuSet,
    /// The ports of those units, if the node has ports.
    pub ports: Option<PortRange>,
    /// Start, inclusive (UTC).
    pub start: Timestamp,
    /// End, exclusive (UTC).
    pub end: Timestamp,
    /// The user's note.
    #[serde(default)]
    pub note: String,
    /// Who made the booking (an admin may book for someone else).
    pub created_by: UserName,
    /// When it was made.
    pub created_at: Timestamp,
}

impl Booking {
    /// Whether the booking holds at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.start <= now && now < self.end
    }

    /// Whether the booking has not ended at `now` (active or future).
    pub fn is_current_or_future(&self, now: Timestamp) -> bool {
        now < self.end
    }

    /// Whether the two bookings share a unit during a common instant.
    pub fn overlaps(&self, other: &Booking) -> bool {
        self.node == other.node
            && spans_overlap(self.start, self.end, other.start, other.end)
            && self.units[0] <= other.units[1]
            && other.units[0] <= self.units[1]
    }

    /// Number of units held.
    pub fn unit_count(&self) -> u32 {
        self.units[1] - self.units[0] + 1
    }

    /// CPU-hours booked (CPUs times hours held).
    pub fn cpu_hours(&self) -> f64 {
        let secs = (self.end.as_second() - self.start.as_second()).max(0) as f64;
        self.cpus.len() as f64 * secs / 3600.0
    }
}

/// Whether half-open spans `[a0, a1)` and `[b0, b1)` intersect.
pub fn spans_overlap(a0: Timestamp, a1: Timestamp, b0: Timestamp, b1: Timestamp) -> bool {
    a0 < b1 && b0 < a1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_refuse() {
        let id = BookingId::parse("node3:12").unwrap();
        assert_eq!(id.to_string(), "node3:12");
        for bad in ["node3", "node3:x", ":1", "../a:1", "a/b:1"] {
            assert!(BookingId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn half_open_spans() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert!(!spans_overlap(
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T01:00:00Z"),
            t("2026-01-01T01:00:00Z"),
            t("2026-01-01T02:00:00Z")
        ));
        assert!(spans_overlap(
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T01:00:01Z"),
            t("2026-01-01T01:00:00Z"),
            t("2026-01-01T02:00:00Z")
        ));
    }
}
