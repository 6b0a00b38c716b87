//! The publisher's error type.

use std::path::PathBuf;

/// Everything that can make publishing or unpublishing fail.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A backend or kernel operation failed.
    #[error(transparent)]
    Core(#[from] dory_core::Error),

    /// A filesystem operation of the publisher itself failed.
    #[error("cannot {action} {path:?}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The volume does not exist and the caller did not allow creating it.
    #[error("volume {volume:?} does not exist on node {node:?}; {reason}")]
    Missing {
        /// The volume.
        volume: String,
        /// The node asked.
        node: String,
        /// Why it was not created here.
        reason: String,
    },

    /// The volume mounted at a directory could not be identified.
    #[error("cannot tell which volume is mounted at {dir:?}: {reason}")]
    UnknownVolume {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },

    /// The plugin mounted the volume but answered a mountpoint that cannot
    /// be bound safely (relative, the host's root or a system directory, a
    /// symlink, not a directory, inside the pod's directory, ...).
    #[error("the plugin mounted volume {volume:?} at {mountpoint:?}, which {reason}; refusing to bind it")]
    UnusableMountpoint {
        /// The volume.
        volume: String,
        /// What the plugin answered.
        mountpoint: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Another call held the volume's lock for longer than a call waits.
    #[error(
        "volume {volume:?} is locked by another dory call (lock file {path:?}) for more than {}; \
         it may be stuck on an unresponsive plugin or mount",
        humantime_secs(*waited)
    )]
    LockTimeout {
        /// The volume.
        volume: String,
        /// How long this call waited.
        waited: std::time::Duration,
        /// The lock file.
        path: PathBuf,
    },

    /// A publish failed and undoing the plugin's mount failed too.
    #[error("{error}; undoing the plugin mount also failed: {rollback}")]
    RollbackFailed {
        /// The original failure, as text.
        error: String,
        /// The rollback failure, as text.
        rollback: String,
    },
}

impl MountError {
    /// What a caller may conclude, in the backend contract's terms.
    pub fn kind(&self) -> dory_core::ErrorKind {
        use dory_core::ErrorKind;
        match self {
            Self::Core(err) => err.kind(),
            Self::Missing { .. } => ErrorKind::NotFound,
            Self::UnusableMountpoint { .. } => ErrorKind::Refused,
            Self::LockTimeout { .. } => ErrorKind::Unavailable,
            Self::Io { .. } | Self::UnknownVolume { .. } | Self::RollbackFailed { .. } => ErrorKind::Local,
        }
    }
}

fn humantime_secs(duration: std::time::Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) { format!("{} s", millis / 1000) } else { format!("{millis} ms") }
}
