//! The core error type: every failure names the object and the operation.

use std::path::PathBuf;

use crate::backend::Operation;

/// A boxed cause, as backends produce them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Dory's core contracts.
///
/// Messages name the object and say what failed; the cause is kept as the
/// `source` and printed once, by [`error_chain`], at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A volume name broke a naming rule.
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidVolumeName {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// A mount ID broke a rule.
    #[error("invalid mount id {id:?}: {reason}")]
    InvalidMountId {
        /// The rejected ID.
        id: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// The volume does not exist in the backend.
    #[error("volume {volume:?} does not exist")]
    NotFound {
        /// The missing volume.
        volume: String,
    },

    /// The volume is mounted and cannot be removed.
    #[error("volume {volume:?} is in use by {users} mount(s)")]
    InUse {
        /// The busy volume.
        volume: String,
        /// How many mounts hold it.
        users: usize,
    },

    /// A backend failed an operation.
    #[error("{operation} {}failed", volume.as_ref().map(|v| format!("of volume {v:?} ")).unwrap_or_default())]
    Backend {
        /// What was attempted.
        operation: Operation,
        /// The volume concerned, when there is one.
        volume: Option<String>,
        /// Why it failed, in the backend's words.
        #[source]
        source: BoxError,
    },

    /// A bind mount could not be made.
    #[error("cannot bind-mount {source_path:?} onto {target:?}{}", if *read_only { " read-only" } else { "" })]
    Bind {
        /// The directory being exposed.
        source_path: PathBuf,
        /// Where it was to appear.
        target: PathBuf,
        /// Whether a read-only bind was asked for.
        read_only: bool,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },

    /// A mount could not be removed.
    #[error("cannot unmount {target:?}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },

    /// The mount table could not be read.
    #[error("cannot read the mount table {path:?}")]
    MountTable {
        /// The table's path, usually `/proc/self/mountinfo`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// An SELinux label could not be applied.
    #[error("cannot set SELinux label {label:?} on {path:?}")]
    Relabel {
        /// The file or directory.
        path: PathBuf,
        /// The label asked for.
        label: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A configuration named a backend nobody registered.
    #[error("unknown backend {name:?}; known backends: {known}")]
    UnknownBackend {
        /// The requested name.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },

    /// A configuration value is unusable.
    #[error("invalid value for {key:?}: {reason}")]
    Config {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Wraps a backend's own error with the operation and volume it concerns.
    pub fn backend(operation: Operation, volume: Option<&str>, source: impl Into<BoxError>) -> Self {
        Self::Backend { operation, volume: volume.map(str::to_owned), source: source.into() }
    }

    /// True when the error says the volume does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// Formats an error and all its causes as one line: `outer: cause: root`.
///
/// Causes whose text is already contained in the previous message are
/// skipped, so an error that repeats its source prints it once.
///
/// ```
/// use dory_core::{Error, Operation, error_chain};
///
/// let err = Error::backend(Operation::Create, Some("v1"), "quota exceeded");
/// assert_eq!(err.to_string(), "create of volume \"v1\" failed");
/// assert_eq!(error_chain(&err), "create of volume \"v1\" failed: quota exceeded");
/// ```
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut previous = line.clone();
    let mut cause = error.source();
    while let Some(err) = cause {
        let text = err.to_string();
        if !previous.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
        cause = err.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_error_names_operation_volume_and_cause() {
        let err = Error::backend(Operation::Mount, Some("vol1"), "plugin said no");
        assert_eq!(error_chain(&err), "mount of volume \"vol1\" failed: plugin said no");
        let err = Error::backend(Operation::List, None, "boom");
        assert_eq!(error_chain(&err), "list failed: boom");
    }

    #[test]
    fn chain_skips_repeated_causes() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::Unmount { target: "/x".into(), source: io };
        assert_eq!(error_chain(&err), "cannot unmount \"/x\": disk on fire");
    }
}
