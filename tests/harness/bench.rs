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

/// Prints one result line: the measure, its baseline, their ratio and the goal.
pub fn report(
    name: &str,
    value: f64,
    baseline_name: &str,
    baseline: f64,
    unit: &str,
    goal: &str,
    met: bool,
) {
    let ratio = if baseline > 0.0 {
        value / baseline
    } else {
        f64::NAN
    };
    println!(
        "bench {name}: {value:.2} {unit} | baseline {baseline_name}: {baseline:.2} {unit} | ratio {ratio:.2}x | goal {goal}: {}",
        if met { "met" } else { "NOT met" }
    );
}
