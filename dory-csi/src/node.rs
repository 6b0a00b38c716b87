//! The Node service: publish a volume into a pod's directory (plugin Mount
//! plus a bind), unpublish it, report usage and health, and inline
//! ephemeral volumes that live exactly as long as their pod.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dory_core::{CreateOptions, ErrorKind, VolumeName, error_chain};
use tonic::{Request, Response, Status};

use crate::driver::{
    CsiDriver, EPHEMERAL_KEY, POD_UID_KEY, Unsupported, check_capability, is_read_only_mode, without_k8s_keys,
};
use crate::error::CsiError;
use crate::kernel;
use crate::proto::node_server::Node;
use crate::proto::node_service_capability::{Rpc, Type, rpc};
use crate::proto::volume_usage::Unit;
use crate::proto::*;
use crate::publish::mount_id;
use dory_mount::{MissingVolume, PublishOutcome, PublishRequest};

/// Node, served with `--node`.
pub struct NodeService {
    driver: Arc<CsiDriver>,
}

impl NodeService {
    /// The service over `driver`.
    pub fn new(driver: Arc<CsiDriver>) -> Self {
        Self { driver }
    }

    /// Refuses a second, different publish at the same path: another volume,
    /// or the same one with the other read-only setting, is ALREADY_EXISTS.
    fn check_same_publish(&self, name: &str, target: &Path, read_only: bool) -> Result<(), CsiError> {
        let publisher = &self.driver.publisher;
        let mounter = publisher.mounter();
        // The kernel answers this cheaply; the mount table is read only for a mount point.
        if !mounter.is_mount_point(target).map_err(|e| CsiError::backend(name, e))? {
            return Ok(());
        }
        let Some(entry) = mounter.mounted_at(target).map_err(|e| CsiError::backend(name, e))? else { return Ok(()) };
        let record =
            publisher.state().record(target).map_err(|source| CsiError::Mount { volume: name.into(), source })?;
        let reason = match record {
            None => format!("something else is mounted on {}", target.display()),
            Some(record) if record.volume != name => {
                format!("{} already holds volume {:?}", target.display(), record.volume)
            }
            Some(_) if entry.is_read_only() != read_only => format!(
                "{} already holds it {}",
                target.display(),
                if entry.is_read_only() { "read-only" } else { "read-write" }
            ),
            Some(_) => return Ok(()),
        };
        Err(CsiError::AlreadyExists { volume: name.to_owned(), reason })
    }

    /// The Create options of an inline ephemeral volume: the pod's volume
    /// attributes (without Kubernetes' keys, never Dory's "provisioned
    /// elsewhere" mark, and never the clone option: a pod's author must not
    /// copy any volume of the plugin by naming it), then the defaults.
    fn ephemeral_options(&self, context: &std::collections::HashMap<String, String>) -> CreateOptions {
        let mut options = without_k8s_keys(context);
        options.remove(dory_core::PROVISIONED_OPTION);
        options.remove(&self.driver.settings.clone_option);
        for (key, value) in &self.driver.settings.default_options {
            options.entry(key.clone()).or_insert_with(|| value.clone());
        }
        options
    }
}

/// How long NodeGetVolumeStats waits for the kernel (records, mount table,
/// statvfs) before it answers with a condition message instead.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// The blocking part of NodeGetVolumeStats: whether `path` is published and
/// mounted, and its usage. Run under `spawn_blocking`.
fn path_stats(driver: &CsiDriver, volume: &str, path: &Path) -> Result<(bool, kernel::Usage), CsiError> {
    let publisher = &driver.publisher;
    let record =
        publisher.state().record(path).map_err(|source| CsiError::Mount { volume: volume.to_owned(), source })?;
    let mounted = publisher.mounter().is_mount_point(path).map_err(|e| CsiError::backend(volume, e))?;
    if record.is_none() && !mounted || !path.exists() {
        return Err(CsiError::NotFound {
            volume: volume.to_owned(),
            reason: format!("not published at {}", path.display()),
        });
    }
    let usage =
        kernel::usage(path).map_err(|source| CsiError::Io { action: "statfs", path: path.to_owned(), source })?;
    Ok((mounted, usage))
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, CsiError> {
    if value.is_empty() { Err(CsiError::invalid(format!("{field} is required"))) } else { Ok(value) }
}

fn volume_name(id: &str) -> Result<VolumeName, CsiError> {
    VolumeName::new(required(id, "volume_id")?).map_err(|e| CsiError::invalid(format!("volume_id: {e}")))
}

fn target_path(path: &str, volume: &str) -> Result<PathBuf, CsiError> {
    let path = PathBuf::from(required(path, "target_path")?);
    if !path.is_absolute() {
        return Err(CsiError::invalid(format!("volume {volume:?}: target_path {} must be absolute", path.display())));
    }
    Ok(path)
}

fn capability(kind: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: kind as i32 })) }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        _: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(CsiError::Unsupported("NodeStageVolume (no STAGE_UNSTAGE_VOLUME)").into())
    }

    async fn node_unstage_volume(
        &self,
        _: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(CsiError::Unsupported("NodeUnstageVolume (no STAGE_UNSTAGE_VOLUME)").into())
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let volume = volume_name(&request.volume_id)?;
        let target = target_path(&request.target_path, volume.as_str())?;
        let capability = request
            .volume_capability
            .as_ref()
            .ok_or_else(|| CsiError::invalid(format!("volume {volume}: volume_capability is required")))?;
        match check_capability(capability, self.driver.scope().await?) {
            Ok(()) => {}
            Err(Unsupported::Invalid(reason)) => {
                return Err(CsiError::invalid(format!("volume {volume}: {reason}")).into());
            }
            Err(Unsupported::Exceeds(reason)) => {
                return Err(CsiError::FailedPrecondition { volume: volume.to_string(), reason }.into());
            }
        }
        let ephemeral = request.volume_context.get(EPHEMERAL_KEY).is_some_and(|v| v == "true");
        let read_only = request.readonly || is_read_only_mode(capability);
        let name = volume.to_string();
        let _claim = self.driver.inflight.claim(&name)?;
        let publish = PublishRequest {
            id: mount_id(request.volume_context.get(POD_UID_KEY).map(String::as_str), &target),
            read_only,
            missing: if ephemeral {
                MissingVolume::Create(self.ephemeral_options(&request.volume_context))
            } else {
                MissingVolume::Refuse("CreateVolume makes volumes; NodePublishVolume only mounts them".into())
            },
            volume,
        };
        tracing::info!(volume = %name, target = %target.display(), pod = %publish.id, read_only, ephemeral, "publish requested");
        self.check_same_publish(&name, &target, read_only)?;
        let backend = &self.driver.backend;
        let existed = if ephemeral {
            let existed = backend.get(&publish.volume).await.map_err(|e| CsiError::backend(&name, e))?.is_some();
            self.driver.ephemeral.mark(&target, &name)?;
            existed
        } else {
            true
        };
        match self.driver.publisher.publish(&target, &publish).await {
            Ok(PublishOutcome::Mounted { source }) => {
                tracing::info!(volume = %name, target = %target.display(), source = %source.display(), "published");
                Ok(Response::new(NodePublishVolumeResponse {}))
            }
            Ok(PublishOutcome::AlreadyMounted) => Ok(Response::new(NodePublishVolumeResponse {})),
            Err(err) => {
                tracing::warn!(volume = %name, target = %target.display(), error = %error_chain(&err), "publish failed");
                if !self.driver.publisher.mounter().is_mount_point(&target).unwrap_or(true) {
                    let _ = std::fs::remove_dir(&target);
                }
                if ephemeral && !existed {
                    // kubelet may never call NodeUnpublishVolume after a
                    // failed publish: the volume made for it goes now. The
                    // mark goes only with the volume: if Remove failed, it
                    // stays, so a later NodeUnpublishVolume removes it.
                    match backend.remove(&publish.volume).await {
                        Ok(()) => self.driver.ephemeral.clear(&target),
                        Err(remove) if remove.is_not_found() => self.driver.ephemeral.clear(&target),
                        Err(remove) => {
                            tracing::warn!(volume = %name, error = %error_chain(&remove), "cannot remove the ephemeral volume of a failed publish; NodeUnpublishVolume will");
                        }
                    }
                }
                Err(CsiError::Mount { volume: name, source: err }.into())
            }
        }
    }

    /// Idempotent; works from the path alone (records survive a restart);
    /// a path with nothing published is success, as kubelet needs. The
    /// target directory this driver created is removed.
    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let volume = volume_name(&request.volume_id)?;
        let target = target_path(&request.target_path, volume.as_str())?;
        let name = volume.to_string();
        let _claim = self.driver.inflight.claim(&name)?;
        tracing::info!(volume = %name, target = %target.display(), "unpublish requested");
        self.driver
            .publisher
            .unpublish(&target, Some(mount_id(None, &target)))
            .await
            .map_err(|source| CsiError::Mount { volume: name.clone(), source })?;
        if let Some(ephemeral) = self.driver.ephemeral.volume(&target) {
            let ephemeral = VolumeName::new(ephemeral).map_err(|e| CsiError::backend(&name, e))?;
            match self.driver.backend.remove(&ephemeral).await {
                Ok(()) => tracing::info!(volume = %ephemeral, "ephemeral volume removed"),
                Err(err) if err.is_not_found() => {}
                // The mark stays: kubelet retries, and the retry removes it.
                Err(err) => return Err(CsiError::backend(ephemeral.as_str(), err).into()),
            }
            self.driver.ephemeral.clear(&target);
        }
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CsiError::Io { action: "remove the target directory", path: target, source }.into());
            }
        }
        tracing::info!(volume = %name, target = %target.display(), "unpublished");
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    /// Bytes and inodes of the published path, and whether the volume is
    /// still healthy: abnormal only when the mount is gone or the plugin
    /// definitely no longer has the volume; a plugin that cannot answer is
    /// reported in the message, not as abnormal. The kernel is asked off the
    /// runtime's workers and within [`STATS_TIMEOUT`] (a hung network mount
    /// must not hang the driver): a timeout is a condition message too.
    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let request = request.into_inner();
        let volume = volume_name(&request.volume_id)?;
        let path = PathBuf::from(required(&request.volume_path, "volume_path")?);
        let driver = self.driver.clone();
        let probe_path = path.clone();
        let name = volume.to_string();
        let probe = tokio::task::spawn_blocking(move || path_stats(&driver, &name, &probe_path));
        let (mounted, usage) = match tokio::time::timeout(STATS_TIMEOUT, probe).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => {
                return Err(CsiError::Io {
                    action: "read the usage of",
                    path,
                    source: std::io::Error::other(join.to_string()),
                }
                .into());
            }
            Err(_) => {
                tracing::warn!(volume = %volume, path = %path.display(), "volume stats timed out");
                let message = format!(
                    "volume {volume}: {} did not answer within {}s (a hung mount?)",
                    path.display(),
                    STATS_TIMEOUT.as_secs()
                );
                return Ok(Response::new(NodeGetVolumeStatsResponse {
                    usage: Vec::new(),
                    volume_condition: Some(VolumeCondition { abnormal: false, message }),
                }));
            }
        };
        let condition = if !mounted {
            VolumeCondition {
                abnormal: true,
                message: format!("volume {volume}: the mount at {} is gone", path.display()),
            }
        } else {
            match self.driver.backend.get(&volume).await {
                Ok(Some(_)) => VolumeCondition { abnormal: false, message: format!("volume {volume} is healthy") },
                Ok(None) => VolumeCondition {
                    abnormal: true,
                    message: format!("volume {volume}: the plugin no longer has this volume"),
                },
                Err(err) if err.kind() == ErrorKind::NotFound => VolumeCondition {
                    abnormal: true,
                    message: format!("volume {volume}: the plugin no longer has this volume: {}", error_chain(&err)),
                },
                // Not known to be unhealthy: the plugin could not say.
                Err(err) => VolumeCondition {
                    abnormal: false,
                    message: format!("volume {volume}: cannot ask the plugin: {}", error_chain(&err)),
                },
            }
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: vec![
                VolumeUsage {
                    available: usage.bytes_available,
                    total: usage.bytes_total,
                    used: usage.bytes_used,
                    unit: Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: usage.inodes_available,
                    total: usage.inodes_total,
                    used: usage.inodes_used,
                    unit: Unit::Inodes as i32,
                },
            ],
            volume_condition: Some(condition),
        }))
    }

    async fn node_expand_volume(
        &self,
        _: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(CsiError::Unsupported("NodeExpandVolume").into())
    }

    /// Constant and cheap: kubelet asks before nearly every call.
    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let capabilities =
            [rpc::Type::GetVolumeStats, rpc::Type::VolumeCondition].into_iter().map(capability).collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        let node_id = self.driver.node_id.clone();
        Ok(Response::new(NodeGetInfoResponse {
            node_id,
            max_volumes_per_node: 0,
            accessible_topology: self.driver.topology().await?,
        }))
    }
}
