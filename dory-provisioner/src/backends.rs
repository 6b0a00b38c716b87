//! Which backend serves a provisioner: the FlexVolume driver's json
//! (`<plugin dir>/<prefix>~<driver>/<driver>.json`, as the original Doryd
//! read it), or doryd's own `--config` for every provisioner. Either way the
//! backend comes from the same registry as the driver's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dory_core::{DriverConfig, Scope, VolumeBackend};
use tokio::sync::OnceCell;

use crate::options::SizeRules;

/// A provisioner's backend and option rules.
#[derive(Clone)]
pub struct ProvisionerBackend {
    /// The backend.
    pub backend: Arc<dyn VolumeBackend>,
    /// Size and default option rules.
    pub rules: SizeRules,
    /// The configuration file it came from.
    pub config_path: PathBuf,
    /// The Create option naming a clone's source volume.
    pub clone_option: String,
    scope: Arc<OnceCell<Scope>>,
}

impl ProvisionerBackend {
    /// The plugin's scope, asked once (a failure is asked again next time).
    pub async fn scope(&self) -> dory_core::Result<Scope> {
        self.scope.get_or_try_init(|| async { Ok(self.backend.capabilities().await?.scope) }).await.copied()
    }
}

/// Builds and caches one backend per provisioner.
pub struct BackendResolver {
    plugin_dir: PathBuf,
    config: Option<PathBuf>,
    cache: Mutex<HashMap<String, ProvisionerBackend>>,
}

impl BackendResolver {
    /// Backends from the drivers' json files under `plugin_dir`, or from
    /// `config` for all provisioners when given.
    pub fn new(plugin_dir: impl Into<PathBuf>, config: Option<PathBuf>) -> Self {
        Self { plugin_dir: plugin_dir.into(), config, cache: Mutex::default() }
    }

    /// The configuration file used for `provisioner`.
    pub fn config_path(&self, provisioner: &str) -> PathBuf {
        if let Some(config) = &self.config {
            return config.clone();
        }
        let (prefix, driver) = provisioner.split_once('/').unwrap_or(("", provisioner));
        self.plugin_dir.join(format!("{prefix}~{driver}")).join(format!("{driver}.json"))
    }

    /// The backend for `provisioner`, built once.
    pub fn resolve(&self, provisioner: &str) -> Result<ProvisionerBackend, String> {
        if let Some(found) = self.lock().get(provisioner) {
            return Ok(found.clone());
        }
        let path = self.config_path(provisioner);
        let driver = provisioner.split_once('/').map_or(provisioner, |(_, driver)| driver);
        let built = build(&path, driver)?;
        self.lock().insert(provisioner.to_owned(), built.clone());
        Ok(built)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProvisionerBackend>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// With the `docker` backend and no plugin named, the plugin is the one
/// named like the driver, whichever file configures it.
fn build(path: &Path, driver: &str) -> Result<ProvisionerBackend, String> {
    let config = DriverConfig::checked(path, std::fs::read_to_string(path), Some(driver)).map_err(|e| e.to_string())?;
    let backend = dory_core::registry::build_backend(&config.backend)
        .map_err(|e| format!("{}: {}", path.display(), dory_core::error_chain(&e)))?;
    Ok(ProvisionerBackend {
        backend,
        rules: SizeRules::from_config(&config),
        config_path: path.to_path_buf(),
        clone_option: config.clone_option.clone(),
        scope: Arc::default(),
    })
}
