//! `dory-mock-plugin`: serves the mock backend as a Docker volume plugin on
//! a unix socket, with optional faults, for demos and tests.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dory_backend_docker::{Dialect, PluginServer, ServerOptions, bind_socket};
use dory_backend_mock::{Fault, MockBackend, default_root};
use dory_core::Operation;

/// Serve Dory's in-memory mock backend as a Docker Volume Plugin.
///
/// Volumes are directories under --root; the plugin answers the Docker
/// Volume Plugin protocol (Plugin.Activate, VolumeDriver.*) on --socket
/// until SIGINT or SIGTERM, then removes the socket.
///
/// Faults make the plugin misbehave on purpose:
///   --fail mount="disk on fire"   every Mount fails with that message
///   --delay create=3000           every Create waits 3 s first
///   --dialect 500                 errors are HTTP 500 + Err (default 200 + Err)
///   --dialect get=garbage         Get replies are not JSON
///   --dialect mount=reset         Mount is carried out, then the connection closed
///   --dialect mount=huge          Mount replies are padded past 16 MiB
#[derive(Debug, Parser)]
#[command(name = "dory-mock-plugin", version, verbatim_doc_comment)]
struct Args {
    /// Unix socket to listen on (a stale socket file is replaced).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,

    /// Directory holding the volumes [default: $TMPDIR/dory-mock].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,

    /// Fail every call of OPERATION with MESSAGE (repeatable).
    #[arg(long, value_name = "OPERATION=MESSAGE", value_parser = parse_fail)]
    fail: Vec<(Operation, String)>,

    /// Delay every call of OPERATION by MILLIS milliseconds (repeatable).
    #[arg(long, value_name = "OPERATION=MILLIS", value_parser = parse_delay)]
    delay: Vec<(Operation, Duration)>,

    /// How errors are reported: 200, 400, 500, garbage, reset or huge, for all endpoints
    /// or as OPERATION=DIALECT for one (repeatable).
    #[arg(long, value_name = "[OPERATION=]DIALECT", value_parser = parse_dialect)]
    dialect: Vec<(Option<Operation>, Dialect)>,

    /// The scope answered to Capabilities: `global`, or `local` to act as a
    /// node-local plugin (one instance per "node").
    #[arg(long, default_value = "global", value_parser = ["global", "local"])]
    scope: String,

    /// Log filter (tracing syntax), logs go to stderr.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

fn parse_operation(text: &str) -> Result<Operation, String> {
    Operation::parse(text).ok_or_else(|| {
        let known: Vec<_> = Operation::ALL.iter().map(|op| op.as_str()).collect();
        format!("unknown operation {text:?}; expected one of {}", known.join(", "))
    })
}

fn parse_fail(text: &str) -> Result<(Operation, String), String> {
    let (op, message) = text.split_once('=').ok_or("expected OPERATION=MESSAGE")?;
    Ok((parse_operation(op)?, message.to_owned()))
}

fn parse_delay(text: &str) -> Result<(Operation, Duration), String> {
    let (op, millis) = text.split_once('=').ok_or("expected OPERATION=MILLIS")?;
    let millis: u64 = millis.parse().map_err(|_| format!("{millis:?} is not a number of milliseconds"))?;
    Ok((parse_operation(op)?, Duration::from_millis(millis)))
}

fn parse_dialect(text: &str) -> Result<(Option<Operation>, Dialect), String> {
    let (op, dialect) = match text.split_once('=') {
        Some((op, dialect)) => (Some(parse_operation(op)?), dialect),
        None => (None, text),
    };
    let dialect = Dialect::parse(dialect)
        .ok_or_else(|| format!("unknown dialect {dialect:?}; expected 200, 400, 500, garbage, reset or huge"))?;
    Ok((op, dialect))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dory-mock-plugin: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dory-mock-plugin: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let root = args.root.unwrap_or_else(default_root);
    let backend = MockBackend::new(&root)
        .map_err(|e| format!("cannot use volume root {}: {e}", root.display()))?
        .with_scope(dory_core::Scope::parse_lenient(&args.scope));
    let mut faults: std::collections::HashMap<Operation, Fault> = Default::default();
    for (op, message) in args.fail {
        faults.entry(op).or_default().error = Some(message);
    }
    for (op, delay) in args.delay {
        faults.entry(op).or_default().delay = Some(delay);
    }
    for (op, fault) in faults {
        backend.faults().set(op, fault);
    }
    let mut options = ServerOptions::default();
    for (op, dialect) in args.dialect {
        match op {
            Some(op) => {
                options.dialects.insert(op, dialect);
            }
            None => options.default_dialect = dialect,
        }
    }
    let listener =
        bind_socket(&args.socket).await.map_err(|e| format!("cannot listen on {}: {e}", args.socket.display()))?;
    tracing::info!(socket = %args.socket.display(), root = %root.display(), "serving the mock backend as a Docker volume plugin");
    let server = PluginServer::new(Arc::new(backend), options);
    let result = server.serve(listener, shutdown_signal()).await;
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!("stopped");
    result.map_err(|e| format!("serving {} failed: {e}", args.socket.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
