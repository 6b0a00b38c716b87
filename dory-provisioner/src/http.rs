//! The HTTP endpoint (`--http-endpoint`, as external-provisioner names
//! it): `/metrics` in the OpenMetrics text format with its content type,
//! `/healthz` and `/healthz/leader-election`, over the hyper we already
//! have. Off unless an address is given, so two doryds on one host do not
//! fight over a port.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::health::Health;
use crate::metrics::Metrics;

/// The content type of `/metrics`: what prometheus-client encodes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, METRICS_CONTENT_TYPE, metrics.encode()),
        "/healthz" | "/healthz/watches" => match health.check() {
            Ok(text) => (StatusCode::OK, "text/plain; charset=utf-8", text),
            Err(text) => (StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", text),
        },
        "/healthz/leader-election" => (StatusCode::OK, "text/plain; charset=utf-8", health.leader_election()),
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(request.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
