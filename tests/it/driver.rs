//! The `dory` driver exec'd the way kubelet does, against our mock plugin
//! served on a real socket, with real bind mounts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use dory_backend_docker::{Dialect, ServerOptions};
use dory_core::{Mounter, Operation};
use dory_mount::LinuxMounter;
use serde_json::json;
use tokio::task::block_in_place;

use crate::kubelet::{Kubelet, Outcome, mount_options};
use crate::support::{MockPlugin, require_root, wait_until};

pub(crate) struct Setup {
    pub(crate) plugin: MockPlugin,
    pub(crate) kubelet: Kubelet,
    pub(crate) _scratch: tempfile::TempDir,
}

pub(crate) async fn setup_with(options: ServerOptions, extra: serde_json::Value) -> Setup {
    require_root("bind mounts");
    let plugin = MockPlugin::with_options(options).await;
    let scratch = tempfile::tempdir().unwrap();
    let mut config = Kubelet::docker_config(&plugin.socket, scratch.path());
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let kubelet = Kubelet::install(config);
    Setup { plugin, kubelet, _scratch: scratch }
}

pub(crate) async fn setup() -> Setup {
    setup_with(ServerOptions::default(), json!({})).await
}

/// Mount counts by pod UID: the driver's mount IDs are `<pod uid>-<hash of
/// the pod volume directory>`.
pub(crate) fn by_pod(counts: BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    counts
        .into_iter()
        .map(|(id, n)| match id.rsplit_once('-') {
            Some((uid, hash)) if hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => (uid.to_owned(), n),
            _ => (id, n),
        })
        .collect()
}

pub(crate) fn is_bind_mounted(dir: &Path) -> bool {
    LinuxMounter::default().mounted_at(dir).unwrap().is_some()
}

pub(crate) fn mounts_at(dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    LinuxMounter::default().mount_table().unwrap().iter().filter(|e| e.mount_point == dir).count()
}

/// Unmounts anything a failed test left behind.
pub(crate) struct Unbind<'a>(pub(crate) &'a Path);
impl Drop for Unbind<'_> {
    fn drop(&mut self) {
        while is_bind_mounted(self.0) {
            if LinuxMounter::default().unmount(self.0).is_err() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_answers_without_touching_the_plugin() {
    let scratch = tempfile::tempdir().unwrap();
    let config = Kubelet::docker_config(&scratch.path().join("no-such-plugin.sock"), scratch.path());
    let kubelet = Kubelet::install(config);
    let reply = block_in_place(|| kubelet.call(&["init"])).expect_success();
    // Relabelling is left to the container runtime, said explicitly.
    assert_eq!(reply, json!({"status": "Success", "capabilities": {"attach": false, "selinuxRelabel": true}}));

    let mut legacy = Kubelet::docker_config(&scratch.path().join("x.sock"), scratch.path());
    legacy["enable1.6"] = json!(true);
    let kubelet = Kubelet::install(legacy);
    assert_eq!(block_in_place(|| kubelet.call(&["init"])).expect_success(), json!({"status": "Success"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_verbs_are_not_supported() {
    let s = setup().await;
    for args in [
        vec!["attach", "{}", "node1"],
        vec!["detach", "pv1", "node1"],
        vec!["isattached", "{}", "node1"],
        vec!["waitforattach", "/dev/x", "{}"],
        vec!["mountdevice", "/mnt/x", "/dev/x", "{}"],
        vec!["unmountdevice", "/mnt/x"],
        vec!["getvolumename", "{}"],
        vec!["expandvolume", "{}", "/mnt/x", "2", "1"],
        vec!["frobnicate"],
    ] {
        assert_eq!(block_in_place(|| s.kubelet.call(&args)), Outcome::NotSupported, "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_writes_through_and_survives_into_another_pod() {
    let s = setup().await;
    let dir_a = s.kubelet.pod_dir("pod-a", "pv-data");
    let _guard = Unbind(&dir_a);
    let options = mount_options("pv-data", "pod-a", &[("size", "2"), ("tier", "gold")]);
    block_in_place(|| s.kubelet.mount(&dir_a, &options)).expect_success();

    assert!(is_bind_mounted(&dir_a));
    let source = s.plugin.backend.root().join("pv-data");
    let created_with: BTreeMap<String, String> = s.plugin.backend.options("pv-data").unwrap();
    assert_eq!(created_with, [("size", "2"), ("tier", "gold")].map(|(k, v)| (k.to_owned(), v.to_owned())).into());
    assert_eq!(by_pod(s.plugin.server.mount_counts("pv-data").await), [("pod-a".to_owned(), 1)].into());
    std::fs::write(dir_a.join("index.html"), "hello from pod-a").unwrap();
    assert_eq!(std::fs::read_to_string(source.join("index.html")).unwrap(), "hello from pod-a");

    block_in_place(|| s.kubelet.unmount(&dir_a)).expect_success();
    assert!(!dir_a.exists(), "kubelet's rmdir succeeded: the driver left it empty");
    assert!(s.plugin.server.mount_counts("pv-data").await.is_empty(), "the plugin mount was released");

    let dir_b = s.kubelet.pod_dir("pod-b", "pv-data");
    let _guard_b = Unbind(&dir_b);
    block_in_place(|| s.kubelet.mount(&dir_b, &mount_options("pv-data", "pod-b", &[]))).expect_success();
    assert_eq!(std::fs::read_to_string(dir_b.join("index.html")).unwrap(), "hello from pod-a");
    block_in_place(|| s.kubelet.unmount(&dir_b)).expect_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mounts_refuse_writes() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("pod-ro", "pv-ro");
    let _guard = Unbind(&dir);
    let options = mount_options("pv-ro", "pod-ro", &[("kubernetes.io/readwrite", "ro")]);
    block_in_place(|| s.kubelet.mount(&dir, &options)).expect_success();
    let err = std::fs::write(dir.join("f"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_and_unmount_are_idempotent() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("pod-i", "pv-i");
    let _guard = Unbind(&dir);
    let options = mount_options("pv-i", "pod-i", &[]);
    block_in_place(|| s.kubelet.mount(&dir, &options)).expect_success();
    // A bind from the same filesystem fools kubelet's check: it calls again.
    block_in_place(|| s.kubelet.call(&["mount", dir.to_str().unwrap(), &crate::kubelet::go_json(&options)]))
        .expect_success();
    assert_eq!(mounts_at(&dir), 1, "no second bind");
    assert_eq!(
        by_pod(s.plugin.server.mount_counts("pv-i").await),
        [("pod-i".to_owned(), 1)].into(),
        "no second plugin Mount"
    );

    block_in_place(|| s.kubelet.call(&["unmount", dir.to_str().unwrap()])).expect_success();
    block_in_place(|| s.kubelet.call(&["unmount", dir.to_str().unwrap()])).expect_success();
    assert!(s.plugin.server.mount_counts("pv-i").await.is_empty());
    std::fs::remove_dir(&dir).unwrap();
    // Unmounting a directory that is gone succeeds too.
    block_in_place(|| s.kubelet.call(&["unmount", dir.to_str().unwrap()])).expect_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmount_works_from_the_mount_table_after_state_is_lost() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("pod-r", "pv-r");
    let _guard = Unbind(&dir);
    block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-r", "pod-r", &[("name", "docker-vol-r")])))
        .expect_success();
    assert!(s.plugin.backend.options("docker-vol-r").is_some(), "the name option names the volume");
    // A node restart that wiped /run, or a state dir lost otherwise.
    std::fs::remove_dir_all(s._scratch.path().join("state")).unwrap();
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    assert!(
        s.plugin.server.mount_counts("docker-vol-r").await.is_empty(),
        "Unmount reached the plugin with the pod ID"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_to_create_names_the_volume_and_the_config() {
    let s = setup_with(ServerOptions::default(), json!({"createVolumes": false})).await;
    let dir = s.kubelet.pod_dir("pod-n", "pv-missing");
    let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-missing", "pod-n", &[]))).expect_failure();
    assert!(message.contains("volume \"pv-missing\" does not exist on node"), "{message}");
    assert!(message.contains("createVolumes is false in"), "{message}");
    assert!(message.contains(s.kubelet.config_path.to_str().unwrap()), "{message}");
    assert!(!dir.exists(), "kubelet removed the empty dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_fail_cleanly_and_a_retry_succeeds() {
    for dialect in [Dialect::Status200, Dialect::Status400, Dialect::Status500] {
        let s = setup_with(ServerOptions { default_dialect: dialect, ..Default::default() }, json!({})).await;
        let dir = s.kubelet.pod_dir("pod-f", "pv-f");
        let _guard = Unbind(&dir);
        s.plugin.backend.faults().fail_times(Operation::Mount, "array offline", 1);
        let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-f", "pod-f", &[]))).expect_failure();
        assert!(message.contains("mount of volume \"pv-f\" failed: plugin unix://"), "{dialect:?}: {message}");
        assert!(
            message.contains("VolumeDriver.Mount: mount of volume \\\"pv-f\\\" failed: array offline")
                || message.contains("array offline"),
            "{dialect:?}: {message}"
        );
        assert!(!dir.exists());
        assert!(s.plugin.server.mount_counts("pv-f").await.is_empty());
        block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-f", "pod-f", &[]))).expect_success();
        block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_plugin_is_a_failure_naming_it() {
    let options = ServerOptions { dialects: [(Operation::Get, Dialect::Garbage)].into(), ..Default::default() };
    let s = setup_with(options, json!({})).await;
    let dir = s.kubelet.pod_dir("pod-g", "pv-g");
    let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-g", "pod-g", &[]))).expect_failure();
    assert!(message.contains("sent an invalid VolumeDriver.Get reply"), "{message}");
    assert!(message.contains(s.plugin.socket.to_str().unwrap()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_mountpoint_is_refused_and_the_plugin_mount_undone() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("pod-u", "pv-u");
    let _guard = Unbind(&dir);
    for (lie, complaint) in [
        ("relative/dir", r#"mounted volume "pv-u" at "relative/dir", which is not an absolute path"#),
        ("/", r#"mounted volume "pv-u" at "/", which is the host's root directory"#),
        ("", "sent an invalid VolumeDriver.Mount reply: no Mountpoint in a successful reply"),
    ] {
        s.plugin.backend.faults().lie_about_mountpoint(Some(lie.into()));
        let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-u", "pod-u", &[]))).expect_failure();
        assert!(message.contains(complaint), "{message}");
        assert!(!is_bind_mounted(&dir), "nothing bound for {lie:?}");
        assert_eq!(s.plugin.backend.mount_count("pv-u"), 0, "plugin Unmount balanced the Mount for {lie:?}");
    }
    s.plugin.backend.faults().lie_about_mountpoint(None);
    block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-u", "pod-u", &[]))).expect_success();
    assert!(is_bind_mounted(&dir));
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    assert_eq!(s.plugin.backend.mount_count("pv-u"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_mount_reply_is_a_failure_and_the_mount_is_undone() {
    let options = ServerOptions { dialects: [(Operation::Mount, Dialect::Garbage)].into(), ..Default::default() };
    let s = setup_with(options, json!({})).await;
    let dir = s.kubelet.pod_dir("pod-j", "pv-j");
    let _guard = Unbind(&dir);
    let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-j", "pod-j", &[]))).expect_failure();
    assert!(message.contains("sent an invalid VolumeDriver.Mount reply"), "{message}");
    assert!(!is_bind_mounted(&dir));
    assert_eq!(s.plugin.backend.mount_count("pv-j"), 0, "the acknowledged Mount was undone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_plugin_fails_within_the_configured_bound() {
    let s =
        setup_with(ServerOptions::default(), json!({"pluginLongTimeoutSeconds": 1, "pluginShortTimeoutSeconds": 1}))
            .await;
    s.plugin.backend.faults().delay(Operation::Mount, Duration::from_secs(30));
    let dir = s.kubelet.pod_dir("pod-h", "pv-h");
    let started = Instant::now();
    let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-h", "pod-h", &[]))).expect_failure();
    // The Mount's limit, then the limit of the Unmount that tries to undo it.
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert!(message.contains("did not answer VolumeDriver.Mount within 1s"), "{message}");
    assert!(message.contains("Unmount"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_plugin_fails_quickly_with_its_address() {
    let mut s = setup_with(ServerOptions::default(), json!({"pluginRetrySeconds": 0})).await;
    s.plugin.stop().await;
    let dir = s.kubelet.pod_dir("pod-d", "pv-d");
    let started = Instant::now();
    let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-d", "pod-d", &[]))).expect_failure();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(message.contains(&format!("cannot reach plugin unix://{}", s.plugin.socket.display())), "{message}");
    std::fs::remove_file(&s.plugin.socket).unwrap();
    let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-d", "pod-d", &[]))).expect_failure();
    assert!(message.contains("No such file or directory"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bind_releases_the_plugin_mount() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("pod-b", "pv-b");
    let _guard = Unbind(&dir);
    block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-b", "pod-b", &[]))).expect_success();
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    // The plugin now hands out a mountpoint that does not exist.
    std::fs::remove_dir(s.plugin.backend.root().join("pv-b")).unwrap();
    let message = block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-b", "pod-b", &[]))).expect_failure();
    assert!(message.contains("which cannot be used (No such file or directory"), "{message}");
    assert!(message.contains("refusing to bind it"), "{message}");
    assert!(s.plugin.server.mount_counts("pv-b").await.is_empty(), "plugin Unmount was called");
    assert_eq!(s.plugin.backend.mount_count("pv-b"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_mid_mount_is_recovered_by_the_next_call() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("pod-k", "pv-k");
    let _guard = Unbind(&dir);
    block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-k", "pod-k", &[]))).expect_success();
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    std::fs::create_dir_all(&dir).unwrap();

    s.plugin.backend.faults().delay(Operation::Mount, Duration::from_millis(400));
    let json = crate::kubelet::go_json(&mount_options("pv-k", "pod-k", &[]));
    let mut child = std::process::Command::new(&s.kubelet.executable)
        .args(["mount", dir.to_str().unwrap(), &json])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let counted = wait_until(Duration::from_secs(5), || s.plugin.backend.mount_count("pv-k") == 0).await;
    assert!(counted);
    tokio::time::sleep(Duration::from_millis(150)).await;
    child.kill().unwrap(); // SIGKILL: no cleanup possible
    child.wait().unwrap();
    // The plugin finishes the Mount the dead driver asked for.
    assert!(wait_until(Duration::from_secs(3), || s.plugin.backend.mount_count("pv-k") == 1).await);
    assert!(!is_bind_mounted(&dir));

    s.plugin.backend.faults().clear_all();
    block_in_place(|| s.kubelet.call(&["mount", dir.to_str().unwrap(), &json])).expect_success();
    assert_eq!(
        by_pod(s.plugin.server.mount_counts("pv-k").await),
        [("pod-k".to_owned(), 1)].into(),
        "balanced, not doubled"
    );
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    assert!(s.plugin.server.mount_counts("pv-k").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_call_promptly_with_a_failure() {
    let s = setup().await;
    s.plugin.backend.faults().delay(Operation::Mount, Duration::from_secs(3));
    let dir = s.kubelet.pod_dir("pod-t", "pv-t");
    let _guard = Unbind(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (outcome, elapsed) = mount_then_sigterm(&s.kubelet, &dir, &mount_options("pv-t", "pod-t", &[])).await;
    let message = outcome.expect_failure();
    assert!(message.contains("interrupted by SIGTERM"), "{message}");
    // 400 ms until the signal, at most 1 s of cleanup: well before the
    // plugin's 3 s answer.
    assert!(elapsed < Duration::from_millis(2500), "ended before the plugin answered: {elapsed:?}");

    // kubelet retries; whatever the dead call left at the plugin is balanced.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.plugin.backend.faults().clear_all();
    block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-t", "pod-t", &[]))).expect_success();
    assert_eq!(by_pod(s.plugin.server.mount_counts("pv-t").await), [("pod-t".to_owned(), 1)].into());
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    assert!(s.plugin.server.mount_counts("pv-t").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_before_the_plugin_mount_only_drops_the_record() {
    let s = setup().await;
    block_in_place(|| s.kubelet.call(&["init"])).expect_success();
    let dir = s.kubelet.pod_dir("pod-u", "pv-u");
    let _guard = Unbind(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The record is written while Get is answered; the signal comes before
    // the Mount is sent, so the plugin has nothing to undo.
    s.plugin.backend.faults().delay(Operation::Get, Duration::from_secs(2));
    let (outcome, _) = mount_then_sigterm(&s.kubelet, &dir, &mount_options("pv-u", "pod-u", &[])).await;
    let message = outcome.expect_failure();
    assert!(message.contains("interrupted by SIGTERM; the partial mount was undone"), "{message}");
    assert!(s.plugin.server.mount_counts("pv-u").await.is_empty(), "no Mount reached the plugin");
    let log = std::fs::read_to_string(s.kubelet.log_path()).unwrap();
    assert!(!log.contains("undoing an unfinished mount"), "an Unmount for a Mount never sent:\n{log}");

    // kubelet retries: nothing is left to undo, and the mount goes through.
    s.plugin.backend.faults().clear_all();
    block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-u", "pod-u", &[]))).expect_success();
    assert_eq!(by_pod(s.plugin.server.mount_counts("pv-u").await), [("pod-u".to_owned(), 1)].into());
    let log = std::fs::read_to_string(s.kubelet.log_path()).unwrap();
    assert!(!log.contains("undoing an unfinished mount"), "{log}");
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();
    assert!(s.plugin.server.mount_counts("pv-u").await.is_empty());
}

/// Runs `mount` as kubelet does, sends the driver SIGTERM 400 ms in, and
/// returns its reply and how long the call took.
async fn mount_then_sigterm(kubelet: &Kubelet, dir: &Path, options: &BTreeMap<String, String>) -> (Outcome, Duration) {
    let json = crate::kubelet::go_json(options);
    let executable = kubelet.executable.clone();
    let dir_arg = dir.to_str().unwrap().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(executable);
        command.args(["mount", &dir_arg, &json]);
        let started = Instant::now();
        let (output, status) = crate::kubelet::run_combined(&mut command);
        (crate::kubelet::interpret("mount", &output, status), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = find_driver_pid(&kubelet.executable).expect("driver running");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    run.await.unwrap()
}

fn find_driver_pid(executable: &Path) -> Option<nix::unistd::Pid> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if std::fs::read_link(entry.path().join("exe")).ok().as_deref() == Some(executable) {
            return Some(nix::unistd::Pid::from_raw(pid));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_volumes_mount_in_parallel_and_one_volume_serializes() {
    let s = setup().await;
    s.plugin.backend.faults().delay(Operation::Mount, Duration::from_millis(600));
    let dirs: Vec<_> = (0..3).map(|i| s.kubelet.pod_dir(&format!("pod-p{i}"), &format!("pv-p{i}"))).collect();
    let _guards: Vec<_> = dirs.iter().map(|d| Unbind(d)).collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let kubelet = &s.kubelet;
                scope.spawn(move || kubelet.mount(dir, &mount_options(&format!("pv-p{i}"), &format!("pod-p{i}"), &[])))
            })
            .collect();
        for handle in handles {
            handle.join().unwrap().expect_success();
        }
    });
    let parallel = started.elapsed();
    assert!(parallel < Duration::from_millis(1500), "3 volumes x 600 ms ran in parallel: {parallel:?}");

    // Two pods, one volume, at once: both mounted, one create, one count each.
    let shared: Vec<_> = (0..2).map(|i| s.kubelet.pod_dir(&format!("pod-s{i}"), "pv-shared")).collect();
    let _shared_guards: Vec<_> = shared.iter().map(|d| Unbind(d)).collect();
    s.plugin.backend.faults().clear_all();
    s.plugin.backend.faults().delay(Operation::Create, Duration::from_millis(300));
    std::thread::scope(|scope| {
        let handles: Vec<_> = shared
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let kubelet = &s.kubelet;
                scope.spawn(move || kubelet.mount(dir, &mount_options("pv-shared", &format!("pod-s{i}"), &[])))
            })
            .collect();
        for handle in handles {
            handle.join().unwrap().expect_success();
        }
    });
    assert_eq!(
        by_pod(s.plugin.server.mount_counts("pv-shared").await),
        [("pod-s0".to_owned(), 1), ("pod-s1".to_owned(), 1)].into()
    );
    for dir in dirs.iter().chain(&shared) {
        block_in_place(|| s.kubelet.unmount(dir)).expect_success();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_and_options_get_one_json_failure() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("pod-x", "pv-x");
    let dir_s = dir.to_str().unwrap();
    for (args, expected) in [
        (vec!["mount"], "mount: expected <pod volume dir> <json options>"),
        (vec!["mount", dir_s], "mount: missing <json options>"),
        (vec!["mount", dir_s, "{not json"], "the options are not valid JSON"),
        (vec!["mount", dir_s, "{}"], "no volume name"),
        (vec!["mount", dir_s, r#"{"kubernetes.io/pvOrVolumeName":"a/b"}"#], "contains '/'"),
        (vec!["mount", dir_s, r#"{"name":"v","kubernetes.io/mounterArgs.FsGroup":"wheel"}"#], "must be a group ID"),
        (vec!["mount", "/not/a/pod/dir", r#"{"name":"v"}"#], "cannot find the pod UID"),
        (vec!["unmount"], "unmount: expected <pod volume dir>"),
        (vec![], "no verb given"),
    ] {
        let message = block_in_place(|| s.kubelet.call(&args)).expect_failure();
        assert!(message.contains(expected), "{args:?}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_fails_every_real_verb_naming_key_and_file() {
    let s = setup().await;
    std::fs::write(&s.kubelet.config_path, r#"{"createVolumes":"sometimes","backend":"mock"}"#).unwrap();
    for args in [vec!["init"], vec!["unmount", "/var/lib/kubelet/pods/u/volumes/d~x/v"]] {
        let message = block_in_place(|| s.kubelet.call(&args)).expect_failure();
        assert!(message.contains(s.kubelet.config_path.to_str().unwrap()), "{message}");
        assert!(
            message.contains("invalid value for \"createVolumes\": expected true or false, found string \"sometimes\""),
            "{message}"
        );
    }
    std::fs::write(&s.kubelet.config_path, r#"{"backend":"ceph"}"#).unwrap();
    let message = block_in_place(|| s.kubelet.call(&["init"])).expect_failure();
    assert!(message.contains("unknown backend \"ceph\"; known backends: docker, mock"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_fs_group_keys_and_secrets_are_accepted_and_secrets_never_logged() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("pod-s", "pv-s");
    let _guard = Unbind(&dir);
    // base64("hunter2-secret") as kubelet passes it.
    let options = mount_options(
        "pv-s",
        "pod-s",
        &[("kubernetes.io/fsGroup", "2000"), ("kubernetes.io/secret/password", "aHVudGVyMi1zZWNyZXQ=")],
    );
    block_in_place(|| s.kubelet.mount(&dir, &options)).expect_success();
    assert_eq!(s.plugin.backend.options("pv-s").unwrap()["password"], "hunter2-secret");
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();

    let dir2 = s.kubelet.pod_dir("pod-s2", "pv-s");
    let _guard2 = Unbind(&dir2);
    let options = mount_options("pv-s", "pod-s2", &[("kubernetes.io/mounterArgs.FsGroup", "3000")]);
    block_in_place(|| s.kubelet.mount(&dir2, &options)).expect_success();
    block_in_place(|| s.kubelet.unmount(&dir2)).expect_success();

    let log = std::fs::read_to_string(s.kubelet.log_path()).unwrap();
    assert!(!log.contains("hunter2") && !log.contains("aHVudGVyMi1zZWNyZXQ="), "a secret reached the log");
    assert!(log.contains("<redacted>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_greppable_and_nothing_lands_in_the_driver_directory() {
    let s = setup().await;
    let dir = s.kubelet.pod_dir("c0ffee-pod", "pv-log");
    let _guard = Unbind(&dir);
    block_in_place(|| s.kubelet.call(&["init"])).expect_success();
    block_in_place(|| s.kubelet.mount(&dir, &mount_options("pv-log", "c0ffee-pod", &[]))).expect_success();
    block_in_place(|| s.kubelet.unmount(&dir)).expect_success();

    let log = std::fs::read_to_string(s.kubelet.log_path()).unwrap();
    let mount_lines: Vec<_> =
        log.lines().filter(|l| l.contains("verb=\"mount\"") || l.contains("verb=mount")).collect();
    assert!(mount_lines.iter().any(|l| l.contains("request")), "{log}");
    assert!(mount_lines.iter().any(|l| l.contains("reply") && l.contains("Success")), "{log}");
    assert!(log.lines().all(|l| l.contains("pid=")), "every line carries the pid:\n{log}");
    assert!(log.lines().any(|l| l.contains("c0ffee-pod") && l.contains("pv-log") && l.contains("mounted")), "{log}");
    let driver_dir = s.kubelet.executable.parent().unwrap();
    let mut names: Vec<_> =
        std::fs::read_dir(driver_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["test", "test.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_config_report_for_people() {
    let s = setup().await;
    let exe = s.kubelet.executable.clone();
    let output = block_in_place(|| std::process::Command::new(&exe).arg("doctor").output().unwrap());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("ok    capabilities   scope global"), "the mock plugin's default scope: {text}");
    assert!(text.contains("ok    list"), "{text}");

    let output = block_in_place(|| std::process::Command::new(&exe).arg("config").output().unwrap());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains(&format!("dockerVolumePluginSocketPath = \"{}\"", s.plugin.socket.display())), "{text}");

    std::fs::write(&s.kubelet.config_path, r#"{"logDebug":3,"factorForConversion":"lots"}"#).unwrap();
    let output = block_in_place(|| std::process::Command::new(&exe).arg("config").output().unwrap());
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(text.contains("problem: invalid value for \"logDebug\": expected true or false, found number 3"), "{text}");
    assert!(text.contains("problem: invalid value for \"factorForConversion\""), "{text}");

    std::fs::write(
        &s.kubelet.config_path,
        r#"{"dockerVolumePluginSocketPath":"/nonexistent.sock","pluginRetrySeconds":0}"#,
    )
    .unwrap();
    let output = block_in_place(|| std::process::Command::new(&exe).arg("doctor").output().unwrap());
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  capabilities"), "{text}");
}

#[test]
fn help_and_version_read_like_a_tool() {
    let output = std::process::Command::new(crate::support::binary("dory")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for needle in ["dory mount <pod dir> <json>", "install", "doctor", "config"] {
        assert!(text.contains(needle), "--help mentions {needle}: {text}");
    }
    let output = std::process::Command::new(crate::support::binary("dory")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("dory 0.1.0 (commit "));
}
