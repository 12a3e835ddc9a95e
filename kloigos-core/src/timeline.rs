//! The timeline of the cluster: for each unit of each node, what holds it
//! over a span of time (a booking, nothing, a closed window, a drain), and
//! the earliest slot that fits a request. `kloigos timeline` draws it in the
//! terminal and the dashboard page in a browser; both read these intervals.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::booking::BookingId;
use crate::duration::Dur;
use crate::error::{Error, Result};
use crate::names::{Label, NodeName, UserName};
use crate::placement::{self, Offer, Want};
use crate::policy::Policy;
use crate::state::{NodeState, Size, Topology};
use crate::window;

/// What a stretch of a unit's time is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Bookable and not booked.
    Free,
    /// Held by a booking.
    Booked,
    /// Outside the node's weekly windows: no booking may lie there.
    Closed,
    /// The node is drained: it takes no new bookings.
    Drained,
}

/// One stretch `[start, end)` of a unit's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interval {
    /// Start, inclusive.
    pub start: Timestamp,
    /// End, exclusive.
    pub end: Timestamp,
    /// What the stretch is.
    pub kind: Kind,
    /// The booking holding it, for [`Kind::Booked`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking: Option<BookingId>,
    /// Who holds it, for [`Kind::Booked`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserName>,
}

/// One unit's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitRow {
    /// The unit number.
    pub unit: u32,
    /// Its stretches, in order, covering the whole span without gaps.
    pub intervals: Vec<Interval>,
}

/// One node's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRows {
    /// The node.
    pub node: NodeName,
    /// Why it is drained, if it is.
    pub drained: Option<String>,
    /// Its weekly windows as written (empty: always open).
    pub windows: Vec<String>,
    /// One row per unit.
    pub units: Vec<UnitRow>,
}

/// Which bookings a timeline shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this user's bookings (other time shows as free or shaded).
    pub user: Option<UserName>,
}

/// The rows of `state` over `[from, to)`, times read in `tz`.
pub fn node_rows(
    state: &NodeState,
    tz: &TimeZone,
    from: Timestamp,
    to: Timestamp,
    filter: &Filter,
) -> NodeRows {
    let spec = &state.node;
    let open = window::open_intervals(&spec.windows, tz, from, to);
    let drained_from = spec.drained.as_ref().map(|d| d.since.max(from));
    let bookings: Vec<_> = state
        .bookings
        .iter()
        .filter(|b| b.end > from && b.start < to && b.end > b.start)
        .filter(|b| filter.user.as_ref().is_none_or(|u| &b.user == u))
        .collect();
    // Every change of kind happens at one of these instants.
    let mut cuts: Vec<Timestamp> = vec![from, to];
    for (s, e) in &open {
        cuts.extend([*s, *e]);
    }
    cuts.extend(drained_from);
    let units = (0..spec.units_total())
        .map(|unit| {
            let mine: Vec<_> = bookings
                .iter()
                .filter(|b| b.units[0] <= unit && unit <= b.units[1])
                .collect();
            let mut at: Vec<Timestamp> = cuts.clone();
            for b in &mine {
                at.extend([b.start, b.end]);
            }
            at.retain(|t| *t >= from && *t <= to);
            at.sort();
            at.dedup();
            let mut intervals: Vec<Interval> = Vec::new();
            for w in at.windows(2) {
                let (s, e) = (w[0], w[1]);
                let held = mine.iter().find(|b| b.start <= s && s < b.end);
                let kind = if held.is_some() {
                    Kind::Booked
                } else if drained_from.is_some_and(|d| s >= d) {
                    Kind::Drained
                } else if !open.iter().any(|(os, oe)| *os <= s && s < *oe) {
                    Kind::Closed
                } else {
                    Kind::Free
                };
                let booking = held.map(|b| b.id.clone());
                match intervals.last_mut() {
                    Some(last) if last.kind == kind && last.booking == booking => last.end = e,
                    _ => intervals.push(Interval {
                        start: s,
                        end: e,
                        kind,
                        user: held.map(|b| b.user.clone()),
                        booking,
                    }),
                }
            }
            UnitRow { unit, intervals }
        })
        .collect();
    NodeRows {
        node: spec.name.clone(),
        drained: spec.drained.as_ref().map(|d| d.reason.clone()),
        windows: spec.windows.iter().map(|w| w.to_string()).collect(),
        units,
    }
}

/// A request to find room for, as `--fits` reads it: `units=2,t=4h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitSpec {
    /// How much.
    pub size: Size,
    /// For how long.
    pub len: Dur,
}

const FIT_FORMS: &str = "write KEY=VALUE,... with one of units=N, cpus=N, gpus=N or whole, and t=DURATION, e.g. 'units=2,t=4h' or 'gpus=1,t=4h'";

impl FitSpec {
    /// Parses `units=2,t=4h` (also `cpus=N`, `gpus=N`, `whole`; `t` defaults to `default_len`).
    pub fn parse(text: &str, default_len: Dur) -> Result<FitSpec> {
        let bad = |why: String| Error::invalid("--fits", text, format!("{why}; {FIT_FORMS}"));
        let mut size = None;
        let mut len = None;
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let count = || -> Result<u32> {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("'{item}' needs a whole number above 0")))
            };
            let new = match key.trim() {
                "units" | "u" => Some(Size::Units(count()?)),
                "cpus" | "c" => Some(Size::Cpus(count()?)),
                "whole" if value.is_empty() => Some(Size::Whole),
                "t" | "time" => {
                    len =
                        Some(Dur::parse(value).map_err(|_| {
                            bad(format!("'{value}' is not a duration (4h, 90m, 1d)"))
                        })?);
                    None
                }
                "gpus" | "g" => Some(Size::Gpus(count()?)),
                other => return Err(bad(format!("unknown key '{other}'"))),
            };
            if let Some(n) = new {
                if size.replace(n).is_some() {
                    return Err(bad("give one of units, cpus, gpus or whole".to_string()));
                }
            }
        }
        let len = len.unwrap_or(default_len);
        if len.secs() == 0 {
            return Err(bad("the duration must be above 0".to_string()));
        }
        Ok(FitSpec {
            size: size.unwrap_or(Size::Units(1)),
            len,
        })
    }
}

/// The earliest slot that fits a [`FitSpec`]: where, when and which units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// The node.
    pub node: NodeName,
    /// The units, first and last.
    pub units: [u32; 2],
    /// Start.
    pub start: Timestamp,
    /// End.
    pub end: Timestamp,
    /// The `alloc` command line that books it.
    pub alloc: String,
}

/// The earliest slot at or after `after` on the nodes carrying `labels`
/// where `fit` fits, by the same rules as `alloc --at` (windows, drains,
/// `max_ahead`, best fit), with the command line that books it.
pub fn earliest_slot(
    fit: &FitSpec,
    labels: &[Label],
    states: &[NodeState],
    policy: &Policy,
    after: Timestamp,
    now: Timestamp,
) -> Option<Slot> {
    let end = after.checked_add(fit.len.signed()).ok()?;
    let want = Want {
        size: fit.size,
        labels: labels.to_vec(),
        start: after,
        end,
    };
    let offers: Vec<Offer> = states
        .iter()
        .map(|s| Offer {
            state: s.clone(),
            topo: Topology::default(),
        })
        .collect();
    let (start, node) = placement::earliest(&want, &offers, policy)?;
    let state = states.iter().find(|s| s.node.name == node)?;
    let n = state.units_needed(fit.size).ok()?;
    let end = start.checked_add(fit.len.signed()).ok()?;
    let (first, _) = state.best_run(n, start, end, &Topology::default())?;
    let size = match fit.size {
        Size::Units(u) => format!("--units {u}"),
        Size::Cpus(c) => format!("--cpus {c}"),
        Size::Whole => "--whole".to_string(),
        Size::Gpus(g) => format!("--gpus {g}"),
    };
    // -w pins the node, so the labels that chose it need not be repeated.
    let mut alloc = format!("kloigos alloc -w {node} {size} -t {}", fit.len);
    if start > now {
        // RFC 3339 with the cluster's offset: unambiguous even in a DST fold.
        let at = start.to_zoned(policy.tz_or_utc());
        alloc.push_str(&format!(" --at {}", at.strftime("%Y-%m-%dT%H:%M:%S%:z")));
    }
    Some(Slot {
        node,
        units: [first, first + n - 1],
        start,
        end,
        alloc,
    })
}

/// The end of a span of `span` from `from`: several whole days are
/// calendar days in `tz` (a week across a DST change is 7 local days, 167 or 169 hours),
/// anything else is elapsed time. Refuses spans the views cannot draw.
pub fn span_end(from: Timestamp, span: Dur, tz: &TimeZone) -> Result<Timestamp> {
    const MAX_SPAN_SECS: u64 = 31 * 86_400;
    let bad = |why: &str| Error::invalid("--span", &span.to_string(), why.to_string());
    if span.secs() < 3600 || span.secs() > MAX_SPAN_SECS {
        return Err(bad("give a span from 1h to 31d, e.g. 24h or 7d"));
    }
    let end = if span.secs() > 86_400 && span.secs().is_multiple_of(86_400) {
        from.to_zoned(tz.clone())
            .checked_add(jiff::Span::new().days((span.secs() / 86_400) as i64))
            .map(|z| z.timestamp())
    } else {
        from.checked_add(SignedDuration::from_secs(span.secs() as i64))
    };
    end.map_err(|_| bad("the span ends too far away"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuset::CpuSet;
    use crate::node::{Drain, NodeSpec};
    use crate::testing::{request, ts};
    use crate::window::Window;

    fn node(name: &str, units: u32) -> NodeState {
        let mut spec = NodeSpec::new(
            NodeName::new(name).unwrap(),
            CpuSet::parse(&format!("0-{}", units * 2 - 1)).unwrap(),
        );
        spec.unit_cpus = Some(2);
        NodeState::new(spec)
    }

    fn book(st: &mut NodeState, user: &str, units: u32, start: &str, end: &str) {
        let r = request(user, 1000, Size::Units(units), ts(start), ts(end));
        st.book(&r, &Policy::default(), ts("2026-11-23T00:00:00Z"), &[])
            .unwrap();
    }

    /// `st`'s rows from `from` to `to` in UTC, unfiltered.
    fn utc_rows(st: &NodeState, from: Timestamp, to: Timestamp) -> NodeRows {
        node_rows(st, &TimeZone::UTC, from, to, &Filter::default())
    }

    fn kinds(row: &UnitRow) -> Vec<(Kind, String, String)> {
        row.intervals
            .iter()
            .map(|i| (i.kind, i.start.to_string(), i.end.to_string()))
            .collect()
    }

    #[test]
    fn bookings_and_free_time_cover_the_span() {
        let mut st = node("n1", 2);
        book(
            &mut st,
            "alice",
            2,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        book(
            &mut st,
            "bob",
            1,
            "2026-11-23T22:00:00Z",
            "2026-11-24T03:00:00Z",
        );
        let rows = utc_rows(&st, ts("2026-11-23T08:00:00Z"), ts("2026-11-24T08:00:00Z"));
        assert_eq!(
            kinds(&rows.units[0]),
            [
                (
                    Kind::Free,
                    "2026-11-23T08:00:00Z".into(),
                    "2026-11-23T10:00:00Z".into()
                ),
                (
                    Kind::Booked,
                    "2026-11-23T10:00:00Z".into(),
                    "2026-11-23T12:00:00Z".into()
                ),
                (
                    Kind::Free,
                    "2026-11-23T12:00:00Z".into(),
                    "2026-11-23T22:00:00Z".into()
                ),
                (
                    Kind::Booked,
                    "2026-11-23T22:00:00Z".into(),
                    "2026-11-24T03:00:00Z".into()
                ),
                (
                    Kind::Free,
                    "2026-11-24T03:00:00Z".into(),
                    "2026-11-24T08:00:00Z".into()
                ),
            ]
        );
        assert_eq!(
            rows.units[0].intervals[3].user.as_ref().unwrap().as_str(),
            "bob"
        );
        assert_eq!(rows.units[1].intervals.len(), 3);
        // Only bob's: alice's time shows as free.
        let only_bob = node_rows(
            &st,
            &TimeZone::UTC,
            ts("2026-11-23T08:00:00Z"),
            ts("2026-11-24T08:00:00Z"),
            &Filter {
                user: Some(UserName::new("bob").unwrap()),
            },
        );
        assert_eq!(only_bob.units[1].intervals.len(), 1);
    }

    #[test]
    fn closed_windows_follow_local_time_across_dst() {
        let mut st = node("w", 1);
        st.node.windows = vec![Window::parse("08:00-20:00").unwrap()];
        let paris = TimeZone::get("Europe/Paris").unwrap();
        // Paris leaves summer time on 2026-10-25 at 03:00 CEST.
        let rows = node_rows(
            &st,
            &paris,
            ts("2026-10-24T00:00:00Z"),
            ts("2026-10-26T00:00:00Z"),
            &Filter::default(),
        );
        let opens: Vec<_> = rows.units[0]
            .intervals
            .iter()
            .filter(|i| i.kind == Kind::Free)
            .map(|i| (i.start.to_string(), i.end.to_string()))
            .collect();
        assert_eq!(
            opens,
            [
                (
                    "2026-10-24T06:00:00Z".to_string(),
                    "2026-10-24T18:00:00Z".to_string()
                ),
                (
                    "2026-10-25T07:00:00Z".to_string(),
                    "2026-10-25T19:00:00Z".to_string()
                ),
            ]
        );
        assert_eq!(rows.units[0].intervals[0].kind, Kind::Closed);
    }

    #[test]
    fn a_drain_shades_from_its_start_but_bookings_still_show() {
        let mut st = node("d", 1);
        book(
            &mut st,
            "alice",
            1,
            "2026-11-23T10:00:00Z",
            "2026-11-23T12:00:00Z",
        );
        st.node.drained = Some(Drain {
            reason: "disk".into(),
            by: UserName::new("root").unwrap(),
            since: ts("2026-11-23T09:00:00Z"),
        });
        let rows = utc_rows(&st, ts("2026-11-23T08:00:00Z"), ts("2026-11-23T14:00:00Z"));
        let k: Vec<Kind> = rows.units[0].intervals.iter().map(|i| i.kind).collect();
        assert_eq!(k, [Kind::Free, Kind::Drained, Kind::Booked, Kind::Drained]);
        assert_eq!(rows.drained.as_deref(), Some("disk"));
    }

    #[test]
    fn fits_parses_one_size_and_a_duration() {
        let d = Dur::parse("1h").unwrap();
        let f = FitSpec::parse("units=2,t=4h", d).unwrap();
        assert_eq!((f.size, f.len.secs()), (Size::Units(2), 14_400));
        assert_eq!(FitSpec::parse("whole", d).unwrap().size, Size::Whole);
        assert_eq!(FitSpec::parse("cpus=3", d).unwrap().len.secs(), 3600);
        assert_eq!(FitSpec::parse("gpus=2", d).unwrap().size, Size::Gpus(2));
        for bad in [
            "gpus=0",
            "units=0",
            "units=2,cpus=2",
            "units=2,gpus=1",
            "t=soon",
            "mem=4G",
        ] {
            let e = FitSpec::parse(bad, d).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Usage, "{bad}");
            assert!(e.to_string().contains("units=2,t=4h"), "{e}");
        }
        assert!(FitSpec::parse("units=2,gpus=1", d)
            .unwrap_err()
            .to_string()
            .contains("give one of units, cpus, gpus or whole"));
    }

    #[test]
    fn earliest_slot_skips_drained_nodes_and_books_with_at() {
        let mut a = node("a", 2);
        book(
            &mut a,
            "alice",
            2,
            "2026-11-23T10:00:00Z",
            "2026-11-23T14:00:00Z",
        );
        let mut b = node("b", 2);
        b.node.drained = Some(Drain {
            reason: "r".into(),
            by: UserName::new("root").unwrap(),
            since: ts("2026-11-23T00:00:00Z"),
        });
        let fit = FitSpec::parse("units=2,t=4h", Dur::parse("1h").unwrap()).unwrap();
        let now = ts("2026-11-23T11:00:00Z");
        let slot = earliest_slot(&fit, &[], &[a, b], &Policy::default(), now, now).unwrap();
        assert_eq!(slot.node.as_str(), "a");
        assert_eq!(slot.units, [0, 1]);
        assert_eq!(slot.start, ts("2026-11-23T14:00:00Z"));
        assert_eq!(
            slot.alloc,
            "kloigos alloc -w a --units 2 -t 4h --at 2026-11-23T14:00:00+00:00"
        );
    }

    #[test]
    fn a_week_is_seven_local_days_across_dst() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let from = ts("2026-10-23T22:00:00Z"); // Sat 24 Oct 00:00 CEST
        let end = span_end(from, Dur::parse("7d").unwrap(), &paris).unwrap();
        assert_eq!(end, ts("2026-10-30T23:00:00Z")); // Sat 31 Oct 00:00 CET
        let end = span_end(from, Dur::parse("36h").unwrap(), &paris).unwrap();
        assert_eq!(end, ts("2026-10-25T10:00:00Z"));
        // "24h" is 24 hours, even on the 25-hour day.
        let end = span_end(from, Dur::parse("24h").unwrap(), &paris).unwrap();
        assert_eq!(end, ts("2026-10-24T22:00:00Z"));
        for bad in ["30m", "32d"] {
            let e = span_end(from, Dur::parse(bad).unwrap(), &paris).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Usage);
        }
    }
}
