//! The Controller service: volumes are created, deleted, validated and
//! listed through the backend. No attach step (no ControllerPublish), no
//! snapshots, no expansion: the Docker API has none of them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use dory_core::{CreateOptions, ErrorKind, VolumeName, error_chain, redacted_options};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::driver::{CsiDriver, Unsupported, check_capability, without_k8s_keys};
use crate::error::CsiError;
use crate::proto::controller_server::Controller;
use crate::proto::controller_service_capability::{Rpc, Type, rpc};
use crate::proto::validate_volume_capabilities_response::Confirmed;
use crate::proto::volume_content_source::{Type as Source, VolumeSource};
use crate::proto::*;

/// What was asked of the plugin for one volume, kept so that a retried
/// CreateVolume can be told apart from an incompatible one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecord {
    /// The volume.
    pub name: String,
    /// The capacity given to the plugin, in bytes (0: none asked).
    pub capacity_bytes: i64,
    /// The options given to Create.
    pub options: CreateOptions,
    /// The volume it was cloned from.
    pub clone_of: Option<String>,
}

/// Controller, served with `--controller`.
pub struct ControllerService {
    driver: Arc<CsiDriver>,
    records: PathBuf,
}

impl ControllerService {
    /// The service over `driver`.
    pub fn new(driver: Arc<CsiDriver>) -> Self {
        let records = driver.settings.state_dir.join("csi-volumes");
        Self { driver, records }
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.records.join(format!("{:016x}.json", crate::publish::fnv1a(name.as_bytes())))
    }

    fn record(&self, name: &str) -> Option<VolumeRecord> {
        let bytes = std::fs::read(self.record_path(name)).ok()?;
        serde_json::from_slice::<VolumeRecord>(&bytes).ok().filter(|r| r.name == name)
    }

    fn save(&self, record: &VolumeRecord) -> Result<(), CsiError> {
        let path = self.record_path(&record.name);
        let io = |source| CsiError::Io { action: "write the volume record", path: path.clone(), source };
        std::fs::create_dir_all(&self.records).map_err(io)?;
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, serde_json::to_vec(record).unwrap_or_default()).map_err(io)?;
        std::fs::rename(&temp, &path).map_err(io)
    }

    fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.record_path(name));
    }

    /// The capacity in bytes to ask for, in whole units of the size rules,
    /// and the number of units; `None` when no size was asked.
    fn capacity(&self, name: &str, range: Option<&CapacityRange>) -> Result<Option<(i64, u64)>, CsiError> {
        let Some(range) = range else { return Ok(None) };
        let (required, limit) = (range.required_bytes, range.limit_bytes);
        if required < 0 || limit < 0 {
            return Err(CsiError::invalid(format!("volume {name:?}: capacity_range values may not be negative")));
        }
        if limit > 0 && required > limit {
            return Err(CsiError::invalid(format!(
                "volume {name:?}: required_bytes {required} is more than limit_bytes {limit}"
            )));
        }
        if self.driver.size.resource_options.is_empty() {
            // No option carries a size: nothing is asked, capacity unknown.
            return Ok(None);
        }
        let factor = self.driver.size.factor.max(1);
        let units = match (required, limit) {
            (0, 0) => return Ok(None),
            (0, limit) => limit.unsigned_abs() / factor,
            (required, _) => required.unsigned_abs().div_ceil(factor),
        };
        let bytes = units.checked_mul(factor).and_then(|b| i64::try_from(b).ok());
        match bytes {
            Some(bytes) if units > 0 && (limit == 0 || bytes <= limit) => Ok(Some((bytes, units))),
            _ => Err(CsiError::OutOfRange {
                volume: name.to_owned(),
                reason: format!(
                    "the plugin sizes volumes in whole units of {factor} bytes; none fits required {required}, limit {limit}"
                ),
            }),
        }
    }

    /// The Create options: the parameters (without Kubernetes' own keys),
    /// the size in the first size option the parameters do not already
    /// hold (or in every one they do), the clone source, then the defaults.
    fn create_options(
        &self,
        parameters: &HashMap<String, String>,
        bytes: Option<i64>,
        clone_of: Option<(&str, &str)>,
    ) -> CreateOptions {
        let mut options = without_k8s_keys(parameters);
        // Never Dory's mark of a volume provisioned elsewhere.
        options.remove(dory_core::PROVISIONED_OPTION);
        if let Some(bytes) = bytes {
            self.driver.size.apply(&mut options, u128::from(bytes.unsigned_abs()));
        }
        if let Some((key, source)) = clone_of {
            options.insert(key.to_owned(), source.to_owned());
        }
        for (key, value) in &self.driver.size.defaults {
            options.entry(key.clone()).or_insert_with(|| value.clone());
        }
        options
    }

    async fn check_capabilities(&self, name: &str, capabilities: &[VolumeCapability]) -> Result<(), CsiError> {
        if capabilities.is_empty() {
            return Err(CsiError::invalid(format!("volume {name:?}: volume_capabilities are required")));
        }
        let scope = self.driver.scope().await?;
        for capability in capabilities {
            if let Err(Unsupported::Invalid(reason) | Unsupported::Exceeds(reason)) =
                check_capability(capability, scope)
            {
                return Err(CsiError::invalid(format!("volume {name:?}: {reason}")));
            }
        }
        Ok(())
    }

    /// Refuses a volume that must be reachable only from other nodes.
    fn check_placement(
        &self,
        name: &str,
        here: &Topology,
        wanted: Option<&TopologyRequirement>,
    ) -> Result<(), CsiError> {
        let Some(wanted) = wanted else { return Ok(()) };
        let candidates = if wanted.requisite.is_empty() { &wanted.preferred } else { &wanted.requisite };
        let key = self.driver.topology_key();
        let mine = &here.segments[&key];
        if candidates.is_empty() || candidates.iter().any(|t| t.segments.get(&key) == Some(mine)) {
            return Ok(());
        }
        Err(CsiError::Unplaceable {
            volume: name.to_owned(),
            reason: format!(
                "this controller creates volumes on node {mine:?} only ({key}), and the requirements name other nodes"
            ),
        })
    }

    fn volume(&self, record: &VolumeRecord, topology: Option<&Topology>) -> Volume {
        Volume {
            capacity_bytes: record.capacity_bytes,
            volume_id: record.name.clone(),
            volume_context: HashMap::new(),
            content_source: record.clone_of.as_ref().map(|source| VolumeContentSource {
                r#type: Some(Source::Volume(VolumeSource { volume_id: source.clone() })),
            }),
            accessible_topology: topology.into_iter().cloned().collect(),
        }
    }

    async fn exists(&self, name: &VolumeName) -> Result<bool, CsiError> {
        Ok(self.driver.backend.get(name).await.map_err(|e| CsiError::backend(name.as_str(), e))?.is_some())
    }
}

fn volume_name(id: &str, field: &str) -> Result<VolumeName, CsiError> {
    if id.is_empty() {
        return Err(CsiError::invalid(format!("{field} is required")));
    }
    VolumeName::new(id).map_err(|e| CsiError::invalid(format!("{field}: {e}")))
}

/// How `asked` differs from the recorded `existing`.
fn mismatch(existing: &VolumeRecord, asked: &VolumeRecord) -> String {
    if existing.capacity_bytes != asked.capacity_bytes {
        format!("with {} bytes, not {}", existing.capacity_bytes, asked.capacity_bytes)
    } else if existing.clone_of != asked.clone_of {
        format!("from source {:?}, not {:?}", existing.clone_of, asked.clone_of)
    } else {
        format!("with options {}, not {}", redacted_options(&existing.options), redacted_options(&asked.options))
    }
}

fn capability(kind: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: kind as i32 })) }
}

/// The token of a ListVolumes page: the hex of the next volume's name.
fn page_token(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn parse_page_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let request = request.into_inner();
        let name = volume_name(&request.name, "name")?;
        self.check_capabilities(name.as_str(), &request.volume_capabilities).await?;
        let _claim = self.driver.inflight.claim(name.as_str())?;
        let topology = self.driver.topology().await?;
        if let Some(here) = &topology {
            self.check_placement(name.as_str(), here, request.accessibility_requirements.as_ref())?;
        }
        let clone_of = match request.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(Source::Snapshot(_)) => {
                return Err(CsiError::invalid(format!(
                    "volume {name}: restoring from a snapshot is not supported (Docker volume plugins have no snapshots)"
                ))
                .into());
            }
            Some(Source::Volume(_)) if self.driver.clone_option.is_none() => {
                return Err(CsiError::invalid(format!(
                    "volume {name}: cloning from a volume is not supported: the plugin is not configured to clone: \
                     set cloneOptionName (the Create option the plugin reads as the volume to copy)"
                ))
                .into());
            }
            Some(Source::Volume(source)) => {
                let source_name = volume_name(&source.volume_id, "volume_content_source.volume.volume_id")?;
                if !self.exists(&source_name).await? {
                    return Err(CsiError::NotFound {
                        volume: name.to_string(),
                        reason: format!("the volume to clone, {source_name:?}, does not exist"),
                    }
                    .into());
                }
                Some(source_name.to_string())
            }
        };
        let capacity = self.capacity(name.as_str(), request.capacity_range.as_ref())?;
        let clone = self.driver.clone_option.as_deref().zip(clone_of.as_deref());
        let options = self.create_options(&request.parameters, capacity.map(|(bytes, _)| bytes), clone);
        let record = VolumeRecord {
            name: name.to_string(),
            capacity_bytes: capacity.map_or(0, |(bytes, _)| bytes),
            options,
            clone_of,
        };

        let exists = self.exists(&name).await?;
        match self.record(name.as_str()) {
            Some(existing) if existing == record && exists => {
                tracing::info!(volume = %name, "volume exists with the same parameters");
                return Ok(Response::new(CreateVolumeResponse {
                    volume: Some(self.volume(&existing, topology.as_ref())),
                }));
            }
            // A retry of a Create whose outcome was unknown: ask again.
            Some(existing) if existing == record => {}
            Some(existing) => {
                // The record is written before Create: whether the volume
                // exists yet or a timed-out Create may still make it, it is
                // being made with other properties.
                return Err(
                    CsiError::AlreadyExists { volume: name.to_string(), reason: mismatch(&existing, &record) }.into()
                );
            }
            None if exists => {
                // Made by someone else, or our record was lost: the plugin
                // cannot tell us its size or options, so take it as asked.
                tracing::warn!(volume = %name, "volume exists without a record of how it was made; taking it as asked");
                self.save(&record)?;
                return Ok(Response::new(CreateVolumeResponse {
                    volume: Some(self.volume(&record, topology.as_ref())),
                }));
            }
            None => {}
        }
        // The intent first: a retry after a Create that timed out is then
        // compared with what that Create asked, not silently accepted.
        self.save(&record)?;
        tracing::info!(volume = %name, options = %redacted_options(&record.options), capacity = record.capacity_bytes, "creating volume");
        if let Err(err) = self.driver.backend.create(&name, &record.options).await {
            if err.kind() != ErrorKind::Unavailable {
                // The plugin definitely did not make it: nothing to remember.
                self.forget(name.as_str());
            }
            return Err(CsiError::backend(name.as_str(), err).into());
        }
        Ok(Response::new(CreateVolumeResponse { volume: Some(self.volume(&record, topology.as_ref())) }))
    }

    /// Idempotent: a volume that is already gone is success; only the
    /// plugin's definite "no such volume" counts as gone, never an error.
    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required").into());
        }
        let Ok(name) = VolumeName::new(request.volume_id.clone()) else {
            // No volume can have that name: it is not there.
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let _claim = self.driver.inflight.claim(name.as_str())?;
        if !self.exists(&name).await? {
            tracing::info!(volume = %name, "volume already gone");
            self.forget(name.as_str());
            return Ok(Response::new(DeleteVolumeResponse {}));
        }
        match self.driver.backend.remove(&name).await {
            Err(err) if err.is_not_found() => {
                tracing::info!(volume = %name, "volume already gone");
                self.forget(name.as_str());
                Ok(Response::new(DeleteVolumeResponse {}))
            }
            Ok(()) => {
                tracing::info!(volume = %name, "volume deleted");
                self.forget(name.as_str());
                Ok(Response::new(DeleteVolumeResponse {}))
            }
            Err(err) => {
                tracing::warn!(volume = %name, error = %error_chain(&err), "delete failed");
                Err(CsiError::backend(name.as_str(), err).into())
            }
        }
    }

    async fn controller_publish_volume(
        &self,
        _: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(CsiError::Unsupported("ControllerPublishVolume").into())
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(CsiError::Unsupported("ControllerUnpublishVolume").into())
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let request = request.into_inner();
        let name = volume_name(&request.volume_id, "volume_id")?;
        if request.volume_capabilities.is_empty() {
            return Err(CsiError::invalid(format!("volume {name}: volume_capabilities are required")).into());
        }
        if !self.exists(&name).await? {
            return Err(CsiError::NotFound { volume: name.to_string(), reason: "no such volume".into() }.into());
        }
        let scope = self.driver.scope().await?;
        let problems: Vec<String> = request
            .volume_capabilities
            .iter()
            .filter_map(|c| match check_capability(c, scope) {
                Ok(()) => None,
                Err(Unsupported::Invalid(reason) | Unsupported::Exceeds(reason)) => Some(reason),
            })
            .collect();
        let reply = if problems.is_empty() {
            ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: request.volume_context,
                    volume_capabilities: request.volume_capabilities,
                    parameters: request.parameters,
                    mutable_parameters: request.mutable_parameters,
                }),
                message: String::new(),
            }
        } else {
            ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: format!("volume {name}: {}", problems.join("; ")),
            }
        };
        Ok(Response::new(reply))
    }

    /// Pages through the plugin's List, in name order; a token is the next
    /// volume's name (hex), so pages stay right while volumes come and go.
    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let request = request.into_inner();
        let max = usize::try_from(request.max_entries)
            .map_err(|_| CsiError::invalid(format!("max_entries {} may not be negative", request.max_entries)))?;
        let start = if request.starting_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&request.starting_token).ok_or_else(|| {
                Status::aborted(format!(
                    "starting_token {:?} was not made by this driver; list again from the start",
                    request.starting_token
                ))
            })?)
        };
        let volumes = self.driver.backend.list().await.map_err(|e| CsiError::backend("(list)", e))?;
        let names: BTreeMap<String, ()> = volumes.into_iter().map(|v| (v.name, ())).collect();
        let topology = self.driver.topology().await?;
        let mut entries = Vec::new();
        let mut next_token = String::new();
        let from = start.unwrap_or_default();
        for name in names.range(from..).map(|(n, _)| n) {
            if max > 0 && entries.len() == max {
                next_token = page_token(name);
                break;
            }
            let record = self.record(name).unwrap_or_else(|| VolumeRecord {
                name: name.clone(),
                capacity_bytes: 0,
                options: CreateOptions::new(),
                clone_of: None,
            });
            entries.push(list_volumes_response::Entry {
                volume: Some(self.volume(&record, topology.as_ref())),
                status: None,
            });
        }
        Ok(Response::new(ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(&self, _: Request<GetCapacityRequest>) -> Result<Response<GetCapacityResponse>, Status> {
        Err(CsiError::Unsupported("GetCapacity (the Docker API cannot tell free space)").into())
    }

    /// Only what is implemented: create/delete, list, and clone when the
    /// settings name the plugin's clone option.
    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let mut kinds = vec![rpc::Type::CreateDeleteVolume, rpc::Type::ListVolumes];
        if self.driver.clone_option.is_some() {
            kinds.push(rpc::Type::CloneVolume);
        }
        let capabilities = kinds.into_iter().map(capability).collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn create_snapshot(
        &self,
        _: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        Err(CsiError::Unsupported("CreateSnapshot").into())
    }

    async fn delete_snapshot(
        &self,
        _: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        Err(CsiError::Unsupported("DeleteSnapshot").into())
    }

    async fn list_snapshots(
        &self,
        _: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        Err(CsiError::Unsupported("ListSnapshots").into())
    }

    async fn get_snapshot(&self, _: Request<GetSnapshotRequest>) -> Result<Response<GetSnapshotResponse>, Status> {
        Err(CsiError::Unsupported("GetSnapshot").into())
    }

    async fn controller_expand_volume(
        &self,
        _: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        Err(CsiError::Unsupported("ControllerExpandVolume").into())
    }

    async fn controller_get_volume(
        &self,
        _: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(CsiError::Unsupported("ControllerGetVolume").into())
    }

    async fn controller_modify_volume(
        &self,
        _: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(CsiError::Unsupported("ControllerModifyVolume").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(configure: impl FnOnce(&mut dory_core::DriverConfig)) -> (ControllerService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = dory_core::DriverConfig::defaults(&dir.path().join("etc/dory-csi.json"));
        config.state_dir = dir.path().join("state");
        configure(&mut config);
        let backend = Arc::new(dory_backend_mock::MockBackend::new(dir.path().join("volumes")).unwrap());
        let driver = Arc::new(CsiDriver::new("btrfs.dory.io".into(), "n1".into(), config, backend));
        (ControllerService::new(driver), dir)
    }

    fn range(required_bytes: i64, limit_bytes: i64) -> CapacityRange {
        CapacityRange { required_bytes, limit_bytes }
    }

    #[test]
    fn capacity_rounds_up_to_whole_units_and_honours_the_limit() {
        let (service, _dir) = service(|_| {});
        const GIB: i64 = 1 << 30;
        assert_eq!(service.capacity("v", None).unwrap(), None);
        assert_eq!(service.capacity("v", Some(&range(0, 0))).unwrap(), None);
        assert_eq!(service.capacity("v", Some(&range(1, 0))).unwrap(), Some((GIB, 1)));
        assert_eq!(service.capacity("v", Some(&range(GIB + 1, 0))).unwrap(), Some((2 * GIB, 2)));
        assert_eq!(service.capacity("v", Some(&range(GIB, GIB))).unwrap(), Some((GIB, 1)));
        // Only a limit: the largest whole size under it.
        assert_eq!(service.capacity("v", Some(&range(0, 5 * GIB / 2))).unwrap(), Some((2 * GIB, 2)));
        assert!(matches!(service.capacity("v", Some(&range(0, GIB - 1))), Err(CsiError::OutOfRange { .. })));
        assert!(matches!(service.capacity("v", Some(&range(GIB + 1, GIB + 2))), Err(CsiError::OutOfRange { .. })));
        assert!(matches!(service.capacity("v", Some(&range(-1, 0))), Err(CsiError::Invalid(_))));
        assert!(matches!(service.capacity("v", Some(&range(2, 1))), Err(CsiError::Invalid(_))));
    }

    #[test]
    fn options_are_the_parameters_with_the_size_source_and_defaults_never_kubernetes_keys() {
        let (service, _dir) = service(|config| {
            config.storage_resource_options = vec!["size".into(), "sizeInGiB".into()];
            config.default_options =
                [("compress".to_owned(), "lz4".to_owned()), ("copies".to_owned(), "1".to_owned())].into();
        });
        let parameters: HashMap<String, String> = [
            ("copies", "2"),
            ("sizeInGiB", "99"),
            ("csi.storage.k8s.io/pvc/name", "data"),
            (dory_core::PROVISIONED_OPTION, "elsewhere"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let options = service.create_options(&parameters, Some(3 << 30), Some(("copyOf", "pvc-src")));
        let expected: CreateOptions = [("copies", "2"), ("sizeInGiB", "3"), ("compress", "lz4"), ("copyOf", "pvc-src")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(options, expected, "a size option the class sets is overwritten, not duplicated");
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_page_token(&page_token("pvc-1")).as_deref(), Some("pvc-1"));
        assert_eq!(parse_page_token("invalid-token"), None);
        assert_eq!(parse_page_token("abc"), None);
    }
}
