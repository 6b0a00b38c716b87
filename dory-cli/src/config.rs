//! The driver's configuration: `<driver executable>.json`, read on every call.
//!
//! Keys of the original Dory keep their meaning. A value of the wrong type is
//! a problem that names the key and the file, never a silent default; `dory
//! config` lists every problem and the effective configuration.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use dory_core::{BackendConfig, CreateOptions};
use serde_json::{Map, Value};

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
    /// SELinux label applied to mounted volumes where SELinux is enabled.
    pub const SELINUX_LABEL: &str = "selinuxLabel";
}

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
    /// SELinux label for mounted volumes.
    pub selinux_label: String,
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
            state_dir: PathBuf::from("/run/dory"),
            selinux_label: "system_u:object_r:container_file_t:s0".into(),
        }
    }

    /// The configuration file of a driver executable: its path plus `.json`.
    pub fn path_for_executable(executable: &Path) -> PathBuf {
        let mut path = executable.as_os_str().to_owned();
        path.push(".json");
        PathBuf::from(path)
    }

    /// Loads the file; any problem is an error listing all of them.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_for_driver(path, path.file_stem().and_then(|s| s.to_str()).unwrap_or_default())
    }

    /// Loads a file that configures the driver named `driver`, wherever the
    /// file lives (doryd's `--config`): as [`DriverConfig::load`], with the
    /// plugin defaulting to `driver` instead of the file's name.
    pub fn load_for_driver(path: &Path, driver: &str) -> Result<Self, ConfigError> {
        let (mut config, problems) = Self::read(path);
        config.default_plugin_to(driver);
        if problems.is_empty() { Ok(config) } else { Err(ConfigError { path: path.to_path_buf(), problems }) }
    }

    /// Loads the file, keeping the default of every key that has a problem,
    /// and returns the problems. A missing file is not a problem.
    pub fn load_with_problems(path: &Path) -> (Self, Vec<String>) {
        let (mut config, problems) = Self::read(path);
        if let Some(driver) = path.file_stem().and_then(|s| s.to_str()) {
            config.default_plugin_to(driver);
        }
        (config, problems)
    }

    /// With the `docker` backend and no plugin configured, the plugin is the
    /// one named like the driver: `<vendor>~nimble/nimble.json` talks to the
    /// plugin `nimble` (`/run/docker/plugins/nimble.sock`, ...), which is also
    /// the original Dory's default for its `nimble` driver.
    fn default_plugin_to(&mut self, driver: &str) {
        use dory_backend_docker::keys::SOCKET;
        if driver.is_empty() || self.backend.backend() != "docker" || self.backend.settings().contains_key(SOCKET) {
            return;
        }
        self.backend = self.backend.clone().with(SOCKET, driver);
    }

    fn read(path: &Path) -> (Self, Vec<String>) {
        let mut config = Self::defaults(path);
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return (config, Vec::new()),
            Err(err) => return (config, vec![format!("cannot read the file: {err}")]),
        };
        config.file_found = true;
        let value: Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(err) => return (config, vec![format!("not valid JSON: {err}")]),
        };
        let Value::Object(object) = value else {
            return (config, vec!["expected a JSON object at the top level".into()]);
        };
        let mut problems = Vec::new();
        config.apply(&object, &mut problems);
        (config, problems)
    }

    fn apply(&mut self, object: &Map<String, Value>, problems: &mut Vec<String>) {
        let mut reader = Reader { object, problems };
        match BackendConfig::from_json(Value::Object(object.clone())) {
            Ok(backend) => self.backend = backend,
            Err(err) => reader.problems.push(err.to_string()),
        }
        if let Some(path) = reader.string(keys::LOG_FILE).filter(|s| !s.is_empty()) {
            self.log_file = PathBuf::from(path);
        }
        reader.bool(keys::LOG_DEBUG, &mut self.log_debug);
        if let Some(bytes) = reader.number(keys::LOG_MAX_BYTES) {
            self.log_max_bytes = bytes.max(4096);
        }
        reader.bool(keys::STRIP_K8S, &mut self.strip_k8s_options);
        reader.bool(keys::CREATE_VOLUMES, &mut self.create_volumes);
        reader.bool(keys::ENABLE_1_6, &mut self.enable_1_6);
        reader.bool(keys::SUPPORTS_CAPABILITIES, &mut self.supports_capabilities);
        if let Some(list) = reader.string_list(keys::STORAGE_RESOURCE_OPTIONS).filter(|l| !l.is_empty()) {
            self.storage_resource_options = list;
        }
        if let Some(factor) = reader.number(keys::FACTOR_FOR_CONVERSION) {
            if factor == 0 {
                reader.problem(keys::FACTOR_FOR_CONVERSION, "must be greater than 0");
            } else {
                self.factor_for_conversion = factor;
            }
        }
        if let Some(options) = reader.default_options() {
            self.default_options = options;
        }
        if let Some(dir) = reader.string(keys::STATE_DIR).filter(|s| !s.is_empty()) {
            self.state_dir = PathBuf::from(dir);
        }
        if let Some(label) = reader.string(keys::SELINUX_LABEL).filter(|s| !s.is_empty()) {
            self.selinux_label = label;
        }
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
        line(keys::DEFAULT_OPTIONS, format!("{:?}", self.default_options));
        line(keys::STATE_DIR, self.state_dir.display().to_string());
        line(keys::SELINUX_LABEL, self.selinux_label.clone());
        for (key, value) in self.backend.settings() {
            if !is_driver_key(key) && key != dory_core::registry::BACKEND_KEY {
                line(key, value.to_string());
            }
        }
        out
    }
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
    ]
    .contains(&key)
}

/// Typed reads that record a problem naming the key on a wrong type.
struct Reader<'a> {
    object: &'a Map<String, Value>,
    problems: &'a mut Vec<String>,
}

impl Reader<'_> {
    fn problem(&mut self, key: &str, reason: &str) {
        self.problems.push(format!("{key:?}: {reason}"));
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.object.get(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                let reason = format!("expected a string, found {other}");
                self.problem(key, &reason);
                None
            }
        }
    }

    /// A JSON boolean, or a string Go's `strconv.ParseBool` accepts.
    fn bool(&mut self, key: &str, target: &mut bool) {
        let parsed = match self.get(key) {
            None => return,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) => match s.as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
                _ => None,
            },
            Some(_) => None,
        };
        match parsed {
            Some(value) => *target = value,
            None => {
                let reason = format!("expected true or false, found {}", self.object[key]);
                self.problem(key, &reason);
            }
        }
    }

    fn number(&mut self, key: &str) -> Option<u64> {
        let parsed = match self.get(key)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if parsed.is_none() {
            let reason = format!("expected a whole number >= 0, found {}", self.object[key]);
            self.problem(key, &reason);
        }
        parsed
    }

    fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        let list = match self.get(key)? {
            Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>(),
            _ => None,
        };
        if list.is_none() {
            let reason = format!("expected a list of strings, found {}", self.object[key]);
            self.problem(key, &reason);
        }
        list
    }

    /// An object, or the original's list of one-key objects; values may be
    /// strings, numbers or booleans.
    fn default_options(&mut self) -> Option<CreateOptions> {
        let key = keys::DEFAULT_OPTIONS;
        let pairs: Vec<(&String, &Value)> = match self.get(key)? {
            Value::Object(map) => map.iter().collect(),
            Value::Array(items) => {
                let mut pairs = Vec::new();
                for item in items {
                    match item.as_object() {
                        Some(map) if map.len() == 1 => pairs.extend(map.iter()),
                        _ => {
                            let reason = format!("expected objects with one key each, found {item}");
                            self.problem(key, &reason);
                            return None;
                        }
                    }
                }
                pairs
            }
            other => {
                let reason = format!("expected an object or a list of one-key objects, found {other}");
                self.problem(key, &reason);
                return None;
            }
        };
        let mut options = CreateOptions::new();
        for (name, value) in pairs {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    let reason = format!("option {name:?} must be a string, number or boolean, found {other}");
                    self.problem(key, &reason);
                    return None;
                }
            };
            options.insert(name.clone(), text);
        }
        Some(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> (DriverConfig, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("driver.json");
        std::fs::write(&path, json).unwrap();
        DriverConfig::load_with_problems(&path)
    }

    #[test]
    fn missing_file_means_defaults() {
        let (config, problems) = DriverConfig::load_with_problems(Path::new("/nonexistent/x.json"));
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
        assert!(problems.iter().any(|p| p.starts_with("\"logDebug\": expected true or false, found \"maybe\"")));
        assert!(problems.iter().any(|p| p.starts_with("\"factorForConversion\"")));
        assert!(problems.iter().any(|p| p.starts_with("\"logFilePath\"")));
        assert!(problems.iter().any(|p| p.starts_with("\"defaultOptions\"")));
        assert!(problems.iter().any(|p| p.contains("\"backend\"")));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        std::fs::write(&path, r#"{"logDebug":"maybe"}"#).unwrap();
        let err = DriverConfig::load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("configuration {}: \"logDebug\": expected true or false, found \"maybe\"", path.display())
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("driver.json");
        let inside = dir.path().join("driver.log");
        std::fs::write(&path, serde_json::json!({"logFilePath": inside}).to_string()).unwrap();
        let (_, problems) = DriverConfig::load_with_problems(&path);
        assert!(problems[0].contains("inside the driver directory"), "{problems:?}");
    }

    #[test]
    fn the_plugin_defaults_to_the_driver_name() {
        let (config, _) = DriverConfig::load_with_problems(Path::new("/x/dory.io~btrfs/btrfs.json"));
        assert_eq!(config.backend.string("dockerVolumePluginSocketPath").unwrap().as_deref(), Some("btrfs"));
        let (config, _) = load(r#"{"dockerVolumePluginSocketPath": "/run/p.sock"}"#);
        assert_eq!(config.backend.string("dockerVolumePluginSocketPath").unwrap().as_deref(), Some("/run/p.sock"));
        let (config, _) = load(r#"{"backend": "mock"}"#);
        assert!(config.backend.string("dockerVolumePluginSocketPath").unwrap().is_none());
    }

    #[test]
    fn config_path_is_executable_plus_json() {
        assert_eq!(
            DriverConfig::path_for_executable(Path::new("/x/dory~mock/mock")),
            PathBuf::from("/x/dory~mock/mock.json")
        );
    }
}
