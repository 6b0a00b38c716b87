//! A CSI client for the tests: the real `dory-csi` binary, spawned with the
//! flags the manifests use, in front of the real `dory-mock-plugin` process
//! (or buttervolume), spoken to with tonic over its unix socket, as the
//! sidecars and kubelet do (kubelet dials a new connection per call).

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dory_backend_docker::{PluginAddress, PluginClient};
use dory_csi::proto::controller_client::ControllerClient;
use dory_csi::proto::identity_client::IdentityClient;
use dory_csi::proto::node_client::NodeClient;
use dory_csi::proto::volume_capability::access_mode::Mode;
use dory_csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use dory_csi::proto::*;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::support::{binary, fast_policy, wait_until};

/// The driver name used by the tests (and the manifests).
pub const DRIVER: &str = "btrfs.dory.io";
/// The node id the driver is started with.
pub const NODE: &str = "node-1";

/// A `dory-mock-plugin` process serving on a socket in its own temp dir.
pub struct MockPluginProcess {
    child: Child,
    pub socket: PathBuf,
    pub root: PathBuf,
    _dir: TempDir,
}

impl MockPluginProcess {
    /// A node-local plugin (`--scope local`) unless `extra` says otherwise.
    pub async fn spawn(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("plugins/mock.sock");
        let root = dir.path().join("volumes");
        let child = Self::start_on(&socket, &root, extra).await;
        Self { child, socket, root, _dir: dir }
    }

    /// Stops the plugin and starts it again on the same socket and volumes, with `extra`.
    pub async fn restart(&mut self, extra: &[&str]) {
        self.kill().await;
        let _ = std::fs::remove_file(&self.socket);
        self.child = Self::start_on(&self.socket, &self.root, extra).await;
    }

    async fn start_on(socket: &Path, root: &Path, extra: &[&str]) -> Child {
        let scope: &[&str] = if extra.contains(&"--scope") { &[] } else { &["--scope", "local"] };
        let child = Command::new(binary("dory-mock-plugin"))
            .arg("--socket")
            .arg(socket)
            .arg("--root")
            .arg(root)
            .args(scope)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let ready =
            wait_until(Duration::from_secs(10), || std::os::unix::net::UnixStream::connect(socket).is_ok()).await;
        assert!(ready, "dory-mock-plugin listens on {}", socket.display());
        child
    }

    pub fn client(&self) -> PluginClient {
        PluginClient::new(PluginAddress::Unix(self.socket.clone()), fast_policy())
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// One `dory-csi` process and everything it uses, all under one temp dir.
pub struct Csi {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Csi {
    /// `dory-csi --controller --node` on the docker backend talking to `plugin_socket`.
    pub async fn start(plugin_socket: &Path) -> Self {
        Self::start_with(plugin_socket, json!({}), &[]).await
    }

    /// As [`Csi::start`], with more config keys and flags.
    pub async fn start_with(plugin_socket: &Path, config: Value, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = json!({
            "backend": "docker",
            "dockerVolumePluginSocketPath": plugin_socket,
            "stateDir": dir.path().join("state"),
            "pluginLongTimeoutSeconds": 3,
            "pluginShortTimeoutSeconds": 3,
            "pluginRetrySeconds": 1,
        });
        for (key, value) in config.as_object().unwrap() {
            settings[key] = value.clone();
        }
        // Not next to the state dir: the FlexVolume rule forbids state in the config's directory.
        let config = dir.path().join("etc/dory-csi.json");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, settings.to_string()).unwrap();
        let mut csi = Self {
            socket: dir.path().join("csi/csi.sock"),
            log: dir.path().join("dory-csi.log"),
            config,
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        csi.spawn().await;
        csi
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(binary("dory-csi"))
            .arg(format!("--endpoint=unix://{}", self.socket.display()))
            .args(["--drivername", DRIVER, "--nodeid", NODE, "--controller", "--node", "--config"])
            .arg(&self.config)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut child = child;
        let socket = self.socket.clone();
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(10), || {
            exited = exited || child.try_wait().ok().flatten().is_some();
            exited || std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
        .await;
        assert!(ready && !exited, "dory-csi listens on {}; its log:\n{}", self.socket.display(), self.log_text());
        self.child = Some(child);
    }

    /// Kills the driver (SIGKILL, no cleanup) and starts it again with the same state.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
        self.spawn().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    /// kubelet's publish path for a pod and PV: `<root>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`,
    /// with the parent created (0750) as kubelet does before NodePublishVolume.
    pub fn kubelet_target(&self, pod_uid: &str, pv: &str) -> PathBuf {
        let parent = self.dir.path().join("kubelet/pods").join(pod_uid).join("volumes/kubernetes.io~csi").join(pv);
        std::fs::DirBuilder::new().recursive(true).mode(0o750).create(&parent).unwrap();
        parent.join("mount")
    }

    pub async fn create(
        &self,
        name: &str,
        required_bytes: i64,
        parameters: &[(&str, &str)],
    ) -> Result<Volume, tonic::Status> {
        let request = CreateVolumeRequest {
            name: name.into(),
            capacity_range: (required_bytes > 0).then_some(CapacityRange { required_bytes, limit_bytes: 0 }),
            volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
            parameters: map(parameters),
            ..Default::default()
        };
        Ok(self.controller().await.create_volume(request).await?.into_inner().volume.unwrap())
    }

    /// NodePublishVolume as kubelet sends it for a PV of `pod_uid`.
    pub async fn publish(
        &self,
        volume: &str,
        target: &Path,
        pod_uid: &str,
        read_only: bool,
    ) -> Result<(), tonic::Status> {
        let request = NodePublishVolumeRequest {
            volume_id: volume.into(),
            target_path: target.display().to_string(),
            volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
            readonly: read_only,
            volume_context: pod_context(pod_uid, false),
            ..Default::default()
        };
        self.node().await.node_publish_volume(request).await.map(|_| ())
    }

    pub async fn unpublish(&self, volume: &str, target: &Path) -> Result<(), tonic::Status> {
        let request =
            NodeUnpublishVolumeRequest { volume_id: volume.into(), target_path: target.display().to_string() };
        self.node().await.node_unpublish_volume(request).await.map(|_| ())
    }

    pub async fn delete(&self, volume: &str) -> Result<(), tonic::Status> {
        self.controller()
            .await
            .delete_volume(DeleteVolumeRequest { volume_id: volume.into(), ..Default::default() })
            .await
            .map(|_| ())
    }
}

impl Drop for Csi {
    /// Whatever a failed test left mounted under the temp dir is detached,
    /// so the temp dir can go.
    fn drop(&mut self) {
        detach_mounts_under(self.dir.path());
    }
}

/// Lazily unmounts every mount below `dir`, deepest first.
pub fn detach_mounts_under(dir: &Path) {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> =
        dory_core::parse_mountinfo(&table).into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A tonic channel over the unix socket at `socket`.
pub async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    });
    let endpoint = Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20));
    tokio::time::timeout(Duration::from_secs(10), endpoint.connect_with_connector(connector))
        .await
        .expect("connected in time")
        .expect("connect to dory-csi")
}

pub fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn mount_capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn block_capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

/// The volume context kubelet sends with `podInfoOnMount: true`.
pub fn pod_context(pod_uid: &str, ephemeral: bool) -> HashMap<String, String> {
    map(&[
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("csi.storage.k8s.io/pod.uid", pod_uid),
        ("csi.storage.k8s.io/serviceAccount.name", "default"),
        ("csi.storage.k8s.io/ephemeral", if ephemeral { "true" } else { "false" }),
        ("storage.kubernetes.io/csiProvisionerIdentity", "1700000000000-1234-btrfs.dory.io"),
    ])
}

/// Whether `path` is a mount point in the test's mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    dory_core::parse_mountinfo(&table).iter().any(|m| m.mount_point == path)
}

/// How many mounts the plugin counts for `volume` (the mock reports them in Get's status).
pub async fn plugin_mounts(plugin: &PluginClient, volume: &str) -> Option<u64> {
    let info = plugin.get(&crate::support::vol(volume)).await.unwrap()?;
    info.status.get("mounts").and_then(Value::as_u64)
}

/// Whether the plugin lists `volume`.
pub async fn plugin_has(plugin: &PluginClient, volume: &str) -> bool {
    plugin.list().await.unwrap().iter().any(|v| v.name == volume)
}

/// The options the mock plugin was given for `volume`.
pub async fn plugin_options(plugin: &PluginClient, volume: &str) -> Option<Value> {
    let info = plugin.get(&crate::support::vol(volume)).await.unwrap()?;
    info.status.get("options").cloned()
}

#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code) -> String {
    match result {
        Err(status) if status.code() == code => status.message().to_owned(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}
