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
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::backends::{BackendResolver, ProvisionerBackend};
use crate::metrics::{ClaimLabels, Metrics, VolumeLabels};
use crate::options::{OptionInputs, PvNaming, clone_request, create_options, prefix_of, pv_name, quantity_to_bytes};
use crate::placement::{ClaimPlacement, Placement, Reclaim, node_affinity, pinned_node};

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
/// Claim annotation: the volume doryd is provisioning for the claim, written
/// (with [`CLAIM_FINALIZER`]) before the plugin's Create, so that a restart
/// or a claim deleted meanwhile finishes or undoes exactly what was started.
pub const ANN_PROVISIONING: &str = "dory.io/provisioning-volume";
/// Claim annotation: the node whose doryd started provisioning (per-node mode).
pub const ANN_PROVISIONING_NODE: &str = "dory.io/provisioning-node";
/// Claim finalizer held while a volume may exist without its PV.
pub const CLAIM_FINALIZER: &str = "dory.io/provisioning";

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
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// PV naming.
    pub naming: PvNaming,
    /// Retry timing.
    pub backoff: Backoff,
    /// Which part of the cluster this instance acts for.
    pub placement: Placement,
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
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            served,
            backends,
            recorder,
            metrics,
            naming,
            backoff,
            placement: Placement::Central,
            failures: Mutex::default(),
        }
    }

    /// The same context acting for `placement` (default: the whole cluster).
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
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
        if let Err(err) = self.recorder.publish(&event, &object.object_ref(&())).await {
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
    let claim_annotations = annotations(&claim.metadata);
    let provisioner =
        claim_annotations.get(ANN_PROVISIONER).or_else(|| claim_annotations.get(ANN_PROVISIONER_BETA)).cloned();
    let in_progress = claim.finalizers().iter().any(|f| f == CLAIM_FINALIZER);
    if claim.metadata.deletion_timestamp.is_some() {
        if in_progress && provisioner.as_deref().is_some_and(|p| ctx.served.serves(p)) {
            return finish_deleted_claim(&claim, &ctx).await;
        }
        ctx.succeeded(&claim_key(&claim));
        return Ok(Action::await_change());
    }
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        if in_progress && provisioner.as_deref().is_some_and(|p| ctx.served.serves(p)) {
            drop_claim_finalizer(&ctx, &claim).await?;
        }
        ctx.succeeded(&claim_key(&claim));
        return Ok(Action::await_change());
    }
    let Some(provisioner) = provisioner else {
        return Ok(Action::await_change());
    };
    if !ctx.served.serves(&provisioner) {
        return Ok(Action::await_change());
    }
    let namespace = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let uid = claim.uid().unwrap_or_default();
    // Per node: a claim placed on another node is that node's doryd's (no
    // class lookup, no events from every node), unless this node recorded
    // provisioning for it and must undo that.
    if let Some(node) = ctx.placement.node()
        && claim_annotations.get(ANN_SELECTED_NODE).is_some_and(|n| !n.is_empty() && n != node)
        && claim_annotations.get(ANN_PROVISIONING_NODE).map(String::as_str) != Some(node)
    {
        return Ok(Action::await_change());
    }
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
    let wait_for_consumer = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
    let selected_node = claim_annotations.get(ANN_SELECTED_NODE).filter(|n| !n.is_empty()).cloned();
    if wait_for_consumer && selected_node.is_none() {
        tracing::debug!(claim = %format!("{namespace}/{name}"), "waiting for the scheduler to pick a node");
        return Ok(Action::await_change());
    }
    // Refusals the claim's author must fix: said once, not retried.
    let refusal = if spec.volume_mode.as_deref() == Some("Block") {
        Some(format!("{provisioner} does not support block volume provisioning"))
    } else if spec.selector.is_some() {
        Some(format!(
            "claim {namespace}/{name} has spec.selector: {provisioner} cannot make a volume match a selector \
             (remove the selector, or bind a PV made by hand)"
        ))
    } else {
        // A data source cannot change: refusing it is final too.
        let requested = OptionInputs {
            parameters: class.parameters.clone().unwrap_or_default(),
            annotations: claim_annotations.clone(),
            prefix: prefix_of(&provisioner),
            ..OptionInputs::default()
        };
        crate::sources::requested_clone(&claim, &provisioner, clone_request(&requested)).err()
    };
    if let Some(message) = refusal {
        ctx.event(claim.as_ref(), true, "ProvisioningFailed", message).await;
        return Ok(Action::await_change());
    }
    let backend = ctx
        .backends
        .resolve(&provisioner)
        .map_err(|e| ReconcileError::Invalid(format!("backend for {provisioner}: {e}")))?;
    if let Some(action) = settle_record(&claim, &ctx, &backend, selected_node.as_deref()).await? {
        return Ok(action);
    }
    let scope = backend.scope().await.map_err(|e| ReconcileError::Backend(dory_core::error_chain(&e)))?;
    let pin_to = match ctx.placement.claim(&provisioner, scope, wait_for_consumer, selected_node.as_deref()) {
        ClaimPlacement::Provision { pin_to } => pin_to,
        ClaimPlacement::NotOurs => return Ok(Action::await_change()),
        ClaimPlacement::Refuse(why) => {
            tracing::warn!(claim = %format!("{namespace}/{name}"), reason = %why, "refusing to provision");
            ctx.event(claim.as_ref(), true, "ProvisioningFailed", why).await;
            return Ok(Action::requeue(ctx.backoff.max));
        }
    };
    let prefix = prefix_of(&provisioner);
    let volume_name = pv_name(ctx.naming, prefix, &namespace, &class_name, &uid, &claim_annotations);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if let Some(pv) = pvs.get_opt(&volume_name).await? {
        let owner = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone());
        if owner.is_some_and(|owner| owner != uid) {
            let err = ReconcileError::Invalid(format!(
                "PV {volume_name} exists already for another claim; choose another {prefix}/docker-volume-name"
            ));
            ctx.event(claim.as_ref(), true, "ProvisioningFailed", err.to_string()).await;
            return Err(err);
        }
        if in_progress {
            drop_claim_finalizer(&ctx, &claim).await?;
        }
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
    let target = Target { provisioner: &provisioner, volume_name: &volume_name, backend: &backend, pin_to };
    let result = provision(&claim, &ctx, &class, target).await;
    match result {
        Ok(created) => {
            if created {
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

/// What a claim is provisioned as.
struct Target<'a> {
    provisioner: &'a str,
    volume_name: &'a str,
    backend: &'a ProvisionerBackend,
    /// The node the PV is pinned to, for a node-local plugin.
    pin_to: Option<String>,
}

/// Records the provisioning on the claim, creates the backend volume (only
/// one this claim's record covers: never adopting one that existed) and
/// creates the bound PV. Returns false when no new PV was made (the claim
/// went away, or another replica made it).
async fn provision(
    claim: &PersistentVolumeClaim,
    ctx: &Context,
    class: &StorageClass,
    target: Target<'_>,
) -> Result<bool, ReconcileError> {
    let Target { provisioner, volume_name, backend, pin_to } = target;
    let namespace = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let spec = claim.spec.clone().unwrap_or_default();
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
        clone_source: None,
        clone_option: &backend.clone_option,
    };
    let source_claim =
        crate::sources::requested_clone(claim, provisioner, clone_request(&inputs)).map_err(ReconcileError::Invalid)?;
    if let Some(source) = source_claim {
        inputs.clone_source = Some(clone_source(ctx, &namespace, &source, provisioner, pin_to.as_deref()).await?);
    }
    let options = create_options(&inputs, &backend.rules);
    let volume = VolumeName::new(volume_name).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    let backend_error = |e: dory_core::Error| ReconcileError::Backend(dory_core::error_chain(&e));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);

    let recorded = annotations(&claim.metadata).get(ANN_PROVISIONING).is_some_and(|v| v == volume_name);
    let exists = backend.backend.get(&volume).await.map_err(backend_error)?.is_some();
    if !recorded {
        if exists {
            return Err(ReconcileError::Invalid(format!(
                "a volume named {volume_name:?} exists already and was not created for this claim; \
                 doryd never adopts a volume it did not create"
            )));
        }
        record_provisioning(&claims, claim, volume_name, ctx.placement.node()).await?;
    }
    if exists {
        tracing::info!(volume = %volume, "backend volume exists (created by an earlier attempt); reusing it");
    } else {
        tracing::info!(volume = %volume, claim = %format!("{namespace}/{name}"), options = %dory_core::redacted_options(&options), "creating volume");
        backend.backend.create(&volume, &options).await.map_err(backend_error)?;
    }

    // A claim deleted meanwhile keeps our finalizer: its next reconcile
    // removes the volume (finish_deleted_claim).
    let current = claims.get_opt(&name).await?;
    let Some(current) = current.filter(|c| c.uid() == claim.uid() && c.metadata.deletion_timestamp.is_none()) else {
        tracing::info!(volume = %volume, "claim deleted during provisioning; the volume is removed next");
        return Ok(false);
    };
    // Rescheduled to another node meanwhile: the next reconcile undoes it.
    if let Some(node) = ctx.placement.node()
        && annotations(&current.metadata).get(ANN_SELECTED_NODE).map(String::as_str) != Some(node)
    {
        tracing::info!(volume = %volume, "claim rescheduled to another node during provisioning; the volume is removed next");
        return Ok(false);
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
    let mut pv = build_pv(claim, class, provisioner, volume_name, &options, request_bytes, &backend.rules);
    if let Some(node) = &pin_to
        && let Some(spec) = pv.spec.as_mut()
    {
        spec.node_affinity = Some(node_affinity(node));
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let created = match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => true,
        Err(kube::Error::Api(err)) if err.code == 409 => {
            tracing::info!(pv = volume_name, "PV already exists (made by an earlier attempt or another replica)");
            false
        }
        Err(err) => return Err(err.into()),
    };
    drop_claim_finalizer(ctx, &current).await?;
    tracing::info!(pv = volume_name, claim = %format!("{namespace}/{name}"), "provisioned");
    Ok(created)
}

/// The backend volume of the claim `source` (same namespace), which must be
/// bound to a PV this provisioner made. With a node-local plugin
/// (`pin_to`), the source must live on that node.
async fn clone_source(
    ctx: &Context,
    namespace: &str,
    source: &str,
    provisioner: &str,
    pin_to: Option<&str>,
) -> Result<String, ReconcileError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let source_claim = claims
        .get_opt(source)
        .await?
        .ok_or_else(|| ReconcileError::Invalid(format!("clone source: claim {namespace}/{source} not found")))?;
    let source_pv =
        source_claim.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()).ok_or_else(|| {
            ReconcileError::Invalid(format!("clone source: claim {namespace}/{source} is not bound yet"))
        })?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get_opt(&source_pv)
        .await?
        .ok_or_else(|| ReconcileError::Invalid(format!("clone source: PV {source_pv} not found")))?;
    if let (Some(here), Some(there)) = (pin_to, pinned_node(&pv))
        && here != there
    {
        return Err(ReconcileError::Invalid(format!(
            "clone source {namespace}/{source} lives on node {there}, but this claim is being provisioned on {here}: \
             a node-local plugin can clone only on the source's node"
        )));
    }
    crate::sources::clone_source_volume(&pv, provisioner)
        .map_err(|why| ReconcileError::Invalid(format!("clone source {namespace}/{source}: {why}")))
}

/// Writes, before any Create, which volume is being made for the claim and
/// holds the claim with [`CLAIM_FINALIZER`] until its PV exists. The patch
/// carries the claim's resourceVersion: a concurrent change is a conflict.
async fn record_provisioning(
    claims: &Api<PersistentVolumeClaim>,
    claim: &PersistentVolumeClaim,
    volume_name: &str,
    node: Option<&str>,
) -> Result<(), ReconcileError> {
    let mut finalizers: Vec<String> = claim.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == CLAIM_FINALIZER) {
        finalizers.push(CLAIM_FINALIZER.to_owned());
    }
    let patch = json!({"metadata": {
        "resourceVersion": claim.resource_version(),
        "finalizers": finalizers,
        "annotations": {ANN_PROVISIONING: volume_name, ANN_PROVISIONING_NODE: node},
    }});
    claims.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Drops [`CLAIM_FINALIZER`] from the claim as the API server holds it.
async fn drop_claim_finalizer(ctx: &Context, claim: &PersistentVolumeClaim) -> Result<(), ReconcileError> {
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let Some(current) = claims.get_opt(&claim.name_any()).await? else { return Ok(()) };
    if !current.finalizers().iter().any(|f| f == CLAIM_FINALIZER) {
        return Ok(());
    }
    let remaining: Vec<&String> = current.finalizers().iter().filter(|f| *f != CLAIM_FINALIZER).collect();
    let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": current.resource_version()}});
    match claims.patch(&current.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(err)) if err.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Deals with a provisioning record on a claim before provisioning it:
/// `None` to go on, or what to do instead. A record of another doryd waits
/// for that doryd (or is dropped if its node is gone); a record of this
/// node for a claim the scheduler moved elsewhere is undone here (the
/// volume removed, the record cleared), so the new node can provision.
async fn settle_record(
    claim: &PersistentVolumeClaim,
    ctx: &Context,
    backend: &ProvisionerBackend,
    selected_node: Option<&str>,
) -> Result<Option<Action>, ReconcileError> {
    let claim_annotations = annotations(&claim.metadata);
    let Some(volume_name) = claim_annotations.get(ANN_PROVISIONING) else { return Ok(None) };
    let recorded_node = claim_annotations.get(ANN_PROVISIONING_NODE).filter(|n| !n.is_empty());
    let ours = recorded_node.map(String::as_str) == ctx.placement.node();
    if !ours {
        tracing::debug!(claim = %claim.name_any(), node = ?recorded_node, "another doryd's provisioning is recorded");
        return abandon_if_node_gone(claim, ctx, recorded_node).await.map(Some);
    }
    let moved = ctx.placement.node().is_some() && selected_node != ctx.placement.node();
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if !moved || pvs.get_opt(volume_name).await?.is_some() {
        return Ok(None);
    }
    let volume = VolumeName::new(volume_name.clone()).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    match backend.backend.remove(&volume).await {
        Ok(()) => {
            tracing::info!(volume = %volume, "the claim was rescheduled to another node; removed the volume made here")
        }
        Err(err) if err.is_not_found() => {}
        Err(err) => return Err(ReconcileError::Backend(dory_core::error_chain(&err))),
    }
    clear_record(ctx, claim).await?;
    Ok(Some(Action::await_change()))
}

/// For a record of another doryd whose node no longer exists: nobody can
/// finish it, so the record is dropped with a Warning naming the volume
/// that may remain on that node. Otherwise waits for that doryd.
async fn abandon_if_node_gone(
    claim: &PersistentVolumeClaim,
    ctx: &Context,
    recorded_node: Option<&String>,
) -> Result<Action, ReconcileError> {
    let Some(node) = recorded_node else { return Ok(Action::requeue(ctx.backoff.max)) };
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    if nodes.get_opt(node).await?.is_some() {
        return Ok(Action::requeue(ctx.backoff.max));
    }
    let volume = annotations(&claim.metadata).get(ANN_PROVISIONING).cloned().unwrap_or_default();
    ctx.event(
        claim,
        true,
        "ProvisioningAbandoned",
        format!("node {node} started provisioning volume {volume} and no longer exists; the volume may remain there"),
    )
    .await;
    clear_record(ctx, claim).await?;
    Ok(Action::await_change())
}

/// Removes the provisioning record (annotations and finalizer) from the claim.
async fn clear_record(ctx: &Context, claim: &PersistentVolumeClaim) -> Result<(), ReconcileError> {
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let remaining: Vec<&String> = claim.finalizers().iter().filter(|f| *f != CLAIM_FINALIZER).collect();
    let patch = json!({"metadata": {
        "resourceVersion": claim.resource_version(),
        "finalizers": remaining,
        "annotations": {ANN_PROVISIONING: null, ANN_PROVISIONING_NODE: null},
    }});
    match claims.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(err)) if err.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// A claim deleted while provisioning was recorded on it: removes the
/// recorded volume unless a PV took it over, then lets the claim go.
async fn finish_deleted_claim(claim: &PersistentVolumeClaim, ctx: &Context) -> Result<Action, ReconcileError> {
    let claim_annotations = annotations(&claim.metadata);
    let recorded_node = claim_annotations.get(ANN_PROVISIONING_NODE).filter(|n| !n.is_empty());
    if recorded_node.map(String::as_str) != ctx.placement.node() {
        // Another doryd started it and finishes it, unless its node is gone.
        return abandon_if_node_gone(claim, ctx, recorded_node).await;
    }
    let key = claim_key(claim);
    if let Some(volume_name) = claim_annotations.get(ANN_PROVISIONING) {
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        if pvs.get_opt(volume_name).await?.is_none() {
            let provisioner = claim_annotations
                .get(ANN_PROVISIONER)
                .or_else(|| claim_annotations.get(ANN_PROVISIONER_BETA))
                .cloned()
                .unwrap_or_default();
            let backend = ctx
                .backends
                .resolve(&provisioner)
                .map_err(|e| ReconcileError::Invalid(format!("backend for {provisioner}: {e}")))?;
            let volume = VolumeName::new(volume_name.clone()).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
            match backend.backend.remove(&volume).await {
                Ok(()) => tracing::info!(volume = %volume, "claim deleted during provisioning; removed its volume"),
                Err(err) if err.is_not_found() => {
                    tracing::info!(volume = %volume, "claim deleted before its volume was made")
                }
                Err(err) => {
                    let err = ReconcileError::Backend(dory_core::error_chain(&err));
                    ctx.event(
                        claim,
                        true,
                        "ProvisioningCleanupFailed",
                        format!("claim deleted during provisioning; cannot remove volume {volume_name}: {err}"),
                    )
                    .await;
                    return Err(err);
                }
            }
        }
    }
    drop_claim_finalizer(ctx, claim).await?;
    ctx.succeeded(&key);
    Ok(Action::await_change())
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
    // The driver never creates a volume that carries this mark.
    flex_options.insert(dory_core::PROVISIONED_OPTION.into(), provisioner.into());
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
            remove_finalizer(&pvs, &pv).await?;
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

    let volume_name = spec
        .flex_volume
        .as_ref()
        .and_then(|f| f.options.as_ref())
        .and_then(|o| o.get("name"))
        .cloned()
        .unwrap_or_else(|| name.clone());
    // Which doryd reclaims it depends on where the volume lives.
    let backend = ctx
        .backends
        .resolve(&provisioner)
        .map_err(|e| ReconcileError::Invalid(format!("backend for {provisioner}: {e}")))?;
    let scope = backend.scope().await.map_err(|e| ReconcileError::Backend(dory_core::error_chain(&e)))?;
    let volume = VolumeName::new(volume_name.clone()).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    match ctx.placement.reclaims(&pv, scope) {
        Reclaim::Yes => {}
        Reclaim::No(None) => return Ok(Action::await_change()),
        Reclaim::No(Some(why)) => {
            ctx.event(pv.as_ref(), true, "VolumeFailedDelete", format!("volume {volume_name} is kept: {why}")).await;
            return Ok(Action::requeue(ctx.backoff.max));
        }
        // Only the node whose plugin has it; a definite answer is needed.
        Reclaim::IfHere => match backend.backend.get(&volume).await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(Action::await_change()),
            Err(err) => return Err(ReconcileError::Backend(dory_core::error_chain(&err))),
        },
    }

    let started = Instant::now();
    let labels = VolumeLabels { class: spec.storage_class_name.clone().unwrap_or_default() };
    let result = async {
        // Remove is asked, never skipped on a Get: only its definite "no
        // such volume" counts as gone. Any other failure (unreachable, in
        // use, a storage error) keeps the PV and is retried.
        match backend.backend.remove(&volume).await {
            Ok(()) => {}
            Err(err) if err.is_not_found() => tracing::info!(volume = %volume, "volume already gone"),
            Err(err) => return Err(ReconcileError::Backend(dory_core::error_chain(&err))),
        }
        match pvs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(err)) if err.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
        if has_finalizer && let Some(current) = pvs.get_opt(&name).await? {
            remove_finalizer(&pvs, &current).await?;
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
/// resourceVersion, so a concurrent change is a conflict (and a retry), not
/// a lost update of someone else's finalizer.
async fn remove_finalizer(pvs: &Api<PersistentVolume>, pv: &PersistentVolume) -> Result<(), ReconcileError> {
    let remaining: Vec<&String> = pv.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": pv.resource_version()}});
    match pvs.patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(err)) if err.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
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

/// Runs both controllers until the stream ends.
pub async fn run(ctx: Arc<Context>, workers: u16) {
    let claims: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let config = kube::runtime::controller::Config::default().concurrency(workers);

    let claim_controller = Controller::new(claims, watcher::Config::default());
    let claim_store = claim_controller.store();
    let claim_controller = claim_controller
        // A class created (or changed) late wakes the claims waiting for it.
        .watches(classes, watcher::Config::default(), move |class: StorageClass| {
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
                tracing::debug!(error = %err, "claim controller");
            }
        });
    let pv_controller = Controller::new(pvs, watcher::Config::default())
        .with_config(config)
        .run(reconcile_pv, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "volume controller");
            }
        });
    futures::join!(claim_controller, pv_controller);
}
