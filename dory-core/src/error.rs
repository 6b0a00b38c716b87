//! The core error type: every failure names the object and the operation.

use std::path::PathBuf;

use crate::backend::Operation;

/// A boxed cause, as backends produce them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller may conclude from a failure, whatever the backend.
///
/// Only [`ErrorKind::NotFound`] is a definite answer about a volume's
/// existence; every other kind leaves it unknown, so a caller that must be
/// sure (reclaim, mount-time creation) never reads "failed" as "absent".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The backend said, definitely, that the volume does not exist.
    NotFound,
    /// The volume is mounted or otherwise held and cannot be changed now.
    InUse,
    /// The backend could not be reached or did not answer in time: the
    /// operation may or may not have happened.
    Unavailable,
    /// The backend answered, with an error of its own.
    Refused,
    /// The request cannot be valid as it is (a name, option or setting).
    Invalid,
    /// Something on this host failed: a mount syscall, a file.
    Local,
}

impl ErrorKind {
    /// Lower-case name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::InUse => "in-use",
            Self::Unavailable => "unavailable",
            Self::Refused => "refused",
            Self::Invalid => "invalid",
            Self::Local => "local",
        }
    }
}

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
        /// What a caller may conclude.
        kind: ErrorKind,
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
    /// Wraps a backend's own error with what it means, the operation and the
    /// volume it concerns.
    pub fn backend(kind: ErrorKind, operation: Operation, volume: Option<&str>, source: impl Into<BoxError>) -> Self {
        Self::Backend { kind, operation, volume: volume.map(str::to_owned), source: source.into() }
    }

    /// What a caller may conclude from this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::InUse { .. } => ErrorKind::InUse,
            Self::Backend { kind, .. } => *kind,
            Self::InvalidVolumeName { .. }
            | Self::InvalidMountId { .. }
            | Self::UnknownBackend { .. }
            | Self::Config { .. } => ErrorKind::Invalid,
            Self::Bind { .. } | Self::Unmount { .. } | Self::MountTable { .. } | Self::Relabel { .. } => {
                ErrorKind::Local
            }
        }
    }

    /// True when the error says, definitely, that the volume does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }
}

/// Formats an error and all its causes as one line: `outer: cause: root`.
///
/// Causes whose text is already contained in the previous message are
/// skipped, so an error that repeats its source prints it once.
///
/// ```
/// use dory_core::{Error, ErrorKind, Operation, error_chain};
///
/// let err = Error::backend(ErrorKind::Refused, Operation::Create, Some("v1"), "quota exceeded");
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
        let err = Error::backend(ErrorKind::Refused, Operation::Mount, Some("vol1"), "plugin said no");
        assert_eq!(error_chain(&err), "mount of volume \"vol1\" failed: plugin said no");
        assert_eq!(err.kind(), ErrorKind::Refused);
        let err = Error::backend(ErrorKind::Unavailable, Operation::List, None, "boom");
        assert_eq!(error_chain(&err), "list failed: boom");
        assert!(!err.is_not_found(), "an unreachable backend says nothing about existence");
        let err = Error::backend(ErrorKind::NotFound, Operation::Remove, Some("v"), "no such volume");
        assert!(err.is_not_found());
        assert!(Error::NotFound { volume: "v".into() }.is_not_found());
    }

    #[test]
    fn chain_skips_repeated_causes() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::Unmount { target: "/x".into(), source: io };
        assert_eq!(error_chain(&err), "cannot unmount \"/x\": disk on fire");
    }
}
