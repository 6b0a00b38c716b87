//! [`MockBackend`]: the in-memory backend, registered as `mock`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use dory_core::{
    BackendConfig, BackendRegistration, Capabilities, CreateOptions, Error, ErrorKind, MountId, Operation, Result,
    Scope, VolumeBackend, VolumeInfo, VolumeName,
};
use serde_json::json;

use crate::faults::FaultPlan;

/// Configuration key of the directory the mock keeps its volumes in.
pub const MOCK_ROOT_KEY: &str = "mockRoot";

/// Configuration key of the scope the backend reports: `global` (default)
/// or `local`, to stand in for a node-local plugin.
pub const MOCK_SCOPE_KEY: &str = "mockScope";

/// The root used when none is configured: `$TMPDIR/dory-mock`.
pub fn default_root() -> PathBuf {
    std::env::temp_dir().join("dory-mock")
}

/// One volume's state.
#[derive(Clone, Debug)]
struct MockVolume {
    options: CreateOptions,
    created_at: String,
    mounts: BTreeMap<MountId, usize>,
}

/// A backend whose volumes are directories under `root`.
#[derive(Debug)]
pub struct MockBackend {
    root: PathBuf,
    volumes: Mutex<BTreeMap<String, MockVolume>>,
    faults: FaultPlan,
    scope: Scope,
}

impl MockBackend {
    /// A backend keeping its volumes under `root` (created if missing);
    /// directories already there are adopted as volumes.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let mut volumes = BTreeMap::new();
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let created = entry.metadata()?.modified().unwrap_or(SystemTime::now());
            volumes.insert(name, MockVolume::new(CreateOptions::new(), created));
        }
        Ok(Self { root, volumes: Mutex::new(volumes), faults: FaultPlan::default(), scope: Scope::Global })
    }

    /// The same backend reporting `scope` in its capabilities. The default
    /// is `global`: one root serves every "node" of a test.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The directory holding the volumes.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The fault plan; changes apply to calls made after them.
    pub fn faults(&self) -> &FaultPlan {
        &self.faults
    }

    /// The options a volume was created with.
    pub fn options(&self, name: &str) -> Option<CreateOptions> {
        self.lock().get(name).map(|v| v.options.clone())
    }

    /// The names of every volume, sorted.
    pub fn list_names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many mounts hold the volume (0 when unmounted or unknown).
    pub fn mount_count(&self, name: &str) -> usize {
        self.lock().get(name).map_or(0, |v| v.mounts.values().sum())
    }

    fn mountpoint(&self, name: &VolumeName) -> PathBuf {
        self.root.join(name.as_str())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MockVolume>> {
        self.volumes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn info(&self, name: &str, volume: &MockVolume) -> VolumeInfo {
        let users: usize = volume.mounts.values().sum();
        VolumeInfo {
            name: name.to_owned(),
            mountpoint: Some(self.root.join(name)),
            created_at: Some(volume.created_at.clone()),
            status: [("mounts".to_owned(), json!(users)), ("options".to_owned(), json!(volume.options))]
                .into_iter()
                .collect(),
        }
    }
}

impl MockVolume {
    fn new(options: CreateOptions, created: SystemTime) -> Self {
        Self { options, created_at: humantime::format_rfc3339_seconds(created).to_string(), mounts: BTreeMap::new() }
    }
}

fn io_failure(operation: Operation, name: &VolumeName, source: io::Error) -> Error {
    Error::backend(ErrorKind::Local, operation, Some(name.as_str()), source)
}

#[async_trait]
impl VolumeBackend for MockBackend {
    async fn get(&self, name: &VolumeName) -> Result<Option<VolumeInfo>> {
        self.faults.apply(Operation::Get, Some(name.as_str())).await?;
        Ok(self.lock().get(name.as_str()).map(|v| self.info(name.as_str(), v)))
    }

    async fn create(&self, name: &VolumeName, options: &CreateOptions) -> Result<()> {
        self.faults.apply(Operation::Create, Some(name.as_str())).await?;
        if self.lock().contains_key(name.as_str()) {
            return Ok(());
        }
        let dir = self.mountpoint(name);
        std::fs::create_dir_all(&dir).map_err(|e| io_failure(Operation::Create, name, e))?;
        self.lock().entry(name.to_string()).or_insert_with(|| MockVolume::new(options.clone(), SystemTime::now()));
        Ok(())
    }

    async fn remove(&self, name: &VolumeName) -> Result<()> {
        self.faults.apply(Operation::Remove, Some(name.as_str())).await?;
        let mut volumes = self.lock();
        let Some(volume) = volumes.get(name.as_str()) else {
            return Err(Error::NotFound { volume: name.to_string() });
        };
        let users: usize = volume.mounts.values().sum();
        if users > 0 {
            return Err(Error::InUse { volume: name.to_string(), users });
        }
        match std::fs::remove_dir_all(self.mountpoint(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_failure(Operation::Remove, name, e)),
        }
        volumes.remove(name.as_str());
        Ok(())
    }

    async fn mount(&self, name: &VolumeName, id: &MountId) -> Result<PathBuf> {
        self.faults.apply(Operation::Mount, Some(name.as_str())).await?;
        let mut volumes = self.lock();
        let Some(volume) = volumes.get_mut(name.as_str()) else {
            return Err(Error::NotFound { volume: name.to_string() });
        };
        *volume.mounts.entry(id.clone()).or_default() += 1;
        Ok(self.faults.mountpoint_lie().unwrap_or_else(|| self.mountpoint(name)))
    }

    async fn unmount(&self, name: &VolumeName, id: &MountId) -> Result<()> {
        self.faults.apply(Operation::Unmount, Some(name.as_str())).await?;
        let mut volumes = self.lock();
        if let Some(volume) = volumes.get_mut(name.as_str()) {
            match volume.mounts.get_mut(id) {
                Some(1) => {
                    volume.mounts.remove(id);
                }
                Some(count) => *count -= 1,
                None => {}
            }
        }
        Ok(())
    }

    async fn path(&self, name: &VolumeName) -> Result<Option<PathBuf>> {
        self.faults.apply(Operation::Path, Some(name.as_str())).await?;
        let volumes = self.lock();
        let volume = volumes.get(name.as_str()).ok_or_else(|| Error::NotFound { volume: name.to_string() })?;
        Ok((!volume.mounts.is_empty()).then(|| self.mountpoint(name)))
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        self.faults.apply(Operation::List, None).await?;
        Ok(self.lock().iter().map(|(name, v)| self.info(name, v)).collect())
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        self.faults.apply(Operation::Capabilities, None).await?;
        Ok(Capabilities { scope: self.scope })
    }
}

fn build(config: &BackendConfig) -> Result<Arc<dyn VolumeBackend>> {
    let root = config.string(MOCK_ROOT_KEY)?.map(PathBuf::from).unwrap_or_else(default_root);
    let backend = MockBackend::new(&root).map_err(|e| Error::Config {
        key: MOCK_ROOT_KEY.into(),
        reason: format!("cannot use {}: {e}", root.display()),
    })?;
    let scope = match config.string(MOCK_SCOPE_KEY)?.as_deref() {
        None | Some("global") => Scope::Global,
        Some("local") => Scope::Local,
        Some(other) => {
            return Err(Error::Config {
                key: MOCK_SCOPE_KEY.into(),
                reason: format!("expected \"global\" or \"local\", found {other:?}"),
            });
        }
    };
    Ok(Arc::new(backend.with_scope(scope)))
}

dory_core::register_backend!(BackendRegistration {
    name: "mock",
    summary: "in-memory volumes backed by directories, with fault injection (for tests and demos)",
    build,
});

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> VolumeName {
        VolumeName::new(n).unwrap()
    }

    #[tokio::test]
    async fn lifecycle_uses_real_directories() {
        let dir = tempfile::tempdir().unwrap();
        let backend = MockBackend::new(dir.path()).unwrap();
        let v = name("v1");
        assert!(backend.get(&v).await.unwrap().is_none());
        let options = CreateOptions::from([("size".to_owned(), "1".to_owned())]);
        backend.create(&v, &options).await.unwrap();
        assert!(dir.path().join("v1").is_dir());
        assert_eq!(backend.options("v1"), Some(options));
        let id = MountId::new("pod-a").unwrap();
        let path = backend.mount(&v, &id).await.unwrap();
        assert_eq!(path, dir.path().join("v1"));
        assert_eq!(backend.path(&v).await.unwrap(), Some(path));
        let err = backend.remove(&v).await.unwrap_err();
        assert!(matches!(err, Error::InUse { users: 1, .. }), "{err}");
        backend.unmount(&v, &id).await.unwrap();
        backend.unmount(&v, &id).await.unwrap();
        assert_eq!(backend.path(&v).await.unwrap(), None);
        backend.remove(&v).await.unwrap();
        assert!(!dir.path().join("v1").exists());
        assert!(backend.remove(&v).await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn adopts_existing_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("old")).unwrap();
        let backend = MockBackend::new(dir.path()).unwrap();
        let info = backend.get(&name("old")).await.unwrap().unwrap();
        assert_eq!(info.mountpoint, Some(dir.path().join("old")));
        assert!(info.created_at.unwrap().ends_with('Z'));
        assert_eq!(backend.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn injected_faults_name_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let backend = MockBackend::new(dir.path()).unwrap();
        backend.faults().fail(Operation::Create, "quota exceeded");
        let err = backend.create(&name("v"), &CreateOptions::new()).await.unwrap_err();
        assert_eq!(dory_core::error_chain(&err), "create of volume \"v\" failed: quota exceeded");
        assert!(!dir.path().join("v").exists());
        backend.faults().clear_all();
        backend.create(&name("v"), &CreateOptions::new()).await.unwrap();
    }
}
