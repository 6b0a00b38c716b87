//! Our client against a real third-party plugin: buttervolume (BTRFS
//! subvolumes), started by `scripts/test` on a loop-mounted btrfs.
//!
//! `DORY_BUTTERVOLUME_SOCKET` names its socket. Without it these tests fail
//! and say how to start the plugin: they are never skipped silently.

use std::path::PathBuf;

use dory_backend_docker::{DockerBackend, DockerBackendSettings, PluginAddress, PluginClient, PluginError};
use dory_core::{CreateOptions, Mounter, Scope, VolumeBackend, error_chain};
use dory_mount::LinuxMounter;

use crate::support::{fast_policy, id, require_root, vol};

fn socket() -> PathBuf {
    match std::env::var_os("DORY_BUTTERVOLUME_SOCKET") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "DORY_BUTTERVOLUME_SOCKET is not set: run the suite with `scripts/test`, which starts buttervolume \
             on a loop-mounted btrfs (or start it by hand: scripts/buttervolume.sh start)"
        ),
    }
}

fn client() -> PluginClient {
    PluginClient::new(PluginAddress::Unix(socket()), fast_policy())
}

/// A volume name unique to this test run.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000
    )
}

#[tokio::test]
async fn handshake_and_capabilities() {
    let client = client();
    assert_eq!(client.activate().await.unwrap(), vec!["VolumeDriver".to_string()]);
    assert_eq!(client.capabilities().await.unwrap(), Scope::Local);
}

#[tokio::test]
async fn full_lifecycle_with_a_mount_id() {
    let client = client();
    let name = unique("life");
    let v = vol(&name);
    client.create(&v, &CreateOptions::new()).await.unwrap();
    // buttervolume's Create is idempotent.
    client.create(&v, &CreateOptions::new()).await.unwrap();

    let info = client.get(&v).await.unwrap().expect("created volume is found");
    assert_eq!(info.name, name);
    let mountpoint = info.mountpoint.expect("buttervolume reports a mountpoint");
    assert!(mountpoint.ends_with(&name), "{mountpoint:?}");
    assert!(mountpoint.is_dir());

    let listed: Vec<String> = client.list().await.unwrap().into_iter().map(|v| v.name).collect();
    assert!(listed.contains(&name), "{listed:?}");

    let mounted = client.mount(&v, &id("c0ffee01")).await.unwrap();
    assert_eq!(mounted, mountpoint);
    std::fs::write(mounted.join("hello"), "from dory").unwrap();
    assert_eq!(client.path(&v).await.unwrap(), Some(mountpoint.clone()));
    client.unmount(&v, &id("c0ffee01")).await.unwrap();

    client.remove(&v).await.unwrap();
    assert!(!mountpoint.exists(), "the subvolume is deleted");
    let err = client.remove(&v).await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Refused { message, .. } if message == &format!("{name}: no such volume")),
        "{err}"
    );
}

#[tokio::test]
async fn error_replies_keep_the_plugins_words() {
    let client = client();
    let name = unique("bad");
    let options: CreateOptions = [("copyonwrite".to_string(), "maybe".to_string())].into();
    let err = client.create(&vol(&name), &options).await.unwrap_err();
    assert!(err.to_string().contains("Invalid option for copyonwrite: maybe"), "{err}");
    assert!(err.status().is_none(), "buttervolume reports errors as 200 + Err");

    let err = client.create(&vol("a@b"), &CreateOptions::new()).await.unwrap_err();
    assert!(err.to_string().contains("\"@\" is illegal in a volume name"), "{err}");

    let err = client.get(&vol(&unique("nope"))).await.unwrap_err();
    assert!(err.to_string().ends_with(": no such volume"), "{err}");
    let err = client.mount(&vol(&unique("nope")), &id("x")).await.unwrap_err();
    assert!(err.to_string().contains("no such volume"), "{err}");
}

#[tokio::test]
async fn options_reach_the_plugin() {
    let client = client();
    let name = unique("nocow");
    let options: CreateOptions = [("copyonwrite".to_string(), "false".to_string())].into();
    client.create(&vol(&name), &options).await.unwrap();
    let mountpoint = client.get(&vol(&name)).await.unwrap().unwrap().mountpoint.unwrap();
    // copyonwrite=false is `chattr +C`: the No_COW attribute (FS_NOCOW_FL).
    let output = std::process::Command::new("lsattr").arg("-d").arg(&mountpoint).output().unwrap();
    let attrs = String::from_utf8_lossy(&output.stdout);
    assert!(attrs.split_whitespace().next().unwrap_or_default().contains('C'), "{attrs}");
    client.remove(&vol(&name)).await.unwrap();
}

#[tokio::test]
async fn docker_backend_bind_mounts_a_buttervolume_subvolume() {
    require_root("bind mounts");
    let mut settings = DockerBackendSettings::new(socket().to_str().unwrap());
    settings.policy = fast_policy();
    let backend = DockerBackend::new(settings);
    let name = unique("bind");
    let v = vol(&name);
    assert!(backend.get(&v).await.unwrap().is_none(), "buttervolume's Err on Get means absent");
    backend.create(&v, &CreateOptions::new()).await.unwrap();
    let source = backend.mount(&v, &id("pod-uid-1")).await.unwrap();

    let pod_dir = tempfile::tempdir().unwrap();
    let mounter = LinuxMounter::default();
    mounter.bind(&source, pod_dir.path(), false).unwrap();
    std::fs::write(pod_dir.path().join("through-bind"), "x").unwrap();
    let entry = mounter.mounted_at(pod_dir.path()).unwrap().expect("bind visible in mountinfo");
    assert_eq!(entry.fs_type, "btrfs");
    mounter.unmount(pod_dir.path()).unwrap();
    assert!(source.join("through-bind").exists(), "data written through the bind is in the subvolume");

    backend.unmount(&v, &id("pod-uid-1")).await.unwrap();
    backend.remove(&v).await.unwrap();
    let err = backend.remove(&v).await.unwrap_err();
    assert!(
        error_chain(&err).starts_with(&format!("remove of volume \"{name}\" failed: plugin unix://")),
        "{}",
        error_chain(&err)
    );
}

#[tokio::test]
async fn kubelet_mounts_and_unmounts_a_buttervolume_volume_through_dory() {
    require_root("bind mounts");
    use crate::kubelet::{Kubelet, mount_options};
    let scratch = tempfile::tempdir().unwrap();
    let kubelet = Kubelet::install(Kubelet::docker_config(&socket(), scratch.path()));
    let name = unique("kube");
    let dir = kubelet.pod_dir("pod-bv-1", &name);
    let options = mount_options(&name, "pod-bv-1", &[("compression", "zstd")]);
    kubelet.mount(&dir, &options).expect_success();
    let entry = LinuxMounter::default().mounted_at(&dir).unwrap().expect("bind mounted");
    assert_eq!(entry.fs_type, "btrfs");
    std::fs::write(dir.join("from-pod"), "kept").unwrap();

    // Unmount from the path alone, with the driver's records gone (as after
    // a node restart that cleared /run): the mount table and Get find it.
    std::fs::remove_dir_all(scratch.path().join("state")).unwrap();
    kubelet.unmount(&dir).expect_success();
    assert!(!dir.exists());

    let client = client();
    let mountpoint = client.get(&vol(&name)).await.unwrap().unwrap().mountpoint.unwrap();
    assert_eq!(std::fs::read_to_string(mountpoint.join("from-pod")).unwrap(), "kept");

    // A bad option is refused by the plugin; the reply quotes it.
    let bad = unique("kube-bad");
    let dir = kubelet.pod_dir("pod-bv-2", &bad);
    let message = kubelet.mount(&dir, &mount_options(&bad, "pod-bv-2", &[("copyonwrite", "maybe")])).expect_failure();
    assert!(message.contains("Invalid option for copyonwrite: maybe"), "{message}");
    assert!(!dir.exists());
    client.remove(&vol(&name)).await.unwrap();
}
