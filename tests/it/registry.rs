//! The backend registry: built-in backends by name, and a backend defined
//! outside the built-in crates (here) registering and being selected.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use dory_core::registry::{build_backend, registered_names};
use dory_core::{
    BackendConfig, BackendRegistration, Capabilities, CreateOptions, MountId, Result, Scope, VolumeBackend, VolumeInfo,
    VolumeName,
};
use serde_json::json;

// Link the built-in backends, as the binaries do.
use dory_backend_docker as _;
use dory_backend_mock as _;

/// A third party's backend: global scope, one fixed volume.
struct ThirdPartyBackend {
    greeting: String,
}

#[async_trait]
impl VolumeBackend for ThirdPartyBackend {
    async fn get(&self, name: &VolumeName) -> Result<Option<VolumeInfo>> {
        Ok((name.as_str() == "fixed").then(|| VolumeInfo {
            name: name.to_string(),
            status: [("greeting".to_owned(), json!(self.greeting))].into(),
            ..Default::default()
        }))
    }
    async fn create(&self, _: &VolumeName, _: &CreateOptions) -> Result<()> {
        Ok(())
    }
    async fn remove(&self, _: &VolumeName) -> Result<()> {
        Ok(())
    }
    async fn mount(&self, name: &VolumeName, _: &MountId) -> Result<PathBuf> {
        Ok(PathBuf::from("/srv").join(name.as_str()))
    }
    async fn unmount(&self, _: &VolumeName, _: &MountId) -> Result<()> {
        Ok(())
    }
    async fn path(&self, _: &VolumeName) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        Ok(Vec::new())
    }
    async fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { scope: Scope::Global })
    }
}

fn build_third_party(config: &BackendConfig) -> Result<Arc<dyn VolumeBackend>> {
    let greeting = config.string("greeting")?.unwrap_or_else(|| "hello".into());
    Ok(Arc::new(ThirdPartyBackend { greeting }))
}

dory_core::register_backend!(BackendRegistration {
    name: "third-party",
    summary: "a backend from outside the built-in crates",
    build: build_third_party,
});

#[test]
fn built_in_and_external_backends_are_listed() {
    assert_eq!(registered_names(), ["docker", "mock", "third-party"]);
}

#[tokio::test]
async fn an_external_backend_is_selected_by_name() {
    let config = BackendConfig::from_json(json!({"backend": "third-party", "greeting": "hi"})).unwrap();
    let backend = build_backend(&config).unwrap();
    assert_eq!(backend.capabilities().await.unwrap().scope, Scope::Global);
    let info = backend.get(&VolumeName::new("fixed").unwrap()).await.unwrap().unwrap();
    assert_eq!(info.status["greeting"], "hi");

    let config = BackendConfig::from_json(json!({"backend": "third-party", "greeting": 7})).unwrap();
    let err = build_backend(&config).err().unwrap();
    assert_eq!(err.to_string(), "invalid value for \"greeting\": expected a string, found number 7");
}

#[tokio::test]
async fn the_mock_backend_is_built_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = BackendConfig::from_json(json!({"backend": "mock", "mockRoot": dir.path()})).unwrap();
    let backend = build_backend(&config).unwrap();
    backend.create(&VolumeName::new("v").unwrap(), &CreateOptions::new()).await.unwrap();
    assert!(dir.path().join("v").is_dir());

    let config = BackendConfig::from_json(json!({"backend": "mock", "mockRoot": "/proc/forbidden"})).unwrap();
    let err = build_backend(&config).err().unwrap();
    assert!(err.to_string().starts_with("invalid value for \"mockRoot\": cannot use /proc/forbidden"), "{err}");
}

#[test]
fn docker_is_the_default_and_building_it_contacts_nothing() {
    let config = BackendConfig::from_json(json!({"dockerVolumePluginSocketPath": "/nonexistent/p.sock"})).unwrap();
    assert_eq!(config.backend(), "docker");
    assert!(build_backend(&config).is_ok(), "construction is lazy: no plugin is needed to build it");
}

#[test]
fn an_unknown_backend_lists_the_known_ones() {
    let err = build_backend(&BackendConfig::named("ceph")).err().unwrap();
    assert_eq!(err.to_string(), "unknown backend \"ceph\"; known backends: docker, mock, third-party");
}

#[test]
fn the_driver_ships_both_built_in_backends() {
    let output = std::process::Command::new(crate::support::binary("dory")).arg("backends").output().unwrap();
    assert!(output.status.success(), "dory backends");
    let text = String::from_utf8(output.stdout).unwrap();
    let names: Vec<_> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["docker", "mock"], "{text}");
}
