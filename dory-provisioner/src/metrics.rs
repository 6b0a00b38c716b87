//! Prometheus metrics with the names the external-provisioner library uses,
//! served with `/healthz` over the hyper we already have.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of provisioning metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// The StorageClass.
    pub class: String,
    /// `spec.dataSource.kind`, or empty.
    pub source: String,
}

/// Labels of deletion metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    /// The StorageClass.
    pub class: String,
}

/// doryd's metrics.
pub struct Metrics {
    registry: Registry,
    /// Successful provisions.
    pub provision_total: Family<ClaimLabels, Counter>,
    /// Failed provision attempts.
    pub provision_failed_total: Family<ClaimLabels, Counter>,
    /// Time of successful provisions.
    pub provision_duration: Family<ClaimLabels, Histogram>,
    /// Successful deletions.
    pub delete_total: Family<VolumeLabels, Counter>,
    /// Failed deletion attempts.
    pub delete_failed_total: Family<VolumeLabels, Counter>,
    /// Time of successful deletions.
    pub delete_duration: Family<VolumeLabels, Histogram>,
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("controller");
        let provision_total = Family::<ClaimLabels, Counter>::default();
        let provision_failed_total = Family::<ClaimLabels, Counter>::default();
        let provision_duration = Family::<ClaimLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let delete_total = Family::<VolumeLabels, Counter>::default();
        let delete_failed_total = Family::<VolumeLabels, Counter>::default();
        let delete_duration = Family::<VolumeLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        registry.register("persistentvolumeclaim_provision", "Successful volume provisions", provision_total.clone());
        registry.register(
            "persistentvolumeclaim_provision_failed",
            "Failed volume provision attempts",
            provision_failed_total.clone(),
        );
        registry.register_with_unit(
            "persistentvolumeclaim_provision_duration",
            "Latency of successful volume provisions",
            prometheus_client::registry::Unit::Seconds,
            provision_duration.clone(),
        );
        registry.register("persistentvolume_delete", "Successful volume deletions", delete_total.clone());
        registry.register(
            "persistentvolume_delete_failed",
            "Failed volume deletion attempts",
            delete_failed_total.clone(),
        );
        registry.register_with_unit(
            "persistentvolume_delete_duration",
            "Latency of successful volume deletions",
            prometheus_client::registry::Unit::Seconds,
            delete_duration.clone(),
        );
        Self {
            registry,
            provision_total,
            provision_failed_total,
            provision_duration,
            delete_total,
            delete_failed_total,
            delete_duration,
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match request.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics.encode()),
                        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
