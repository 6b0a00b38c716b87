//! Fault injection: per operation, an error, a delay, or both, for a
//! limited number of calls or for all of them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dory_core::{Error, ErrorKind, Operation, Result};

/// What happens to calls of one operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Fail with this message (after any delay).
    pub error: Option<String>,
    /// Apply to this many calls only; `None` is every call.
    pub times: Option<usize>,
}

/// The faults of one backend; cloning shares the plan, so a test keeps a
/// handle while the backend is in use.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    faults: Arc<Mutex<HashMap<Operation, Fault>>>,
    mountpoint_lie: Arc<Mutex<Option<PathBuf>>>,
}

impl FaultPlan {
    /// Sets the fault of `operation`.
    pub fn set(&self, operation: Operation, fault: Fault) {
        self.lock().insert(operation, fault);
    }

    /// Makes every call of `operation` fail with `message`.
    pub fn fail(&self, operation: Operation, message: impl Into<String>) {
        self.set(operation, Fault { error: Some(message.into()), ..Fault::default() });
    }

    /// Makes the next `times` calls of `operation` fail with `message`.
    pub fn fail_times(&self, operation: Operation, message: impl Into<String>, times: usize) {
        self.set(operation, Fault { error: Some(message.into()), times: Some(times), ..Fault::default() });
    }

    /// Makes every call of `operation` wait `delay` first.
    pub fn delay(&self, operation: Operation, delay: Duration) {
        self.set(operation, Fault { delay: Some(delay), ..Fault::default() });
    }

    /// Removes the fault of `operation`.
    pub fn clear(&self, operation: Operation) {
        self.lock().remove(&operation);
    }

    /// Removes every fault.
    pub fn clear_all(&self) {
        self.lock().clear();
        *self.mountpoint_lie.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Makes Mount succeed (and count) but answer `mountpoint` instead of
    /// the volume's directory: a lying plugin. `None` tells the truth again.
    pub fn lie_about_mountpoint(&self, mountpoint: Option<PathBuf>) {
        *self.mountpoint_lie.lock().unwrap_or_else(|p| p.into_inner()) = mountpoint;
    }

    /// The mountpoint Mount answers instead of the real one, if any.
    pub fn mountpoint_lie(&self) -> Option<PathBuf> {
        self.mountpoint_lie.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies the fault of `operation`, if any, to one call.
    pub async fn apply(&self, operation: Operation, volume: Option<&str>) -> Result<()> {
        let fault = {
            let mut faults = self.lock();
            let Some(fault) = faults.get_mut(&operation) else { return Ok(()) };
            let current = fault.clone();
            match &mut fault.times {
                Some(0) => return Ok(()),
                Some(n) => *n -= 1,
                None => {}
            }
            current
        };
        if let Some(delay) = fault.delay {
            tokio::time::sleep(delay).await;
        }
        match fault.error {
            Some(message) => Err(Error::backend(ErrorKind::Refused, operation, volume, message)),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Operation, Fault>> {
        self.faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limited_faults_run_out() {
        let plan = FaultPlan::default();
        plan.fail_times(Operation::Mount, "disk busy", 2);
        for _ in 0..2 {
            let err = plan.apply(Operation::Mount, Some("v")).await.unwrap_err();
            assert_eq!(dory_core::error_chain(&err), "mount of volume \"v\" failed: disk busy");
        }
        plan.apply(Operation::Mount, Some("v")).await.unwrap();
        plan.apply(Operation::Create, Some("v")).await.unwrap();
    }
}
