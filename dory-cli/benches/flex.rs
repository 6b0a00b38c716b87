//! Benchmark of the `dory` driver exec'd as kubelet execs it, against the
//! mock backend served as a Docker volume plugin on a unix socket in this
//! process. Prints median and p99 wall time of `init`, `mount` and
//! `unmount`, of the bare plugin round trips those verbs make (timed in the
//! same run with the same client code), and the driver's peak RSS; then
//! `mount` and `unmount` again on a busy node, with
//! `DORY_BENCH_BUSY_MOUNTS` (default 1000) extra mounts in the table.
//!
//! Run as root (mount needs it): `scripts/bench` (static release build, as
//! shipped) or `cargo bench -p dory-cli --bench flex` (this build's binary).
//! `DORY_BENCH_ITERATIONS` sets the sample count (default 300);
//! `DORY_BENCH_BASELINE` names another driver binary whose `mount` and
//! `unmount` are timed in the same loop (before/after figures).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dory_backend_docker::{CallPolicy, PluginAddress, PluginClient, PluginServer, ServerOptions, bind_socket};
use dory_backend_mock::MockBackend;
use dory_core::{CreateOptions, MountId, VolumeName};

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("flex bench: needs root for bind mounts");
        std::process::exit(1);
    }
    let iterations: usize = std::env::var("DORY_BENCH_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    let work = tempfile::tempdir().expect("temp dir");
    let socket = work.path().join("plugin.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let backend = Arc::new(MockBackend::new(work.path().join("volumes")).unwrap());
    let listener = runtime.block_on(bind_socket(&socket)).unwrap();
    let server = PluginServer::new(backend, ServerOptions::default());
    runtime.spawn(server.serve(listener, std::future::pending()));

    // Install the driver as kubelet finds it.
    let driver_dir = work.path().join("exec/dory~bench");
    std::fs::create_dir_all(&driver_dir).unwrap();
    let executable = driver_dir.join("bench");
    // The binary under test: DORY_BENCH_BINARY (scripts/bench passes the
    // static release build, as shipped), else this build's `dory`.
    let binary = std::env::var("DORY_BENCH_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dory").to_owned());
    std::fs::copy(&binary, &executable).unwrap();
    let config = serde_json::json!({
        "dockerVolumePluginSocketPath": socket,
        "logFilePath": work.path().join("log/dory.log"),
        "stateDir": work.path().join("state"),
    });
    std::fs::write(driver_dir.join("bench.json"), config.to_string()).unwrap();
    // The same driver with its records on tmpfs, where fsync costs nothing:
    // the difference to `mount` is the synced write of the mount record
    // that a reboot-safe state dir costs on this disk.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().expect("temp dir"));
    let tmpfs_dir = work.path().join("exec/dory~benchshm");
    std::fs::create_dir_all(&tmpfs_dir).unwrap();
    let tmpfs_executable = tmpfs_dir.join("bench");
    std::fs::copy(&binary, &tmpfs_executable).unwrap();
    // An optional second driver binary, timed in the same loop (for
    // before/after figures): DORY_BENCH_BASELINE.
    let baseline = std::env::var("DORY_BENCH_BASELINE").ok();
    let baseline_executable = work.path().join("exec/dory~baseline/baseline");
    if let Some(path) = &baseline {
        std::fs::create_dir_all(baseline_executable.parent().unwrap()).unwrap();
        std::fs::copy(path, &baseline_executable).unwrap();
        std::fs::write(baseline_executable.with_extension("json"), config.to_string()).unwrap();
    }
    let mut tmpfs_config = config.clone();
    tmpfs_config["stateDir"] = serde_json::json!(shm.path().join("state"));
    std::fs::write(tmpfs_dir.join("bench.json"), tmpfs_config.to_string()).unwrap();

    let volume = "bench-vol";
    let client = || PluginClient::new(PluginAddress::Unix(socket.clone()), CallPolicy::default());
    let name = VolumeName::new(volume).unwrap();
    runtime.block_on(client().create(&name, &CreateOptions::new())).unwrap();

    let mut exec_baseline = Vec::new();
    let mut init = Vec::new();
    let mut mount = Vec::new();
    let mut unmount = Vec::new();
    let mut plugin_mount = Vec::new();
    let mut plugin_unmount = Vec::new();
    let mut tmpfs_mount = Vec::new();
    let mut tmpfs_unmount = Vec::new();
    let mut baseline_mount = Vec::new();
    let mut baseline_unmount = Vec::new();
    for i in 0..iterations {
        exec_baseline.push(time(|| {
            Command::new("/bin/true").status().unwrap();
        }));
        init.push(time(|| run(&executable, &["init"])));

        let (m, u) = mount_and_unmount(&executable, work.path(), volume, &format!("pod-{i}"));
        mount.push(m);
        unmount.push(u);
        let (m, u) = mount_and_unmount(&tmpfs_executable, work.path(), volume, &format!("shm-pod-{i}"));
        tmpfs_mount.push(m);
        tmpfs_unmount.push(u);
        if baseline.is_some() {
            let (m, u) = mount_and_unmount(&baseline_executable, work.path(), volume, &format!("base-pod-{i}"));
            baseline_mount.push(m);
            baseline_unmount.push(u);
        }

        // The same plugin calls, bare: what `mount` sends (Get, Mount; the
        // driver no longer asks Capabilities) and what `unmount` sends
        // (Unmount), on a fresh connection.
        let id = MountId::new(format!("bare-{i}")).unwrap();
        plugin_mount.push(runtime.block_on(async {
            let started = Instant::now();
            let c = client();
            c.get(&name).await.unwrap();
            c.mount(&name, &id).await.unwrap();
            started.elapsed()
        }));
        plugin_unmount.push(runtime.block_on(async {
            let started = Instant::now();
            client().unmount(&name, &id).await.unwrap();
            started.elapsed()
        }));
    }

    // Peak RSS per driver process, from GNU time's wait4: getrusage of our
    // own children would report this (larger) bench process, whose pages a
    // spawned child holds until it execs.
    let mut rss_kb = 0u64;
    for i in 0..20 {
        let dir = work.path().join(format!("kubelet/pods/rss-{i}/volumes/dory~bench/{volume}"));
        std::fs::create_dir_all(&dir).unwrap();
        let options = serde_json::json!({"kubernetes.io/pvOrVolumeName": volume}).to_string();
        for args in
            [vec!["init"], vec!["mount", dir.to_str().unwrap(), &options], vec!["unmount", dir.to_str().unwrap()]]
        {
            let output = Command::new("/usr/bin/time")
                .args(["-f", "%M"])
                .arg(&executable)
                .args(&args)
                .output()
                .expect("GNU time (apt install time)");
            let text = String::from_utf8_lossy(&output.stderr);
            rss_kb = rss_kb.max(text.trim().lines().last().and_then(|l| l.parse().ok()).unwrap_or(0));
        }
    }
    // A busy node: kubelet hosts have hundreds to thousands of mounts
    // (secrets, projected volumes, overlays). Add them in a private mount
    // namespace of this thread, which the driver processes inherit.
    let busy_mounts: usize = std::env::var("DORY_BENCH_BUSY_MOUNTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let (mut busy_mount, mut busy_unmount, table_lines) = {
        use nix::mount::{MsFlags, mount};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare a mount namespace");
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
        for i in 0..busy_mounts {
            let dir = work.path().join(format!("busy/m{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::empty(), Some("size=64k")).unwrap();
        }
        let table_lines = std::fs::read_to_string("/proc/self/mountinfo").map(|t| t.lines().count()).unwrap_or(0);
        let (mut busy_mount, mut busy_unmount) = (Vec::new(), Vec::new());
        for i in 0..iterations {
            let (m, u) = mount_and_unmount(&executable, work.path(), volume, &format!("busy-pod-{i}"));
            busy_mount.push(m);
            busy_unmount.push(u);
        }
        for i in 0..busy_mounts {
            nix::mount::umount2(&work.path().join(format!("busy/m{i}")), nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
        (busy_mount, busy_unmount, table_lines)
    };

    println!("dory FlexVolume driver ({binary}), exec'd as kubelet does");
    println!("{iterations} samples each, mock plugin on a unix socket in the bench process");
    println!("{:<44} {:>10} {:>10}", "", "median", "p99");
    for (label, samples) in [
        ("exec of /bin/true (the floor)", &mut exec_baseline),
        ("init", &mut init),
        ("mount (get, plugin Mount, bind)", &mut mount),
        ("unmount (unbind, plugin Unmount)", &mut unmount),
        ("mount, records on tmpfs (no fsync cost)", &mut tmpfs_mount),
        ("unmount, records on tmpfs", &mut tmpfs_unmount),
        ("plugin only: Get+Mount", &mut plugin_mount),
        ("plugin only: Unmount", &mut plugin_unmount),
        ("mount, busy node", &mut busy_mount),
        ("unmount, busy node", &mut busy_unmount),
    ] {
        samples.sort();
        println!("{label:<44} {:>7.3} ms {:>7.3} ms", ms(percentile(samples, 50)), ms(percentile(samples, 99)));
    }
    if let Some(path) = &baseline {
        baseline_mount.sort();
        baseline_unmount.sort();
        println!("baseline {path}");
        for (label, samples, ours) in
            [("baseline mount", &baseline_mount, &mount), ("baseline unmount", &baseline_unmount, &unmount)]
        {
            let (median, p99) = (ms(percentile(samples, 50)), ms(percentile(samples, 99)));
            let ratio = ms(percentile(ours, 50)) / median;
            println!("{label:<44} {median:>7.3} ms {p99:>7.3} ms   this build / baseline: {ratio:.3}");
        }
    }
    let over = |a: &[Duration], b: &[Duration]| ms(percentile(a, 50)) - ms(percentile(b, 50));
    println!("mount overhead over the plugin (medians)     {:>7.3} ms", over(&mount, &plugin_mount));
    println!("unmount overhead over the plugin (medians)   {:>7.3} ms", over(&unmount, &plugin_unmount));
    println!("busy node: {table_lines} mounts in the driver's mount table");
    println!("mount overhead over the plugin, busy node    {:>7.3} ms", over(&busy_mount, &plugin_mount));
    println!("unmount overhead over the plugin, busy node  {:>7.3} ms", over(&busy_unmount, &plugin_unmount));
    println!("peak RSS of one driver process (init/mount/unmount) {:>6.2} MB", rss_kb as f64 / 1024.0);
}

/// One kubelet-style mount and unmount of `volume` for `pod`, timed.
fn mount_and_unmount(executable: &Path, work: &Path, volume: &str, pod: &str) -> (Duration, Duration) {
    let dir = work.join(format!("kubelet/pods/{pod}/volumes/dory~bench/{volume}"));
    std::fs::create_dir_all(&dir).unwrap();
    let options = serde_json::json!({
        "kubernetes.io/fsType": "", "kubernetes.io/readwrite": "rw",
        "kubernetes.io/pvOrVolumeName": volume, "kubernetes.io/pod.uid": pod,
    })
    .to_string();
    let mount = time(|| run(executable, &["mount", dir.to_str().unwrap(), &options]));
    let unmount = time(|| run(executable, &["unmount", dir.to_str().unwrap()]));
    std::fs::remove_dir(&dir).unwrap();
    (mount, unmount)
}

fn run(executable: &Path, args: &[&str]) {
    let output = Command::new(executable).args(args).stdin(Stdio::null()).output().unwrap();
    let reply = String::from_utf8_lossy(&output.stdout);
    assert!(reply.contains("\"Success\""), "{args:?}: {reply}");
}

fn time(work: impl FnOnce()) -> Duration {
    let started = Instant::now();
    work();
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[((sorted.len() - 1) * p) / 100]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
