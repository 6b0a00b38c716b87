//! `doryd`: parses flags, connects to the API server, takes the Lease,
//! serves metrics and health and runs the controllers until SIGTERM (then
//! it releases the Lease) or until it must step down (the Lease was lost or
//! could not be renewed in time; then it exits non-zero).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dory_provisioner::backends::BackendResolver;
use dory_provisioner::cli::{Args, LogFormat};
use dory_provisioner::controller::{Backoff, Context, Served, run};
use dory_provisioner::health::Health;
use dory_provisioner::http;
use dory_provisioner::leader::{Elector, LeaseConfig};
use dory_provisioner::metrics::Metrics;
use dory_provisioner::placement::{HOSTNAME_LABEL, Placement};
use kube::runtime::events::Reporter;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::new(&args.log_level);
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    // One thread: doryd waits on the API server and the plugins, and each
    // worker thread would cost it a malloc arena and a stack (peak RSS).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
    let mut termination = Termination::new()?;
    let client = client(&args).await?;
    let identity = args.identity();
    let served = if args.provisioners.is_empty() {
        Served::Prefix(args.prefix())
    } else {
        Served::Names(args.provisioners.iter().cloned().collect())
    };
    tracing::info!(?served, %identity, version = dory_core::VERSION, "doryd starting");

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(args.watch_failure_threshold));
    if args.metrics_address.is_some() {
        tracing::warn!("--metrics-address is deprecated; use --http-endpoint");
    }
    if let Some(address) = args.http_endpoint()? {
        let listener =
            tokio::net::TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
        tracing::info!(address = %listener.local_addr().map_err(|e| e.to_string())?, "serving /metrics, /healthz and /healthz/leader-election");
        tokio::spawn(http::serve(listener, metrics.clone(), health.clone()));
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
    let mut elector = None;
    if args.leader_election && placement == Placement::Central {
        let config = LeaseConfig {
            namespace: args
                .leader_election_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".into()),
            name: args.lease_name(),
            identity: identity.clone(),
            lease_duration: args.leader_election_lease_duration,
            renew_deadline: args.leader_election_renew_deadline,
            retry_period: args.leader_election_retry_period,
        };
        config.validate()?;
        tracing::info!(lease = %config.name, namespace = %config.namespace, "waiting for leadership");
        let lease = config.name.clone();
        let mut candidate = Elector::new(client.clone(), config, health.clone());
        tokio::select! {
            () = candidate.acquire() => {}
            () = termination.recv() => {
                tracing::info!("terminating");
                // A Lease write may have landed whose answer we did not wait for.
                match tokio::time::timeout(Duration::from_secs(5), candidate.release_unacknowledged()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(error = %err, "cannot release the Lease; it expires on its own"),
                    Err(_) => tracing::warn!("releasing the Lease timed out; it expires on its own"),
                }
                return Ok(());
            }
        }
        tracing::info!(%lease, "became leader");
        elector = Some(candidate);
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
    let mut controllers = Box::pin(run(ctx, args.workers, health));
    let held = async {
        match &mut elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = &mut controllers => Err("the controllers stopped".to_owned()),
        step_down = held => Err(step_down.to_string()),
        () = termination.recv() => Ok(()),
    };
    // Stop acting first, then hand the Lease over.
    drop(controllers);
    if outcome.is_ok() {
        tracing::info!("terminating");
        if let Some(elector) = &mut elector {
            match tokio::time::timeout(Duration::from_secs(5), elector.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "cannot release the Lease; it expires on its own"),
                Err(_) => tracing::warn!("releasing the Lease timed out; it expires on its own"),
            }
        }
    }
    outcome
}

/// SIGTERM and SIGINT, listened for from the start, so that one arriving
/// between two waits is not lost.
struct Termination {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Termination {
    fn new() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind| signal(kind).map_err(|e| format!("cannot listen for signals: {e}"));
        Ok(Self { term: listen(SignalKind::terminate())?, int: listen(SignalKind::interrupt())? })
    }

    /// Resolves on SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
