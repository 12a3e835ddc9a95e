//! The Prometheus textfile for node_exporter's textfile collector.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Result;

/// File name in the metrics directory.
pub const METRICS_FILE: &str = "kloigos.prom";

/// The numbers one pass reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Units booked now (`None`: the state could not be read).
    pub units_booked: Option<u32>,
    /// Units free now.
    pub units_free: Option<u32>,
    /// Bookings active now.
    pub bookings_active: Option<u32>,
    /// When the pass ran (Unix seconds).
    pub last_run: i64,
    /// How long it took.
    pub duration_s: f64,
    /// Whether it could read the state and enforce it.
    pub ok: bool,
    /// Processes ended, ever.
    pub killed_total: u64,
    /// Table loads, ever.
    pub nft_loads_total: u64,
    /// Failed hooks, ever.
    pub hooks_failed_total: u64,
}

/// Renders the textfile.
pub fn render(m: &Metrics) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(s, "{name}{labels} {v}");
        }
    };
    if let (Some(b), Some(f)) = (m.units_booked, m.units_free) {
        metric(
            "kloigos_node_units",
            "gauge",
            "Bookable units of this node by state.",
            &[
                ("{state=\"booked\"}", b.to_string()),
                ("{state=\"free\"}", f.to_string()),
            ],
        );
    }
    if let Some(a) = m.bookings_active {
        metric(
            "kloigos_bookings_active",
            "gauge",
            "Bookings active on this node.",
            &[("", a.to_string())],
        );
    }
    metric(
        "kloigos_housekeeper_last_run_timestamp_seconds",
        "gauge",
        "When the housekeeper last ran a pass.",
        &[("", m.last_run.to_string())],
    );
    metric(
        "kloigos_housekeeper_last_run_duration_seconds",
        "gauge",
        "How long the last pass took.",
        &[("", format!("{:.6}", m.duration_s))],
    );
    metric(
        "kloigos_housekeeper_ok",
        "gauge",
        "1 if the last pass read the policy and state and enforced them, 0 if it did nothing destructive.",
        &[("", u8::from(m.ok).to_string())],
    );
    metric(
        "kloigos_processes_killed_total",
        "counter",
        "Processes of users without a booking ended by the housekeeper.",
        &[("", m.killed_total.to_string())],
    );
    metric(
        "kloigos_nft_loads_total",
        "counter",
        "Times the inet kloigos table was loaded or removed.",
        &[("", m.nft_loads_total.to_string())],
    );
    metric(
        "kloigos_hooks_failed_total",
        "counter",
        "Release hooks that failed or timed out.",
        &[("", m.hooks_failed_total.to_string())],
    );
    s
}

/// Writes the textfile atomically (node_exporter reads only `*.prom`).
pub fn write(dir: &Path, m: &Metrics) -> Result<()> {
    kloigos_core::store::write_atomic(dir, METRICS_FILE, render(m).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textfile_format() {
        let m = Metrics {
            units_booked: Some(1),
            units_free: Some(3),
            bookings_active: Some(1),
            last_run: 1_800_000_000,
            ok: true,
            killed_total: 12,
            ..Metrics::default()
        };
        let t = render(&m);
        assert!(t.contains("# TYPE kloigos_node_units gauge\nkloigos_node_units{state=\"booked\"} 1\nkloigos_node_units{state=\"free\"} 3\n"), "{t}");
        assert!(t.contains("\nkloigos_housekeeper_last_run_timestamp_seconds 1800000000\n"));
        assert!(t.contains(
            "# TYPE kloigos_processes_killed_total counter\nkloigos_processes_killed_total 12\n"
        ));
        assert!(t.contains("kloigos_housekeeper_ok 1\n"));
        // Without a state, no unit or booking gauges (rather than zeros that look real).
        let t = render(&Metrics::default());
        assert!(!t.contains("kloigos_node_units") && t.contains("kloigos_housekeeper_ok 0"));
    }
}
