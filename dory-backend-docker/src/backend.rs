//! [`DockerBackend`]: a [`VolumeBackend`] that is a Docker volume plugin,
//! reached through [`PluginClient`]. Registered as `docker`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dory_core::{
    BackendConfig, BackendRegistration, Capabilities, CreateOptions, Error, MountId, Operation, Result, VolumeBackend,
    VolumeInfo, VolumeName,
};
use tokio::sync::OnceCell;

use crate::address::{ManagedPlugin, PluginLocator, ResolvedPlugin};
use crate::client::{CallPolicy, PluginClient};
use crate::error::PluginError;

/// Configuration keys read by the `docker` backend.
pub mod keys {
    /// Socket path, `unix://`/`tcp://` URL, or plugin name (the original's key).
    pub const SOCKET: &str = dory_core::config::keys::DOCKER_PLUGIN;
    /// Directory of legacy plugin sockets (default `/run/docker/plugins`).
    pub const SOCKET_DIR: &str = "pluginSocketDir";
    /// Spec file directories (default `/etc/docker/plugins`, `/usr/lib/docker/plugins`).
    pub const SPEC_DIRS: &str = "pluginSpecDirs";
    /// The Docker daemon socket, for managed plugins (default `/var/run/docker.sock`).
    pub const DOCKER_SOCKET: &str = "dockerSocketPath";
    /// Seconds one Create or Mount attempt may take (default 120).
    pub const LONG_TIMEOUT: &str = "pluginLongTimeoutSeconds";
    /// Seconds any other call may take (default 60).
    pub const SHORT_TIMEOUT: &str = "pluginShortTimeoutSeconds";
    /// Seconds during which unreachable plugins are retried (default 30).
    pub const RETRY_BUDGET: &str = "pluginRetrySeconds";
    /// Largest reply accepted, in bytes (default 16 MiB).
    pub const MAX_RESPONSE: &str = "pluginMaxResponseBytes";
}

/// The plugin used when the configuration names none (the original's default).
pub const DEFAULT_PLUGIN: &str = "/run/docker/plugins/nimble.sock";

/// Everything the `docker` backend needs to reach its plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerBackendSettings {
    /// Address or plugin name, as configured.
    pub plugin: String,
    /// Where plugin names are looked up.
    pub locator: PluginLocator,
    /// Timeouts, retries and reply cap.
    pub policy: CallPolicy,
}

impl DockerBackendSettings {
    /// Settings for `plugin` with dockerd's defaults.
    pub fn new(plugin: impl Into<String>) -> Self {
        Self { plugin: plugin.into(), locator: PluginLocator::default(), policy: CallPolicy::default() }
    }

    /// Reads the settings from a configuration, naming any bad key.
    pub fn from_config(config: &BackendConfig) -> Result<Self> {
        let plugin = config.string(keys::SOCKET)?.filter(|s| !s.trim().is_empty());
        let mut settings = Self::new(plugin.unwrap_or_else(|| DEFAULT_PLUGIN.into()));
        if let Some(dir) = config.string(keys::SOCKET_DIR)? {
            settings.locator.socket_dir = dir.into();
        }
        if let Some(dirs) = config.string_list(keys::SPEC_DIRS)? {
            settings.locator.spec_dirs = dirs.into_iter().map(PathBuf::from).collect();
        }
        if let Some(socket) = config.string(keys::DOCKER_SOCKET)? {
            settings.locator.docker_socket = socket.into();
        }
        let seconds = |key: &str| -> Result<Option<Duration>> {
            match config.number(key)? {
                Some(0) => Err(Error::Config { key: key.into(), reason: "must be at least 1 second".into() }),
                other => Ok(other.map(Duration::from_secs)),
            }
        };
        if let Some(t) = seconds(keys::LONG_TIMEOUT)? {
            settings.policy.long_timeout = t;
        }
        if let Some(t) = seconds(keys::SHORT_TIMEOUT)? {
            settings.policy.short_timeout = t;
        }
        if let Some(budget) = config.number(keys::RETRY_BUDGET)? {
            settings.policy.retry.budget = Duration::from_secs(budget);
        }
        if let Some(bytes) = config.number(keys::MAX_RESPONSE)? {
            settings.policy.max_response_bytes = usize::try_from(bytes).unwrap_or(usize::MAX).max(1024);
        }
        Ok(settings)
    }
}

/// A Docker volume plugin as a [`VolumeBackend`].
///
/// The plugin's address is resolved on first use, never at construction, so
/// building the backend is free (`dory init` never touches the plugin).
/// Mountpoints of managed plugins are mapped onto the host path.
#[derive(Debug)]
pub struct DockerBackend {
    settings: DockerBackendSettings,
    connection: OnceCell<Connection>,
}

#[derive(Debug)]
struct Connection {
    client: PluginClient,
    managed: Option<ManagedPlugin>,
}

impl DockerBackend {
    /// A backend for the configured plugin; nothing is contacted yet.
    pub fn new(settings: DockerBackendSettings) -> Self {
        Self { settings, connection: OnceCell::new() }
    }

    /// The settings in force.
    pub fn settings(&self) -> &DockerBackendSettings {
        &self.settings
    }

    /// Resolves the plugin (once) and returns its client.
    pub async fn client(&self) -> std::result::Result<&PluginClient, PluginError> {
        Ok(&self.connection().await?.client)
    }

    async fn connection(&self) -> std::result::Result<&Connection, PluginError> {
        self.connection
            .get_or_try_init(|| async {
                let ResolvedPlugin { address, managed } = self.settings.locator.resolve(&self.settings.plugin).await?;
                tracing::debug!(plugin = %self.settings.plugin, %address, "resolved plugin");
                Ok(Connection { client: PluginClient::new(address, self.settings.policy.clone()), managed })
            })
            .await
    }

    async fn connect(&self, operation: Operation, volume: Option<&VolumeName>) -> Result<&Connection> {
        self.connection().await.map_err(|e| failed(operation, volume, e))
    }

    fn host_path(connection: &Connection, path: PathBuf) -> PathBuf {
        match &connection.managed {
            Some(managed) => managed.host_path(&path),
            None => path,
        }
    }
}

fn failed(operation: Operation, volume: Option<&VolumeName>, error: PluginError) -> Error {
    let volume = volume.map(VolumeName::as_str);
    Error::backend(error.kind_for(volume), operation, volume, error)
}

#[async_trait]
impl VolumeBackend for DockerBackend {
    async fn get(&self, name: &VolumeName) -> Result<Option<VolumeInfo>> {
        let connection = self.connect(Operation::Get, Some(name)).await?;
        match connection.client.get(name).await {
            Ok(info) => Ok(info.map(|mut info| {
                info.mountpoint = info.mountpoint.map(|p| Self::host_path(connection, p));
                info
            })),
            // dockerd reads any error on Get as "not in this driver"; Dory
            // reads only a definite "no such volume" so (see PluginError::kind).
            Err(err) if err.kind_for(Some(name.as_str())) == dory_core::ErrorKind::NotFound => {
                tracing::debug!(volume = %name, error = %err, "plugin Get: no such volume");
                Ok(None)
            }
            Err(err) => Err(failed(Operation::Get, Some(name), err)),
        }
    }

    async fn create(&self, name: &VolumeName, options: &CreateOptions) -> Result<()> {
        let connection = self.connect(Operation::Create, Some(name)).await?;
        connection.client.create(name, options).await.map_err(|e| failed(Operation::Create, Some(name), e))
    }

    async fn remove(&self, name: &VolumeName) -> Result<()> {
        let connection = self.connect(Operation::Remove, Some(name)).await?;
        connection.client.remove(name).await.map_err(|e| failed(Operation::Remove, Some(name), e))
    }

    async fn mount(&self, name: &VolumeName, id: &MountId) -> Result<PathBuf> {
        let connection = self.connect(Operation::Mount, Some(name)).await?;
        match connection.client.mount(name, id).await {
            Ok(path) => Ok(Self::host_path(connection, path)),
            // No usable reply (a timeout, a broken connection, an oversized
            // or malformed reply): the plugin may have mounted. Undo it, so
            // its mount count stays balanced when kubelet retries.
            Err(err) if err.outcome_unknown() => {
                tracing::warn!(volume = %name, %id, error = %dory_core::error_chain(&err), "Mount outcome unknown; sending Unmount");
                let undo = connection.client.unmount(name, id).await.err().map(|e| dory_core::error_chain(&e));
                if let Some(undo) = &undo {
                    tracing::warn!(volume = %name, %id, error = %undo, "cannot undo a Mount whose outcome is unknown");
                }
                let undone = PluginError::MountUndone { error: dory_core::error_chain(&err), undo, kind: err.kind() };
                Err(failed(Operation::Mount, Some(name), undone))
            }
            Err(err) => Err(failed(Operation::Mount, Some(name), err)),
        }
    }

    async fn unmount(&self, name: &VolumeName, id: &MountId) -> Result<()> {
        let connection = self.connect(Operation::Unmount, Some(name)).await?;
        connection.client.unmount(name, id).await.map_err(|e| failed(Operation::Unmount, Some(name), e))
    }

    async fn path(&self, name: &VolumeName) -> Result<Option<PathBuf>> {
        let connection = self.connect(Operation::Path, Some(name)).await?;
        let path = connection.client.path(name).await.map_err(|e| failed(Operation::Path, Some(name), e))?;
        Ok(path.map(|p| Self::host_path(connection, p)))
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let connection = self.connect(Operation::List, None).await?;
        let volumes = connection.client.list().await.map_err(|e| failed(Operation::List, None, e))?;
        Ok(volumes
            .into_iter()
            .map(|mut info| {
                info.mountpoint = info.mountpoint.map(|p| Self::host_path(connection, p));
                info
            })
            .collect())
    }

    /// Capabilities are optional in the protocol: a plugin without the
    /// endpoint (404) or that declines (`Err` with a 2xx) is `local`, as
    /// dockerd assumes. Any other failure is an error.
    async fn capabilities(&self) -> Result<Capabilities> {
        let connection = self.connect(Operation::Capabilities, None).await?;
        match connection.client.capabilities().await {
            Ok(scope) => Ok(Capabilities { scope }),
            // No such endpoint (404), or a 2xx that declines: the plugin has
            // no Capabilities, and is `local` as dockerd assumes. Any other
            // error (a 500 while it starts, no answer) is an error, not a
            // scope: callers that cache the scope must not cache a guess.
            Err(err) if err.status() == Some(404) || matches!(err, PluginError::Refused { .. }) => {
                tracing::debug!(error = %err, "plugin has no Capabilities; assuming local scope");
                Ok(Capabilities::default())
            }
            Err(err) => Err(failed(Operation::Capabilities, None, err)),
        }
    }
}

fn build(config: &BackendConfig) -> Result<Arc<dyn VolumeBackend>> {
    Ok(Arc::new(DockerBackend::new(DockerBackendSettings::from_config(config)?)))
}

dory_core::register_backend!(BackendRegistration {
    name: "docker",
    summary: "a Docker Volume Plugin on a unix socket, TCP address or by plugin name",
    build,
});

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn settings_read_every_key() {
        let config = BackendConfig::from_json(json!({
            "dockerVolumePluginSocketPath": "btrfs",
            "pluginSocketDir": "/tmp/p",
            "pluginSpecDirs": ["/tmp/s1", "/tmp/s2"],
            "dockerSocketPath": "/tmp/d.sock",
            "pluginLongTimeoutSeconds": 7,
            "pluginShortTimeoutSeconds": "3",
            "pluginRetrySeconds": 0,
        }))
        .unwrap();
        let settings = DockerBackendSettings::from_config(&config).unwrap();
        assert_eq!(settings.plugin, "btrfs");
        assert_eq!(settings.locator.socket_dir, PathBuf::from("/tmp/p"));
        assert_eq!(settings.locator.spec_dirs.len(), 2);
        assert_eq!(settings.locator.docker_socket, PathBuf::from("/tmp/d.sock"));
        assert_eq!(settings.policy.long_timeout, Duration::from_secs(7));
        assert_eq!(settings.policy.short_timeout, Duration::from_secs(3));
        assert_eq!(settings.policy.retry.budget, Duration::ZERO);
    }

    #[test]
    fn defaults_and_bad_values() {
        let settings = DockerBackendSettings::from_config(&BackendConfig::default()).unwrap();
        assert_eq!(settings.plugin, DEFAULT_PLUGIN);
        assert_eq!(settings.policy, CallPolicy::default());
        let config = BackendConfig::default().with(keys::SHORT_TIMEOUT, 0);
        let err = DockerBackendSettings::from_config(&config).unwrap_err();
        assert!(err.to_string().contains(keys::SHORT_TIMEOUT), "{err}");
        let config = BackendConfig::default().with(keys::SOCKET, 5);
        assert!(DockerBackendSettings::from_config(&config).is_err());
    }
}
