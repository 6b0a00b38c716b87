//! `dory`, the FlexVolume driver kubelet executes on every node.
//!
//! kubelet runs `dory <verb> [args]` and reads exactly one JSON object from
//! its combined stdout and stderr. [`flex::run`] turns one call into one
//! [`reply::FlexReply`]; [`driver::Driver`] does the work of `mount` and
//! `unmount` through a [`dory_core::VolumeBackend`] (any registered backend)
//! and a [`dory_core::Mounter`] ([`LinuxMounter`]), both through
//! the shared [`dory_mount::Publisher`]. Administration commands
//! (`install`, `config`, `doctor`) live in [`admin`].
//!
//! The driver keeps no state in memory between calls. It records each pod
//! directory's mount in a state directory outside the driver directory, so
//! that `unmount` works from the path alone and a half-done mount is undone
//! by the next call.

pub mod admin;
pub mod driver;
pub mod error;
pub mod flex;
pub mod install;
pub mod log;
pub mod reply;
pub mod request;

pub use dory_mount::LinuxMounter;

// Link every backend the driver ships, so the registry lists them.
use dory_backend_docker as _;
use dory_backend_mock as _;

/// `dory --version`: the version and the git commit it was built from.
pub const VERSION: &str = dory_core::VERSION;
