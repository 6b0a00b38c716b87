//! The parts of kube-controller-manager's PV controller that an external
//! provisioner depends on, run against the fake API server, with the real
//! controller's pacing:
//! - unbound claims whose class names an external provisioner get the
//!   `volume.kubernetes.io/storage-provisioner` annotation (and the beta
//!   key) first, with an `ExternalProvisioning` event, at once for
//!   Immediate classes, after `selected-node` for WaitForFirstConsumer;
//! - a PV whose `claimRef` names an existing, unbound claim with that UID is
//!   bound to it with the real controller's writes in its order: the PV's
//!   status (`Bound`), the claim's spec and annotations (`volumeName`,
//!   `bind-completed`, `bound-by-controller`), the claim's status (`Bound`,
//!   capacity, access modes);
//! - a Bound PV whose claim is gone (or has another UID) becomes `Released`;
//! - a new PV with no claim becomes `Available`.
//!
//! Like the real one it works through one worker, writes with the
//! resourceVersion it read (a concurrent write makes its update fail with
//! 409 Conflict; it tries again on its next pass, re-reading), and every
//! write waits for its client-side rate limiter: kube-controller-manager's
//! defaults are 20 requests per second with a burst of 30
//! (`--kube-api-qps`, `--kube-api-burst`), which makes about four claims
//! per second the cluster's floor. [`RateLimit::Unlimited`] measures
//! without that floor. Reads cost nothing (the real controller reads its
//! informer caches).
//!
//! It only applies those rules, with no capacity or access mode matching
//! and no in-tree deleters.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::fake_apiserver::FakeApiServer;

const GA_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The controller's client-side rate limit on API writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateLimit {
    /// A token bucket: `qps` tokens per second, at most `burst` saved up.
    Limited {
        /// Sustained requests per second.
        qps: f64,
        /// Requests that may go at once after a quiet spell.
        burst: u32,
    },
    /// No limit.
    Unlimited,
}

impl RateLimit {
    /// kube-controller-manager's defaults: `--kube-api-qps=20`, `--kube-api-burst=30`.
    pub const KUBE_CONTROLLER_MANAGER: Self = Self::Limited { qps: 20.0, burst: 30 };
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::KUBE_CONTROLLER_MANAGER
    }
}

/// client-go's token bucket (`flowcontrol.NewTokenBucketRateLimiter`).
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        let tokens = match limit {
            RateLimit::Limited { burst, .. } => f64::from(burst),
            RateLimit::Unlimited => 0.0,
        };
        Self { limit, tokens, at: Instant::now() }
    }

    /// Waits for a token.
    async fn take(&mut self) {
        let RateLimit::Limited { qps, burst } = self.limit else { return };
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * qps).min(f64::from(burst));
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / qps);
            tokio::time::sleep(wait).await;
            self.tokens += wait.as_secs_f64() * qps;
            self.at = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Runs the controller with kube-controller-manager's default rate limit,
/// looking for work every `period`, until the returned handle is aborted.
pub fn spawn(server: Arc<FakeApiServer>, period: Duration) -> tokio::task::JoinHandle<()> {
    spawn_with(server, period, RateLimit::default())
}

/// Runs the controller with `limit`, looking for work every `period`.
pub fn spawn_with(server: Arc<FakeApiServer>, period: Duration, limit: RateLimit) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut bucket = Bucket::new(limit);
        loop {
            sync_once(&server, &mut bucket).await;
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

fn str_of<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// One pass of the rules above, one write at a time.
async fn sync_once(server: &FakeApiServer, bucket: &mut Bucket) {
    let classes = server.list("storage.k8s.io/v1", "storageclasses");
    for claim in server.list("v1", "persistentvolumeclaims") {
        if !str_of(&claim, "/spec/volumeName").is_empty() {
            continue;
        }
        let Some(class) = class_name(&claim)
            .and_then(|c| classes.iter().find(|k| k["metadata"]["name"].as_str() == Some(c.as_str())))
        else {
            continue;
        };
        let provisioner = class["provisioner"].as_str().unwrap_or_default();
        let annotations = &claim["metadata"]["annotations"];
        if provisioner.starts_with("kubernetes.io/") || annotations[GA_PROVISIONER].as_str() == Some(provisioner) {
            continue;
        }
        let wffc = class["volumeBindingMode"].as_str() == Some("WaitForFirstConsumer");
        if wffc && annotations[SELECTED_NODE].as_str().is_none_or(str::is_empty) {
            continue;
        }
        let (namespace, name) = (str_of(&claim, "/metadata/namespace"), str_of(&claim, "/metadata/name"));
        let mut annotated = claim.clone();
        annotated["metadata"]["annotations"][GA_PROVISIONER] = json!(provisioner);
        annotated["metadata"]["annotations"][BETA_PROVISIONER] = json!(provisioner);
        bucket.take().await;
        if server.replace("v1", "persistentvolumeclaims", namespace, name, annotated, false).is_err() {
            continue;
        }
        bucket.take().await;
        let _ = server.create(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": name,
                               "uid": claim["metadata"]["uid"]},
            "reason": "ExternalProvisioning", "type": "Normal",
            "message": format!("Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."),
            "source": {"component": "persistentvolume-controller"},
        }));
    }

    for pv in server.list("v1", "persistentvolumes") {
        let pv_name = str_of(&pv, "/metadata/name").to_owned();
        let phase = str_of(&pv, "/status/phase").to_owned();
        let claim_ref = &pv["spec"]["claimRef"];
        let set_phase = |phase: &str| {
            let mut pv = pv.clone();
            pv["status"]["phase"] = json!(phase);
            pv
        };
        let Some(claim_name) = claim_ref["name"].as_str() else {
            if phase.is_empty() {
                bucket.take().await;
                let _ = server.replace("v1", "persistentvolumes", "", &pv_name, set_phase("Available"), true);
            }
            continue;
        };
        let claim_ns = claim_ref["namespace"].as_str().unwrap_or_default();
        let claim = server.get("v1", "persistentvolumeclaims", claim_ns, claim_name);
        let Some(claim) = claim.filter(|c| c["metadata"]["uid"] == claim_ref["uid"]) else {
            if phase != "Released" && phase != "Failed" {
                bucket.take().await;
                let _ = server.replace("v1", "persistentvolumes", "", &pv_name, set_phase("Released"), true);
            }
            continue;
        };
        let volume_name = str_of(&claim, "/spec/volumeName").to_owned();
        if !volume_name.is_empty() && volume_name != pv_name {
            continue;
        }
        // bind(): the volume's phase, then the claim, then the claim's status.
        if phase != "Bound" {
            bucket.take().await;
            if server.replace("v1", "persistentvolumes", "", &pv_name, set_phase("Bound"), true).is_err() {
                continue;
            }
        }
        let mut claim = claim;
        if volume_name.is_empty() {
            claim["spec"]["volumeName"] = json!(pv_name);
            claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
            claim["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
            bucket.take().await;
            match server.replace("v1", "persistentvolumeclaims", claim_ns, claim_name, claim, false) {
                Ok(updated) => claim = updated,
                Err(_) => continue,
            }
        }
        if claim["status"]["phase"] != "Bound" {
            claim["status"] =
                json!({"phase": "Bound", "capacity": pv["spec"]["capacity"], "accessModes": pv["spec"]["accessModes"]});
            bucket.take().await;
            let _ = server.replace("v1", "persistentvolumeclaims", claim_ns, claim_name, claim, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut bucket = Bucket::new(RateLimit::Limited { qps: 20.0, burst: 30 });
        let start = Instant::now();
        for _ in 0..30 {
            bucket.take().await;
        }
        assert!(start.elapsed() < Duration::from_millis(5), "the burst is free");
        for _ in 0..20 {
            bucket.take().await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(990) && elapsed < Duration::from_millis(1100), "{elapsed:?}");
        let mut unlimited = Bucket::new(RateLimit::Unlimited);
        let start = Instant::now();
        for _ in 0..1000 {
            unlimited.take().await;
        }
        assert!(start.elapsed() < Duration::from_millis(5));
    }
}
