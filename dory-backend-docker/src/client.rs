//! The plugin client: every endpoint, over a unix socket or TCP, with
//! dockerd's timeouts and retry rules.
//!
//! - Every call is a `POST` with dockerd's `Accept` header; `Opts` is always
//!   an object and `ID` is always sent.
//! - Failure is a transport error, any non-2xx status, or a non-empty `Err`
//!   at any status; the plugin's own text is kept in the error.
//! - Only errors that prove the request was not delivered (connect refused,
//!   socket missing) are retried, with a freshly built request each attempt,
//!   doubling the delay until the retry budget is spent. A connection that
//!   breaks after the request was written, a timeout or an oversized reply
//!   leave the outcome unknown and are never retried: the plugin may have
//!   acted, and a second Mount would count twice.
//! - Each attempt has a time limit (long for Create and Mount) and replies
//!   are capped in size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dory_core::{CreateOptions, MountId, Operation, Scope, VolumeInfo, VolumeName};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;
use serde_json::Value;

use crate::address::PluginAddress;
use crate::error::PluginError;
use crate::wire::{self, Method};

/// How long calls may take and how transport failures are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallPolicy {
    /// Limit for one attempt of Create and Mount (dockerd: 2 minutes).
    pub long_timeout: Duration,
    /// Limit for one attempt of every other call (dockerd: 1 minute).
    pub short_timeout: Duration,
    /// Retry of transport errors.
    pub retry: RetryPolicy,
    /// Largest reply accepted, in bytes.
    pub max_response_bytes: usize,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            long_timeout: Duration::from_secs(120),
            short_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
}

impl CallPolicy {
    /// The time limit of one attempt of `method`.
    pub fn timeout(&self, method: Method) -> Duration {
        if method.is_long() { self.long_timeout } else { self.short_timeout }
    }
}

/// Exponential backoff for transport errors: `first_delay`, doubled each
/// retry up to `max_delay`; no retry starts once `budget` would be exceeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub first_delay: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
    /// Total time after which no further retry is started.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// dockerd's: 1 s, 2 s, 4 s, 8 s, giving up after about 15 s.
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            budget: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        Self { first_delay: Duration::ZERO, max_delay: Duration::ZERO, budget: Duration::ZERO }
    }

    /// The delay before retry number `retry` (0-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// One HTTP connection pool, unix or TCP.
#[derive(Clone, Debug)]
enum Transport {
    Unix(Client<UnixConnector, Full<Bytes>>),
    Tcp(Client<HttpConnector, Full<Bytes>>),
}

impl Transport {
    fn new(address: &PluginAddress) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(5));
        match address {
            PluginAddress::Unix(_) => Self::Unix(builder.build(UnixConnector)),
            PluginAddress::Tcp(_) => Self::Tcp(builder.build(HttpConnector::new())),
        }
    }

    fn uri(address: &PluginAddress, path: &str) -> http::Uri {
        match address {
            PluginAddress::Unix(socket) => hyperlocal::Uri::new(socket, path).into(),
            PluginAddress::Tcp(host_port) => {
                format!("http://{host_port}{path}").parse().unwrap_or_else(|_| http::Uri::from_static("/"))
            }
        }
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Self::Unix(client) => client.request(request).await,
            Self::Tcp(client) => client.request(request).await,
        }
    }
}

/// A client for one Docker volume plugin.
#[derive(Clone, Debug)]
pub struct PluginClient {
    address: PluginAddress,
    policy: CallPolicy,
    transport: Transport,
}

/// A successful reply: 2xx and no `Err`.
type Reply = Value;

impl PluginClient {
    /// A client for the plugin at `address`. Nothing is contacted yet.
    pub fn new(address: PluginAddress, policy: CallPolicy) -> Self {
        let transport = Transport::new(&address);
        Self { address, policy, transport }
    }

    /// The plugin's address.
    pub fn address(&self) -> &PluginAddress {
        &self.address
    }

    /// The call policy in force.
    pub fn policy(&self) -> &CallPolicy {
        &self.policy
    }

    /// `Plugin.Activate`: the list of interfaces the plugin implements.
    pub async fn activate(&self) -> Result<Vec<String>, PluginError> {
        let reply = self.call(Method::Activate, Vec::new()).await?;
        Ok(wire::implements(&reply))
    }

    /// `VolumeDriver.Create` with `Opts` always sent as an object.
    pub async fn create(&self, name: &VolumeName, options: &CreateOptions) -> Result<(), PluginError> {
        let method = Method::Volume(Operation::Create);
        self.call(method, wire::request_body(method, Some(name.as_str()), None, Some(options))).await?;
        Ok(())
    }

    /// `VolumeDriver.Remove`.
    pub async fn remove(&self, name: &VolumeName) -> Result<(), PluginError> {
        self.call_named(Operation::Remove, name).await.map(drop)
    }

    /// `VolumeDriver.Mount`: the host path the volume is mounted at.
    pub async fn mount(&self, name: &VolumeName, id: &MountId) -> Result<PathBuf, PluginError> {
        let method = Method::Volume(Operation::Mount);
        let reply = self.call(method, wire::request_body(method, Some(name.as_str()), Some(id.as_str()), None)).await?;
        wire::mountpoint(&reply).ok_or_else(|| self.malformed(method, "no Mountpoint in a successful reply".into()))
    }

    /// `VolumeDriver.Unmount`.
    pub async fn unmount(&self, name: &VolumeName, id: &MountId) -> Result<(), PluginError> {
        let method = Method::Volume(Operation::Unmount);
        self.call(method, wire::request_body(method, Some(name.as_str()), Some(id.as_str()), None)).await?;
        Ok(())
    }

    /// `VolumeDriver.Path`: the mountpoint, or `None` when the plugin gives none.
    pub async fn path(&self, name: &VolumeName) -> Result<Option<PathBuf>, PluginError> {
        let reply = self.call_named(Operation::Path, name).await?;
        Ok(wire::mountpoint(&reply))
    }

    /// `VolumeDriver.Get`: `Ok(None)` when the reply has no volume
    /// (`"Volume": null`). A plugin's `Err` is returned as an error; callers
    /// that follow dockerd treat it as "not in this driver".
    pub async fn get(&self, name: &VolumeName) -> Result<Option<VolumeInfo>, PluginError> {
        let reply = self.call_named(Operation::Get, name).await?;
        // A missing or null Volume is dockerd's "no such volume"; anything
        // else that is not an object dockerd cannot decode, and neither is
        // it an answer that the volume is absent.
        match wire::field(&reply, "Volume") {
            None => Ok(None),
            Some(volume) if volume.is_object() => Ok(wire::volume(volume, Some(name.as_str()))),
            Some(other) => Err(PluginError::Malformed {
                plugin: self.address.to_string(),
                method: Method::Volume(Operation::Get).name(),
                reason: format!("its Volume is not an object: {}", excerpt(&other.to_string())),
            }),
        }
    }

    /// `VolumeDriver.List`.
    pub async fn list(&self) -> Result<Vec<VolumeInfo>, PluginError> {
        let method = Method::Volume(Operation::List);
        let reply = self.call(method, wire::request_body(method, None, None, None)).await?;
        Ok(wire::volumes(&reply))
    }

    /// `VolumeDriver.Capabilities`: the scope as the plugin states it.
    pub async fn capabilities(&self) -> Result<Scope, PluginError> {
        let method = Method::Volume(Operation::Capabilities);
        let reply = self.call(method, wire::request_body(method, None, None, None)).await?;
        Ok(wire::scope(&reply))
    }

    async fn call_named(&self, operation: Operation, name: &VolumeName) -> Result<Reply, PluginError> {
        let method = Method::Volume(operation);
        self.call(method, wire::request_body(method, Some(name.as_str()), None, None)).await
    }

    /// Sends one call with retries of transport errors, and interprets the reply.
    async fn call(&self, method: Method, body: Vec<u8>) -> Result<Reply, PluginError> {
        let body = Bytes::from(body);
        let timeout = self.policy.timeout(method);
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = self.attempt(method, body.clone());
            let outcome = match tokio::time::timeout(timeout, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::warn!(plugin = %self.address, method = method.name(), ?timeout, "plugin call timed out");
                    return Err(PluginError::Timeout {
                        plugin: self.address.to_string(),
                        method: method.name(),
                        after: timeout,
                    });
                }
            };
            match outcome {
                Ok((status, bytes)) => return self.interpret(method, status, &bytes),
                Err(Attempt::Failed(err)) => return Err(err),
                Err(Attempt::Transport(source)) => {
                    let delay = self.policy.retry.delay(attempts - 1);
                    if started.elapsed() + delay >= self.policy.retry.budget {
                        return Err(PluginError::Transport {
                            plugin: self.address.to_string(),
                            method: method.name(),
                            attempts,
                            source,
                        });
                    }
                    tracing::info!(
                        plugin = %self.address, method = method.name(), error = %source, retry_in = ?delay,
                        "cannot reach plugin, retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One attempt with a freshly built request: the status and whole body.
    async fn attempt(&self, method: Method, body: Bytes) -> Result<(StatusCode, Bytes), Attempt> {
        let mut request = Request::post(Transport::uri(&self.address, &method.path()))
            .header(header::ACCEPT, wire::PLUGIN_MEDIA_TYPE)
            .header(header::CONTENT_LENGTH, body.len());
        if let PluginAddress::Unix(_) = self.address {
            request = request.header(header::HOST, wire::PLUGIN_HOST);
        }
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, wire::PLUGIN_MEDIA_TYPE);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Attempt::Failed(self.malformed(method, format!("cannot build request: {e}"))))?;
        let response = self.transport.send(request).await.map_err(|e| {
            if e.is_connect() {
                Attempt::Transport(Box::new(e))
            } else {
                Attempt::Failed(self.broken(method, Box::new(e)))
            }
        })?;
        let status = response.status();
        let limit = self.policy.max_response_bytes;
        let bytes = Limited::new(response.into_body(), limit).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Attempt::Failed(PluginError::TooLarge {
                    plugin: self.address.to_string(),
                    method: method.name(),
                    limit,
                })
            } else {
                Attempt::Failed(self.broken(method, e))
            }
        })?;
        Ok((status, bytes.to_bytes()))
    }

    fn interpret(&self, method: Method, status: StatusCode, bytes: &[u8]) -> Result<Reply, PluginError> {
        let text = String::from_utf8_lossy(bytes);
        let trimmed = text.trim();
        let parsed: Result<Value, _> =
            if trimmed.is_empty() { Ok(Value::Object(Default::default())) } else { serde_json::from_str(trimmed) };
        if !status.is_success() {
            let plugin_text = parsed.ok().and_then(|v| wire::reported_error(&v)).unwrap_or_else(|| excerpt(trimmed));
            return Err(PluginError::Status {
                plugin: self.address.to_string(),
                method: method.name(),
                status: status.as_u16(),
                text: plugin_text,
            });
        }
        let reply = parsed.map_err(|e| self.malformed(method, format!("{e} in {:?}", excerpt(trimmed))))?;
        if !reply.is_object() {
            return Err(self.malformed(method, format!("expected a JSON object, got {:?}", excerpt(trimmed))));
        }
        if let Some(message) = wire::reported_error(&reply) {
            return Err(PluginError::Refused { plugin: self.address.to_string(), method: method.name(), message });
        }
        Ok(reply)
    }

    fn broken(&self, method: Method, source: crate::error::BoxError) -> PluginError {
        PluginError::Broken { plugin: self.address.to_string(), method: method.name(), source }
    }

    fn malformed(&self, method: Method, reason: String) -> PluginError {
        PluginError::Malformed { plugin: self.address.to_string(), method: method.name(), reason }
    }
}

enum Attempt {
    /// Not delivered (no connection): eligible for retry.
    Transport(Box<dyn std::error::Error + Send + Sync>),
    /// A final failure.
    Failed(PluginError),
}

/// At most 512 characters of a body, for messages.
fn excerpt(text: &str) -> String {
    const MAX: usize = 512;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `GET` on the Docker daemon's API, for managed plugin lookup. One attempt,
/// 30 s limit.
pub(crate) async fn daemon_get(daemon: &PluginAddress, path: &str) -> Result<Value, PluginError> {
    let transport = Transport::new(daemon);
    let plugin = daemon.to_string();
    let request = Request::get(Transport::uri(daemon, path))
        .header(header::HOST, "docker")
        .body(Full::new(Bytes::new()))
        .map_err(|e| PluginError::Malformed { plugin: plugin.clone(), method: "GET", reason: e.to_string() })?;
    let fetch = async {
        let response = transport.send(request).await.map_err(|e| PluginError::Transport {
            plugin: plugin.clone(),
            method: "GET",
            attempts: 1,
            source: Box::new(e),
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 16 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| PluginError::Malformed { plugin: plugin.clone(), method: "GET", reason: e.to_string() })?
            .to_bytes();
        if !status.is_success() {
            return Err(PluginError::Status {
                plugin: plugin.clone(),
                method: "GET",
                status: status.as_u16(),
                text: excerpt(String::from_utf8_lossy(&body).trim()),
            });
        }
        serde_json::from_slice(&body).map_err(|e| PluginError::Malformed {
            plugin: plugin.clone(),
            method: "GET",
            reason: e.to_string(),
        })
    };
    tokio::time::timeout(Duration::from_secs(30), fetch).await.unwrap_or_else(|_| {
        Err(PluginError::Timeout { plugin: plugin.clone(), method: "GET", after: Duration::from_secs(30) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::default();
        let delays: Vec<_> = (0..7).map(|i| policy.delay(i).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(RetryPolicy::none().delay(3), Duration::ZERO);
        assert_eq!(policy.delay(40), Duration::from_secs(30));
    }

    #[test]
    fn long_calls_get_the_long_timeout() {
        let policy = CallPolicy::default();
        assert_eq!(policy.timeout(Method::Volume(Operation::Create)), Duration::from_secs(120));
        assert_eq!(policy.timeout(Method::Volume(Operation::Mount)), Duration::from_secs(120));
        assert_eq!(policy.timeout(Method::Volume(Operation::Unmount)), Duration::from_secs(60));
        assert_eq!(policy.timeout(Method::Activate), Duration::from_secs(60));
    }
}
