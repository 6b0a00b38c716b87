//! Benchmark of `doryd` against the fake API server (with the PV controller
//! emulation) and the mock backend served as a Docker volume plugin:
//! N claims created at once, time until every PV exists and every claim is
//! bound, per-claim latency, deletion time, and doryd's RSS when idle, at
//! peak, and with 10 000 PVs in its caches.
//!
//! Run: `scripts/bench` (builds doryd in release first), or
//! `DORYD=target/release/doryd cargo bench -p dory-tests --bench provision`.
//! `DORY_BENCH_CLAIMS` sets N (default 1000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dory_backend_docker::{PluginServer, ServerOptions, bind_socket};
use dory_backend_mock::MockBackend;
use dory_tests::fake_apiserver::FakeApiServer;
use serde_json::json;

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let claims: usize = std::env::var("DORY_BENCH_CLAIMS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let doryd = std::env::var("DORYD").unwrap_or_else(|_| "target/release/doryd".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let work = tempfile::tempdir().unwrap();
        let api = Arc::new(FakeApiServer::start().await);
        let pv_controller = dory_tests::pv_controller::spawn(api.clone(), Duration::from_millis(50));
        let socket = work.path().join("mock.sock");
        let backend = Arc::new(MockBackend::new(work.path().join("volumes")).unwrap());
        let listener = bind_socket(&socket).await.unwrap();
        tokio::spawn(
            PluginServer::new(backend.clone(), ServerOptions::default()).serve(listener, std::future::pending()),
        );
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

        let mut child = std::process::Command::new(&doryd)
            .arg("--kubeconfig")
            .arg(work.path().join("kubeconfig"))
            .arg("--plugin-dir")
            .arg(work.path().join("plugins"))
            .args(["--leader-election=false", "--metrics-address", "none", "--log-level", "warn"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {doryd} (build it with cargo build --release): {e}"));
        let pid = child.id();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rss = rss_kb(pid, "VmRSS");

        let started = Instant::now();
        let mut created_at = Vec::with_capacity(claims);
        for i in 0..claims {
            api.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": format!("claim-{i}"), "namespace": "default"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "gold",
                         "resources": {"requests": {"storage": "1Gi"}}}}))
                .unwrap();
            created_at.push(Instant::now());
        }
        let mut bound_at: Vec<Option<Instant>> = vec![None; claims];
        let deadline = Instant::now() + Duration::from_secs(300);
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
        let bound = bound_at.iter().filter(|b| b.is_some()).count();
        let mut latencies: Vec<Duration> =
            bound_at.iter().zip(&created_at).filter_map(|(b, c)| b.map(|b| b - *c)).collect();
        latencies.sort();
        let peak_during = rss_kb(pid, "VmHWM");

        let started = Instant::now();
        for i in 0..claims {
            api.delete("v1", "persistentvolumeclaims", "default", &format!("claim-{i}")).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while api.count("v1", "persistentvolumes", |_| true) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all_deleted = started.elapsed();
        let volumes_left = std::fs::read_dir(work.path().join("volumes")).unwrap().count();

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
        let cached_rss = rss_kb(pid, "VmRSS");
        let peak = rss_kb(pid, "VmHWM");
        let _ = child.kill();
        let _ = child.wait();

        let pct = |p: usize| latencies.get(((latencies.len().max(1) - 1) * p) / 100).copied().unwrap_or_default();
        println!("doryd ({doryd}) against the fake API server and the mock plugin");
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
            "RSS idle {:.1} MB, peak while provisioning {:.1} MB",
            idle_rss as f64 / 1024.0,
            peak_during as f64 / 1024.0
        );
        println!(
            "RSS with 10 000 PVs cached {:.1} MB (peak overall {:.1} MB)",
            cached_rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    });
}
