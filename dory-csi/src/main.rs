//! `dory-csi`: serves a Docker volume plugin as a CSI driver.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dory_csi::config::{self, Args, LogFormat};
use dory_csi::driver::CsiDriver;
use dory_csi::server::{self, Services};

// Backends are linked only when named: these are the ones the driver ships.
use dory_backend_docker as _;
use dory_backend_mock as _;

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dory-csi: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Once, at the edge (stderr is also where the log goes).
            eprintln!("dory-csi: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: Args) -> Result<(), String> {
    if !args.controller && !args.node {
        return Err("nothing to serve: pass --controller, --node or both".into());
    }
    // The node's name: --nodeid, else $NODE_NAME (clap reads it), else the host name.
    let node_id = args.nodeid.clone().filter(|id| !id.is_empty()).unwrap_or_else(dory_mount::node_name);
    let socket = args.socket_path()?;
    let settings = config::load(args.config.as_deref(), &args.drivername)?;
    let backend = dory_core::registry::build_backend(&settings.backend)
        .map_err(|e| format!("backend: {}", dory_core::error_chain(&e)))?;
    if args.check_args {
        // Everything serving checks is checked; nothing is bound.
        println!(
            "dory-csi: the flags and {} are valid",
            args.config.as_deref().unwrap_or("(no --config)".as_ref()).display()
        );
        return Ok(());
    }
    let listener = server::bind(&socket)?;
    tracing::info!(
        endpoint = %socket.display(), driver = %args.drivername, node = %node_id, controller = args.controller,
        node_service = args.node, backend = settings.backend.backend(), version = dory_csi::VERSION, "serving CSI"
    );
    let driver = Arc::new(CsiDriver::new(args.drivername.clone(), node_id, settings, backend));
    let services = Services { controller: args.controller, node: args.node };
    server::serve(driver, services, listener, &socket, server::signalled()).await
}
