//! FlexVolume replies: the one JSON object kubelet reads per call.

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::DriverError;

/// `status` of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    /// The call did what was asked.
    Success,
    /// The call failed; `message` says why.
    Failure,
    /// The verb is not implemented; kubelet uses its default.
    #[serde(rename = "Not supported")]
    NotSupported,
}

/// One reply, serialized with `status` first and empty fields left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlexReply {
    /// The outcome.
    pub status: Status,
    /// Why, for failures; notes for successes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the driver can do (only for `init`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Value>,
}

impl FlexReply {
    /// A plain success.
    pub fn success() -> Self {
        Self { status: Status::Success, message: None, capabilities: None }
    }

    /// The reply to `init`: no attach (a plain mounter), and relabelling
    /// left to the container runtime (`selinuxRelabel`, said explicitly);
    /// Kubernetes 1.6 style leaves capabilities out entirely.
    pub fn init(enable_1_6: bool) -> Self {
        let capabilities = (!enable_1_6).then(|| json!({"attach": false, "selinuxRelabel": true}));
        Self { status: Status::Success, message: None, capabilities }
    }

    /// A verb the driver does not implement.
    pub fn not_supported() -> Self {
        Self { status: Status::NotSupported, message: None, capabilities: None }
    }

    /// A failure with its message.
    pub fn failure(message: impl Into<String>) -> Self {
        Self { status: Status::Failure, message: Some(message.into()), capabilities: None }
    }

    /// The exit code that goes with the reply: 0 unless it is a Failure.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.status == Status::Failure)
    }

    /// The reply as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"status":"Failure","message":"cannot encode the reply"}"#.to_owned())
    }
}

impl From<&DriverError> for FlexReply {
    fn from(error: &DriverError) -> Self {
        Self::failure(dory_core::error_chain(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_match_the_flexvolume_contract() {
        assert_eq!(
            FlexReply::init(false).to_json(),
            r#"{"status":"Success","capabilities":{"attach":false,"selinuxRelabel":true}}"#
        );
        assert_eq!(FlexReply::init(true).to_json(), r#"{"status":"Success"}"#);
        assert_eq!(FlexReply::not_supported().to_json(), r#"{"status":"Not supported"}"#);
        assert_eq!(FlexReply::failure("boom").to_json(), r#"{"status":"Failure","message":"boom"}"#);
        assert_eq!(FlexReply::failure("x").exit_code(), 1);
        assert_eq!(FlexReply::not_supported().exit_code(), 0);
    }

    #[test]
    fn failures_carry_the_whole_chain() {
        let err = DriverError::Core(dory_core::Error::backend(
            dory_core::ErrorKind::Unavailable,
            dory_core::Operation::Mount,
            Some("v"),
            "plugin down",
        ));
        assert_eq!(FlexReply::from(&err).message.as_deref(), Some("mount of volume \"v\" failed: plugin down"));
    }
}
