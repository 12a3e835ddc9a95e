//! Benchmark helpers: medians of repeated runs and ratio lines against a
//! baseline measured in the same run.

use std::time::Instant;

/// Runs `f` `runs` times and returns the median wall time in milliseconds.
pub fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A benchmark's goal, on the ratio of the measure to its baseline from the
/// same run: never an absolute rate, which would only describe the machine.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// The ratio must be at most this (times, where lower is better).
    AtMost(f64),
    /// The ratio must be at least this (rates, where higher is better).
    AtLeast(f64),
}

impl Goal {
    /// Whether `ratio` meets the goal.
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(g) => ratio <= g,
            Goal::AtLeast(g) => ratio >= g,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::AtMost(g) => write!(f, "ratio <= {g}x"),
            Goal::AtLeast(g) => write!(f, "ratio >= {g}x"),
        }
    }
}

/// Prints one result line: the measure, its baseline, their ratio and
/// whether the ratio meets `goal`; returns whether it does.
pub fn report(
    name: &str,
    value: f64,
    baseline_name: &str,
    baseline: f64,
    unit: &str,
    goal: Goal,
) -> bool {
    let ratio = if baseline > 0.0 {
        value / baseline
    } else {
        f64::NAN
    };
    let met = goal.met(ratio);
    println!(
        "bench {name}: {value:.2} {unit} | baseline {baseline_name}: {baseline:.2} {unit} | ratio {ratio:.2}x | goal {goal}: {}",
        if met { "met" } else { "NOT met" }
    );
    met
}

#[cfg(test)]
mod tests {
    use super::Goal;

    #[test]
    fn goals_judge_the_ratio_in_their_direction() {
        assert!(Goal::AtMost(3.0).met(3.0) && !Goal::AtMost(3.0).met(3.01));
        assert!(Goal::AtLeast(0.15).met(0.2) && !Goal::AtLeast(0.15).met(0.14));
        assert!(!Goal::AtMost(3.0).met(f64::NAN) && !Goal::AtLeast(0.1).met(f64::NAN));
    }
}
