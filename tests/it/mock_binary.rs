//! The `dory-mock-plugin` binary, run as a separate process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dory_backend_docker::{PluginAddress, PluginClient, PluginError};
use dory_core::CreateOptions;
use tokio::process::{Child, Command};

use crate::support::{binary, fast_policy, id, vol, wait_until};

struct MockProcess {
    child: Child,
    socket: PathBuf,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl MockProcess {
    async fn spawn(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("plugins/mock.sock");
        let root = dir.path().join("volumes");
        let child = Command::new(binary("dory-mock-plugin"))
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let ready =
            wait_until(Duration::from_secs(10), || std::os::unix::net::UnixStream::connect(&socket).is_ok()).await;
        assert!(ready, "dory-mock-plugin listens on {}", socket.display());
        Self { child, socket, root, _dir: dir }
    }

    fn client(&self) -> PluginClient {
        PluginClient::new(PluginAddress::Unix(self.socket.clone()), fast_policy())
    }
}

#[tokio::test]
async fn serves_the_whole_lifecycle_and_stops_on_sigterm() {
    let mut plugin = MockProcess::spawn(&[]).await;
    let client = plugin.client();
    client.create(&vol("demo"), &CreateOptions::new()).await.unwrap();
    let mountpoint = client.mount(&vol("demo"), &id("pod-1")).await.unwrap();
    assert_eq!(mountpoint, plugin.root.join("demo"));
    std::fs::write(mountpoint.join("f"), "data").unwrap();
    client.unmount(&vol("demo"), &id("pod-1")).await.unwrap();
    assert_eq!(client.list().await.unwrap().len(), 1);

    let pid = nix::unistd::Pid::from_raw(plugin.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), plugin.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert!(!plugin.socket.exists(), "the socket is removed on shutdown");
    assert!(Path::new(&plugin.root.join("demo/f")).exists(), "volume data stays");
}

#[tokio::test]
async fn faults_and_dialects_come_from_flags() {
    let plugin = MockProcess::spawn(&[
        "--fail",
        "create=no space left on pool",
        "--dialect",
        "400",
        "--dialect",
        "list=garbage",
    ])
    .await;
    let client = plugin.client();
    let err = client.create(&vol("v"), &CreateOptions::new()).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("create of volume \"v\" failed: no space left on pool (HTTP 400)"), "{err}");
    let err = client.list().await.unwrap_err();
    assert!(matches!(err, PluginError::Malformed { .. }), "{err}");
}

#[tokio::test]
async fn a_delayed_plugin_is_slow_for_that_operation_only() {
    let plugin = MockProcess::spawn(&["--delay", "mount=600"]).await;
    let client = plugin.client();
    client.create(&vol("v"), &CreateOptions::new()).await.unwrap();
    let started = std::time::Instant::now();
    client.mount(&vol("v"), &id("p")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
}

#[tokio::test]
async fn bad_flags_are_explained() {
    let output = Command::new(binary("dory-mock-plugin"))
        .args(["--socket", "/tmp/x.sock", "--fail", "explode=boom"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown operation \"explode\"; expected one of create, remove, mount"), "{stderr}");

    let output = Command::new(binary("dory-mock-plugin")).arg("--version").output().await.unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("dory-mock-plugin "));
}
