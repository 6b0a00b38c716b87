//! The README's front door: `scripts/demo` runs the whole flow on the mock
//! backend (FlexVolume, doryd, then CSI) and leaves nothing behind.

use std::path::Path;
use std::process::Command;

use crate::support::require_root;

#[test]
fn the_readme_demo_runs_the_whole_flow_and_cleans_up() {
    require_root("the demo's bind mounts");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // scripts/test has built the binaries; building again from inside the
    // test run would only rebuild for other features.
    let output =
        Command::new(root.join("scripts/demo")).env("DORY_DEMO_NO_BUILD", "1").current_dir(root).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    for expected in [
        r#"{"status":"Success","capabilities":{"attach":false,"selinuxRelabel":true}}"#,
        "wrote ",
        "kubelet's rmdir succeeded",
        "pod B reads: hello from pod A",
        "is Bound to pvc-",
        r#""driver": "dory/mock""#,
        "HTTP 404 (deleted); volume directory removed",
        // The CSI walk: dory-csi, called as csi-provisioner and kubelet call it.
        r#"GetPluginInfoResponse { name: "mock.dory.io""#,
        "ProbeResponse { ready: Some(true) }",
        r#"capacity_bytes: 2147483648, volume_id: "pvc-csi-demo""#,
        r#""options":{"size":"2","tier":"gold"}"#,
        "volume_condition: Some(VolumeCondition { abnormal: false",
        "/pods/pod-d-uid/volumes/kubernetes.io~csi/pvc-csi-demo/mount removed",
        "CSI pod E reads: hello over CSI",
        "CSI volume pvc-csi-demo removed by the plugin",
        "demo done",
    ] {
        assert!(text.contains(expected), "demo output lacks {expected:?}:\n{text}");
    }
    let replies = text.lines().filter(|line| *line == r#"{"status":"Success"}"#).count();
    assert_eq!(replies, 6, "three mounts and three unmounts:\n{text}");
    let work = text
        .lines()
        .find_map(|line| line.strip_prefix("listening on "))
        .and_then(|socket| socket.split("/run/").next())
        .expect("the demo names its socket");
    assert!(!Path::new(work).exists(), "{work} removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(work), "no mount left under {work}");
}
