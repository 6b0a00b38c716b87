//! [`PluginServer`]: exposes any [`VolumeBackend`] as a Docker volume plugin
//! on a unix socket.
//!
//! The server is tolerant like the plugins dockerd works with: any or no
//! `Content-Type`, empty bodies, `"Opts": null`, a missing `ID`. It keeps
//! mount reference counts per (volume, ID) with multiplicity: the backend
//! mounts on a volume's first user and unmounts after its last, and an
//! unmount of an unknown ID succeeds. Unknown endpoints are 404. How errors
//! are reported (status 200, 400 or 500 with `Err`) is a per-endpoint choice,
//! to copy the dialects of real plugins.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dory_core::{Error, MountId, Operation, VolumeBackend, VolumeName, error_chain};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixListener;

use crate::wire::{self, Method};

/// Largest request body the server reads.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How an endpoint reports errors (and whether it lies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// `200` with `{"Err": ...}`, like buttervolume.
    #[default]
    Status200,
    /// `400` with `{"Err": ...}`, like pyvolume and easyfuse.
    Status400,
    /// `500` with `{"Err": ...}`, like go-plugins-helpers.
    Status500,
    /// Every reply, success or not, is `200` with a body that is not JSON.
    Garbage,
    /// The operation is carried out, then the connection is closed without
    /// a reply (a plugin that crashed or was reset after acting).
    Reset,
    /// Success replies carry [`HUGE_REPLY_BYTES`] of padding, more than
    /// any client accepts by default.
    Huge,
}

/// Padding of a [`Dialect::Huge`] reply: past the client's 16 MiB default cap.
pub const HUGE_REPLY_BYTES: usize = 17 * 1024 * 1024;

impl Dialect {
    /// Parses `200`, `400`, `500`, `garbage`, `reset` or `huge`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "200" => Some(Self::Status200),
            "400" => Some(Self::Status400),
            "500" => Some(Self::Status500),
            "garbage" => Some(Self::Garbage),
            "reset" => Some(Self::Reset),
            "huge" => Some(Self::Huge),
            _ => None,
        }
    }

    fn error_status(self) -> StatusCode {
        match self {
            Self::Status400 => StatusCode::BAD_REQUEST,
            Self::Status500 => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Status200 | Self::Garbage | Self::Reset | Self::Huge => StatusCode::OK,
        }
    }
}

/// How the server answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// The dialect of endpoints not listed in `dialects`.
    pub default_dialect: Dialect,
    /// Per-endpoint dialects.
    pub dialects: HashMap<Operation, Dialect>,
}

impl ServerOptions {
    /// The dialect of one endpoint.
    pub fn dialect(&self, operation: Operation) -> Dialect {
        self.dialects.get(&operation).copied().unwrap_or(self.default_dialect)
    }
}

/// Serves a [`VolumeBackend`] over the Docker Volume Plugin protocol.
pub struct PluginServer {
    backend: Arc<dyn VolumeBackend>,
    options: ServerOptions,
    mounts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<VolumeMounts>>>>,
}

/// Who holds one volume mounted.
#[derive(Debug, Default)]
struct VolumeMounts {
    /// Mount count per ID.
    users: BTreeMap<String, usize>,
    /// The backend's mountpoint while any user holds it.
    mountpoint: Option<PathBuf>,
    /// The ID the backend mount was made with; the backend unmount uses it.
    backend_id: Option<MountId>,
}

impl VolumeMounts {
    fn total(&self) -> usize {
        self.users.values().sum()
    }
}

impl PluginServer {
    /// A server for `backend`.
    pub fn new(backend: Arc<dyn VolumeBackend>, options: ServerOptions) -> Arc<Self> {
        Arc::new(Self { backend, options, mounts: Mutex::default() })
    }

    /// The mount count per ID of `volume` (empty when nobody holds it).
    pub async fn mount_counts(&self, volume: &str) -> BTreeMap<String, usize> {
        let entry = self.lock_mounts().get(volume).cloned();
        match entry {
            Some(entry) => entry.lock().await.users.clone(),
            None => BTreeMap::new(),
        }
    }

    /// Serves connections from `listener` until `shutdown` completes.
    pub async fn serve(self: Arc<Self>, listener: UnixListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = &mut shutdown => return Ok(()),
            };
            let server = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let server = Arc::clone(&server);
                    async move {
                        // An error from the service makes hyper drop the
                        // connection without writing a reply.
                        Arc::clone(&server)
                            .respond(request)
                            .await
                            .ok_or_else(|| io::Error::new(io::ErrorKind::ConnectionReset, "reset on purpose"))
                    }
                });
                if let Err(err) =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
                {
                    tracing::debug!(error = %err, "plugin connection ended with an error");
                }
            });
        }
    }

    /// The reply to one request; `None` closes the connection instead.
    async fn respond(self: Arc<Self>, request: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let path = request.uri().path().to_owned();
        let Some(method) = Method::from_path(&path) else {
            tracing::debug!(%path, "unknown endpoint");
            return Some(reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"404 page not found\n"),
            ));
        };
        let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => {
                return Some(json_reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"Err": format!("cannot read request: {err}")}),
                ));
            }
        };
        let text = String::from_utf8_lossy(&body);
        let request: Value = if text.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str(&text) {
                Ok(value) => value,
                Err(err) => {
                    let message = format!("{}: request body is not JSON: {err}", method.name());
                    return Some(json_reply(StatusCode::BAD_REQUEST, &json!({"Err": message})));
                }
            }
        };
        let Method::Volume(operation) = method else {
            return Some(json_reply(StatusCode::OK, &json!({"Implements": ["VolumeDriver"]})));
        };
        let dialect = self.options.dialect(operation);
        // The operation runs to completion even if the client goes away, as
        // with real plugins: a backend call cancelled halfway helps nobody.
        let server = Arc::clone(&self);
        let outcome =
            tokio::spawn(async move { server.handle(operation, &request).await }).await.unwrap_or_else(|join| {
                Err(Error::backend(
                    dory_core::ErrorKind::Local,
                    operation,
                    None,
                    format!("plugin handler failed: {join}"),
                ))
            });
        tracing::debug!(method = method.name(), ok = outcome.is_ok(), "plugin request");
        Some(match (dialect, outcome) {
            (Dialect::Reset, _) => return None,
            (Dialect::Garbage, _) => {
                reply(StatusCode::OK, "text/plain", Bytes::from_static(b"<html>this is not JSON</html>"))
            }
            (Dialect::Huge, Ok(mut value)) => {
                value["Padding"] = Value::String(" ".repeat(HUGE_REPLY_BYTES));
                json_reply(StatusCode::OK, &value)
            }
            (_, Ok(value)) => json_reply(StatusCode::OK, &value),
            (dialect, Err(err)) => json_reply(dialect.error_status(), &json!({"Err": error_chain(&err)})),
        })
    }

    async fn handle(&self, operation: Operation, request: &Value) -> Result<Value, Error> {
        let name = || VolumeName::new(wire::string_field(request, "Name").unwrap_or_default());
        let id = || MountId::new(wire::string_field(request, "ID").unwrap_or_default());
        match operation {
            Operation::Create => {
                let options = wire::options(request).map_err(|reason| Error::Config { key: "Opts".into(), reason })?;
                self.backend.create(&name()?, &options).await?;
                Ok(json!({"Err": ""}))
            }
            Operation::Remove => {
                let name = name()?;
                let users = self.volume_mounts(&name).lock().await.total();
                if users > 0 {
                    return Err(Error::InUse { volume: name.to_string(), users });
                }
                self.backend.remove(&name).await?;
                Ok(json!({"Err": ""}))
            }
            Operation::Mount => {
                let mountpoint = self.mount(&name()?, &id()?).await?;
                Ok(json!({"Mountpoint": mountpoint, "Err": ""}))
            }
            Operation::Unmount => {
                self.unmount(&name()?, &id()?).await?;
                Ok(json!({"Err": ""}))
            }
            Operation::Path => {
                let name = name()?;
                let cached = self.volume_mounts(&name).lock().await.mountpoint.clone();
                let path = match cached {
                    Some(path) => Some(path),
                    None => self.backend.path(&name).await?,
                };
                Ok(json!({"Mountpoint": path.unwrap_or_default(), "Err": ""}))
            }
            Operation::Get => {
                let name = name()?;
                match self.backend.get(&name).await? {
                    Some(info) => Ok(json!({"Volume": wire::encode_volume(&info), "Err": ""})),
                    None => Err(Error::NotFound { volume: name.to_string() }),
                }
            }
            Operation::List => {
                let volumes: Vec<Value> = self.backend.list().await?.iter().map(wire::encode_volume).collect();
                Ok(json!({"Volumes": volumes, "Err": ""}))
            }
            Operation::Capabilities => {
                let capabilities = self.backend.capabilities().await?;
                Ok(json!({"Capabilities": {"Scope": capabilities.scope.as_str()}}))
            }
        }
    }

    async fn mount(&self, name: &VolumeName, id: &MountId) -> Result<PathBuf, Error> {
        let entry = self.volume_mounts(name);
        let mut mounts = entry.lock().await;
        let mountpoint = match &mounts.mountpoint {
            Some(path) if mounts.total() > 0 => path.clone(),
            _ => {
                let path = self.backend.mount(name, id).await?;
                mounts.mountpoint = Some(path.clone());
                mounts.backend_id = Some(id.clone());
                path
            }
        };
        *mounts.users.entry(id.to_string()).or_default() += 1;
        Ok(mountpoint)
    }

    async fn unmount(&self, name: &VolumeName, id: &MountId) -> Result<(), Error> {
        let entry = self.volume_mounts(name);
        let mut mounts = entry.lock().await;
        let Some(&count) = mounts.users.get(id.as_str()) else {
            tracing::debug!(volume = %name, %id, "unmount of an unknown mount id; nothing to do");
            return Ok(());
        };
        if mounts.total() == 1 {
            let backend_id = mounts.backend_id.clone().unwrap_or_else(|| id.clone());
            self.backend.unmount(name, &backend_id).await?;
            mounts.mountpoint = None;
            mounts.backend_id = None;
        }
        if count == 1 {
            mounts.users.remove(id.as_str());
        } else {
            mounts.users.insert(id.to_string(), count - 1);
        }
        Ok(())
    }

    fn volume_mounts(&self, name: &VolumeName) -> Arc<tokio::sync::Mutex<VolumeMounts>> {
        Arc::clone(self.lock_mounts().entry(name.to_string()).or_default())
    }

    fn lock_mounts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<VolumeMounts>>>> {
        self.mounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn json_reply(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    reply(status, "application/vnd.docker.plugins.v1.2+json", Bytes::from(body))
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// Binds a unix socket at `path` for a plugin: creates the parent directory
/// and replaces a stale socket file that nothing listens on. A socket that
/// is in use is an error (`AddrInUse`).
pub async fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another plugin", path.display()),
            ));
        }
        tokio::fs::remove_file(path).await?;
    }
    UnixListener::bind(path)
}
