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
        Self::start_with(Default::default()).await
    }

    /// A cluster whose plugin reports errors as `options` says.
    async fn start_with(options: dory_backend_docker::ServerOptions) -> Self {
        let api = Arc::new(FakeApiServer::start().await);
        let pv_controller = dory_tests::pv_controller::spawn(api.clone(), Duration::from_millis(20));
        let plugin = MockPlugin::with_options(options).await;
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
    let waiting = wait_until(Duration::from_secs(5), || cluster.log(standby).contains("waiting for leadership")).await;
    assert!(waiting, "the standby waits; log:\n{}", cluster.log(standby));
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

/// One "node" of a cluster whose plugin is node-local: its own mock plugin
/// (scope local) and the doryd configuration that talks to it.
struct LocalNode {
    plugin: MockPlugin,
    config: std::path::PathBuf,
}

impl LocalNode {
    /// The node's `kubernetes.io/hostname` label is `<name>-host`, as with
    /// kubelet's `--hostname-override`: PVs are pinned by the label.
    async fn start(cluster: &Cluster, name: &str) -> Self {
        cluster
            .api
            .create(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": format!("{name}-host")}}}))
            .unwrap();
        let plugin = MockPlugin::serving(Default::default(), dory_core::Scope::Local).await;
        let config = cluster.dir.path().join(format!("{name}.json"));
        std::fs::write(
            &config,
            json!({"dockerVolumePluginSocketPath": plugin.socket, "pluginRetrySeconds": 0}).to_string(),
        )
        .unwrap();
        Self { plugin, config }
    }

    fn doryd_args<'a>(&'a self, node: &'a str) -> [&'a str; 4] {
        ["--node-name", node, "--config", self.config.to_str().unwrap()]
    }
}

fn claim_of(cluster: &Cluster, name: &str) -> Option<Value> {
    cluster.api.get("v1", "persistentvolumeclaims", "default", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_plugins_volume_is_made_only_on_the_selected_node_and_never_elsewhere() {
    let mut cluster = Cluster::start().await;
    let node_a = LocalNode::start(&cluster, "node-a").await;
    let node_b = LocalNode::start(&cluster, "node-b").await;
    cluster.doryd(&node_a.doryd_args("node-a"));
    cluster.doryd(&node_b.doryd_args("node-b"));
    cluster.class("local", json!({"volumeBindingMode": "WaitForFirstConsumer"}));
    let claim = cluster.claim("data", "local", "1Gi", json!({}));
    let volume = format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap());
    // (The PV controller names the provisioner on a WaitForFirstConsumer
    // claim only once a node is selected.)
    let watching =
        wait_until(Duration::from_secs(5), || (0..2).all(|i| cluster.log(i).contains("store is ready"))).await;
    assert!(watching, "both doryds watch; logs:\n{}\n{}", cluster.log(0), cluster.log(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cluster.pv_of(&claim).is_none(), "nothing happens before the scheduler picks a node");
    // The scheduler picks node-b.
    cluster
        .api
        .update_with("v1", "persistentvolumeclaims", "default", "data", |c| {
            c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!("node-b");
        })
        .unwrap();
    let pv = cluster.wait_bound(&claim).await;
    assert!(node_b.plugin.backend.options(&volume).is_some(), "created on the selected node");
    assert!(node_a.plugin.backend.options(&volume).is_none(), "and nowhere else");
    let term = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(term, &json!({"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-b-host"]}));
    let flex = &pv["spec"]["flexVolume"]["options"];
    assert_eq!(flex["dory.io/provisioned-by"], PROVISIONER, "the PV carries the provisioned mark");

    // A pod of this PV on node-a: the driver there refuses instead of making
    // an empty volume.
    let scratch = tempfile::tempdir().unwrap();
    let kubelet_a =
        crate::kubelet::Kubelet::install(crate::kubelet::Kubelet::docker_config(&node_a.plugin.socket, scratch.path()));
    let options: Vec<(&str, &str)> =
        flex.as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
    let dir = kubelet_a.pod_dir("pod-on-a", &volume);
    let message = tokio::task::block_in_place(|| {
        kubelet_a.mount(&dir, &crate::kubelet::mount_options(&volume, "pod-on-a", &options))
    })
    .expect_failure();
    assert!(message.contains(&format!("volume \"{volume}\" does not exist on node")), "{message}");
    assert!(message.contains("provisioned by dev.hpe.com/mock"), "{message}");
    assert!(node_a.plugin.backend.options(&volume).is_none(), "node-a's plugin made nothing");
    assert!(node_a.plugin.backend.options("dory.io/provisioned-by").is_none());

    // Reclaim happens on node-b only.
    cluster.delete_claim("data");
    let reclaimed = wait_until(Duration::from_secs(15), || {
        cluster.pv_of(&claim).is_none() && node_b.plugin.backend.options(&volume).is_none()
    })
    .await;
    assert!(reclaimed, "node-b removed its volume and the PV; logs:\n{}\n{}", cluster.log(0), cluster.log(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_doryd_refuses_a_local_plugin_and_says_what_to_deploy() {
    let mut cluster = Cluster::start().await;
    let node = LocalNode::start(&cluster, "node-a").await;
    cluster.doryd(&["--leader-election=false", "--config", node.config.to_str().unwrap()]);
    cluster.class("local", json!({}));
    let claim = cluster.claim("data", "local", "1Gi", json!({}));
    let refused = wait_until(Duration::from_secs(10), || !cluster.events("ProvisioningFailed").is_empty()).await;
    assert!(refused, "log:\n{}", cluster.log(0));
    let note = cluster.events("ProvisioningFailed")[0]["note"].as_str().unwrap().to_owned();
    assert!(note.contains("local scope") && note.contains("--node-name"), "{note}");
    assert!(cluster.pv_of(&claim).is_none());
    assert!(node.plugin.backend.list_names().is_empty(), "no volume made");

    // A per-node doryd with an Immediate class refuses the same way.
    let mut per_node = Cluster::start().await;
    let node = LocalNode::start(&per_node, "node-a").await;
    per_node.doryd(&node.doryd_args("node-a"));
    per_node.class("local", json!({}));
    per_node.claim("data", "local", "1Gi", json!({}));
    let refused = wait_until(Duration::from_secs(10), || !per_node.events("ProvisioningFailed").is_empty()).await;
    assert!(refused, "log:\n{}", per_node.log(0));
    let note = per_node.events("ProvisioningFailed")[0]["note"].as_str().unwrap().to_owned();
    assert!(note.contains("WaitForFirstConsumer"), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_keeps_the_pv_while_the_plugin_fails_and_finishes_when_it_recovers() {
    let mut cluster = Cluster::start_with(dory_backend_docker::ServerOptions {
        default_dialect: dory_backend_docker::Dialect::Status500,
        ..Default::default()
    })
    .await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({}));
    let claim = cluster.claim("data", "gold", "1Gi", json!({}));
    cluster.wait_bound(&claim).await;
    let volume = format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap());
    cluster.plugin.backend.faults().fail(Operation::Get, "storage array offline");
    cluster.plugin.backend.faults().fail(Operation::Remove, "storage array offline");
    cluster.delete_claim("data");
    let reported = wait_until(Duration::from_secs(10), || !cluster.events("VolumeFailedDelete").is_empty()).await;
    assert!(reported, "failed deletes are events; log:\n{}", cluster.log(0));
    tokio::time::sleep(Duration::from_millis(500)).await; // several retries
    let note = cluster.events("VolumeFailedDelete")[0]["note"].as_str().unwrap().to_owned();
    assert!(note.contains("storage array offline"), "{note}");
    assert!(cluster.pv_of(&claim).is_some(), "the PV is kept while its volume may exist");
    assert!(cluster.plugin.backend.options(&volume).is_some(), "and so is the volume");

    cluster.plugin.backend.faults().clear_all();
    let removed = wait_until(Duration::from_secs(10), || {
        cluster.pv_of(&claim).is_none() && cluster.plugin.backend.options(&volume).is_none()
    })
    .await;
    assert!(removed, "log:\n{}", cluster.log(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doryd_killed_between_create_and_pv_leaks_nothing_and_never_removes_what_it_did_not_make() {
    let mut cluster = Cluster::start().await;
    cluster.plugin.backend.faults().delay(Operation::Create, Duration::from_millis(1500));
    let first = cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({}));
    let claim = cluster.claim("brief", "gold", "1Gi", json!({}));
    let volume = format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap());
    let recorded = wait_until(Duration::from_secs(10), || {
        claim_of(&cluster, "brief")
            .is_some_and(|c| c["metadata"]["annotations"]["dory.io/provisioning-volume"] == json!(volume))
    })
    .await;
    assert!(recorded, "provisioning is recorded on the claim first; log:\n{}", cluster.log(first));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.doryds[first].kill().unwrap();
    cluster.doryds[first].wait().unwrap();
    cluster.delete_claim("brief");
    // The plugin finishes the Create the dead doryd asked for.
    let made = wait_until(Duration::from_secs(5), || cluster.plugin.backend.options(&volume).is_some()).await;
    assert!(made);
    assert!(claim_of(&cluster, "brief").is_some(), "the claim waits for doryd (finalizer)");
    cluster.plugin.backend.faults().clear_all();
    let second = cluster.doryd(&["--leader-election=false"]);
    let clean = wait_until(Duration::from_secs(10), || {
        cluster.plugin.backend.options(&volume).is_none() && claim_of(&cluster, "brief").is_none()
    })
    .await;
    assert!(clean, "the restarted doryd removed the volume and let the claim go; log:\n{}", cluster.log(second));
    assert!(cluster.pv_of(&claim).is_none());

    // A volume that existed before is never adopted, nor removed.
    cluster.doryds[second].kill().unwrap();
    cluster.doryds[second].wait().unwrap();
    let existing = dory_core::VolumeName::new("default.db").unwrap();
    let marker: dory_core::CreateOptions = [("owner".to_owned(), "someone else".to_owned())].into();
    dory_core::VolumeBackend::create(cluster.plugin.backend.as_ref(), &existing, &marker).await.unwrap();
    cluster.doryd(&["--leader-election=false", "--pv-naming", "original"]);
    cluster.claim("db", "gold", "1Gi", json!({"metadata": {"annotations": {"dev.hpe.com/docker-volume-name": "db"}}}));
    let refused = wait_until(Duration::from_secs(10), || {
        cluster
            .events("ProvisioningFailed")
            .iter()
            .any(|e| e["note"].as_str().is_some_and(|n| n.contains("never adopts")))
    })
    .await;
    assert!(refused, "logs:\n{}", cluster.log(2));
    cluster.delete_claim("db");
    let gone = wait_until(Duration::from_secs(5), || claim_of(&cluster, "db").is_none()).await;
    assert!(gone, "an unrecorded claim is not held");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cluster.plugin.backend.options("default.db"), Some(marker), "the existing volume is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_refused_what_cannot_be_honoured_and_cloned_from_their_source_volume() {
    let mut cluster = Cluster::start().await;
    cluster.doryd(&["--leader-election=false"]);
    cluster.class("gold", json!({}));
    let source = cluster.claim("golden", "gold", "1Gi", json!({}));
    let source_pv = cluster.wait_bound(&source).await;
    let source_volume = source_pv["spec"]["flexVolume"]["options"]["name"].as_str().unwrap().to_owned();

    let clone = cluster.claim(
        "copy",
        "gold",
        "1Gi",
        json!({"spec": {"dataSource": {"kind": "PersistentVolumeClaim", "name": "golden"}}}),
    );
    cluster.wait_bound(&clone).await;
    let clone_volume = format!("pvc-{}", clone["metadata"]["uid"].as_str().unwrap());
    let options = cluster.plugin.backend.options(&clone_volume).unwrap();
    assert_eq!(options.get("cloneOf"), Some(&source_volume), "the plugin gets the source's backend volume");

    let selector =
        cluster.claim("picky", "gold", "1Gi", json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}));
    let snapshot = cluster.claim(
        "from-snap",
        "gold",
        "1Gi",
        json!({"spec": {"dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap-1"}}}),
    );
    // A source claim bound to a PV some other provisioner made.
    cluster
        .api
        .create(json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "foreign-pv", "annotations": {"pv.kubernetes.io/provisioned-by": "other.io/nfs"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "nfs": {"server": "x", "path": "/"}}}))
        .unwrap();
    cluster.claim("foreign", "", "1Gi", json!({"spec": {"volumeName": "foreign-pv", "storageClassName": ""}}));
    let foreign = cluster.claim(
        "from-foreign",
        "gold",
        "1Gi",
        json!({"spec": {"dataSource": {"kind": "PersistentVolumeClaim", "name": "foreign"}}}),
    );
    let said = |text: &str| {
        cluster.events("ProvisioningFailed").iter().any(|e| e["note"].as_str().is_some_and(|n| n.contains(text)))
    };
    let all_refused = wait_until(Duration::from_secs(10), || {
        said("spec.selector")
            && said("snapshot.storage.k8s.io/VolumeSnapshot \"snap-1\"")
            && said("provisioned by other.io/nfs")
    })
    .await;
    assert!(all_refused, "events: {:?}\nlog:\n{}", cluster.events("ProvisioningFailed"), cluster.log(0));
    for refused in [&selector, &snapshot, &foreign] {
        assert!(cluster.pv_of(refused).is_none(), "no PV for {}", refused["metadata"]["name"]);
    }
    assert_eq!(cluster.plugin.backend.list_names().len(), 2, "only the source and its clone exist");
}

fn select_node(cluster: &Cluster, claim: &str, node: &str) {
    cluster
        .api
        .update_with("v1", "persistentvolumeclaims", "default", claim, |c| {
            c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!(node);
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_rescheduled_mid_provision_ends_on_the_new_node_only() {
    let mut cluster = Cluster::start().await;
    let node_a = LocalNode::start(&cluster, "node-a").await;
    let node_b = LocalNode::start(&cluster, "node-b").await;
    node_a.plugin.backend.faults().delay(Operation::Create, Duration::from_millis(800));
    cluster.doryd(&node_a.doryd_args("node-a"));
    cluster.doryd(&node_b.doryd_args("node-b"));
    cluster.class("local", json!({"volumeBindingMode": "WaitForFirstConsumer"}));
    let claim = cluster.claim("moved", "local", "1Gi", json!({}));
    let volume = format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap());
    select_node(&cluster, "moved", "node-a");
    let recorded = wait_until(Duration::from_secs(5), || {
        claim_of(&cluster, "moved")
            .is_some_and(|c| c["metadata"]["annotations"]["dory.io/provisioning-node"] == "node-a")
    })
    .await;
    assert!(recorded, "log:\n{}", cluster.log(0));
    // The scheduler gives up on node-a while its Create is still running.
    select_node(&cluster, "moved", "node-b");
    let pv = cluster.wait_bound(&claim).await;
    let pin = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"];
    assert_eq!(pin, &json!(["node-b-host"]));
    assert!(node_b.plugin.backend.options(&volume).is_some());
    let undone = wait_until(Duration::from_secs(5), || node_a.plugin.backend.options(&volume).is_none()).await;
    assert!(undone, "node-a removed the volume it made; log:\n{}", cluster.log(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_pv_of_a_local_plugin_is_reclaimed_only_where_its_volume_is() {
    let mut cluster = Cluster::start().await;
    let node_a = LocalNode::start(&cluster, "node-a").await;
    let node_b = LocalNode::start(&cluster, "node-b").await;
    // A PV from before doryd pinned PVs, whose volume lives on node-b.
    let volume = dory_core::VolumeName::new("legacy-vol").unwrap();
    dory_core::VolumeBackend::create(node_b.plugin.backend.as_ref(), &volume, &Default::default()).await.unwrap();
    cluster
        .api
        .create(json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "legacy", "finalizers": ["dory.io/provisioner"],
                         "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete",
                     "claimRef": {"namespace": "default", "name": "gone", "uid": "no-such-claim"},
                     "flexVolume": {"driver": PROVISIONER, "options": {"name": "legacy-vol"}}},
            "status": {"phase": "Released"}}))
        .unwrap();
    // A central doryd cannot know where it lives: it keeps it and says so.
    let central = cluster.doryd(&["--leader-election=false", "--config", node_a.config.to_str().unwrap()]);
    let kept = wait_until(Duration::from_secs(10), || !cluster.events("VolumeFailedDelete").is_empty()).await;
    assert!(kept, "log:\n{}", cluster.log(central));
    let note = cluster.events("VolumeFailedDelete")[0]["note"].as_str().unwrap().to_owned();
    assert!(note.contains("local scope") && note.contains("per node"), "{note}");
    assert!(cluster.api.get("v1", "persistentvolumes", "", "legacy").is_some());
    cluster.doryds[central].kill().unwrap();
    cluster.doryds[central].wait().unwrap();

    // Per node: node-a's plugin says "no such volume", which is not a
    // reason to delete the PV; node-b has it and reclaims it.
    cluster.doryd(&node_a.doryd_args("node-a"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cluster.api.get("v1", "persistentvolumes", "", "legacy").is_some(), "node-a left it alone");
    cluster.doryd(&node_b.doryd_args("node-b"));
    let reclaimed = wait_until(Duration::from_secs(10), || {
        cluster.api.get("v1", "persistentvolumes", "", "legacy").is_none()
            && node_b.plugin.backend.list_names().is_empty()
    })
    .await;
    assert!(reclaimed, "log:\n{}", cluster.log(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_clone_is_refused_on_another_node_than_its_source() {
    let mut cluster = Cluster::start().await;
    let node_a = LocalNode::start(&cluster, "node-a").await;
    let node_b = LocalNode::start(&cluster, "node-b").await;
    cluster.doryd(&node_a.doryd_args("node-a"));
    cluster.doryd(&node_b.doryd_args("node-b"));
    cluster.class("local", json!({"volumeBindingMode": "WaitForFirstConsumer"}));
    let source = cluster.claim("golden", "local", "1Gi", json!({}));
    select_node(&cluster, "golden", "node-a");
    cluster.wait_bound(&source).await;
    let copy = cluster.claim(
        "copy",
        "local",
        "1Gi",
        json!({"spec": {"dataSource": {"kind": "PersistentVolumeClaim", "name": "golden"}}}),
    );
    select_node(&cluster, "copy", "node-b");
    let refused = wait_until(Duration::from_secs(10), || {
        cluster
            .events("ProvisioningFailed")
            .iter()
            .any(|e| e["note"].as_str().is_some_and(|n| n.contains("lives on node node-a-host")))
    })
    .await;
    assert!(refused, "events {:?}", cluster.events("ProvisioningFailed"));
    assert!(cluster.pv_of(&copy).is_none());
    assert_eq!(node_b.plugin.backend.list_names(), Vec::<String>::new(), "no empty 'clone' on node-b");
}
