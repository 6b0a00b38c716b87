//! The driver on real nodes: reboots, lost plugin replies, hostile
//! mountpoints, submounts, shared volumes and stuck locks. `dory` exec'd as
//! kubelet does, against the mock plugin on a real socket, real mounts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dory_backend_docker::{Dialect, ServerOptions};
use dory_core::{Mounter, Operation};
use dory_mount::LinuxMounter;
use serde_json::json;
use tokio::task::block_in_place;

use crate::driver::{Unbind, by_pod, is_bind_mounted, setup, setup_with};
use crate::kubelet::{Kubelet, mount_options};
use crate::support::{MockPlugin, require_root, wait_until};

/// Unmounts a tmpfs a test mounted, even when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap();
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A reboot keeps /var/lib and wipes the /run tmpfs, binds and all; a
/// plugin of a SAN array keeps its attachments. The records of the default
/// state dir survive it, so kubelet's `unmount` of the reconstructed volume
/// reaches the plugin with the original mount ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmount_after_a_reboot_reaches_the_plugin_with_the_original_id() {
    require_root("bind mounts and the default state dir");
    let plugin = MockPlugin::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let mut config = Kubelet::docker_config(&plugin.socket, scratch.path());
    config.as_object_mut().unwrap().remove("stateDir");
    let kubelet = Kubelet::install(config);
    let volume = format!("pv-reboot-{}", std::process::id());
    let dir = kubelet.pod_dir("pod-reboot", &volume);
    let _guard = Unbind(&dir);
    block_in_place(|| kubelet.mount(&dir, &mount_options(&volume, "pod-reboot", &[]))).expect_success();
    let held = plugin.server.mount_counts(&volume).await;
    assert_eq!(by_pod(held.clone()), [("pod-reboot".to_owned(), 1)].into());

    // The reboot: the bind is gone, so is /run (and an old dory's records).
    LinuxMounter::default().unmount(&dir).unwrap();
    let _ = std::fs::remove_dir_all("/run/dory");
    assert!(!is_bind_mounted(&dir));
    assert_eq!(plugin.server.mount_counts(&volume).await, held, "the plugin still holds the mount");

    block_in_place(|| kubelet.unmount(&dir)).expect_success();
    assert!(
        plugin.server.mount_counts(&volume).await.is_empty(),
        "the plugin got Unmount with the original ID {held:?}"
    );
    assert_eq!(plugin.backend.mount_count(&volume), 0);
    let _ = std::fs::remove_file(Path::new("/var/lib/dory/locks").join(format!("{volume}.lock")));
}

/// A Mount whose reply never arrives usefully (it completes after the
/// client's limit, the connection is reset after the plugin mounted, the
/// reply is huge) may have mounted: the driver undoes it with Unmount, says
/// so, binds nothing, and the plugin ends at 0; a retry then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_whose_reply_is_lost_is_undone() {
    let dialect = |d| ServerOptions { dialects: [(Operation::Mount, d)].into(), ..Default::default() };
    for (case, options, complaint) in [
        ("late", ServerOptions::default(), "did not answer VolumeDriver.Mount within 1s"),
        ("reset", dialect(Dialect::Reset), "broke during VolumeDriver.Mount"),
        ("huge", dialect(Dialect::Huge), "reply larger than"),
    ] {
        let s = setup_with(options, json!({"pluginLongTimeoutSeconds": 1})).await;
        if case == "late" {
            s.plugin.backend.faults().set(
                Operation::Mount,
                dory_backend_mock::Fault { delay: Some(Duration::from_millis(1500)), times: Some(1), error: None },
            );
        }
        let dir = s.kubelet.pod_dir("pod-lost", "pv-lost");
        let _guard = Unbind(&dir);
        let message =
            block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-lost", "pod-lost", &[]))).expect_failure();
        assert!(message.contains(complaint), "{case}: {message}");
        assert!(message.contains("Dory sent Unmount to undo a mount the plugin may have made"), "{case}: {message}");
        assert!(!is_bind_mounted(&dir), "{case}: nothing bound");
        assert!(
            wait_until(Duration::from_secs(3), || s.plugin.backend.mount_count("pv-lost") == 0).await,
            "{case}: the plugin ends at 0, not {}",
            s.plugin.backend.mount_count("pv-lost")
        );
        assert!(s.plugin.server.mount_counts("pv-lost").await.is_empty(), "{case}");
        if case == "late" {
            block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-lost", "pod-lost", &[]))).expect_success();
            assert_eq!(s.plugin.backend.mount_count("pv-lost"), 1, "one Mount, not two");
            block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
            assert_eq!(s.plugin.backend.mount_count("pv-lost"), 0);
        }
    }
}

/// The plugin's mountpoint is resolved before it is judged: what would hand
/// the pod the host, a system directory or another pod's files, or what is
/// not a plain directory, is a Failure naming it, nothing is bound, and the
/// plugin's Mount is undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mountpoints_are_refused_naming_them() {
    let s = setup().await;
    let scratch = s._scratch.path();
    std::os::unix::fs::symlink("/", scratch.join("link-to-root")).unwrap();
    std::os::unix::fs::symlink("/etc", scratch.join("link-to-etc")).unwrap();
    std::fs::write(scratch.join("a-file"), "x").unwrap();
    let other_pod = s.kubelet.pod_dir("pod-other", "theirs");
    std::fs::create_dir_all(&other_pod).unwrap();
    let own_pod_dir = s.kubelet.pod_dir("pod-evil", "pv-evil");
    let inside_own = own_pod_dir.parent().unwrap().join("sibling");
    std::fs::create_dir_all(&inside_own).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        ("/tmp/..".into(), "components"),
        (scratch.join("link-to-root"), "is a symlink"),
        (scratch.join("link-to-etc"), "is a symlink"),
        ("/etc".into(), "a system directory (/etc)"),
        ("/proc".into(), "a system directory (/proc)"),
        ("/usr/lib".into(), "a system directory (/usr)"),
        (scratch.join("a-file"), "is not a directory"),
        (scratch.join("missing"), "cannot be used"),
        (other_pod.clone(), "inside a pod's directory"),
        (inside_own, "inside a pod's directory"),
        (s.kubelet.root.path().to_path_buf(), "contains the pod volume directory"),
        (PathBuf::from("/tmp/evil\nname"), "control characters"),
    ];
    let dir = own_pod_dir;
    let _guard = Unbind(&dir);
    for (lie, complaint) in cases {
        s.plugin.backend.faults().lie_about_mountpoint(Some(lie.clone()));
        let message =
            block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-evil", "pod-evil", &[]))).expect_failure();
        assert!(message.contains(complaint), "{lie:?}: {message}");
        assert!(message.contains("refusing to bind it"), "{lie:?}: {message}");
        assert!(!is_bind_mounted(&dir), "nothing bound for {lie:?}");
        assert_eq!(s.plugin.backend.mount_count("pv-evil"), 0, "the Mount was undone for {lie:?}");
    }
}

/// A mount inside the plugin's mountpoint comes along with the recursive
/// bind; `unmount` must not fail with EBUSY for ever (the pod would stay
/// Terminating), and a read-only mount must be read-only all the way down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submount_in_the_volume_neither_blocks_teardown_nor_stays_writable() {
    let s = setup().await;
    let source = s.plugin.backend.root().join("pv-sub");
    let _tmpfs = Tmpfs::mount(&source.join("inner"));
    for (pod, mode) in [("pod-rw", "rw"), ("pod-ro", "ro")] {
        let dir = s.kubelet.pod_dir(pod, "pv-sub");
        let _guard = Unbind(&dir);
        let options = mount_options("pv-sub", pod, &[("kubernetes.io/readwrite", mode)]);
        block_in_place(|| s.kubelet.mount(&dir, &options)).expect_success();
        assert!(is_bind_mounted(&dir.join("inner")), "{mode}: the submount is visible to the pod");
        let written = std::fs::write(dir.join("inner/f"), "x");
        if mode == "ro" {
            assert_eq!(written.unwrap_err().raw_os_error(), Some(nix::libc::EROFS), "read-only below the top too");
        } else {
            written.unwrap();
        }
        block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
        assert!(!dir.exists(), "{mode}: kubelet's rmdir succeeded");
        assert!(is_bind_mounted(&source.join("inner")), "the plugin's own submount is untouched");
    }
    assert_eq!(s.plugin.backend.mount_count("pv-sub"), 0);
}

/// One pod mounting one volume through two volume entries holds two mounts
/// (two IDs), so the first Unmount does not release the second's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_mounting_one_volume_twice_holds_two_mounts() {
    let s = setup().await;
    let first = s.kubelet.pod_dir("pod-twice", "data");
    let second = s.kubelet.pod_dir("pod-twice", "data-again");
    let (_g1, _g2) = (Unbind(&first), Unbind(&second));
    for dir in [&first, &second] {
        let options = mount_options("data", "pod-twice", &[("name", "shared-twice")]);
        block_in_place(|| s.kubelet.mount(dir, &options)).expect_success();
    }
    let counts = s.plugin.server.mount_counts("shared-twice").await;
    assert_eq!(counts.len(), 2, "two mount IDs: {counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    block_in_place(|| s.kubelet.unmount(&first)).expect_success();
    assert_eq!(s.plugin.server.mount_counts("shared-twice").await.len(), 1, "the second entry still holds it");
    assert!(is_bind_mounted(&second));
    block_in_place(|| s.kubelet.unmount(&second)).expect_success();
    assert!(s.plugin.server.mount_counts("shared-twice").await.is_empty());
}

/// Without records, `unmount` finds the volume from the mount table: with a
/// second pod's bind of the same volume in the table, that bind is not taken
/// for the plugin's mountpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmount_without_records_finds_the_source_when_two_pods_share_a_volume() {
    let s = setup().await;
    let a = s.kubelet.pod_dir("pod-sa", "pv-shared");
    let b = s.kubelet.pod_dir("pod-sb", "pv-shared");
    let (_ga, _gb) = (Unbind(&a), Unbind(&b));
    block_in_place(|| s.kubelet.mount(&a, &mount_options("pv-shared", "pod-sa", &[]))).expect_success();
    block_in_place(|| s.kubelet.mount(&b, &mount_options("pv-shared", "pod-sb", &[]))).expect_success();
    std::fs::remove_dir_all(s._scratch.path().join("state")).unwrap();
    block_in_place(|| s.kubelet.unmount(&a)).expect_success();
    let expected: BTreeMap<String, usize> = [("pod-sb".to_owned(), 1)].into();
    assert_eq!(by_pod(s.plugin.server.mount_counts("pv-shared").await), expected);
    assert!(is_bind_mounted(&b), "the other pod keeps its mount");
    block_in_place(|| s.kubelet.unmount(&b)).expect_success();
    assert!(s.plugin.server.mount_counts("pv-shared").await.is_empty());
}

/// A call stuck holding a volume's lock (on a dead mount, a hung plugin)
/// does not pile every later call up for ever: they fail after the bound,
/// saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_volume_lock_fails_later_calls_after_the_bound() {
    let s = setup_with(ServerOptions::default(), json!({"lockTimeoutSeconds": 1})).await;
    let locks = s._scratch.path().join("state/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let file = std::fs::File::create(locks.join("pv-locked.lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let dir = s.kubelet.pod_dir("pod-l", "pv-locked");
    std::fs::create_dir_all(&dir).unwrap();
    let _guard = Unbind(&dir);
    let started = Instant::now();
    // On a blocking thread, so the bound below can fire while it waits.
    let (executable, target) = (s.kubelet.executable.clone(), dir.clone());
    let json = crate::kubelet::go_json(&mount_options("pv-locked", "pod-l", &[]));
    let call = tokio::task::spawn_blocking(move || {
        let (output, status) = crate::kubelet::run_combined(std::process::Command::new(executable).args([
            "mount",
            target.to_str().unwrap(),
            &json,
        ]));
        crate::kubelet::interpret("mount", &output, status)
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), call).await.expect("the wait for the lock is bounded");
    let message = outcome.unwrap().expect_failure();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(message.contains(r#"volume "pv-locked" is locked by another dory call"#), "{message}");
    assert!(!is_bind_mounted(&dir));
}

/// Volume names the name rules accept (up to 255 bytes) work although
/// `<name>.lock` would be too long for a file name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_name_too_long_for_a_lock_file_name_mounts() {
    let s = setup().await;
    let name = "n".repeat(255);
    let dir = s.kubelet.pod_dir("pod-long", "long");
    let _guard = Unbind(&dir);
    block_in_place(|| s.kubelet.mount(&dir, &mount_options("long", "pod-long", &[("name", &name)]))).expect_success();
    assert_eq!(s.plugin.backend.mount_count(&name), 1);
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    assert_eq!(s.plugin.backend.mount_count(&name), 0);
}
