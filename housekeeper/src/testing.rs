//! What the unit tests of several modules share.

use kloigos_core::ids::Uid;

/// A uid from a literal.
pub(crate) fn uid(raw: u32) -> Uid {
    Uid::new(raw).unwrap()
}
