//! Benchmark of `doryd` against the fake API server (with the PV controller
//! emulation) and the mock backend served as a Docker volume plugin: N
//! claims created at once, time until every claim is bound, per-claim
//! latency, deletion time, API requests per claim (counted by the fake API
//! server: doryd's requests only, the PV controller emulation reads and
//! writes in-process), 409 conflicts doryd met, and doryd's RSS when idle,
//! at peak, and with 10 000 PVs in its caches.
//!
//! Two runs: with kube-controller-manager's default client rate limit in
//! the PV controller emulation (20 requests/s, burst 30: about four claims
//! per second, the floor of a default cluster), and unlimited (doryd's own
//! costs).
//!
//! Run: `scripts/bench` (builds doryd in release first), or
//! `DORYD=target/release/doryd cargo bench -p dory-tests --bench provision`.
//! `DORY_BENCH_CLAIMS` sets N of the unlimited run (default 1000),
//! `DORY_BENCH_LIMITED_CLAIMS` that of the limited run (default 100).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dory_backend_docker::{PluginServer, ServerOptions, bind_socket};
use dory_backend_mock::MockBackend;
use dory_tests::fake_apiserver::FakeApiServer;
use dory_tests::pv_controller::RateLimit;
use serde_json::json;

use dory_tests::rss_kb;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn metric(address: &str, name: &str) -> u64 {
    let output = std::process::Command::new("curl").args(["-sS", &format!("http://{address}/metrics")]).output();
    let text = output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

async fn run(doryd: &str, claims: usize, limit: RateLimit, cache_pvs: bool) {
    let http_flag = std::env::var("DORY_BENCH_HTTP_FLAG").unwrap_or_else(|_| "--http-endpoint".into());
    let work = tempfile::tempdir().unwrap();
    let api = Arc::new(FakeApiServer::start().await);
    let pv_controller = dory_tests::pv_controller::spawn_with(api.clone(), Duration::from_millis(20), limit);
    let socket = work.path().join("mock.sock");
    let backend = Arc::new(MockBackend::new(work.path().join("volumes")).unwrap());
    let listener = bind_socket(&socket).await.unwrap();
    tokio::spawn(PluginServer::new(backend.clone(), ServerOptions::default()).serve(listener, std::future::pending()));
    std::fs::create_dir_all(work.path().join("plugins/dev.hpe.com~mock")).unwrap();
    std::fs::write(
        work.path().join("plugins/dev.hpe.com~mock/mock.json"),
        json!({"dockerVolumePluginSocketPath": socket}).to_string(),
    )
    .unwrap();
    std::fs::write(work.path().join("kubeconfig"), api.kubeconfig()).unwrap();
    api.create(json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "gold"},
        "provisioner": "dev.hpe.com/mock", "reclaimPolicy": "Delete"}))
        .unwrap();
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };

    let mut child = std::process::Command::new(doryd)
        .arg("--kubeconfig")
        .arg(work.path().join("kubeconfig"))
        .arg("--plugin-dir")
        .arg(work.path().join("plugins"))
        // DORY_BENCH_HTTP_FLAG=--metrics-address measures a doryd from before --http-endpoint.
        .args(["--leader-election=false", &http_flag, &address, "--log-level", "warn"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {doryd} (build it with cargo build --release): {e}"));
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kb(pid, "VmRSS");
    let requests_idle = api.total_requests();

    let started = Instant::now();
    let mut created_at = Vec::with_capacity(claims);
    for i in 0..claims {
        api.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("claim-{i}"), "namespace": "default",
                         // What kubectl apply leaves on every object: doryd need not cache it.
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(600)}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "gold",
                     "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap();
        created_at.push(Instant::now());
    }
    let mut bound_at: Vec<Option<Instant>> = vec![None; claims];
    let deadline = Instant::now() + Duration::from_secs(600);
    while bound_at.iter().any(Option::is_none) && Instant::now() < deadline {
        for claim in api.list("v1", "persistentvolumeclaims") {
            if claim["status"]["phase"] == "Bound" {
                let name = claim["metadata"]["name"].as_str().unwrap();
                let index: usize = name.trim_start_matches("claim-").parse().unwrap();
                bound_at[index].get_or_insert_with(Instant::now);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_bound = started.elapsed();
    // Let the last reconciles (finalizer checks, events) finish before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests_provisioning = api.total_requests() - requests_idle;
    let bound = bound_at.iter().filter(|b| b.is_some()).count();
    let mut latencies: Vec<Duration> =
        bound_at.iter().zip(&created_at).filter_map(|(b, c)| b.map(|b| b - *c)).collect();
    latencies.sort();
    let peak_during = rss_kb(pid, "VmHWM");
    let conflicts = metric(&address, "controller_api_conflicts_total");

    let started = Instant::now();
    let requests_before_delete = api.total_requests();
    for i in 0..claims {
        api.delete("v1", "persistentvolumeclaims", "default", &format!("claim-{i}")).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while api.count("v1", "persistentvolumes", |_| true) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_deleted = started.elapsed();
    let requests_deleting = api.total_requests() - requests_before_delete;
    let volumes_left = std::fs::read_dir(work.path().join("volumes")).unwrap().count();

    let cached = if cache_pvs {
        pv_controller.abort();
        for i in 0..10_000 {
            api.create(
                json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": format!("static-{i}")},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Retain", "flexVolume": {"driver": "other/driver"}},
                "status": {"phase": "Available"}}),
            )
            .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        Some(rss_kb(pid, "VmRSS"))
    } else {
        pv_controller.abort();
        None
    };
    let peak = rss_kb(pid, "VmHWM");
    // SIGTERM, as kubelet stops it; SIGKILL if it does not exit.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    let pct = |p: usize| latencies.get(((latencies.len().max(1) - 1) * p) / 100).copied().unwrap_or_default();
    let per_claim = |n: u64| n as f64 / claims.max(1) as f64;
    match limit {
        RateLimit::Limited { qps, burst } => {
            println!("-- PV controller limited like kube-controller-manager's defaults ({qps} qps, burst {burst})")
        }
        RateLimit::Unlimited => println!("-- PV controller unlimited (doryd's own costs)"),
    }
    println!("{claims} claims created at once: {bound}/{claims} bound in {:.2} s", all_bound.as_secs_f64());
    println!(
        "per-claim time to Bound: p50 {:.0} ms, p99 {:.0} ms",
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3
    );
    println!(
        "deleting all claims: all PVs and volumes gone in {:.2} s ({volumes_left} volumes left)",
        all_deleted.as_secs_f64()
    );
    println!(
        "API requests per claim: {:.1} provisioning, {:.1} deleting; 409 conflicts met: {conflicts}",
        per_claim(requests_provisioning),
        per_claim(requests_deleting)
    );
    println!("RSS idle {:.1} MB, peak while provisioning {:.1} MB", mb(idle_rss), mb(peak_during));
    if let Some(cached) = cached {
        println!("RSS with 10 000 PVs cached {:.1} MB (peak overall {:.1} MB)", mb(cached), mb(peak));
    }
}

fn main() {
    let claims = env_count("DORY_BENCH_CLAIMS", 1000);
    let limited_claims = env_count("DORY_BENCH_LIMITED_CLAIMS", 100);
    let doryd = std::env::var("DORYD").unwrap_or_else(|_| "target/release/doryd".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("doryd ({doryd}) against the fake API server and the mock plugin");
    runtime.block_on(async {
        run(&doryd, limited_claims, RateLimit::KUBE_CONTROLLER_MANAGER, false).await;
        run(&doryd, claims, RateLimit::Unlimited, true).await;
    });
}
