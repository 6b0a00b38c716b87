//! State kept outside the driver directory (default `/var/lib/dory`):
//! per-volume locks, and one record per pod volume directory saying which
//! volume and mount ID are (or are being) mounted there.
//!
//! The record makes `unmount` work from the path alone after kubelet or
//! driver restarts, lets the next call finish or undo a mount that a killed
//! driver left half done, and, because it is on persistent storage and
//! written durably before the plugin's Mount, makes the `unmount` kubelet
//! sends after a reboot reach the plugin with the original mount ID (plugins
//! of SAN arrays keep their attachments across reboots).
//!
//! Records live in the mount journal (`mounts.journal`, see
//! [`journal`](crate::journal)): a synced overwrite of a preallocated slot
//! instead of a new synced file. A record too long for a slot, or one whose
//! candidate slots are all taken, is a file of its own under `mounts/`, as
//! every record of the previous version was; both are read.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::MountError;
use crate::journal::{Inserted, Journal};

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
    journal: Journal,
}

impl StateDir {
    /// State under `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let journal = Journal::new(root.join("mounts.journal"));
        Self { root, journal }
    }

    fn record_path(&self, dir: &Path) -> PathBuf {
        self.root.join("mounts").join(format!("{:016x}.json", fnv1a(dir.as_os_str().as_encoded_bytes())))
    }

    /// The lock file of `volume`: its name when that makes a short file
    /// name, else a prefix of it plus a hash (names may be 255 bytes, as
    /// long as a whole file name).
    fn lock_path(&self, volume: &str) -> PathBuf {
        const MAX_PLAIN: usize = 200;
        let name = if volume.len() <= MAX_PLAIN && !volume.starts_with('.') {
            format!("{volume}.lock")
        } else {
            let mut end = volume.len().min(64);
            while !volume.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}-{:016x}.lock", volume[..end].trim_start_matches('.'), fnv1a(volume.as_bytes()))
        };
        self.root.join("locks").join(name)
    }

    /// Where the previous version marked the mount of `dir`'s record
    /// complete.
    fn legacy_marker(&self, dir: &Path) -> PathBuf {
        self.record_path(dir).with_extension("mounted")
    }

    /// The record for `dir`, if any: in the journal, else in a file of its
    /// own (a record too long for the journal, or one of the previous
    /// version).
    pub fn record(&self, dir: &Path) -> Result<Option<MountRecord>, MountError> {
        match self.journal.find(dir) {
            Ok(Some(record)) => return Ok(Some(record)),
            Ok(None) => {}
            Err(source) => return Err(self.journal_error("read mount journal", source)),
        }
        self.file_record(dir)
    }

    /// The record file of `dir`: its first line is the durable record; each
    /// later line is a completion mark appended by
    /// [`mark_mounted`](Self::mark_mounted) (the last whole one counts).
    /// Records of the version before kept the mark in a `.mounted` file
    /// beside the record; it is still read.
    fn file_record(&self, dir: &Path) -> Result<Option<MountRecord>, MountError> {
        let path = self.record_path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(MountError::Io { action: "read mount record", path, source }),
        };
        let mut lines = text.split('\n');
        // A record torn by a crash, or one for another directory with the
        // same hash, is ignored.
        let Some(mut record) =
            lines.next().and_then(|line| serde_json::from_str::<MountRecord>(line).ok()).filter(|r| r.dir == dir)
        else {
            return Ok(None);
        };
        // A mark torn by a crash is no mark: the mount reads as unfinished.
        if let Some(mark) = lines.rev().find_map(|line| serde_json::from_str::<MountedMark>(line).ok()) {
            record.phase = Phase::Mounted;
            record.source = mark.source.or(record.source);
        } else if record.phase == Phase::Mounting
            && let Ok(source) = std::fs::read(self.legacy_marker(dir))
        {
            record.phase = Phase::Mounted;
            if !source.is_empty() {
                record.source = Some(PathBuf::from(String::from_utf8_lossy(&source).into_owned()));
            }
        }
        Ok(Some(record))
    }

    /// Marks the mount of `record` complete (the bind exists) by appending
    /// a line to its file, keeping the durable first line as it is. Not
    /// synced, and it need not be: a power loss takes the bind with it, and
    /// a record without the mark is undone or unmounted the same way.
    pub fn mark_mounted(&self, record: &MountRecord) -> Result<(), MountError> {
        match self.journal.mark(&record.dir, record.source.as_deref()) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(source) => {
                return Err(self.journal_error("mark mount record complete in", source));
            }
        }
        let path = self.record_path(&record.dir);
        let mut line = b"\n".to_vec();
        line.extend(serde_json::to_vec(&MountedMark { source: record.source.clone() }).unwrap_or_default());
        File::options()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(&line))
            .map_err(|source| MountError::Io { action: "mark mount record complete", path, source })
    }

    /// Writes the record durably, replacing any record of `dir` (and its
    /// completion mark) before the call returns, so the plugin call that
    /// follows is never unrecorded after a power loss: in the journal, else
    /// (too long for it, or it is full) in a file of its own.
    pub fn save(&self, record: &MountRecord) -> Result<(), MountError> {
        let journal_error = |source| self.journal_error("write mount journal", source);
        if self.with_state_dir(|| self.journal.put(record, true)).map_err(journal_error)? {
            return self.remove_record_file(&record.dir);
        }
        self.journal.remove(&record.dir).map_err(journal_error)?;
        self.file_save(record)
    }

    /// Replaces `dir`'s record file: through a synced temp file, renamed,
    /// and the directory synced.
    fn file_save(&self, record: &MountRecord) -> Result<(), MountError> {
        if self.file_save_new(record)? {
            return Ok(());
        }
        let path = self.record_path(&record.dir);
        let io = |action, source| MountError::Io { action, path: path.clone(), source };
        self.remove_legacy_marker(&record.dir)?;
        let temp = path.with_extension(format!("json.tmp.{}", std::process::id()));
        let mut file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| io("write mount record", e))?;
        file.write_all(&record_line(record))
            .and_then(|()| file.sync_data())
            .map_err(|e| io("write mount record", e))?;
        drop(file);
        std::fs::rename(&temp, &path).map_err(|e| io("write mount record", e))?;
        sync_dir(path.parent().unwrap_or(&self.root)).map_err(|e| io("sync the directory of mount record", e))
    }

    /// Writes the record durably if `dir` has none: into a journal slot,
    /// synced (see [`journal`](crate::journal)), else into a file of its
    /// own. A record torn by a crash mid-write is harmless, as the call it
    /// guards was not made yet (a torn record reads as none). Returns false,
    /// having written nothing, when `dir` already has a record.
    pub fn save_new(&self, record: &MountRecord) -> Result<bool, MountError> {
        if self.record_path(&record.dir).exists() {
            return Ok(false);
        }
        let inserted = self
            .with_state_dir(|| self.journal.insert_new(record))
            .map_err(|source| self.journal_error("write mount journal", source))?;
        match inserted {
            Inserted::Yes => Ok(true),
            Inserted::Exists => Ok(false),
            Inserted::NoRoom => self.file_save_new(record),
        }
    }

    /// Runs `write`, creating the state directory (durably) first if it is
    /// missing.
    fn with_state_dir<T>(&self, write: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
        match write() {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.create_durably(&self.root)?;
                write()
            }
            other => other,
        }
    }

    fn journal_error(&self, action: &'static str, source: std::io::Error) -> MountError {
        MountError::Io { action, path: self.journal.path().to_path_buf(), source }
    }

    /// Creates `dir`'s record file in place (`O_EXCL`), synced, and its
    /// directory synced; false when it exists.
    fn file_save_new(&self, record: &MountRecord) -> Result<bool, MountError> {
        let path = self.record_path(&record.dir);
        let io = |action, source| MountError::Io { action, path: path.clone(), source };
        let parent = path.parent().unwrap_or(&self.root);
        let create = || File::options().write(true).create_new(true).open(&path);
        let created = match create() {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.create_durably(parent).map_err(|e| io("create state directory for", e))?;
                create()
            }
            other => other,
        };
        let mut file = match created {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(err) => return Err(io("write mount record", err)),
        };
        // Only now is the directory ours: a mark of the previous version
        // left without its record must not complete this one.
        self.remove_legacy_marker(&record.dir)?;
        file.write_all(&record_line(record))
            .and_then(|()| file.sync_data())
            .map_err(|e| io("write mount record", e))?;
        drop(file);
        sync_dir(parent).map_err(|e| io("sync the directory of mount record", e))?;
        Ok(true)
    }

    fn remove_legacy_marker(&self, dir: &Path) -> Result<(), MountError> {
        let path = self.legacy_marker(dir);
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(MountError::Io { action: "delete the mark of mount record", path, source: err })
            }
            _ => Ok(()),
        }
    }

    /// Creates `dir` and its parents, syncing each parent so the new
    /// entries survive a power loss.
    fn create_durably(&self, dir: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut current = Some(dir);
        while let Some(path) = current
            && !path.exists()
        {
            missing.push(path);
            current = path.parent();
        }
        std::fs::create_dir_all(dir)?;
        for path in missing.iter().rev() {
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// Removes temp files of record writes whose writer is gone (a driver
    /// killed between write and rename). Returns how many it removed.
    pub fn remove_stale_temp_files(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.root.join("mounts")) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.rsplit_once(".tmp.")).map(|(_, pid)| pid) else {
                continue;
            };
            let alive = pid.parse::<u32>().is_ok_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
            if !alive && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Deletes the record for `dir`; a missing one is fine. The deletion
    /// is not synced: a record that comes back after a power loss only
    /// costs the plugin an Unmount of an ID it no longer has.
    pub fn forget(&self, dir: &Path) -> Result<(), MountError> {
        self.journal.remove(dir).map_err(|source| self.journal_error("delete mount record from", source))?;
        self.remove_record_file(dir)
    }

    fn remove_record_file(&self, dir: &Path) -> Result<(), MountError> {
        for path in [self.record_path(dir), self.legacy_marker(dir)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(MountError::Io { action: "delete mount record", path, source }),
            }
        }
        Ok(())
    }

    /// Takes the lock of `volume`, waiting at most
    /// [`DEFAULT_LOCK_WAIT`](Self::DEFAULT_LOCK_WAIT) for another holder.
    pub async fn lock(&self, volume: &str) -> Result<VolumeLock, MountError> {
        self.lock_within(volume, Self::DEFAULT_LOCK_WAIT).await
    }

    /// How long [`lock`](Self::lock) waits.
    pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(dory_core::config::DEFAULT_LOCK_TIMEOUT_SECONDS);

    /// Takes the lock of `volume`, waiting at most `limit` while another
    /// driver holds it (one stuck on a dead mount must not pile every later
    /// call up behind it). Dropping the guard releases it (so does the
    /// process ending).
    pub async fn lock_within(&self, volume: &str, limit: Duration) -> Result<VolumeLock, MountError> {
        let path = self.lock_path(volume);
        let io = |action, source| MountError::Io { action, path: path.clone(), source };
        let open = || File::options().create(true).truncate(false).write(true).open(&path);
        let mut file = match open() {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path.parent().unwrap_or(&self.root))
                    .map_err(|e| io("create lock directory for", e))?;
                open().map_err(|e| io("open lock", e))?
            }
            Err(err) => return Err(io("open lock", err)),
        };
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(1);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(VolumeLock { _lock: lock }),
                Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                    if started.elapsed() >= limit {
                        return Err(MountError::LockTimeout { volume: volume.to_owned(), waited: limit, path });
                    }
                    file = returned;
                    tokio::time::sleep(delay.min(limit.saturating_sub(started.elapsed()))).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                Err((_, errno)) => return Err(io("lock", std::io::Error::from_raw_os_error(errno as i32))),
            }
        }
    }
}

/// The line [`StateDir::mark_mounted`] appends to a record.
#[derive(Serialize, Deserialize)]
struct MountedMark {
    source: Option<PathBuf>,
}

fn record_line(record: &MountRecord) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

/// Holds one volume's lock.
#[derive(Debug)]
pub struct VolumeLock {
    _lock: Flock<File>,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// FNV-1a, 64 bit: a hash that stays the same across builds.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
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
        assert_eq!(state.record(&pod_dir).unwrap(), Some(record.clone()));
        let mounted = MountRecord { source: Some("/plugin/v".into()), phase: Phase::Mounted, ..record.clone() };
        state.mark_mounted(&mounted).unwrap();
        assert_eq!(state.record(&pod_dir).unwrap(), Some(mounted.clone()));
        state.save(&record).unwrap();
        assert_eq!(state.record(&pod_dir).unwrap(), Some(record.clone()), "a new mount clears the old mark");
        state.mark_mounted(&mounted).unwrap();
        state.forget(&pod_dir).unwrap();
        state.forget(&pod_dir).unwrap();
        assert_eq!(state.record(&pod_dir).unwrap(), None);
    }

    fn record(dir: &str) -> MountRecord {
        MountRecord { dir: dir.into(), volume: "v".into(), mount_id: "u1".into(), source: None, phase: Phase::Mounting }
    }

    /// A record too long for a journal slot: kept in a file of its own.
    fn long_record() -> MountRecord {
        record(&format!("/pods/u1/volumes/x/{}", "v/".repeat(2000)))
    }

    #[test]
    fn records_too_long_for_the_journal_live_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let record = long_record();
        assert!(state.save_new(&record).unwrap());
        assert!(state.record_path(&record.dir).exists());
        assert!(!state.save_new(&MountRecord { mount_id: "u2".into(), ..record.clone() }).unwrap());
        assert_eq!(state.record(&record.dir).unwrap(), Some(record.clone()));
        let mounted = MountRecord { source: Some("/plugin/v".into()), phase: Phase::Mounted, ..record.clone() };
        state.mark_mounted(&mounted).unwrap();
        assert_eq!(state.record(&record.dir).unwrap(), Some(mounted));
        state.save(&record).unwrap();
        assert_eq!(state.record(&record.dir).unwrap(), Some(record.clone()), "save replaces, mark included");
        state.forget(&record.dir).unwrap();
        assert_eq!(state.record(&record.dir).unwrap(), None);
        assert!(!state.record_path(&record.dir).exists());
    }

    #[test]
    fn a_torn_mark_reads_as_an_unfinished_mount() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let record = long_record();
        state.save(&record).unwrap();
        let path = state.record_path(&record.dir);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"\n{\"source\":\"/plug");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(state.record(&record.dir).unwrap(), Some(record.clone()), "a torn mark is no mark");
        let mounted = MountRecord { source: Some("/plugin/v".into()), phase: Phase::Mounted, ..record.clone() };
        state.mark_mounted(&mounted).unwrap();
        assert_eq!(state.record(&record.dir).unwrap(), Some(mounted), "a whole mark after a torn one counts");
    }

    #[test]
    fn records_of_the_previous_version_are_read_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let record = record("/pods/u1/volumes/x/v");
        // As the version before wrote them: a file per directory, and the
        // completion mark in a `.mounted` file beside it.
        std::fs::create_dir_all(dir.path().join("mounts")).unwrap();
        std::fs::write(state.record_path(&record.dir), serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(state.record(&record.dir).unwrap(), Some(record.clone()));
        assert!(!state.save_new(&record).unwrap(), "an old record is a record");
        std::fs::write(state.legacy_marker(&record.dir), "/plugin/v").unwrap();
        let read = state.record(&record.dir).unwrap().unwrap();
        assert_eq!((read.phase, read.source), (Phase::Mounted, Some(PathBuf::from("/plugin/v"))));
        state.forget(&record.dir).unwrap();
        assert!(!state.legacy_marker(&record.dir).exists());
        assert_eq!(state.record(&record.dir).unwrap(), None);
        // A stale legacy mark must not complete a new record.
        std::fs::write(state.legacy_marker(&record.dir), "/plugin/v").unwrap();
        assert!(state.save_new(&record).unwrap());
        assert_eq!(state.record(&record.dir).unwrap(), Some(record.clone()));
        let long = long_record();
        std::fs::write(state.legacy_marker(&long.dir), "/plugin/v").unwrap();
        assert!(state.save_new(&long).unwrap());
        assert_eq!(state.record(&long.dir).unwrap(), Some(long));
    }

    #[test]
    fn save_new_never_replaces_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let first = record("/pods/u1/volumes/x/v");
        assert!(state.save_new(&first).unwrap());
        let second = MountRecord { volume: "w".into(), ..first.clone() };
        assert!(!state.save_new(&second).unwrap());
        assert_eq!(state.record(&first.dir).unwrap(), Some(first));
        state.save(&second).unwrap();
        assert_eq!(state.record(&second.dir).unwrap(), Some(second), "save replaces");
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

    #[tokio::test]
    async fn a_lock_wait_is_bounded_and_names_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let _held = state.lock("v").await.unwrap();
        let started = std::time::Instant::now();
        let err = state.lock_within("v", Duration::from_millis(200)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains("\"v\""), "{err}");
        assert!(matches!(err, MountError::LockTimeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn names_too_long_for_a_file_name_still_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let long = "v".repeat(255);
        let other = format!("{}w", "v".repeat(254));
        let _a = state.lock(&long).await.unwrap();
        let _b = tokio::time::timeout(Duration::from_secs(2), state.lock(&other)).await.unwrap().unwrap();
        assert!(state.lock_within(&long, Duration::from_millis(50)).await.is_err(), "the same long name excludes");
        let _hidden = state.lock("..x").await.unwrap();
    }

    #[test]
    fn stale_temp_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let record = MountRecord {
            dir: "/p".into(),
            volume: "v".into(),
            mount_id: "u".into(),
            source: None,
            phase: Phase::Mounted,
        };
        state.save(&record).unwrap();
        let mounts = dir.path().join("mounts");
        std::fs::create_dir_all(&mounts).unwrap();
        // pid 0x7fffffff is above pid_max: never a live process.
        std::fs::write(mounts.join("0123456789abcdef.json.tmp.2147483647"), "{").unwrap();
        let own = mounts.join(format!("0123456789abcdef.json.tmp.{}", std::process::id()));
        std::fs::write(&own, "{").unwrap();
        assert_eq!(state.remove_stale_temp_files(), 1);
        assert!(own.exists(), "a live writer's temp file stays");
        assert_eq!(state.record(Path::new("/p")).unwrap(), Some(record));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
