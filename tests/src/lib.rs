//! Test infrastructure shared by Dory's integration tests and benchmarks.
//!
//! [`fake_apiserver`] stands in for the one real part that cannot run here,
//! the Kubernetes API server.

pub mod fake_apiserver;
pub mod pv_controller;

/// A process's memory figure from `/proc/<pid>/status` in KiB (`VmRSS`,
/// `VmHWM`, ...), for the benchmarks; 0 when it cannot be read.
pub fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
