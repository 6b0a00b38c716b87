//! What `/healthz` and `/healthz/leader-election` report: whether the
//! watches doryd depends on work, and whether this replica leads.
//!
//! A watch that fails once (a dropped connection, a 410 Gone) heals on its
//! own; one that has failed for longer than the threshold (a missing RBAC
//! verb, an API server that stays away) means no claim gets provisioned, so
//! `/healthz` turns unhealthy and a liveness probe restarts doryd, where
//! the same failure is logged again at once.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// This replica's part in leader election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Leader election is off: this replica always acts.
    Disabled,
    /// Waiting for the Lease; `holder` is who holds it (empty if unknown).
    Standby {
        /// The current holder, if known.
        holder: String,
    },
    /// Holding the Lease.
    Leader {
        /// Our identity.
        identity: String,
    },
}

#[derive(Debug)]
struct WatchState {
    failing_since: Option<Instant>,
    last_error: String,
}

/// Shared health state, written by the watches and the elector.
#[derive(Debug)]
pub struct Health {
    threshold: Duration,
    leadership: Mutex<Leadership>,
    watches: Mutex<BTreeMap<&'static str, WatchState>>,
}

impl Health {
    /// Health that turns bad when a watch has failed for `threshold`.
    pub fn new(threshold: Duration) -> Self {
        Self { threshold, leadership: Mutex::new(Leadership::Disabled), watches: Mutex::default() }
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, WatchState>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records leadership (`holder` is ours when `leading`).
    pub fn set_leader(&self, leading: bool, holder: &str) {
        let state = if leading {
            Leadership::Leader { identity: holder.to_owned() }
        } else {
            Leadership::Standby { holder: holder.to_owned() }
        };
        *self.leadership.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// The current leadership.
    pub fn leadership(&self) -> Leadership {
        self.leadership.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A watch of `resource` delivered something: it works.
    pub fn watch_ok(&self, resource: &'static str) {
        let mut watches = self.watches();
        let state = watches.entry(resource).or_insert(WatchState { failing_since: None, last_error: String::new() });
        if state.failing_since.take().is_some() {
            tracing::info!(resource, "watch works again");
        }
    }

    /// A watch of `resource` failed with `error`; true when it was working
    /// until now (the caller logs louder then).
    pub fn watch_failed(&self, resource: &'static str, error: String) -> bool {
        let mut watches = self.watches();
        let state = watches.entry(resource).or_insert(WatchState { failing_since: None, last_error: String::new() });
        let first = state.failing_since.is_none() || state.last_error != error;
        state.failing_since.get_or_insert_with(Instant::now);
        state.last_error = error;
        first
    }

    /// `/healthz`: `Ok(text)` when healthy, `Err(text)` naming every watch
    /// that has failed for longer than the threshold.
    pub fn check(&self) -> Result<String, String> {
        let failing: Vec<String> = self
            .watches()
            .iter()
            .filter_map(|(resource, state)| {
                let since = state.failing_since?;
                (since.elapsed() >= self.threshold).then(|| {
                    format!("watch of {resource} failing for {}s: {}", since.elapsed().as_secs(), state.last_error)
                })
            })
            .collect();
        if failing.is_empty() { Ok("ok\n".into()) } else { Err(format!("{}\n", failing.join("\n"))) }
    }

    /// `/healthz/leader-election`: always healthy (a standby is healthy),
    /// the text says who leads.
    pub fn leader_election(&self) -> String {
        match self.leadership() {
            Leadership::Disabled => "ok: leader election is off\n".into(),
            Leadership::Standby { holder } if holder.is_empty() => "ok: standby\n".into(),
            Leadership::Standby { holder } => format!("ok: standby, {holder} leads\n"),
            Leadership::Leader { identity } => format!("ok: leader ({identity})\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_failing_past_the_threshold_is_unhealthy_until_it_works() {
        let health = Health::new(Duration::ZERO);
        assert!(health.check().is_ok());
        assert!(health.watch_failed("persistentvolumeclaims", "403 Forbidden".into()));
        assert!(!health.watch_failed("persistentvolumeclaims", "403 Forbidden".into()), "logged once");
        let text = health.check().unwrap_err();
        assert!(text.contains("persistentvolumeclaims") && text.contains("403 Forbidden"), "{text}");
        health.watch_ok("persistentvolumeclaims");
        assert!(health.check().is_ok());
    }

    #[test]
    fn a_fresh_failure_is_still_healthy() {
        let health = Health::new(Duration::from_secs(3600));
        health.watch_failed("persistentvolumes", "connection refused".into());
        assert!(health.check().is_ok());
    }

    #[test]
    fn leader_election_says_who_leads() {
        let health = Health::new(Duration::ZERO);
        assert_eq!(health.leader_election(), "ok: leader election is off\n");
        health.set_leader(false, "b");
        assert_eq!(health.leader_election(), "ok: standby, b leads\n");
        health.set_leader(true, "a");
        assert_eq!(health.leader_election(), "ok: leader (a)\n");
    }
}
