//! The kernel's list notation (`0-7,16-23`), shared by CPU and GPU sets.

use std::fmt;

use crate::error::{Error, Result};

/// What a list holds, for its error messages.
pub(crate) struct Kind {
    /// The list's name in errors ("CPU list").
    pub what: &'static str,
    /// One member ("CPU").
    pub one: &'static str,
    /// How to write one ("write CPU numbers and ranges like 0-7,16-23").
    pub hint: &'static str,
    /// The highest member accepted.
    pub max: u32,
}

/// Parses `text` into ascending members; refuses empty lists, reversed
/// ranges, duplicates and members above `kind.max`.
pub(crate) fn parse(text: &str, kind: &Kind) -> Result<Vec<u32>> {
    let bad = |why: &str| Error::invalid(kind.what, text, format!("{why}; {}", kind.hint));
    let mut ids = Vec::new();
    for part in text.trim().split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let not_num = || bad(&format!("'{part}' is not a number or range"));
        let a: u32 = a.parse().map_err(|_| not_num())?;
        let b: u32 = b.parse().map_err(|_| not_num())?;
        if a > b {
            return Err(bad(&format!("range '{part}' is reversed")));
        }
        if b > kind.max {
            return Err(bad(&format!("{} {b} is above {}", kind.one, kind.max)));
        }
        ids.extend(a..=b);
    }
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != n {
        return Err(bad(&format!("a {} is listed twice", kind.one)));
    }
    Ok(ids)
}

/// Writes ascending `ids` with runs as ranges: `0-3,8,10-11`.
pub(crate) fn write(ids: &[u32], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut i = 0;
    let mut first = true;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end + 1 {
            i += 1;
            end = ids[i];
        }
        if !first {
            f.write_str(",")?;
        }
        first = false;
        if start == end {
            write!(f, "{start}")?;
        } else {
            write!(f, "{start}-{end}")?;
        }
        i += 1;
    }
    Ok(())
}
