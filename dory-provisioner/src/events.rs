//! Events that happen once per object (`Provisioning`,
//! `ProvisioningSucceeded`), written without kube-runtime's `Recorder`
//! cache.
//!
//! The `Recorder` keeps every event it published for six minutes, to fold
//! repeats into a series; that cache was the largest part of doryd's heap
//! while provisioning many claims (about 3 KB per event, in a table that
//! doubles). An event that cannot repeat needs no series. Warnings, which
//! repeat with every retry, still go through the `Recorder`.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// The stored event for `event` about `regarding`, as the `Recorder` writes it.
pub fn one_off(event: &Event, regarding: ObjectReference, reporter: &Reporter) -> K8sEvent {
    let now = k8s_openapi::jiff::Timestamp::now();
    K8sEvent {
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_ref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..ObjectMeta::default()
        },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        type_: Some(match event.type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding),
        related: event.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone().unwrap_or_else(|| reporter.controller.clone())),
        ..K8sEvent::default()
    }
}

/// Creates `event` about `regarding` (in its namespace, else `default`).
pub async fn publish_once(
    client: kube::Client,
    reporter: &Reporter,
    event: &Event,
    regarding: ObjectReference,
) -> Result<(), kube::Error> {
    let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
    let api: Api<K8sEvent> = Api::namespaced(client, &namespace);
    api.create(&PostParams::default(), &one_off(event, regarding, reporter)).await.map(|_| ())
}
