//! The two reconcilers: claims (provision) and volumes (reclaim), in the
//! kube-runtime style: `reconcile(obj, ctx) -> Result<Action>` plus an
//! error policy that turns per-object failure counts into backoff.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dory_core::{CreateOptions, VolumeName};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    FlexPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::backends::BackendResolver;
use crate::cache;
use crate::health::Health;
use crate::metrics::{ClaimLabels, ConflictLabels, Metrics, VolumeLabels};
use crate::options::{OptionInputs, PvNaming, clone_request, create_options, prefix_of, pv_name, quantity_to_bytes};

/// Annotation naming the provisioner that should provision a claim.
pub const ANN_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The beta key of the same.
pub const ANN_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The node the scheduler picked (WaitForFirstConsumer).
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The beta class annotation.
pub const ANN_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";
/// Who provisioned a PV.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// doryd's finalizer on the PVs it provisions.
pub const FINALIZER: &str = "dory.io/provisioner";

/// Which provisioners this doryd serves.
#[derive(Clone, Debug)]
pub enum Served {
    /// Every `<prefix>/<driver>`.
    Prefix(String),
    /// Exactly these names.
    Names(HashSet<String>),
}

impl Served {
    /// True when `provisioner` is ours.
    pub fn serves(&self, provisioner: &str) -> bool {
        match self {
            Self::Prefix(prefix) => {
                provisioner.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
            }
            Self::Names(names) => names.contains(provisioner),
        }
    }
}

/// Retry timing of failed objects: `start`, doubling, capped at `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First delay.
    pub start: Duration,
    /// Largest delay.
    pub max: Duration,
}

/// Everything the reconcilers share.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The provisioners served.
    pub served: Served,
    /// Backends per provisioner.
    pub backends: BackendResolver,
    /// Event recorder (warnings, which repeat and fold into a series).
    pub recorder: Recorder,
    /// Who writes events.
    pub reporter: Reporter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// PV naming.
    pub naming: PvNaming,
    /// Retry timing.
    pub backoff: Backoff,
    failures: Mutex<HashMap<String, u32>>,
}

/// Why a reconcile failed; the message is what events and logs show.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The backend failed (its own words).
    #[error("{0}")]
    Backend(String),
    /// The claim or class cannot be provisioned as they are (yet).
    #[error("{0}")]
    Invalid(String),
}

impl Context {
    /// A context for the reconcilers.
    pub fn new(
        client: Client,
        served: Served,
        backends: BackendResolver,
        metrics: Arc<Metrics>,
        naming: PvNaming,
        backoff: Backoff,
        reporter: Reporter,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Self { client, served, backends, recorder, reporter, metrics, naming, backoff, failures: Mutex::default() }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn delay_for(&self, key: &str) -> Duration {
        let mut failures = self.failures();
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        let factor = 1u32.checked_shl(count.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff.start.saturating_mul(factor).min(self.backoff.max)
    }

    fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }

    async fn event<K: Resource<DynamicType = ()>>(&self, object: &K, warning: bool, reason: &str, note: String) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        let result = if warning {
            self.recorder.publish(&event, &object.object_ref(&())).await
        } else {
            // Normal events happen once per object: no series cache.
            crate::events::publish_once(self.client.clone(), &self.reporter, &event, object.object_ref(&())).await
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, reason, "cannot publish event");
        }
    }
}

fn annotations(object: &ObjectMeta) -> BTreeMap<String, String> {
    object.annotations.clone().unwrap_or_default()
}

fn claim_class(claim: &PersistentVolumeClaim) -> Option<String> {
    annotations(&claim.metadata)
        .get(ANN_CLASS_BETA)
        .cloned()
        .or_else(|| claim.spec.as_ref().and_then(|s| s.storage_class_name.clone()))
        .filter(|c| !c.is_empty())
}

fn claim_key(claim: &PersistentVolumeClaim) -> String {
    format!("pvc/{}", claim.uid().unwrap_or_default())
}

/// Provisions one claim, if it is ours and unbound.
pub async fn reconcile_claim(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let spec = claim.spec.clone().unwrap_or_default();
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) || claim.metadata.deletion_timestamp.is_some() {
        ctx.succeeded(&claim_key(&claim));
        return Ok(Action::await_change());
    }
    let claim_annotations = annotations(&claim.metadata);
    let Some(provisioner) =
        claim_annotations.get(ANN_PROVISIONER).or_else(|| claim_annotations.get(ANN_PROVISIONER_BETA)).cloned()
    else {
        return Ok(Action::await_change());
    };
    if !ctx.served.serves(&provisioner) {
        return Ok(Action::await_change());
    }
    let namespace = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let uid = claim.uid().unwrap_or_default();
    let Some(class_name) = claim_class(&claim) else {
        let err = ReconcileError::Invalid(format!("claim {namespace}/{name} names no StorageClass"));
        ctx.event(claim.as_ref(), true, "ProvisioningFailed", err.to_string()).await;
        return Err(err);
    };
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let Some(class) = classes.get_opt(&class_name).await? else {
        // Retried with backoff, and at once when the class appears.
        let err = ReconcileError::Invalid(format!("StorageClass {class_name:?} not found"));
        ctx.event(claim.as_ref(), true, "ProvisioningFailed", err.to_string()).await;
        return Err(err);
    };
    if class.provisioner != provisioner {
        return Ok(Action::await_change());
    }
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && claim_annotations.get(ANN_SELECTED_NODE).is_none_or(|n| n.is_empty())
    {
        tracing::debug!(claim = %format!("{namespace}/{name}"), "waiting for the scheduler to pick a node");
        return Ok(Action::await_change());
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        let message = format!("{provisioner} does not support block volume provisioning");
        ctx.event(claim.as_ref(), true, "ProvisioningFailed", message).await;
        return Ok(Action::await_change());
    }
    let prefix = prefix_of(&provisioner);
    let volume_name = pv_name(ctx.naming, prefix, &namespace, &class_name, &uid, &claim_annotations);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if pvs.get_opt(&volume_name).await?.is_some() {
        ctx.succeeded(&claim_key(&claim));
        return Ok(Action::await_change());
    }

    let started = Instant::now();
    let labels = ClaimLabels {
        class: class_name.clone(),
        source: spec.data_source.as_ref().map(|d| d.kind.clone()).unwrap_or_default(),
    };
    ctx.event(
        claim.as_ref(),
        false,
        "Provisioning",
        format!("External provisioner is provisioning volume for claim \"{namespace}/{name}\""),
    )
    .await;
    let result = provision(&claim, &ctx, &class, &provisioner, &volume_name).await;
    match result {
        Ok(outcome) => {
            if outcome == Provisioned::Created {
                ctx.metrics.provision_total.get_or_create(&labels).inc();
                ctx.metrics.provision_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                ctx.event(
                    claim.as_ref(),
                    false,
                    "ProvisioningSucceeded",
                    format!("Successfully provisioned volume {volume_name}"),
                )
                .await;
            }
            ctx.succeeded(&claim_key(&claim));
            Ok(Action::await_change())
        }
        Err(err) => {
            ctx.metrics.provision_failed_total.get_or_create(&labels).inc();
            ctx.event(claim.as_ref(), true, "ProvisioningFailed", err.to_string()).await;
            Err(err)
        }
    }
}

/// What [`provision`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provisioned {
    /// Created the PV.
    Created,
    /// The claim's PV was already there (another replica, or an earlier
    /// attempt whose answer was lost): not a new provision.
    Existed,
    /// The claim vanished; nothing was kept.
    ClaimGone,
}

/// Creates (or reuses) the backend volume and creates the bound PV.
async fn provision(
    claim: &PersistentVolumeClaim,
    ctx: &Context,
    class: &StorageClass,
    provisioner: &str,
    volume_name: &str,
) -> Result<Provisioned, ReconcileError> {
    let namespace = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let spec = claim.spec.clone().unwrap_or_default();
    let backend = ctx
        .backends
        .resolve(provisioner)
        .map_err(|e| ReconcileError::Invalid(format!("backend for {provisioner}: {e}")))?;
    let request = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
    let request_bytes = match &request {
        Some(quantity) => Some(quantity_to_bytes(&quantity.0).map_err(ReconcileError::Invalid)?),
        None => None,
    };
    let mut inputs = OptionInputs {
        parameters: class.parameters.clone().unwrap_or_default(),
        annotations: annotations(&claim.metadata),
        prefix: prefix_of(provisioner),
        request_bytes,
        clone_source_pv: None,
    };
    if let Some(source) = clone_request(&inputs) {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
        let source_claim = claims
            .get_opt(&source)
            .await?
            .ok_or_else(|| ReconcileError::Invalid(format!("cloneOfPVC: claim {namespace}/{source} not found")))?;
        let source_pv = source_claim.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()).ok_or_else(|| {
            ReconcileError::Invalid(format!("cloneOfPVC: claim {namespace}/{source} is not bound yet"))
        })?;
        inputs.clone_source_pv = Some(source_pv);
    }
    let options = create_options(&inputs, &backend.rules);
    let volume = VolumeName::new(volume_name).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    let backend_error = |e: dory_core::Error| ReconcileError::Backend(dory_core::error_chain(&e));
    match backend.backend.get(&volume).await.map_err(backend_error)? {
        Some(_) => tracing::info!(volume = %volume, "backend volume exists; reusing it"),
        None => {
            tracing::info!(volume = %volume, claim = %format!("{namespace}/{name}"), options = %dory_core::redacted_options(&options), "creating volume");
            backend.backend.create(&volume, &options).await.map_err(backend_error)?;
        }
    }

    // A claim deleted while the volume was being created leaves no volume.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let current = claims.get_opt(&name).await?;
    if current.as_ref().and_then(|c| c.uid()) != claim.uid() {
        tracing::info!(volume = %volume, "claim deleted during provisioning; removing the volume");
        backend.backend.remove(&volume).await.map_err(backend_error)?;
        return Ok(Provisioned::ClaimGone);
    }

    if class.mount_options.as_ref().is_some_and(|m| !m.is_empty()) {
        ctx.event(
            claim,
            true,
            "ProvisioningWarning",
            format!(
                "StorageClass {:?} has mountOptions; FlexVolume PVs cannot carry them (kubelet refuses), so they were not copied",
                class.name_any()
            ),
        )
        .await;
    }
    let pv = build_pv(claim, class, provisioner, volume_name, &options, request_bytes, &backend.rules);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(err)) if err.code == 409 => {
            let existing = pvs.get_opt(volume_name).await?;
            let owner = existing.as_ref().and_then(|pv| pv.spec.as_ref()).and_then(|s| s.claim_ref.as_ref());
            if owner.and_then(|r| r.uid.as_ref()) != claim.uid().as_ref() {
                return Err(ReconcileError::Invalid(format!(
                    "PV {volume_name} already exists and is not this claim's"
                )));
            }
            tracing::info!(pv = volume_name, claim = %format!("{namespace}/{name}"), "PV already exists (made by another replica or an earlier attempt)");
            return Ok(Provisioned::Existed);
        }
        Err(err) => return Err(err.into()),
    }
    tracing::info!(pv = volume_name, claim = %format!("{namespace}/{name}"), "provisioned");
    Ok(Provisioned::Created)
}

/// The PV for a claim: bound to it by `claimRef`, with a `flexVolume`
/// source the `dory` driver mounts.
pub fn build_pv(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    provisioner: &str,
    volume_name: &str,
    options: &CreateOptions,
    request_bytes: Option<u128>,
    rules: &crate::options::SizeRules,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let capacity = match request_bytes {
        // The backend got whole units: report what it made (>= the request).
        Some(bytes) if bytes > 0 && !rules.resource_options.is_empty() => {
            let units = crate::options::size_in_units(bytes, rules.factor);
            Quantity((units * u128::from(rules.factor.max(1))).to_string())
        }
        _ => spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .cloned()
            .unwrap_or_else(|| Quantity("0".into())),
    };
    let mut flex_options: BTreeMap<String, String> = options.clone();
    flex_options.insert("name".into(), volume_name.into());
    let prefix = prefix_of(provisioner);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name.into()),
            annotations: Some(BTreeMap::from([
                (ANN_PROVISIONED_BY.to_owned(), provisioner.to_owned()),
                (format!("{prefix}/docker-volume-name"), volume_name.to_owned()),
            ])),
            finalizers: Some(vec![FINALIZER.to_owned()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some(BTreeMap::from([("storage".to_owned(), capacity)])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.namespace(),
                name: Some(claim.name_any()),
                uid: claim.uid(),
                resource_version: claim.resource_version(),
                ..ObjectReference::default()
            }),
            persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
            storage_class_name: claim_class(claim),
            volume_mode: spec.volume_mode.clone(),
            flex_volume: Some(FlexPersistentVolumeSource {
                driver: provisioner.to_owned(),
                options: Some(flex_options),
                ..FlexPersistentVolumeSource::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// Reclaims one PV we provisioned: Delete policy removes the volume and
/// the PV; Retain only drops our finalizer.
pub async fn reconcile_pv(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let pv_annotations = annotations(&pv.metadata);
    let Some(provisioner) = pv_annotations.get(ANN_PROVISIONED_BY).cloned() else {
        return Ok(Action::await_change());
    };
    if !ctx.served.serves(&provisioner) {
        return Ok(Action::await_change());
    }
    let name = pv.name_any();
    let spec = pv.spec.clone().unwrap_or_default();
    let policy = spec.persistent_volume_reclaim_policy.clone().unwrap_or_else(|| "Retain".into());
    let has_finalizer = pv.finalizers().iter().any(|f| f == FINALIZER);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if policy != "Delete" {
        if has_finalizer {
            remove_finalizer(&ctx, &pvs, &pv).await?;
        }
        return Ok(Action::await_change());
    }
    let phase = pv.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if phase != "Released" {
        return Ok(Action::await_change());
    }
    // Our own delete comes back as an update event carrying the deletion
    // timestamp, possibly after we already finished: for such a PV, act on
    // what the API server holds now, not on the watch cache's copy.
    let (pv, has_finalizer) = if pv.metadata.deletion_timestamp.is_some() {
        let Some(current) = pvs.get_opt(&name).await? else {
            return Ok(Action::await_change());
        };
        let has_finalizer = current.finalizers().iter().any(|f| f == FINALIZER);
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        (Arc::new(current), has_finalizer)
    } else {
        (pv, has_finalizer)
    };

    let started = Instant::now();
    let labels = VolumeLabels { class: spec.storage_class_name.clone().unwrap_or_default() };
    let volume_name = spec
        .flex_volume
        .as_ref()
        .and_then(|f| f.options.as_ref())
        .and_then(|o| o.get("name"))
        .cloned()
        .unwrap_or_else(|| name.clone());
    let result = async {
        let backend = ctx
            .backends
            .resolve(&provisioner)
            .map_err(|e| ReconcileError::Invalid(format!("backend for {provisioner}: {e}")))?;
        let volume = VolumeName::new(volume_name.clone()).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
        let backend_error = |e: dory_core::Error| ReconcileError::Backend(dory_core::error_chain(&e));
        // Missing counts as removed.
        if backend.backend.get(&volume).await.map_err(backend_error)?.is_some() {
            backend.backend.remove(&volume).await.map_err(backend_error)?;
        }
        match pvs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(err)) if err.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
        if has_finalizer && let Some(current) = pvs.get_opt(&name).await? {
            remove_finalizer(&ctx, &pvs, &current).await?;
        }
        Ok::<_, ReconcileError>(())
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(pv = %name, volume = %volume_name, "volume deleted");
            ctx.metrics.delete_total.get_or_create(&labels).inc();
            ctx.metrics.delete_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            ctx.succeeded(&format!("pv/{name}"));
            Ok(Action::await_change())
        }
        Err(err) => {
            ctx.metrics.delete_failed_total.get_or_create(&labels).inc();
            ctx.event(pv.as_ref(), true, "VolumeFailedDelete", err.to_string()).await;
            Err(err)
        }
    }
}

/// Drops our finalizer with a merge patch that carries the object's
/// resourceVersion, so a concurrent change is a conflict, not a lost update
/// of someone else's finalizer. A conflict is expected (the PV binder
/// writes a new PV at the same moment): it is counted, and the PV re-read
/// and patched again at once.
async fn remove_finalizer(
    ctx: &Context,
    pvs: &Api<PersistentVolume>,
    pv: &PersistentVolume,
) -> Result<(), ReconcileError> {
    const ATTEMPTS: u32 = 5;
    let name = pv.name_any();
    let mut current = pv.clone();
    for attempt in 1..=ATTEMPTS {
        if !current.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let remaining: Vec<&String> = current.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": current.resource_version()}});
        match pvs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(err)) if err.code == 404 => return Ok(()),
            Err(kube::Error::Api(err)) if err.code == 409 && attempt < ATTEMPTS => {
                ctx.metrics
                    .conflicts_total
                    .get_or_create(&ConflictLabels { resource: "persistentvolumes".into() })
                    .inc();
                tracing::debug!(pv = %name, attempt, "PV changed while dropping the finalizer; re-reading and retrying");
                match pvs.get_opt(&name).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Backoff for a failed claim or PV: doubling per object, capped.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    // Claims are keyed by UID (a re-created claim starts afresh), PVs by name.
    let key = match K::kind(&()).as_ref() {
        "PersistentVolumeClaim" => format!("pvc/{}", object.meta().uid.clone().unwrap_or_default()),
        _ => format!("pv/{}", object.meta().name.clone().unwrap_or_default()),
    };
    let delay = ctx.delay_for(&key);
    tracing::warn!(object = %object.meta().name.clone().unwrap_or_default(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs both controllers until the stream ends. Their watches cache
/// trimmed objects and report failures to `health` (see [`crate::cache`]).
pub async fn run(ctx: Arc<Context>, workers: u16, health: Arc<Health>) {
    let claims: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let config = kube::runtime::controller::Config::default().concurrency(workers);

    let served = ctx.served.clone();
    let (claim_store, claim_stream) = cache::watch(
        claims,
        "persistentvolumeclaims",
        health.clone(),
        move |claim: &PersistentVolumeClaim| cache::may_be_ours(claim, &served),
        cache::trim_claim,
    );
    let class_stream = cache::trigger(classes, "storageclasses", health.clone());
    let claim_controller = Controller::for_stream(claim_stream, claim_store.clone())
        // A class created (or changed) late wakes the claims waiting for it.
        .watches_stream(class_stream, move |class: StorageClass| {
            let class_name = class.name_any();
            claim_store
                .state()
                .into_iter()
                .filter(|c| claim_class(c).as_deref() == Some(class_name.as_str()))
                .filter(|c| c.spec.as_ref().and_then(|s| s.volume_name.as_ref()).is_none_or(|v| v.is_empty()))
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(config.clone())
        .run(reconcile_claim, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(err) = result {
                // Watch failures were logged by the cache, reconcile failures by error_policy.
                tracing::debug!(error = %err, "claim controller");
            }
        });
    let served = ctx.served.clone();
    let (pv_store, pv_stream) = cache::watch(
        pvs,
        "persistentvolumes",
        health,
        move |pv: &PersistentVolume| cache::is_ours(pv, &served),
        cache::trim_pv,
    );
    let pv_controller = Controller::for_stream(pv_stream, pv_store)
        .with_config(config)
        .run(reconcile_pv, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "volume controller");
            }
        });
    futures::join!(claim_controller, pv_controller);
}
