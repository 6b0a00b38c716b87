//! Shared test helpers: in-process mock plugins, scripted raw servers, paths.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dory_backend_docker::{
    CallPolicy, PluginAddress, PluginClient, PluginServer, RetryPolicy, ServerOptions, bind_socket,
};
use dory_backend_mock::MockBackend;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A call policy for tests: short limits, quick retries.
pub fn fast_policy() -> CallPolicy {
    CallPolicy {
        long_timeout: Duration::from_secs(5),
        short_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            budget: Duration::from_millis(400),
        },
        max_response_bytes: 1024 * 1024,
    }
}

/// The mock backend served in-process on a temporary socket.
pub struct MockPlugin {
    _dir: TempDir,
    pub socket: PathBuf,
    pub backend: Arc<MockBackend>,
    pub server: Arc<PluginServer>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl MockPlugin {
    pub async fn start() -> Self {
        Self::with_options(ServerOptions::default()).await
    }

    pub async fn with_options(options: ServerOptions) -> Self {
        Self::serving(options, dory_core::Scope::Global).await
    }

    /// A plugin whose Capabilities say `scope`: `Local` stands in for one
    /// node's node-local plugin.
    pub async fn serving(options: ServerOptions, scope: dory_core::Scope) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run/mock.sock");
        let backend = Arc::new(MockBackend::new(dir.path().join("volumes")).expect("mock root").with_scope(scope));
        let listener = bind_socket(&socket).await.expect("bind mock plugin socket");
        let server = PluginServer::new(backend.clone(), options);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.clone().serve(listener, async {
            let _ = rx.await;
        }));
        Self { _dir: dir, socket, backend, server, shutdown: Some(tx), task: Some(task) }
    }

    pub fn address(&self) -> PluginAddress {
        PluginAddress::Unix(self.socket.clone())
    }

    pub fn client(&self) -> PluginClient {
        PluginClient::new(self.address(), fast_policy())
    }

    /// Stops serving; the socket file stays behind, as after a crash.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for MockPlugin {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// One request as a raw server saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a raw server does with one request.
pub enum RawReply {
    /// Write these bytes, then close.
    Bytes(Vec<u8>),
    /// Never answer.
    Hang,
    /// Close the connection without a byte of reply.
    Close,
    /// Write these bytes, then one space every 50 ms, forever.
    Trickle(Vec<u8>),
    /// Write these bytes, then never anything more.
    BytesThenHang(Vec<u8>),
}

/// An HTTP/1.1 reply with `Connection: close`.
pub fn http(status: &str, content_type: &str, body: &str) -> RawReply {
    RawReply::Bytes(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

type Script = Arc<dyn Fn(&SeenRequest, usize) -> RawReply + Send + Sync>;

/// A hand-scripted HTTP server that records every request: for replies no
/// well-behaved server would send.
pub struct RawServer {
    pub address: PluginAddress,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: JoinHandle<()>,
    _dir: Option<TempDir>,
}

impl RawServer {
    pub async fn unix(script: impl Fn(&SeenRequest, usize) -> RawReply + Send + Sync + 'static) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("raw.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind raw socket");
        Self::unix_at(listener, PluginAddress::Unix(socket), Some(dir), script)
    }

    pub fn unix_at(
        listener: tokio::net::UnixListener,
        address: PluginAddress,
        dir: Option<TempDir>,
        script: impl Fn(&SeenRequest, usize) -> RawReply + Send + Sync + 'static,
    ) -> Self {
        let listener = Arc::new(listener);
        let accept = move || {
            let listener = listener.clone();
            async move { listener.accept().await.map(|(stream, _)| stream) }
        };
        Self::spawn(address, dir, accept, script)
    }

    pub async fn tcp(script: impl Fn(&SeenRequest, usize) -> RawReply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let address = PluginAddress::Tcp(listener.local_addr().expect("addr").to_string());
        let listener = Arc::new(listener);
        let accept = move || {
            let listener = listener.clone();
            async move { listener.accept().await.map(|(stream, _)| stream) }
        };
        Self::spawn(address, None, accept, script)
    }

    fn spawn<S, F>(
        address: PluginAddress,
        dir: Option<TempDir>,
        accept: impl Fn() -> F + Send + 'static,
        script: impl Fn(&SeenRequest, usize) -> RawReply + Send + Sync + 'static,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: std::future::Future<Output = std::io::Result<S>> + Send,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let (seen2, script2) = (seen.clone(), script.clone());
        let task = tokio::spawn(async move {
            while let Ok(stream) = accept().await {
                tokio::spawn(serve_raw(stream, seen2.clone(), script2.clone()));
            }
        });
        Self { address, seen, task, _dir: dir }
    }

    pub fn client(&self) -> PluginClient {
        PluginClient::new(self.address.clone(), fast_policy())
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    script: Script,
) {
    let Some(request) = read_request(&mut stream).await else { return };
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(request.clone());
        seen.len() - 1
    };
    match script(&request, index) {
        RawReply::Bytes(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        RawReply::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
        RawReply::Close => drop(stream),
        RawReply::Trickle(bytes) => {
            let _ = stream.write_all(&bytes).await;
            // Bounded: a test's client gives up long before.
            for _ in 0..1200 {
                if stream.write_all(b" ").await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        RawReply::BytesThenHang(bytes) => {
            let _ = stream.write_all(&bytes).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<SeenRequest> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[header_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(SeenRequest { method, path, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Sends raw bytes to a unix socket and returns the status code and body.
pub async fn raw_exchange(socket: &Path, request: &str) -> (u16, String) {
    let mut stream = tokio::net::UnixStream::connect(socket).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("server answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A path to one of the workspace's built binaries (`scripts/test` builds
/// them before running the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Fails the test unless it runs as root: real mounts need it.
pub fn require_root(what: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root for {what}; run the suite as root (CI does) — it is not skipped"
    );
}

/// Polls `condition` every 10 ms for up to `limit`.
pub async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

pub fn vol(name: &str) -> dory_core::VolumeName {
    dory_core::VolumeName::new(name).expect("valid volume name")
}

pub fn id(text: &str) -> dory_core::MountId {
    dory_core::MountId::new(text).expect("valid mount id")
}
