//! Stamps the git commit into every binary's `--version` (`DORY_COMMIT` overrides,
//! for builds without a git checkout).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DORY_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("DORY_COMMIT").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=8", "HEAD"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    });
    println!("cargo:rustc-env=DORY_COMMIT={commit}");
}
