//! The driver's error type; every variant becomes a Failure reply.

use std::path::PathBuf;

use dory_core::ConfigError;
use dory_mount::MountError;

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

    /// A backend or mount operation failed.
    #[error(transparent)]
    Core(#[from] dory_core::Error),

    /// Publishing or unpublishing failed.
    #[error(transparent)]
    Mount(#[from] MountError),

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
