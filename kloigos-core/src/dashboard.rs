//! The dashboard: a self-contained static site (`index.html` with inline
//! CSS and JS, no network beyond its own `cluster.json`) and the snapshot it
//! shows. `kloigos dashboard --out DIR` and the housekeeper (with
//! `housekeeper.dashboard_dir`) write it; any web server can serve it.
//!
//! The snapshot holds nothing beyond what `info --json` shows any user. The
//! page renders every string from it with `textContent`, never as markup,
//! and its Content-Security-Policy allows only its own inline script and
//! style (by hash) and fetching from its own origin.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::booking::Booking;
use crate::cpuset::CpuSet;
use crate::duration::Dur;
use crate::error::{Error, Result};
use crate::facts::Facts;
use crate::names::{Label, NodeName, UserName};
use crate::node::Drain;
use crate::policy::{Policy, FORMAT_VERSION};
use crate::ports::PortRange;
use crate::state::NodeState;
use crate::store::write_atomic;
use crate::timeline::{self, Filter, UnitRow};
use crate::window::Window;

/// The snapshot file next to the page.
pub const SNAPSHOT_FILE: &str = "cluster.json";
/// The page.
pub const PAGE_FILE: &str = "index.html";
/// How long the page's timeline runs: a week from the start of today.
pub const SPAN_DAYS: i64 = 7;

const TEMPLATE: &str = include_str!("dashboard.html");

/// Colours given to users, by a stable hash of the name: xterm-256 index
/// for the terminal, CSS for the page, the same hue in both.
pub const USER_COLOURS: [(u8, &str); 12] = [
    (33, "#0087ff"),
    (166, "#d75f00"),
    (35, "#00af5f"),
    (163, "#d700af"),
    (136, "#af8700"),
    (37, "#00afaf"),
    (99, "#875fff"),
    (160, "#d70000"),
    (70, "#5faf00"),
    (31, "#0087af"),
    (172, "#d78700"),
    (132, "#af5f87"),
];

/// The index into [`USER_COLOURS`] for `user` (FNV-1a, stable across
/// programs and releases).
pub fn user_colour(user: &str) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in user.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % USER_COLOURS.len() as u32) as usize
}

/// The public part of the cluster policy.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    /// Display name.
    pub name: String,
    /// Time zone of windows and local times.
    pub timezone: String,
    /// Booking length without `-t`.
    pub default_duration: Dur,
    /// Longest booking.
    pub max_duration: Dur,
    /// How far ahead a booking may start.
    pub max_ahead: Dur,
    /// Current and future bookings per user (0: no limit).
    pub max_active_per_user: u32,
}

/// One node as `info --json` shows it, plus its week of intervals and the
/// flags derived from its facts.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Name.
    pub name: NodeName,
    /// Labels.
    pub labels: Vec<Label>,
    /// Bookable CPUs.
    pub cpus: CpuSet,
    /// CPUs per unit.
    pub unit_cpus: u32,
    /// Units.
    pub units_total: u32,
    /// Units free now.
    pub units_free: u32,
    /// Port range.
    pub ports: Option<PortRange>,
    /// The drain, if any.
    pub drained: Option<Drain>,
    /// Weekly windows.
    pub windows: Vec<Window>,
    /// free / partly / full / drained / stale, as `info` says.
    pub state: &'static str,
    /// Whether the heartbeat is older than the stale limit (or missing).
    pub stale: bool,
    /// Current and future bookings.
    pub bookings: Vec<Booking>,
    /// The node's facts, as `info --json` shows them.
    pub facts: Option<Facts>,
    /// Users holding a booking now whose processes used no CPU on the last pass.
    pub idle: Vec<UserName>,
    /// Users with processes and no booking now.
    pub strays: Vec<UserName>,
    /// One row per unit over the snapshot's span: its booked, closed and
    /// drained stretches (the rest is free).
    pub timeline: Vec<UnitRow>,
}

/// The snapshot, `cluster.json`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// When it was taken.
    pub generated: Timestamp,
    /// Start of the timeline span (local midnight today).
    pub from: Timestamp,
    /// End of the timeline span.
    pub to: Timestamp,
    /// Local midnights in the span, with their labels ("Mon 23"), for the axis.
    pub days: Vec<DayTick>,
    /// The public policy.
    pub policy: PolicyView,
    /// Colour of each user in view (CSS).
    pub colours: BTreeMap<String, &'static str>,
    /// The nodes.
    pub nodes: Vec<NodeView>,
    /// Nodes that could not be read, with why.
    pub errors: Vec<NodeError>,
}

/// A local midnight on the timeline's axis.
#[derive(Debug, Serialize)]
pub struct DayTick {
    /// The instant.
    pub at: Timestamp,
    /// Its label, e.g. `Mon 23`.
    pub label: String,
}

/// Local midnights in `[from, to)` read in `tz` (DST-correct: a day of 23
/// or 25 hours is as long as it really is).
pub fn day_ticks(tz: &jiff::tz::TimeZone, from: Timestamp, to: Timestamp) -> Vec<DayTick> {
    let mut out = Vec::new();
    let Ok(mut day) = from.to_zoned(tz.clone()).start_of_day() else {
        return out;
    };
    while day.timestamp() < to {
        if day.timestamp() >= from {
            out.push(DayTick {
                at: day.timestamp(),
                label: day.strftime("%a %d").to_string(),
            });
        }
        match day.tomorrow().and_then(|d| d.start_of_day()) {
            Ok(d) => day = d,
            Err(_) => break,
        }
    }
    out
}

/// A node that could not be read.
#[derive(Debug, Serialize)]
pub struct NodeError {
    /// The node.
    pub name: NodeName,
    /// Why.
    pub error: String,
}

/// The node's condition at a glance, as `info` shows it.
pub fn condition(st: &NodeState, facts: Option<&Facts>, now: Timestamp, free: u32) -> &'static str {
    if st.node.drained.is_some() {
        "drained"
    } else if facts.is_some_and(|f| f.is_stale(now)) {
        "stale"
    } else if free == 0 {
        "full"
    } else if free < st.node.units_total() {
        "partly"
    } else {
        "free"
    }
}

/// Builds the snapshot from what was read. Pure: `now` is passed in.
pub fn snapshot(
    policy: &Policy,
    nodes: Vec<(NodeState, Option<Facts>)>,
    errors: Vec<(NodeName, Error)>,
    now: Timestamp,
) -> Snapshot {
    let tz = policy.tz_or_utc();
    let from = now
        .to_zoned(tz.clone())
        .start_of_day()
        .map(|z| z.timestamp())
        .unwrap_or(now);
    let to = from
        .to_zoned(tz.clone())
        .checked_add(jiff::Span::new().days(SPAN_DAYS))
        .map(|z| z.timestamp())
        .unwrap_or_else(|_| {
            from.saturating_add(SignedDuration::from_hours(24 * SPAN_DAYS))
                .unwrap_or(from)
        });
    let instant = now
        .saturating_add(SignedDuration::from_secs(1))
        .unwrap_or(now);
    let mut colours = BTreeMap::new();
    let nodes = nodes
        .into_iter()
        .map(|(st, facts)| {
            let free = st.units_free(now, instant);
            let state = condition(&st, facts.as_ref(), now, free);
            let bookings: Vec<Booking> = st
                .bookings
                .iter()
                .filter(|b| b.is_current_or_future(now))
                .cloned()
                .collect();
            for b in &st.bookings {
                colours.insert(
                    b.user.to_string(),
                    USER_COLOURS[user_colour(b.user.as_str())].1,
                );
            }
            let fresh = facts.as_ref().filter(|f| !f.is_stale(now));
            let holders: Vec<&UserName> = st.active(now).map(|b| &b.user).collect();
            let idle = fresh
                .map(|f| {
                    let mut v: Vec<UserName> = holders
                        .iter()
                        .filter(|u| !f.users.iter().any(|x| &&x.user == *u && x.cpu_load >= 0.05))
                        .map(|u| (*u).clone())
                        .collect();
                    v.sort();
                    v.dedup();
                    v
                })
                .unwrap_or_default();
            let strays = fresh
                .map(|f| {
                    f.users
                        .iter()
                        .filter(|x| x.processes > 0 && !holders.contains(&&x.user))
                        .map(|x| x.user.clone())
                        .collect()
                })
                .unwrap_or_default();
            let mut rows = timeline::node_rows(&st, &tz, from, to, &Filter::default());
            // The page draws free time as the empty track: no need to ship it.
            for u in &mut rows.units {
                u.intervals.retain(|i| i.kind != timeline::Kind::Free);
            }
            NodeView {
                stale: facts.as_ref().is_none_or(|f| f.is_stale(now)),
                name: st.node.name.clone(),
                labels: st.node.labels.clone(),
                cpus: st.node.cpus.clone(),
                unit_cpus: st.node.cpus_per_unit(),
                units_total: st.node.units_total(),
                units_free: free,
                ports: st.node.ports,
                drained: st.node.drained.clone(),
                windows: st.node.windows.clone(),
                state,
                bookings,
                facts,
                idle,
                strays,
                timeline: rows.units,
            }
        })
        .collect();
    Snapshot {
        version: FORMAT_VERSION,
        generated: now,
        days: day_ticks(&tz, from, to),
        from,
        to,
        policy: PolicyView {
            name: policy.name.clone(),
            timezone: policy.timezone.clone(),
            default_duration: policy.default_duration,
            max_duration: policy.max_duration,
            max_ahead: policy.max_ahead,
            max_active_per_user: policy.max_active_per_user,
        },
        colours,
        nodes,
        errors: errors
            .into_iter()
            .map(|(name, e)| NodeError {
                name,
                error: e.to_string(),
            })
            .collect(),
    }
}

/// The Content-Security-Policy of the page: its own inline script and
/// style by hash, `cluster.json` from its own origin, nothing else.
pub fn content_security_policy() -> String {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_source(between(TEMPLATE, "<script>", "</script>")),
        hash_source(between(TEMPLATE, "<style>", "</style>")),
    )
}

/// The page, with its CSP filled in.
pub fn page() -> String {
    TEMPLATE.replace("{{CSP}}", &content_security_policy())
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    // The template is ours and holds exactly one of each: a test checks it.
    let start = text.find(open).map_or(0, |i| i + open.len());
    let end = text[start..].find(close).map_or(text.len(), |i| start + i);
    &text[start..end]
}

fn hash_source(body: &str) -> String {
    format!("sha256-{}", base64(&sha256(body.as_bytes())))
}

/// Writes the site into `dir` (created if missing): the snapshot first,
/// then the page, each atomically, so a reader never sees half a file.
pub fn write_site(dir: &Path, snap: &Snapshot) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::Storage {
                path: dir.into(),
                msg: "is not a directory; give a directory for the dashboard".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).map_err(|e| Error::io(dir, &e))?;
        }
        Err(e) => return Err(Error::io(dir, &e)),
    }
    // Compact: the browser fetches it every minute, and nobody edits it.
    let json = serde_json::to_vec(snap).map_err(|e| Error::Storage {
        path: dir.join(SNAPSHOT_FILE),
        msg: format!("cannot serialize the snapshot: {e}"),
    })?;
    write_atomic(dir, SNAPSHOT_FILE, &json)?;
    write_atomic(dir, PAGE_FILE, page().as_bytes())
}

/// SHA-256 (FIPS 180-4), for the CSP hashes of the page's inline parts.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with `=` padding (RFC 4648): the page's CSP hash is
/// written in it.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha256_and_base64_match_known_vectors() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(
            hex(&sha256(&long)),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn the_page_is_self_contained_and_renders_text_only() {
        let p = page();
        assert_eq!(p.matches("<script>").count(), 1);
        assert_eq!(p.matches("<style>").count(), 1);
        assert!(!p.contains("{{CSP}}"));
        assert!(p.contains("script-src 'sha256-"));
        // No markup built from data, no remote resources.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "http://",
            "https://",
            "src=",
        ] {
            assert!(!p.contains(banned), "the page contains {banned}");
        }
    }

    #[test]
    fn snapshot_flags_stale_idle_and_strays_and_ships_no_free_time() {
        use crate::state::Size;
        use crate::testing::{request, ts};
        let now = ts("2026-11-23T10:00:00Z");
        let mut spec =
            crate::node::NodeSpec::new(NodeName::new("n1").unwrap(), CpuSet::parse("0-3").unwrap());
        spec.unit_cpus = Some(2);
        let mut st = NodeState::new(spec);
        for (user, units) in [("alice", 1), ("bob", 1)] {
            let req = request(
                user,
                1000,
                Size::Units(units),
                now,
                ts("2026-11-23T12:00:00Z"),
            );
            st.book(&req, &Policy::default(), now, &[]).unwrap();
        }
        let facts = |age: i64| -> Facts {
            serde_json::from_value(serde_json::json!({
                "version": 1, "node": "n1",
                "heartbeat": Timestamp::from_second(now.as_second() - age).unwrap(),
                "users": [
                    {"user": "alice", "uid": 1000, "processes": 3, "cpu_load": 0.9},
                    {"user": "carol", "uid": 1002, "processes": 1, "cpu_load": 0.0}
                ]
            }))
            .unwrap()
        };
        let snap = snapshot(
            &Policy::default(),
            vec![(st.clone(), Some(facts(30)))],
            vec![],
            now,
        );
        let n = &snap.nodes[0];
        assert!(!n.stale);
        assert_eq!((n.state, n.units_free), ("full", 0));
        assert_eq!(n.idle, [UserName::new("bob").unwrap()]);
        assert_eq!(n.strays, [UserName::new("carol").unwrap()]);
        assert!(n
            .timeline
            .iter()
            .all(|u| u.intervals.iter().all(|i| i.kind == timeline::Kind::Booked)));
        assert_eq!(snap.days.len(), 7);
        assert_eq!(snap.colours["alice"], USER_COLOURS[user_colour("alice")].1);
        // A stale heartbeat: flagged, and its per-user data no longer judged.
        let snap = snapshot(
            &Policy::default(),
            vec![(st.clone(), Some(facts(600)))],
            vec![],
            now,
        );
        assert!(snap.nodes[0].stale && snap.nodes[0].idle.is_empty());
        assert_eq!(snap.nodes[0].state, "stale");
        let snap = snapshot(&Policy::default(), vec![(st, None)], vec![], now);
        assert!(snap.nodes[0].stale);
    }

    #[test]
    fn colours_are_stable() {
        assert_eq!(user_colour("alice"), user_colour("alice"));
        let all: std::collections::BTreeSet<usize> =
            ["alice", "bob", "carol", "dave", "erin", "frank"]
                .iter()
                .map(|u| user_colour(u))
                .collect();
        assert!(all.len() >= 4, "{all:?}");
    }
}
