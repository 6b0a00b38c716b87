//! One call per volume at a time: a second call for a volume that is being
//! worked on is refused (`ABORTED`, the spec's answer) instead of queueing
//! without bound; calls for other volumes run in parallel.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::CsiError;

/// The volumes being worked on.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    volumes: Arc<Mutex<HashSet<String>>>,
}

impl InFlight {
    /// Claims `volume` for the caller until the guard is dropped.
    pub fn claim(&self, volume: &str) -> Result<VolumeClaim, CsiError> {
        let mut volumes = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        if !volumes.insert(volume.to_owned()) {
            return Err(CsiError::Busy { volume: volume.to_owned() });
        }
        Ok(VolumeClaim { volumes: self.volumes.clone(), volume: volume.to_owned() })
    }
}

/// Held while one call works on one volume.
#[derive(Debug)]
pub struct VolumeClaim {
    volumes: Arc<Mutex<HashSet<String>>>,
    volume: String,
}

impl Drop for VolumeClaim {
    fn drop(&mut self) {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.volume);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_on_one_volume_is_refused_until_the_first_ends() {
        let inflight = InFlight::default();
        let first = inflight.claim("v").unwrap();
        assert!(matches!(inflight.claim("v"), Err(CsiError::Busy { .. })));
        let _other = inflight.claim("w").unwrap();
        drop(first);
        inflight.claim("v").unwrap();
    }
}
