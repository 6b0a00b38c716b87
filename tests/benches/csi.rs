//! Benchmark of `dory-csi` (release) in front of the mock backend served as
//! a Docker volume plugin on a unix socket: NodePublishVolume and
//! NodeUnpublishVolume median and p99 (a new connection per call, as
//! kubelet dials) beside the plugin's own round trips for the same work in
//! the same run (Get + Mount, Unmount); 1000 concurrent CreateVolume and
//! DeleteVolume; dory-csi's RSS idle and at peak. Needs root (bind mounts).
//!
//! Run: `scripts/bench`, or
//! `DORY_CSI=target/release/dory-csi cargo bench -p dory-tests --bench csi`.
//! `DORY_BENCH_ITERATIONS` (default 300) and `DORY_BENCH_VOLUMES` (default 1000).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dory_backend_docker::{CallPolicy, PluginAddress, PluginClient, PluginServer, ServerOptions, bind_socket};
use dory_backend_mock::MockBackend;
use dory_core::{MountId, VolumeName};
use dory_csi::proto::controller_client::ControllerClient;
use dory_csi::proto::node_client::NodeClient;
use dory_csi::proto::volume_capability::access_mode::Mode;
use dory_csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use dory_csi::proto::*;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

use dory_tests::rss_kb;

async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    });
    Endpoint::try_from("http://localhost").unwrap().connect_with_connector(connector).await.unwrap()
}

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

/// `(median, p99)` in microseconds.
fn figures(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn show(label: &str, samples: Vec<Duration>) -> f64 {
    let (median, p99) = figures(samples);
    println!("{label:<52} median {median:>8.0} µs   p99 {p99:>8.0} µs");
    median
}

fn main() {
    assert!(nix::unistd::Uid::effective().is_root(), "the CSI bench bind-mounts: run it as root");
    let iterations: usize = std::env::var("DORY_BENCH_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    let volumes: usize = std::env::var("DORY_BENCH_VOLUMES").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let binary = std::env::var("DORY_CSI").unwrap_or_else(|_| "target/release/dory-csi".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let work = tempfile::tempdir().unwrap();
        // Records and locks on tmpfs, as /run is on a node.
        let state = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let plugin_socket = work.path().join("plugins/mock.sock");
        let backend = Arc::new(MockBackend::new(work.path().join("volumes")).unwrap());
        let listener = bind_socket(&plugin_socket).await.unwrap();
        tokio::spawn(PluginServer::new(backend, ServerOptions::default()).serve(listener, std::future::pending()));
        std::fs::create_dir_all(work.path().join("etc")).unwrap();
        let config = work.path().join("etc/dory-csi.json");
        std::fs::write(
            &config,
            json!({"backend": "docker", "dockerVolumePluginSocketPath": plugin_socket, "stateDir": state.path()})
                .to_string(),
        )
        .unwrap();
        let socket = work.path().join("csi/csi.sock");
        let mut child = std::process::Command::new(&binary)
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .args(["--drivername=mock.dory.io", "--nodeid=bench", "--controller", "--node", "--log-level=warn", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {binary} (build it with cargo build --release): {e}"));
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_rss = rss_kb(pid, "VmRSS");

        // Publish/unpublish of one volume into one pod directory, over and over.
        let mut controller = ControllerClient::new(connect(&socket).await);
        let create = |name: String| CreateVolumeRequest {
            name,
            capacity_range: Some(CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
            volume_capabilities: vec![capability()],
            ..Default::default()
        };
        controller.create_volume(create("pvc-bench".into())).await.unwrap();
        let target: PathBuf = work.path().join("kubelet/pods/0000-bench/volumes/kubernetes.io~csi/pvc-bench/mount");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let publish = NodePublishVolumeRequest {
            volume_id: "pvc-bench".into(),
            target_path: target.display().to_string(),
            volume_capability: Some(capability()),
            ..Default::default()
        };
        let unpublish = NodeUnpublishVolumeRequest { volume_id: "pvc-bench".into(), target_path: target.display().to_string() };
        let (mut publishes, mut unpublishes) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            let started = Instant::now();
            NodeClient::new(connect(&socket).await).node_publish_volume(publish.clone()).await.unwrap();
            publishes.push(started.elapsed());
            let started = Instant::now();
            NodeClient::new(connect(&socket).await).node_unpublish_volume(unpublish.clone()).await.unwrap();
            unpublishes.push(started.elapsed());
        }
        let mut node = NodeClient::new(connect(&socket).await);
        let (mut kept_publishes, mut kept_unpublishes) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            let started = Instant::now();
            node.node_publish_volume(publish.clone()).await.unwrap();
            kept_publishes.push(started.elapsed());
            let started = Instant::now();
            node.node_unpublish_volume(unpublish.clone()).await.unwrap();
            kept_unpublishes.push(started.elapsed());
        }
        let mut capabilities = Vec::new();
        for _ in 0..iterations {
            let started = Instant::now();
            NodeClient::new(connect(&socket).await).node_get_capabilities(NodeGetCapabilitiesRequest {}).await.unwrap();
            capabilities.push(started.elapsed());
        }
        // The plugin's own round trips for the same work, in this run.
        let plugin = PluginClient::new(PluginAddress::Unix(plugin_socket.clone()), CallPolicy::default());
        let (volume, id) = (VolumeName::new("pvc-bench").unwrap(), MountId::new("0000-bench").unwrap());
        let (mut plugin_mounts, mut plugin_unmounts) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            let started = Instant::now();
            plugin.get(&volume).await.unwrap();
            plugin.mount(&volume, &id).await.unwrap();
            plugin_mounts.push(started.elapsed());
            let started = Instant::now();
            plugin.unmount(&volume, &id).await.unwrap();
            plugin_unmounts.push(started.elapsed());
        }
        println!("dory-csi ({binary}), {iterations} samples each, mock plugin on a unix socket");
        let publish_new = show("NodePublishVolume (new connection, as kubelet)", publishes);
        let unpublish_new = show("NodeUnpublishVolume (new connection, as kubelet)", unpublishes);
        let publish_kept = show("NodePublishVolume (one connection)", kept_publishes);
        let unpublish_kept = show("NodeUnpublishVolume (one connection)", kept_unpublishes);
        show("NodeGetCapabilities (new connection)", capabilities);
        let plugin_mount = show("plugin Get + Mount (what publish asks of it)", plugin_mounts);
        let plugin_unmount = show("plugin Unmount (what unpublish asks of it)", plugin_unmounts);
        println!(
            "overhead over the plugin: publish {:+.0} µs ({:+.0} µs on one connection), unpublish {:+.0} µs ({:+.0} µs)",
            publish_new - plugin_mount,
            publish_kept - plugin_mount,
            unpublish_new - plugin_unmount,
            unpublish_kept - plugin_unmount
        );

        // Many volumes at once, as csi-provisioner's 100 workers would send them.
        let started = Instant::now();
        let calls = (0..volumes).map(|n| {
            let mut controller = controller.clone();
            let request = create(format!("pvc-many-{n}"));
            async move { controller.create_volume(request).await.map(|_| ()) }
        });
        let failed = futures::future::join_all(calls).await.into_iter().filter(Result::is_err).count();
        let created = started.elapsed();
        let started = Instant::now();
        let calls = (0..volumes).map(|n| {
            let mut controller = controller.clone();
            let request = DeleteVolumeRequest { volume_id: format!("pvc-many-{n}"), ..Default::default() };
            async move { controller.delete_volume(request).await.map(|_| ()) }
        });
        let failed_deletes = futures::future::join_all(calls).await.into_iter().filter(Result::is_err).count();
        let deleted = started.elapsed();
        println!(
            "{volumes} concurrent CreateVolume: {:.2} s ({failed} failed); {volumes} concurrent DeleteVolume: {:.2} s ({failed_deletes} failed)",
            created.as_secs_f64(),
            deleted.as_secs_f64()
        );
        println!("dory-csi RSS: idle {} KiB, peak {} KiB", idle_rss, rss_kb(pid, "VmHWM"));
        let _ = child.kill();
        let _ = child.wait();
    });
}
