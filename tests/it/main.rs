//! Dory's integration tests, one binary (each extra test binary costs a link).
//!
//! Everything here is real: HTTP over unix sockets, bind mounts, the built
//! binaries, and a real third-party plugin (buttervolume) that
//! `scripts/test` starts. Tests that need root or buttervolume fail with a
//! message saying so; they never pass silently.

#![allow(missing_docs)]

mod address;
mod buttervolume;
mod csi;
mod csi_support;
mod demo;
mod deploy;
mod doryd;
mod driver;
mod driver_faults;
mod fake_apiserver;
mod kubelet;
mod mock_binary;
mod mounter;
mod protocol;
mod registry;
mod server;
mod support;
