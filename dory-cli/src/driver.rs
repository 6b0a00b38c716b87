//! The `mount` and `unmount` verbs: a FlexVolume request turned into a
//! [`PublishRequest`] for the shared [`Publisher`].

use std::path::Path;
use std::sync::Arc;

use dory_core::{DriverConfig, Mounter, VolumeBackend};
use dory_mount::{MissingVolume, PublishOutcome, PublishRequest, Publisher, PublisherSettings};

use crate::error::DriverError;
use crate::request::{MountRequest, mount_id};

/// The FlexVolume driver: configuration plus the publisher.
pub struct Driver {
    publisher: Publisher,
}

impl Driver {
    /// A driver; `selinux` says whether mounted volumes get relabelled.
    pub fn new(
        config: DriverConfig,
        backend: Arc<dyn VolumeBackend>,
        mounter: Arc<dyn Mounter>,
        selinux: bool,
    ) -> Self {
        let publisher = Publisher::new(PublisherSettings::from_config(&config, selinux), backend, mounter);
        Self { publisher }
    }

    /// What mounting `request` onto the pod volume directory `dir` asks of
    /// the publisher, from the request and the configuration alone.
    pub fn publish_request(
        config: &DriverConfig,
        dir: &Path,
        request: &MountRequest,
    ) -> Result<PublishRequest, DriverError> {
        let volume = request.volume_name()?;
        let id = mount_id(dir, Some(request))?;
        // Checked here, used by the runtime (it is logged, never applied).
        request.fs_group()?;
        let read_only = request.read_only();
        let missing = match request.provisioned_by() {
            // A provisioned PV's volume was made where it belongs; missing
            // here means this node's plugin cannot see it (a node-local
            // plugin), and an empty new volume would split the data.
            Some(provisioner) => MissingVolume::Refuse(format!(
                "it was provisioned by {provisioner} and is not visible to this node's plugin, so it is not created here \
                 (with a node-local plugin, the pod must run on the node the volume was provisioned on)"
            )),
            None if !config.create_volumes => {
                MissingVolume::Refuse(format!("createVolumes is false in {}", config.path.display()))
            }
            None => MissingVolume::Create(request.create_options(config.strip_k8s_options, &config.default_options)?),
        };
        Ok(PublishRequest { volume, id, read_only, missing })
    }

    /// Mounts a volume onto the pod volume directory `dir` (see
    /// [`publish_request`](Self::publish_request)).
    pub async fn mount(&self, dir: &Path, publish: &PublishRequest) -> Result<PublishOutcome, DriverError> {
        Ok(self.publisher.publish(dir, publish).await?)
    }

    /// Unmounts the pod volume directory `dir`, working from the path alone.
    pub async fn unmount(&self, dir: &Path) -> Result<(), DriverError> {
        let fallback = mount_id(dir, None).ok();
        Ok(self.publisher.unpublish(dir, fallback).await?)
    }

    /// Recovers after an interrupted `mount` (SIGTERM): undoes a half-done
    /// mount of `dir`.
    pub async fn recover_interrupted(&self, dir: &Path) -> Result<bool, DriverError> {
        Ok(self.publisher.recover_interrupted(dir).await?)
    }
}
