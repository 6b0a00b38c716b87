//! Publish and unpublish: plugin calls plus a bind mount, made idempotent,
//! serialized per volume, and undone when half done.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dory_core::{CreateOptions, MountEntry, MountId, Mounter, VolumeBackend, VolumeName, error_chain};

use crate::error::MountError;
use crate::state::{MountRecord, Phase, StateDir};

/// What to do when the backend does not have the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MissingVolume {
    /// Create it with these options (an inline volume, a hand-made PV).
    Create(CreateOptions),
    /// Never create it here; the failure gives this reason (a provisioned
    /// volume that lives elsewhere, or creation turned off).
    Refuse(String),
}

/// One publish, in domain terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishRequest {
    /// The volume.
    pub volume: VolumeName,
    /// The mount ID the backend counts this user by.
    pub id: MountId,
    /// Bind read-only.
    pub read_only: bool,
    /// What to do if the volume does not exist.
    pub missing: MissingVolume,
}

/// How the publisher works, from the driver configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherSettings {
    /// Locks and mount records (persistent storage: see [`StateDir`]).
    pub state_dir: PathBuf,
    /// The SELinux label the publisher applies itself, or `None` (the
    /// default) to leave relabelling to the container runtime. When set, the
    /// plugin's mountpoint is relabelled before it is bound (so read-only
    /// binds work) and only when its top directory has another label.
    pub selinux_label: Option<String>,
    /// The configuration's `supportsCapabilities`. Publishing no longer
    /// asks Capabilities (the original's connectivity probe): Get proves the
    /// backend answers and the scope is not needed, so a mount makes one
    /// round trip less. Kept for frontends that want the probe elsewhere.
    pub probe_capabilities: bool,
    /// How long a call waits for another call's lock on the same volume.
    pub lock_timeout: Duration,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(dory_core::config::DEFAULT_STATE_DIR),
            selinux_label: None,
            probe_capabilities: true,
            lock_timeout: StateDir::DEFAULT_LOCK_WAIT,
        }
    }
}

impl PublisherSettings {
    /// The settings a driver configuration gives; `selinux` says whether
    /// this host labels mounts. The publisher relabels only when the
    /// configuration opts in (`selinuxRelabel`) and `selinux` is true.
    pub fn from_config(config: &dory_core::DriverConfig, selinux: bool) -> Self {
        Self {
            state_dir: config.state_dir.clone(),
            selinux_label: (selinux && config.selinux_relabel).then(|| config.selinux_label.clone()),
            probe_capabilities: config.supports_capabilities,
            lock_timeout: config.lock_timeout,
        }
    }
}

/// What a successful publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The volume was mounted now.
    Mounted {
        /// The plugin's mountpoint, bound onto the pod directory.
        source: PathBuf,
    },
    /// The directory was already mounted; nothing was done.
    AlreadyMounted,
}

/// Directories whose record a publisher wrote and whose Mount it has not
/// sent yet.
#[derive(Debug, Default)]
struct Unsent(std::sync::Mutex<Vec<PathBuf>>);

impl Unsent {
    fn set(&self, dir: &Path, unsent: bool) {
        let mut dirs = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        dirs.retain(|d| d != dir);
        if unsent {
            dirs.push(dir.to_path_buf());
        }
    }

    fn contains(&self, dir: &Path) -> bool {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().any(|d| d == dir)
    }
}

/// How many turns of a current-thread runtime a Get has to send its
/// request before the mount record's flush blocks the thread (a unix socket
/// connects at once; the request goes out on the next turn).
const GET_TURNS_BEFORE_FLUSH: usize = 2;

/// Publishes backend volumes onto directories, composed of a backend and a
/// mounter.
pub struct Publisher {
    settings: PublisherSettings,
    backend: Arc<dyn VolumeBackend>,
    mounter: Arc<dyn Mounter>,
    state: StateDir,
    /// Directories whose record this publisher wrote and whose Mount it has
    /// not sent yet: an interrupted publish of one only deletes its record.
    unsent: Arc<Unsent>,
}

impl Publisher {
    /// A publisher over `backend` and `mounter`.
    pub fn new(settings: PublisherSettings, backend: Arc<dyn VolumeBackend>, mounter: Arc<dyn Mounter>) -> Self {
        let state = StateDir::new(&settings.state_dir);
        Self { settings, backend, mounter, state, unsent: Default::default() }
    }

    /// The state directory (records and locks).
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn VolumeBackend> {
        &self.backend
    }

    /// The mounter.
    pub fn mounter(&self) -> &Arc<dyn Mounter> {
        &self.mounter
    }

    /// Publishes the requested volume onto `dir`.
    pub async fn publish(&self, dir: &Path, request: &PublishRequest) -> Result<PublishOutcome, MountError> {
        let PublishRequest { volume, id, read_only, missing } = request;
        let (volume, id, read_only) = (volume.clone(), id.clone(), *read_only);
        let _lock = self.state.lock_within(volume.as_str(), self.settings.lock_timeout).await?;

        if self.mounter.is_mount_point(dir)? {
            return self.already_mounted(dir, &volume, &id);
        }
        let mut record = MountRecord {
            dir: dir.to_path_buf(),
            volume: volume.to_string(),
            mount_id: id.to_string(),
            source: None,
            phase: Phase::Mounting,
        };
        // The record must be on disk before the plugin's Mount; it is
        // flushed while the plugin answers Get. Capabilities is not asked:
        // its answer is not needed here, and Get proves the backend answers.
        let (found, created) = self.get_while_recording(&volume, &record).await;
        let created = match created {
            Ok(created) => created,
            Err(err) => {
                // The write failed, perhaps halfway: whatever it left
                // guards no Mount (a record that was there before it makes
                // the write answer "exists", not fail).
                self.unsent.set(dir, false);
                return Err(err);
            }
        };
        if !created {
            if self.unsent.contains(dir) {
                // This publisher's own record of a Mount it never sent (a
                // call cancelled earlier): nothing to undo at the plugin.
                self.state.forget(dir)?;
            } else {
                // A record without a mount is a mount that did not finish
                // (or was undone behind our back): balance the plugin's
                // count first.
                self.undo_recorded_mount(dir).await?;
            }
            // Then record this one. No record is left now, so whatever a
            // failed or cancelled write leaves is this publisher's own.
            self.unsent.set(dir, true);
            if let Err(err) = self.record_now(&record).await {
                let _ = self.state.forget(dir);
                self.unsent.set(dir, false);
                return Err(err);
            }
        }
        if let Err(err) = self.ensure_volume(found, &volume, missing).await {
            let forgotten = self.state.forget(dir);
            self.unsent.set(dir, false);
            forgotten?;
            return Err(err);
        }
        self.unsent.set(dir, false);
        let source = match self.backend.mount(&volume, &id).await {
            Ok(source) => source,
            Err(err) => {
                self.state.forget(dir)?;
                return Err(err.into());
            }
        };
        // The plugin has mounted: a mountpoint that cannot be bound safely
        // is refused and the plugin's mount undone.
        let source = match usable_mountpoint(&volume, &source, dir) {
            Ok(source) => source,
            Err(err) => return Err(self.roll_back(dir, &volume, &id, err).await),
        };
        if let Err(err) = self.label_and_bind(&source, dir, read_only).await {
            return Err(self.roll_back(dir, &volume, &id, err).await);
        }
        record.source = Some(source.clone());
        record.phase = Phase::Mounted;
        if let Err(err) = self.state.mark_mounted(&record) {
            tracing::warn!(error = %error_chain(&err), "mounted, but the mount record could not be saved");
        }
        tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, source = %source.display(), "mounted");
        Ok(PublishOutcome::Mounted { source })
    }

    /// Asks the backend for `volume` while writing `record` as the new
    /// record of its directory (see [`StateDir::save_new`]): the flush waits
    /// for the disk, the Get for the plugin, and neither for the other.
    ///
    /// On a multi-threaded runtime (a server) the write runs on the blocking
    /// pool. On a current-thread runtime (a driver process, one call) a new
    /// thread costs more than it saves: the Get gets a few turns of the
    /// runtime to connect and send its request, then the write blocks this
    /// thread while the plugin answers. A Get that needs more turns simply
    /// finishes after the write.
    async fn get_while_recording(
        &self,
        volume: &VolumeName,
        record: &MountRecord,
    ) -> (dory_core::Result<Option<dory_core::VolumeInfo>>, Result<bool, MountError>) {
        use tokio::runtime::{Handle, RuntimeFlavor};
        // Noted as unsent by the writer itself, the moment it is durable: a
        // call interrupted from then on has a record to delete.
        let save_new = {
            let (record, unsent) = (record.clone(), Arc::clone(&self.unsent));
            move |state: &StateDir| {
                let created = state.save_new(&record)?;
                if created {
                    unsent.set(&record.dir, true);
                }
                Ok(created)
            }
        };
        if Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread {
            return tokio::join!(self.backend.get(volume), self.blocking(save_new));
        }
        let get = {
            let (backend, volume) = (Arc::clone(&self.backend), volume.clone());
            tokio::spawn(async move { backend.get(&volume).await })
        };
        for _ in 0..GET_TURNS_BEFORE_FLUSH {
            tokio::task::yield_now().await;
        }
        let created = save_new(&self.state);
        let found = get.await.unwrap_or_else(|join| {
            Err(dory_core::Error::backend(
                dory_core::ErrorKind::Local,
                dory_core::Operation::Get,
                Some(volume.as_str()),
                format!("the Get task failed: {join}"),
            ))
        });
        (found, created)
    }

    /// Writes `record` durably, replacing any record of its directory: on
    /// this thread on a current-thread runtime (a cancelled call then never
    /// leaves a write running behind it), else on the blocking pool.
    async fn record_now(&self, record: &MountRecord) -> Result<(), MountError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
            return self.state.save(record);
        }
        let record = record.clone();
        self.blocking(move |state| state.save(&record)).await
    }

    /// Runs `work` on the state directory on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&StateDir) -> Result<T, MountError> + Send + 'static,
    ) -> Result<T, MountError> {
        let state = self.state.clone();
        let root = self.settings.state_dir.clone();
        tokio::task::spawn_blocking(move || work(&state)).await.unwrap_or_else(|join| {
            Err(MountError::Io { action: "write mount record in", path: root, source: std::io::Error::other(join) })
        })
    }

    /// Creates the volume when Get found none and the caller allows it.
    async fn ensure_volume(
        &self,
        found: dory_core::Result<Option<dory_core::VolumeInfo>>,
        volume: &VolumeName,
        missing: &MissingVolume,
    ) -> Result<(), MountError> {
        let found = found?;
        // Only a definite "no such volume" gets here as None: any other
        // failure of Get is an error, never a reason to create.
        if found.is_some() {
            return Ok(());
        }
        match missing {
            MissingVolume::Create(options) => {
                tracing::info!(volume = %volume, option_keys = ?options.keys().collect::<Vec<_>>(), "creating volume");
                Ok(self.backend.create(volume, options).await?)
            }
            MissingVolume::Refuse(reason) => Err(MountError::Missing {
                volume: volume.to_string(),
                node: crate::node_name(),
                reason: reason.clone(),
            }),
        }
    }

    fn already_mounted(&self, dir: &Path, volume: &VolumeName, id: &MountId) -> Result<PublishOutcome, MountError> {
        match self.state.record(dir)? {
            Some(record) if record.volume != volume.as_str() => Err(MountError::UnknownVolume {
                dir: dir.to_path_buf(),
                reason: format!("volume {:?} is mounted there, not {volume:?}", record.volume),
            }),
            Some(mut record) => {
                if record.phase == Phase::Mounting {
                    // A driver died between the bind and the record update.
                    record.phase = Phase::Mounted;
                    self.state.mark_mounted(&record)?;
                }
                tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, "already mounted");
                Ok(PublishOutcome::AlreadyMounted)
            }
            None => {
                let source = self.mounter.mounted_at(dir)?.map(|entry| entry.source).unwrap_or_default();
                tracing::warn!(dir = %dir.display(), volume = %volume, source = %source, "already mounted by something else; leaving it");
                Ok(PublishOutcome::AlreadyMounted)
            }
        }
    }

    async fn label_and_bind(&self, source: &Path, dir: &Path, read_only: bool) -> Result<(), MountError> {
        std::fs::create_dir_all(dir).map_err(|e| MountError::Io {
            action: "create the volume directory",
            path: dir.to_path_buf(),
            source: e,
        })?;
        // Opt-in relabelling: on the plugin's (writable) mountpoint, before
        // any read-only bind exists, and once: a volume whose top directory
        // already has the label is left alone.
        if let Some(label) = &self.settings.selinux_label
            && crate::mounter::selinux_label(source).ok().flatten().as_deref() != Some(label.as_str())
        {
            // The walk of the whole volume runs on a blocking thread, not
            // the runtime's only one (it still holds this volume's lock).
            let (mounter, path, label) = (Arc::clone(&self.mounter), source.to_path_buf(), label.clone());
            tokio::task::spawn_blocking(move || mounter.relabel(&path, &label)).await.map_err(|join| {
                MountError::Io { action: "relabel", path: source.to_path_buf(), source: join.into() }
            })??;
        }
        // Mount syscalls run on this thread: a helper thread would cost more
        // than the syscall, and the runtime waits for it on exit anyway.
        self.mounter.bind(source, dir, read_only)?;
        Ok(())
    }

    /// Undoes the plugin mount after a later step failed.
    async fn roll_back(&self, dir: &Path, volume: &VolumeName, id: &MountId, error: MountError) -> MountError {
        tracing::warn!(volume = %volume, pod = %id, error = %error_chain(&error), "mount failed after the plugin mounted; undoing");
        match self.backend.unmount(volume, id).await {
            Ok(()) => {
                if let Err(err) = self.state.forget(dir) {
                    tracing::warn!(error = %error_chain(&err), "cannot delete the mount record");
                }
                error
            }
            Err(rollback) => {
                MountError::RollbackFailed { error: error_chain(&error), rollback: error_chain(&rollback) }
            }
        }
    }

    /// If a mount of `dir` was recorded but is not in place, undoes the
    /// plugin's side and deletes the record. Returns whether it did.
    pub async fn undo_recorded_mount(&self, dir: &Path) -> Result<bool, MountError> {
        let Some(record) = self.state.record(dir)? else { return Ok(false) };
        if self.mounter.is_mount_point(dir)? {
            if record.phase == Phase::Mounted {
                return Ok(false);
            }
            self.unbind_all(dir).await?;
        }
        let volume = VolumeName::new(record.volume.clone())?;
        let id = MountId::new(record.mount_id.clone())?;
        tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, phase = ?record.phase, "undoing an unfinished mount");
        self.backend.unmount(&volume, &id).await?;
        self.state.forget(dir)?;
        Ok(true)
    }

    /// Recovers after an interrupted publish (SIGTERM): takes the volume's
    /// lock and undoes a half-done publish of `dir`.
    pub async fn recover_interrupted(&self, dir: &Path) -> Result<bool, MountError> {
        let Some(record) = self.state.record(dir)? else { return Ok(false) };
        if self.unsent.contains(dir) {
            // Interrupted before its Mount was sent: the plugin has nothing
            // to undo. The volume lock went with the call: taken again, so
            // a mount another driver made meanwhile (the same record, as
            // mount IDs follow from the directory) is not touched.
            let _lock = self.state.lock_within(&record.volume, self.settings.lock_timeout).await?;
            self.unsent.set(dir, false);
            if self.mounter.is_mount_point(dir)? {
                return Ok(false);
            }
            self.state.forget(dir)?;
            return Ok(true);
        }
        if record.phase == Phase::Mounted {
            return Ok(false);
        }
        let _lock = self.state.lock_within(&record.volume, self.settings.lock_timeout).await?;
        self.undo_recorded_mount(dir).await
    }

    /// Unpublishes `dir`, working from the path alone: from its record, else
    /// from the mount table and the backend, with `fallback_id` (the ID the
    /// caller's publish would have used) as the mount ID.
    pub async fn unpublish(&self, dir: &Path, fallback_id: Option<MountId>) -> Result<(), MountError> {
        let record = self.state.record(dir)?;
        // With a record, the mount table is not needed at all.
        let mounted = match record {
            None if self.mounter.is_mount_point(dir)? => self.mounter.mounted_at(dir)?,
            _ => None,
        };
        let (volume, id, source) = match (&record, &mounted) {
            (None, None) => {
                tracing::info!(dir = %dir.display(), "not mounted; nothing to do");
                return Ok(());
            }
            (Some(record), _) => {
                (VolumeName::new(record.volume.clone())?, MountId::new(record.mount_id.clone())?, record.source.clone())
            }
            (None, Some(entry)) => {
                let (volume, source) = self.identify(dir, entry).await?;
                let id = fallback_id.clone().ok_or_else(|| MountError::UnknownVolume {
                    dir: dir.to_path_buf(),
                    reason: "no record of its mount ID".into(),
                })?;
                (volume, id, Some(source))
            }
        };
        tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, "unmount requested");
        let _lock = self.state.lock_within(volume.as_str(), self.settings.lock_timeout).await?;
        if let Some(before) = &record {
            // Read before the lock: the publish that wrote it may have
            // failed, or finished differently, while we waited.
            match self.state.record(dir)? {
                Some(now) if now.volume == before.volume && now.mount_id == before.mount_id => {}
                None if !self.mounter.is_mount_point(dir)? => {
                    tracing::info!(dir = %dir.display(), "its mount was undone meanwhile; nothing to do");
                    return Ok(());
                }
                _ => {
                    return Err(MountError::UnknownVolume {
                        dir: dir.to_path_buf(),
                        reason: "its mount record changed while this call waited for the volume's lock; try again"
                            .into(),
                    });
                }
            }
        }
        if record.is_none() {
            // Remember what we found, so a retry after a plugin failure
            // still knows the volume once the bind is gone.
            self.state.save(&MountRecord {
                dir: dir.to_path_buf(),
                volume: volume.to_string(),
                mount_id: id.to_string(),
                source,
                phase: Phase::Mounted,
            })?;
        }
        self.unbind_all(dir).await?;
        self.backend.unmount(&volume, &id).await?;
        self.state.forget(dir)?;
        self.state.remove_stale_temp_files();
        tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, "unmounted");
        Ok(())
    }

    /// Removes every mount stacked on `dir`, until the kernel says nothing
    /// is mounted there (`EINVAL`); no mount table read needed.
    async fn unbind_all(&self, dir: &Path) -> Result<(), MountError> {
        for _ in 0..16 {
            match self.mounter.unmount(dir) {
                Ok(()) => continue,
                Err(dory_core::Error::Unmount { source, .. })
                    if matches!(source.raw_os_error(), Some(nix::libc::EINVAL | nix::libc::ENOENT)) =>
                {
                    return Ok(());
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Finds the volume bound onto `dir` without a record: the bind's
    /// source in the mount table, then the backend's Get (by the source's
    /// base name) or List (by mountpoint).
    async fn identify(&self, dir: &Path, entry: &MountEntry) -> Result<(VolumeName, PathBuf), MountError> {
        let unknown = |reason: String| MountError::UnknownVolume { dir: dir.to_path_buf(), reason };
        let table = self.mounter.mount_table()?;
        let source = bind_source(entry, &table, dir)
            .ok_or_else(|| unknown(format!("no mount shows where {:?} on {} comes from", entry.root, entry.device)))?;
        if let Some(name) = source.file_name().and_then(|n| n.to_str()).and_then(|n| VolumeName::new(n).ok())
            && let Some(info) = self.backend.get(&name).await?
            && info.mountpoint.as_deref().is_none_or(|m| m == source)
        {
            return Ok((name, source));
        }
        let volumes = self.backend.list().await?;
        match volumes.into_iter().find(|v| v.mountpoint.as_deref() == Some(source.as_path())) {
            Some(info) => Ok((VolumeName::new(info.name)?, source)),
            None => Err(unknown(format!("no volume of the backend claims to be mounted at {}", source.display()))),
        }
    }
}

/// Where a bind mount's content lives on the host: the mount of the same
/// device whose root contains the bind's root, joined with the rest. Other
/// pods' volume directories are never the answer: two pods sharing a volume
/// have binds with the same root, and only the plugin's mount is its source.
pub fn bind_source(entry: &MountEntry, table: &[MountEntry], dir: &Path) -> Option<PathBuf> {
    table
        .iter()
        .filter(|m| m.device == entry.device && m.mount_point != dir && m.mount_id != entry.mount_id)
        .filter(|m| crate::pod_uid_from_dir(&m.mount_point).is_none())
        .filter_map(|m| entry.root.strip_prefix(&m.root).ok().map(|rest| (m, rest)))
        .max_by_key(|(m, _)| m.root.as_os_str().len())
        .map(|(m, rest)| if rest.as_os_str().is_empty() { m.mount_point.clone() } else { m.mount_point.join(rest) })
}

/// Top-level directories of the host that are never a volume.
const SYSTEM_DIRS: [&str; 12] =
    ["/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run/secrets", "/sbin", "/sys", "/usr"];

/// The plugin's answer resolved and judged before anything is bound: an
/// absolute, clean path without control characters, whose last component is
/// not a symlink, that resolves to an existing directory which is not the
/// host's root or a system directory, not an ancestor of the pod directory
/// and not inside any pod's directory. Returns the resolved path, which is
/// what gets bound.
pub fn usable_mountpoint(volume: &VolumeName, mountpoint: &Path, dir: &Path) -> Result<PathBuf, MountError> {
    use std::path::Component;
    let refuse = |reason: String| MountError::UnusableMountpoint {
        volume: volume.to_string(),
        mountpoint: mountpoint.to_path_buf(),
        reason,
    };
    let bytes = mountpoint.as_os_str().as_encoded_bytes();
    if bytes.iter().any(|b| b.is_ascii_control()) {
        return Err(refuse("contains control characters".into()));
    }
    if !mountpoint.is_absolute() {
        return Err(refuse("is not an absolute path".into()));
    }
    if mountpoint.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(refuse("has \".\" or \"..\" components".into()));
    }
    let metadata = std::fs::symlink_metadata(mountpoint).map_err(|e| refuse(format!("cannot be used ({e})")))?;
    if metadata.file_type().is_symlink() {
        return Err(refuse("is a symlink".into()));
    }
    if !metadata.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    let resolved = std::fs::canonicalize(mountpoint).map_err(|e| refuse(format!("cannot be resolved ({e})")))?;
    let shown = |what: &str| {
        if resolved == mountpoint { what.to_owned() } else { format!("resolves to {resolved:?}, which {what}") }
    };
    if resolved.parent().is_none() {
        return Err(refuse(shown("is the host's root directory")));
    }
    if let Some(system) = SYSTEM_DIRS.iter().find(|d| resolved.starts_with(d)) {
        return Err(refuse(shown(&format!("is a system directory ({system})"))));
    }
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if dir.starts_with(&resolved) {
        return Err(refuse(shown(&format!("contains the pod volume directory {dir:?}"))));
    }
    if crate::pod_uid_from_dir(&resolved).is_some() || pods_dir_of(&dir).is_some_and(|pods| resolved.starts_with(pods))
    {
        return Err(refuse(shown("is inside a pod's directory")));
    }
    Ok(resolved)
}

/// `<kubelet root>/pods` of a pod volume directory.
fn pods_dir_of(dir: &Path) -> Option<PathBuf> {
    let uid = crate::pod_uid_from_dir(dir)?;
    dir.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == uid.as_str()))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, device: &str, root: &str, mount_point: &str) -> MountEntry {
        MountEntry {
            mount_id: id,
            parent_id: 1,
            device: device.into(),
            root: root.into(),
            mount_point: mount_point.into(),
            mount_options: vec!["rw".into()],
            fs_type: "ext4".into(),
            source: "/dev/x".into(),
            super_options: String::new(),
        }
    }

    fn driver(dir: &Path, selinux: bool) -> (Publisher, Arc<dory_core::RecordingMounter>) {
        let (publisher, mounter, _) = driver_with_backend(dir, selinux);
        (publisher, mounter)
    }

    fn driver_with_backend(
        dir: &Path,
        selinux: bool,
    ) -> (Publisher, Arc<dory_core::RecordingMounter>, Arc<dory_backend_mock::MockBackend>) {
        let settings = PublisherSettings {
            state_dir: dir.join("state"),
            selinux_label: selinux.then(|| "system_u:object_r:container_file_t:s0".to_owned()),
            probe_capabilities: true,
            lock_timeout: Duration::from_secs(5),
        };
        let backend = Arc::new(dory_backend_mock::MockBackend::new(dir.join("volumes")).unwrap());
        let mounter = Arc::new(dory_core::RecordingMounter::default());
        (Publisher::new(settings, backend.clone(), mounter.clone()), mounter, backend)
    }

    fn request(volume: &str, id: &str, read_only: bool) -> PublishRequest {
        PublishRequest {
            volume: VolumeName::new(volume).unwrap(),
            id: MountId::new(id).unwrap(),
            read_only,
            missing: MissingVolume::Create(CreateOptions::new()),
        }
    }

    #[tokio::test]
    async fn opted_in_relabelling_labels_the_source_before_a_read_only_bind() {
        let scratch = tempfile::tempdir().unwrap();
        let (driver, mounter) = driver(scratch.path(), true);
        let dir = scratch.path().join("pods/uid-1/volumes/d~x/v1");
        let request = request("v1", "uid-1", true);
        let outcome = driver.publish(&dir, &request).await.unwrap();
        let source = scratch.path().join("volumes/v1");
        assert_eq!(outcome, PublishOutcome::Mounted { source: source.clone() });
        assert_eq!(
            mounter.calls(),
            [
                // Relabelled on the plugin's side before the read-only bind
                // exists: through a read-only bind, setxattr fails (EROFS).
                dory_core::RecordedMount::Relabel {
                    path: source.clone(),
                    label: "system_u:object_r:container_file_t:s0".into()
                },
                dory_core::RecordedMount::Bind { source, target: dir.clone(), read_only: true },
            ]
        );
        assert_eq!(driver.publish(&dir, &request).await.unwrap(), PublishOutcome::AlreadyMounted);
        driver.unpublish(&dir, None).await.unwrap();
        assert!(mounter.mounted_at(&dir).unwrap().is_none());
    }

    #[tokio::test]
    async fn without_selinux_nothing_is_relabelled() {
        let scratch = tempfile::tempdir().unwrap();
        let (driver, mounter) = driver(scratch.path(), false);
        let dir = scratch.path().join("pods/uid-2/volumes/d~x/v2");
        driver.publish(&dir, &request("v2", "uid-2", false)).await.unwrap();
        assert!(!mounter.calls().iter().any(|c| matches!(c, dory_core::RecordedMount::Relabel { .. })));
    }

    #[tokio::test]
    async fn a_second_publish_of_a_mounted_directory_keeps_its_record() {
        let scratch = tempfile::tempdir().unwrap();
        let (driver, mounter, backend) = driver_with_backend(scratch.path(), false);
        let dir = scratch.path().join("pods/uid-3/volumes/d~x/v3");
        let request = request("v3", "uid-3", false);
        assert!(matches!(driver.publish(&dir, &request).await.unwrap(), PublishOutcome::Mounted { .. }));
        assert_eq!(backend.mount_count("v3"), 1);
        let recorded = driver.state().record(&dir).unwrap().unwrap();
        assert_eq!((recorded.phase, recorded.mount_id.as_str()), (Phase::Mounted, "uid-3"));
        assert_eq!(driver.publish(&dir, &request).await.unwrap(), PublishOutcome::AlreadyMounted);
        assert_eq!(driver.state().record(&dir).unwrap(), Some(recorded));
        driver.unpublish(&dir, None).await.unwrap();
        assert_eq!((backend.mount_count("v3"), mounter.mounted_at(&dir).unwrap()), (0, None));
        assert_eq!(driver.state().record(&dir).unwrap(), None);
    }

    #[tokio::test]
    async fn a_publish_interrupted_before_its_mount_only_deletes_its_record() {
        let scratch = tempfile::tempdir().unwrap();
        let (driver, mounter, backend) = driver_with_backend(scratch.path(), false);
        let dir = scratch.path().join("pods/uid-4/volumes/d~x/v4");
        backend.faults().delay(dory_core::Operation::Get, Duration::from_millis(500));
        // An Unmount would fail: the recovery must not need one.
        backend.faults().fail(dory_core::Operation::Unmount, "no such mount");
        let request = request("v4", "uid-4", false);
        let publish = driver.publish(&dir, &request);
        assert!(tokio::time::timeout(Duration::from_millis(150), publish).await.is_err(), "interrupted");
        assert!(driver.state().record(&dir).unwrap().is_some(), "the record was written before the Get returned");
        assert!(driver.recover_interrupted(&dir).await.unwrap(), "rolled back");
        assert_eq!(driver.state().record(&dir).unwrap(), None);
        assert_eq!((backend.mount_count("v4"), mounter.calls().len()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_runtime_records_on_the_blocking_pool() {
        let scratch = tempfile::tempdir().unwrap();
        let (driver, _, backend) = driver_with_backend(scratch.path(), false);
        let dir = scratch.path().join("pods/uid-5/volumes/d~x/v5");
        assert!(matches!(
            driver.publish(&dir, &request("v5", "uid-5", false)).await.unwrap(),
            PublishOutcome::Mounted { .. }
        ));
        assert_eq!(driver.state().record(&dir).unwrap().unwrap().phase, Phase::Mounted);
        driver.unpublish(&dir, None).await.unwrap();
        assert_eq!(backend.mount_count("v5"), 0);
    }

    #[tokio::test]
    async fn a_stale_record_is_undone_before_a_new_publish() {
        let scratch = tempfile::tempdir().unwrap();
        let (driver, _, backend) = driver_with_backend(scratch.path(), false);
        let dir = scratch.path().join("pods/uid-6/volumes/d~x/v6");
        // A driver killed after the plugin's Mount, before the bind.
        backend.create(&VolumeName::new("v6").unwrap(), &CreateOptions::new()).await.unwrap();
        backend.mount(&VolumeName::new("v6").unwrap(), &MountId::new("old-id").unwrap()).await.unwrap();
        driver
            .state()
            .save(&MountRecord {
                dir: dir.clone(),
                volume: "v6".into(),
                mount_id: "old-id".into(),
                source: None,
                phase: Phase::Mounting,
            })
            .unwrap();
        assert!(matches!(
            driver.publish(&dir, &request("v6", "uid-6", false)).await.unwrap(),
            PublishOutcome::Mounted { .. }
        ));
        assert_eq!(backend.mount_count("v6"), 1, "the stale mount was undone, this one counted");
        assert_eq!(driver.state().record(&dir).unwrap().unwrap().mount_id, "uid-6");
    }

    /// The mock backend, with a log of the calls that count at a plugin.
    struct Spy {
        inner: Arc<dory_backend_mock::MockBackend>,
        log: std::sync::Mutex<Vec<String>>,
        unmounted: tokio::sync::Notify,
    }

    impl Spy {
        fn calls(&self, prefix: &str) -> usize {
            self.log.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).count()
        }
    }

    #[async_trait::async_trait]
    impl VolumeBackend for Spy {
        async fn get(&self, n: &VolumeName) -> dory_core::Result<Option<dory_core::VolumeInfo>> {
            self.inner.get(n).await
        }
        async fn create(&self, n: &VolumeName, o: &CreateOptions) -> dory_core::Result<()> {
            self.inner.create(n, o).await
        }
        async fn remove(&self, n: &VolumeName) -> dory_core::Result<()> {
            self.inner.remove(n).await
        }
        async fn mount(&self, n: &VolumeName, id: &MountId) -> dory_core::Result<PathBuf> {
            self.log.lock().unwrap().push(format!("mount {n} {id}"));
            self.inner.mount(n, id).await
        }
        async fn unmount(&self, n: &VolumeName, id: &MountId) -> dory_core::Result<()> {
            self.log.lock().unwrap().push(format!("unmount {n} {id}"));
            let result = self.inner.unmount(n, id).await;
            self.unmounted.notify_one();
            result
        }
        async fn path(&self, n: &VolumeName) -> dory_core::Result<Option<PathBuf>> {
            self.inner.path(n).await
        }
        async fn list(&self) -> dory_core::Result<Vec<dory_core::VolumeInfo>> {
            self.inner.list().await
        }
        async fn capabilities(&self) -> dory_core::Result<dory_core::Capabilities> {
            self.inner.capabilities().await
        }
    }

    fn spied(dir: &Path) -> (Arc<Spy>, PublisherSettings, Arc<dory_core::RecordingMounter>) {
        let settings = PublisherSettings {
            state_dir: dir.join("state"),
            selinux_label: None,
            probe_capabilities: true,
            lock_timeout: Duration::from_secs(5),
        };
        let inner = Arc::new(dory_backend_mock::MockBackend::new(dir.join("volumes")).unwrap());
        let spy = Arc::new(Spy { inner, log: Default::default(), unmounted: tokio::sync::Notify::new() });
        (spy, settings, Arc::new(dory_core::RecordingMounter::default()))
    }

    #[tokio::test]
    async fn a_publish_interrupted_while_replacing_a_stale_record_leaves_none_and_balances() {
        let scratch = tempfile::tempdir().unwrap();
        let (spy, settings, mounter) = spied(scratch.path());
        let driver = Publisher::new(settings, spy.clone(), mounter);
        let dir = scratch.path().join("pods/uid-7/volumes/d~x/v7");
        let (volume, id) = (VolumeName::new("v7").unwrap(), MountId::new("uid-7").unwrap());
        // A mount whose bind is gone (a reboot): the plugin still counts it.
        spy.inner.create(&volume, &CreateOptions::new()).await.unwrap();
        spy.inner.mount(&volume, &id).await.unwrap();
        let stale = MountRecord {
            dir: dir.clone(),
            volume: "v7".into(),
            mount_id: "uid-7".into(),
            source: None,
            phase: Phase::Mounted,
        };
        driver.state().save(&stale).unwrap();
        let request = request("v7", "uid-7", false);
        // Interrupted at the first chance after the stale mount's Unmount
        // (on a driver's runtime the new record is written before any).
        let finished = {
            let publish = driver.publish(&dir, &request);
            tokio::pin!(publish);
            tokio::select! { biased; r = &mut publish => Some(r.unwrap()), _ = spy.unmounted.notified() => None }
        };
        if finished.is_none() {
            driver.recover_interrupted(&dir).await.unwrap();
            assert_eq!(driver.state().record(&dir).unwrap(), None, "no record of a Mount never sent");
            assert!(matches!(driver.publish(&dir, &request).await.unwrap(), PublishOutcome::Mounted { .. }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(spy.calls("unmount"), 1, "one Unmount for the one stale Mount");
        assert_eq!(spy.inner.mount_count("v7"), 1);
        assert_eq!(driver.state().record(&dir).unwrap().map(|r| r.phase), Some(Phase::Mounted));
    }

    #[tokio::test]
    async fn unpublish_rereads_a_record_whose_publish_failed_while_it_waited() {
        let scratch = tempfile::tempdir().unwrap();
        let (spy, settings, mounter) = spied(scratch.path());
        let publisher = Publisher::new(settings.clone(), spy.clone(), mounter.clone());
        let unpublisher = Publisher::new(settings, spy.clone(), mounter);
        let dir = scratch.path().join("pods/uid-8/volumes/d~x/v8");
        spy.inner.faults().delay(dory_core::Operation::Get, Duration::from_millis(300));
        let request =
            PublishRequest { missing: MissingVolume::Refuse("not here".into()), ..request("v8", "uid-8", false) };
        let (published, unpublished) = tokio::join!(publisher.publish(&dir, &request), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            unpublisher.unpublish(&dir, None).await
        });
        assert!(matches!(published, Err(MountError::Missing { .. })), "{published:?}");
        unpublished.unwrap();
        assert_eq!(spy.calls("unmount"), 0, "an Unmount for a Mount never sent");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_publish_cancelled_before_its_mount_sends_no_unmount_later() {
        let scratch = tempfile::tempdir().unwrap();
        let (spy, settings, mounter) = spied(scratch.path());
        let driver = Publisher::new(settings, spy.clone(), mounter);
        let dir = scratch.path().join("pods/uid-9/volumes/d~x/v9");
        spy.inner.faults().delay(dory_core::Operation::Get, Duration::from_millis(300));
        let request = request("v9", "uid-9", false);
        // A CSI call past its deadline: tonic drops the handler.
        assert!(tokio::time::timeout(Duration::from_millis(100), driver.publish(&dir, &request)).await.is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        spy.inner.faults().clear_all();
        assert!(matches!(driver.publish(&dir, &request).await.unwrap(), PublishOutcome::Mounted { .. }));
        assert_eq!(spy.calls("unmount"), 0, "an Unmount for a Mount never sent");
        assert_eq!(spy.inner.mount_count("v9"), 1);
    }

    #[test]
    fn bind_source_finds_the_most_specific_mount() {
        let table = vec![
            entry(1, "8:1", "/", "/"),
            entry(2, "0:50", "/", "/bv/root"),
            entry(3, "0:50", "/volumes/v1", "/pods/p/volumes/d~x/v1"),
            entry(4, "8:1", "/tmp/mock/v2", "/pods/q/volumes/d~x/v2"),
        ];
        let dir = Path::new("/pods/p/volumes/d~x/v1");
        assert_eq!(bind_source(&table[2], &table, dir), Some(PathBuf::from("/bv/root/volumes/v1")));
        let dir = Path::new("/pods/q/volumes/d~x/v2");
        assert_eq!(bind_source(&table[3], &table, dir), Some(PathBuf::from("/tmp/mock/v2")));
        let lonely = entry(9, "7:7", "/x", "/pods/r");
        assert_eq!(bind_source(&lonely, &table, Path::new("/pods/r")), None);
    }
}
