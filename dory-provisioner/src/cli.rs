//! doryd's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::options::PvNaming;

/// doryd: provisions Kubernetes volumes through Docker volume plugins.
///
/// doryd watches PersistentVolumeClaims whose StorageClass provisioner is
/// <prefix>/<driver> (or one of --provisioner), creates the volume through
/// the backend that the driver's json names
/// (<plugin-dir>/<prefix>~<driver>/<driver>.json, or --config for all),
/// and creates a PersistentVolume bound to the claim, with a flexVolume
/// source that the dory FlexVolume driver mounts. Released volumes whose
/// reclaim policy is Delete are removed from the backend.
///
/// The original form `doryd <kubeconfig> [prefix]` still works.
#[derive(Debug, Parser)]
#[command(name = "doryd", version = dory_core::VERSION, verbatim_doc_comment)]
pub struct Args {
    /// Kubeconfig file (legacy positional form).
    #[arg(value_name = "KUBECONFIG", conflicts_with = "kubeconfig")]
    pub legacy_kubeconfig: Option<PathBuf>,

    /// Provisioner prefix (legacy positional form).
    #[arg(value_name = "PREFIX", conflicts_with = "prefix")]
    pub legacy_prefix: Option<String>,

    /// Kubeconfig file [default: in-cluster config, else $KUBECONFIG or ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Serve every StorageClass whose provisioner is <PREFIX>/<driver>.
    #[arg(long, default_value = "dev.hpe.com")]
    pub prefix: String,

    /// Serve exactly these provisioners instead of a prefix (repeatable).
    #[arg(long = "provisioner", value_name = "NAME")]
    pub provisioners: Vec<String>,

    /// kubelet's FlexVolume plugin directory, where the drivers' json files are.
    #[arg(long, default_value = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec")]
    pub plugin_dir: PathBuf,

    /// One driver-style json configuration for every provisioner, instead of the drivers' files.
    /// With the docker backend and no socket set, <prefix>/<driver> uses the plugin named <driver>.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Per-node mode, for plugins whose scope is local: act only for this
    /// node (claims the scheduler placed here, PVs pinned here), without
    /// leader election. A DaemonSet passes --node-name=$(NODE_NAME).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Run only while holding the Lease (for several replicas; off in per-node mode).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,

    /// Namespace of the leader election Lease [default: $POD_NAMESPACE, else default].
    #[arg(long, value_name = "NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader election Lease [default: doryd-<prefix with dots as dashes>].
    #[arg(long, value_name = "NAME")]
    pub leader_election_lease: Option<String>,

    /// How long a Lease holder may go without renewing before another replica takes over.
    #[arg(long, default_value = "15s", value_parser = humantime_duration, value_name = "DURATION")]
    pub leader_election_lease_duration: Duration,

    /// This replica's identity in the Lease [default: <hostname>_<pid>].
    #[arg(long, value_name = "ID")]
    pub identity: Option<String>,

    /// Address for /metrics and /healthz; "none" turns them off.
    #[arg(long, default_value = "0.0.0.0:9090", value_name = "ADDR")]
    pub metrics_address: String,

    /// Claims and volumes reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub workers: u16,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing syntax, e.g. info or dory_provisioner=debug).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub log_level: String,

    /// How PVs and volumes are named.
    #[arg(long, value_enum, default_value = "uid")]
    pub pv_naming: PvNaming,

    /// First retry delay of a failed claim or volume (doubles per failure).
    #[arg(long, default_value = "1s", value_parser = humantime_duration, value_name = "DURATION")]
    pub retry_interval_start: Duration,

    /// Largest retry delay.
    #[arg(long, default_value = "5m", value_parser = humantime_duration, value_name = "DURATION")]
    pub retry_interval_max: Duration,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

impl Args {
    /// The kubeconfig, from the flag or the legacy position.
    pub fn kubeconfig(&self) -> Option<PathBuf> {
        self.kubeconfig.clone().or_else(|| self.legacy_kubeconfig.clone())
    }

    /// The prefix, from the legacy position or the flag.
    pub fn prefix(&self) -> String {
        self.legacy_prefix.clone().unwrap_or_else(|| self.prefix.clone())
    }

    /// The metrics address, or `None` when turned off.
    pub fn metrics_address(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics_address.as_str() {
            "none" | "" => Ok(None),
            text => text.parse().map(Some).map_err(|e| format!("--metrics-address {text:?}: {e}")),
        }
    }

    /// The Lease name: a DNS label from the prefix or explicit provisioners.
    pub fn lease_name(&self) -> String {
        if let Some(name) = &self.leader_election_lease {
            return name.clone();
        }
        let base = if self.provisioners.is_empty() { self.prefix() } else { self.provisioners.join("-") };
        let cleaned: String =
            base.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        format!("doryd-{}", cleaned.trim_matches('-'))
    }
}
