//! The core of Dory: what a volume is, what a storage backend must do, and how
//! a backend is chosen by name.
//!
//! Dory bridges storage that speaks the Docker Volume Plugin API to
//! Kubernetes. Every part of it (the FlexVolume driver `dory`, the provisioner
//! `doryd`, the plugin server that exposes a backend over the Docker protocol)
//! talks to storage through one trait, [`VolumeBackend`], and to the kernel's
//! mount table through another, [`Mounter`].
//!
//! This crate deliberately holds types only and does no IO of its own: no async
//! runtime, no HTTP, no syscalls. Wire formats (Docker JSON, FlexVolume argv and
//! replies) live in the crates that speak them, so a backend author implements
//! [`VolumeBackend`] in domain terms ([`VolumeName`], [`MountId`],
//! [`CreateOptions`]) and never sees a protocol.
//!
//! Backends register themselves with [`inventory`] through
//! [`register_backend!`]; a configuration names one (`"backend": "docker"`) and
//! [`registry::build_backend`] constructs it.

mod backend;
pub mod config;
mod error;
mod mounter;
pub mod registry;
pub mod size;
mod volume;

pub use backend::{Operation, VolumeBackend};
pub use config::{ConfigError, DriverConfig};
pub use error::{Error, ErrorKind, Result, error_chain};
pub use mounter::{MountEntry, Mounter, RecordedMount, RecordingMounter, parse_mountinfo};
pub use registry::{BackendConfig, BackendRegistration};
pub use volume::{
    Capabilities, CreateOptions, MountId, PROVISIONED_OPTION, Scope, VolumeInfo, VolumeName, is_secret_key,
    redacted_options,
};

/// Every binary's `--version`: the version and the git commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DORY_COMMIT"), ")");

#[doc(hidden)]
pub use inventory as __inventory;
