//! The one adapter from domain errors to gRPC statuses (as containerd's
//! `wrap.rs` does for snapshotters): no other module picks a code.
//!
//! A plugin that is down or slow is `UNAVAILABLE`, a plugin that answered an
//! error is `INTERNAL`, a setting that is wrong (a bad plugin address) is
//! `FAILED_PRECONDITION`: never `INVALID_ARGUMENT`, which external-provisioner
//! treats as the request's own fault. That code is for bad requests only. Messages are the whole error chain, so they name the
//! volume and quote the plugin.

use dory_core::{ErrorKind, error_chain};
use dory_mount::MountError;
use tonic::{Code, Status};

use crate::error::CsiError;

impl From<CsiError> for Status {
    fn from(error: CsiError) -> Self {
        let code = match &error {
            CsiError::Invalid(_) => Code::InvalidArgument,
            CsiError::Backend { source, .. } => backend_code(source),
            CsiError::Mount { source, .. } => mount_code(source),
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

/// The code for a backend's error, by what the caller may conclude from it.
pub fn backend_code(error: &dory_core::Error) -> Code {
    match error.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::InUse => Code::FailedPrecondition,
        // Outcome unknown: the caller retries (never a final code).
        ErrorKind::Unavailable => Code::Unavailable,
        // The plugin answered an error of its own: retriable, not final.
        ErrorKind::Refused => Code::Internal,
        // A name in the request that cannot be a volume or Mount ID: the
        // request is bad, and stays bad.
        ErrorKind::Invalid if is_bad_request(error) => Code::InvalidArgument,
        // A setting (a bad plugin address, an unknown backend): the request
        // is fine and succeeds once the driver is configured right, so never
        // INVALID_ARGUMENT, which csi-provisioner takes as the request's fault.
        ErrorKind::Invalid => Code::FailedPrecondition,
        ErrorKind::Local => Code::Internal,
    }
}

/// True when an invalid-kind error is about the request, not the settings.
fn is_bad_request(error: &dory_core::Error) -> bool {
    matches!(error, dory_core::Error::InvalidVolumeName { .. } | dory_core::Error::InvalidMountId { .. })
}

/// The code for a publisher's error.
pub fn mount_code(error: &MountError) -> Code {
    match error {
        MountError::Core(err) => backend_code(err),
        MountError::Missing { .. } => Code::NotFound,
        // Something this driver cannot identify is mounted there (publish
        // refuses such a target earlier, with ALREADY_EXISTS).
        MountError::UnknownVolume { .. } => Code::Internal,
        MountError::UnusableMountpoint { .. } => Code::Internal,
        // Another process (`dory mount` on this node) holds the volume.
        MountError::LockTimeout { .. } => Code::Aborted,
        MountError::Io { .. } | MountError::RollbackFailed { .. } => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dory_backend_docker::PluginError;
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
        let err = CsiError::backend(
            "pvc-1",
            dory_core::Error::backend(timeout.kind(), Operation::Create, Some("pvc-1"), timeout),
        );
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
        let err = CsiError::backend(
            "pvc-1",
            dory_core::Error::backend(refused.kind(), Operation::Create, Some("pvc-1"), refused),
        );
        let (code, message) = code(err);
        assert_eq!(code, Code::Internal);
        assert!(message.ends_with("plugin btrfs: /VolumeDriver.Create: quota exceeded"), "{message}");
    }

    #[test]
    fn a_bad_setting_is_failed_precondition_a_bad_name_invalid_argument() {
        let address = PluginError::BadAddress { address: "ftp://x".into(), reason: "unsupported scheme".into() };
        let err = dory_core::Error::backend(address.kind(), Operation::Create, Some("v"), address);
        assert_eq!(code(CsiError::backend("v", err)).0, Code::FailedPrecondition);
        let config = dory_core::Error::Config { key: "dockerVolumePluginSocketPath".into(), reason: "empty".into() };
        assert_eq!(code(CsiError::backend("v", config)).0, Code::FailedPrecondition);
        let name = dory_core::VolumeName::new("a/b").unwrap_err();
        assert_eq!(code(CsiError::backend("a/b", name)).0, Code::InvalidArgument);
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
        let missing = MountError::Missing { volume: "v".into(), node: "n".into(), reason: "not created here".into() };
        assert_eq!(code(CsiError::Mount { volume: "v".into(), source: missing }).0, Code::NotFound);
        let plugin_said_in_use = PluginError::Refused {
            plugin: "btrfs".into(),
            method: "/VolumeDriver.Remove",
            message: "volume is in use".into(),
        };
        let err =
            dory_core::Error::backend(plugin_said_in_use.kind(), Operation::Remove, Some("v"), plugin_said_in_use);
        assert_eq!(code(CsiError::backend("v", err)).0, Code::FailedPrecondition);
    }
}
