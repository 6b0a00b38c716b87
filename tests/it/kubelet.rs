//! A kubelet emulation: installs `dory` with `dory install`, execs it exactly
//! as kubelet does (argv per verb, Go-style JSON options with kubelet's keys,
//! stdout and stderr captured together and parsed as one JSON document, the
//! exit-code rules) and does what kubelet does around each call (mkdir
//! before mount, rmdir after a failed mount and after unmount).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::binary;

/// The driver directory name used by the emulation.
pub const DRIVER: &str = "dory~test";

/// What kubelet makes of one driver call (driver-call.go semantics).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success(Value),
    NotSupported,
    Failure(String),
}

impl Outcome {
    #[track_caller]
    pub fn expect_success(self) -> Value {
        match self {
            Self::Success(reply) => reply,
            other => panic!("expected Success, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn expect_failure(self) -> String {
        match self {
            Self::Failure(message) => message,
            other => panic!("expected Failure, got {other:?}"),
        }
    }
}

/// One kubelet with its root dir and a plugin dir holding the driver.
pub struct Kubelet {
    pub root: TempDir,
    pub executable: PathBuf,
    pub config_path: PathBuf,
}

impl Kubelet {
    /// Installs the driver with `config` through `dory install`.
    pub fn install(config: Value) -> Self {
        let root = tempfile::tempdir().unwrap();
        let plugin_dir = root.path().join("plugins/volume/exec");
        let config_file = root.path().join("config.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let output = Command::new(binary("dory"))
            .args(["install", "--plugin-dir"])
            .arg(&plugin_dir)
            .args(["--driver", DRIVER, "--config"])
            .arg(&config_file)
            .output()
            .unwrap();
        assert!(output.status.success(), "dory install: {}", String::from_utf8_lossy(&output.stderr));
        let executable = plugin_dir.join(DRIVER).join("test");
        let config_path = plugin_dir.join(DRIVER).join("test.json");
        assert!(executable.is_file() && config_path.is_file());
        Self { root, executable, config_path }
    }

    /// A configuration for the docker backend on `socket`, with logs and
    /// state in `dir` and short plugin time limits.
    pub fn docker_config(socket: &Path, dir: &Path) -> Value {
        json!({
            "backend": "docker",
            "dockerVolumePluginSocketPath": socket,
            "logFilePath": dir.join("log/dory.log"),
            "stateDir": dir.join("state"),
            "pluginLongTimeoutSeconds": 3,
            "pluginShortTimeoutSeconds": 3,
            "pluginRetrySeconds": 1,
        })
    }

    pub fn log_path(&self) -> PathBuf {
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&self.config_path).unwrap()).unwrap();
        PathBuf::from(config["logFilePath"].as_str().unwrap())
    }

    /// `<root>/pods/<uid>/volumes/<driver>/<name>`.
    pub fn pod_dir(&self, pod_uid: &str, volume: &str) -> PathBuf {
        self.root.path().join("kubelet/pods").join(pod_uid).join("volumes").join(DRIVER).join(volume)
    }

    /// Runs the driver with exactly these arguments and interprets the
    /// combined output like kubelet.
    pub fn call(&self, args: &[&str]) -> Outcome {
        let (output, status) = run_combined(Command::new(&self.executable).args(args));
        interpret(args.first().copied().unwrap_or(""), &output, status)
    }

    /// kubelet's SetUp: mkdir 0750, skip if already a mount point (device
    /// differs from the parent's), mount, rmdir on failure.
    pub fn mount(&self, dir: &Path, options: &BTreeMap<String, String>) -> Outcome {
        std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).unwrap();
        if likely_mount_point(dir) {
            return Outcome::Success(json!({"status": "Success", "skipped": true}));
        }
        let outcome = self.call(&["mount", dir.to_str().unwrap(), &go_json(options)]);
        if !matches!(outcome, Outcome::Success(_)) {
            std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("kubelet's rmdir after a failed mount: {e}"));
        }
        outcome
    }

    /// kubelet's TearDown: skip if the dir is gone, unmount, rmdir after
    /// success (which fails unless the driver left the dir empty).
    pub fn unmount(&self, dir: &Path) -> Outcome {
        if !dir.exists() {
            return Outcome::Success(json!({"status": "Success", "skipped": true}));
        }
        let outcome = self.call(&["unmount", dir.to_str().unwrap()]);
        if matches!(outcome, Outcome::Success(_)) {
            std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("kubelet's rmdir after unmount: {e}"));
        }
        outcome
    }
}

/// The options kubelet passes to `mount` for a PV-backed volume.
pub fn mount_options(pv: &str, pod_uid: &str, user: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut options: BTreeMap<String, String> = [
        ("kubernetes.io/fsType", ""),
        ("kubernetes.io/readwrite", "rw"),
        ("kubernetes.io/pvOrVolumeName", pv),
        ("kubernetes.io/pod.name", "web-0"),
        ("kubernetes.io/pod.namespace", "default"),
        ("kubernetes.io/pod.uid", pod_uid),
        ("kubernetes.io/serviceAccount.name", "default"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    // flexVolume.options are applied last and win.
    for (k, v) in user {
        options.insert((*k).to_owned(), (*v).to_owned());
    }
    options
}

/// Go's json.Marshal of a map[string]string: sorted keys, `<`, `>` and `&`
/// escaped.
pub fn go_json(options: &BTreeMap<String, String>) -> String {
    serde_json::to_string(options).unwrap().replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

/// Runs a command with stdout and stderr on one pipe, as Go's CombinedOutput.
pub fn run_combined(command: &mut Command) -> (String, std::process::ExitStatus) {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut child = command.stdin(Stdio::null()).stdout(writer.try_clone().unwrap()).stderr(writer).spawn().unwrap();
    // Drop our copies of the write end (held by `command`) before reading.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut output = String::new();
    reader.read_to_string(&mut output).unwrap();
    let status = child.wait().unwrap();
    (output, status)
}

/// driver-call.go's handleCmdResponse plus the exit-code rules.
pub fn interpret(verb: &str, output: &str, status: std::process::ExitStatus) -> Outcome {
    let reply: Value = serde_json::from_str(output)
        .unwrap_or_else(|e| panic!("{verb}: the combined output is not one JSON document ({e}): {output:?}"));
    let object = reply.as_object().unwrap_or_else(|| panic!("{verb}: reply is not an object: {output:?}"));
    let field = |key: &str| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v);
    if let Some(attached) = field("attached") {
        assert!(attached.is_boolean(), "{verb}: attached must be a bool: {output}");
    }
    if let Some(capabilities) = field("capabilities") {
        assert!(capabilities.is_object(), "{verb}: capabilities must be an object, never null: {output}");
    }
    let status_text = field("status").and_then(Value::as_str).unwrap_or("");
    match status_text {
        "Success" => {
            assert!(status.success(), "{verb}: Success with a non-zero exit is a driver bug (kubelet fails it)");
            Outcome::Success(reply.clone())
        }
        "Not supported" => {
            assert!(status.success(), "{verb}: Not supported should exit 0");
            Outcome::NotSupported
        }
        _ => {
            let message = field("message").and_then(Value::as_str).unwrap_or("").to_owned();
            assert!(!message.is_empty(), "{verb}: a Failure must say why: {output}");
            Outcome::Failure(format!("{verb} command failed, status: {status_text}, reason: {message}"))
        }
    }
}

/// kubelet's "likely not mount point" check: device differs from parent's.
fn likely_mount_point(dir: &Path) -> bool {
    let (Ok(own), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else {
        return false;
    };
    own.dev() != parent.dev()
}
