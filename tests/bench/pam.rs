//! Benchmark: pam.
fn main() {}
