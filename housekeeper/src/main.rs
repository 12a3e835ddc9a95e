//! kloigos-housekeeper.
fn main() {}
