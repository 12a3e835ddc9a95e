//! Bookings and their ids.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize, Serializer};

use crate::cpuset::CpuSet;
use crate::error::{Error, Result};
use crate::gpuset::GpuSet;
use crate::ids::Uid;
use crate::names::{NodeName, UserName};
use crate::ports::PortRange;
use crate::text::serde_as_text;

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

serde_as_text!(
    BookingId,
    "a booking id such as \"node1:7\"",
    BookingId::parse
);

/// Longest note, in bytes.
pub const MAX_NOTE: usize = 256;

/// A booking's note: at most [`MAX_NOTE`] bytes of printable text (no C0,
/// DEL, C1 or bidi control), checked by [`Note::new`] at input and by
/// [`Note::check`] again when a booking is added to a node's state.
///
/// Reading a file takes any string, so that a state written by an older
/// version or edited by hand still loads (the file's size is bounded by
/// the reader); printers escape what it holds
/// ([`crate::printable::escape`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Note(String);

impl Note {
    /// Validates `text` as a note.
    pub fn new(text: &str) -> Result<Note> {
        let n = Note(text.to_string());
        n.check()?;
        Ok(n)
    }

    /// Checks the rule; an error quotes the note escaped.
    pub fn check(&self) -> Result<()> {
        if self.0.len() > MAX_NOTE {
            return Err(Error::invalid(
                "note",
                &format!("{}...", crate::printable::escape(truncate(&self.0, 40))),
                format!(
                    "a note holds at most {MAX_NOTE} bytes; this one has {}",
                    self.0.len()
                ),
            ));
        }
        if self.0.chars().any(crate::printable::is_control) {
            return Err(Error::invalid(
                "note",
                &crate::printable::escape(&self.0),
                "a note is one line of printable text: no control characters (escapes, tabs, newlines, bidi controls)",
            ));
        }
        Ok(())
    }

    /// The note as stored (possibly holding control characters when read
    /// from an old file: escape it before printing).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the note is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
    pub uid: Uid,
    /// First and last unit, inclusive.
    pub units: [u32; 2],
    /// The CPUs of those units.
    pub cpus: CpuSet,
    /// The ports of those units, if the node has ports.
    pub ports: Option<PortRange>,
    /// The GPUs of those units, if the node has GPUs. Left out of the
    /// node's files when absent (older versions refuse unknown fields);
    /// printed as `null` ([`Booking::to_json`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuSet>,
    /// The UUIDs of those GPUs, in index order, when the node's facts knew
    /// them at booking time (they name the GPUs for `CUDA_VISIBLE_DEVICES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_uuids: Vec<String>,
    /// Start, inclusive (UTC).
    pub start: Timestamp,
    /// End, exclusive (UTC).
    pub end: Timestamp,
    /// The user's note.
    #[serde(default)]
    pub note: Note,
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
        self.cpus.len() as f64 * self.hours()
    }

    /// GPU-hours booked (GPUs times hours held; 0 without GPUs).
    pub fn gpu_hours(&self) -> f64 {
        self.gpus.as_ref().map_or(0, GpuSet::len) as f64 * self.hours()
    }

    fn hours(&self) -> f64 {
        (self.end.as_second() - self.start.as_second()).max(0) as f64 / 3600.0
    }

    /// The value of `CUDA_VISIBLE_DEVICES` for this booking: the GPUs'
    /// UUIDs when known (they name the right GPUs whatever the numbering a
    /// process sees), else their indices; `None` without GPUs.
    pub fn cuda_visible_devices(&self) -> Option<String> {
        let gpus = self.gpus.as_ref()?;
        Some(if self.gpu_uuids.len() == gpus.len() {
            self.gpu_uuids.join(",")
        } else {
            let v: Vec<String> = gpus.indices().iter().map(u32::to_string).collect();
            v.join(",")
        })
    }

    /// The environment a session inside this booking gets:
    /// `KLOIGOS_BOOKING`, `KLOIGOS_CPUS`, `KLOIGOS_PORTS` (empty without
    /// ports) and, with GPUs, `CUDA_VISIBLE_DEVICES`.
    pub fn session_env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("KLOIGOS_BOOKING", self.id.to_string()),
            ("KLOIGOS_CPUS", self.cpus.to_string()),
            (
                "KLOIGOS_PORTS",
                self.ports.map(|p| p.to_string()).unwrap_or_default(),
            ),
        ];
        if let Some(c) = self.cuda_visible_devices() {
            v.push(("CUDA_VISIBLE_DEVICES", c));
        }
        v
    }

    /// The booking as commands print it: every field present, `gpus`
    /// `null` on a node without GPUs, `gpu_uuids` only when known.
    pub fn to_json(&self) -> Printed<'_> {
        Printed {
            booking: self,
            no_gpus: self.gpus.is_none(),
        }
    }
}

/// A booking as commands print it (see [`Booking::to_json`]): serialized
/// straight to the output, without a JSON tree in between (`info` prints
/// thousands).
#[derive(Debug, Serialize)]
pub struct Printed<'a> {
    #[serde(flatten)]
    booking: &'a Booking,
    /// The file leaves `gpus` out when there are none; commands print `null`.
    #[serde(
        rename = "gpus",
        skip_serializing_if = "is_false",
        serialize_with = "null"
    )]
    no_gpus: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn null<S: Serializer>(_: &bool, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_none()
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
    fn notes_are_short_printable_lines() {
        assert_eq!(
            Note::new("exp 4 — ünïcode ✓").unwrap().as_str(),
            "exp 4 — ünïcode ✓"
        );
        Note::new(&"é".repeat(128)).unwrap();
        let e = Note::new(&"a".repeat(MAX_NOTE + 1)).unwrap_err();
        assert!(e.to_string().contains("at most 256 bytes"), "{e}");
        let attack = "\u{1b}]0;title\u{7}\u{1b}[2J\r\nvm:99 secalice";
        let e = Note::new(attack).unwrap_err().to_string();
        assert!(e.contains("no control characters"), "{e}");
        assert!(!e.chars().any(crate::printable::is_control), "{e:?}");
        for bad in ["a\tb", "a\u{7f}", "a\u{9b}", "a\u{202e}b", "a\u{2066}"] {
            assert!(Note::new(bad).is_err(), "{bad:?}");
        }
        // An old file's note loads as it is, and fails the check.
        let n: Note = serde_json::from_str("\"\\u001b[2J\"").unwrap();
        assert!(n.check().is_err());
    }

    #[test]
    fn a_booking_without_gpus_reads_and_writes_as_before_and_prints_gpus_null() {
        let old = r#"{"id":"n1:1","node":"n1","user":"a","uid":1000,"units":[0,0],"cpus":"0-3","ports":null,"start":"2026-01-01T00:00:00Z","end":"2026-01-01T02:00:00Z","note":"","created_by":"a","created_at":"2026-01-01T00:00:00Z"}"#;
        let b: Booking = serde_json::from_str(old).unwrap();
        assert_eq!(b.gpus, None);
        assert_eq!(serde_json::to_string(&b).unwrap(), old);
        let json = |b: &Booking| serde_json::to_value(b.to_json()).unwrap();
        assert_eq!(json(&b)["gpus"], serde_json::Value::Null);
        assert_eq!(b.gpu_hours(), 0.0);
        let mut g = b.clone();
        g.gpus = Some(GpuSet::parse("2-3").unwrap());
        assert_eq!(json(&g)["gpus"], "2-3");
        assert!(json(&g).get("gpu_uuids").is_none());
        assert_eq!(g.gpu_hours(), 4.0);
        assert_eq!(g.cpu_hours(), 8.0);
        // The session's environment: indices without UUIDs, UUIDs with them.
        assert_eq!(b.cuda_visible_devices(), None);
        assert_eq!(g.cuda_visible_devices().as_deref(), Some("2,3"));
        g.gpu_uuids = vec!["GPU-a".into(), "GPU-b".into()];
        assert_eq!(
            g.session_env(),
            [
                ("KLOIGOS_BOOKING", "n1:1".to_string()),
                ("KLOIGOS_CPUS", "0-3".into()),
                ("KLOIGOS_PORTS", "".into()),
                ("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b".into()),
            ]
        );
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
