//! privilege tests (see the issue tracker).
