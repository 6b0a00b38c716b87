//! The driver configuration every frontend reads: `<driver>.json` (the
//! FlexVolume driver's file, doryd's `--config`, dory-csi's `--config`).
//!
//! Keys of the original Dory keep their meaning. A value of the wrong type is
//! a problem that names the key and the file, never a silent default.
//! Parsing is pure: callers read the file and hand over its contents, so
//! this crate stays free of IO.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::registry::BackendConfig;
use crate::volume::CreateOptions;

/// Configuration keys read by the driver itself (backends read their own).
pub mod keys {
    /// Log file path.
    pub const LOG_FILE: &str = "logFilePath";
    /// Debug logging on or off.
    pub const LOG_DEBUG: &str = "logDebug";
    /// Size at which the log file is rotated.
    pub const LOG_MAX_BYTES: &str = "logMaxBytes";
    /// Drop `kubernetes.io/*` options before Create.
    pub const STRIP_K8S: &str = "stripK8sFromOptions";
    /// Create volumes that do not exist at mount time.
    pub const CREATE_VOLUMES: &str = "createVolumes";
    /// Answer `init` the Kubernetes 1.6 way (no capabilities).
    pub const ENABLE_1_6: &str = "enable1.6";
    /// Probe the backend's Capabilities before each mount.
    pub const SUPPORTS_CAPABILITIES: &str = "supportsCapabilities";
    /// Option names that carry a size (used by doryd).
    pub const STORAGE_RESOURCE_OPTIONS: &str = "listOfStorageResourceOptions";
    /// Bytes per size unit (used by doryd).
    pub const FACTOR_FOR_CONVERSION: &str = "factorForConversion";
    /// Options added to every Create.
    pub const DEFAULT_OPTIONS: &str = "defaultOptions";
    /// Directory for locks and mount records (never inside the driver directory).
    pub const STATE_DIR: &str = "stateDir";
    /// SELinux label the driver applies itself when `selinuxRelabel` is on.
    pub const SELINUX_LABEL: &str = "selinuxLabel";
    /// Relabel volumes in the driver (off: the container runtime relabels,
    /// as FlexVolume's `selinuxRelabel` capability tells kubelet).
    pub const SELINUX_RELABEL: &str = "selinuxRelabel";
    /// Seconds a call waits for another call's lock on the same volume.
    pub const LOCK_TIMEOUT: &str = "lockTimeoutSeconds";
    /// The Create option that names the volume to clone (default `cloneOf`).
    pub const CLONE_OPTION: &str = "cloneOptionName";
    /// The `docker` backend's plugin address; by default the driver's name.
    pub const DOCKER_PLUGIN: &str = "dockerVolumePluginSocketPath";
}

/// Where locks and mount records live unless `stateDir` says otherwise:
/// persistent storage, so records survive a reboot.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dory";

/// How long a call waits for its volume's lock unless `lockTimeoutSeconds`
/// says otherwise.
pub const DEFAULT_LOCK_TIMEOUT_SECONDS: u64 = 60;

/// The effective configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// Whether the file existed.
    pub file_found: bool,
    /// The backend and all keys, for the backend to read.
    pub backend: BackendConfig,
    /// Where logs go.
    pub log_file: PathBuf,
    /// Debug lines on or off.
    pub log_debug: bool,
    /// Rotate the log file when it grows past this size.
    pub log_max_bytes: u64,
    /// Drop `kubernetes.io/*` options before Create.
    pub strip_k8s_options: bool,
    /// Create missing volumes at mount time.
    pub create_volumes: bool,
    /// Answer `init` without capabilities (Kubernetes 1.6/1.7).
    pub enable_1_6: bool,
    /// Probe Capabilities before each mount.
    pub supports_capabilities: bool,
    /// Option names carrying a size (doryd).
    pub storage_resource_options: Vec<String>,
    /// Bytes per size unit (doryd).
    pub factor_for_conversion: u64,
    /// Options added to every Create when the request lacks them.
    pub default_options: CreateOptions,
    /// Locks and mount records.
    pub state_dir: PathBuf,
    /// SELinux label for mounted volumes, when the driver relabels.
    pub selinux_label: String,
    /// Whether the driver relabels volumes itself (default: no, the
    /// container runtime does).
    pub selinux_relabel: bool,
    /// How long a call waits for the lock of its volume.
    pub lock_timeout: std::time::Duration,
    /// The Create option naming the volume a new one is cloned from.
    pub clone_option: String,
}

/// A configuration that could not be used as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration {}: {}", path.display(), problems.join("; "))]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// One line per problem, each naming its key.
    pub problems: Vec<String>,
}

impl DriverConfig {
    /// The defaults, for a configuration file at `path`.
    pub fn defaults(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file_found: false,
            backend: BackendConfig::default(),
            log_file: PathBuf::from("/var/log/dory.log"),
            log_debug: false,
            log_max_bytes: 10 * 1024 * 1024,
            strip_k8s_options: true,
            create_volumes: true,
            enable_1_6: false,
            supports_capabilities: true,
            storage_resource_options: vec!["size".into(), "sizeInGiB".into()],
            factor_for_conversion: 1 << 30,
            default_options: CreateOptions::new(),
            // Persistent: a plugin that keeps attachments across reboots
            // must get its Unmount after one, so the records must survive.
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            selinux_label: "system_u:object_r:container_file_t:s0".into(),
            selinux_relabel: false,
            lock_timeout: std::time::Duration::from_secs(DEFAULT_LOCK_TIMEOUT_SECONDS),
            clone_option: "cloneOf".into(),
        }
    }

    /// The configuration file of a driver executable: its path plus `.json`.
    pub fn path_for_executable(executable: &Path) -> PathBuf {
        let mut path = executable.as_os_str().to_owned();
        path.push(".json");
        PathBuf::from(path)
    }

    /// Parses a configuration file's contents (as `std::fs::read_to_string`
    /// returned them; a missing file means defaults) for the driver named
    /// `driver`, by default the file's stem. Every problem is returned, and
    /// each key with a problem keeps its default.
    pub fn parse(path: &Path, contents: std::io::Result<String>, driver: Option<&str>) -> (Self, Vec<String>) {
        let mut config = Self::defaults(path);
        let problems = match contents {
            Ok(text) => {
                config.file_found = true;
                match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(object)) => config.apply(object),
                    Ok(_) => vec!["expected a JSON object at the top level".into()],
                    Err(err) => vec![format!("not valid JSON: {err}")],
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => vec![format!("cannot read the file: {err}")],
        };
        if let Some(driver) = driver.or_else(|| path.file_stem().and_then(|s| s.to_str())) {
            config.default_plugin_to(driver);
        }
        (config, problems)
    }

    /// As [`DriverConfig::parse`], with any problem an error listing all.
    pub fn checked(path: &Path, contents: std::io::Result<String>, driver: Option<&str>) -> Result<Self, ConfigError> {
        let (config, problems) = Self::parse(path, contents, driver);
        if problems.is_empty() { Ok(config) } else { Err(ConfigError { path: path.to_path_buf(), problems }) }
    }

    /// With the `docker` backend and no plugin configured, the plugin is the
    /// one named like the driver: `<vendor>~nimble/nimble.json` talks to the
    /// plugin `nimble` (`/run/docker/plugins/nimble.sock`, ...), which is also
    /// the original Dory's default for its `nimble` driver.
    fn default_plugin_to(&mut self, driver: &str) {
        if driver.is_empty()
            || self.backend.backend() != "docker"
            || self.backend.settings().contains_key(keys::DOCKER_PLUGIN)
        {
            return;
        }
        self.backend = self.backend.clone().with(keys::DOCKER_PLUGIN, driver);
    }

    /// Reads every driver key through the backend configuration's typed
    /// getters (one implementation of "wrong type names the key").
    fn apply(&mut self, object: serde_json::Map<String, Value>) -> Vec<String> {
        let mut problems = Vec::new();
        let settings = match BackendConfig::from_json(Value::Object(object.clone())) {
            Ok(backend) => backend,
            Err(err) => {
                problems.push(err.to_string());
                BackendConfig::named(crate::registry::DEFAULT_BACKEND)
                    .with_settings(object.into_iter().filter(|(k, _)| k != crate::registry::BACKEND_KEY))
            }
        };
        let p = &mut problems;
        if let Some(path) = take(p, settings.string(keys::LOG_FILE)).filter(|s| !s.is_empty()) {
            self.log_file = PathBuf::from(path);
        }
        for (key, target) in [
            (keys::LOG_DEBUG, &mut self.log_debug),
            (keys::STRIP_K8S, &mut self.strip_k8s_options),
            (keys::CREATE_VOLUMES, &mut self.create_volumes),
            (keys::ENABLE_1_6, &mut self.enable_1_6),
            (keys::SUPPORTS_CAPABILITIES, &mut self.supports_capabilities),
            (keys::SELINUX_RELABEL, &mut self.selinux_relabel),
        ] {
            if let Some(value) = take(p, settings.go_bool(key)) {
                *target = value;
            }
        }
        if let Some(bytes) = take(p, settings.number(keys::LOG_MAX_BYTES)) {
            self.log_max_bytes = bytes.max(4096);
        }
        if let Some(list) = take(p, settings.string_list(keys::STORAGE_RESOURCE_OPTIONS)).filter(|l| !l.is_empty()) {
            self.storage_resource_options = list;
        }
        match take(p, settings.number(keys::FACTOR_FOR_CONVERSION)) {
            Some(0) => p.push(format!("invalid value for {:?}: must be greater than 0", keys::FACTOR_FOR_CONVERSION)),
            Some(factor) => self.factor_for_conversion = factor,
            None => {}
        }
        if let Some(options) = take(p, settings.options(keys::DEFAULT_OPTIONS)) {
            self.default_options = options;
        }
        if let Some(dir) = take(p, settings.string(keys::STATE_DIR)).filter(|s| !s.is_empty()) {
            self.state_dir = PathBuf::from(dir);
        }
        if let Some(label) = take(p, settings.string(keys::SELINUX_LABEL)).filter(|s| !s.is_empty()) {
            self.selinux_label = label;
        }
        match take(p, settings.number(keys::LOCK_TIMEOUT)) {
            Some(0) => p.push(format!("invalid value for {:?}: must be at least 1 second", keys::LOCK_TIMEOUT)),
            Some(seconds) => self.lock_timeout = std::time::Duration::from_secs(seconds),
            None => {}
        }
        if let Some(key) = take(p, settings.string(keys::CLONE_OPTION)).filter(|s| !s.is_empty()) {
            self.clone_option = key;
        }
        self.backend = settings;
        let driver_dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        if !driver_dir.as_os_str().is_empty() {
            for (key, path) in [(keys::LOG_FILE, &self.log_file), (keys::STATE_DIR, &self.state_dir)] {
                if path.starts_with(&driver_dir) {
                    problems.push(format!(
                        "{key:?}: {} is inside the driver directory {}; kubelet re-probes the driver on every write there",
                        path.display(),
                        driver_dir.display()
                    ));
                }
            }
        }
        problems
    }

    /// The configuration as `dory config` prints it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: String| {
            let _ = writeln!(out, "{key:>30} = {value}");
        };
        line("file", format!("{}{}", self.path.display(), if self.file_found { "" } else { " (not found: defaults)" }));
        line("backend", self.backend.backend().to_owned());
        line(keys::LOG_FILE, self.log_file.display().to_string());
        line(keys::LOG_DEBUG, self.log_debug.to_string());
        line(keys::LOG_MAX_BYTES, self.log_max_bytes.to_string());
        line(keys::STRIP_K8S, self.strip_k8s_options.to_string());
        line(keys::CREATE_VOLUMES, self.create_volumes.to_string());
        line(keys::ENABLE_1_6, self.enable_1_6.to_string());
        line(keys::SUPPORTS_CAPABILITIES, self.supports_capabilities.to_string());
        line(keys::STORAGE_RESOURCE_OPTIONS, format!("{:?}", self.storage_resource_options));
        line(keys::FACTOR_FOR_CONVERSION, self.factor_for_conversion.to_string());
        line(keys::DEFAULT_OPTIONS, crate::volume::redacted_options(&self.default_options));
        line(keys::STATE_DIR, self.state_dir.display().to_string());
        line(keys::SELINUX_LABEL, self.selinux_label.clone());
        line(keys::SELINUX_RELABEL, self.selinux_relabel.to_string());
        line(keys::LOCK_TIMEOUT, self.lock_timeout.as_secs().to_string());
        line(keys::CLONE_OPTION, self.clone_option.clone());
        for (key, value) in self.backend.settings() {
            if !is_driver_key(key) && key != crate::registry::BACKEND_KEY {
                let shown = if crate::volume::is_secret_key(key) { "<redacted>".to_owned() } else { value.to_string() };
                line(key, shown);
            }
        }
        out
    }
}

/// A typed read's value, or `None` with its problem recorded.
fn take<T>(problems: &mut Vec<String>, result: crate::Result<Option<T>>) -> Option<T> {
    result.unwrap_or_else(|err| {
        problems.push(err.to_string());
        None
    })
}

fn is_driver_key(key: &str) -> bool {
    [
        keys::LOG_FILE,
        keys::LOG_DEBUG,
        keys::LOG_MAX_BYTES,
        keys::STRIP_K8S,
        keys::CREATE_VOLUMES,
        keys::ENABLE_1_6,
        keys::SUPPORTS_CAPABILITIES,
        keys::STORAGE_RESOURCE_OPTIONS,
        keys::FACTOR_FOR_CONVERSION,
        keys::DEFAULT_OPTIONS,
        keys::STATE_DIR,
        keys::SELINUX_LABEL,
        keys::SELINUX_RELABEL,
        keys::LOCK_TIMEOUT,
        keys::CLONE_OPTION,
    ]
    .contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> (DriverConfig, Vec<String>) {
        DriverConfig::parse(Path::new("/etc/dory/driver.json"), Ok(json.to_owned()), None)
    }

    fn missing() -> std::io::Result<String> {
        Err(std::io::ErrorKind::NotFound.into())
    }

    #[test]
    fn config_redacts_secret_looking_keys_and_defaults_are_persistent() {
        let (config, problems) = load(
            r#"{"backend":"mock","dockerPassphrase":"hunter2","apiAuth":"tok","defaultOptions":{"CREDENTIALS":"c1","size":"1"}}"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let text = config.describe();
        for secret in ["hunter2", "tok", "c1"] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
        assert!(text.contains("<redacted>"), "{text}");
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/dory"), "records must survive a reboot");
        assert!(!config.selinux_relabel, "the container runtime relabels by default");
        assert_eq!(load(r#"{"lockTimeoutSeconds":0}"#).1.len(), 1);
        assert_eq!(load(r#"{"lockTimeoutSeconds":5}"#).0.lock_timeout, std::time::Duration::from_secs(5));
    }

    #[test]
    fn missing_file_means_defaults() {
        let (config, problems) = DriverConfig::parse(Path::new("/nonexistent/x.json"), missing(), None);
        assert!(problems.is_empty());
        assert!(!config.file_found);
        assert_eq!(config.backend.backend(), "docker");
        assert!(config.create_volumes && config.strip_k8s_options && config.supports_capabilities);
    }

    #[test]
    fn every_key_is_read() {
        let (config, problems) = load(
            r#"{"backend":"mock","logFilePath":"/tmp/d.log","logDebug":"True","stripK8sFromOptions":false,
                "createVolumes":"0","enable1.6":true,"supportsCapabilities":false,
                "listOfStorageResourceOptions":["sizeGb"],"factorForConversion":"1000",
                "defaultOptions":[{"mountConflictDelay":30},{"manager":"k8s"}],"stateDir":"/tmp/s","logMaxBytes":5000}"#,
        );
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(config.backend.backend(), "mock");
        assert_eq!(config.log_file, PathBuf::from("/tmp/d.log"));
        assert!(config.log_debug && !config.strip_k8s_options && !config.create_volumes && config.enable_1_6);
        assert!(!config.supports_capabilities);
        assert_eq!(config.storage_resource_options, ["sizeGb"]);
        assert_eq!(config.factor_for_conversion, 1000);
        assert_eq!(config.default_options["mountConflictDelay"], "30");
        assert_eq!(config.default_options["manager"], "k8s");
        assert_eq!(config.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(config.log_max_bytes, 5000);
    }

    #[test]
    fn wrong_types_are_problems_naming_key() {
        let (config, problems) =
            load(r#"{"logDebug":"maybe","factorForConversion":2.5,"logFilePath":7,"defaultOptions":"x","backend":3}"#);
        assert_eq!(problems.len(), 5, "{problems:?}");
        let has = |text: &str| problems.iter().any(|p| p.contains(text));
        assert!(has("invalid value for \"logDebug\": expected true or false, found string \"maybe\""), "{problems:?}");
        assert!(has("\"factorForConversion\"") && has("\"logFilePath\"") && has("\"defaultOptions\""));
        assert!(has("\"backend\""));
        let path = Path::new("/etc/dory/d.json");
        let err = DriverConfig::checked(path, Ok(r#"{"logDebug":"maybe"}"#.into()), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration /etc/dory/d.json: invalid value for \"logDebug\": expected true or false, found string \"maybe\""
        );
        assert!(!config.log_debug);
    }

    #[test]
    fn broken_json_is_a_problem() {
        let (_, problems) = load("{");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("not valid JSON"), "{problems:?}");
    }

    #[test]
    fn logs_and_state_may_not_live_in_the_driver_directory() {
        let path = Path::new("/x/dory~d/d.json");
        let text = serde_json::json!({"logFilePath": "/x/dory~d/d.log"}).to_string();
        let (_, problems) = DriverConfig::parse(path, Ok(text), None);
        assert!(problems[0].contains("inside the driver directory"), "{problems:?}");
    }

    #[test]
    fn the_plugin_defaults_to_the_driver_name() {
        let (config, _) = DriverConfig::parse(Path::new("/x/dory.io~btrfs/btrfs.json"), missing(), None);
        assert_eq!(config.backend.string("dockerVolumePluginSocketPath").unwrap().as_deref(), Some("btrfs"));
        let (config, _) = load(r#"{"dockerVolumePluginSocketPath": "/run/p.sock"}"#);
        assert_eq!(config.backend.string("dockerVolumePluginSocketPath").unwrap().as_deref(), Some("/run/p.sock"));
        let (config, _) = load(r#"{"backend": "mock"}"#);
        assert!(config.backend.string("dockerVolumePluginSocketPath").unwrap().is_none());
        let (config, _) = DriverConfig::parse(Path::new("/etc/doryd.json"), missing(), Some("nimble"));
        assert_eq!(config.backend.string("dockerVolumePluginSocketPath").unwrap().as_deref(), Some("nimble"));
    }

    #[test]
    fn config_path_is_executable_plus_json() {
        assert_eq!(
            DriverConfig::path_for_executable(Path::new("/x/dory~mock/mock")),
            PathBuf::from("/x/dory~mock/mock.json")
        );
    }
}
