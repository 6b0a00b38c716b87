//! `doryd`: parses flags, connects to the API server, takes the Lease,
//! serves metrics and runs the controllers until SIGTERM or the Lease is lost.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dory_provisioner::backends::BackendResolver;
use dory_provisioner::cli::{Args, LogFormat};
use dory_provisioner::controller::{Backoff, Context, Served, run};
use dory_provisioner::metrics::{self, Metrics};
use dory_provisioner::placement::{HOSTNAME_LABEL, Placement};
use kube::runtime::events::Reporter;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::new(&args.log_level);
    let subscriber = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("doryd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("doryd: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn client(args: &Args) -> Result<kube::Client, String> {
    let config = match args.kubeconfig() {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| format!("no in-cluster config and no kubeconfig: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

async fn serve(args: Args) -> Result<(), String> {
    let client = client(&args).await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "doryd".into());
        format!("{}_{}", host.trim(), std::process::id())
    });
    let served = if args.provisioners.is_empty() {
        Served::Prefix(args.prefix())
    } else {
        Served::Names(args.provisioners.iter().cloned().collect())
    };
    tracing::info!(?served, %identity, version = dory_core::VERSION, "doryd starting");

    let metrics = Arc::new(Metrics::default());
    if let Some(address) = args.metrics_address()? {
        let listener =
            tokio::net::TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
        tracing::info!(address = %listener.local_addr().map_err(|e| e.to_string())?, "serving /metrics and /healthz");
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }

    let mut placement = Placement::from_node_name(args.node_name.clone());
    if let Some(node) = placement.node() {
        // PVs are pinned by the node's kubernetes.io/hostname label, which
        // need not be its name.
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        let hostname = match nodes.get_opt(node).await {
            Ok(found) => found.and_then(|n| n.metadata.labels?.get(HOSTNAME_LABEL).cloned()),
            Err(err) => {
                tracing::warn!(node, error = %err, "cannot read this node's labels; pinning PVs by its name");
                None
            }
        };
        tracing::info!(node, ?hostname, "per-node mode: acting for this node only, without leader election");
        placement = placement.with_hostname(hostname);
    }
    let mut leadership = None;
    if args.leader_election && placement == Placement::Central {
        let namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let lease = args.lease_name();
        tracing::info!(%lease, %namespace, "waiting for leadership");
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &lease)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(args.leader_election_lease_duration.as_secs().max(2))
            .with_grace((args.leader_election_lease_duration.as_secs() / 3).max(1))
            .build()
            .await
            .map_err(|e| format!("leader election on Lease {namespace}/{lease}: {e}"))?;
        let (mut is_leader, task) = manager.watch().await;
        while !*is_leader.borrow_and_update() {
            if is_leader.changed().await.is_err() {
                return Err("leader election ended before this replica became leader".into());
            }
        }
        tracing::info!(%lease, "became leader");
        leadership = Some((is_leader, task));
    }

    let ctx = Arc::new(
        Context::new(
            client,
            served,
            BackendResolver::new(&args.plugin_dir, args.config.clone()),
            metrics,
            args.pv_naming,
            Backoff { start: args.retry_interval_start, max: args.retry_interval_max },
            Reporter { controller: "doryd".into(), instance: Some(identity) },
        )
        .with_placement(placement),
    );
    let controllers = run(ctx, args.workers);
    let lost = async {
        match &mut leadership {
            Some((is_leader, _)) => loop {
                if is_leader.changed().await.is_err() || !*is_leader.borrow() {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    let terminated = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        () = controllers => Err("the controllers stopped".into()),
        () = lost => Err("lost the leader election Lease; exiting so another replica takes over".into()),
        () = terminated => {
            tracing::info!("terminating");
            Ok(())
        }
    }
}
