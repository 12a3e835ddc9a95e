//! pam tests (see the issue tracker).
