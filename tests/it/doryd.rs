//! `doryd`, the real binary, against the fake API server (with the PV
//! controller emulation) and the mock plugin on a real socket.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dory_core::Operation;
use dory_tests::fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

use crate::support::{MockPlugin, binary, wait_until};

const PROVISIONER: &str = "dev.hpe.com/mock";

struct Cluster {
    api: Arc<FakeApiServer>,
    plugin: MockPlugin,
    dir: tempfile::TempDir,
    pv_controller: tokio::task::JoinHandle<()>,
    doryds: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pv_controller.abort();
        for child in &mut self.doryds {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    async fn start() -> Self {
        let api = Arc::new(FakeApiServer::start().await);
        let pv_controller = dory_tests::pv_controller::spawn(api.clone(), Duration::from_millis(20));
        let plugin = MockPlugin::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
        let driver_dir = dir.path().join("plugins/dev.hpe.com~mock");
        std::fs::create_dir_all(&driver_dir).unwrap();
        let config = json!({
            "dockerVolumePluginSocketPath": plugin.socket,
            "pluginRetrySeconds": 0,
            "defaultOptions": [{"manager": "k8s"}],
        });
        std::fs::write(driver_dir.join("mock.json"), config.to_string()).unwrap();
        Self { api, plugin, dir, pv_controller, doryds: Vec::new() }
    }

    fn doryd(&mut self, extra: &[&str]) -> usize {
        let log = std::fs::File::create(self.dir.path().join(format!("doryd-{}.log", self.doryds.len()))).unwrap();
        let child = Command::new(binary("doryd"))
            .arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--plugin-dir")
            .arg(self.dir.path().join("plugins"))
            .args(["--retry-interval-start", "100ms", "--retry-interval-max", "1s"])
            .args(["--log-level", "debug"])
            .args(extra)
            .args(if extra.contains(&"--metrics-address") { &[][..] } else { &["--metrics-address", "none"][..] })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.doryds.push(child);
        self.doryds.len() - 1
    }

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("doryd-{index}.log"))).unwrap_or_default()
    }

    fn class(&self, name: &str, extra: Value) -> Value {
        let mut class = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name}, "provisioner": PROVISIONER, "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        });
        dory_tests::fake_apiserver::merge_patch(&mut class, &extra);
        self.api.create(class).unwrap()
    }

    fn claim(&self, name: &str, class: &str, size: &str, extra: Value) -> Value {
        let mut claim = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": size}}},
            "status": {"phase": "Pending"},
        });
        dory_tests::fake_apiserver::merge_patch(&mut claim, &extra);
        self.api.create(claim).unwrap()
    }

    fn pv_of(&self, claim: &Value) -> Option<Value> {
        let uid = claim["metadata"]["uid"].as_str().unwrap();
        self.api.get("v1", "persistentvolumes", "", &format!("pvc-{uid}"))
    }

    async fn wait_bound(&self, claim: &Value) -> Value {
        let name = claim["metadata"]["name"].as_str().unwrap().to_owned();
        let bound = wait_until(Duration::from_secs(20), || {
            self.api
                .get("v1", "persistentvolumeclaims", "default", &name)
                .is_some_and(|c| c["status"]["phase"] == "Bound")
        })
        .await;
        assert!(bound, "claim {name} bound; doryd log:\n{}", self.log(0));
        self.pv_of(claim).expect("PV exists")
    }

    fn events(&self, reason: &str) -> Vec<Value> {
        self.api.list("events.k8s.io/v1", "events").into_iter().filter(|e| e["reason"] == reason).collect()
    }

    fn delete_claim(&self, name: &str) {
        self.api.delete("v1", "persistentvolumeclaims", "default", name).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_a_bound_pv_and_deletes_it_with_the_claim() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({"parameters": {"perfPolicy": "fast"}}));
    let claim = cluster.claim("data", "gold", "1500Mi", json!({}));
    let pv = cluster.wait_bound(&claim).await;
    let uid = claim["metadata"]["uid"].as_str().unwrap();
    let pv_name = format!("pvc-{uid}");

    assert_eq!(pv["spec"]["claimRef"]["uid"], uid);
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"], PROVISIONER);
    assert_eq!(pv["spec"]["storageClassName"], "gold");
    assert_eq!(pv["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(pv["spec"]["capacity"]["storage"], (2u64 << 30).to_string(), "1500Mi rounds up to 2 GiB");
    assert_eq!(pv["spec"]["flexVolume"]["driver"], PROVISIONER);
    assert_eq!(pv["spec"]["flexVolume"]["options"]["name"], pv_name);
    assert!(pv["spec"].get("mountOptions").is_none());
    assert_eq!(pv["metadata"]["finalizers"], json!(["dory.io/provisioner"]));
    let options = cluster.plugin.backend.options(&pv_name).expect("backend volume created");
    let expected: dory_core::CreateOptions =
        [("perfPolicy", "fast"), ("size", "2"), ("manager", "k8s")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    assert_eq!(options, expected);
    assert_eq!(cluster.events("Provisioning").len(), 1);
    let succeeded = cluster.events("ProvisioningSucceeded");
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0]["note"], format!("Successfully provisioned volume {pv_name}"));
    assert_eq!(succeeded[0]["regarding"]["name"], "data");

    cluster.delete_claim("data");
    let gone = wait_until(Duration::from_secs(20), || {
        cluster.pv_of(&claim).is_none() && cluster.plugin.backend.options(&pv_name).is_none()
    })
    .await;
    assert!(gone, "volume and PV removed; log:\n{}", cluster.log(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_keeps_the_volume_and_only_drops_the_finalizer() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("keep", json!({"reclaimPolicy": "Retain"}));
    let claim = cluster.claim("kept", "keep", "1Gi", json!({}));
    let pv = cluster.wait_bound(&claim).await;
    let pv_name = pv["metadata"]["name"].as_str().unwrap().to_owned();
    let finalizer_gone = wait_until(Duration::from_secs(10), || {
        cluster.pv_of(&claim).is_some_and(|pv| pv["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty()))
    })
    .await;
    assert!(finalizer_gone, "Retain PVs carry no finalizer of ours");
    cluster.delete_claim("kept");
    let released = wait_until(Duration::from_secs(10), || {
        cluster.pv_of(&claim).is_some_and(|pv| pv["status"]["phase"] == "Released")
    })
    .await;
    assert!(released);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cluster.pv_of(&claim).is_some(), "a Retain PV stays");
    assert!(cluster.plugin.backend.options(&pv_name).is_some(), "and so does its volume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_first_consumer_waits_for_the_selected_node() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("late-binding", json!({"volumeBindingMode": "WaitForFirstConsumer"}));
    let claim = cluster.claim("wffc", "late-binding", "1Gi", json!({}));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(cluster.pv_of(&claim).is_none(), "no PV before the scheduler picks a node");
    cluster
        .api
        .update_with("v1", "persistentvolumeclaims", "default", "wffc", |c| {
            c["metadata"]["annotations"] = json!({"volume.kubernetes.io/selected-node": "node-1"});
        })
        .unwrap();
    cluster.wait_bound(&claim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_and_clones_reach_the_backend() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class(
        "flex",
        json!({"parameters": {"allowOverrides": "description,perfPolicy", "description": "from class", "sizeInGiB": "1"}}),
    );
    let golden = cluster.claim(
        "golden",
        "flex",
        "3Gi",
        json!({"metadata": {"annotations": {"dev.hpe.com/description": "from claim", "dev.hpe.com/dedupe": "true"}}}),
    );
    let golden_pv = cluster.wait_bound(&golden).await;
    let golden_name = golden_pv["metadata"]["name"].as_str().unwrap().to_owned();
    let options = cluster.plugin.backend.options(&golden_name).unwrap();
    assert_eq!(options["description"], "from claim");
    assert_eq!(options["sizeInGiB"], "3", "the class's size key carries the claim's size");
    assert!(!options.contains_key("dedupe"), "not in allowOverrides");
    assert!(!options.contains_key("allowOverrides"));

    let copy = cluster.claim(
        "copy",
        "flex",
        "3Gi",
        json!({"metadata": {"annotations": {"dev.hpe.com/cloneOfPVC": "golden"}}}),
    );
    let copy_pv = cluster.wait_bound(&copy).await;
    let options = cluster.plugin.backend.options(copy_pv["metadata"]["name"].as_str().unwrap()).unwrap();
    assert_eq!(options["cloneOf"], golden_name);
    assert!(!options.contains_key("cloneOfPVC"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_are_reported_and_retried_until_they_succeed() {
    let mut cluster = Cluster::start().await;
    cluster.plugin.backend.faults().fail_times(Operation::Create, "array out of space", 2);
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({}));
    let claim = cluster.claim("retry", "gold", "1Gi", json!({}));
    cluster.wait_bound(&claim).await;
    let failed = cluster.events("ProvisioningFailed");
    assert!(!failed.is_empty(), "failures are events");
    assert!(failed[0]["note"].as_str().unwrap().contains("array out of space"), "{}", failed[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_created_late_is_picked_up() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    // Annotated as the PV controller would have, but the class is not there yet.
    let claim = cluster.claim(
        "early",
        "later",
        "1Gi",
        json!({"metadata": {"annotations": {"volume.kubernetes.io/storage-provisioner": PROVISIONER}}}),
    );
    let reported = wait_until(Duration::from_secs(10), || !cluster.events("ProvisioningFailed").is_empty()).await;
    assert!(reported);
    assert!(
        cluster.events("ProvisioningFailed")[0]["note"].as_str().unwrap().contains("StorageClass \"later\" not found")
    );
    cluster.class("later", json!({}));
    cluster.wait_bound(&claim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_claims_fail_and_mount_options_are_not_copied() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("opts", json!({"mountOptions": ["noatime"]}));
    let block = cluster.claim("raw", "opts", "1Gi", json!({"spec": {"volumeMode": "Block"}}));
    let claim = cluster.claim("fs", "opts", "1Gi", json!({}));
    let pv = cluster.wait_bound(&claim).await;
    assert!(pv["spec"].get("mountOptions").is_none());
    let warned = wait_until(Duration::from_secs(5), || !cluster.events("ProvisioningWarning").is_empty()).await;
    assert!(warned);
    assert!(
        cluster
            .events("ProvisioningFailed")
            .iter()
            .any(|e| { e["note"].as_str().unwrap().contains("does not support block volume provisioning") })
    );
    assert!(cluster.pv_of(&block).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_volume_is_reused_after_a_restart_mid_provision() {
    let mut cluster = Cluster::start().await;
    cluster.class("gold", json!({}));
    let claim = cluster.claim("restart", "gold", "1Gi", json!({}));
    let pv_name = format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap());
    // A doryd that died after recording the provisioning on the claim and
    // creating the volume, before creating the PV.
    cluster
        .api
        .update_with("v1", "persistentvolumeclaims", "default", "restart", |c| {
            c["metadata"]["annotations"]["dory.io/provisioning-volume"] = json!(pv_name);
            c["metadata"]["finalizers"] = json!(["dory.io/provisioning"]);
        })
        .unwrap();
    let volume = dory_core::VolumeName::new(pv_name.clone()).unwrap();
    let marker: dory_core::CreateOptions = [("created".to_owned(), "before the restart".to_owned())].into();
    dory_core::VolumeBackend::create(cluster.plugin.backend.as_ref(), &volume, &marker).await.unwrap();
    cluster.doryd(&["--leader-election=false"]);
    cluster.wait_bound(&claim).await;
    assert_eq!(cluster.plugin.backend.options(&pv_name), Some(marker), "reused, not created again");
    assert_eq!(cluster.api.count("v1", "persistentvolumes", |_| true), 1);
    let finalizers_gone = wait_until(Duration::from_secs(5), || {
        cluster.api.get("v1", "persistentvolumeclaims", "default", "restart").is_some_and(|c| {
            !c["metadata"]["finalizers"].as_array().is_some_and(|f| f.contains(&json!("dory.io/provisioning")))
        })
    })
    .await;
    assert!(finalizers_gone, "the claim is let go once its PV exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_deleted_mid_provision_leaks_no_volume() {
    let mut cluster = Cluster::start().await;
    cluster.plugin.backend.faults().delay(Operation::Create, Duration::from_millis(800));
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({}));
    let claim = cluster.claim("brief", "gold", "1Gi", json!({}));
    let pv_name = format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.delete_claim("brief");
    let clean = wait_until(Duration::from_secs(15), || {
        cluster.plugin.backend.options(&pv_name).is_none() && cluster.pv_of(&claim).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(clean && cluster.plugin.backend.options(&pv_name).is_none(), "log:\n{}", cluster.log(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pv_deleted_before_its_claim_still_releases_the_volume() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({}));
    let claim = cluster.claim("first", "gold", "1Gi", json!({}));
    let pv = cluster.wait_bound(&claim).await;
    let pv_name = pv["metadata"]["name"].as_str().unwrap().to_owned();
    cluster.api.delete("v1", "persistentvolumes", "", &pv_name).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pv = cluster.pv_of(&claim).expect("the finalizer keeps the PV");
    assert!(pv["metadata"]["deletionTimestamp"].is_string());
    assert!(cluster.plugin.backend.options(&pv_name).is_some());
    cluster.delete_claim("first");
    let gone = wait_until(Duration::from_secs(15), || {
        cluster.pv_of(&claim).is_none() && cluster.plugin.backend.options(&pv_name).is_none()
    })
    .await;
    assert!(gone, "log:\n{}", cluster.log(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_disconnects_and_410_gone() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({}));
    let first = cluster.claim("one", "gold", "1Gi", json!({}));
    cluster.wait_bound(&first).await;
    // Compact and cut every watch: watches resuming from a compacted
    // resourceVersion get 410 Gone and must relist. (A write racing the
    // compaction can leave a watch on a newer version; then cut again.)
    let mut relisted = false;
    for _ in 0..5 {
        cluster.api.compact();
        cluster.api.disconnect_watches();
        relisted =
            wait_until(Duration::from_secs(3), || cluster.api.request_count("list", "persistentvolumeclaims") >= 2)
                .await;
        if relisted {
            break;
        }
    }
    assert!(relisted, "the 410 forced a relist; log:\n{}", cluster.log(0));
    let second = cluster.claim("two", "gold", "1Gi", json!({}));
    cluster.wait_bound(&second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_leader_election_provision_once_and_fail_over() {
    let mut cluster = Cluster::start().await;
    let flags = ["--leader-election=true", "--leader-election-lease-duration", "2s"];
    let first = cluster.doryd(&[&flags[..], &["--identity", "replica-a"]].concat());
    let second = cluster.doryd(&[&flags[..], &["--identity", "replica-b"]].concat());
    cluster.class("gold", json!({}));
    let claims: Vec<Value> = (0..5).map(|i| cluster.claim(&format!("c{i}"), "gold", "1Gi", json!({}))).collect();
    for claim in &claims {
        cluster.wait_bound(claim).await;
    }
    assert_eq!(cluster.api.count("v1", "persistentvolumes", |_| true), 5);
    let lease = cluster.api.list("coordination.k8s.io/v1", "leases");
    assert_eq!(lease.len(), 1);
    let holder = lease[0]["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    let (leader, standby) = if holder == "replica-a" { (first, second) } else { (second, first) };
    assert!(cluster.log(standby).contains("waiting for leadership"));
    assert!(!cluster.log(standby).contains("became leader"), "only one leader");

    cluster.doryds[leader].kill().unwrap();
    cluster.doryds[leader].wait().unwrap();
    let took_over = wait_until(Duration::from_secs(20), || cluster.log(standby).contains("became leader")).await;
    assert!(took_over, "standby log:\n{}", cluster.log(standby));
    let late = cluster.claim("after-failover", "gold", "1Gi", json!({}));
    cluster.wait_bound(&late).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_are_served() {
    let mut cluster = Cluster::start().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    cluster.doryd(&["--leader-election=false", "--metrics-address", &address]);
    cluster.class("gold", json!({}));
    let claim = cluster.claim("measured", "gold", "1Gi", json!({}));
    cluster.wait_bound(&claim).await;
    let get = |path: &str| {
        let output = Command::new("curl").args(["-sS", &format!("http://{address}{path}")]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(get("/healthz"), "ok\n");
    let metrics = get("/metrics");
    assert!(
        metrics.contains("controller_persistentvolumeclaim_provision_total{class=\"gold\",source=\"\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "controller_persistentvolumeclaim_provision_duration_seconds_count{class=\"gold\",source=\"\"} 1"
        )
    );
    cluster.delete_claim("measured");
    let deleted = wait_until(Duration::from_secs(15), || {
        get("/metrics").contains("controller_persistentvolume_delete_total{class=\"gold\"} 1")
    })
    .await;
    assert!(
        deleted,
        "PVs: {:?}\nmetrics:\n{}\ndoryd log:\n{}",
        cluster.api.list("v1", "persistentvolumes"),
        get("/metrics"),
        cluster.log(0)
    );
}

#[test]
fn help_version_and_bad_flags() {
    let output = Command::new(binary("doryd")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--kubeconfig",
        "--prefix",
        "--provisioner",
        "--plugin-dir",
        "--leader-election",
        "--leader-election-namespace",
        "--metrics-address",
        "--workers",
        "--log-format",
    ] {
        assert!(text.contains(flag), "--help lists {flag}");
    }
    let output = Command::new(binary("doryd")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("doryd 0.1.0 (commit "));
    let output = Command::new(binary("doryd")).args(["--kubeconfig", "/nonexistent/kubeconfig"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read kubeconfig /nonexistent/kubeconfig"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deletes_are_events_and_retried_and_foreign_pvs_are_never_touched() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({}));
    // A PV some other provisioner made, released with policy Delete.
    cluster
        .api
        .create(json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "foreign", "annotations": {"pv.kubernetes.io/provisioned-by": "example.com/other"}},
            "spec": {"capacity": {"storage": "1Gi"}, "persistentVolumeReclaimPolicy": "Delete",
                     "claimRef": {"namespace": "default", "name": "gone", "uid": "0000"},
                     "flexVolume": {"driver": "example.com/other"}}}))
        .unwrap();
    let claim = cluster.claim("stubborn", "gold", "1Gi", json!({}));
    let pv = cluster.wait_bound(&claim).await;
    let pv_name = pv["metadata"]["name"].as_str().unwrap().to_owned();
    cluster.plugin.backend.faults().fail_times(Operation::Remove, "volume is busy on the array", 2);
    cluster.delete_claim("stubborn");
    let reported = wait_until(Duration::from_secs(10), || !cluster.events("VolumeFailedDelete").is_empty()).await;
    assert!(reported, "log:\n{}", cluster.log(0));
    let event = &cluster.events("VolumeFailedDelete")[0];
    assert!(event["note"].as_str().unwrap().contains("volume is busy on the array"), "{event}");
    assert_eq!(event["regarding"]["name"], pv_name.as_str());
    let gone = wait_until(Duration::from_secs(15), || cluster.pv_of(&claim).is_none()).await;
    assert!(gone && cluster.plugin.backend.options(&pv_name).is_none(), "retried until removed");

    let foreign = cluster.api.get("v1", "persistentvolumes", "", "foreign").expect("foreign PV untouched");
    assert_eq!(foreign["status"]["phase"], "Released");
    assert!(foreign["metadata"].get("finalizers").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_positional_form_still_works() {
    let mut cluster = Cluster::start().await;
    let log = std::fs::File::create(cluster.dir.path().join("doryd-0.log")).unwrap();
    let child = Command::new(binary("doryd"))
        .arg(cluster.dir.path().join("kubeconfig"))
        .arg("dev.hpe.com")
        .arg("--plugin-dir")
        .arg(cluster.dir.path().join("plugins"))
        .args(["--leader-election=false", "--metrics-address", "none"])
        .stderr(log)
        .spawn()
        .unwrap();
    cluster.doryds.push(child);
    cluster.class("gold", json!({}));
    let claim = cluster.claim("legacy", "gold", "1Gi", json!({}));
    cluster.wait_bound(&claim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_exits() {
    let mut cluster = Cluster::start().await;
    let index =
        cluster.doryd(&["--leader-election=true", "--leader-election-lease-duration", "2s", "--identity", "me"]);
    let leading = wait_until(Duration::from_secs(10), || cluster.log(index).contains("became leader")).await;
    assert!(leading);
    // Another replica takes the Lease (as after a long pause of this one).
    let lease = cluster.api.list("coordination.k8s.io/v1", "leases").remove(0);
    let (namespace, name) = (
        lease["metadata"]["namespace"].as_str().unwrap().to_owned(),
        lease["metadata"]["name"].as_str().unwrap().to_owned(),
    );
    cluster
        .api
        .update_with("coordination.k8s.io/v1", "leases", &namespace, &name, |lease| {
            lease["spec"]["holderIdentity"] = json!("someone-else");
            lease["spec"]["leaseDurationSeconds"] = json!(600);
        })
        .unwrap();
    let mut exited = None;
    for _ in 0..200 {
        if let Some(status) = cluster.doryds[index].try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.expect("doryd exits after losing the Lease");
    assert_eq!(status.code(), Some(1));
    assert!(cluster.log(index).contains("lost the leader election Lease"), "{}", cluster.log(index));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_config_file_serves_and_names_the_plugin_after_the_driver() {
    let mut cluster = Cluster::start().await;
    // No socket path: the plugin is the one named like the provisioner's
    // driver (`dev.hpe.com/mock` → `mock.sock`), not like this file.
    let config = cluster.dir.path().join("doryd.json");
    let socket_dir = cluster.plugin.socket.parent().unwrap().to_owned();
    let settings = json!({"pluginSocketDir": socket_dir, "defaultOptions": [{"from": "doryd.json"}]});
    std::fs::write(&config, settings.to_string()).unwrap();
    cluster.doryd(&["--leader-election=false", "--config", config.to_str().unwrap()]);
    cluster.class("gold", json!({}));
    let claim = cluster.claim("configured", "gold", "1Gi", json!({}));
    let pv = cluster.wait_bound(&claim).await;
    let volume = pv["spec"]["flexVolume"]["options"]["name"].as_str().unwrap();
    let options = cluster.plugin.backend.options(volume).expect("volume created through the plugin");
    assert_eq!(options.get("from").map(String::as_str), Some("doryd.json"), "{options:?}");
    assert!(!options.contains_key("manager"), "the driver's json was not read: {options:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_looking_parameters_reach_the_plugin_but_not_the_log() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({"parameters": {"adminPassword": "hunter2", "tier": "fast"}}));
    let claim = cluster.claim("guarded", "gold", "1Gi", json!({}));
    let pv = cluster.wait_bound(&claim).await;
    let volume = pv["spec"]["flexVolume"]["options"]["name"].as_str().unwrap();
    let options = cluster.plugin.backend.options(volume).unwrap();
    assert_eq!(options["adminPassword"], "hunter2");
    let log = cluster.log(0);
    assert!(log.contains(r#""adminPassword":"<redacted>""#) && log.contains(r#""tier":"fast""#), "{log}");
    assert!(!log.contains("hunter2"), "a secret reached the log");
}
