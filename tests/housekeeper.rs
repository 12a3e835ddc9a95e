//! housekeeper tests (see the issue tracker).
