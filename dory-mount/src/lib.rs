//! Node-side volume publishing, shared by every frontend that mounts: the
//! FlexVolume driver (`dory mount`) and the CSI node service
//! (NodePublishVolume).
//!
//! One job: make a backend volume appear at a directory, and undo it.
//! [`Publisher`] asks the backend for the volume (creating it only when the
//! caller allows), has the backend mount it for one mount ID, bind-mounts the
//! backend's mountpoint onto the directory, and records what it did under a
//! state directory, so that unpublishing works from the path alone and a
//! half-done publish is finished or undone by the next call. Calls for one
//! volume are serialized by a file lock; different volumes run in parallel.
//!
//! What it deliberately does not do: parse any frontend's request format
//! (FlexVolume JSON, CSI protobuf) or decide mount IDs; callers hand it a
//! [`PublishRequest`] in domain terms.

mod error;
mod journal;
pub mod mounter;
mod publisher;
pub mod state;

pub use error::MountError;
pub use mounter::LinuxMounter;
pub use publisher::{
    MissingVolume, PublishOutcome, PublishRequest, Publisher, PublisherSettings, bind_source, usable_mountpoint,
};
pub use state::{MountRecord, Phase, StateDir};

/// The pod UID in a kubelet pod directory path
/// `<kubelet root>/pods/<uid>/volumes/...` (FlexVolume's
/// `.../volumes/<vendor~driver>/<name>`, CSI's
/// `.../volumes/kubernetes.io~csi/<pv>/mount`), for any kubelet root.
pub fn pod_uid_from_dir(dir: &std::path::Path) -> Option<String> {
    use std::path::Component;
    let parts: Vec<&str> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    parts.windows(3).rev().find(|w| w[0] == "pods" && w[2] == "volumes" && !w[1].is_empty()).map(|w| w[1].to_owned())
}

/// This node's name, as Kubernetes knows it: `$NODE_NAME` when set (the
/// manifests set it from the downward API), else the host name.
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "unknown".into())
}
