//! kloigos-core: every decision and every file format of kloigos.
//!
//! The binaries (`kloigos`, `pam_kloigos.so`, `kloigos-housekeeper`) parse
//! their input, call into this crate and print. Decisions are pure functions
//! of their inputs and a `now` passed in. I/O lives in [`store`] (the shared
//! tree and the local copy) and [`users`] (the user and group databases),
//! plus a few functions named for what they touch, kept next to
//! the format they serve: [`gate::read_share`] and [`gate::read_copy`]
//! (through [`store`]), [`access::SubUids::read`] (`/etc/subuid`),
//! [`dashboard::write_site`] and [`names::NodeName::from_hostname`].
//! Process-wide state (privileges, signals, the environment, the umask) is
//! the binaries' job; the one exception is the file-size limit, which
//! [`store`] lifts before it writes (see [`store::lift_fsize_limit`]).
#![forbid(unsafe_code)]

pub mod booking;
pub mod cpuset;
pub mod dashboard;
pub mod deadline;
pub mod duration;
pub mod enforce;
pub mod error;
pub mod gpuset;
pub mod ids;
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
pub mod devprog;
pub mod facts;
pub mod fence;
pub mod gate;
mod idlist;
pub mod journal;
pub mod lockwait;
pub mod mount;
pub mod placement;
pub mod printable;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
mod text;
pub mod timeline;
pub mod trusted;
pub mod users;
