//! Where a plugin listens, resolved the way dockerd resolves it.
//!
//! A configured value is one of: an absolute socket path; a `unix://` or
//! `tcp://` URL; or a plugin name, looked up as a legacy plugin socket in
//! `/run/docker/plugins` (`<name>.sock`, `<name>/<name>.sock`), then as a
//! `.spec`/`.json` file in `/etc/docker/plugins` and `/usr/lib/docker/plugins`,
//! then as a managed (v2) plugin through the Docker daemon's API.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::PluginError;

/// A plugin's network address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginAddress {
    /// A unix stream socket.
    Unix(PathBuf),
    /// `host:port` over plain TCP.
    Tcp(String),
}

impl PluginAddress {
    /// Parses an absolute path, `unix:///path` or `tcp://host:port`.
    /// Anything else is not an address (it may be a plugin name).
    pub fn parse(text: &str) -> Result<Option<Self>, PluginError> {
        let text = text.trim();
        let bad = |reason: &str| PluginError::BadAddress { address: text.into(), reason: reason.into() };
        if text.starts_with('/') {
            return Ok(Some(Self::Unix(PathBuf::from(text))));
        }
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("a unix:// address needs an absolute path"));
            }
            return Ok(Some(Self::Unix(PathBuf::from(path))));
        }
        if let Some(host_port) = text.strip_prefix("tcp://") {
            let host_port = host_port.trim_end_matches('/');
            let valid =
                host_port.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(bad("a tcp:// address needs host:port"));
            }
            return Ok(Some(Self::Tcp(host_port.into())));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(bad(&format!("unsupported scheme {scheme:?}; use an absolute socket path, unix:// or tcp://")));
        }
        Ok(None)
    }
}

impl fmt::Display for PluginAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(host_port) => write!(f, "tcp://{host_port}"),
        }
    }
}

/// A managed (v2) plugin, as the Docker daemon describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedPlugin {
    /// The plugin's 64-hex ID.
    pub id: String,
    /// Its name, e.g. `vendor/plugin:latest`.
    pub name: String,
    /// The directory inside the plugin's container whose mounts propagate
    /// to the host (`Config.PropagatedMount`), if any.
    pub propagated_mount: Option<PathBuf>,
    /// Where `propagated_mount` appears on the host:
    /// `<DockerRootDir>/plugins/<id>/propagated-mount`.
    pub host_propagated_mount: Option<PathBuf>,
    /// Where the plugin's root filesystem is on the host:
    /// `<DockerRootDir>/plugins/<id>/rootfs`. Every other path the plugin
    /// answers is inside it, as dockerd reads them.
    pub host_rootfs: Option<PathBuf>,
}

impl ManagedPlugin {
    /// Maps a mountpoint the plugin returned (inside its container) onto
    /// the host path where it is visible. Paths outside the propagated mount
    /// are returned unchanged.
    pub fn host_path(&self, mountpoint: &Path) -> PathBuf {
        if let (Some(inside), Some(host)) = (&self.propagated_mount, &self.host_propagated_mount)
            && let Ok(rest) = mountpoint.strip_prefix(inside)
        {
            return host.join(rest);
        }
        match (&self.host_rootfs, mountpoint.strip_prefix("/")) {
            (Some(rootfs), Ok(rest)) => rootfs.join(rest),
            _ => mountpoint.to_path_buf(),
        }
    }
}

/// The result of resolving a configured plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPlugin {
    /// Where to send requests.
    pub address: PluginAddress,
    /// Set when the plugin is a managed (v2) plugin.
    pub managed: Option<ManagedPlugin>,
}

/// The directories and daemon socket used to find plugins by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginLocator {
    /// Legacy plugin sockets (`/run/docker/plugins`); managed plugins' sockets
    /// live below it too, in `<id>/`.
    pub socket_dir: PathBuf,
    /// Spec file directories, searched in order.
    pub spec_dirs: Vec<PathBuf>,
    /// The Docker daemon's API socket, for managed plugins.
    pub docker_socket: PathBuf,
}

impl Default for PluginLocator {
    fn default() -> Self {
        Self {
            socket_dir: PathBuf::from("/run/docker/plugins"),
            spec_dirs: vec![PathBuf::from("/etc/docker/plugins"), PathBuf::from("/usr/lib/docker/plugins")],
            docker_socket: PathBuf::from("/var/run/docker.sock"),
        }
    }
}

impl PluginLocator {
    /// Resolves an address or a plugin name.
    pub async fn resolve(&self, configured: &str) -> Result<ResolvedPlugin, PluginError> {
        if let Some(address) = PluginAddress::parse(configured)? {
            return Ok(ResolvedPlugin { address, managed: None });
        }
        let name = configured.trim();
        if name.is_empty() || name.contains('\0') || name.chars().any(char::is_whitespace) {
            return Err(PluginError::BadAddress {
                address: configured.into(),
                reason: "expected a socket path, a unix:// or tcp:// URL, or a plugin name".into(),
            });
        }
        let mut searched = Vec::new();
        if !name.contains('/')
            && let Some(address) = self.find_legacy(name, &mut searched)?
        {
            return Ok(ResolvedPlugin { address, managed: None });
        }
        match self.find_managed(name).await {
            Ok(Some(managed)) => Ok(managed),
            Ok(None) => {
                searched.push(format!("managed plugins of the Docker daemon at {}", self.docker_socket.display()));
                Err(PluginError::NotFound { name: name.into(), searched: searched.join(", ") })
            }
            Err(err) if !self.docker_socket.exists() => {
                drop(err);
                searched.push(format!("the Docker daemon at {} (no such socket)", self.docker_socket.display()));
                Err(PluginError::NotFound { name: name.into(), searched: searched.join(", ") })
            }
            Err(err) => Err(err),
        }
    }

    fn find_legacy(&self, name: &str, searched: &mut Vec<String>) -> Result<Option<PluginAddress>, PluginError> {
        for socket in
            [self.socket_dir.join(format!("{name}.sock")), self.socket_dir.join(name).join(format!("{name}.sock"))]
        {
            if socket.exists() {
                return Ok(Some(PluginAddress::Unix(socket)));
            }
            searched.push(socket.display().to_string());
        }
        for dir in &self.spec_dirs {
            for candidate in [
                dir.join(format!("{name}.spec")),
                dir.join(format!("{name}.json")),
                dir.join(name).join(format!("{name}.spec")),
                dir.join(name).join(format!("{name}.json")),
            ] {
                if candidate.is_file() {
                    return read_spec_file(&candidate).map(Some);
                }
                searched.push(candidate.display().to_string());
            }
        }
        Ok(None)
    }

    async fn find_managed(&self, name: &str) -> Result<Option<ResolvedPlugin>, PluginError> {
        let daemon = PluginAddress::Unix(self.docker_socket.clone());
        let wrap =
            |source: PluginError| PluginError::Daemon { socket: self.docker_socket.clone(), source: Box::new(source) };
        let plugins = crate::client::daemon_get(&daemon, "/plugins").await.map_err(wrap)?;
        let Some(entry) = plugins.as_array().into_iter().flatten().find(|p| {
            let plugin_name = p.get("Name").and_then(Value::as_str).unwrap_or_default();
            plugin_name == name || plugin_name == format!("{name}:latest")
        }) else {
            return Ok(None);
        };
        if !entry.get("Enabled").and_then(Value::as_bool).unwrap_or(false) {
            return Err(PluginError::Disabled { name: name.into() });
        }
        let id = entry.get("Id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let config = entry.get("Config").cloned().unwrap_or(Value::Null);
        let socket_name =
            config.pointer("/Interface/Socket").and_then(Value::as_str).filter(|s| !s.is_empty() && !s.contains('/'));
        let (Some(socket_name), false) = (socket_name, id.is_empty() || id.contains('/')) else {
            return Err(PluginError::BadAddress {
                address: name.into(),
                reason: "the Docker daemon describes this plugin without an Id or Config.Interface.Socket".into(),
            });
        };
        let propagated_mount =
            config.get("PropagatedMount").and_then(Value::as_str).filter(|s| !s.is_empty()).map(PathBuf::from);
        // Every mountpoint is on the host below the plugin's directory
        // (dockerd joins it to the rootfs), so the daemon's root is needed
        // whatever the plugin's config says.
        let info = crate::client::daemon_get(&daemon, "/info").await.map_err(wrap)?;
        let plugin_dir =
            info.get("DockerRootDir").and_then(Value::as_str).map(|root| Path::new(root).join("plugins").join(&id));
        let host_propagated_mount =
            propagated_mount.as_ref().and(plugin_dir.as_ref()).map(|dir| dir.join("propagated-mount"));
        let host_rootfs = plugin_dir.map(|dir| dir.join("rootfs"));
        let address = PluginAddress::Unix(self.socket_dir.join(&id).join(socket_name));
        let managed = ManagedPlugin {
            id,
            name: entry.get("Name").and_then(Value::as_str).unwrap_or(name).to_owned(),
            propagated_mount,
            host_propagated_mount,
            host_rootfs,
        };
        Ok(Some(ResolvedPlugin { address, managed: Some(managed) }))
    }
}

/// Reads a `.spec` (one URL line) or `.json` (`{"Addr": ...}`) file.
fn read_spec_file(path: &Path) -> Result<PluginAddress, PluginError> {
    let text = std::fs::read_to_string(path).map_err(|source| PluginError::SpecFile { path: path.into(), source })?;
    let bad =
        |reason: String| PluginError::BadAddress { address: format!("{} in {}", text.trim(), path.display()), reason };
    let url = if path.extension().is_some_and(|e| e == "json") {
        let spec: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        crate::wire::string_field(&spec, "Addr").ok_or_else(|| bad("no \"Addr\" field".into()))?
    } else {
        text.trim().to_owned()
    };
    if url.starts_with("https://") || url.starts_with("http://") {
        return Err(bad("HTTP(S) plugin addresses are not supported; use unix:// or tcp://".into()));
    }
    if !url.contains("://") {
        return Err(bad("unknown protocol: a spec file must hold unix:///path or tcp://host:port".into()));
    }
    PluginAddress::parse(&url)?.ok_or_else(|| bad("not an address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(PluginAddress::parse("/run/x.sock").unwrap(), Some(PluginAddress::Unix("/run/x.sock".into())));
        assert_eq!(
            PluginAddress::parse("unix:///run/x.sock").unwrap(),
            Some(PluginAddress::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            PluginAddress::parse("tcp://127.0.0.1:8080").unwrap(),
            Some(PluginAddress::Tcp("127.0.0.1:8080".into()))
        );
        assert_eq!(PluginAddress::parse("nimble").unwrap(), None);
        assert!(PluginAddress::parse("tcp://nohost").is_err());
        assert!(PluginAddress::parse("unix://relative").is_err());
        assert!(PluginAddress::parse("ftp://x").unwrap_err().to_string().contains("unsupported scheme"));
    }

    #[test]
    fn managed_mountpoints_map_onto_the_host() {
        let plugin = ManagedPlugin {
            id: "abc".into(),
            name: "p:latest".into(),
            propagated_mount: Some("/data".into()),
            host_propagated_mount: Some("/var/lib/docker/plugins/abc/propagated-mount".into()),
            host_rootfs: Some("/var/lib/docker/plugins/abc/rootfs".into()),
        };
        assert_eq!(
            plugin.host_path(Path::new("/data/vols/v1")),
            PathBuf::from("/var/lib/docker/plugins/abc/propagated-mount/vols/v1")
        );
        // Outside the propagated mount: inside the plugin's rootfs, as
        // dockerd maps it (the plugin's /mnt is not the host's /mnt).
        assert_eq!(plugin.host_path(Path::new("/mnt/v2")), PathBuf::from("/var/lib/docker/plugins/abc/rootfs/mnt/v2"));
        let unknown_root = ManagedPlugin { host_rootfs: None, ..plugin };
        assert_eq!(unknown_root.host_path(Path::new("/elsewhere")), PathBuf::from("/elsewhere"));
    }
}
