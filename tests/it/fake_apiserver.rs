//! The fake API server itself: the protocol rules doryd and kube-rs rely
//! on, exercised over HTTP as a client sees them.

use std::process::Command;

use dory_tests::fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

/// One request with curl: (HTTP status, JSON body).
fn call(method: &str, url: &str, content_type: &str, body: Option<&Value>) -> (u16, Value) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-X", method, "-H", &format!("Content-Type: {content_type}"), "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        command.args(["--data", &body.to_string()]);
    }
    let output = command.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn pv(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
           "spec": {"capacity": {"storage": "1Gi"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_conflicts_and_optimistic_concurrency() {
    let api = FakeApiServer::start().await;
    let url = format!("{}/api/v1/persistentvolumes", api.url());
    let json = "application/json";
    let (status, created) = tokio::task::block_in_place(|| call("POST", &url, json, Some(&pv("a"))));
    assert_eq!(status, 201);
    assert!(created["metadata"]["uid"].is_string() && created["metadata"]["resourceVersion"].is_string());
    let (status, err) = tokio::task::block_in_place(|| call("POST", &url, json, Some(&pv("a"))));
    assert_eq!((status, err["reason"].as_str()), (409, Some("AlreadyExists")));

    let mut stale = created.clone();
    stale["spec"]["capacity"]["storage"] = json!("2Gi");
    let (status, _) = tokio::task::block_in_place(|| call("PUT", &format!("{url}/a"), json, Some(&stale)));
    assert_eq!(status, 200);
    let (status, err) = tokio::task::block_in_place(|| call("PUT", &format!("{url}/a"), json, Some(&stale)));
    assert_eq!((status, err["reason"].as_str()), (409, Some("Conflict")), "the resourceVersion is stale now");
    let (status, err) = tokio::task::block_in_place(|| call("GET", &format!("{url}/nope"), json, None));
    assert_eq!((status, err["reason"].as_str()), (404, Some("NotFound")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_types_and_status_subresource() {
    let api = FakeApiServer::start().await;
    api.create(pv("p")).unwrap();
    let url = format!("{}/api/v1/persistentvolumes/p", api.url());
    let merge = json!({"metadata": {"labels": {"a": "1"}}, "status": {"phase": "Bound"}});
    let (status, patched) =
        tokio::task::block_in_place(|| call("PATCH", &url, "application/merge-patch+json", Some(&merge)));
    assert_eq!(status, 200);
    assert_eq!(patched["metadata"]["labels"]["a"], "1");
    assert!(patched.get("status").is_none(), "main-resource writes leave status alone");
    let (_, patched) = tokio::task::block_in_place(|| {
        call("PATCH", &format!("{url}/status"), "application/merge-patch+json", Some(&merge))
    });
    assert_eq!(patched["status"]["phase"], "Bound");
    assert!(patched["metadata"].get("labels").is_some());

    let ops = json!([{"op": "test", "path": "/metadata/labels/a", "value": "1"},
                     {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}]);
    let (status, patched) =
        tokio::task::block_in_place(|| call("PATCH", &url, "application/json-patch+json", Some(&ops)));
    assert_eq!(status, 200);
    assert_eq!(patched["metadata"]["finalizers"], json!(["x/y"]));
    let failing = json!([{"op": "test", "path": "/metadata/labels/a", "value": "2"}]);
    let (status, _) =
        tokio::task::block_in_place(|| call("PATCH", &url, "application/json-patch+json", Some(&failing)));
    assert_eq!(status, 422);

    // Delete with a finalizer only marks; removing the finalizer completes it.
    let (status, marked) = tokio::task::block_in_place(|| call("DELETE", &url, "application/json", None));
    assert_eq!(status, 200);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(api.get("v1", "persistentvolumes", "", "p").is_some());
    let clear = json!({"metadata": {"finalizers": null}});
    tokio::task::block_in_place(|| call("PATCH", &url, "application/strategic-merge-patch+json", Some(&clear)));
    assert!(api.get("v1", "persistentvolumes", "", "p").is_none(), "gone with its last finalizer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_detects_field_conflicts() {
    let api = FakeApiServer::start().await;
    let url = format!("{}/apis/coordination.k8s.io/v1/namespaces/default/leases/l", api.url());
    let apply = "application/apply-patch+yaml";
    let lease = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": holder}});
    let (status, _) =
        tokio::task::block_in_place(|| call("PATCH", &format!("{url}?fieldManager=a"), apply, Some(&lease("a"))));
    assert_eq!(status, 201, "apply creates");
    let (status, err) =
        tokio::task::block_in_place(|| call("PATCH", &format!("{url}?fieldManager=b"), apply, Some(&lease("b"))));
    assert_eq!((status, err["reason"].as_str()), (409, Some("Conflict")), "a owns holderIdentity");
    let (status, _) = tokio::task::block_in_place(|| {
        call("PATCH", &format!("{url}?fieldManager=b&force=true"), apply, Some(&lease("b")))
    });
    assert_eq!(status, 200, "force takes ownership");
    let (status, _) =
        tokio::task::block_in_place(|| call("PATCH", &format!("{url}?fieldManager=a"), apply, Some(&lease("a"))));
    assert_eq!(status, 409, "now b owns it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_events_and_compaction_answers_410() {
    let api = FakeApiServer::start().await;
    api.create(pv("w1")).unwrap();
    let list_url = format!("{}/api/v1/persistentvolumes", api.url());
    let (_, list) = tokio::task::block_in_place(|| call("GET", &list_url, "application/json", None));
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    api.create(pv("w2")).unwrap();
    let watch = |rv: &str| {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "2", &format!("{list_url}?watch=true&resourceVersion={rv}&timeoutSeconds=1")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let events = tokio::task::block_in_place(|| watch(&rv));
    let first: Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!((first["type"].as_str(), first["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("w2")));
    api.compact();
    let events = tokio::task::block_in_place(|| watch(&rv));
    let error: Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_interposed_writes_and_duplicate_creates() {
    let api = FakeApiServer::start().await;
    let url = format!("{}/api/v1/persistentvolumes", api.url());
    let json = "application/json";
    api.fail_requests("list", "persistentvolumes", 403, "Forbidden", "persistentvolumes is forbidden");
    let (status, err) = tokio::task::block_in_place(|| call("GET", &url, json, None));
    assert_eq!((status, err["reason"].as_str()), (403, Some("Forbidden")));
    api.clear_faults();
    let (status, _) = tokio::task::block_in_place(|| call("GET", &url, json, None));
    assert_eq!(status, 200);

    // Another client's write lands first: the stale update is a real conflict.
    let created = api.create(pv("c")).unwrap();
    api.before_next("update", "persistentvolumes", |pv| pv["metadata"]["labels"] = json!({"by": "other"}));
    let (status, err) = tokio::task::block_in_place(|| call("PUT", &format!("{url}/c"), json, Some(&created)));
    assert_eq!((status, err["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(api.get("v1", "persistentvolumes", "", "c").unwrap()["metadata"]["labels"]["by"], "other");

    api.duplicate_next_create("persistentvolumes");
    let (status, err) = tokio::task::block_in_place(|| call("POST", &url, json, Some(&pv("d"))));
    assert_eq!((status, err["reason"].as_str()), (409, Some("AlreadyExists")));
    assert!(api.get("v1", "persistentvolumes", "", "d").is_some(), "the other client's create");
    assert_eq!(api.request_count("create", "persistentvolumes"), 1);
    assert_eq!(api.total_requests(), 4);
}
