//! `timeline` (alias `cal`): one row per unit, time left to right across
//! the terminal, bookings as bars labelled with their user, closed windows
//! and drained nodes shaded, then the bookings in view and, with `--fits`,
//! the earliest slot that fits and the `alloc` line that books it.

use std::io::IsTerminal;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use kloigos_core::booking::Booking;
use kloigos_core::dashboard::{user_colour, USER_COLOURS};
use kloigos_core::duration::{human_secs, Dur};
use kloigos_core::names::{Label, UserName};
use kloigos_core::policy::Policy;
use kloigos_core::printable::escape;
use kloigos_core::state::NodeState;
use kloigos_core::timeline::{self, Filter, FitSpec, Kind, NodeRows, Slot};
use serde::Serialize;

use crate::args::{ColorWhen, TimelineArgs};
use crate::book::read_all;
use crate::ctx::{node_arg, Ctx};
use crate::error::{CliError, Result};
use crate::output::print_json;

/// Narrowest drawing; a narrower terminal wraps.
const MIN_WIDTH: usize = 40;
/// Widest drawing, whatever the terminal says.
const MAX_WIDTH: usize = 400;
/// Most bookings listed under the chart.
const MAX_LISTED: usize = 40;

/// Everything a drawing needs, read and decided before drawing.
pub struct View<'a> {
    /// Cluster time zone.
    pub tz: &'a TimeZone,
    /// Its name, for the title.
    pub tz_name: &'a str,
    /// Span start.
    pub from: Timestamp,
    /// Span end.
    pub to: Timestamp,
    /// The clock.
    pub now: Timestamp,
    /// Columns to draw in.
    pub width: usize,
    /// Whether to colour.
    pub color: bool,
    /// The caller's uid: their bookings stand out.
    pub caller_uid: u32,
}

/// `timeline --json`.
#[derive(Serialize)]
struct TimelineJson<'a> {
    from: Timestamp,
    to: Timestamp,
    now: Timestamp,
    timezone: &'a str,
    nodes: &'a [NodeRows],
    bookings: Vec<&'a Booking>,
    fits: Option<&'a Slot>,
    errors: Vec<serde_json::Value>,
}

/// `timeline`.
pub fn timeline(ctx: &Ctx, a: &TimelineArgs) -> Result<u8> {
    let policy = ctx.policy()?;
    let tz = policy.tz_or_utc();
    let now = what_if_now(ctx, a.now.as_deref(), &tz)?;
    let span = Dur::parse(&a.span).map_err(CliError::from)?;
    let from = match &a.from {
        Some(t) => kloigos_core::when::parse_time(t, now, &tz)?,
        None => default_from(now, span, &tz),
    };
    let to = timeline::span_end(from, span, &tz)?;
    let labels = a
        .labels
        .iter()
        .map(|l| Label::new(l).map_err(CliError::from))
        .collect::<Result<Vec<_>>>()?;
    let filter = Filter {
        user: a
            .user
            .as_deref()
            .map(|u| UserName::new(u).map_err(CliError::from))
            .transpose()?,
    };
    let fit = a
        .fits
        .as_deref()
        .map(|f| FitSpec::parse(f, policy.default_duration))
        .transpose()?;
    let (states, bad) = selected(ctx, &a.nodes, &labels)?;
    crate::watchdog::done();
    let rows: Vec<NodeRows> = states
        .iter()
        .map(|s| timeline::node_rows(s, &tz, from, to, &filter))
        .collect();
    let in_view: Vec<&Booking> = states
        .iter()
        .flat_map(|s| &s.bookings)
        .filter(|b| b.end > from && b.start < to && b.end > b.start)
        .filter(|b| filter.user.as_ref().is_none_or(|u| &b.user == u))
        .collect();
    let slot = fit
        .as_ref()
        .and_then(|f| timeline::earliest_slot(f, &labels, &states, &policy, from.max(now), now));
    if ctx.json {
        print_json(&TimelineJson {
            from,
            to,
            now,
            timezone: &policy.timezone,
            nodes: &rows,
            bookings: in_view,
            fits: slot.as_ref(),
            errors: bad
                .iter()
                .map(|(n, e)| serde_json::json!({"name": n, "error": e.to_string()}))
                .collect(),
        });
    } else {
        let view = View {
            tz: &tz,
            tz_name: &policy.timezone,
            from,
            to,
            now,
            width: width(ctx, a.width),
            color: match a.color {
                ColorWhen::Always => true,
                ColorWhen::Never => false,
                ColorWhen::Auto => ctx.color,
            },
            caller_uid: ctx.caller.uid,
        };
        let mut out = draw(&view, &rows, &in_view);
        if let (Some(f), Some(text)) = (&fit, a.fits.as_deref()) {
            out.push_str(&fits_text(&view, f, text, slot.as_ref(), &policy));
        }
        print!("{out}");
        for (n, e) in &bad {
            eprintln!("kloigos: {n}: {e}");
        }
    }
    Ok(if bad.is_empty() { 0 } else { 3 })
}

/// The clock: now, or `--now TIME` (a what-if that only changes what is
/// drawn; these commands never write the shared tree).
pub fn what_if_now(ctx: &Ctx, text: Option<&str>, tz: &TimeZone) -> Result<Timestamp> {
    let now = ctx.now();
    Ok(match text {
        Some(t) => kloigos_core::when::whole_seconds(kloigos_core::when::parse_time(t, now, tz)?),
        None => now,
    })
}

/// The nodes asked for (all by default) that carry `labels`, and the ones
/// that could not be read.
pub fn selected(
    ctx: &Ctx,
    nodes: &[String],
    labels: &[Label],
) -> Result<(Vec<NodeState>, crate::book::Unreadable)> {
    let (mut states, mut bad) = read_all(ctx)?;
    if !nodes.is_empty() {
        let wanted = nodes
            .iter()
            .map(|n| node_arg(n))
            .collect::<Result<Vec<_>>>()?;
        for w in &wanted {
            if !ctx.store.has_node(w) {
                return Err(kloigos_core::Error::Refused(format!(
                    "no node '{w}' in this cluster (see `kloigos info`)"
                ))
                .into());
            }
        }
        states.retain(|s| wanted.contains(&s.node.name));
        bad.retain(|(n, _)| wanted.contains(n));
    }
    states.retain(|s| s.node.has_labels(labels));
    states.sort_by(|a, b| a.node.name.cmp(&b.node.name));
    Ok((states, bad))
}

/// Where the view starts by default: the current local hour for a day or
/// so, the start of today for longer spans.
fn default_from(now: Timestamp, span: Dur, tz: &TimeZone) -> Timestamp {
    let z = now.to_zoned(tz.clone());
    let floored = if span.secs() > 2 * 86_400 {
        z.start_of_day().ok()
    } else {
        z.with()
            .minute(0)
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()
    };
    floored.map_or(now, |z| z.timestamp())
}

/// Columns to draw in: `--width`, else the terminal's, else `COLUMNS`, else 80.
fn width(ctx: &Ctx, asked: Option<u16>) -> usize {
    let w = asked
        .map(usize::from)
        .or_else(terminal_columns)
        .or_else(|| {
            ctx.privs
                .caller_var("COLUMNS")
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(80);
    w.clamp(MIN_WIDTH, MAX_WIDTH)
}

/// The width of the terminal on stdout, if stdout is one.
fn terminal_columns() -> Option<usize> {
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own and
    // pass by a valid pointer; fd 1 stays open for the call.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

/// One cell of the chart.
#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Free,
    Closed,
    Drained,
    /// A booking's cell: which booking (index into the list) and the character shown.
    Bar(usize, char),
}

const CLOSED: char = '░';
const DRAINED: char = '▒';

/// Draws the chart, its legend and the bookings in view.
pub fn draw(v: &View, rows: &[NodeRows], bookings: &[&Booking]) -> String {
    let width = v.width.clamp(MIN_WIDTH, MAX_WIDTH);
    let node_w = rows
        .iter()
        .map(|r| r.node.as_str().chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 16);
    let unit_w = rows
        .iter()
        .map(|r| format!("u{}", r.units.len().saturating_sub(1)).len())
        .max()
        .unwrap_or(2);
    let label_w = node_w + 1 + unit_w + 1;
    let cols = width - label_w;
    let span = (v.to.as_second() - v.from.as_second()).max(1);
    let col_of =
        |t: Timestamp| -> i64 { (t.as_second() - v.from.as_second()) * cols as i64 / span };
    let mut out = String::new();

    // Title.
    let per_col = human_secs(((span / cols as i64 + 30) / 60).max(1) * 60);
    let title = format!(
        "{} → {} {} · {} per column",
        local(v.from, v.tz, "%a %d %b %H:%M"),
        local(v.to, v.tz, "%a %d %b %H:%M"),
        v.tz_name,
        per_col
    );
    out.push_str(&fit(&title, width));
    out.push('\n');

    // Axis: local dates, then hours; ticks DST-correct.
    let (ticks, days) = ticks(v, cols, span);
    let mut date_line: Vec<char> = vec![' '; cols];
    let day_cells = cols as i64 * 86_400 / span;
    let day_fmt = if day_cells >= 11 { "%a %d %b" } else { "%a %d" };
    let now_col = (v.now >= v.from && v.now < v.to).then(|| col_of(v.now) as usize);
    // The start's date, unless a midnight label comes first.
    let mut labels: Vec<(usize, String)> = days
        .iter()
        .map(|(c, t)| (*c, local(*t, v.tz, day_fmt)))
        .collect();
    let first = local(v.from, v.tz, day_fmt);
    if labels
        .first()
        .is_none_or(|(c, _)| *c > first.chars().count() + 1)
    {
        labels.insert(0, (0, first));
    }
    let mut next_free = 0;
    let mut taken: Vec<std::ops::Range<usize>> = Vec::new();
    for (at, text) in labels {
        let len = text.chars().count();
        if at >= next_free && at + len <= cols {
            put(&mut date_line, at, &text);
            next_free = at + len + 1;
            taken.push(at..at + len);
        }
    }
    let mut hour_line: Vec<char> = vec![' '; cols];
    let mut last_end = 0;
    for (c, label) in &ticks {
        if *c >= last_end && *c + label.len() <= cols {
            put(&mut hour_line, *c, label);
            last_end = c + label.len() + 1;
        }
    }
    // The now marker goes where it hides no date (hour labels repeat).
    if let Some(c) = now_col {
        if !taken.iter().any(|r| r.contains(&c)) {
            date_line[c] = '▼';
        } else {
            hour_line[c] = '▼';
        }
    }
    let pad = " ".repeat(label_w);
    out.push_str(&format!("{pad}{}\n", line(&date_line)));
    out.push_str(&format!("{pad}{}\n", line(&hour_line)));
    let tick_cols: Vec<usize> = ticks.iter().map(|(c, _)| *c).collect();

    // Rows.
    let by_id: std::collections::HashMap<&kloigos_core::booking::BookingId, usize> = bookings
        .iter()
        .enumerate()
        .map(|(i, b)| (&b.id, i))
        .collect();
    let index = |id: &kloigos_core::booking::BookingId| by_id.get(id).copied();
    for r in rows {
        for (i, unit) in r.units.iter().enumerate() {
            let mut cells = vec![Cell::Free; cols];
            // Shading by majority of the cell; bookings drawn over it, each at least one cell.
            for iv in &unit.intervals {
                let shade = match iv.kind {
                    Kind::Closed => Cell::Closed,
                    Kind::Drained => Cell::Drained,
                    _ => continue,
                };
                let a = round_col(iv.start, v.from, cols, span);
                let b = round_col(iv.end, v.from, cols, span);
                for c in cells.iter_mut().take(b.min(cols)).skip(a) {
                    *c = shade;
                }
            }
            for iv in unit.intervals.iter().filter(|iv| iv.kind == Kind::Booked) {
                let Some(k) = iv.booking.as_ref().and_then(index) else {
                    continue;
                };
                let a = (col_of(iv.start).max(0) as usize).min(cols - 1);
                let b = (ceil_col(iv.end, v.from, cols, span)).clamp(a + 1, cols);
                let own = bookings[k].uid == v.caller_uid;
                let text = bar_text(bookings[k], b - a, own, iv.start < v.from, iv.end > v.to);
                for (c, ch) in (a..b).zip(text.chars()) {
                    cells[c] = Cell::Bar(k, ch);
                }
            }
            let node_label = if i == 0 {
                fit(r.node.as_str(), node_w)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "{node_label:<node_w$} {:<unit_w$} ",
                format!("u{}", unit.unit)
            ));
            out.push_str(&paint_row(v, &cells, bookings, &tick_cols, now_col));
            out.push('\n');
        }
    }
    if rows.is_empty() {
        out.push_str("no nodes to show (see `kloigos info`)\n");
    }

    // Legend.
    let legend = [
        if v.color {
            "[user id] booked (a colour per user; yours bold)".to_string()
        } else {
            "[user id==] booked, {you##} yours".to_string()
        },
        format!("{CLOSED} closed (outside the node's windows)"),
        format!("{DRAINED} drained"),
        "▼ now".to_string(),
    ];
    out.push_str(&wrap(&legend.join("   "), width));
    for r in rows {
        if let Some(reason) = &r.drained {
            out.push_str(&fit(
                &format!(
                    "{DRAINED} {}: drained ({}), no new bookings",
                    r.node,
                    escape(reason)
                ),
                width,
            ));
            out.push('\n');
        }
        if !r.windows.is_empty() {
            out.push_str(&fit(
                &format!(
                    "{CLOSED} {}: open {} ({})",
                    r.node,
                    r.windows.join("; "),
                    v.tz_name
                ),
                width,
            ));
            out.push('\n');
        }
    }

    // The bookings in view, notes escaped; too many to read is a count.
    if bookings.len() > MAX_LISTED {
        out.push('\n');
        out.push_str(&wrap(
            &format!(
                "{} bookings in view; name nodes, -l LABEL or --user USER to list them (or --json)",
                bookings.len()
            ),
            width,
        ));
    } else if !bookings.is_empty() {
        out.push('\n');
        for b in bookings {
            let mark = if b.uid == v.caller_uid { "*" } else { " " };
            let units = if b.units[0] == b.units[1] {
                format!("u{}", b.units[0])
            } else {
                format!("u{}-{}", b.units[0], b.units[1])
            };
            let end_fmt = if b.end.as_second() - b.start.as_second() < 86_400
                && local(b.start, v.tz, "%F") == local(b.end, v.tz, "%F")
            {
                "%H:%M"
            } else {
                "%a %d %H:%M"
            };
            let mut text = format!(
                "{mark} {} {} {} {} → {}",
                b.id,
                b.user,
                units,
                local(b.start, v.tz, "%a %d %H:%M"),
                local(b.end, v.tz, end_fmt)
            );
            if !b.note.is_empty() {
                text.push_str(&format!("  \"{}\"", escape(b.note.as_str())));
            }
            out.push_str(&fit(&text, width));
            out.push('\n');
        }
    }
    out
}

/// The text under the chart for `--fits`.
fn fits_text(v: &View, f: &FitSpec, asked: &str, slot: Option<&Slot>, policy: &Policy) -> String {
    let asked = escape(asked);
    match slot {
        Some(s) => format!(
            "\nearliest slot for {asked}: {} u{}-{}, {} → {} ({})\n  {}\n",
            s.node,
            s.units[0],
            s.units[1],
            if s.start <= v.now {
                "now".to_string()
            } else {
                local(s.start, v.tz, "%a %d %b %H:%M")
            },
            local(s.end, v.tz, "%a %d %b %H:%M"),
            f.len,
            s.alloc
        ),
        None => format!(
            "\nnothing fits {asked} within max_ahead ({}) on these nodes\n",
            policy.max_ahead
        ),
    }
}

/// Hour ticks (column, label) and local midnights (column, instant).
type Ticks = (Vec<(usize, String)>, Vec<(usize, Timestamp)>);

/// The ticks of the span, DST-correct.
fn ticks(v: &View, cols: usize, span: i64) -> Ticks {
    let cells_per_hour = cols as f64 * 3600.0 / span as f64;
    let step = [1, 2, 3, 4, 6, 12]
        .into_iter()
        .find(|h| cells_per_hour * f64::from(*h) >= 3.0)
        .unwrap_or(24);
    let mut hours = Vec::new();
    let mut days = Vec::new();
    // Quarter hours catch every local full hour, whatever the zone's offset.
    let mut t = Timestamp::from_second(v.from.as_second() - v.from.as_second().rem_euclid(900))
        .unwrap_or(v.from);
    while t < v.to {
        if t >= v.from {
            let z = t.to_zoned(v.tz.clone());
            if z.minute() == 0 {
                let col = ((t.as_second() - v.from.as_second()) * cols as i64 / span) as usize;
                if z.hour() == 0 {
                    days.push((col, t));
                }
                if i32::from(z.hour()) % step == 0 && step < 24 {
                    hours.push((col, format!("{:02}", z.hour())));
                }
            }
        }
        t = match t.checked_add(SignedDuration::from_mins(15)) {
            Ok(n) => n,
            Err(_) => break,
        };
    }
    (hours, days)
}

fn round_col(t: Timestamp, from: Timestamp, cols: usize, span: i64) -> usize {
    let off = (t.as_second() - from.as_second()).clamp(0, span);
    ((off * cols as i64 + span / 2) / span) as usize
}

fn ceil_col(t: Timestamp, from: Timestamp, cols: usize, span: i64) -> usize {
    let off = (t.as_second() - from.as_second()).clamp(0, span);
    ((off * cols as i64 + span - 1) / span) as usize
}

/// The characters of a bar `len` cells long: `[alice n1:3===]`, the label
/// shortened to what fits; `{me n1:4###}` for the caller's own; no bracket
/// where the booking runs past the edge of the view.
fn bar_text(b: &Booking, len: usize, own: bool, cut_left: bool, cut_right: bool) -> String {
    // Your own bookings read differently without colour too: braces and `#`.
    let (fill, left, right) = if own {
        ('#', '{', '}')
    } else {
        ('=', '[', ']')
    };
    let open = if cut_left { fill } else { left };
    let close = if cut_right { fill } else { right };
    match len {
        0 => String::new(),
        1 => fill.to_string(),
        2 => format!("{open}{close}"),
        _ => {
            let inner = len - 2;
            let full = format!("{} {}", b.user, b.id);
            let label: String = if full.chars().count() <= inner {
                full
            } else {
                b.user.as_str().chars().take(inner).collect()
            };
            let rest = inner - label.chars().count();
            format!(
                "{open}{label}{}{close}",
                std::iter::repeat_n(fill, rest).collect::<String>()
            )
        }
    }
}

/// Renders a row of cells, with colour when asked.
fn paint_row(
    v: &View,
    cells: &[Cell],
    bookings: &[&Booking],
    ticks: &[usize],
    now_col: Option<usize>,
) -> String {
    let mut s = String::new();
    let mut current: Option<String> = None;
    for (c, cell) in cells.iter().enumerate() {
        let (ch, code) = match cell {
            Cell::Free if now_col == Some(c) => ('|', "\x1b[31m".to_string()),
            Cell::Free if ticks.contains(&c) => ('·', "\x1b[2m".to_string()),
            Cell::Free => (' ', String::new()),
            Cell::Closed => (CLOSED, "\x1b[2m".to_string()),
            Cell::Drained => (DRAINED, "\x1b[31m".to_string()),
            Cell::Bar(k, ch) => {
                let b = bookings[*k];
                let colour = USER_COLOURS[user_colour(b.user.as_str())].0;
                let own = if b.uid == v.caller_uid {
                    "\x1b[1;4m"
                } else {
                    ""
                };
                (*ch, format!("\x1b[48;5;{colour}m\x1b[97m{own}"))
            }
        };
        if v.color && current.as_deref() != Some(code.as_str()) {
            if current.as_deref().is_some_and(|c| !c.is_empty()) {
                s.push_str("\x1b[0m");
            }
            s.push_str(&code);
            current = Some(code);
        }
        s.push(ch);
    }
    if v.color && current.is_some_and(|c| !c.is_empty()) {
        s.push_str("\x1b[0m");
    }
    s.trim_end().to_string()
}

fn put(line: &mut [char], at: usize, text: &str) {
    for (i, ch) in text.chars().enumerate() {
        if let Some(c) = line.get_mut(at + i) {
            *c = ch;
        }
    }
}

fn line(chars: &[char]) -> String {
    chars.iter().collect::<String>().trim_end().to_string()
}

fn local(t: Timestamp, tz: &TimeZone, fmt: &str) -> String {
    t.to_zoned(tz.clone()).strftime(fmt).to_string()
}

/// Terminal columns a character takes: two for East Asian wide and
/// emoji ranges, none for combining marks, one otherwise (a close
/// approximation of wcwidth, enough to keep notes inside the width).
fn columns(c: char) -> usize {
    match u32::from(c) {
        0x0300..=0x036F | 0x200B..=0x200F | 0xFE00..=0xFE0F => 0,
        0x1100..=0x115F
        | 0x2E80..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

fn text_columns(text: &str) -> usize {
    text.chars().map(columns).sum()
}

/// `text` cut to `width` columns, with `…` where it was cut.
fn fit(text: &str, width: usize) -> String {
    if text_columns(text) <= width {
        return text.to_string();
    }
    let mut s = String::new();
    let mut used = 0;
    for c in text.chars() {
        if used + columns(c) + 1 > width {
            break;
        }
        used += columns(c);
        s.push(c);
    }
    s.push('…');
    s
}

/// Words wrapped to `width`, each line ending in a newline.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut cur = String::new();
    for item in text.split("   ") {
        let add = if cur.is_empty() {
            text_columns(item)
        } else {
            text_columns(&cur) + 3 + text_columns(item)
        };
        if add > width && !cur.is_empty() {
            out.push_str(&fit(&cur, width));
            out.push('\n');
            cur.clear();
        }
        if !cur.is_empty() {
            cur.push_str("   ");
        }
        cur.push_str(item);
    }
    if !cur.is_empty() {
        out.push_str(&fit(&cur, width));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking() -> Booking {
        serde_json::from_value(serde_json::json!({
            "id": "n1:7", "node": "n1", "user": "alice", "uid": 1001, "units": [0, 0],
            "cpus": "0-1", "ports": null, "start": "2026-11-23T09:00:00Z",
            "end": "2026-11-23T11:00:00Z", "note": "", "created_by": "alice",
            "created_at": "2026-11-23T09:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn bars_shorten_their_label_to_fit() {
        let b = booking();
        assert_eq!(bar_text(&b, 16, false, false, false), "[alice n1:7====]");
        assert_eq!(bar_text(&b, 8, false, false, false), "[alice=]");
        assert_eq!(bar_text(&b, 5, false, false, false), "[ali]");
        assert_eq!(bar_text(&b, 2, false, false, false), "[]");
        assert_eq!(bar_text(&b, 1, false, false, false), "=");
        assert_eq!(bar_text(&b, 10, true, false, false), "{alice###}");
        // Cut by the edges of the view: no bracket there.
        assert_eq!(bar_text(&b, 8, false, true, true), "=alice==");
    }

    #[test]
    fn text_is_cut_and_wrapped_to_the_width() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        // Wide characters take two columns.
        assert_eq!(fit("日本語のノート", 7), "日本語…");
        assert_eq!(text_columns("e\u{301}"), 1);
        assert_eq!(wrap("aaaa   bbbb   cc", 11), "aaaa   bbbb\ncc\n");
    }
}
