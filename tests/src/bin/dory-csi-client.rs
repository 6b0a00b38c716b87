//! `dory-csi-client`: makes the CSI calls external-provisioner and kubelet
//! make, one per run, over a unix socket, and prints the reply. For the
//! demo (`scripts/demo`); the tests use the tonic client directly.
//!
//!   dory-csi-client --socket S info
//!   dory-csi-client --socket S create NAME BYTES [KEY=VALUE...]
//!   dory-csi-client --socket S publish VOLUME TARGET POD_UID
//!   dory-csi-client --socket S stats VOLUME PATH
//!   dory-csi-client --socket S unpublish VOLUME TARGET
//!   dory-csi-client --socket S delete VOLUME

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dory_csi::proto::controller_client::ControllerClient;
use dory_csi::proto::identity_client::IdentityClient;
use dory_csi::proto::node_client::NodeClient;
use dory_csi::proto::volume_capability::access_mode::Mode;
use dory_csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use dory_csi::proto::*;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Makes one CSI call, as a sidecar or kubelet would, and prints the reply.
#[derive(Parser)]
#[command(name = "dory-csi-client")]
struct Args {
    /// The driver's socket.
    #[arg(long)]
    socket: PathBuf,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    /// GetPluginInfo, GetPluginCapabilities, Probe, NodeGetInfo.
    Info,
    /// CreateVolume, as csi-provisioner sends it for a claim.
    Create { name: String, bytes: i64, parameters: Vec<String> },
    /// NodePublishVolume, as kubelet sends it (pod info in the context).
    Publish { volume: String, target: PathBuf, pod_uid: String },
    /// NodeGetVolumeStats.
    Stats { volume: String, path: PathBuf },
    /// NodeUnpublishVolume.
    Unpublish { volume: String, target: PathBuf },
    /// DeleteVolume.
    Delete { volume: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match runtime.block_on(call(args)) {
        Ok(reply) => {
            println!("{reply}");
            ExitCode::SUCCESS
        }
        Err(status) => {
            println!("error: {:?}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
    }
}

async fn connect(socket: PathBuf) -> Result<Channel, tonic::Status> {
    let connector = tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    });
    Endpoint::try_from("http://localhost")
        .expect("static URI")
        .timeout(Duration::from_secs(30))
        .connect_with_connector(connector)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

async fn call(args: Args) -> Result<String, tonic::Status> {
    let channel = connect(args.socket).await?;
    Ok(match args.call {
        Call::Info => {
            let mut identity = IdentityClient::new(channel.clone());
            let info = identity.get_plugin_info(GetPluginInfoRequest {}).await?.into_inner();
            let capabilities = identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await?.into_inner();
            let probe = identity.probe(ProbeRequest {}).await?.into_inner();
            let node = NodeClient::new(channel).node_get_info(NodeGetInfoRequest {}).await?.into_inner();
            format!("{info:?}\n{capabilities:?}\n{probe:?}\n{node:?}")
        }
        Call::Create { name, bytes, parameters } => {
            let parameters =
                parameters.iter().filter_map(|p| p.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
            let request = CreateVolumeRequest {
                name,
                capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
                volume_capabilities: vec![capability()],
                parameters,
                ..Default::default()
            };
            format!("{:?}", ControllerClient::new(channel).create_volume(request).await?.into_inner())
        }
        Call::Publish { volume, target, pod_uid } => {
            let context = [
                ("csi.storage.k8s.io/pod.name", "web"),
                ("csi.storage.k8s.io/pod.namespace", "default"),
                ("csi.storage.k8s.io/pod.uid", pod_uid.as_str()),
                ("csi.storage.k8s.io/serviceAccount.name", "default"),
                ("csi.storage.k8s.io/ephemeral", "false"),
            ];
            let request = NodePublishVolumeRequest {
                volume_id: volume,
                target_path: target.display().to_string(),
                volume_capability: Some(capability()),
                volume_context: context.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            };
            format!("{:?}", NodeClient::new(channel).node_publish_volume(request).await?.into_inner())
        }
        Call::Stats { volume, path } => {
            let request = NodeGetVolumeStatsRequest {
                volume_id: volume,
                volume_path: path.display().to_string(),
                staging_target_path: String::new(),
            };
            format!("{:?}", NodeClient::new(channel).node_get_volume_stats(request).await?.into_inner())
        }
        Call::Unpublish { volume, target } => {
            let request = NodeUnpublishVolumeRequest { volume_id: volume, target_path: target.display().to_string() };
            format!("{:?}", NodeClient::new(channel).node_unpublish_volume(request).await?.into_inner())
        }
        Call::Delete { volume } => {
            let request = DeleteVolumeRequest { volume_id: volume, ..Default::default() };
            format!("{:?}", ControllerClient::new(channel).delete_volume(request).await?.into_inner())
        }
    })
}
