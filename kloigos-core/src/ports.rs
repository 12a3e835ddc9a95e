//! Port ranges (`21000-21999`).

use std::fmt;

use crate::error::{Error, Result};
use crate::text::serde_as_text;

/// An inclusive, non-empty range of TCP/UDP ports, never including port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// A range from `first` to `last` inclusive; refuses 0 and reversed ranges.
    pub fn new(first: u16, last: u16) -> Result<PortRange> {
        if first == 0 || first > last {
            return Err(Error::invalid(
                "port range",
                &format!("{first}-{last}"),
                "give FIRST-LAST with 1 <= FIRST <= LAST <= 65535, like 20000-29999",
            ));
        }
        Ok(PortRange { first, last })
    }

    /// Parses `A-B` (or a single port `A`).
    pub fn parse(text: &str) -> Result<PortRange> {
        let bad = || {
            Error::invalid(
                "port range",
                text,
                "give FIRST-LAST with 1 <= FIRST <= LAST <= 65535, like 20000-29999",
            )
        };
        let (a, b) = text
            .trim()
            .split_once('-')
            .unwrap_or((text.trim(), text.trim()));
        let a = a.trim().parse().map_err(|_| bad())?;
        let b = b.trim().parse().map_err(|_| bad())?;
        PortRange::new(a, b).map_err(|_| bad())
    }

    /// First port of the range.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// Last port of the range (inclusive).
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Splits the range into `parts` equal slices (the remainder unused) and
    /// returns slice `index`; `None` when a slice would hold no port.
    pub fn slice(&self, parts: u32, index: u32) -> Option<PortRange> {
        let per = self.len() / parts.max(1);
        if per == 0 || index >= parts {
            return None;
        }
        let first = u32::from(self.first) + index * per;
        let last = first + per - 1;
        Some(PortRange {
            first: u16::try_from(first).ok()?,
            last: u16::try_from(last).ok()?,
        })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

serde_as_text!(
    PortRange,
    "a port range such as \"20000-20099\"",
    PortRange::parse
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let r = PortRange::parse("20000-29999").unwrap();
        assert_eq!((r.first(), r.last(), r.len()), (20000, 29999, 10000));
        assert_eq!(r.to_string(), "20000-29999");
        assert_eq!(PortRange::parse("80").unwrap().len(), 1);
    }

    #[test]
    fn rejects() {
        for bad in ["0-10", "10-5", "a-b", "", "70000-70001", "1-2-3"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slices_evenly_and_never_overlap() {
        let r = PortRange::parse("20000-20999").unwrap();
        let s: Vec<_> = (0..16).map(|i| r.slice(16, i).unwrap()).collect();
        assert_eq!(s[0].to_string(), "20000-20061");
        assert_eq!(s[15].to_string(), "20930-20991");
        for w in s.windows(2) {
            assert_eq!(w[0].last() + 1, w[1].first());
        }
        assert!(r.slice(2000, 0).is_none());
        assert!(r.slice(16, 16).is_none());
    }
}
