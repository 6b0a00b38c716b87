//! `dory-csi`, the real binary, over its unix socket with a tonic client,
//! with real bind mounts, in front of the real `dory-mock-plugin` process:
//! every RPC, the spec's error codes, idempotency, restarts, the kubelet
//! call sequence, ephemeral volumes, a local plugin's topology, concurrency.

use std::collections::HashMap;
use std::time::Duration;

use dory_csi::proto::controller_service_capability::rpc::Type as ControllerCap;
use dory_csi::proto::node_service_capability::rpc::Type as NodeCap;
use dory_csi::proto::plugin_capability::service::Type as PluginCap;
use dory_csi::proto::volume_capability::access_mode::Mode;
use dory_csi::proto::volume_content_source::{SnapshotSource, Type as Source, VolumeSource};
use dory_csi::proto::volume_usage::Unit;
use dory_csi::proto::*;
use serde_json::json;
use tonic::Code;

use crate::csi_support::*;
use crate::support::{binary, require_root};

const GIB: i64 = 1 << 30;

fn topology_here() -> Topology {
    Topology { segments: map(&[("btrfs.dory.io/node", NODE)]) }
}

#[tokio::test]
async fn csi_identity_and_capabilities_are_what_is_implemented() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    let mut identity = csi.identity().await;
    let info = identity.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, DRIVER);
    assert!(info.vendor_version.starts_with(env!("CARGO_PKG_VERSION")), "{}", info.vendor_version);

    let capabilities = identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    let services: Vec<i32> = capabilities
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(plugin_capability::Type::Service(s)) => s.r#type,
            other => panic!("unexpected capability {other:?}"),
        })
        .collect();
    // The mock plugin's scope is local: volumes live on one node.
    assert_eq!(services, [PluginCap::ControllerService as i32, PluginCap::VolumeAccessibilityConstraints as i32]);
    assert_eq!(identity.probe(ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));

    let controller = csi.controller().await.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await;
    let kinds: Vec<i32> = controller
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(controller_service_capability::Type::Rpc(rpc)) => rpc.r#type,
            None => 0,
        })
        .collect();
    // No cloneOptionName in the settings: no CLONE_VOLUME.
    assert_eq!(kinds, [ControllerCap::CreateDeleteVolume as i32, ControllerCap::ListVolumes as i32]);

    let mut node = csi.node().await;
    let kinds: Vec<i32> = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(node_service_capability::Type::Rpc(rpc)) => rpc.r#type,
            None => 0,
        })
        .collect();
    assert_eq!(kinds, [NodeCap::GetVolumeStats as i32, NodeCap::VolumeCondition as i32], "no staging, no expansion");
    let info = node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, NODE);
    assert_eq!(info.accessible_topology, Some(topology_here()));

    // What Dory does not do is UNIMPLEMENTED, which callers never retry.
    let mut controller = csi.controller().await;
    expect_code(controller.create_snapshot(CreateSnapshotRequest::default()).await, Code::Unimplemented);
    expect_code(
        controller.controller_publish_volume(ControllerPublishVolumeRequest::default()).await,
        Code::Unimplemented,
    );
    expect_code(
        controller.controller_expand_volume(ControllerExpandVolumeRequest::default()).await,
        Code::Unimplemented,
    );
    expect_code(controller.get_capacity(GetCapacityRequest::default()).await, Code::Unimplemented);
    expect_code(node.node_stage_volume(NodeStageVolumeRequest::default()).await, Code::Unimplemented);
    expect_code(node.node_expand_volume(NodeExpandVolumeRequest::default()).await, Code::Unimplemented);
}

/// A `global` plugin: one volume for the whole cluster, reachable from
/// every node, so no topology anywhere and multi-node modes are fine.
#[tokio::test]
async fn csi_a_global_plugin_has_no_topology_and_allows_multi_node_access() {
    let plugin = MockPluginProcess::spawn(&["--scope", "global"]).await;
    let csi = Csi::start(&plugin.socket).await;
    let capabilities =
        csi.identity().await.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(capabilities.capabilities.len(), 1, "only CONTROLLER_SERVICE: {capabilities:?}");
    let info = csi.node().await.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.node_id.as_str(), info.accessible_topology), (NODE, None));
    let request = CreateVolumeRequest {
        name: "pvc-rwx".into(),
        volume_capabilities: vec![mount_capability(Mode::MultiNodeMultiWriter)],
        ..Default::default()
    };
    let volume = csi.controller().await.create_volume(request).await.unwrap().into_inner().volume.unwrap();
    assert!(volume.accessible_topology.is_empty(), "reachable from every node");
}

#[tokio::test]
async fn csi_a_plugin_that_is_down_is_not_ready_and_unavailable_never_invalid() {
    let mut plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-before", GIB, &[]).await.unwrap();
    plugin.kill().await;

    let probe = csi.identity().await.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(false), "a plugin that does not answer is not ready");
    let message = expect_code(csi.create("pvc-down", GIB, &[]).await, Code::Unavailable);
    assert!(message.contains("\"pvc-down\"") && message.contains("cannot reach plugin"), "{message}");
    let message = expect_code(csi.delete("pvc-before").await, Code::Unavailable);
    assert!(message.contains("\"pvc-before\""), "{message}");
}

/// A plugin slower than its time limit: the outcome is unknown, so the
/// answer is UNAVAILABLE (csi-provisioner retries), never a final code.
/// Regression: a bad plugin address in the settings was INVALID_ARGUMENT,
/// which csi-provisioner takes as the claim's fault; it is the driver's
/// setup, fixed by the administrator, so FAILED_PRECONDITION.
#[tokio::test]
async fn csi_a_bad_plugin_address_is_failed_precondition_never_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let csi = Csi::start_with(
        &dir.path().join("unused.sock"),
        json!({"dockerVolumePluginSocketPath": "ftp://plugin.example:1"}),
        &[],
    )
    .await;
    let message = expect_code(csi.create("pvc-cfg", GIB, &[]).await, Code::FailedPrecondition);
    assert!(message.contains("ftp://plugin.example:1"), "{message}");
    let target = csi.kubelet_target("pod-cfg", "pvc-cfg");
    expect_code(csi.publish("pvc-cfg", &target, "pod-cfg", false).await, Code::FailedPrecondition);
    expect_code(csi.delete("pvc-cfg").await, Code::FailedPrecondition);
}

#[tokio::test]
async fn csi_a_slow_plugin_is_unavailable_and_a_retry_finds_the_volume() {
    let plugin = MockPluginProcess::spawn(&["--delay", "create=1500"]).await;
    let config = json!({"pluginLongTimeoutSeconds": 1, "pluginShortTimeoutSeconds": 1});
    let csi = Csi::start_with(&plugin.socket, config, &[]).await;
    let message = expect_code(csi.create("pvc-slow", GIB, &[]).await, Code::Unavailable);
    assert!(message.contains("\"pvc-slow\"") && message.contains("did not answer"), "{message}");
    // The plugin finished the Create after all; the retry returns the volume.
    assert!(crate::support::wait_until(Duration::from_secs(5), || plugin.root.join("pvc-slow").exists()).await);
    let volume = csi.create("pvc-slow", GIB, &[]).await.unwrap();
    assert_eq!((volume.volume_id.as_str(), volume.capacity_bytes), ("pvc-slow", GIB));
}

/// Regression: the record of what was asked was written only after Create
/// succeeded, so a retry with another size after a timed-out Create was
/// taken as asked.
#[tokio::test]
async fn csi_a_different_retry_after_a_timed_out_create_is_already_exists() {
    let plugin = MockPluginProcess::spawn(&["--delay", "create=1500"]).await;
    let config = json!({"pluginLongTimeoutSeconds": 1, "pluginShortTimeoutSeconds": 1});
    let csi = Csi::start_with(&plugin.socket, config, &[]).await;
    expect_code(csi.create("pvc-retry", GIB, &[]).await, Code::Unavailable);
    let message = expect_code(csi.create("pvc-retry", 2 * GIB, &[]).await, Code::AlreadyExists);
    assert!(message.contains("pvc-retry") && message.contains(&GIB.to_string()), "{message}");
    assert!(crate::support::wait_until(Duration::from_secs(5), || plugin.root.join("pvc-retry").exists()).await);
    let message = expect_code(csi.create("pvc-retry", GIB, &[("compression", "zstd")]).await, Code::AlreadyExists);
    assert!(message.contains("options"), "{message}");
    let volume = csi.create("pvc-retry", GIB, &[]).await.unwrap();
    assert_eq!(volume.capacity_bytes, GIB, "the same request is the same volume");
}

/// A Create the plugin refused leaves no intent behind: another request for the name may proceed.
#[tokio::test]
async fn csi_a_refused_create_leaves_no_record_in_the_way() {
    let mut plugin = MockPluginProcess::spawn(&["--fail", "create=quota exceeded"]).await;
    let csi = Csi::start(&plugin.socket).await;
    let message = expect_code(csi.create("pvc-quota", 5 * GIB, &[]).await, Code::Internal);
    assert!(message.contains("quota exceeded"), "{message}");
    plugin.restart(&[]).await;
    let volume = csi.create("pvc-quota", GIB, &[]).await.unwrap();
    assert_eq!(volume.capacity_bytes, GIB);
}

#[tokio::test]
async fn csi_create_volume_sizes_like_doryd_and_is_idempotent() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start_with(&plugin.socket, json!({"defaultOptions": {"compress": "lz4", "copies": "1"}}), &[]).await;
    let parameters = [
        ("copies", "2"),
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pvc/namespace", "default"),
        ("csi.storage.k8s.io/pv/name", "pvc-1"),
    ];
    let volume = csi.create("pvc-1", GIB + GIB / 2, &parameters).await.unwrap();
    assert_eq!(volume.volume_id, "pvc-1");
    assert_eq!(volume.capacity_bytes, 2 * GIB, "1.5 GiB is asked of the plugin as 2 whole GiB");
    assert_eq!(volume.accessible_topology, [topology_here()], "a local plugin's volume is on this node");
    let options = plugin_options(&plugin.client(), "pvc-1").await.unwrap();
    assert_eq!(options, json!({"size": "2", "copies": "2", "compress": "lz4"}), "no csi.storage.k8s.io/* keys");

    // A retry (the provisioner's 10 s timeout ran out) gets the same volume.
    assert_eq!(csi.create("pvc-1", GIB + GIB / 2, &parameters).await.unwrap(), volume);
    // The same name with another size or other parameters is another volume.
    let message = expect_code(csi.create("pvc-1", 5 * GIB, &parameters).await, Code::AlreadyExists);
    assert!(message.contains("\"pvc-1\"") && message.contains("bytes"), "{message}");
    expect_code(csi.create("pvc-1", GIB + GIB / 2, &[("copies", "3")]).await, Code::AlreadyExists);

    // Without a capacity range, no size option and capacity 0 ("unknown").
    let volume = csi.create("pvc-nosize", 0, &[]).await.unwrap();
    assert_eq!(volume.capacity_bytes, 0);
    assert_eq!(
        plugin_options(&plugin.client(), "pvc-nosize").await.unwrap(),
        json!({"compress": "lz4", "copies": "1"})
    );

    // An exact size range that whole GiB cannot meet is OUT_OF_RANGE.
    let request = CreateVolumeRequest {
        name: "pvc-exact".into(),
        capacity_range: Some(CapacityRange { required_bytes: GIB + 1, limit_bytes: GIB + 1 }),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        ..Default::default()
    };
    let message = expect_code(csi.controller().await.create_volume(request).await, Code::OutOfRange);
    assert!(message.contains("\"pvc-exact\""), "{message}");
}

#[tokio::test]
async fn csi_create_volume_checks_every_field() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    let mut controller = csi.controller().await;
    let good = || CreateVolumeRequest {
        name: "pvc-x".into(),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        ..Default::default()
    };
    let invalid = [
        CreateVolumeRequest { name: String::new(), ..good() },
        CreateVolumeRequest { name: "a/b".into(), ..good() },
        CreateVolumeRequest { volume_capabilities: vec![], ..good() },
        CreateVolumeRequest { volume_capabilities: vec![block_capability()], ..good() },
        CreateVolumeRequest { volume_capabilities: vec![mount_capability(Mode::Unknown)], ..good() },
        // A local plugin's volume cannot be written from several nodes.
        CreateVolumeRequest { volume_capabilities: vec![mount_capability(Mode::MultiNodeMultiWriter)], ..good() },
        CreateVolumeRequest { capacity_range: Some(CapacityRange { required_bytes: -1, limit_bytes: 0 }), ..good() },
        CreateVolumeRequest {
            capacity_range: Some(CapacityRange { required_bytes: 2 * GIB, limit_bytes: GIB }),
            ..good()
        },
        CreateVolumeRequest {
            volume_content_source: Some(VolumeContentSource {
                r#type: Some(Source::Snapshot(SnapshotSource { snapshot_id: "snap-1".into() })),
            }),
            ..good()
        },
    ];
    for request in invalid {
        let shown = format!("{request:?}");
        let status = controller.create_volume(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{shown}: {status:?}");
    }
    // Placement: this controller creates on its own node only.
    let elsewhere = Topology { segments: map(&[("btrfs.dory.io/node", "node-2")]) };
    let for_other_node = CreateVolumeRequest {
        accessibility_requirements: Some(TopologyRequirement {
            requisite: vec![elsewhere.clone()],
            preferred: vec![elsewhere.clone()],
        }),
        ..good()
    };
    let message = expect_code(controller.create_volume(for_other_node).await, Code::ResourceExhausted);
    assert!(message.contains("node-1"), "{message}");
    assert!(plugin.client().list().await.unwrap().is_empty(), "nothing was created by refused calls");
    let here_or_there = CreateVolumeRequest {
        accessibility_requirements: Some(TopologyRequirement {
            requisite: vec![elsewhere.clone(), topology_here()],
            preferred: vec![topology_here()],
        }),
        ..good()
    };
    let volume = controller.create_volume(here_or_there).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(volume.accessible_topology, [topology_here()]);
}

fn clone_request(name: &str, source: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: GIB, limit_bytes: 0 }),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(Source::Volume(VolumeSource { volume_id: source.into() })),
        }),
        ..Default::default()
    }
}

async fn controller_kinds(csi: &Csi) -> Vec<i32> {
    let reply = csi.controller().await.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await;
    reply
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(controller_service_capability::Type::Rpc(rpc)) => rpc.r#type,
            None => 0,
        })
        .collect()
}

/// A plugin that does not know the clone option ignores it and makes an
/// empty volume: without `cloneOptionName` set, a clone is refused.
#[tokio::test]
async fn csi_clone_without_clone_option_name_is_refused_not_made_empty() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    assert!(!controller_kinds(&csi).await.contains(&(ControllerCap::CloneVolume as i32)));
    csi.create("pvc-source", GIB, &[]).await.unwrap();
    let message = expect_code(
        csi.controller().await.create_volume(clone_request("pvc-clone", "pvc-source")).await,
        Code::InvalidArgument,
    );
    assert!(message.contains("not configured to clone: set cloneOptionName"), "{message}");
    assert!(!plugin_has(&plugin.client(), "pvc-clone").await, "no empty volume was made");
}

#[tokio::test]
async fn csi_clone_passes_the_source_to_the_plugin() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start_with(&plugin.socket, json!({"cloneOptionName": "copyFrom"}), &[]).await;
    assert_eq!(
        controller_kinds(&csi).await,
        [
            ControllerCap::CreateDeleteVolume as i32,
            ControllerCap::ListVolumes as i32,
            ControllerCap::CloneVolume as i32
        ]
    );
    let message =
        expect_code(csi.controller().await.create_volume(clone_request("pvc-x", "pvc-missing")).await, Code::NotFound);
    assert!(message.contains("pvc-missing"), "{message}");
    csi.create("pvc-source", GIB, &[]).await.unwrap();
    let source = VolumeContentSource { r#type: Some(Source::Volume(VolumeSource { volume_id: "pvc-source".into() })) };
    let request = CreateVolumeRequest {
        name: "pvc-clone".into(),
        capacity_range: Some(CapacityRange { required_bytes: GIB, limit_bytes: 0 }),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        volume_content_source: Some(source.clone()),
        ..Default::default()
    };
    let volume = csi.controller().await.create_volume(request.clone()).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(volume.content_source, Some(source), "the provisioner deletes a clone whose reply has no source");
    assert_eq!(
        plugin_options(&plugin.client(), "pvc-clone").await.unwrap(),
        json!({"size": "1", "copyFrom": "pvc-source"}),
        "the option the settings name"
    );
    let again = csi.controller().await.create_volume(request).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(again, volume);
}

#[tokio::test]
async fn csi_delete_volume_is_idempotent() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-del", GIB, &[]).await.unwrap();
    csi.delete("pvc-del").await.unwrap();
    assert!(!plugin_has(&plugin.client(), "pvc-del").await);
    csi.delete("pvc-del").await.unwrap();
    csi.delete("pvc-never-existed").await.unwrap();
    expect_code(csi.delete("").await, Code::InvalidArgument);
    // After a delete the name is free again, with any size.
    assert_eq!(csi.create("pvc-del", 3 * GIB, &[]).await.unwrap().capacity_bytes, 3 * GIB);
}

#[tokio::test]
async fn csi_a_plugin_error_on_delete_is_not_taken_for_gone() {
    let plugin = MockPluginProcess::spawn(&["--fail", "remove=pool is read-only"]).await;
    let csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-stuck", GIB, &[]).await.unwrap();
    let message = expect_code(csi.delete("pvc-stuck").await, Code::Internal);
    assert!(message.contains("\"pvc-stuck\"") && message.contains("pool is read-only"), "{message}");
    assert!(plugin_has(&plugin.client(), "pvc-stuck").await);
}

#[tokio::test]
async fn csi_validate_volume_capabilities_confirms_only_what_is_supported() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-v", GIB, &[]).await.unwrap();
    let mut controller = csi.controller().await;
    let request = |capabilities: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: "pvc-v".into(),
        volume_capabilities: capabilities,
        parameters: map(&[("copies", "2")]),
        ..Default::default()
    };
    let capabilities = vec![mount_capability(Mode::SingleNodeWriter), mount_capability(Mode::SingleNodeReaderOnly)];
    let reply = controller.validate_volume_capabilities(request(capabilities.clone())).await.unwrap().into_inner();
    let confirmed = reply.confirmed.expect("confirmed");
    assert_eq!(confirmed.volume_capabilities, capabilities);
    assert_eq!(confirmed.parameters, map(&[("copies", "2")]));

    for unsupported in [block_capability(), mount_capability(Mode::MultiNodeMultiWriter)] {
        let reply = controller.validate_volume_capabilities(request(vec![unsupported])).await.unwrap().into_inner();
        assert!(reply.confirmed.is_none());
        assert!(reply.message.contains("pvc-v"), "{}", reply.message);
    }
    expect_code(controller.validate_volume_capabilities(request(vec![])).await, Code::InvalidArgument);
    let unknown = ValidateVolumeCapabilitiesRequest { volume_id: "pvc-nope".into(), ..request(capabilities) };
    expect_code(controller.validate_volume_capabilities(unknown).await, Code::NotFound);
}

#[tokio::test]
async fn csi_list_volumes_pages_through_every_volume() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    for n in 0..5 {
        csi.create(&format!("pvc-{n}"), GIB, &[]).await.unwrap();
    }
    let mut controller = csi.controller().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let reply = controller
            .list_volumes(ListVolumesRequest { max_entries: 2, starting_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.entries.len() <= 2);
        for entry in reply.entries {
            let volume = entry.volume.unwrap();
            assert_eq!(volume.capacity_bytes, GIB);
            assert_eq!(volume.accessible_topology, [topology_here()]);
            seen.push(volume.volume_id);
        }
        pages += 1;
        if reply.next_token.is_empty() {
            break;
        }
        token = reply.next_token;
        assert!(pages < 10, "paging ends");
    }
    assert_eq!(seen, ["pvc-0", "pvc-1", "pvc-2", "pvc-3", "pvc-4"]);
    assert_eq!(pages, 3);
    let all = controller.list_volumes(ListVolumesRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.entries.len(), 5);
    assert!(all.next_token.is_empty());
    let request = ListVolumesRequest { max_entries: 0, starting_token: "invalid-token".into() };
    expect_code(controller.list_volumes(request).await, Code::Aborted);
    let request = ListVolumesRequest { max_entries: -1, starting_token: String::new() };
    expect_code(controller.list_volumes(request).await, Code::InvalidArgument);
}

/// kubelet's sequence: NodeGetCapabilities before each call, the parent
/// directory made 0750, NodePublishVolume with the pod info, the pod
/// writes, NodeGetVolumeStats, NodeUnpublishVolume (the driver removes the
/// target), then another pod on the same volume reads what was written.
#[tokio::test]
async fn csi_kubelet_sequence_publish_write_unpublish_publish_elsewhere_read() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    let volume = csi.create("pvc-k", GIB, &[]).await.unwrap().volume_id;
    let pod_a = "6f1c3c1e-0000-4000-8000-00000000000a";
    let pod_b = "6f1c3c1e-0000-4000-8000-00000000000b";
    let target_a = csi.kubelet_target(pod_a, "pvc-k");

    csi.node().await.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.unwrap();
    csi.publish(&volume, &target_a, pod_a, false).await.unwrap();
    assert!(is_mount_point(&target_a), "the target is a mount point");
    assert_eq!(plugin_mounts(&plugin.client(), &volume).await, Some(1));
    std::fs::write(target_a.join("index.html"), "hello from pod A").unwrap();
    assert_eq!(std::fs::read_to_string(plugin.root.join("pvc-k/index.html")).unwrap(), "hello from pod A");
    // A retried publish is OK and mounts nothing more.
    csi.publish(&volume, &target_a, pod_a, false).await.unwrap();
    assert_eq!(plugin_mounts(&plugin.client(), &volume).await, Some(1));

    let stats = csi
        .node()
        .await
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: volume.clone(),
            volume_path: target_a.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let units: Vec<i32> = stats.usage.iter().map(|u| u.unit).collect();
    assert_eq!(units, [Unit::Bytes as i32, Unit::Inodes as i32]);
    assert!(stats.usage.iter().all(|u| u.total > 0 && u.used >= 0 && u.available >= 0), "{:?}", stats.usage);
    assert_eq!(stats.volume_condition.map(|c| c.abnormal), Some(false));
    // Deleting a volume a pod still uses: the plugin refuses, FAILED_PRECONDITION.
    let message = expect_code(csi.delete(&volume).await, Code::FailedPrecondition);
    assert!(message.contains("pvc-k") && message.contains("in use"), "{message}");

    csi.unpublish(&volume, &target_a).await.unwrap();
    assert!(!target_a.exists(), "the driver removes the target it created");
    assert!(target_a.parent().unwrap().exists(), "the parent is kubelet's");
    assert_eq!(plugin_mounts(&plugin.client(), &volume).await, Some(0));
    csi.unpublish(&volume, &target_a).await.unwrap();

    let target_b = csi.kubelet_target(pod_b, "pvc-k");
    csi.publish(&volume, &target_b, pod_b, false).await.unwrap();
    assert_eq!(std::fs::read_to_string(target_b.join("index.html")).unwrap(), "hello from pod A");
    csi.unpublish(&volume, &target_b).await.unwrap();
    assert!(!is_mount_point(&target_b) && !target_b.exists());
    csi.delete(&volume).await.unwrap();
}

#[tokio::test]
async fn csi_read_only_publish_is_read_only_all_the_way_down() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-ro", GIB, &[]).await.unwrap();
    // A mount inside the plugin's volume: a recursive bind carries it along.
    let inner = plugin.root.join("pvc-ro/inner");
    std::fs::create_dir_all(&inner).unwrap();
    nix::mount::mount(Some("tmpfs"), &inner, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap();
    let _unmount_inner = scopeguard(inner.clone());

    let target = csi.kubelet_target("pod-ro", "pvc-ro");
    csi.publish("pvc-ro", &target, "pod-ro", true).await.unwrap();
    for path in [target.join("f"), target.join("inner/f")] {
        let err = std::fs::write(&path, "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{}: {err}", path.display());
    }
    std::fs::write(inner.join("f"), "the plugin's side stays writable").unwrap();
    // The same target read-write is another publish: ALREADY_EXISTS.
    let message = expect_code(csi.publish("pvc-ro", &target, "pod-ro", false).await, Code::AlreadyExists);
    assert!(message.contains("pvc-ro"), "{message}");
    csi.unpublish("pvc-ro", &target).await.unwrap();
    assert!(!target.exists());

    // A read-only access mode is published read-only too.
    let request = NodePublishVolumeRequest {
        volume_id: "pvc-ro".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability(Mode::SingleNodeReaderOnly)),
        ..Default::default()
    };
    csi.node().await.node_publish_volume(request).await.unwrap();
    assert_eq!(std::fs::write(target.join("f"), "x").unwrap_err().raw_os_error(), Some(nix::libc::EROFS));
    csi.unpublish("pvc-ro", &target).await.unwrap();
}

/// Unmounts a path when dropped (a test's own extra mount).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn scopeguard(path: std::path::PathBuf) -> Unmount {
    Unmount(path)
}

#[tokio::test]
async fn csi_unpublish_after_a_restart_works_from_the_path_alone() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&[]).await;
    let mut csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-r", GIB, &[]).await.unwrap();
    let target = csi.kubelet_target("pod-r1", "pvc-r");
    csi.publish("pvc-r", &target, "pod-r1", false).await.unwrap();
    csi.restart().await;
    csi.unpublish("pvc-r", &target).await.unwrap();
    assert!(!target.exists());
    assert_eq!(plugin_mounts(&plugin.client(), "pvc-r").await, Some(0));

    // Even with the records lost (a wiped state dir), the mount is undone:
    // the volume id is in the request and the Mount ID is the pod UID of the path.
    let target = csi.kubelet_target("pod-r2", "pvc-r");
    csi.publish("pvc-r", &target, "pod-r2", false).await.unwrap();
    std::fs::remove_dir_all(csi.dir.path().join("state")).unwrap();
    csi.restart().await;
    csi.unpublish("pvc-r", &target).await.unwrap();
    assert!(!is_mount_point(&target) && !target.exists());
    assert_eq!(plugin_mounts(&plugin.client(), "pvc-r").await, Some(0));
}

#[tokio::test]
async fn csi_publish_checks_its_fields_and_answers_the_spec_codes() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-p", GIB, &[]).await.unwrap();
    csi.create("pvc-q", GIB, &[]).await.unwrap();
    let target = csi.kubelet_target("pod-p", "pvc-p");
    let mut node = csi.node().await;
    let good = || NodePublishVolumeRequest {
        volume_id: "pvc-p".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
        ..Default::default()
    };
    for (request, code) in [
        (NodePublishVolumeRequest { volume_id: String::new(), ..good() }, Code::InvalidArgument),
        (NodePublishVolumeRequest { target_path: String::new(), ..good() }, Code::InvalidArgument),
        (NodePublishVolumeRequest { target_path: "relative/mount".into(), ..good() }, Code::InvalidArgument),
        (NodePublishVolumeRequest { volume_capability: None, ..good() }, Code::InvalidArgument),
        (NodePublishVolumeRequest { volume_capability: Some(block_capability()), ..good() }, Code::InvalidArgument),
        (
            NodePublishVolumeRequest {
                volume_capability: Some(mount_capability(Mode::MultiNodeMultiWriter)),
                ..good()
            },
            Code::FailedPrecondition,
        ),
        (NodePublishVolumeRequest { volume_id: "pvc-unknown".into(), ..good() }, Code::NotFound),
    ] {
        let shown = format!("{request:?}");
        let status = node.node_publish_volume(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{shown}: {status:?}");
    }
    assert!(!target.exists(), "failed publishes leave no target behind");

    node.node_publish_volume(good()).await.unwrap();
    let other = NodePublishVolumeRequest { volume_id: "pvc-q".into(), ..good() };
    let message = expect_code(node.node_publish_volume(other).await, Code::AlreadyExists);
    assert!(message.contains("pvc-p") && message.contains("pvc-q"), "{message}");
    assert_eq!(plugin_mounts(&plugin.client(), "pvc-q").await, Some(0), "nothing mounted for the refused one");

    let unpublish = |volume_id: &str, target_path: &str| NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target_path.into(),
    };
    expect_code(node.node_unpublish_volume(unpublish("", &target.display().to_string())).await, Code::InvalidArgument);
    expect_code(node.node_unpublish_volume(unpublish("pvc-p", "")).await, Code::InvalidArgument);
    // Nothing published there: OK (kubelet retries any error forever).
    node.node_unpublish_volume(unpublish("pvc-q", "/nonexistent/pods/x/volumes/y/mount")).await.unwrap();

    let stats = |path: &str| NodeGetVolumeStatsRequest {
        volume_id: "pvc-p".into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    expect_code(node.node_get_volume_stats(stats("")).await, Code::InvalidArgument);
    expect_code(node.node_get_volume_stats(stats("/nonexistent/path")).await, Code::NotFound);
    let unpublished = csi.dir.path().join("kubelet");
    expect_code(node.node_get_volume_stats(stats(&unpublished.display().to_string())).await, Code::NotFound);
    csi.unpublish("pvc-p", &target).await.unwrap();
}

#[tokio::test]
async fn csi_volume_stats_report_a_lost_mount_and_a_lost_volume_as_abnormal() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    let mut node = csi.node().await;
    let stats = |volume: &str, path: &std::path::Path| NodeGetVolumeStatsRequest {
        volume_id: volume.into(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    };

    csi.create("pvc-gone", GIB, &[]).await.unwrap();
    let target = csi.kubelet_target("pod-s", "pvc-gone");
    csi.publish("pvc-gone", &target, "pod-s", false).await.unwrap();
    // Someone unmounts the bind behind the driver's back.
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let reply = node.node_get_volume_stats(stats("pvc-gone", &target)).await.unwrap().into_inner();
    let condition = reply.volume_condition.unwrap();
    assert!(condition.abnormal && condition.message.contains("mount"), "{condition:?}");
    // Publishing again repairs it.
    csi.publish("pvc-gone", &target, "pod-s", false).await.unwrap();
    assert!(is_mount_point(&target));
    let reply = node.node_get_volume_stats(stats("pvc-gone", &target)).await.unwrap().into_inner();
    assert!(!reply.volume_condition.unwrap().abnormal);

    // The plugin loses the volume while it is published.
    let client = plugin.client();
    client.unmount(&crate::support::vol("pvc-gone"), &crate::support::id("pod-s")).await.unwrap();
    client.remove(&crate::support::vol("pvc-gone")).await.unwrap();
    let reply = node.node_get_volume_stats(stats("pvc-gone", &target)).await.unwrap().into_inner();
    let condition = reply.volume_condition.unwrap();
    assert!(condition.abnormal && condition.message.contains("no longer has"), "{condition:?}");
    assert!(!reply.usage.is_empty(), "kubelet needs usage even then");
    csi.unpublish("pvc-gone", &target).await.unwrap();
    assert!(!target.exists());
}

/// Regression: a plugin that fails Get (down, erroring) was reported as an
/// abnormal volume; it is only a message, the volume may be fine.
#[tokio::test]
async fn csi_volume_stats_a_plugin_error_is_a_message_not_abnormal() {
    require_root("bind mounts");
    let mut plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-s", GIB, &[]).await.unwrap();
    let target = csi.kubelet_target("pod-g", "pvc-s");
    csi.publish("pvc-s", &target, "pod-g", false).await.unwrap();
    plugin.restart(&["--fail", "get=array controller offline"]).await;
    let request = NodeGetVolumeStatsRequest {
        volume_id: "pvc-s".into(),
        volume_path: target.display().to_string(),
        staging_target_path: String::new(),
    };
    let reply = csi.node().await.node_get_volume_stats(request).await.unwrap().into_inner();
    let condition = reply.volume_condition.unwrap();
    assert!(!condition.abnormal && condition.message.contains("array controller offline"), "{condition:?}");
    assert!(!reply.usage.is_empty());
    plugin.restart(&[]).await;
    csi.unpublish("pvc-s", &target).await.unwrap();
}

#[tokio::test]
async fn csi_an_inline_ephemeral_volume_lives_as_long_as_its_pod() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start(&plugin.socket).await;
    let pod = "0e0e0e0e-1111-4222-8333-444444444444";
    // kubelet's handle for inline volumes: csi-<sha256(podUID + volumeName)>.
    let volume = "csi-5d9f4e0c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5";
    let target = csi.kubelet_target(pod, "scratch");
    let mut context = pod_context(pod, true);
    context.insert("size".into(), "1".into());
    context.insert("compress".into(), "zstd".into());
    let request = NodePublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
        volume_context: context,
        ..Default::default()
    };
    csi.node().await.node_publish_volume(request.clone()).await.unwrap();
    assert_eq!(
        plugin_options(&plugin.client(), volume).await.unwrap(),
        json!({"size": "1", "compress": "zstd", "storage.kubernetes.io/csiProvisionerIdentity": "1700000000000-1234-btrfs.dory.io"}),
        "created from the pod's attributes, without csi.storage.k8s.io/* keys"
    );
    std::fs::write(target.join("tmp"), "scratch data").unwrap();
    csi.node().await.node_publish_volume(request).await.unwrap();
    csi.unpublish(volume, &target).await.unwrap();
    assert!(!plugin_has(&plugin.client(), volume).await, "destroyed on unpublish");
    assert!(!target.exists());
    csi.unpublish(volume, &target).await.unwrap();
}

#[tokio::test]
async fn csi_a_failed_ephemeral_publish_leaves_no_volume_behind() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&["--fail", "mount=device busy"]).await;
    let csi = Csi::start(&plugin.socket).await;
    let target = csi.kubelet_target("pod-e", "scratch");
    let request = NodePublishVolumeRequest {
        volume_id: "csi-failed".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
        volume_context: pod_context("pod-e", true),
        ..Default::default()
    };
    let message = expect_code(csi.node().await.node_publish_volume(request).await, Code::Internal);
    assert!(message.contains("csi-failed") && message.contains("device busy"), "{message}");
    assert!(plugin.client().list().await.unwrap().is_empty(), "kubelet may never call unpublish: nothing is left");
}

/// Regression: the ephemeral mark was cleared even when Remove failed, so
/// the volume of a failed publish leaked for good.
#[tokio::test]
async fn csi_a_failed_ephemeral_publish_whose_remove_fails_is_removed_by_unpublish() {
    require_root("bind mounts");
    let mut plugin = MockPluginProcess::spawn(&["--fail", "mount=device busy", "--fail", "remove=disk on fire"]).await;
    let csi = Csi::start(&plugin.socket).await;
    let target = csi.kubelet_target("pod-l", "scratch");
    let request = NodePublishVolumeRequest {
        volume_id: "csi-leak".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
        volume_context: pod_context("pod-l", true),
        ..Default::default()
    };
    let message = expect_code(csi.node().await.node_publish_volume(request).await, Code::Internal);
    assert!(message.contains("device busy"), "{message}");
    assert!(plugin_has(&plugin.client(), "csi-leak").await, "Remove failed: the volume is still there");
    plugin.restart(&[]).await;
    csi.unpublish("csi-leak", &target).await.unwrap();
    assert!(!plugin_has(&plugin.client(), "csi-leak").await, "the kept mark let unpublish remove it");
}

/// A pod's volumeAttributes cannot name a volume to copy.
#[tokio::test]
async fn csi_an_inline_ephemeral_volume_cannot_clone_another_volume() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start_with(&plugin.socket, json!({"cloneOptionName": "copyFrom"}), &[]).await;
    csi.create("pvc-private", GIB, &[]).await.unwrap();
    let target = csi.kubelet_target("pod-c", "scratch");
    let mut context = pod_context("pod-c", true);
    context.extend(map(&[("copyFrom", "pvc-private"), ("size", "1")]));
    let request = NodePublishVolumeRequest {
        volume_id: "csi-scratch-c".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
        volume_context: context,
        ..Default::default()
    };
    csi.node().await.node_publish_volume(request).await.unwrap();
    let options = plugin_options(&plugin.client(), "csi-scratch-c").await.unwrap();
    csi.unpublish("csi-scratch-c", &target).await.unwrap();
    assert_eq!(options.get("size"), Some(&json!("1")), "{options}");
    assert_eq!(options.get("copyFrom"), None, "no clone option reaches the plugin: {options}");
}

#[tokio::test]
async fn csi_calls_on_one_volume_are_serialized_calls_on_many_run_in_parallel() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&["--delay", "mount=400", "--delay", "create=200"]).await;
    let csi = Csi::start(&plugin.socket).await;
    csi.create("pvc-c", GIB, &[]).await.unwrap();
    let (target_1, target_2) = (csi.kubelet_target("pod-c1", "pvc-c"), csi.kubelet_target("pod-c2", "pvc-c"));
    let (first, second) = tokio::join!(
        csi.publish("pvc-c", &target_1, "pod-c1", false),
        csi.publish("pvc-c", &target_2, "pod-c2", false)
    );
    let mut outcomes = [first.map_err(|s| s.code() as i32), second.map_err(|s| s.code() as i32)];
    outcomes.sort();
    assert_eq!(outcomes, [Ok(()), Err(Code::Aborted as i32)], "one runs, the duplicate is ABORTED, not queued");
    // kubelet retries the aborted one, which then succeeds.
    csi.publish("pvc-c", &target_1, "pod-c1", false).await.unwrap();
    csi.publish("pvc-c", &target_2, "pod-c2", false).await.unwrap();
    // The plugin counts users per Mount ID and mounts once for the first.
    assert_eq!(plugin_mounts(&plugin.client(), "pvc-c").await, Some(1));

    // Eight creates of different volumes, each 200 ms in the plugin, overlap.
    let started = std::time::Instant::now();
    let creates = (0..8).map(|n| {
        let csi = &csi;
        async move { csi.create(&format!("pvc-many-{n}"), GIB, &[]).await }
    });
    for result in futures::future::join_all(creates).await {
        result.unwrap();
    }
    assert!(started.elapsed() < Duration::from_millis(8 * 200), "in parallel: {:?}", started.elapsed());
    csi.unpublish("pvc-c", &target_1).await.unwrap();
    assert_eq!(plugin_mounts(&plugin.client(), "pvc-c").await, Some(1), "pod-c2 still uses it");
    csi.unpublish("pvc-c", &target_2).await.unwrap();
    assert_eq!(plugin_mounts(&plugin.client(), "pvc-c").await, Some(0));
}

#[tokio::test]
async fn csi_secrets_never_reach_the_log() {
    require_root("bind mounts");
    let plugin = MockPluginProcess::spawn(&[]).await;
    let csi = Csi::start_with(&plugin.socket, json!({}), &["--log-level", "debug", "--log-format", "json"]).await;
    let secrets: HashMap<String, String> = map(&[("password", "hunter2-secret")]);
    let request = CreateVolumeRequest {
        name: "pvc-secret".into(),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        parameters: map(&[("adminPassword", "s3cr3t-param"), ("copies", "2")]),
        secrets: secrets.clone(),
        ..Default::default()
    };
    csi.controller().await.create_volume(request).await.unwrap();
    let target = csi.kubelet_target("pod-secret", "pvc-secret");
    let request = NodePublishVolumeRequest {
        volume_id: "pvc-secret".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
        secrets,
        volume_context: pod_context("pod-secret", false),
        ..Default::default()
    };
    csi.node().await.node_publish_volume(request).await.unwrap();
    csi.unpublish("pvc-secret", &target).await.unwrap();
    let log = csi.log_text();
    assert!(log.contains("pvc-secret") && log.contains("\"copies\\\":\\\"2\\\""), "the calls were logged:\n{log}");
    assert!(!log.contains("hunter2-secret") && !log.contains("s3cr3t-param"), "a secret reached the log:\n{log}");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[tokio::test]
async fn csi_flags_are_checked_before_anything_is_served() {
    let run = |args: &[&str]| std::process::Command::new(binary("dory-csi")).args(args).output().unwrap();
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in
        ["--endpoint", "--drivername", "--nodeid", "--controller", "--node", "--config", "--log-format", "--log-level"]
    {
        assert!(text.contains(flag), "--help lists {flag}:\n{text}");
    }
    let version = run(&["--version"]);
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with(&format!("dory-csi {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");

    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("--endpoint=unix://{}", dir.path().join("csi.sock").display());
    for (args, expected) in [
        (vec![endpoint.as_str(), "--drivername=btrfs.dory.io"], "pass --controller, --node or both"),
        (vec!["--endpoint=tcp://127.0.0.1:1", "--drivername=btrfs.dory.io", "--controller"], "only unix://"),
        (vec![endpoint.as_str(), "--drivername=-bad-", "--controller"], "is not a CSI driver name"),
        (vec![endpoint.as_str(), "--drivername=btrfs.dory.io", "--controller", "--log-format=xml"], "xml"),
        (
            vec![endpoint.as_str(), "--drivername=btrfs.dory.io", "--controller", "--config=/nonexistent.json"],
            "/nonexistent.json",
        ),
    ] {
        let output =
            std::process::Command::new(binary("dory-csi")).args(&args).env_remove("NODE_NAME").output().unwrap();
        assert!(!output.status.success(), "{args:?} is refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("csi.sock").exists(), "nothing was served");
}

#[tokio::test]
async fn csi_sigterm_stops_serving_and_removes_the_socket() {
    let plugin = MockPluginProcess::spawn(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    let config = dir.path().join("etc/c.json");
    std::fs::write(
        &config,
        json!({"backend": "docker", "dockerVolumePluginSocketPath": plugin.socket, "stateDir": dir.path().join("s")})
            .to_string(),
    )
    .unwrap();
    // A stale socket from a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut child = tokio::process::Command::new(binary("dory-csi"))
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .args(["--drivername=btrfs.dory.io", "--controller", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = crate::support::wait_until(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    assert!(ready);
    // A controller-only instance has no Node service.
    let mut node = dory_csi::proto::node_client::NodeClient::new(connect(&socket).await);
    expect_code(node.node_get_info(NodeGetInfoRequest {}).await, Code::Unimplemented);
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists());
}

/// buttervolume's socket (`scripts/test` starts it); without it this test
/// fails and says how to start it: it is never skipped silently.
fn buttervolume_socket() -> std::path::PathBuf {
    match std::env::var_os("DORY_BUTTERVOLUME_SOCKET") {
        Some(path) => path.into(),
        None => panic!(
            "DORY_BUTTERVOLUME_SOCKET is not set: run the suite with `scripts/test`, which starts buttervolume \
             (or start it by hand: scripts/buttervolume.sh start)"
        ),
    }
}

/// The whole CSI life of a volume on a real third-party plugin: a local
/// plugin's topology, a btrfs subvolume created with the class's options,
/// published (a real bind of the subvolume), written, unpublished, deleted
/// twice; the plugin's own refusals keep its words and are not final.
#[tokio::test]
async fn csi_buttervolume_create_publish_write_unpublish_delete() {
    require_root("bind mounts");
    let socket = buttervolume_socket();
    let csi = Csi::start(&socket).await;
    let capabilities =
        csi.identity().await.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(capabilities.capabilities.len(), 2, "buttervolume is local: {capabilities:?}");
    assert_eq!(csi.identity().await.probe(ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));

    let name = format!("csi-bv-{}", std::process::id());
    let volume = csi.create(&name, 0, &[("copyonwrite", "false")]).await.unwrap();
    assert_eq!(volume.accessible_topology, [topology_here()]);
    assert_eq!(csi.create(&name, 0, &[("copyonwrite", "false")]).await.unwrap(), volume, "idempotent");

    let target = csi.kubelet_target("bv-pod-1", &name);
    csi.publish(&name, &target, "bv-pod-1", false).await.unwrap();
    assert!(is_mount_point(&target));
    std::fs::write(target.join("f"), "on btrfs").unwrap();
    let stats = csi
        .node()
        .await
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: name.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.volume_condition.map(|c| c.abnormal), Some(false));
    csi.unpublish(&name, &target).await.unwrap();
    assert!(!target.exists());
    let target = csi.kubelet_target("bv-pod-2", &name);
    csi.publish(&name, &target, "bv-pod-2", true).await.unwrap();
    assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "on btrfs");
    assert_eq!(std::fs::write(target.join("g"), "x").unwrap_err().raw_os_error(), Some(nix::libc::EROFS));
    csi.unpublish(&name, &target).await.unwrap();

    let message = expect_code(csi.create(&format!("{name}-bad"), 0, &[("copyonwrite", "maybe")]).await, Code::Internal);
    assert!(message.contains("Invalid option for copyonwrite: maybe"), "{message}");
    let request = ValidateVolumeCapabilitiesRequest {
        volume_id: format!("{name}-never"),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        ..Default::default()
    };
    expect_code(csi.controller().await.validate_volume_capabilities(request).await, Code::NotFound);

    csi.delete(&name).await.unwrap();
    csi.delete(&name).await.unwrap();
    let mut listed = csi.controller().await.list_volumes(ListVolumesRequest::default()).await.unwrap().into_inner();
    listed.entries.retain(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == name));
    assert!(listed.entries.is_empty(), "deleted");
}

/// The dory-csi manifests: the controller Deployment, the node DaemonSet and the per-node variant.
const CSI_MANIFESTS: [&str; 3] = ["controller.yaml", "node.yaml", "node-local.yaml"];

fn deploy_csi(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/csi").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The settings json of `deploy/csi/config.yaml` (the ConfigMap's `dory-csi.json: |` block).
fn shipped_settings() -> serde_json::Value {
    let text = deploy_csi("config.yaml");
    let block: String = text
        .lines()
        .skip_while(|line| !line.trim().starts_with("dory-csi.json: |"))
        .skip(1)
        .map(|line| format!("{line}\n"))
        .collect();
    serde_json::from_str(&block).unwrap_or_else(|e| panic!("config.yaml holds json: {e}\n{block}"))
}

/// The `args` of the `dory-csi` container in `manifest`.
fn dory_csi_args(manifest: &str) -> Vec<String> {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != r#"command: ["/usr/local/bin/dory-csi"]"#).skip(1);
    assert_eq!(lines.next().map(str::trim), Some("args:"), "dory-csi has args");
    lines.map_while(|l| l.trim().strip_prefix("- ").map(|a| a.trim_matches('"').to_owned())).collect()
}

/// The `path:` (hostPath) or `mountPath:` given for the volume named `state`.
fn state_paths(manifest: &str) -> Vec<String> {
    let lines: Vec<&str> = manifest.lines().map(str::trim).collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if *line != "- name: state" {
            continue;
        }
        let path = lines[i + 1..]
            .iter()
            .take(3)
            .find_map(|l| l.strip_prefix("mountPath: ").or_else(|| l.strip_prefix("path: ")))
            .unwrap_or_else(|| panic!("the state volume at line {} has a path", i + 1));
        found.push(path.to_owned());
    }
    found
}

/// The publish records and ephemeral marks must survive a reboot (as
/// `deploy/dory-driver.yaml`'s do): never a tmpfs such as /run.
#[test]
fn csi_manifests_keep_state_on_persistent_storage() {
    let state_dir = shipped_settings()["stateDir"].as_str().expect("config.yaml sets stateDir").to_owned();
    assert_eq!(state_dir, "/var/lib/dory", "persistent, and the directory dory's FlexVolume driver uses");
    for file in CSI_MANIFESTS {
        let paths = state_paths(&deploy_csi(file));
        assert_eq!(
            paths,
            [state_dir.as_str(), state_dir.as_str()],
            "{file}: the state volume's mountPath and hostPath"
        );
    }
}

/// Every manifest's dory-csi args, with the shipped settings file, through
/// the binary's own validation (`--check-args`: everything serving checks,
/// then exit without serving), not only clap's `--help`.
#[tokio::test]
async fn csi_manifest_args_pass_the_binarys_own_validation() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dory-csi.json");
    std::fs::write(&config, shipped_settings().to_string()).unwrap();
    for file in CSI_MANIFESTS {
        let args: Vec<String> = dory_csi_args(&deploy_csi(file))
            .into_iter()
            .map(|arg| if arg.starts_with("--config=") { format!("--config={}", config.display()) } else { arg })
            .collect();
        assert!(args.iter().any(|a| a.starts_with("--config=")), "{file}: {args:?}");
        let output = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(binary("dory-csi"))
                .args(&args)
                .arg("--check-args")
                .env("NODE_NAME", NODE)
                .output(),
        )
        .await
        .expect("dory-csi --check-args exits in time")
        .unwrap();
        assert!(
            output.status.success(),
            "{file}: `dory-csi {}` is rejected: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // And the check really checks: what --help lets through, it refuses.
    for bad in
        [&["--drivername=btrfs.dory.io", "--node", "--endpoint=tcp://0.0.0.0:1"][..], &["--drivername=btrfs.dory.io"]]
    {
        let output = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(binary("dory-csi")).args(bad).arg("--check-args").output(),
        )
        .await
        .expect("dory-csi --check-args exits in time")
        .unwrap();
        assert!(!output.status.success(), "{bad:?} is refused");
    }
}
