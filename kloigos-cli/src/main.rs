//! The `kloigos` command.
fn main() {}
