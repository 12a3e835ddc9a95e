//! Benchmark: housekeeper.
fn main() {}
