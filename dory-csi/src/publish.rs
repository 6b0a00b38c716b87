//! The CSI side of publishing, around `dory-mount`'s [`Publisher`] (the
//! engine `dory mount` uses too): Mount IDs from the pod, and the marks that
//! say a target holds an inline ephemeral volume, to be removed from the
//! backend when it is unpublished.

use std::path::{Path, PathBuf};

use dory_core::MountId;

use crate::error::CsiError;

/// The plugin Mount ID of a publish: the pod's UID (from the volume context,
/// else from kubelet's `<root>/pods/<uid>/volumes/...` target path), else a
/// hash of the target path. Unpublish, which only has the path, finds the
/// same ID for every path kubelet builds.
pub fn mount_id(pod_uid: Option<&str>, target: &Path) -> MountId {
    let id = pod_uid
        .filter(|uid| !uid.is_empty())
        .map(str::to_owned)
        .or_else(|| dory_mount::pod_uid_from_dir(target))
        .unwrap_or_else(|| format!("csi-{:016x}", fnv1a(target.as_os_str().as_encoded_bytes())));
    MountId::new(id).unwrap_or_default()
}

/// FNV-1a, 64 bit: a hash that stays the same across builds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Marks of targets that hold inline ephemeral volumes (one small file per
/// target, naming the volume), kept next to the publisher's records.
#[derive(Clone, Debug)]
pub struct EphemeralMarks {
    dir: PathBuf,
}

impl EphemeralMarks {
    /// Marks under `<state_dir>/csi-ephemeral`.
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("csi-ephemeral") }
    }

    fn path(&self, target: &Path) -> PathBuf {
        self.dir.join(format!("{:016x}", fnv1a(target.as_os_str().as_encoded_bytes())))
    }

    /// Marks `target` as holding the ephemeral `volume`.
    pub fn mark(&self, target: &Path, volume: &str) -> Result<(), CsiError> {
        let path = self.path(target);
        let io = |source| CsiError::Io { action: "write the ephemeral mark", path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let body = serde_json::json!({"target": target, "volume": volume}).to_string();
        std::fs::write(&path, body).map_err(io)
    }

    /// The ephemeral volume held at `target`, if it is marked.
    pub fn volume(&self, target: &Path) -> Option<String> {
        let text = std::fs::read_to_string(self.path(target)).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        (value["target"].as_str() == target.to_str()).then(|| value["volume"].as_str().map(str::to_owned))?
    }

    /// Removes the mark of `target`.
    pub fn clear(&self, target: &Path) {
        let _ = std::fs::remove_file(self.path(target));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_id_is_the_pod_uid_wherever_it_is_found() {
        let kubelet = Path::new("/var/lib/kubelet/pods/1f2e-33/volumes/kubernetes.io~csi/pvc-1/mount");
        assert_eq!(mount_id(None, kubelet).as_str(), "1f2e-33");
        assert_eq!(mount_id(Some("1f2e-33"), kubelet).as_str(), "1f2e-33");
        assert_eq!(mount_id(Some(""), kubelet).as_str(), "1f2e-33");
        let other = Path::new("/mnt/somewhere/target");
        let id = mount_id(None, other);
        assert!(id.as_str().starts_with("csi-") && id.as_str().len() == 20, "{id}");
        assert_eq!(mount_id(None, other), id, "stable");
    }

    #[test]
    fn ephemeral_marks_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let marks = EphemeralMarks::new(dir.path());
        let target = Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/scratch/mount");
        assert_eq!(marks.volume(target), None);
        marks.mark(target, "csi-abc").unwrap();
        assert_eq!(marks.volume(target).as_deref(), Some("csi-abc"));
        marks.clear(target);
        assert_eq!(marks.volume(target), None);
    }
}
