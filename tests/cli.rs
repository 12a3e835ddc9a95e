//! cli tests (see the issue tracker).
