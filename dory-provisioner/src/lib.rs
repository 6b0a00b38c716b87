//! `doryd`, Dory's dynamic provisioner.
//!
//! It watches PersistentVolumeClaims whose `volume.kubernetes.io/storage-provisioner`
//! annotation names a provisioner it serves (`<prefix>/<driver>`), creates
//! the volume through that provisioner's backend (the FlexVolume driver's
//! json says which), and creates a PersistentVolume bound to the claim whose
//! `flexVolume` source the `dory` driver mounts. It removes the volume when a
//! released PV's reclaim policy is Delete.
//!
//! Built on kube-rs: two `kube::runtime::Controller`s (claims and volumes)
//! whose reconcilers live in [`controller`]; the option rules are pure
//! functions in [`options`]. Everything is idempotent by name, so restarts
//! and a second replica never create a second volume or PV; leader election
//! on a Lease keeps one replica active.

pub mod backends;
pub mod cli;
pub mod controller;
pub mod metrics;
pub mod options;
pub mod placement;
pub mod sources;

// Link every backend doryd ships, so the registry lists them.
use dory_backend_docker as _;
use dory_backend_mock as _;
