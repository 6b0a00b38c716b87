//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's
//! semantics (what external-provisioner and kube-controller-manager use):
//!
//! - a standby tries every retry period, and at once when a watch on the
//!   Lease shows it changed; it takes a Lease that is free (no holder) or
//!   whose holder has not renewed it for the lease duration, measured on its
//!   own clock from when it last saw the Lease change (so clock skew between
//!   nodes does not matter);
//! - the leader renews every retry period, and steps down (the caller stops
//!   acting and exits) when it could not renew within the renew deadline,
//!   which is shorter than the lease duration: a partitioned leader stops
//!   before anyone else may start;
//! - on shutdown the leader releases the Lease (empty holder), so the next
//!   replica leads within moments instead of after the lease duration;
//! - writes are updates carrying the read `resourceVersion`: two replicas
//!   racing for a free Lease get one success and one 409 Conflict.
//!
//! The identity defaults to the pod's hostname, which survives a container
//! restart: a restarted doryd finds the Lease held by its own identity and
//! leads again at once, unless that Lease is still being renewed by
//! another live process with the same identity (two instances on one host),
//! which it then waits for like any standby.
//!
//! `kube-lease-manager` was used before; it cannot be told to renew within
//! a deadline, never tells the holder that renewing fails, and its standby
//! sleeps until the Lease's expiry, so a release is noticed late.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use crate::health::Health;

/// Timing and naming of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// How long a holder may go without renewing before another takes over.
    pub lease_duration: Duration,
    /// How long the leader retries renewing before it steps down.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Checks the timing rules client-go enforces.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("--leader-election-retry-period must be positive".into());
        }
        if self.renew_deadline <= self.retry_period {
            return Err(format!(
                "--leader-election-renew-deadline ({}) must be longer than --leader-election-retry-period ({})",
                humantime::format_duration(self.renew_deadline),
                humantime::format_duration(self.retry_period)
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "--leader-election-lease-duration ({}) must be longer than --leader-election-renew-deadline ({})",
                humantime::format_duration(self.lease_duration),
                humantime::format_duration(self.renew_deadline)
            ));
        }
        Ok(())
    }
}

/// Why the leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum StepDown {
    /// Another replica holds the Lease now.
    #[error("lost the leader election Lease to {holder:?}; exiting so another replica takes over")]
    Lost {
        /// The new holder.
        holder: String,
    },
    /// Renewing failed for longer than the renew deadline.
    #[error("could not renew the leader election Lease within {}: {last_error}; stepping down", humantime::format_duration(*deadline))]
    RenewDeadline {
        /// The renew deadline.
        deadline: Duration,
        /// The last renew failure.
        last_error: String,
    },
}

/// What one acquire-or-renew attempt found.
enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Holding,
    /// Someone else holds a valid Lease.
    HeldBy(String),
    /// Another replica wrote the Lease between our read and our write.
    Contended,
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    health: std::sync::Arc<Health>,
    /// The Lease as last read or written, and when it last changed.
    observed: Option<(Lease, Instant)>,
    /// True while we hold the Lease.
    leading: bool,
    /// True until the first look at the Lease: a Lease found held by our
    /// own identity then may be a predecessor's or a live twin's.
    fresh: bool,
    /// The twin warning was logged.
    twin_reported: bool,
    /// Wakes a standby when the Lease changes.
    changes: BoxStream<'static, Result<(), watcher::Error>>,
    /// The renew time of an acquiring write whose answer was not seen yet
    /// (a SIGTERM can cut the wait short after the server took it).
    pending_write: Option<MicroTime>,
}

fn holder(lease: &Lease) -> String {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default()
}

fn duration_of(lease: &Lease) -> Duration {
    let seconds = lease.spec.as_ref().and_then(|s| s.lease_duration_seconds).unwrap_or(0);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn jittered(period: Duration) -> Duration {
    // client-go jitters the standby's retries; a tenth is enough to keep
    // replicas started together from polling in lock step.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    period + period.mul_f64(f64::from(nanos % 1000) / 10_000.0)
}

impl Elector {
    /// An elector for `config` (not yet contending).
    pub fn new(client: Client, config: LeaseConfig, health: std::sync::Arc<Health>) -> Self {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let selector = format!("metadata.name={}", config.name);
        let changes =
            watcher(api.clone(), watcher::Config::default().fields(&selector)).default_backoff().map_ok(|_| ()).boxed();
        Self {
            api,
            config,
            health,
            observed: None,
            leading: false,
            fresh: true,
            twin_reported: false,
            changes,
            pending_write: None,
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        let mut last_error: Option<String> = None;
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Holding) => {
                    self.leading = true;
                    self.health.set_leader(true, &self.config.identity);
                    // Only a standby needs to hear of changes; an unread
                    // watch would only pile up the leader's own renewals.
                    self.changes = futures::stream::pending().boxed();
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if holder != last_holder {
                        tracing::info!(lease = %self.config.name, %holder, "the Lease is held by another replica");
                        self.health.set_leader(false, &holder);
                        last_holder = holder;
                    }
                    last_error = None;
                }
                Ok(Attempt::Contended) => {}
                Err(err) => {
                    let message = err.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::warn!(lease = %self.config.name, namespace = %self.config.namespace, error = %message, "cannot acquire the leader election Lease; retrying");
                    }
                    last_error = Some(message);
                }
            }
            let wait = tokio::time::sleep(jittered(self.config.retry_period));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    change = self.changes.next() => match change {
                        // A change of the Lease (a release, say): look at once.
                        Some(Ok(())) => break,
                        // Watch trouble: the periodic retry still runs.
                        Some(Err(_)) => {}
                        None => std::future::pending::<()>().await,
                    },
                }
            }
        }
    }

    /// Renews the Lease every retry period while leading; returns when this
    /// replica must stop acting.
    pub async fn hold(&mut self) -> StepDown {
        let mut last_renew = Instant::now();
        let mut last_error = String::new();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let left = self.config.renew_deadline.saturating_sub(last_renew.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Holding)) => {
                    if !last_error.is_empty() {
                        tracing::info!(lease = %self.config.name, "renewed the Lease again");
                        last_error.clear();
                    }
                    last_renew = Instant::now();
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    self.leading = false;
                    self.health.set_leader(false, &holder);
                    return StepDown::Lost { holder };
                }
                Ok(Ok(Attempt::Contended)) => {
                    last_error = "another replica wrote the Lease at the same time".into();
                }
                Ok(Err(err)) => {
                    last_error = err.to_string();
                    tracing::warn!(lease = %self.config.name, error = %last_error, "cannot renew the leader election Lease; retrying");
                }
                Err(_) => last_error = format!("no answer within {}", humantime::format_duration(left)),
            }
            if last_renew.elapsed() >= self.config.renew_deadline {
                self.leading = false;
                self.health.set_leader(false, "");
                return StepDown::RenewDeadline { deadline: self.config.renew_deadline, last_error };
            }
        }
    }

    /// Gives the Lease up (empty holder) if this replica holds it, so the
    /// next replica need not wait for it to expire.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        if !self.leading {
            return Ok(());
        }
        let Some((mut lease, _)) = self.observed.clone() else { return Ok(()) };
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: transitions,
            ..LeaseSpec::default()
        });
        self.api.replace(&self.config.name, &PostParams::default(), &lease).await?;
        self.leading = false;
        self.health.set_leader(false, "");
        tracing::info!(lease = %self.config.name, "released the Lease");
        Ok(())
    }

    /// After acquiring was cut short: if the write whose answer was not
    /// seen did land (the Lease holds this identity with exactly the renew
    /// time it sent, so never a twin's), gives the Lease up.
    pub async fn release_unacknowledged(&mut self) -> Result<(), kube::Error> {
        let Some(sent) = self.pending_write.take() else { return Ok(()) };
        let Some(current) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
        let spec = current.spec.clone().unwrap_or_default();
        if holder(&current) == self.config.identity && spec.renew_time.as_ref() == Some(&sent) {
            self.observe(current);
            self.leading = true;
            return self.release().await;
        }
        Ok(())
    }

    fn observe(&mut self, lease: Lease) {
        let changed =
            self.observed.as_ref().is_none_or(|(seen, _)| seen.resource_version() != lease.resource_version());
        if changed {
            self.observed = Some((lease, Instant::now()));
        }
    }

    /// client-go's `tryAcquireOrRenew`: read the Lease (create it when
    /// missing); leave it alone when someone else holds it validly;
    /// otherwise write ourselves in with the read resourceVersion.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let identity = self.config.identity.clone();
        let seconds = i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            self.pending_write = lease.spec.as_ref().and_then(|s| s.renew_time.clone());
            let result = self.api.create(&PostParams::default(), &lease).await;
            self.pending_write = None;
            return match result {
                Ok(created) => {
                    self.fresh = false;
                    self.observe(created);
                    Ok(Attempt::Holding)
                }
                // Another replica created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Contended),
                Err(err) => Err(err),
            };
        };
        self.observe(current.clone());
        let current_holder = holder(&current);
        let observed_at = self.observed.as_ref().map_or_else(Instant::now, |(_, at)| *at);
        let valid = observed_at.elapsed() < duration_of(&current);
        if current_holder == identity && self.fresh && valid {
            // Held by our identity before we wrote anything: a predecessor
            // (a restarted container) or a live twin on the same host. A
            // twin renews within a retry period; a predecessor does not.
            tokio::time::sleep(self.config.retry_period.mul_f64(1.5)).await;
            let again = self.api.get_opt(&self.config.name).await?;
            self.fresh = false;
            if let Some(again) = again
                && again.resource_version() != current.resource_version()
            {
                if !self.twin_reported {
                    tracing::error!(lease = %self.config.name, %identity, "another process renews the Lease with this replica's identity; waiting as a standby (give each instance its own --identity)");
                    self.twin_reported = true;
                }
                self.observe(again);
                self.fresh = true;
                return Ok(Attempt::HeldBy(identity));
            }
        }
        self.fresh = false;
        let leading = current_holder == identity;
        if !current_holder.is_empty() && !leading && valid {
            return Ok(Attempt::HeldBy(current_holder));
        }
        let old = current.spec.clone().unwrap_or_default();
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(identity),
            lease_duration_seconds: Some(seconds),
            acquire_time: if leading { old.acquire_time.clone() } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(old.lease_transitions.unwrap_or(0) + i32::from(!leading)),
            ..LeaseSpec::default()
        });
        self.pending_write = lease.spec.as_ref().and_then(|s| s.renew_time.clone());
        let result = self.api.replace(&self.config.name, &PostParams::default(), &lease).await;
        self.pending_write = None;
        match result {
            Ok(written) => {
                self.observe(written);
                Ok(Attempt::Holding)
            }
            // Someone wrote it since we read it; look again next period.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Contended),
            Err(err) => Err(err),
        }
    }
}
