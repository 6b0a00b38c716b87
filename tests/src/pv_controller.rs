//! The parts of kube-controller-manager's PV controller that an external
//! provisioner depends on, run against the fake API server:
//! - unbound claims whose class names an external provisioner get the
//!   `volume.kubernetes.io/storage-provisioner` annotations (and the beta
//!   key), at once for Immediate classes, after `selected-node` for
//!   WaitForFirstConsumer;
//! - a PV whose `claimRef` names an existing, unbound claim with that UID is
//!   bound to it (claim `spec.volumeName`, both phases `Bound`, claim
//!   capacity and access modes);
//! - a Bound PV whose claim is gone (or has another UID) becomes `Released`;
//! - a new PV with no claim becomes `Available`.
//!
//! It only applies those rules, with no events, no capacity or access mode
//! matching and no in-tree deleters.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_apiserver::FakeApiServer;

const GA_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// Runs [`sync_once`] every `period` until the returned handle is aborted.
pub fn spawn(server: std::sync::Arc<FakeApiServer>, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            sync_once(&server);
            tokio::time::sleep(period).await;
        }
    })
}

fn class_name(claim: &Value) -> Option<String> {
    claim["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"]
        .as_str()
        .or_else(|| claim["spec"]["storageClassName"].as_str())
        .map(str::to_owned)
}

/// One pass of the rules above.
pub fn sync_once(server: &FakeApiServer) {
    let classes = server.list("storage.k8s.io/v1", "storageclasses");
    let claims = server.list("v1", "persistentvolumeclaims");
    for claim in &claims {
        let namespace = claim["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = claim["metadata"]["name"].as_str().unwrap_or_default();
        if claim["spec"]["volumeName"].as_str().is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let annotations = &claim["metadata"]["annotations"];
        let Some(class) =
            class_name(claim).and_then(|c| classes.iter().find(|k| k["metadata"]["name"].as_str() == Some(c.as_str())))
        else {
            continue;
        };
        let provisioner = class["provisioner"].as_str().unwrap_or_default();
        if provisioner.starts_with("kubernetes.io/") || annotations[GA_PROVISIONER].as_str() == Some(provisioner) {
            continue;
        }
        let wffc = class["volumeBindingMode"].as_str() == Some("WaitForFirstConsumer");
        if wffc && annotations[SELECTED_NODE].as_str().is_none_or(str::is_empty) {
            continue;
        }
        let _ = server.update_with("v1", "persistentvolumeclaims", namespace, name, |claim| {
            claim["metadata"]["annotations"][GA_PROVISIONER] = json!(provisioner);
            claim["metadata"]["annotations"][BETA_PROVISIONER] = json!(provisioner);
        });
    }

    for pv in server.list("v1", "persistentvolumes") {
        let pv_name = pv["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let phase = pv["status"]["phase"].as_str().unwrap_or_default().to_owned();
        let claim_ref = &pv["spec"]["claimRef"];
        let Some(claim_name) = claim_ref["name"].as_str() else {
            if phase.is_empty() {
                let _ = server.update_with("v1", "persistentvolumes", "", &pv_name, |pv| {
                    pv["status"]["phase"] = json!("Available");
                });
            }
            continue;
        };
        let claim_ns = claim_ref["namespace"].as_str().unwrap_or_default();
        let claim = server.get("v1", "persistentvolumeclaims", claim_ns, claim_name);
        let same_claim = claim.as_ref().filter(|c| c["metadata"]["uid"] == claim_ref["uid"]);
        match same_claim {
            None => {
                if phase != "Released" && phase != "Failed" {
                    let _ = server.update_with("v1", "persistentvolumes", "", &pv_name, |pv| {
                        pv["status"]["phase"] = json!("Released");
                    });
                }
            }
            Some(claim) => {
                let bound_here = claim["spec"]["volumeName"].as_str() == Some(pv_name.as_str());
                let unbound = claim["spec"]["volumeName"].as_str().is_none_or(str::is_empty);
                if unbound {
                    let capacity = pv["spec"]["capacity"].clone();
                    let modes = pv["spec"]["accessModes"].clone();
                    let _ = server.update_with("v1", "persistentvolumeclaims", claim_ns, claim_name, |claim| {
                        claim["spec"]["volumeName"] = json!(pv_name);
                        claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
                        claim["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
                        claim["status"] = json!({"phase": "Bound", "capacity": capacity, "accessModes": modes});
                    });
                }
                if (unbound || bound_here) && phase != "Bound" {
                    let _ = server.update_with("v1", "persistentvolumes", "", &pv_name, |pv| {
                        pv["status"]["phase"] = json!("Bound");
                    });
                }
            }
        }
    }
}
