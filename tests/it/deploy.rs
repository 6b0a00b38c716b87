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
        // Only our binaries (an example pod's `sh -c ...` is not one).
        let Some(command) = trimmed.strip_prefix("command: [\"/usr/local/bin/") else { continue };
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

/// Every manifest: `deploy/*.yaml` and `deploy/csi/*.yaml`.
fn manifests() -> Vec<PathBuf> {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut paths: Vec<PathBuf> = [deploy.clone(), deploy.join("csi")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_flag_in_the_manifests_exists() {
    let mut checked = 0;
    for path in manifests() {
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
    assert_eq!(
        checked, 6,
        "the driver DaemonSet, the doryd Deployment, the per-node doryd DaemonSet, and dory-csi in the CSI \
         controller, node and node-local manifests"
    );
}

#[test]
fn a_wrong_flag_would_be_caught() {
    let output = Command::new(binary("doryd")).args(["--prefx=dory.io", "--help"]).output().unwrap();
    assert!(!output.status.success());
    let output = Command::new(binary("dory")).args(["install", "--log-format=json", "--help"]).output().unwrap();
    assert!(!output.status.success());
    let output = Command::new(binary("dory-csi")).args(["--nodeid=x", "--node-id=x", "--help"]).output().unwrap();
    assert!(!output.status.success());
    let output = Command::new(binary("dory-csi")).args(["--log-format=xml", "--help"]).output().unwrap();
    assert!(!output.status.success());
}

#[test]
fn the_csi_manifests_name_one_driver_consistently() {
    let csi = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/csi");
    let read = |name: &str| std::fs::read_to_string(csi.join(name)).unwrap();
    assert!(read("csidriver.yaml").contains("  name: btrfs.dory.io\n"));
    for manifest in ["controller.yaml", "node.yaml", "node-local.yaml"] {
        assert!(read(manifest).contains("- --drivername=btrfs.dory.io"), "{manifest}");
    }
    for manifest in ["node.yaml", "node-local.yaml"] {
        let text = read(manifest);
        assert!(text.contains("--kubelet-registration-path=/var/lib/kubelet/plugins/btrfs.dory.io/csi.sock"));
        assert!(text.contains("path: /var/lib/kubelet/plugins/btrfs.dory.io\n"), "{manifest}: the socket dir");
        assert!(text.contains("mountPropagation: Bidirectional") && text.contains("privileged: true"), "{manifest}");
    }
    let local = read("node-local.yaml");
    assert!(
        local.contains("- --node-deployment") && local.contains("- --controller") && local.contains("name: NODE_NAME")
    );
    let example = read("example.yaml");
    assert!(example.contains("provisioner: btrfs.dory.io") && example.contains("driver: btrfs.dory.io"));
    assert!(example.contains("volumeBindingMode: WaitForFirstConsumer"));
}

#[test]
fn the_manifests_name_one_driver_consistently() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let read = |name: &str| std::fs::read_to_string(deploy.join(name)).unwrap();
    assert!(read("dory-driver.yaml").contains("- --driver=dory.io~btrfs"));
    assert!(read("doryd.yaml").contains("- --prefix=dory.io"));
    assert!(read("example.yaml").contains("provisioner: dory.io/btrfs"));
}
