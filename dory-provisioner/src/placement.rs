//! Where volumes live, and which doryd acts for them.
//!
//! A plugin whose scope is `global` serves every node: one central doryd
//! (Deployment, Lease) provisions and reclaims. A `local` plugin keeps each
//! volume on the node that created it: doryd then runs on every node
//! (`--node-name`, a DaemonSet, no Lease), and each instance provisions only
//! claims the scheduler placed on its node (`WaitForFirstConsumer`), pins the
//! PV to that node with `nodeAffinity`, and reclaims only PVs pinned to it, as
//! external-provisioner's distributed provisioning does.

use dory_core::Scope;
use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, VolumeNodeAffinity,
};

/// The node label PVs of node-local volumes are pinned by.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Which part of the cluster this doryd acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// One doryd for the whole cluster.
    Central,
    /// One doryd per node, acting for this node only.
    Node {
        /// The node's name (what `selected-node` says).
        name: String,
        /// The node's `kubernetes.io/hostname` label, which PVs are pinned
        /// by; usually the name, not always (`--hostname-override`).
        hostname: String,
    },
}

/// Whether this instance reclaims a released PV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// Yes: remove its volume.
    Yes,
    /// Only if this node's plugin has the volume (a PV of a node-local
    /// plugin made before PVs were pinned: where it lives is unknown).
    IfHere,
    /// No: another doryd's, or nobody can (the reason says why).
    No(Option<String>),
}

/// What doryd does with a claim, given the plugin's scope and the claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimPlacement {
    /// Provision it here; pin the PV to this node when given.
    Provision {
        /// The node the PV is pinned to (node-local volumes).
        pin_to: Option<String>,
    },
    /// Another doryd's claim (another node's); leave it alone, quietly.
    NotOurs,
    /// It cannot be provisioned as deployed; the reason says what to do.
    Refuse(String),
}

impl Placement {
    /// From `--node-name`; the hostname label is the name until known.
    pub fn from_node_name(node: Option<String>) -> Self {
        match node.filter(|n| !n.is_empty()) {
            Some(name) => Self::Node { hostname: name.clone(), name },
            None => Self::Central,
        }
    }

    /// The same placement with the node's `kubernetes.io/hostname` label.
    pub fn with_hostname(self, hostname: Option<String>) -> Self {
        match (self, hostname.filter(|h| !h.is_empty())) {
            (Self::Node { name, .. }, Some(hostname)) => Self::Node { name, hostname },
            (other, _) => other,
        }
    }

    /// The node this instance serves, if it serves one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::Central => None,
            Self::Node { name, .. } => Some(name),
        }
    }

    /// Decides a claim: `selected_node` is the scheduler's pick (absent for
    /// Immediate classes), `wait_for_consumer` whether the class waits.
    pub fn claim(
        &self,
        provisioner: &str,
        scope: Scope,
        wait_for_consumer: bool,
        selected_node: Option<&str>,
    ) -> ClaimPlacement {
        match (self, scope) {
            (Self::Central, Scope::Global) => ClaimPlacement::Provision { pin_to: None },
            (Self::Central, Scope::Local) => ClaimPlacement::Refuse(format!(
                "the plugin of {provisioner} has local scope: each volume lives on one node, and a central doryd \
                 cannot place it there. Run doryd on every node instead (deploy/doryd-per-node.yaml: a DaemonSet \
                 with --node-name) with a WaitForFirstConsumer StorageClass"
            )),
            (Self::Node { .. }, _) if !wait_for_consumer => ClaimPlacement::Refuse(format!(
                "doryd runs per node for {provisioner}, so it provisions on the node the scheduler picks: \
                 the StorageClass must have volumeBindingMode WaitForFirstConsumer"
            )),
            (Self::Node { name, .. }, _) if selected_node != Some(name.as_str()) => ClaimPlacement::NotOurs,
            (Self::Node { hostname, .. }, Scope::Local) => ClaimPlacement::Provision { pin_to: Some(hostname.clone()) },
            (Self::Node { .. }, Scope::Global) => ClaimPlacement::Provision { pin_to: None },
        }
    }

    /// Whether this instance reclaims `pv`, whose plugin has `scope`: a PV
    /// pinned to a node belongs to that node's doryd; an unpinned one of a
    /// global plugin to any doryd; an unpinned one of a local plugin (made
    /// before doryd pinned PVs) to the node whose plugin has it, which a
    /// central doryd cannot tell.
    pub fn reclaims(&self, pv: &PersistentVolume, scope: Scope) -> Reclaim {
        let pinned = pinned_node(pv);
        match (self, scope, pinned) {
            (Self::Central, _, Some(_)) => Reclaim::No(None),
            (Self::Central, Scope::Global, None) => Reclaim::Yes,
            (Self::Central, Scope::Local, None) => Reclaim::No(Some(
                "its plugin has local scope and the PV names no node, so a central doryd cannot tell which \
                 node holds the volume; run doryd per node (deploy/doryd-per-node.yaml), which reclaims it \
                 on the node whose plugin has it"
                    .into(),
            )),
            (Self::Node { hostname, .. }, _, Some(pin)) if pin == *hostname => Reclaim::Yes,
            (Self::Node { .. }, _, Some(_)) => Reclaim::No(None),
            (Self::Node { .. }, Scope::Global, None) => Reclaim::Yes,
            (Self::Node { .. }, Scope::Local, None) => Reclaim::IfHere,
        }
    }
}

/// The `nodeAffinity` that pins a PV to `node`.
pub fn node_affinity(node: &str) -> VolumeNodeAffinity {
    VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: HOSTNAME_LABEL.into(),
                    operator: "In".into(),
                    values: Some(vec![node.into()]),
                }]),
                match_fields: None,
            }],
        }),
    }
}

/// The node a PV is pinned to by a `kubernetes.io/hostname In [node]`
/// affinity with exactly one node, as doryd writes it.
pub fn pinned_node(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == HOSTNAME_LABEL && e.operator == "In")
        .and_then(|e| e.values.as_ref())
        .filter(|values| values.len() == 1)
        .map(|values| values[0].clone())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PersistentVolumeSpec;

    use super::*;

    #[test]
    fn central_doryd_refuses_local_plugins() {
        let central = Placement::Central;
        assert_eq!(central.claim("p", Scope::Global, false, None), ClaimPlacement::Provision { pin_to: None });
        let ClaimPlacement::Refuse(why) = central.claim("p", Scope::Local, true, Some("n1")) else { panic!() };
        assert!(why.contains("local scope") && why.contains("--node-name"), "{why}");
    }

    #[test]
    fn per_node_doryd_takes_only_its_nodes_claims() {
        let node = Placement::from_node_name(Some("n1".into()));
        assert_eq!(
            node.claim("p", Scope::Local, true, Some("n1")),
            ClaimPlacement::Provision { pin_to: Some("n1".into()) }
        );
        assert_eq!(node.claim("p", Scope::Local, true, Some("n2")), ClaimPlacement::NotOurs);
        assert_eq!(node.claim("p", Scope::Global, true, Some("n1")), ClaimPlacement::Provision { pin_to: None });
        let ClaimPlacement::Refuse(why) = node.claim("p", Scope::Local, false, None) else { panic!() };
        assert!(why.contains("WaitForFirstConsumer"), "{why}");
        assert_eq!(Placement::from_node_name(Some(String::new())), Placement::Central);
    }

    #[test]
    fn reclaim_follows_the_pin() {
        let pinned = PersistentVolume {
            spec: Some(PersistentVolumeSpec { node_affinity: Some(node_affinity("host-1")), ..Default::default() }),
            ..Default::default()
        };
        let free = PersistentVolume::default();
        let n1 = Placement::from_node_name(Some("n1".into())).with_hostname(Some("host-1".into()));
        let n2 = Placement::from_node_name(Some("n2".into()));
        assert_eq!(pinned_node(&pinned).as_deref(), Some("host-1"));
        assert_eq!(n1.reclaims(&pinned, Scope::Local), Reclaim::Yes, "pinned by the hostname label");
        assert_eq!(n2.reclaims(&pinned, Scope::Local), Reclaim::No(None));
        assert_eq!(Placement::Central.reclaims(&pinned, Scope::Global), Reclaim::No(None));
        assert_eq!(Placement::Central.reclaims(&free, Scope::Global), Reclaim::Yes);
        assert!(
            matches!(Placement::Central.reclaims(&free, Scope::Local), Reclaim::No(Some(why)) if why.contains("per node"))
        );
        assert_eq!(n2.reclaims(&free, Scope::Global), Reclaim::Yes);
        assert_eq!(n2.reclaims(&free, Scope::Local), Reclaim::IfHere);
    }
}
