//! Benchmark: cli.
fn main() {}
