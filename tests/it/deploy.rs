//! The manifests in `deploy/` pass only flags the binaries accept: each
//! container's `args` are parsed by the real binary (with `--help` last, so
//! nothing runs; a flag or value it does not know fails first).

use std::path::PathBuf;
use std::process::Command;

use crate::support::binary;

/// `(binary, args)` of every container in a manifest, read line by line
/// (`command: ["/usr/local/bin/<binary>"]` then an `args:` list).
fn containers(manifest: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut lines = manifest.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        let Some(command) = trimmed.strip_prefix("command: [\"") else { continue };
        let program = command.trim_end_matches("\"]").rsplit('/').next().unwrap_or_default().to_owned();
        let mut args = Vec::new();
        if lines.peek().is_some_and(|next| next.trim() == "args:") {
            lines.next();
            while let Some(next) = lines.peek() {
                let Some(arg) = next.trim().strip_prefix("- ") else { break };
                args.push(arg.trim_matches('"').to_owned());
                lines.next();
            }
        }
        found.push((program, args));
    }
    found
}

#[test]
fn every_flag_in_the_manifests_exists() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&deploy).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (program, args) in containers(&text) {
            assert!(!args.is_empty(), "{}: {program} has args", path.display());
            let output = Command::new(binary(&program)).args(&args).arg("--help").output().unwrap();
            assert!(
                output.status.success(),
                "{}: `{program} {}` is rejected: {}",
                path.display(),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "the driver DaemonSet, the doryd Deployment and the per-node doryd DaemonSet");
}

#[test]
fn a_wrong_flag_would_be_caught() {
    let output = Command::new(binary("doryd")).args(["--prefx=dory.io", "--help"]).output().unwrap();
    assert!(!output.status.success());
    let output = Command::new(binary("dory")).args(["install", "--log-format=json", "--help"]).output().unwrap();
    assert!(!output.status.success());
}

#[test]
fn the_manifests_name_one_driver_consistently() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let read = |name: &str| std::fs::read_to_string(deploy.join(name)).unwrap();
    assert!(read("dory-driver.yaml").contains("- --driver=dory.io~btrfs"));
    assert!(read("doryd.yaml").contains("- --prefix=dory.io"));
    assert!(read("example.yaml").contains("provisioner: dory.io/btrfs"));
}
