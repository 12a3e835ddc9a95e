//! Durations as users type them: `3600` (seconds, as Kiwi), `90m`, `2h30m`,
//! `1d`, `1w`, `D-HH:MM:SS`, `HH:MM:SS`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

const FORMS: &str = "use seconds (3600), units (90m, 2h30m, 1d, 1w, 45s), HH:MM:SS or D-HH:MM:SS";

/// The longest duration accepted anywhere: ten years, to keep arithmetic far
/// from overflow.
const MAX_SECS: u64 = 10 * 366 * 86_400;

/// A positive length of time, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(u64);

impl Dur {
    /// A duration of `secs` seconds; refuses zero and absurdly long spans.
    pub fn from_secs(secs: u64) -> Result<Dur> {
        if secs == 0 || secs > MAX_SECS {
            return Err(Error::invalid(
                "duration",
                &format!("{secs}s"),
                "a duration must be between 1 second and 10 years",
            ));
        }
        Ok(Dur(secs))
    }

    /// The duration in seconds.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// The duration as a signed jiff duration, for timestamp arithmetic.
    pub fn signed(self) -> jiff::SignedDuration {
        // MAX_SECS fits in i64.
        jiff::SignedDuration::from_secs(self.0 as i64)
    }

    /// Parses any of the accepted forms; the error quotes the text and lists them.
    pub fn parse(text: &str) -> Result<Dur> {
        let t = text.trim();
        let bad = || Error::invalid("duration", text, FORMS);
        let secs = if t.is_empty() {
            return Err(bad());
        } else if t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse::<u64>().map_err(|_| bad())?
        } else if t.contains(':') {
            parse_clock(t).ok_or_else(bad)?
        } else {
            parse_units(t).ok_or_else(bad)?
        };
        Dur::from_secs(secs).map_err(|_| {
            Error::invalid(
                "duration",
                text,
                "a duration must be between 1 second and 10 years",
            )
        })
    }
}

/// `HH:MM:SS` or `D-HH:MM:SS` (Slurm's notation).
fn parse_clock(t: &str) -> Option<u64> {
    let (days, clock) = match t.split_once('-') {
        Some((d, c)) => (num(d)?, c),
        None => (0, t),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return None;
    };
    let (h, m, s) = (num(h)?, num(m)?, num(s)?);
    if m >= 60 || s >= 60 {
        return None;
    }
    days.checked_mul(86_400)?
        .checked_add(h.checked_mul(3600)?)?
        .checked_add(m * 60 + s)
}

/// `1w2d3h4m5s` in any subset, units in decreasing order, each at most once.
fn parse_units(t: &str) -> Option<u64> {
    const UNITS: [(char, u64); 5] = [
        ('w', 604_800),
        ('d', 86_400),
        ('h', 3600),
        ('m', 60),
        ('s', 1),
    ];
    let mut total: u64 = 0;
    let mut rest = t;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n = num(&rest[..digits])?;
        let unit = rest[digits..].chars().next()?;
        let pos = UNITS.iter().position(|(c, _)| *c == unit)?;
        if pos < next_unit {
            return None;
        }
        next_unit = pos + 1;
        total = total.checked_add(n.checked_mul(UNITS[pos].1)?)?;
        rest = &rest[digits + 1..];
    }
    Some(total)
}

fn num(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Dur {
    /// The shortest unit form: `1w`, `2h30m`, `45s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        for (unit, size) in [
            ("w", 604_800),
            ("d", 86_400),
            ("h", 3600),
            ("m", 60),
            ("s", 1),
        ] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    /// Accepts the string forms and a bare number of seconds.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::text::from_str_or_u64(
            d,
            "a duration such as \"1h30m\" or a number of seconds",
            Dur::parse,
            Dur::from_secs,
        )
    }
}

/// Formats a span of seconds that may be zero or negative, for "time left".
pub fn human_secs(secs: i64) -> String {
    if secs <= 0 {
        return "0s".into();
    }
    let d = Dur(secs as u64);
    // Show at most the two largest units: "2d3h", "1h30m", "45s".
    let full = d.to_string();
    let mut out = String::new();
    let mut units = 0;
    for c in full.chars() {
        out.push(c);
        if c.is_ascii_alphabetic() {
            units += 1;
            if units == 2 {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepted_forms() {
        for (text, secs) in [
            ("3600", 3600),
            ("90m", 5400),
            ("2h30m", 9000),
            ("1d", 86_400),
            ("1w", 604_800),
            ("45s", 45),
            ("1d12h", 129_600),
            ("01:30:00", 5400),
            ("2-00:00:00", 172_800),
            ("1-12:30:15", 131_415),
        ] {
            assert_eq!(Dur::parse(text).unwrap().secs(), secs, "{text}");
        }
    }

    #[test]
    fn rejects_with_the_text_and_the_forms() {
        for bad in [
            "", "0", "-5", "1x", "h", "30m2h", "1h1h", "1:2", "00:61:00", "1.5h", "99999w",
        ] {
            let e = Dur::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
        assert!(Dur::parse("1x").unwrap_err().to_string().contains("2h30m"));
    }

    #[test]
    fn human() {
        assert_eq!(human_secs(90_061), "1d1h");
        assert_eq!(human_secs(5400), "1h30m");
        assert_eq!(human_secs(-3), "0s");
    }

    #[test]
    fn serde_accepts_numbers_and_strings() {
        assert_eq!(serde_json::from_str::<Dur>("7200").unwrap().secs(), 7200);
        assert_eq!(serde_json::from_str::<Dur>("\"2h\"").unwrap().secs(), 7200);
        assert_eq!(
            serde_json::to_string(&Dur::from_secs(7200).unwrap()).unwrap(),
            "\"2h\""
        );
    }

    proptest! {
        #[test]
        fn display_round_trips(secs in 1u64..MAX_SECS) {
            let d = Dur::from_secs(secs).unwrap();
            prop_assert_eq!(Dur::parse(&d.to_string()).unwrap(), d);
        }
    }
}
