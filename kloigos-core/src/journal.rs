//! The per-node history, `journal.jsonl`: one JSON event per line, appended
//! by every writer after its state change.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::booking::Booking;
use crate::names::{NodeName, UserName};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A booking was made.
    Book,
    /// A booking was ended early (or a reservation cancelled).
    Release,
    /// A booking's end moved later.
    Extend,
    /// The node was added.
    AddNode,
    /// The node's spec changed.
    SetNode,
    /// The node was removed.
    DelNode,
    /// The node stopped taking bookings.
    Drain,
    /// The node takes bookings again.
    Resume,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened.
    pub time: Timestamp,
    /// Who did it.
    pub by: UserName,
    /// What was done.
    pub action: Action,
    /// On which node.
    pub node: NodeName,
    /// The booking as it stands after the change, for booking actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking: Option<Booking>,
    /// Free text (drain reason, changed fields).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Event {
    /// An event about `booking`.
    pub fn booking(time: Timestamp, by: &UserName, action: Action, booking: &Booking) -> Event {
        Event {
            time,
            by: by.clone(),
            action,
            node: booking.node.clone(),
            booking: Some(booking.clone()),
            detail: String::new(),
        }
    }

    /// An event about a node.
    pub fn node(
        time: Timestamp,
        by: &UserName,
        action: Action,
        node: &NodeName,
        detail: impl Into<String>,
    ) -> Event {
        Event {
            time,
            by: by.clone(),
            action,
            node: node.clone(),
            booking: None,
            detail: detail.into(),
        }
    }
}

/// The journal lines of `events`, each ending in a newline; with
/// `after_fragment`, a newline first, to close a torn line left by a writer
/// cut short (the fragment then stays a line of its own, which `fsck
/// --repair` sets aside, and the events parse).
pub fn lines(events: &[Event], after_fragment: bool) -> Vec<u8> {
    let mut text = Vec::new();
    if after_fragment {
        text.push(b'\n');
    }
    for e in events {
        // Events serialize infallibly.
        text.extend(serde_json::to_vec(e).expect("events serialize"));
        text.push(b'\n');
    }
    text
}

/// Parses journal text; returns the events and the 1-based numbers of lines
/// that did not parse (a torn last line after a crash, or damage).
pub fn parse(text: &str) -> (Vec<Event>, Vec<usize>) {
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(e) => events.push(e),
            Err(_) => bad.push(i + 1),
        }
    }
    (events, bad)
}

/// Each booking's final form in a stream of events: the last record of its
/// id wins (an extend or release rewrites its end).
pub fn final_bookings<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<Booking> {
    let mut by_id: BTreeMap<String, Booking> = BTreeMap::new();
    for e in events {
        if let Some(b) = &e.booking {
            by_id.insert(b.id.to_string(), b.clone());
        }
    }
    let mut v: Vec<Booking> = by_id.into_values().collect();
    v.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
    v
}

/// One user's booked totals, for `history --summary`.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The user.
    pub user: UserName,
    /// Bookings counted.
    pub bookings: usize,
    /// CPUs times hours booked.
    pub cpu_hours: f64,
    /// GPUs times hours booked.
    pub gpu_hours: f64,
}

/// Booked CPU- and GPU-hours per user, most CPU-hours first.
pub fn usage_by_user(bookings: &[Booking]) -> Vec<Usage> {
    let mut m: BTreeMap<&UserName, (f64, f64, usize)> = BTreeMap::new();
    for b in bookings {
        let e = m.entry(&b.user).or_default();
        e.0 += b.cpu_hours();
        e.1 += b.gpu_hours();
        e.2 += 1;
    }
    let mut v: Vec<Usage> = m
        .into_iter()
        .map(|(u, (c, g, n))| Usage {
            user: u.clone(),
            bookings: n,
            cpu_hours: c,
            gpu_hours: g,
        })
        .collect();
    v.sort_by(|a, b| {
        b.cpu_hours
            .total_cmp(&a.cpu_hours)
            .then(a.user.cmp(&b.user))
    });
    v
}
