//! The watches behind doryd's controllers: what they cache, and how their
//! failures are reported.
//!
//! A reflector cache holds the claims and PVs of the cluster, so its size
//! is doryd's memory (a `PersistentVolume` is 3.5 KB before its first
//! string, its volume sources inline). So objects doryd never acts on are
//! not cached at all: PVs that no provisioner we serve made, claims
//! annotated for another provisioner (an object that turns foreign is
//! dropped from the cache as if deleted). The rest is trimmed to the fields
//! the reconcilers read: `managedFields` and
//! `kubectl.kubernetes.io/last-applied-configuration` (often larger than
//! the rest of the object) never; claim status never; of a bound claim only
//! what says it is bound. Reconcilers that need more read it from the API
//! server.
//!
//! A list or watch error is logged at WARN with the resource and the API
//! server's reason and code (a missing RBAC verb is `Forbidden`, 403), and
//! recorded in [`Health`]; a `410 Gone` is routine (the watcher relists)
//! and stays at debug.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    FlexPersistentVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeSpec, PersistentVolumeStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::controller::{ANN_PROVISIONED_BY, ANN_PROVISIONER, ANN_PROVISIONER_BETA, Served};
use crate::health::Health;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reconciler reads from any object's metadata.
pub fn trim_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// A claim as cached: status never (the reconcilers do not read it); of a
/// bound claim, only its volume and class.
pub fn trim_claim(claim: &mut PersistentVolumeClaim) {
    trim_metadata(&mut claim.metadata);
    claim.status = None;
    let Some(spec) = &mut claim.spec else { return };
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        *spec = PersistentVolumeClaimSpec {
            volume_name: spec.volume_name.take(),
            storage_class_name: spec.storage_class_name.take(),
            ..PersistentVolumeClaimSpec::default()
        };
    }
}

/// True for a PV one of the provisioners in `served` made: the only PVs
/// doryd caches.
pub fn is_ours(pv: &PersistentVolume, served: &Served) -> bool {
    pv.metadata.annotations.as_ref().and_then(|a| a.get(ANN_PROVISIONED_BY)).is_some_and(|p| served.serves(p))
}

/// False for a claim annotated for a provisioner not in `served` (one
/// without the annotation yet may become ours).
pub fn may_be_ours(claim: &PersistentVolumeClaim, served: &Served) -> bool {
    let annotations = claim.metadata.annotations.as_ref();
    let provisioner = annotations.and_then(|a| a.get(ANN_PROVISIONER).or_else(|| a.get(ANN_PROVISIONER_BETA)));
    provisioner.is_none_or(|p| served.serves(p))
}

/// A PV as cached: what the volume reconciler reads (its provisioner
/// annotation, finalizers, reclaim policy, class, node affinity, flex
/// volume name and phase); labels, other annotations, capacity, access
/// modes, the claim reference and the rest of the status never.
pub fn trim_pv(pv: &mut PersistentVolume) {
    trim_metadata(&mut pv.metadata);
    pv.metadata.labels = None;
    if let Some(annotations) = &mut pv.metadata.annotations {
        annotations.retain(|k, _| k == ANN_PROVISIONED_BY);
    }
    if let Some(spec) = &mut pv.spec {
        let flex_volume = spec.flex_volume.take().map(|mut flex| {
            if let Some(options) = &mut flex.options {
                options.retain(|k, _| k == "name");
            }
            FlexPersistentVolumeSource {
                driver: std::mem::take(&mut flex.driver),
                options: flex.options,
                ..FlexPersistentVolumeSource::default()
            }
        });
        *spec = PersistentVolumeSpec {
            persistent_volume_reclaim_policy: spec.persistent_volume_reclaim_policy.take(),
            storage_class_name: spec.storage_class_name.take(),
            node_affinity: spec.node_affinity.take(),
            flex_volume,
            ..PersistentVolumeSpec::default()
        };
    }
    if let Some(status) = &mut pv.status {
        *status = PersistentVolumeStatus { phase: status.phase.take(), ..PersistentVolumeStatus::default() };
    }
}

/// Logs a list or watch failure and records it in `health`.
fn report(resource: &'static str, err: &watcher::Error, health: &Health) {
    let status = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.as_ref()),
        watcher::Error::WatchError(status) => Some(status.as_ref()),
        _ => None,
    };
    if let Some(status) = status
        && status.code == 410
    {
        tracing::debug!(resource, "watch expired (410 Gone); relisting");
        return;
    }
    let (reason, code, message) = match status {
        Some(status) => (status.reason.clone(), status.code, status.message.clone()),
        None => (String::new(), 0, dory_core::error_chain(err)),
    };
    let text = if reason.is_empty() { message.clone() } else { format!("{reason} ({code}): {message}") };
    health.watch_failed(resource, text);
    tracing::warn!(resource, %reason, code, error = %message, "cannot list or watch {resource}; nothing of it is seen until this works (retrying)");
}

/// A watch of `api` whose objects that pass `keep` are trimmed by `trim`
/// and land in the returned store (an object that stops passing `keep` is
/// removed, as if deleted); failures are logged and recorded as
/// `resource`'s.
pub fn watch<K>(
    api: Api<K>,
    resource: &'static str,
    health: Arc<Health>,
    keep: impl Fn(&K) -> bool + Send + 'static,
    trim: impl Fn(&mut K) + Send + 'static,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .inspect(move |event| match event {
            Ok(_) => health.watch_ok(resource),
            Err(err) => report(resource, err, &health),
        })
        .filter_map(move |event| {
            let event = match event {
                Ok(watcher::Event::Apply(object)) if !keep(&object) => Some(Ok(watcher::Event::Delete(object))),
                Ok(watcher::Event::InitApply(object)) if !keep(&object) => None,
                Ok(watcher::Event::Apply(mut object)) => {
                    trim(&mut object);
                    Some(Ok(watcher::Event::Apply(object)))
                }
                Ok(watcher::Event::InitApply(mut object)) => {
                    trim(&mut object);
                    Some(Ok(watcher::Event::InitApply(object)))
                }
                other => Some(other),
            };
            std::future::ready(event)
        })
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

/// A watch of `api` for triggers only (nothing cached), reported as `resource`'s.
pub fn trigger<K>(
    api: Api<K>,
    resource: &'static str,
    health: Arc<Health>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, watcher::Config::default())
        .inspect(move |event| match event {
            Ok(_) => health.watch_ok(resource),
            Err(err) => report(resource, err, &health),
        })
        .applied_objects()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn only_our_pvs_and_claims_that_may_be_ours_are_cached() {
        let served = Served::Prefix("dev.hpe.com".into());
        let pv = |provisioner: &str| PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pv".into()),
                annotations: Some(
                    [(ANN_PROVISIONED_BY.to_owned(), provisioner.to_owned()), (LAST_APPLIED.to_owned(), "{}".into())]
                        .into(),
                ),
                finalizers: Some(vec!["dory.io/provisioner".into()]),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                persistent_volume_reclaim_policy: Some("Delete".into()),
                ..PersistentVolumeSpec::default()
            }),
            status: None,
        };
        let mut ours = pv("dev.hpe.com/mock");
        assert!(is_ours(&ours, &served));
        trim_pv(&mut ours);
        assert!(ours.metadata.managed_fields.is_none());
        assert_eq!(ours.metadata.annotations.as_ref().unwrap().len(), 1);
        assert!(ours.spec.is_some() && ours.metadata.finalizers.is_some());
        let spec = ours.spec.as_ref().unwrap();
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
        let mut full: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pv", "labels": {"a": "b"}, "annotations": {ANN_PROVISIONED_BY: "dev.hpe.com/mock", "x": "y"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "gold",
                     "claimRef": {"name": "c", "namespace": "ns"},
                     "flexVolume": {"driver": "dev.hpe.com/mock", "options": {"name": "v1", "size": "1"}}},
            "status": {"phase": "Released", "message": "m"}
        }))
        .unwrap();
        trim_pv(&mut full);
        assert!(full.metadata.labels.is_none());
        assert_eq!(full.metadata.annotations.as_ref().unwrap().len(), 1);
        let spec = full.spec.as_ref().unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("gold"));
        assert!(spec.capacity.is_none() && spec.access_modes.is_none() && spec.claim_ref.is_none());
        let flex = spec.flex_volume.as_ref().unwrap();
        assert_eq!(flex.options.as_ref().unwrap().get("name").map(String::as_str), Some("v1"));
        assert_eq!(flex.options.as_ref().unwrap().len(), 1);
        let status = full.status.as_ref().unwrap();
        assert_eq!((status.phase.as_deref(), status.message.as_deref()), (Some("Released"), None));
        assert!(!is_ours(&pv("example.com/other"), &served));
        assert!(!is_ours(&PersistentVolume::default(), &served));

        let claim = |provisioner: Option<&str>| PersistentVolumeClaim {
            metadata: ObjectMeta {
                annotations: provisioner.map(|p| [(ANN_PROVISIONER.to_owned(), p.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..PersistentVolumeClaim::default()
        };
        assert!(may_be_ours(&claim(None), &served), "not annotated yet");
        assert!(may_be_ours(&claim(Some("dev.hpe.com/mock")), &served));
        assert!(!may_be_ours(&claim(Some("example.com/other")), &served));
    }

    #[test]
    fn bound_claims_keep_only_their_volume_and_class() {
        let mut claim = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some("pvc-1".into()),
                storage_class_name: Some("gold".into()),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        };
        trim_claim(&mut claim);
        let spec = claim.spec.unwrap();
        assert_eq!((spec.volume_name.as_deref(), spec.storage_class_name.as_deref()), (Some("pvc-1"), Some("gold")));
        assert!(spec.access_modes.is_none());
    }
}
