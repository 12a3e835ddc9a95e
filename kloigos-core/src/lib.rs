//! kloigos-core: every decision and every file format of kloigos.
//!
//! The binaries (`kloigos`, `pam_kloigos.so`, `kloigos-housekeeper`) parse
//! their input, call into this crate and print. Decisions are pure functions
//! of their inputs and a `now` passed in; I/O lives in [`store`] and [`users`].
#![forbid(unsafe_code)]

pub mod booking;
pub mod cpuset;
pub mod dashboard;
pub mod deadline;
pub mod duration;
pub mod enforce;
pub mod error;
pub mod gpuset;
pub mod names;
pub mod node;
pub mod policy;
pub mod ports;
pub mod size;
pub mod state;
pub mod when;
pub mod window;

pub use error::{Error, ErrorKind, Result};
pub mod access;
pub mod commit;
pub mod config;
pub mod doctor;
pub mod facts;
pub mod fence;
pub mod gate;
mod idlist;
pub mod journal;
pub mod lockwait;
pub mod mount;
pub mod placement;
pub mod printable;
pub mod privilege;
pub mod store;
mod text;
pub mod timeline;
pub mod users;
