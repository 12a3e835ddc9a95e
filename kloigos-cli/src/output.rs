//! Printing: aligned tables, colors on terminals only, times in the
//! cluster's zone.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use kloigos_core::booking::Booking;
use kloigos_core::duration::human_secs;
pub use kloigos_core::printable::escape;
use serde::Serialize;

/// A color for a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Default.
    Plain,
    /// Good news (free).
    Green,
    /// Partly used / warnings.
    Yellow,
    /// Full, drained, errors.
    Red,
    /// Secondary text.
    Dim,
    /// Headers.
    Bold,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Plain => "",
            Paint::Green => "\x1b[32m",
            Paint::Yellow => "\x1b[33m",
            Paint::Red => "\x1b[31m",
            Paint::Dim => "\x1b[2m",
            Paint::Bold => "\x1b[1m",
        }
    }
}

/// Rows of cells printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<(String, Paint)>>,
}

impl Table {
    /// A table with a header row.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header
                .iter()
                .map(|h| (h.to_string(), Paint::Bold))
                .collect()],
        }
    }

    /// Adds a row of plain cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| (c, Paint::Plain)).collect());
    }

    /// Adds a row with per-cell colors.
    pub fn painted(&mut self, cells: Vec<(String, Paint)>) {
        self.rows.push(cells);
    }

    /// Renders the table; colors only when `color`.
    pub fn render(&self, color: bool) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut width = vec![0; cols];
        for r in &self.rows {
            for (i, (c, _)) in r.iter().enumerate() {
                width[i] = width[i].max(escape(c).chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, (c, p)) in r.iter().enumerate() {
                let pad = if i + 1 == r.len() {
                    0
                } else {
                    width[i] - escape(c).chars().count() + 2
                };
                let c = &escape(c);
                if color && *p != Paint::Plain {
                    line.push_str(p.code());
                    line.push_str(c);
                    line.push_str("\x1b[0m");
                } else {
                    line.push_str(c);
                }
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A timestamp in the cluster's zone, e.g. `2026-11-23 14:00 CET`.
pub fn local(ts: Timestamp, tz: &TimeZone) -> String {
    ts.to_zoned(tz.clone())
        .strftime("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// "ends in 1h30m" style text for a booking at `now`.
pub fn status_of(b: &Booking, now: Timestamp) -> String {
    if b.start > now {
        format!(
            "starts in {}",
            human_secs(b.start.as_second() - now.as_second())
        )
    } else if b.end > now {
        format!("{} left", human_secs(b.end.as_second() - now.as_second()))
    } else {
        "ended".into()
    }
}

/// Prints a value as pretty JSON on stdout, with DEL, C1 and bidi
/// controls escaped as serde_json leaves them raw (a note from an old file
/// may hold them, and JSON output is read on terminals too).
pub fn print_json<T: Serialize>(value: &T) {
    use std::io::Write;
    // Our values serialize infallibly (no maps with non-string keys).
    let text = serde_json::to_string_pretty(value).expect("kloigos values serialize");
    let mut out = std::io::stdout().lock();
    // A closed stdout is not worth a panic.
    let _ = writeln!(out, "{}", kloigos_core::printable::escape_json(text));
}

/// Bookings as commands print them ([`Booking::to_json`]).
pub fn bookings_json<'a>(
    bookings: impl IntoIterator<Item = &'a Booking>,
) -> Vec<kloigos_core::booking::Printed<'a>> {
    bookings.into_iter().map(Booking::to_json).collect()
}

/// A table of bookings; a GPUS column when any of them holds GPUs.
pub fn bookings_table(bookings: &[Booking], now: Timestamp, tz: &TimeZone) -> Table {
    let gpus = bookings.iter().any(|b| b.gpus.is_some());
    let mut header = vec!["ID", "USER", "NODE", "UNITS", "CPUS", "PORTS"];
    if gpus {
        header.push("GPUS");
    }
    header.extend(["START", "END", "STATUS", "NOTE"]);
    let mut t = Table::new(&header);
    for b in bookings {
        let units = if b.units[0] == b.units[1] {
            b.units[0].to_string()
        } else {
            format!("{}-{}", b.units[0], b.units[1])
        };
        let mut row = vec![
            b.id.to_string(),
            b.user.to_string(),
            b.node.to_string(),
            units,
            b.cpus.to_string(),
            b.ports.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        ];
        if gpus {
            row.push(
                b.gpus
                    .as_ref()
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
        row.extend([
            local(b.start, tz),
            local(b.end, tz),
            status_of(b, now),
            b.note.as_str().to_string(),
        ]);
        t.row(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_color_is_optional() {
        let mut t = Table::new(&["A", "BB"]);
        t.painted(vec![("xyz".into(), Paint::Red), ("1".into(), Paint::Plain)]);
        assert_eq!(t.render(false), "A    BB\nxyz  1\n");
        assert!(t.render(true).contains("\x1b[31mxyz\x1b[0m  1"));
    }

    #[test]
    fn cells_from_files_cannot_drive_the_terminal_or_forge_rows() {
        let mut t = Table::new(&["ID", "NOTE"]);
        t.row(vec![
            "n:1".into(),
            "\x1b]0;t\x07\x1b[2J\r\nvm:99 secalice".into(),
        ]);
        t.row(vec!["n:2".into(), "ok".into()]);
        let out = t.render(false);
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(!out.contains(['\x1b', '\r', '\x07']), "{out:?}");
        assert!(out.lines().all(|l| !l.starts_with("vm:99")), "{out}");
    }
}
