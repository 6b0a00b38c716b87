//! `dory-csi`'s command line and the driver settings file it names.
//!
//! The file has the keys of `dory`'s and `doryd`'s json (`backend`,
//! `dockerVolumePluginSocketPath`, `listOfStorageResourceOptions`,
//! `factorForConversion`, `defaultOptions`, `stateDir`, plus whatever the
//! backend reads), parsed by the same [`DriverConfig`] they use.

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use dory_core::DriverConfig;

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
    /// Where to serve CSI: unix://<path> (or a bare absolute path).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock", value_name = "URL")]
    pub endpoint: String,

    /// The CSI driver name (CSIDriver object, StorageClass provisioner).
    #[arg(long, value_name = "NAME", value_parser = parse_driver_name)]
    pub drivername: String,

    /// This node's id; without it and $NODE_NAME, the host name.
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

    /// Check the flags and the --config file as serving would (the
    /// endpoint, the services, the settings, the backend), then exit 0
    /// without binding or serving: how the tests check the manifests.
    #[arg(long, hide = true)]
    pub check_args: bool,
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

/// Loads the driver settings file: the keys of `dory`'s `<driver>.json`,
/// parsed by [`DriverConfig`]. The file must exist (a typo in the path must
/// not silently mean defaults); without `--config`, the defaults. With the
/// docker backend and no plugin named, the plugin is the first label of the
/// driver name (`btrfs.dory.io` talks to the plugin `btrfs`).
pub fn load(path: Option<&Path>, driver_name: &str) -> Result<DriverConfig, String> {
    let plugin = driver_name.split('.').next().unwrap_or(driver_name);
    let Some(path) = path else {
        let (config, _) =
            DriverConfig::parse(Path::new("(no --config)"), Err(std::io::ErrorKind::NotFound.into()), Some(plugin));
        return Ok(config);
    };
    let contents =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
    DriverConfig::checked(path, Ok(contents), Some(plugin)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_defaults_to_the_first_label_of_the_driver_name() {
        let config = load(None, "btrfs.dory.io").unwrap();
        assert_eq!(config.backend.string("dockerVolumePluginSocketPath").unwrap().as_deref(), Some("btrfs"));
        let err = load(Some(Path::new("/nonexistent/dory-csi.json")), "btrfs.dory.io").unwrap_err();
        assert!(err.contains("/nonexistent/dory-csi.json"), "{err}");
    }

    #[test]
    fn driver_names_follow_the_spec() {
        assert!(parse_driver_name("btrfs.dory.io").is_ok());
        for bad in ["", "-x.io", "x.io.", "a_b", &"a".repeat(64)] {
            assert!(parse_driver_name(bad).is_err(), "{bad}");
        }
    }
}
