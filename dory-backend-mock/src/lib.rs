//! The `mock` backend: volumes kept in memory whose mountpoints are real
//! directories under a root it owns, so bind mounts of them work.
//!
//! It exists for tests, demos and backend authors: every operation can be
//! made to fail or to stall through a [`FaultPlan`], and the
//! `dory-mock-plugin` binary serves it as a Docker volume plugin.
//!
//! Volumes are the directories under the root: a new `MockBackend` adopts the
//! ones it finds, so short-lived processes (like the FlexVolume driver) see
//! the volumes earlier ones created. Options and mount counts live only in
//! the memory of one process.

mod backend;
mod faults;

pub use backend::{MOCK_ROOT_KEY, MOCK_SCOPE_KEY, MockBackend, default_root};
pub use faults::{Fault, FaultPlan};
