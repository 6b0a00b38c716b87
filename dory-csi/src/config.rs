//! `dory-csi`'s command line and the driver settings file it names.
//!
//! The file has the keys of `dory`'s and `doryd`'s json (`backend`,
//! `dockerVolumePluginSocketPath`, `listOfStorageResourceOptions`,
//! `factorForConversion`, `defaultOptions`, `stateDir`, plus whatever the
//! backend reads). Only the keys this driver uses are read here; this module
//! is the one to swap for the shared configuration once `dory-core` holds it.

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use dory_core::{BackendConfig, CreateOptions};
use serde_json::{Map, Value};

/// dory-csi: serves a Docker volume plugin as a CSI driver.
///
/// One binary for both halves of a CSI deployment: `--controller` in the
/// Deployment next to csi-provisioner, `--node` in the DaemonSet next to
/// node-driver-registrar (both, with `--node-deployment` in csi-provisioner,
/// for plugins whose volumes live on one node). The backend, its plugin
/// socket and the size rules come from the --config file.
#[derive(Debug, Parser)]
#[command(name = "dory-csi", version = crate::VERSION, verbatim_doc_comment)]
pub struct Args {
    /// Where to serve CSI: unix://<path> (or a bare path) [env: CSI_ENDPOINT].
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock", value_name = "URL")]
    pub endpoint: String,

    /// The CSI driver name (CSIDriver object, StorageClass provisioner).
    #[arg(long, value_name = "NAME", value_parser = parse_driver_name)]
    pub drivername: String,

    /// This node's id [env: NODE_NAME].
    #[arg(long, env = "NODE_NAME", value_name = "ID")]
    pub nodeid: Option<String>,

    /// Serve the Controller service (create, delete, list volumes).
    #[arg(long)]
    pub controller: bool,

    /// Serve the Node service (publish volumes into pods).
    #[arg(long)]
    pub node: bool,

    /// The driver settings file (json, the keys of dory's <driver>.json).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (`info`, `debug`, `dory_csi=debug,info`).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub log_level: String,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Args {
    /// The socket path of `--endpoint`.
    pub fn socket_path(&self) -> Result<PathBuf, String> {
        let path = self.endpoint.strip_prefix("unix://").unwrap_or(&self.endpoint);
        if self.endpoint.contains("://") && !self.endpoint.starts_with("unix://") {
            return Err(format!("--endpoint {:?}: only unix:// sockets are served (CSI demands it)", self.endpoint));
        }
        if !path.starts_with('/') {
            return Err(format!("--endpoint {:?}: the socket path must be absolute", self.endpoint));
        }
        Ok(PathBuf::from(path))
    }
}

/// CSI's rule for plugin names (at most 63 characters, domain-name
/// notation), with csi-sanity's stricter ends: a letter or digit first and last.
fn parse_driver_name(name: &str) -> Result<String, String> {
    let ok_middle = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let ok_ends =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 || !ok_middle || !ok_ends {
        return Err(format!(
            "{name:?} is not a CSI driver name: at most 63 characters, letters, digits, '-' and '.', \
             beginning and ending with a letter or digit (e.g. btrfs.dory.io)"
        ));
    }
    Ok(name.to_owned())
}

/// Configuration keys read by `dory-csi` (the backend reads its own).
pub mod keys {
    /// Option names that carry a size; the first is set from the capacity.
    pub const STORAGE_RESOURCE_OPTIONS: &str = "listOfStorageResourceOptions";
    /// Bytes per size unit.
    pub const FACTOR_FOR_CONVERSION: &str = "factorForConversion";
    /// Options added to every Create when the parameters lack them.
    pub const DEFAULT_OPTIONS: &str = "defaultOptions";
    /// Directory for mount records and volume records.
    pub const STATE_DIR: &str = "stateDir";
}

/// How a capacity becomes a size option: doryd's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeRules {
    /// Option names that carry the size; the first is added when none is set.
    pub resource_options: Vec<String>,
    /// Bytes per size unit.
    pub factor: u64,
}

impl SizeRules {
    /// The size in units of the factor, rounded up: never 0 for a non-zero request.
    pub fn units(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.factor.max(1))
    }
}

/// The settings `dory-csi` runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The file they came from, if any.
    pub path: Option<PathBuf>,
    /// The backend and all keys, for the backend to read.
    pub backend: BackendConfig,
    /// Capacity to size option.
    pub size: SizeRules,
    /// Options added to every Create.
    pub default_options: CreateOptions,
    /// Mount and volume records.
    pub state_dir: PathBuf,
}

impl Settings {
    /// The defaults: the docker backend, sizes in GiB as `size`, state in `/run/dory-csi`.
    pub fn defaults() -> Self {
        Self {
            path: None,
            backend: BackendConfig::default(),
            size: SizeRules { resource_options: vec!["size".into(), "sizeInGiB".into()], factor: 1 << 30 },
            default_options: CreateOptions::new(),
            state_dir: PathBuf::from("/run/dory-csi"),
        }
    }

    /// Reads `path`; every problem (a wrong type, bad JSON) is reported,
    /// naming the key and the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        Self::from_json(value, Some(path)).map_err(|problems| format!("{}: {}", path.display(), problems.join("; ")))
    }

    /// Reads a settings object.
    pub fn from_json(value: Value, path: Option<&Path>) -> Result<Self, Vec<String>> {
        let mut settings = Self::defaults();
        settings.path = path.map(Path::to_path_buf);
        let Value::Object(object) = &value else {
            return Err(vec!["expected a JSON object at the top level".into()]);
        };
        let mut problems = Vec::new();
        match BackendConfig::from_json(value.clone()) {
            Ok(backend) => settings.backend = backend,
            Err(err) => problems.push(err.to_string()),
        }
        read_settings(object, &mut settings, &mut problems);
        if problems.is_empty() { Ok(settings) } else { Err(problems) }
    }
}

fn read_settings(object: &Map<String, Value>, settings: &mut Settings, problems: &mut Vec<String>) {
    let get = |key: &str| object.get(key).filter(|v| !v.is_null());
    if let Some(value) = get(keys::STORAGE_RESOURCE_OPTIONS) {
        match value.as_array().and_then(|items| items.iter().map(|i| i.as_str().map(str::to_owned)).collect()) {
            Some(list) if Vec::is_empty(&list) => {}
            Some(list) => settings.size.resource_options = list,
            None => problems
                .push(format!("{:?}: expected a list of strings, found {value}", keys::STORAGE_RESOURCE_OPTIONS)),
        }
    }
    if let Some(value) = get(keys::FACTOR_FOR_CONVERSION) {
        let factor = value.as_u64().or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
        match factor {
            Some(factor) if factor > 0 => settings.size.factor = factor,
            _ => {
                problems.push(format!("{:?}: expected a whole number > 0, found {value}", keys::FACTOR_FOR_CONVERSION))
            }
        }
    }
    if let Some(value) = get(keys::DEFAULT_OPTIONS) {
        match default_options(value) {
            Some(options) => settings.default_options = options,
            None => problems.push(format!(
                "{:?}: expected an object (or a list of one-key objects) of strings, numbers or booleans, found {value}",
                keys::DEFAULT_OPTIONS
            )),
        }
    }
    if let Some(value) = get(keys::STATE_DIR) {
        match value.as_str().filter(|s| s.starts_with('/')) {
            Some(dir) => settings.state_dir = PathBuf::from(dir),
            None => problems.push(format!("{:?}: expected an absolute path, found {value}", keys::STATE_DIR)),
        }
    }
}

/// An object, or the original Dory's list of one-key objects.
fn default_options(value: &Value) -> Option<CreateOptions> {
    let pairs: Vec<(&String, &Value)> = match value {
        Value::Object(map) => map.iter().collect(),
        Value::Array(items) => {
            let mut pairs = Vec::new();
            for item in items {
                let map = item.as_object().filter(|m| m.len() == 1)?;
                pairs.extend(map.iter());
            }
            pairs
        }
        _ => return None,
    };
    pairs
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((key.clone(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_key_is_read() {
        let settings = Settings::from_json(
            json!({"backend": "mock", "listOfStorageResourceOptions": ["sizeGb"], "factorForConversion": "1000",
                   "defaultOptions": [{"compress": true}, {"copies": 2}], "stateDir": "/tmp/s"}),
            None,
        )
        .unwrap();
        assert_eq!(settings.backend.backend(), "mock");
        assert_eq!(settings.size, SizeRules { resource_options: vec!["sizeGb".into()], factor: 1000 });
        assert_eq!(settings.default_options["compress"], "true");
        assert_eq!(settings.default_options["copies"], "2");
        assert_eq!(settings.state_dir, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn wrong_types_are_problems_naming_the_key() {
        let problems = Settings::from_json(
            json!({"factorForConversion": 0, "defaultOptions": "x", "stateDir": "rel", "listOfStorageResourceOptions": 3}),
            None,
        )
        .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        for key in ["factorForConversion", "defaultOptions", "stateDir", "listOfStorageResourceOptions"] {
            assert!(problems.iter().any(|p| p.starts_with(&format!("{key:?}"))), "{key}: {problems:?}");
        }
    }

    #[test]
    fn sizes_round_up_to_whole_units() {
        let rules = Settings::defaults().size;
        assert_eq!(rules.units(1), 1);
        assert_eq!(rules.units(1 << 30), 1);
        assert_eq!(rules.units((1 << 30) + 1), 2);
    }

    #[test]
    fn driver_names_follow_the_spec() {
        assert!(parse_driver_name("btrfs.dory.io").is_ok());
        for bad in ["", "-x.io", "x.io.", "a_b", &"a".repeat(64)] {
            assert!(parse_driver_name(bad).is_err(), "{bad}");
        }
    }
}
