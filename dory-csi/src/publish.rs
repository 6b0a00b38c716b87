//! Mounting a backend volume onto a target directory and undoing it: plugin
//! Mount/Unmount, the bind, a record per target so that unpublish works from
//! the path alone after a restart, and rollback of a half-done publish.
//!
//! Kept small and behind one type ([`Publisher`]) so that it can give way to
//! the engine `dory mount` uses once that lives in a crate both can share.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dory_core::{CreateOptions, MountId, VolumeBackend, VolumeName, error_chain};
use serde::{Deserialize, Serialize};

use crate::error::CsiError;
use crate::kernel;

/// How far a publish got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The plugin may have mounted; the bind may not exist yet.
    Mounting,
    /// Plugin mount and bind are both done.
    Mounted,
}

/// What is (being) published at one target path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishRecord {
    /// The target path.
    pub target: PathBuf,
    /// The volume.
    pub volume: String,
    /// The ID used with the plugin's Mount and Unmount.
    pub mount_id: String,
    /// The plugin's mountpoint, once known.
    pub source: Option<PathBuf>,
    /// Published read-only.
    pub read_only: bool,
    /// An inline ephemeral volume: removed from the backend on unpublish.
    pub ephemeral: bool,
    /// How far it got.
    pub phase: Phase,
}

/// One publish to do.
#[derive(Clone, Debug)]
pub struct Publish {
    /// The volume.
    pub volume: VolumeName,
    /// Where it goes.
    pub target: PathBuf,
    /// The plugin Mount ID.
    pub mount_id: MountId,
    /// Bind read-only.
    pub read_only: bool,
    /// For an inline ephemeral volume: the options to create it with.
    pub ephemeral: Option<CreateOptions>,
}

/// What a publish found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// Mounted now, from this plugin mountpoint.
    Now(PathBuf),
    /// It was already published there with the same arguments.
    Already,
}

/// The mount engine.
pub struct Publisher {
    backend: Arc<dyn VolumeBackend>,
    records: PathBuf,
}

impl Publisher {
    /// An engine over `backend`, keeping records in `<state_dir>/publish`.
    pub fn new(backend: Arc<dyn VolumeBackend>, state_dir: &Path) -> Self {
        Self { backend, records: state_dir.join("publish") }
    }

    /// Publishes `request.volume` at `request.target`.
    pub async fn publish(&self, request: &Publish) -> Result<Published, CsiError> {
        let target = &request.target;
        let name = request.volume.as_str();
        let record = self.record(target)?;
        if self.is_mount_point(target)? {
            return match record {
                Some(mut record) if record.volume == name && record.read_only == request.read_only => {
                    if record.phase == Phase::Mounting {
                        record.phase = Phase::Mounted;
                        self.save(&record)?;
                    }
                    Ok(Published::Already)
                }
                Some(record) => Err(CsiError::AlreadyExists {
                    volume: name.to_owned(),
                    reason: format!(
                        "{} already holds volume {:?}{}",
                        target.display(),
                        record.volume,
                        if record.read_only { " read-only" } else { " read-write" }
                    ),
                }),
                None => Err(CsiError::AlreadyExists {
                    volume: name.to_owned(),
                    reason: format!("something else is mounted on {}", target.display()),
                }),
            };
        }
        if let Some(stale) = record {
            // A publish that did not finish, or a bind removed behind our
            // back: balance the plugin's count before mounting again.
            self.release(&stale).await?;
        }

        let mut created = false;
        if let Some(options) = &request.ephemeral
            && self.backend.get(&request.volume).await.map_err(|e| CsiError::backend(name, e))?.is_none()
        {
            tracing::info!(volume = name, options = %dory_core::redacted_options(options), "creating ephemeral volume");
            self.backend.create(&request.volume, options).await.map_err(|e| CsiError::backend(name, e))?;
            created = true;
        }
        let mut record = PublishRecord {
            target: target.clone(),
            volume: name.to_owned(),
            mount_id: request.mount_id.to_string(),
            source: None,
            read_only: request.read_only,
            ephemeral: request.ephemeral.is_some(),
            phase: Phase::Mounting,
        };
        self.save(&record)?;
        let source = match self.backend.mount(&request.volume, &request.mount_id).await {
            Ok(source) => source,
            Err(err) => {
                let err = CsiError::backend(name, err);
                self.forget(target)?;
                if created {
                    self.remove_quietly(&request.volume).await;
                }
                return Err(err);
            }
        };
        if let Err(err) = self.bind(&source, request).await {
            return Err(self.roll_back(&record, created, err).await);
        }
        record.source = Some(source.clone());
        record.phase = Phase::Mounted;
        if let Err(err) = self.save(&record) {
            tracing::warn!(error = %error_chain(&err), "published, but the record could not be updated");
        }
        Ok(Published::Now(source))
    }

    async fn bind(&self, source: &Path, request: &Publish) -> Result<(), CsiError> {
        let name = request.volume.as_str();
        // A relative path would be bound from our working directory, "/"
        // would hand the pod the host.
        if !source.is_absolute() || source.parent().is_none() {
            return Err(CsiError::FailedPrecondition {
                volume: name.to_owned(),
                reason: format!("the plugin's Mount returned an unusable mountpoint {:?}", source.display()),
            });
        }
        let target = &request.target;
        std::fs::create_dir_all(target).map_err(|source| CsiError::Io {
            action: "create the target directory",
            path: target.clone(),
            source,
        })?;
        kernel::bind(source, target, request.read_only).map_err(|e| CsiError::Io {
            action: if request.read_only { "bind-mount read-only onto" } else { "bind-mount onto" },
            path: target.clone(),
            source: std::io::Error::new(e.kind(), format!("from {}: {e}", source.display())),
        })
    }

    async fn roll_back(&self, record: &PublishRecord, created: bool, error: CsiError) -> CsiError {
        tracing::warn!(volume = %record.volume, target = %record.target.display(), error = %error_chain(&error),
            "publish failed after the plugin mounted; undoing");
        match self.release(record).await {
            Ok(()) => {
                let _ = self.forget(&record.target);
                let _ = std::fs::remove_dir(&record.target);
                if created && let Ok(volume) = VolumeName::new(record.volume.clone()) {
                    self.remove_quietly(&volume).await;
                }
                error
            }
            Err(rollback) => {
                tracing::error!(volume = %record.volume, error = %error_chain(&rollback), "rollback failed; the next call retries it");
                error
            }
        }
    }

    /// Unpublishes whatever is at `target`. Without a record (lost state),
    /// a mount there is taken to be `volume` with `mount_id`. Nothing
    /// there is success. The target directory is removed.
    pub async fn unpublish(&self, volume: &VolumeName, mount_id: &MountId, target: &Path) -> Result<(), CsiError> {
        let record = match self.record(target)? {
            Some(record) => record,
            None if self.is_mount_point(target)? => {
                let record = PublishRecord {
                    target: target.to_path_buf(),
                    volume: volume.to_string(),
                    mount_id: mount_id.to_string(),
                    source: None,
                    read_only: false,
                    ephemeral: false,
                    phase: Phase::Mounted,
                };
                // Remembered, so that a retry after a plugin failure still
                // knows what to unmount once the bind is gone.
                self.save(&record)?;
                record
            }
            None => {
                tracing::info!(volume = %volume, target = %target.display(), "not published; nothing to undo");
                return self.remove_target(volume.as_str(), target);
            }
        };
        if record.volume != volume.as_str() {
            tracing::warn!(asked = %volume, recorded = %record.volume, target = %target.display(),
                "unpublish names another volume than the one published there; undoing the published one");
        }
        self.release(&record).await?;
        if record.ephemeral {
            let name = VolumeName::new(record.volume.clone()).map_err(|e| CsiError::backend(&record.volume, e))?;
            match self.backend.remove(&name).await {
                Ok(()) => tracing::info!(volume = %name, "ephemeral volume removed"),
                Err(dory_core::Error::NotFound { .. }) => {}
                Err(err) => {
                    // Keep a record so that the retry removes it.
                    let keep = PublishRecord { phase: Phase::Mounting, ..record.clone() };
                    self.save(&keep)?;
                    return Err(CsiError::backend(name.as_str(), err));
                }
            }
            self.forget(target)?;
        }
        self.remove_target(&record.volume, target)
    }

    /// Unbinds `record.target` and undoes the plugin's mount, then forgets
    /// the record (an ephemeral one is kept until its volume is removed).
    async fn release(&self, record: &PublishRecord) -> Result<(), CsiError> {
        let target = &record.target;
        kernel::unmount_all(target).map_err(|source| CsiError::Io {
            action: "unmount",
            path: target.clone(),
            source,
        })?;
        let name = VolumeName::new(record.volume.clone()).map_err(|e| CsiError::backend(&record.volume, e))?;
        let id = MountId::new(record.mount_id.clone()).map_err(|e| CsiError::backend(&record.volume, e))?;
        match self.backend.unmount(&name, &id).await {
            Ok(()) | Err(dory_core::Error::NotFound { .. }) => {}
            Err(err) => return Err(CsiError::backend(name.as_str(), err)),
        }
        if !record.ephemeral {
            self.forget(target)?;
        }
        Ok(())
    }

    fn remove_target(&self, volume: &str, target: &Path) -> Result<(), CsiError> {
        match std::fs::remove_dir(target) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CsiError::FailedPrecondition {
                volume: volume.to_owned(),
                reason: format!("cannot remove the target directory {}: {source}", target.display()),
            }),
        }
    }

    async fn remove_quietly(&self, volume: &VolumeName) {
        if let Err(err) = self.backend.remove(volume).await {
            tracing::warn!(volume = %volume, error = %error_chain(&err), "cannot remove the ephemeral volume after a failed publish");
        }
    }

    /// Whether anything is mounted on `target`.
    pub fn is_mount_point(&self, target: &Path) -> Result<bool, CsiError> {
        kernel::mounted_at(target).map(|entry| entry.is_some()).map_err(|source| CsiError::Io {
            action: "read the mount table for",
            path: target.to_path_buf(),
            source,
        })
    }

    fn record_path(&self, target: &Path) -> PathBuf {
        self.records.join(format!("{:016x}.json", fnv1a(target.as_os_str().as_encoded_bytes())))
    }

    /// The record for `target`, if any (a torn or foreign one is ignored).
    pub fn record(&self, target: &Path) -> Result<Option<PublishRecord>, CsiError> {
        let path = self.record_path(target);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice::<PublishRecord>(&bytes).ok().filter(|r| r.target == target)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CsiError::Io { action: "read the publish record", path, source }),
        }
    }

    fn save(&self, record: &PublishRecord) -> Result<(), CsiError> {
        let path = self.record_path(&record.target);
        let io = |source| CsiError::Io { action: "write the publish record", path: path.clone(), source };
        std::fs::create_dir_all(&self.records).map_err(io)?;
        let temp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temp).map_err(io)?;
        file.write_all(&serde_json::to_vec(record).unwrap_or_default()).map_err(io)?;
        std::fs::rename(&temp, &path).map_err(io)
    }

    fn forget(&self, target: &Path) -> Result<(), CsiError> {
        let path = self.record_path(target);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CsiError::Io { action: "delete the publish record", path, source }),
        }
    }
}

/// FNV-1a, 64 bit: a hash that stays the same across builds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The plugin Mount ID of a publish: the pod's UID (from the volume context,
/// else from kubelet's `<root>/pods/<uid>/volumes/...` target path), else a
/// hash of the target path. Unpublish, which only has the path, finds the
/// same ID for every path kubelet builds.
pub fn mount_id(pod_uid: Option<&str>, target: &Path) -> MountId {
    let from_path = || {
        let mut parts = target.components().map(|c| c.as_os_str().to_str().unwrap_or_default());
        while let Some(part) = parts.next() {
            if part == "pods" {
                let uid = parts.next()?;
                return (parts.next() == Some("volumes") && !uid.is_empty()).then(|| uid.to_owned());
            }
        }
        None
    };
    let id = pod_uid
        .filter(|uid| !uid.is_empty())
        .map(str::to_owned)
        .or_else(from_path)
        .unwrap_or_else(|| format!("csi-{:016x}", fnv1a(target.as_os_str().as_encoded_bytes())));
    MountId::new(id).unwrap_or_default()
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
        assert_eq!(mount_id(None, Path::new("/x/pods/u/notvolumes/y")).as_str().len(), 20);
    }
}
