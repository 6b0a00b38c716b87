//! The one adapter from domain errors to gRPC statuses (as containerd's
//! `wrap.rs` does for snapshotters): no other module picks a code.
//!
//! A plugin that is down or slow is `UNAVAILABLE`, a plugin that answered an
//! error is `INTERNAL`: never `INVALID_ARGUMENT`, which external-provisioner
//! treats as final. Messages are the whole error chain, so they name the
//! volume and quote the plugin.

use dory_backend_docker::PluginError;
use dory_core::error_chain;
use tonic::{Code, Status};

use crate::error::CsiError;

impl From<CsiError> for Status {
    fn from(error: CsiError) -> Self {
        let code = match &error {
            CsiError::Invalid(_) => Code::InvalidArgument,
            CsiError::Backend { source, .. } => backend_code(source),
            CsiError::Busy { .. } => Code::Aborted,
            CsiError::AlreadyExists { .. } => Code::AlreadyExists,
            CsiError::NotFound { .. } => Code::NotFound,
            CsiError::OutOfRange { .. } => Code::OutOfRange,
            CsiError::FailedPrecondition { .. } => Code::FailedPrecondition,
            CsiError::Unplaceable { .. } => Code::ResourceExhausted,
            CsiError::Io { .. } => Code::Internal,
            CsiError::Unsupported(_) => Code::Unimplemented,
        };
        Status::new(code, error_chain(&error))
    }
}

/// The code for a backend's error.
pub fn backend_code(error: &dory_core::Error) -> Code {
    use dory_core::Error;
    match error {
        Error::NotFound { .. } => Code::NotFound,
        Error::InUse { .. } => Code::FailedPrecondition,
        Error::InvalidVolumeName { .. } | Error::InvalidMountId { .. } => Code::InvalidArgument,
        Error::Backend { source, .. } => match source.downcast_ref::<PluginError>() {
            Some(plugin) => plugin_code(plugin),
            None => Code::Internal,
        },
        // Our configuration or the plugin's address: retrying may help once fixed.
        Error::UnknownBackend { .. } | Error::Config { .. } => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The code for a plugin client's error: no answer is `UNAVAILABLE` (the
/// outcome is unknown, the caller retries), an answer is `INTERNAL`.
fn plugin_code(error: &PluginError) -> Code {
    match error {
        PluginError::Transport { .. }
        | PluginError::Timeout { .. }
        | PluginError::NotFound { .. }
        | PluginError::BadAddress { .. }
        | PluginError::SpecFile { .. }
        | PluginError::Daemon { .. }
        | PluginError::Disabled { .. } => Code::Unavailable,
        PluginError::Status { .. }
        | PluginError::Refused { .. }
        | PluginError::Malformed { .. }
        | PluginError::TooLarge { .. } => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dory_core::Operation;

    fn code(error: CsiError) -> (Code, String) {
        let status = Status::from(error);
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn a_plugin_that_does_not_answer_is_unavailable_never_invalid() {
        let timeout = PluginError::Timeout {
            plugin: "btrfs".into(),
            method: "/VolumeDriver.Create",
            after: std::time::Duration::from_secs(10),
        };
        let err = CsiError::backend("pvc-1", dory_core::Error::backend(Operation::Create, Some("pvc-1"), timeout));
        let (code, message) = code(err);
        assert_eq!(code, Code::Unavailable);
        assert_eq!(
            message,
            "volume \"pvc-1\": create of volume \"pvc-1\" failed: plugin btrfs did not answer /VolumeDriver.Create within 10s"
        );
    }

    #[test]
    fn a_plugin_that_answered_an_error_is_internal_and_quoted() {
        let refused = PluginError::Refused {
            plugin: "btrfs".into(),
            method: "/VolumeDriver.Create",
            message: "quota exceeded".into(),
        };
        let err = CsiError::backend("pvc-1", dory_core::Error::backend(Operation::Create, Some("pvc-1"), refused));
        let (code, message) = code(err);
        assert_eq!(code, Code::Internal);
        assert!(message.ends_with("plugin btrfs: /VolumeDriver.Create: quota exceeded"), "{message}");
    }

    #[test]
    fn domain_errors_get_their_spec_codes() {
        let not_found = CsiError::backend("v", dory_core::Error::NotFound { volume: "v".into() });
        assert_eq!(code(not_found).0, Code::NotFound);
        let in_use = CsiError::backend("v", dory_core::Error::InUse { volume: "v".into(), users: 1 });
        assert_eq!(code(in_use).0, Code::FailedPrecondition);
        assert_eq!(code(CsiError::Busy { volume: "v".into() }).0, Code::Aborted);
        assert_eq!(code(CsiError::invalid("volume_id is required")).0, Code::InvalidArgument);
        assert_eq!(code(CsiError::Unsupported("CreateSnapshot")).0, Code::Unimplemented);
    }
}
