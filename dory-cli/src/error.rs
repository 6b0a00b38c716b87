//! The driver's error type; every variant becomes a Failure reply.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Everything that can make a driver call fail.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The configuration file has problems.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// kubelet's arguments are not what the verb needs.
    #[error("{verb}: {reason}")]
    Usage {
        /// The verb called.
        verb: String,
        /// What is missing or wrong.
        reason: String,
    },

    /// The options JSON cannot be used.
    #[error("invalid mount options: {reason}")]
    BadOptions {
        /// What is wrong.
        reason: String,
    },

    /// No pod UID in the directory nor in the options.
    #[error("cannot find the pod UID in {dir:?} (expected <kubelet root>/pods/<uid>/volumes/...) nor in the options")]
    NoPodUid {
        /// The pod volume directory.
        dir: PathBuf,
    },

    /// The volume is missing and the configuration forbids creating it.
    #[error("volume {volume:?} does not exist and createVolumes is false in {config:?}")]
    CreateDisabled {
        /// The volume.
        volume: String,
        /// The configuration file.
        config: PathBuf,
    },

    /// A backend or mount operation failed.
    #[error(transparent)]
    Core(#[from] dory_core::Error),

    /// A filesystem operation of the driver itself failed.
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

    /// The volume mounted at a directory could not be identified.
    #[error("cannot tell which volume is mounted at {dir:?}: {reason}")]
    UnknownVolume {
        /// The pod volume directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },

    /// The plugin mounted the volume but answered a mountpoint that cannot
    /// be bound safely (relative, empty, or the host's root).
    #[error(
        "the plugin mounted volume {volume:?} at {mountpoint:?}, which is not an absolute path below /; refusing to bind it"
    )]
    UnusableMountpoint {
        /// The volume.
        volume: String,
        /// What the plugin answered.
        mountpoint: PathBuf,
    },

    /// A mount failed and undoing the plugin's mount failed too.
    #[error("{error}; undoing the plugin mount also failed: {rollback}")]
    RollbackFailed {
        /// The original failure, as text.
        error: String,
        /// The rollback failure, as text.
        rollback: String,
    },

    /// The call was interrupted by a signal.
    #[error("interrupted by {signal}{}", if *rolled_back { "; the partial mount was undone" } else { "" })]
    Interrupted {
        /// The signal's name.
        signal: &'static str,
        /// Whether a partial mount was cleaned up.
        rolled_back: bool,
    },

    /// The driver panicked (a bug).
    #[error("internal error (please report): {message}")]
    Panic {
        /// The panic message.
        message: String,
    },
}
