//! What every service shares: the backend, the driver's identity, the
//! plugin's scope, the in-flight table, and the checks of volume
//! capabilities and topology that several RPCs make.

use std::collections::HashMap;
use std::sync::Arc;

use dory_core::size::SizeRules;
use dory_core::{DriverConfig, Scope, VolumeBackend};
use dory_mount::{Publisher, PublisherSettings};
use tokio::sync::OnceCell;

use crate::error::CsiError;
use crate::inflight::InFlight;
use crate::proto::volume_capability::access_mode::Mode;
use crate::proto::volume_capability::{AccessMode, AccessType};
use crate::proto::{Topology, VolumeCapability};
use crate::publish::EphemeralMarks;

/// Keys of the volume context and parameters that Kubernetes sets; never
/// passed to the plugin as options.
pub const K8S_PREFIX: &str = "csi.storage.k8s.io/";
/// Volume context key kubelet sets to `"true"` for inline ephemeral volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// Volume context key holding the pod's UID (with `podInfoOnMount`).
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";

/// The shared state of one `dory-csi` process.
pub struct CsiDriver {
    /// The CSI driver name.
    pub name: String,
    /// This node's id.
    pub node_id: String,
    /// The settings file's contents.
    pub settings: DriverConfig,
    /// How a capacity becomes the size option (doryd's rules).
    pub size: SizeRules,
    /// The storage.
    pub backend: Arc<dyn VolumeBackend>,
    /// Calls in progress, per volume.
    pub inflight: InFlight,
    /// The mount engine, shared with `dory mount`.
    pub publisher: Publisher,
    /// Which targets hold inline ephemeral volumes.
    pub ephemeral: EphemeralMarks,
    /// The Create option that names a volume to clone, only when the
    /// settings file sets `cloneOptionName`: a plugin that does not know
    /// the option would ignore it and make an empty volume, so without it
    /// cloning is neither advertised nor accepted.
    pub clone_option: Option<String>,
    scope: OnceCell<Scope>,
}

impl CsiDriver {
    /// A driver over `backend`.
    pub fn new(name: String, node_id: String, settings: DriverConfig, backend: Arc<dyn VolumeBackend>) -> Self {
        // No SELinux relabelling (kubelet's container runtime relabels CSI
        // volumes) and no Capabilities call per publish (Probe covers it).
        let publisher_settings = PublisherSettings {
            state_dir: settings.state_dir.clone(),
            selinux_label: None,
            probe_capabilities: false,
            lock_timeout: settings.lock_timeout,
        };
        let publisher =
            Publisher::new(publisher_settings, backend.clone(), Arc::new(dory_mount::LinuxMounter::default()));
        let clone_option = match settings.backend.string(dory_core::config::keys::CLONE_OPTION) {
            Ok(Some(key)) if !key.is_empty() => Some(settings.clone_option.clone()),
            _ => None,
        };
        Self {
            name,
            node_id,
            clone_option,
            size: SizeRules::from_config(&settings),
            ephemeral: EphemeralMarks::new(&settings.state_dir),
            settings,
            backend,
            inflight: InFlight::default(),
            publisher,
            scope: OnceCell::new(),
        }
    }

    /// The plugin's scope, asked once (it must not change while we run:
    /// every instance must advertise the same capabilities).
    pub async fn scope(&self) -> Result<Scope, CsiError> {
        self.scope
            .get_or_try_init(|| async {
                let capabilities =
                    self.backend.capabilities().await.map_err(|e| CsiError::backend("(capabilities)", e))?;
                tracing::info!(scope = %capabilities.scope, "plugin scope");
                Ok(capabilities.scope)
            })
            .await
            .copied()
    }

    /// The topology key: `<driver name>/node`.
    pub fn topology_key(&self) -> String {
        format!("{}/node", self.name)
    }

    /// Where this node's volumes are reachable: `None` for a `global`
    /// plugin (everywhere), this node's segment for a `local` one.
    pub async fn topology(&self) -> Result<Option<Topology>, CsiError> {
        match self.scope().await? {
            Scope::Global => Ok(None),
            Scope::Local => {
                Ok(Some(Topology { segments: HashMap::from([(self.topology_key(), self.node_id.clone())]) }))
            }
        }
    }
}

/// Why a volume capability cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// Malformed: no access type or no/unknown access mode.
    Invalid(String),
    /// Well-formed but beyond what these volumes can do.
    Exceeds(String),
}

/// Checks one capability: Docker volumes are directories, so mount access
/// only; a `local` plugin's volume is on one node, so single-node modes only.
pub fn check_capability(capability: &VolumeCapability, scope: Scope) -> Result<(), Unsupported> {
    match capability.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => {
            return Err(Unsupported::Invalid(
                "block access is not supported: Docker volume plugins provide directories".into(),
            ));
        }
        None => return Err(Unsupported::Invalid("a volume capability needs an access type (mount)".into())),
    }
    let mode = capability.access_mode.as_ref().map(AccessMode::mode).unwrap_or(Mode::Unknown);
    let multi_node =
        matches!(mode, Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter);
    match mode {
        Mode::Unknown => Err(Unsupported::Invalid("a volume capability needs a known access mode".into())),
        _ if multi_node && scope == Scope::Local => Err(Unsupported::Exceeds(format!(
            "access mode {} needs a volume reachable from several nodes; this plugin's volumes are local to one",
            mode.as_str_name()
        ))),
        _ => Ok(()),
    }
}

/// True for modes that only read.
pub fn is_read_only_mode(capability: &VolumeCapability) -> bool {
    matches!(
        capability.access_mode.as_ref().map(AccessMode::mode),
        Some(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
    )
}

/// `map` without the keys Kubernetes adds (`csi.storage.k8s.io/*`).
pub fn without_k8s_keys<'a>(
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> std::collections::BTreeMap<String, String> {
    map.into_iter().filter(|(k, _)| !k.starts_with(K8S_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::volume_capability::{BlockVolume, MountVolume};

    fn capability(access: Option<AccessType>, mode: Mode) -> VolumeCapability {
        VolumeCapability { access_type: access, access_mode: Some(AccessMode { mode: mode as i32 }) }
    }

    #[test]
    fn mount_access_in_single_node_modes_is_always_fine() {
        let mount = Some(AccessType::Mount(MountVolume::default()));
        for mode in [Mode::SingleNodeWriter, Mode::SingleNodeReaderOnly, Mode::SingleNodeMultiWriter] {
            assert_eq!(check_capability(&capability(mount.clone(), mode), Scope::Local), Ok(()));
        }
        assert_eq!(check_capability(&capability(mount.clone(), Mode::MultiNodeMultiWriter), Scope::Global), Ok(()));
        assert!(matches!(
            check_capability(&capability(mount.clone(), Mode::MultiNodeMultiWriter), Scope::Local),
            Err(Unsupported::Exceeds(_))
        ));
        assert!(matches!(
            check_capability(&capability(mount, Mode::Unknown), Scope::Local),
            Err(Unsupported::Invalid(_))
        ));
    }

    #[test]
    fn block_access_is_invalid() {
        let block = capability(Some(AccessType::Block(BlockVolume {})), Mode::SingleNodeWriter);
        assert!(matches!(check_capability(&block, Scope::Global), Err(Unsupported::Invalid(m)) if m.contains("block")));
        assert!(matches!(
            check_capability(&capability(None, Mode::SingleNodeWriter), Scope::Global),
            Err(Unsupported::Invalid(_))
        ));
    }
}
