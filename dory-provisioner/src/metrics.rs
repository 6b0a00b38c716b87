//! Prometheus metrics with the names the external-provisioner library uses
//! (served by [`crate::http`]).

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

/// Labels of API conflict metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    /// The resource written (`persistentvolumes`, ...).
    pub resource: String,
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
    /// Writes answered 409 Conflict (someone else changed the object
    /// first), each re-read and retried at once.
    pub conflicts_total: Family<ConflictLabels, Counter>,
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
        let conflicts_total = Family::<ConflictLabels, Counter>::default();
        registry.register(
            "api_conflicts",
            "Writes that met a 409 Conflict and were re-read and retried",
            conflicts_total.clone(),
        );
        Self {
            registry,
            conflicts_total,
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
