//! What a claim asks to be filled from: a `dataSource`/`dataSourceRef`, or
//! the original's `cloneOfPVC` class parameter or claim annotation. Only a
//! claim of the same namespace whose volume this provisioner made can be
//! cloned; anything else is refused by name, never silently given an empty
//! volume.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use crate::controller::ANN_PROVISIONED_BY;

/// The source claim a claim asks to clone, from its data source; `Err` is
/// the refusal, naming what was asked. `fallback` is the `cloneOfPVC`
/// request, used when the claim has no data source.
pub fn requested_clone(
    claim: &PersistentVolumeClaim,
    provisioner: &str,
    fallback: Option<String>,
) -> Result<Option<String>, String> {
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let spec = claim.spec.as_ref();
    let reference = spec
        .and_then(|s| s.data_source_ref.as_ref())
        .map(|r| (r.api_group.clone().unwrap_or_default(), r.kind.clone(), r.name.clone(), r.namespace.clone()));
    let reference = reference.or_else(|| {
        spec.and_then(|s| s.data_source.as_ref())
            .map(|r| (r.api_group.clone().unwrap_or_default(), r.kind.clone(), r.name.clone(), None))
    });
    let Some((group, kind, name, source_namespace)) = reference else { return Ok(fallback) };
    if !(group.is_empty() && kind == "PersistentVolumeClaim") {
        let what = if group.is_empty() { kind } else { format!("{group}/{kind}") };
        return Err(format!(
            "data source {what} {name:?} is not supported by {provisioner}: only a PersistentVolumeClaim can be cloned"
        ));
    }
    if let Some(other) = source_namespace.filter(|n| !n.is_empty() && *n != namespace) {
        return Err(format!(
            "data source claim {other}/{name} is in another namespace; {provisioner} clones only within one"
        ));
    }
    Ok(Some(name))
}

/// The backend volume behind `pv`, if this provisioner made it: the
/// `flexVolume` option `name`, else the PV's name. `Err` says why it cannot
/// be a clone source.
pub fn clone_source_volume(pv: &PersistentVolume, provisioner: &str) -> Result<String, String> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let made_by = pv.metadata.annotations.as_ref().and_then(|a| a.get(ANN_PROVISIONED_BY));
    if made_by.map(String::as_str) != Some(provisioner) {
        return Err(format!(
            "PV {name} was provisioned by {}, not {provisioner}: only this provisioner's volumes can be cloned",
            made_by.map_or("someone else", String::as_str)
        ));
    }
    let flex_name = pv
        .spec
        .as_ref()
        .and_then(|s| s.flex_volume.as_ref())
        .and_then(|f| f.options.as_ref())
        .and_then(|o| o.get("name"));
    Ok(flex_name.filter(|n| !n.is_empty()).cloned().unwrap_or(name))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claim(spec: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "c", "namespace": "ns"}, "spec": spec})).unwrap()
    }

    #[test]
    fn claims_sources_are_read_or_refused_by_name() {
        let plain = claim(json!({}));
        assert_eq!(requested_clone(&plain, "p/x", None), Ok(None));
        assert_eq!(requested_clone(&plain, "p/x", Some("golden".into())), Ok(Some("golden".into())));
        let pvc = claim(json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": "src"}}));
        assert_eq!(requested_clone(&pvc, "p/x", Some("ignored".into())), Ok(Some("src".into())));
        let snap = claim(
            json!({"dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s1"}}),
        );
        let why = requested_clone(&snap, "p/x", None).unwrap_err();
        assert!(why.contains("snapshot.storage.k8s.io/VolumeSnapshot \"s1\""), "{why}");
        let far =
            claim(json!({"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "src", "namespace": "other"}}));
        assert!(requested_clone(&far, "p/x", None).unwrap_err().contains("another namespace"));
    }

    #[test]
    fn only_our_pvs_are_clone_sources_and_their_backend_name_is_used() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pvc-1", "annotations": {"pv.kubernetes.io/provisioned-by": "p/x"}},
            "spec": {"flexVolume": {"driver": "p/x", "options": {"name": "vol-of-pvc-1"}}},
        }))
        .unwrap();
        assert_eq!(clone_source_volume(&pv, "p/x"), Ok("vol-of-pvc-1".into()));
        assert!(clone_source_volume(&pv, "p/y").unwrap_err().contains("provisioned by p/x, not p/y"));
    }
}
