//! `dory-fake-apiserver`: the tests' fake Kubernetes API server (with the PV
//! controller emulation) as a process, for the README demo. Not a real API
//! server: see the `fake_apiserver` module docs for what it does and does not.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dory_tests::fake_apiserver::FakeApiServer;

/// Serve the fake Kubernetes API server used by Dory's tests and demo.
#[derive(Debug, Parser)]
#[command(name = "dory-fake-apiserver", version)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write a kubeconfig for this server here.
    #[arg(long, value_name = "FILE")]
    kubeconfig: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let server = match FakeApiServer::start_on(args.port).await {
        Ok(server) => Arc::new(server),
        Err(err) => {
            eprintln!("dory-fake-apiserver: cannot listen on 127.0.0.1:{}: {err}", args.port);
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(err) = std::fs::write(&args.kubeconfig, server.kubeconfig()) {
        eprintln!("dory-fake-apiserver: cannot write {}: {err}", args.kubeconfig.display());
        return std::process::ExitCode::FAILURE;
    }
    let _pv_controller = dory_tests::pv_controller::spawn(server.clone(), Duration::from_millis(50));
    eprintln!("dory-fake-apiserver: serving {} (kubeconfig {})", server.url(), args.kubeconfig.display());
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}
