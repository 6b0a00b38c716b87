//! Serving the services on the CSI endpoint, a unix socket, until SIGTERM
//! or SIGINT.

use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::controller::ControllerService;
use crate::driver::CsiDriver;
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::proto::controller_server::ControllerServer;
use crate::proto::identity_server::IdentityServer;
use crate::proto::node_server::NodeServer;

/// HTTP/2 streams a client may open at once on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// Calls of one connection worked on at once; more wait their turn.
pub const MAX_CALLS_PER_CONNECTION: usize = 64;

/// Which services an instance serves (Identity always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Services {
    /// Controller.
    pub controller: bool,
    /// Node.
    pub node: bool,
}

/// Binds the socket at `path`: its directory is created if missing, a
/// stale socket from an earlier run is replaced, anything else is refused.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
        }
        Ok(_) => return Err(format!("{} exists and is not a socket; refusing to replace it", path.display())),
        Err(_) => {}
    }
    UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))
}

/// Serves until `shutdown` resolves, then removes the socket.
pub async fn serve(
    driver: Arc<CsiDriver>,
    services: Services,
    listener: UnixListener,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let controller = services.controller.then(|| ControllerServer::new(ControllerService::new(driver.clone())));
    let node = services.node.then(|| NodeServer::new(NodeService::new(driver.clone())));
    // Bounded work in flight: CSI callers keep few calls per volume, and a
    // burst (1000 creates at once) waits in the socket instead of in memory.
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .add_service(IdentityServer::new(IdentityService::new(driver)))
        .add_optional_service(controller)
        .add_optional_service(node)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    result.map_err(|e| format!("serving {} failed: {e}", socket.display()))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}
