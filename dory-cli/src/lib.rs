//! The `dory` FlexVolume driver: what kubelet executes on every node.
//!
//! This crate holds the driver's kernel-facing parts; the verbs themselves
//! (`init`, `mount`, `unmount`) are built on them.

pub mod mounter;

pub use mounter::LinuxMounter;

// Link every backend the driver ships, so the registry lists them.
use dory_backend_docker as _;
use dory_backend_mock as _;
