//! Test infrastructure shared by Dory's integration tests and benchmarks.
//!
//! [`fake_apiserver`] stands in for the one real part that cannot run here,
//! the Kubernetes API server.

pub mod fake_apiserver;
pub mod pv_controller;
