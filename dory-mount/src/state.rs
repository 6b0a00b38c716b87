//! State kept outside the driver directory (default `/run/dory`): per-volume
//! locks, and one record per pod volume directory saying which volume and
//! mount ID are (or are being) mounted there.
//!
//! The record makes `unmount` work from the path alone after kubelet or
//! driver restarts, and lets the next call finish or undo a mount that a
//! killed driver left half done.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::MountError;

/// How far a mount got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The plugin may have mounted; the bind may not exist yet.
    Mounting,
    /// Plugin mount and bind mount are both done.
    Mounted,
}

/// One pod volume directory's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountRecord {
    /// The pod volume directory.
    pub dir: PathBuf,
    /// The volume's name.
    pub volume: String,
    /// The mount ID used with the plugin.
    pub mount_id: String,
    /// The plugin's mountpoint, once known.
    pub source: Option<PathBuf>,
    /// How far the mount got.
    pub phase: Phase,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// State under `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn record_path(&self, dir: &Path) -> PathBuf {
        self.root.join("mounts").join(format!("{:016x}.json", fnv1a(dir.as_os_str().as_encoded_bytes())))
    }

    /// The record for `dir`, if any.
    pub fn record(&self, dir: &Path) -> Result<Option<MountRecord>, MountError> {
        let path = self.record_path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(MountError::Io { action: "read mount record", path, source }),
        };
        // A record torn by a crash, or one for another directory with the
        // same hash, is ignored.
        Ok(serde_json::from_str::<MountRecord>(&text).ok().filter(|r| r.dir == dir))
    }

    /// Writes the record atomically (temp file, rename). No fsync: the
    /// records live on tmpfs (`/run`) and guard against process deaths, not
    /// power loss, which also ends every mount they describe.
    pub fn save(&self, record: &MountRecord) -> Result<(), MountError> {
        let path = self.record_path(&record.dir);
        let io = |action, source| MountError::Io { action, path: path.clone(), source };
        let parent = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(|e| io("create state directory for", e))?;
        let temp = path.with_extension(format!("tmp.{}", std::process::id()));
        let body = serde_json::to_vec(record).unwrap_or_default();
        let mut file = File::create(&temp).map_err(|e| io("write mount record", e))?;
        file.write_all(&body).map_err(|e| io("write mount record", e))?;
        std::fs::rename(&temp, &path).map_err(|e| io("write mount record", e))
    }

    /// Deletes the record for `dir`; a missing one is fine.
    pub fn forget(&self, dir: &Path) -> Result<(), MountError> {
        let path = self.record_path(dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(MountError::Io { action: "delete mount record", path, source }),
        }
    }

    /// Takes the lock of `volume`, waiting as long as another driver holds
    /// it. Dropping the guard releases it (so does the process ending).
    pub async fn lock(&self, volume: &str) -> Result<VolumeLock, MountError> {
        let dir = self.root.join("locks");
        let path = dir.join(format!("{volume}.lock"));
        let io = |action, source| MountError::Io { action, path: path.clone(), source };
        std::fs::create_dir_all(&dir).map_err(|e| io("create lock directory for", e))?;
        let mut file =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| io("open lock", e))?;
        let mut delay = Duration::from_millis(1);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(VolumeLock { _lock: lock }),
                Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                    file = returned;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                Err((_, errno)) => return Err(io("lock", std::io::Error::from_raw_os_error(errno as i32))),
            }
        }
    }
}

/// Holds one volume's lock.
#[derive(Debug)]
pub struct VolumeLock {
    _lock: Flock<File>,
}

/// FNV-1a, 64 bit: a hash that stays the same across builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let pod_dir = PathBuf::from("/var/lib/kubelet/pods/u1/volumes/dory~x/v");
        assert_eq!(state.record(&pod_dir).unwrap(), None);
        let record = MountRecord {
            dir: pod_dir.clone(),
            volume: "v".into(),
            mount_id: "u1".into(),
            source: None,
            phase: Phase::Mounting,
        };
        state.save(&record).unwrap();
        assert_eq!(state.record(&pod_dir).unwrap(), Some(record));
        state.forget(&pod_dir).unwrap();
        state.forget(&pod_dir).unwrap();
        assert_eq!(state.record(&pod_dir).unwrap(), None);
    }

    #[tokio::test]
    async fn a_volume_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let first = state.lock("v").await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(100), state.lock("v")).await;
        assert!(second.is_err(), "the second lock waits");
        let _other = state.lock("w").await.unwrap();
        drop(first);
        tokio::time::timeout(Duration::from_secs(2), state.lock("v")).await.unwrap().unwrap();
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
