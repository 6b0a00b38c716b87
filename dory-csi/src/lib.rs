//! `dory-csi`: any Docker volume plugin as a CSI driver.
//!
//! A third frontend next to `dory` (FlexVolume) and `doryd` (provisioner):
//! a tonic gRPC server on a unix socket serving CSI v1.12's Identity,
//! Controller and Node services over whichever [`dory_core::VolumeBackend`]
//! the configuration names. The same binary runs in the controller
//! Deployment (`--controller`) and the node DaemonSet (`--node`).
//!
//! Layout: [`proto`] is the wire, compiled at build time from
//! `proto/csi.proto` by protox (pure Rust, no `protoc`); [`identity`],
//! [`controller`] and [`node`] translate RPCs into backend calls;
//! [`publish`] adds Mount IDs and ephemeral marks around `dory-mount`'s
//! engine, which `dory mount` uses too; errors become gRPC codes only in
//! [`status`].
//!
//! Deliberately not here: staging, block volumes, snapshots, expansion,
//! ControllerPublish. The Docker Volume API has none of them, and an
//! advertised capability that is not really implemented costs users more
//! than a missing one.

pub mod config;
pub mod controller;
pub mod driver;
pub mod error;
pub mod identity;
pub mod inflight;
pub mod kernel;
pub mod node;
pub mod publish;
pub mod server;
pub mod status;

/// The CSI v1.12 wire, generated from `proto/csi.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

/// The version reported as `vendor_version` and by `--version`.
pub const VERSION: &str = dory_core::VERSION;
