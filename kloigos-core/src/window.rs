//! Weekly booking windows (`Mon-Fri 08:00-20:00`, `22:00-06:00`) in the
//! cluster's time zone, DST-correct: each occurrence is resolved from local
//! wall-clock times, so a window keeps its local hours across a DST change.

use std::fmt;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

const FORMS: &str = "write [DAYS] HH:MM-HH:MM, e.g. 'Mon-Fri 08:00-20:00', 'Sat,Sun 00:00-24:00' or '22:00-06:00' (crosses midnight)";
const DAYS: [(&str, Weekday); 7] = [
    ("Mon", Weekday::Monday),
    ("Tue", Weekday::Tuesday),
    ("Wed", Weekday::Wednesday),
    ("Thu", Weekday::Thursday),
    ("Fri", Weekday::Friday),
    ("Sat", Weekday::Saturday),
    ("Sun", Weekday::Sunday),
];

/// One weekly window: the days it opens on and its local opening hours.
/// An end at or before the start means the window closes the next day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Indexed Monday = 0; which days the window opens on.
    days: [bool; 7],
    /// Opening time, minutes after local midnight.
    start_min: u16,
    /// Closing time, minutes after local midnight (1440 = midnight at the end of the day).
    end_min: u16,
    text: String,
}

impl Window {
    /// Parses `[DAYS] HH:MM-HH:MM`; DAYS is a comma list of days or day ranges.
    pub fn parse(text: &str) -> Result<Window> {
        let bad = |why: &str| Error::invalid("window", text, format!("{why}; {FORMS}"));
        let t = text.trim();
        let (days_part, hours) = match t.rsplit_once(' ') {
            Some((d, h)) => (Some(d.trim()), h),
            None => (None, t),
        };
        let mut days = [days_part.is_none(); 7];
        if let Some(spec) = days_part {
            for item in spec.split(',') {
                let item = item.trim();
                let (a, b) = item.split_once('-').unwrap_or((item, item));
                let a =
                    day_index(a).ok_or_else(|| bad(&format!("'{a}' is not a day (Mon..Sun)")))?;
                let b =
                    day_index(b).ok_or_else(|| bad(&format!("'{b}' is not a day (Mon..Sun)")))?;
                let mut i = a;
                loop {
                    days[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
        }
        let (s, e) = hours
            .split_once('-')
            .ok_or_else(|| bad("missing the hours"))?;
        let start_min = clock(s)
            .filter(|m| *m < 1440)
            .ok_or_else(|| bad(&format!("'{s}' is not HH:MM")))?;
        let end_min = clock(e).ok_or_else(|| bad(&format!("'{e}' is not HH:MM")))?;
        Ok(Window {
            days,
            start_min,
            end_min,
            text: t.to_string(),
        })
    }

    /// The window's occurrence that opens on local date `day`, if it opens that day.
    fn occurrence(&self, tz: &TimeZone, day: Date) -> Option<(Timestamp, Timestamp)> {
        let idx = day.weekday().to_monday_zero_offset() as usize;
        if !self.days[idx] {
            return None;
        }
        let start = at_local(tz, day, self.start_min)?;
        let end_day = if self.end_min <= self.start_min {
            day.tomorrow().ok()?
        } else {
            day
        };
        let end = at_local(tz, end_day, self.end_min)?;
        (end > start).then_some((start, end))
    }
}

fn day_index(s: &str) -> Option<usize> {
    let s = s.to_ascii_lowercase();
    DAYS.iter().position(|(short, long)| {
        s == short.to_ascii_lowercase() || s == format!("{long:?}").to_ascii_lowercase()
    })
}

fn clock(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// The instant of local time `minutes` after midnight on `day`; a time in a
/// DST gap moves forward, a repeated time takes its first occurrence.
fn at_local(tz: &TimeZone, day: Date, minutes: u16) -> Option<Timestamp> {
    let midnight = day.to_datetime(jiff::civil::time(0, 0, 0, 0));
    let dt = midnight.checked_add(i64::from(minutes).minutes()).ok()?;
    tz.to_ambiguous_timestamp(dt).compatible().ok()
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Window::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The open intervals of `windows` that touch `[from, to)`, merged where they
/// meet or overlap, in order. No windows means always open.
pub fn open_intervals(
    windows: &[Window],
    tz: &TimeZone,
    from: Timestamp,
    to: Timestamp,
) -> Vec<(Timestamp, Timestamp)> {
    if windows.is_empty() {
        return vec![(from, to.max(from))];
    }
    let first = from
        .to_zoned(tz.clone())
        .date()
        .yesterday()
        .unwrap_or(Date::MIN);
    let last = to.to_zoned(tz.clone()).date();
    let mut occ: Vec<(Timestamp, Timestamp)> = Vec::new();
    let mut day = first;
    while day <= last {
        occ.extend(windows.iter().filter_map(|w| w.occurrence(tz, day)));
        match day.tomorrow() {
            Ok(d) => day = d,
            Err(_) => break,
        }
    }
    occ.sort();
    let mut merged: Vec<(Timestamp, Timestamp)> = Vec::new();
    for (s, e) in occ {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.retain(|(s, e)| *e > from && *s < to);
    merged
}

/// Whether `[start, end)` lies inside one (merged) open interval.
pub fn allows(windows: &[Window], tz: &TimeZone, start: Timestamp, end: Timestamp) -> bool {
    windows.is_empty()
        || open_intervals(windows, tz, start, end)
            .iter()
            .any(|(s, e)| *s <= start && end <= *e)
}

/// The earliest start at or after `after` (and before `horizon`) at which a
/// span of `len` fits inside one open interval.
pub fn earliest_fit(
    windows: &[Window],
    tz: &TimeZone,
    after: Timestamp,
    len: jiff::SignedDuration,
    horizon: Timestamp,
) -> Option<Timestamp> {
    let far = horizon.checked_add(len).ok()?;
    open_intervals(windows, tz, after, far)
        .into_iter()
        .map(|(s, e)| (s.max(after), e))
        .find(|(s, e)| s.checked_add(len).is_ok_and(|end| end <= *e) && *s < horizon)
        .map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ts;

    fn paris() -> TimeZone {
        TimeZone::get("Europe/Paris").unwrap()
    }

    #[test]
    fn parses_forms_and_rejects_with_hint() {
        assert!(Window::parse("Mon-Fri 08:00-20:00").is_ok());
        assert!(Window::parse("22:00-06:00").is_ok());
        assert!(Window::parse("Sat,Sun 00:00-24:00").is_ok());
        assert!(Window::parse("Fri-Mon 18:00-08:00").is_ok());
        for bad in [
            "Mon-Fri",
            "Xyz 08:00-09:00",
            "08:00",
            "25:00-26:00",
            "8-20",
            "Mon 08:00-24:30",
        ] {
            let e = Window::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("'{bad}'")) && e.contains("Mon-Fri 08:00-20:00"),
                "{e}"
            );
        }
    }

    #[test]
    fn weekday_window_in_local_time() {
        let w = [Window::parse("Mon-Fri 08:00-20:00").unwrap()];
        let tz = paris();
        // Monday 2026-11-23, Paris is UTC+1.
        assert!(allows(
            &w,
            &tz,
            ts("2026-11-23T07:00:00Z"),
            ts("2026-11-23T19:00:00Z")
        ));
        assert!(!allows(
            &w,
            &tz,
            ts("2026-11-23T06:59:00Z"),
            ts("2026-11-23T08:00:00Z")
        ));
        assert!(!allows(
            &w,
            &tz,
            ts("2026-11-23T18:00:00Z"),
            ts("2026-11-23T19:00:01Z")
        ));
        // Saturday.
        assert!(!allows(
            &w,
            &tz,
            ts("2026-11-28T10:00:00Z"),
            ts("2026-11-28T11:00:00Z")
        ));
    }

    #[test]
    fn across_midnight() {
        let w = [Window::parse("22:00-06:00").unwrap()];
        let tz = TimeZone::UTC;
        assert!(allows(
            &w,
            &tz,
            ts("2026-11-23T23:00:00Z"),
            ts("2026-11-24T05:00:00Z")
        ));
        assert!(allows(
            &w,
            &tz,
            ts("2026-11-24T01:00:00Z"),
            ts("2026-11-24T06:00:00Z")
        ));
        assert!(!allows(
            &w,
            &tz,
            ts("2026-11-24T05:00:00Z"),
            ts("2026-11-24T07:00:00Z")
        ));
    }

    #[test]
    fn adjacent_days_merge_into_one_window() {
        let w = [Window::parse("Mon-Fri 00:00-24:00").unwrap()];
        let tz = TimeZone::UTC;
        // Monday noon to Wednesday noon crosses two midnights inside the window.
        assert!(allows(
            &w,
            &tz,
            ts("2026-11-23T12:00:00Z"),
            ts("2026-11-25T12:00:00Z")
        ));
        // Into Saturday: refused.
        assert!(!allows(
            &w,
            &tz,
            ts("2026-11-27T12:00:00Z"),
            ts("2026-11-28T01:00:00Z")
        ));
    }

    #[test]
    fn dst_spring_forward_keeps_local_hours() {
        // Europe/Paris switches to UTC+2 on Sunday 2027-03-28 at 02:00.
        let w = [Window::parse("08:00-20:00").unwrap()];
        let tz = paris();
        // Saturday before: 08:00 local = 07:00Z. Sunday after: 08:00 local = 06:00Z.
        assert!(allows(
            &w,
            &tz,
            ts("2027-03-27T07:00:00Z"),
            ts("2027-03-27T19:00:00Z")
        ));
        assert!(allows(
            &w,
            &tz,
            ts("2027-03-28T06:00:00Z"),
            ts("2027-03-28T18:00:00Z")
        ));
        assert!(!allows(
            &w,
            &tz,
            ts("2027-03-28T06:00:00Z"),
            ts("2027-03-28T18:30:00Z")
        ));
    }

    #[test]
    fn dst_night_window_is_an_hour_shorter_or_longer() {
        let w = [Window::parse("22:00-06:00").unwrap()];
        let tz = paris();
        // Night of 2027-03-27/28 (spring forward): 22:00+01 = 21:00Z to 06:00+02 = 04:00Z, 7 hours.
        let iv = open_intervals(
            &w,
            &tz,
            ts("2027-03-27T22:00:00Z"),
            ts("2027-03-28T00:00:00Z"),
        );
        assert_eq!(
            iv,
            vec![(ts("2027-03-27T21:00:00Z"), ts("2027-03-28T04:00:00Z"))]
        );
        // Night of 2026-10-24/25 (fall back): 22:00+02 = 20:00Z to 06:00+01 = 05:00Z, 9 hours.
        let iv = open_intervals(
            &w,
            &tz,
            ts("2026-10-24T22:00:00Z"),
            ts("2026-10-25T00:00:00Z"),
        );
        assert_eq!(
            iv,
            vec![(ts("2026-10-24T20:00:00Z"), ts("2026-10-25T05:00:00Z"))]
        );
    }

    #[test]
    fn earliest_fit_finds_the_next_opening() {
        let w = [Window::parse("Mon-Fri 08:00-20:00").unwrap()];
        let tz = TimeZone::UTC;
        let hour = jiff::SignedDuration::from_hours(1);
        // Friday 19:30: an hour no longer fits; next is Monday 08:00.
        let got = earliest_fit(
            &w,
            &tz,
            ts("2026-11-27T19:30:00Z"),
            hour,
            ts("2026-12-31T00:00:00Z"),
        );
        assert_eq!(got, Some(ts("2026-11-30T08:00:00Z")));
        let none = earliest_fit(
            &w,
            &tz,
            ts("2026-11-27T19:30:00Z"),
            jiff::SignedDuration::from_hours(13),
            ts("2026-12-31T00:00:00Z"),
        );
        assert_eq!(none, None);
    }
}
