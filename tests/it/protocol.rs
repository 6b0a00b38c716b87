//! The plugin client against our server and against hand-scripted servers,
//! over real sockets: every endpoint and every failure kind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dory_backend_docker::{
    CallPolicy, Dialect, DockerBackend, DockerBackendSettings, PluginClient, PluginError, RetryPolicy, ServerOptions,
};
use dory_core::{CreateOptions, Operation, Scope, VolumeBackend, error_chain};

use crate::support::{MockPlugin, RawReply, RawServer, fast_policy, http, id, vol};

fn opts(pairs: &[(&str, &str)]) -> CreateOptions {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn every_endpoint_round_trips_through_our_server() {
    let plugin = MockPlugin::start().await;
    let client = plugin.client();

    assert_eq!(client.activate().await.unwrap(), vec!["VolumeDriver".to_string()]);
    assert_eq!(client.capabilities().await.unwrap(), Scope::Global, "the mock's default scope");

    client.create(&vol("v1"), &opts(&[("size", "10"), ("fs", "ext4")])).await.unwrap();
    assert_eq!(plugin.backend.options("v1"), Some(opts(&[("size", "10"), ("fs", "ext4")])));
    client.create(&vol("v2"), &CreateOptions::new()).await.unwrap();

    let info = client.get(&vol("v1")).await.unwrap().expect("v1 exists");
    assert_eq!(info.name, "v1");
    assert_eq!(info.mountpoint, Some(plugin.backend.root().join("v1")));
    assert!(info.created_at.is_some_and(|t| t.ends_with('Z')));
    assert_eq!(info.status["options"]["size"], "10");

    let names: Vec<String> = client.list().await.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["v1", "v2"]);

    // Nothing mounted yet: Path has no mountpoint.
    assert_eq!(client.path(&vol("v1")).await.unwrap(), None);

    let mountpoint = client.mount(&vol("v1"), &id("pod-a")).await.unwrap();
    assert_eq!(mountpoint, plugin.backend.root().join("v1"));
    assert!(mountpoint.is_dir(), "the mountpoint is a real directory");
    assert_eq!(client.path(&vol("v1")).await.unwrap(), Some(mountpoint.clone()));

    client.unmount(&vol("v1"), &id("pod-a")).await.unwrap();
    client.remove(&vol("v1")).await.unwrap();
    assert!(!mountpoint.exists(), "remove deletes the volume's directory");

    let err = client.get(&vol("v1")).await.unwrap_err();
    assert!(matches!(err, PluginError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("volume \"v1\" does not exist"), "{err}");
}

#[tokio::test]
async fn mounts_are_counted_per_volume_and_id_with_multiplicity() {
    let plugin = MockPlugin::start().await;
    let client = plugin.client();
    client.create(&vol("shared"), &CreateOptions::new()).await.unwrap();

    // dockerd: c1 start, c2 start, docker cp on c1 (same ID again).
    for mount_id in ["c1", "c2", "c1"] {
        client.mount(&vol("shared"), &id(mount_id)).await.unwrap();
    }
    let counts = plugin.server.mount_counts("shared").await;
    assert_eq!(counts, BTreeMap::from([("c1".to_string(), 2), ("c2".to_string(), 1)]));
    assert_eq!(plugin.backend.mount_count("shared"), 1, "the backend mounts once for all users");

    let err = client.remove(&vol("shared")).await.unwrap_err();
    assert!(err.to_string().contains("in use by 3 mount(s)"), "{err}");

    client.unmount(&vol("shared"), &id("c1")).await.unwrap();
    client.unmount(&vol("shared"), &id("c1")).await.unwrap();
    assert_eq!(plugin.backend.mount_count("shared"), 1, "c2 still holds it");
    // Unknown and repeated IDs are idempotent successes.
    client.unmount(&vol("shared"), &id("c1")).await.unwrap();
    client.unmount(&vol("shared"), &id("never-mounted")).await.unwrap();
    client.unmount(&vol("shared"), &id("c2")).await.unwrap();
    assert_eq!(plugin.backend.mount_count("shared"), 0, "the last unmount reaches the backend");
    assert!(plugin.server.mount_counts("shared").await.is_empty());
    client.remove(&vol("shared")).await.unwrap();
}

#[tokio::test]
async fn a_failed_backend_unmount_keeps_the_count_so_a_retry_works() {
    let plugin = MockPlugin::start().await;
    let client = plugin.client();
    client.create(&vol("v"), &CreateOptions::new()).await.unwrap();
    client.mount(&vol("v"), &id("p")).await.unwrap();
    plugin.backend.faults().fail_times(Operation::Unmount, "device busy", 1);
    let err = client.unmount(&vol("v"), &id("p")).await.unwrap_err();
    assert!(err.to_string().contains("device busy"), "{err}");
    assert_eq!(plugin.server.mount_counts("v").await.get("p"), Some(&1));
    client.unmount(&vol("v"), &id("p")).await.unwrap();
    assert_eq!(plugin.backend.mount_count("v"), 0);
}

#[tokio::test]
async fn errors_in_each_dialect_carry_the_plugins_words() {
    for (dialect, status) in
        [(Dialect::Status200, None), (Dialect::Status400, Some(400)), (Dialect::Status500, Some(500))]
    {
        let plugin = MockPlugin::with_options(ServerOptions { default_dialect: dialect, ..Default::default() }).await;
        plugin.backend.faults().fail(Operation::Create, "quota exceeded on pool gold");
        let err = plugin.client().create(&vol("v"), &CreateOptions::new()).await.unwrap_err();
        assert_eq!(err.status(), status, "{dialect:?}: {err}");
        let text = err.to_string();
        assert!(text.contains("quota exceeded on pool gold"), "{dialect:?}: {text}");
        assert!(text.contains("VolumeDriver.Create"), "{dialect:?}: {text}");
        assert!(text.contains(&plugin.socket.display().to_string()), "names the plugin: {text}");
        assert!(err.is_plugin_answer());
    }
}

#[tokio::test]
async fn per_endpoint_dialects_apply_only_to_their_endpoint() {
    let options = ServerOptions { dialects: [(Operation::Mount, Dialect::Status500)].into(), ..Default::default() };
    let plugin = MockPlugin::with_options(options).await;
    let client = plugin.client();
    let get = client.get(&vol("nope")).await.unwrap_err();
    assert_eq!(get.status(), None, "Get keeps 200+Err: {get}");
    let mount = client.mount(&vol("nope"), &id("x")).await.unwrap_err();
    assert_eq!(mount.status(), Some(500), "{mount}");
}

#[tokio::test]
async fn garbage_replies_are_malformed_not_success() {
    let options = ServerOptions { dialects: [(Operation::Create, Dialect::Garbage)].into(), ..Default::default() };
    let plugin = MockPlugin::with_options(options).await;
    let err = plugin.client().create(&vol("v"), &CreateOptions::new()).await.unwrap_err();
    assert!(matches!(err, PluginError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("this is not JSON"), "quotes the reply: {err}");
}

#[tokio::test]
async fn a_get_whose_volume_is_not_an_object_is_malformed_not_absent() {
    // dockerd cannot decode such a reply and fails the Get; reading it as
    // "no such volume" would let a caller create the volume anew.
    for volume in [r#""vol1""#, "42", "[]", "true"] {
        let body = format!(r#"{{"Volume": {volume}, "Err": ""}}"#);
        let server = RawServer::unix(move |_, _| http("200 OK", "application/json", &body)).await;
        let client = PluginClient::new(server.address.clone(), fast_policy());
        let err = client.get(&vol("vol1")).await.unwrap_err();
        assert!(matches!(err, PluginError::Malformed { .. }), "{volume}: {err}");
        assert!(err.to_string().contains("Volume"), "{volume}: {err}");
    }
    // A null or missing Volume is dockerd's "no such volume".
    for body in [r#"{"Volume": null, "Err": ""}"#, r#"{"Err": ""}"#] {
        let server = RawServer::unix(move |_, _| http("200 OK", "application/json", body)).await;
        let client = PluginClient::new(server.address.clone(), fast_policy());
        assert_eq!(client.get(&vol("vol1")).await.unwrap(), None, "{body}");
    }
}

#[tokio::test]
async fn a_hung_plugin_times_out_within_the_configured_bound() {
    let plugin = MockPlugin::start().await;
    plugin.client().create(&vol("v"), &CreateOptions::new()).await.unwrap();
    plugin.backend.faults().delay(Operation::Mount, Duration::from_secs(30));
    plugin.backend.faults().delay(Operation::Get, Duration::from_secs(30));
    let policy = CallPolicy {
        long_timeout: Duration::from_millis(300),
        short_timeout: Duration::from_millis(150),
        ..fast_policy()
    };
    let client = PluginClient::new(plugin.address(), policy);

    let started = Instant::now();
    let err = client.mount(&vol("v"), &id("p")).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2), "long limit: {elapsed:?}");
    assert!(err.to_string().contains("VolumeDriver.Mount within 300ms"), "{err}");

    let started = Instant::now();
    let err = client.get(&vol("v")).await.unwrap_err();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "short limit applies to Get: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_raw_server_that_never_answers_times_out() {
    let server = RawServer::unix(|_, _| RawReply::Hang).await;
    let policy = CallPolicy { short_timeout: Duration::from_millis(200), ..fast_policy() };
    let client = PluginClient::new(server.address.clone(), policy);
    let started = Instant::now();
    let err = client.list().await.unwrap_err();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.requests().len(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn a_missing_socket_is_retried_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gone.sock");
    let client = PluginClient::new(dory_backend_docker::PluginAddress::Unix(socket.clone()), fast_policy());
    let started = Instant::now();
    let err = client.get(&vol("v")).await.unwrap_err();
    let elapsed = started.elapsed();
    let PluginError::Transport { attempts, .. } = &err else { panic!("expected a transport error: {err}") };
    // 20, 40, 80, 100 ms delays fit the 400 ms budget; the next one does not.
    assert!(*attempts >= 4, "retried: {err}");
    assert!(elapsed < Duration::from_secs(2), "bounded by the retry budget: {elapsed:?}");
    let text = error_chain(&err);
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(text.contains("VolumeDriver.Get"), "{text}");
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let mut plugin = MockPlugin::start().await;
    plugin.stop().await;
    assert!(plugin.socket.exists(), "a stale socket file stays behind");
    let policy = CallPolicy { retry: RetryPolicy::none(), ..fast_policy() };
    let err = PluginClient::new(plugin.address(), policy).list().await.unwrap_err();
    let PluginError::Transport { attempts: 1, .. } = &err else { panic!("{err}") };
    assert!(error_chain(&err).to_lowercase().contains("connection refused"), "{}", error_chain(&err));
}

#[tokio::test]
async fn a_plugin_that_comes_up_during_the_backoff_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("late.sock");
    let policy = CallPolicy {
        retry: RetryPolicy {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            budget: Duration::from_secs(5),
        },
        ..fast_policy()
    };
    let client = PluginClient::new(dory_backend_docker::PluginAddress::Unix(socket.clone()), policy);
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        RawServer::unix_at(listener, dory_backend_docker::PluginAddress::Unix(socket), None, |_, _| {
            http("200 OK", "application/json", r#"{"Volumes":[{"Name":"late"}],"Err":""}"#)
        })
    });
    let volumes = client.list().await.unwrap();
    assert_eq!(volumes[0].name, "late");
    let server = late.await.unwrap();
    // Each retry sent a freshly built request (the original re-sent a
    // consumed body: `ContentLength=N with Body length 0`).
    client.create(&vol("retry-me"), &opts(&[("size", "5")])).await.unwrap();
    let create = server.requests().into_iter().find(|r| r.path == "/VolumeDriver.Create").unwrap();
    assert_eq!(create.body, "{\"Name\":\"retry-me\",\"Opts\":{\"size\":\"5\"}}\n");
    assert_eq!(create.header("content-length"), Some("40"));
}

/// The original Dory re-sent a request after any transport error; once the
/// request was written, the plugin may have acted on it (a Mount counted
/// twice): a connection closed after the request is not retried.
#[tokio::test]
async fn a_connection_closed_after_the_request_is_not_retried() {
    let server = RawServer::unix(|_, index| match index {
        0 => RawReply::Close,
        _ => http("200 OK", "application/json", r#"{"Err":""}"#),
    })
    .await;
    let err = server.client().create(&vol("retry-me"), &opts(&[("size", "5")])).await.unwrap_err();
    assert!(matches!(err, PluginError::Broken { .. }), "{err}");
    assert!(err.outcome_unknown());
    assert!(error_chain(&err).contains("may or may not have carried it out"), "{}", error_chain(&err));
    assert_eq!(server.requests().len(), 1, "not sent twice");
}

/// A plugin that trickles bytes forever, or answers only `100 Continue`,
/// fails within the call's limit.
#[tokio::test]
async fn trickling_and_continue_only_plugins_fail_within_the_limit() {
    for reply in [
        RawReply::Trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{".to_vec()),
        RawReply::BytesThenHang(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
    ] {
        let reply = std::sync::Mutex::new(Some(reply));
        let server = RawServer::unix(move |_, _| reply.lock().unwrap().take().unwrap_or(RawReply::Hang)).await;
        let policy = CallPolicy { short_timeout: Duration::from_millis(300), ..fast_policy() };
        let client = PluginClient::new(server.address.clone(), policy);
        let started = Instant::now();
        let err =
            tokio::time::timeout(Duration::from_secs(5), client.get(&vol("v"))).await.expect("bounded").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn requests_are_shaped_like_dockerds() {
    let server = RawServer::unix(|request, _| match request.path.as_str() {
        "/Plugin.Activate" => http("200 OK", "text/html", r#"{"Implements":["VolumeDriver"]}"#),
        "/VolumeDriver.Mount" => http("200 OK", "text/html", r#"{"Mountpoint":"/m","Err":""}"#),
        _ => http("200 OK", "text/html", r#"{"Err":""}"#),
    })
    .await;
    let client = server.client();
    client.activate().await.unwrap();
    client.create(&vol("v"), &CreateOptions::new()).await.unwrap();
    client.mount(&vol("v"), &id("")).await.unwrap();
    client.unmount(&vol("v"), &id("abc")).await.unwrap();
    client.list().await.unwrap();

    let requests = server.requests();
    for request in &requests {
        assert_eq!(request.method, "POST", "{request:?}");
        assert_eq!(request.header("accept"), Some("application/vnd.docker.plugins.v1.2+json"));
        assert_eq!(request.header("host"), Some("plugin.moby.localhost"));
    }
    let bodies: Vec<(&str, &str)> = requests.iter().map(|r| (r.path.as_str(), r.body.as_str())).collect();
    assert_eq!(
        bodies,
        [
            ("/Plugin.Activate", ""),
            ("/VolumeDriver.Create", "{\"Name\":\"v\",\"Opts\":{}}\n"),
            ("/VolumeDriver.Mount", "{\"ID\":\"\",\"Name\":\"v\"}\n"),
            ("/VolumeDriver.Unmount", "{\"ID\":\"abc\",\"Name\":\"v\"}\n"),
            ("/VolumeDriver.List", "{}\n"),
        ]
    );
}

#[tokio::test]
async fn replies_are_read_like_go_reads_them() {
    // HTTP/1.0, text/html, lower-case keys, unknown fields, no trailing newline.
    let server = RawServer::unix(|request, _| {
        let body = match request.path.as_str() {
            "/VolumeDriver.Get" => {
                r#"{"volume":{"name":"v","MOUNTPOINT":"/p","status":{"size":3},"Extra":[1]},"err":"","more":1}"#
            }
            "/VolumeDriver.List" => {
                r#"{"volumes":[{"name":"a"},{"Name":"b","Mountpoint":"/b"},{"Mountpoint":"/nameless"}]}"#
            }
            "/VolumeDriver.Capabilities" => r#"{"capabilities":{"scope":"GLOBAL"}}"#,
            _ => "{}",
        };
        RawReply::Bytes(format!("HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n{body}").into_bytes())
    })
    .await;
    let client = server.client();
    let info = client.get(&vol("v")).await.unwrap().unwrap();
    assert_eq!(info.mountpoint.as_deref(), Some(std::path::Path::new("/p")));
    assert_eq!(info.status["size"], 3);
    let names: Vec<_> = client.list().await.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(client.capabilities().await.unwrap(), Scope::Global);
    // An empty 2xx reply to Mount has no Mountpoint: a failure, not an empty path.
    let err = client.mount(&vol("v"), &id("x")).await.unwrap_err();
    assert!(err.to_string().contains("no Mountpoint"), "{err}");
}

#[tokio::test]
async fn get_with_a_null_volume_is_absent() {
    let server = RawServer::unix(|_, _| http("200 OK", "application/json", r#"{"Volume":null,"Err":""}"#)).await;
    assert_eq!(server.client().get(&vol("v")).await.unwrap(), None);
}

#[tokio::test]
async fn non_2xx_without_json_reports_the_raw_body() {
    let server = RawServer::unix(|_, _| http("503 Service Unavailable", "text/plain", "backend array offline")).await;
    let err = server.client().remove(&vol("v")).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert!(err.to_string().contains("VolumeDriver.Remove: backend array offline (HTTP 503)"), "{err}");
}

#[tokio::test]
async fn a_non_2xx_status_fails_even_without_err() {
    let server = RawServer::unix(|_, _| http("404 Not Found", "application/json", r#"{"Err":""}"#)).await;
    let err = server.client().create(&vol("v"), &CreateOptions::new()).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
}

#[tokio::test]
async fn oversized_replies_are_refused() {
    let server = RawServer::unix(|_, _| {
        let huge = format!(r#"{{"Volumes":[{{"Name":"{}"}}]}}"#, "x".repeat(2 * 1024 * 1024));
        http("200 OK", "application/json", &huge)
    })
    .await;
    let err = server.client().list().await.unwrap_err();
    assert!(matches!(err, PluginError::TooLarge { limit: 1048576, .. }), "{err}");
}

#[tokio::test]
async fn tcp_plugins_work_like_unix_ones() {
    let server = RawServer::tcp(|request, _| match request.path.as_str() {
        "/VolumeDriver.Mount" => http("200 OK", "application/json", r#"{"Mountpoint":"/mnt/v","Err":""}"#),
        _ => http("200 OK", "application/json", r#"{"Err":"nope"}"#),
    })
    .await;
    let client = server.client();
    assert_eq!(client.mount(&vol("v"), &id("p")).await.unwrap(), std::path::PathBuf::from("/mnt/v"));
    let err = client.remove(&vol("v")).await.unwrap_err();
    assert!(err.to_string().contains(&format!("{}: VolumeDriver.Remove: nope", server.address)), "{err}");
    assert!(server.requests()[0].header("host").is_some_and(|h| h.starts_with("127.0.0.1:")));
}

#[tokio::test]
async fn docker_backend_follows_dockerd_on_get_and_capabilities() {
    // A plugin without Capabilities (404) and with Err on Get.
    let server = RawServer::unix(|request, _| match request.path.as_str() {
        "/VolumeDriver.Capabilities" => http("404 Not Found", "text/html", "<h1>Not Found</h1>"),
        "/VolumeDriver.Get" => http("200 OK", "text/html", r#"{"Err":"v: no such volume"}"#),
        _ => http("500 Internal Server Error", "text/html", "<h1>boom</h1>"),
    })
    .await;
    let dory_backend_docker::PluginAddress::Unix(socket) = &server.address else { unreachable!() };
    let mut settings = DockerBackendSettings::new(socket.to_str().unwrap());
    settings.policy = fast_policy();
    let backend = DockerBackend::new(settings);
    assert_eq!(backend.capabilities().await.unwrap().scope, Scope::Local);
    assert_eq!(backend.get(&vol("v")).await.unwrap(), None);
    let err = backend.mount(&vol("v"), &id("pod-1")).await.unwrap_err();
    let text = error_chain(&err);
    assert!(text.starts_with("mount of volume \"v\" failed: plugin unix://"), "{text}");
    assert!(text.ends_with("VolumeDriver.Mount: <h1>boom</h1> (HTTP 500)"), "{text}");
}

#[tokio::test]
async fn a_failing_plugin_is_an_error_not_a_local_scope_nor_an_absent_volume() {
    // go-plugins-helpers answers 500 + Err to everything while its storage
    // starts: neither a scope nor "no such volume" may be read from that.
    let server = RawServer::unix(|request, _| match request.path.as_str() {
        "/VolumeDriver.Get" => {
            http("500 Internal Server Error", "application/json", r#"{"Err":"pool tank does not exist"}"#)
        }
        _ => http("500 Internal Server Error", "application/json", r#"{"Err":"storage starting"}"#),
    })
    .await;
    let dory_backend_docker::PluginAddress::Unix(socket) = &server.address else { unreachable!() };
    let mut settings = DockerBackendSettings::new(socket.to_str().unwrap());
    settings.policy = fast_policy();
    let backend = DockerBackend::new(settings);
    let err = backend.capabilities().await.unwrap_err();
    assert_eq!(err.kind(), dory_core::ErrorKind::Refused, "{}", error_chain(&err));
    let err = backend.get(&vol("pvc-1")).await.unwrap_err();
    assert_eq!(err.kind(), dory_core::ErrorKind::Refused, "{}", error_chain(&err));
    let err = backend.remove(&vol("pvc-1")).await.unwrap_err();
    assert!(!err.is_not_found(), "{}", error_chain(&err));
}

#[tokio::test]
async fn docker_backend_reports_an_unreachable_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dead.sock");
    let mut settings = DockerBackendSettings::new(socket.to_str().unwrap());
    settings.policy = CallPolicy { retry: RetryPolicy::none(), ..fast_policy() };
    let backend = DockerBackend::new(settings);
    let err = backend.capabilities().await.unwrap_err();
    assert!(error_chain(&err).contains("cannot reach plugin unix://"), "{}", error_chain(&err));
    let err = backend.get(&vol("v")).await.unwrap_err();
    assert!(error_chain(&err).starts_with("get of volume \"v\" failed"), "{}", error_chain(&err));
}
