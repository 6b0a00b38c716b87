//! Our plugin server receiving what real daemons send: no Content-Type,
//! empty bodies, `"Opts": null`, a missing `ID`, odd key case, bad JSON.

use dory_core::Operation;
use serde_json::Value;

use crate::support::{MockPlugin, raw_exchange};

fn post(path: &str, body: &str) -> String {
    // Exactly dockerd 20.10's headers: no Content-Type.
    format!(
        "POST {path} HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\n\
         Accept: application/vnd.docker.plugins.v1.2+json\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("reply is JSON ({e}): {body:?}"))
}

#[tokio::test]
async fn activate_needs_no_body_and_no_content_type() {
    let plugin = MockPlugin::start().await;
    let (status, body) = raw_exchange(&plugin.socket, &post("/Plugin.Activate", "")).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["Implements"], serde_json::json!(["VolumeDriver"]));
}

#[tokio::test]
async fn anonymous_volume_sequence_with_null_opts_and_missing_id() {
    let plugin = MockPlugin::start().await;
    let name = "a".repeat(64);
    let create = format!("{{\"Name\":\"{name}\",\"Opts\":null}}\n");
    let (status, body) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Create", &create)).await;
    assert_eq!((status, json(&body)["Err"].as_str()), (200, Some("")));
    assert_eq!(plugin.backend.options(&name), Some(Default::default()));

    // A daemon before 1.12 sends no ID.
    let mount = format!("{{\"Name\":\"{name}\"}}\n");
    let (status, body) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Mount", &mount)).await;
    assert_eq!(status, 200);
    let mountpoint = json(&body)["Mountpoint"].as_str().unwrap().to_owned();
    assert_eq!(mountpoint, plugin.backend.root().join(&name).display().to_string());
    assert_eq!(plugin.server.mount_counts(&name).await.get(""), Some(&1));

    let (status, _) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Unmount", &mount)).await;
    assert_eq!(status, 200);
    assert_eq!(plugin.backend.mount_count(&name), 0);
}

#[tokio::test]
async fn lower_case_keys_and_non_string_options_are_accepted() {
    let plugin = MockPlugin::start().await;
    let (status, body) =
        raw_exchange(&plugin.socket, &post("/VolumeDriver.Create", r#"{"name":"v","opts":{"size":10,"ro":true}}"#))
            .await;
    assert_eq!(status, 200, "{body}");
    let options = plugin.backend.options("v").unwrap();
    assert_eq!((options["size"].as_str(), options["ro"].as_str()), ("10", "true"));
}

#[tokio::test]
async fn get_reply_has_rfc3339_created_at_or_none() {
    let plugin = MockPlugin::start().await;
    raw_exchange(&plugin.socket, &post("/VolumeDriver.Create", r#"{"Name":"v","Opts":{}}"#)).await;
    let (status, body) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Get", r#"{"Name":"v"}"#)).await;
    assert_eq!(status, 200);
    let reply = json(&body);
    let created = reply["Volume"]["CreatedAt"].as_str().unwrap();
    assert!(created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T', "{created}");
    assert_eq!(reply["Err"], "");
}

#[tokio::test]
async fn unknown_endpoints_are_404() {
    let plugin = MockPlugin::start().await;
    let (status, _) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Snapshot", "{}")).await;
    assert_eq!(status, 404);
    let (status, _) = raw_exchange(&plugin.socket, &post("/", "")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_requests_get_a_clear_err() {
    let plugin = MockPlugin::start().await;
    let (status, body) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Create", "not json")).await;
    assert_eq!(status, 400);
    assert!(
        json(&body)["Err"].as_str().unwrap().starts_with("VolumeDriver.Create: request body is not JSON"),
        "{body}"
    );

    let (status, body) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Create", r#"{"Opts":{}}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["Err"], "invalid volume name \"\": it is empty");

    let (_, body) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Create", r#"{"Name":"../etc"}"#)).await;
    assert_eq!(json(&body)["Err"], "invalid volume name \"../etc\": it contains '/'");

    let (_, body) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Create", r#"{"Name":"v","Opts":[1]}"#)).await;
    assert!(json(&body)["Err"].as_str().unwrap().contains("\"Opts\" must be an object"), "{body}");
}

#[tokio::test]
async fn backend_failures_name_operation_volume_and_cause() {
    let plugin = MockPlugin::start().await;
    plugin.backend.faults().fail(Operation::Remove, "array is read-only");
    let (_, body) = raw_exchange(&plugin.socket, &post("/VolumeDriver.Remove", r#"{"Name":"v9"}"#)).await;
    assert_eq!(json(&body)["Err"], "remove of volume \"v9\" failed: array is read-only");
}

#[tokio::test]
async fn a_socket_in_use_is_not_stolen_but_a_stale_one_is_replaced() {
    let mut plugin = MockPlugin::start().await;
    let err = dory_backend_docker::bind_socket(&plugin.socket).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    plugin.stop().await;
    let listener = dory_backend_docker::bind_socket(&plugin.socket).await;
    assert!(listener.is_ok(), "a stale socket file is replaced");
}
