//! The storage seam: what every backend implements.

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::error::Result;
use crate::volume::{Capabilities, CreateOptions, MountId, VolumeInfo, VolumeName};

/// One operation of the volume lifecycle, named in errors and fault plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Create a volume.
    Create,
    /// Remove a volume.
    Remove,
    /// Make a volume available on this host for one user.
    Mount,
    /// Release one user's mount.
    Unmount,
    /// Ask where a volume is mounted.
    Path,
    /// Look up one volume.
    Get,
    /// List all volumes.
    List,
    /// Ask what the backend can do.
    Capabilities,
}

impl Operation {
    /// Every operation, in lifecycle order.
    pub const ALL: [Operation; 8] =
        [Self::Create, Self::Remove, Self::Mount, Self::Unmount, Self::Path, Self::Get, Self::List, Self::Capabilities];

    /// Lower-case name, as used in messages and on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Remove => "remove",
            Self::Mount => "mount",
            Self::Unmount => "unmount",
            Self::Path => "path",
            Self::Get => "get",
            Self::List => "list",
            Self::Capabilities => "capabilities",
        }
    }

    /// Parses a name written by [`Operation::as_str`], ignoring case.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A storage system that can create, mount and remove named volumes.
///
/// The methods mirror the Docker Volume Plugin API, in domain types. Mount and
/// unmount are not reference counted here: a caller that needs counting (the
/// plugin server) keeps the counts and calls `mount` once per first user and
/// `unmount` once per last.
#[async_trait]
pub trait VolumeBackend: Send + Sync {
    /// Looks up a volume; a volume that does not exist is `Ok(None)`.
    async fn get(&self, name: &VolumeName) -> Result<Option<VolumeInfo>>;

    /// Creates a volume. Creating one that exists with any options may
    /// succeed (as most plugins do) or fail; it must never destroy data.
    async fn create(&self, name: &VolumeName, options: &CreateOptions) -> Result<()>;

    /// Removes a volume and its data.
    async fn remove(&self, name: &VolumeName) -> Result<()>;

    /// Makes the volume available on this host for `id` and returns the host
    /// path where it can be bind-mounted.
    async fn mount(&self, name: &VolumeName, id: &MountId) -> Result<PathBuf>;

    /// Releases the mount made for `id`.
    async fn unmount(&self, name: &VolumeName, id: &MountId) -> Result<()>;

    /// Where the volume is mounted on this host, if it is.
    async fn path(&self, name: &VolumeName) -> Result<Option<PathBuf>>;

    /// Every volume the backend has.
    async fn list(&self) -> Result<Vec<VolumeInfo>>;

    /// What the backend can do.
    async fn capabilities(&self) -> Result<Capabilities>;
}
