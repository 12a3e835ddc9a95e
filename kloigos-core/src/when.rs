//! Points in time as users type them: `now`, RFC 3339, `HH:MM` (the next
//! such local time), `YYYY-MM-DD HH:MM` (local), `+2h` (from now).

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::duration::Dur;
use crate::error::{Error, Result};

const FORMS: &str = "use now, +DURATION (+2h), HH:MM (next such time), YYYY-MM-DD HH:MM (cluster time zone) or RFC 3339 (2026-11-23T14:00:00Z)";

/// Parses a time relative to `now`, reading local forms in `tz`.
pub fn parse_time(text: &str, now: Timestamp, tz: &TimeZone) -> Result<Timestamp> {
    let t = text.trim();
    let bad = || Error::invalid("time", text, FORMS);
    if t.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(rest) = t.strip_prefix('+') {
        let d = Dur::parse(rest).map_err(|_| bad())?;
        return now.checked_add(d.signed()).map_err(|_| bad());
    }
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts);
    }
    if let Some((h, m)) = t.split_once(':').filter(|_| t.len() <= 5) {
        let h: i8 = h.parse().map_err(|_| bad())?;
        let m: i8 = m.parse().map_err(|_| bad())?;
        if !(0..24).contains(&h) || !(0..60).contains(&m) || t.len() < 4 {
            return Err(bad());
        }
        let today = now.to_zoned(tz.clone()).date();
        for day in [Some(today), today.tomorrow().ok()].into_iter().flatten() {
            let dt = day.to_datetime(jiff::civil::time(h, m, 0, 0));
            let ts = tz
                .to_ambiguous_timestamp(dt)
                .compatible()
                .map_err(|_| bad())?;
            if ts > now {
                return Ok(ts);
            }
        }
        return Err(bad());
    }
    let local = t.replacen(' ', "T", 1);
    if let Ok(dt) = local.parse::<DateTime>() {
        return tz
            .to_ambiguous_timestamp(dt)
            .compatible()
            .map_err(|_| bad());
    }
    Err(bad())
}

/// How long ago a requested start may be and still be taken as now: the
/// minute it can take to type a command whose `--at` was "now" in mind.
pub const PAST_GRACE_S: i64 = 60;

/// Whether a requested start `at` is in the past at `now`: earlier than
/// `now` by more than [`PAST_GRACE_S`], counted in whole seconds. A start
/// within the grace is taken as now; one before it is refused.
pub fn is_past(at: Timestamp, now: Timestamp) -> bool {
    at.as_second() < now.as_second() - PAST_GRACE_S
}

/// `ts` rounded down to whole seconds: stored times carry no fractions.
pub fn whole_seconds(ts: Timestamp) -> Timestamp {
    Timestamp::from_second(ts.as_second()).unwrap_or(ts)
}

/// `ts` plus `secs` seconds, saturating at the end of time jiff supports.
pub fn plus_secs(ts: Timestamp, secs: i64) -> Timestamp {
    ts.checked_add(secs.seconds()).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ts;

    #[test]
    fn forms() {
        let now = ts("2026-11-23T10:15:00Z");
        let tz = TimeZone::get("Europe/Paris").unwrap();
        assert_eq!(parse_time("now", now, &tz).unwrap(), now);
        assert_eq!(
            parse_time("+2h", now, &tz).unwrap(),
            ts("2026-11-23T12:15:00Z")
        );
        assert_eq!(
            parse_time("+90", now, &tz).unwrap(),
            ts("2026-11-23T10:16:30Z")
        );
        assert_eq!(
            parse_time("2026-11-24T08:00:00+01:00", now, &tz).unwrap(),
            ts("2026-11-24T07:00:00Z")
        );
        // 14:00 Paris is still ahead today (13:00Z).
        assert_eq!(
            parse_time("14:00", now, &tz).unwrap(),
            ts("2026-11-23T13:00:00Z")
        );
        // 09:00 Paris has passed today (08:00Z): tomorrow.
        assert_eq!(
            parse_time("09:00", now, &tz).unwrap(),
            ts("2026-11-24T08:00:00Z")
        );
        assert_eq!(
            parse_time("2026-12-01 09:30", now, &tz).unwrap(),
            ts("2026-12-01T08:30:00Z")
        );
    }

    #[test]
    fn past_only_beyond_the_grace() {
        let now = ts("2026-11-23T10:15:00Z");
        assert!(!is_past(now, now));
        assert!(!is_past(ts("2026-11-23T12:00:00Z"), now));
        // Exactly the grace ago still counts as now; a second more does not.
        assert!(!is_past(ts("2026-11-23T10:14:00Z"), now));
        assert!(is_past(ts("2026-11-23T10:13:59Z"), now));
        assert!(is_past(ts("2026-11-22T10:15:00Z"), now));
        // Whole seconds: fractions of `now` do not narrow the grace.
        let late = ts("2026-11-23T10:15:00.999Z");
        assert!(!is_past(ts("2026-11-23T10:14:00Z"), late));
        assert!(is_past(ts("2026-11-23T10:13:59.999Z"), late));
    }

    #[test]
    fn rejects_with_forms() {
        let now = ts("2026-11-23T10:15:00Z");
        for bad in ["tomorrow", "25:00", "+x", "", "9:75", "2026-13-01 10:00"] {
            let e = parse_time(bad, now, &TimeZone::UTC)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("'{bad}'")) && e.contains("HH:MM"),
                "{e}"
            );
        }
    }
}
