//! What can go wrong serving CSI, in domain terms. Turned into gRPC statuses
//! only in [`crate::status`].

use std::path::PathBuf;

/// Everything an RPC can fail with. Messages name the volume (or path) and
/// keep the plugin's own words in the source chain.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A required field is missing or a field is malformed.
    #[error("{0}")]
    Invalid(String),

    /// The backend (the plugin) failed an operation on a volume.
    #[error("volume {volume:?}")]
    Backend {
        /// The volume concerned.
        volume: String,
        /// The backend's error, with the plugin's words.
        #[source]
        source: dory_core::Error,
    },

    /// Publishing or unpublishing failed (backend, bind or records).
    #[error("volume {volume:?}")]
    Mount {
        /// The volume concerned.
        volume: String,
        /// The publisher's error.
        #[source]
        source: dory_mount::MountError,
    },

    /// Another call for the same volume is still running.
    #[error("volume {volume:?}: another operation on it is in progress; retry later")]
    Busy {
        /// The volume.
        volume: String,
    },

    /// The volume exists with other, incompatible properties.
    #[error("volume {volume:?} already exists: {reason}")]
    AlreadyExists {
        /// The volume.
        volume: String,
        /// What differs.
        reason: String,
    },

    /// The volume (or a source volume, or a published path) is not there.
    #[error("volume {volume:?}: {reason}")]
    NotFound {
        /// The volume.
        volume: String,
        /// What was looked for.
        reason: String,
    },

    /// The capacity range cannot be honoured.
    #[error("volume {volume:?}: {reason}")]
    OutOfRange {
        /// The volume.
        volume: String,
        /// Why not.
        reason: String,
    },

    /// A state the call cannot proceed from (in use, exceeds capabilities).
    #[error("volume {volume:?}: {reason}")]
    FailedPrecondition {
        /// The volume.
        volume: String,
        /// Why not.
        reason: String,
    },

    /// The topology asked for cannot be served from here.
    #[error("volume {volume:?}: {reason}")]
    Unplaceable {
        /// The volume.
        volume: String,
        /// Why not.
        reason: String,
    },

    /// A file or directory operation failed.
    #[error("cannot {action} {path:?}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },

    /// The call is one this driver does not offer.
    #[error("{0} is not supported by dory-csi")]
    Unsupported(&'static str),
}

impl CsiError {
    /// Wraps a backend error for `volume`.
    pub fn backend(volume: impl Into<String>, source: dory_core::Error) -> Self {
        Self::Backend { volume: volume.into(), source }
    }

    /// A missing or invalid field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}
