//! The `mount` and `unmount` verbs: plugin calls plus a bind mount, made
//! idempotent, serialized per volume, and undone when half done.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dory_core::{MountEntry, MountId, Mounter, VolumeBackend, VolumeName, error_chain};

use crate::config::DriverConfig;
use crate::error::DriverError;
use crate::request::{MountRequest, mount_id, pod_uid_from_dir};
use crate::state::{MountRecord, Phase, StateDir};

/// What a successful `mount` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountOutcome {
    /// The volume was mounted now.
    Mounted {
        /// The plugin's mountpoint, bound onto the pod directory.
        source: PathBuf,
    },
    /// The directory was already mounted; nothing was done.
    AlreadyMounted,
}

/// The driver, composed of a backend and a mounter.
pub struct Driver {
    config: DriverConfig,
    backend: Arc<dyn VolumeBackend>,
    mounter: Arc<dyn Mounter>,
    state: StateDir,
    selinux: bool,
}

impl Driver {
    /// A driver; `selinux` says whether mounted volumes get relabelled.
    pub fn new(
        config: DriverConfig,
        backend: Arc<dyn VolumeBackend>,
        mounter: Arc<dyn Mounter>,
        selinux: bool,
    ) -> Self {
        let state = StateDir::new(&config.state_dir);
        Self { config, backend, mounter, state, selinux }
    }

    /// Mounts the requested volume onto the pod volume directory `dir`.
    pub async fn mount(&self, dir: &Path, request: &MountRequest) -> Result<MountOutcome, DriverError> {
        let volume = request.volume_name()?;
        let id = mount_id(dir, Some(request))?;
        let fs_group = request.fs_group()?;
        let options = request.create_options(self.config.strip_k8s_options, &self.config.default_options)?;
        let read_only = request.read_only();
        tracing::info!(
            dir = %dir.display(), volume = %volume, pod = %id, read_only, ?fs_group, options = %request.redacted(),
            "mount requested"
        );
        let _lock = self.state.lock(volume.as_str()).await?;

        if self.mounter.is_mount_point(dir)? {
            return self.already_mounted(dir, &volume, &id);
        }
        // A record without a mount is a mount that did not finish (or was
        // undone behind our back): balance the plugin's count first.
        self.undo_recorded_mount(dir).await?;

        if self.config.supports_capabilities {
            let capabilities = self.backend.capabilities().await?;
            tracing::debug!(scope = %capabilities.scope, "backend reachable");
        }
        if self.backend.get(&volume).await?.is_none() {
            if !self.config.create_volumes {
                return Err(DriverError::CreateDisabled {
                    volume: volume.to_string(),
                    config: self.config.path.clone(),
                });
            }
            tracing::info!(volume = %volume, option_keys = ?options.keys().collect::<Vec<_>>(), "creating volume");
            self.backend.create(&volume, &options).await?;
        }

        let mut record = MountRecord {
            dir: dir.to_path_buf(),
            volume: volume.to_string(),
            mount_id: id.to_string(),
            source: None,
            phase: Phase::Mounting,
        };
        self.state.save(&record)?;
        let source = match self.backend.mount(&volume, &id).await {
            Ok(source) => source,
            Err(err) => {
                self.state.forget(dir)?;
                return Err(err.into());
            }
        };
        // A relative path would be bound from our working directory, "/"
        // would hand the pod the host: the plugin has mounted, so undo it.
        if !source.is_absolute() || source.parent().is_none() {
            let err = DriverError::UnusableMountpoint { volume: volume.to_string(), mountpoint: source };
            return Err(self.roll_back(dir, &volume, &id, err).await);
        }
        if let Err(err) = self.bind_and_label(&source, dir, read_only).await {
            return Err(self.roll_back(dir, &volume, &id, err).await);
        }
        record.source = Some(source.clone());
        record.phase = Phase::Mounted;
        if let Err(err) = self.state.save(&record) {
            tracing::warn!(error = %error_chain(&err), "mounted, but the mount record could not be saved");
        }
        tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, source = %source.display(), "mounted");
        Ok(MountOutcome::Mounted { source })
    }

    fn already_mounted(&self, dir: &Path, volume: &VolumeName, id: &MountId) -> Result<MountOutcome, DriverError> {
        match self.state.record(dir)? {
            Some(record) if record.volume != volume.as_str() => Err(DriverError::UnknownVolume {
                dir: dir.to_path_buf(),
                reason: format!("volume {:?} is mounted there, not {volume:?}", record.volume),
            }),
            Some(mut record) => {
                if record.phase == Phase::Mounting {
                    // A driver died between the bind and the record update.
                    record.phase = Phase::Mounted;
                    self.state.save(&record)?;
                }
                tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, "already mounted");
                Ok(MountOutcome::AlreadyMounted)
            }
            None => {
                let source = self.mounter.mounted_at(dir)?.map(|entry| entry.source).unwrap_or_default();
                tracing::warn!(dir = %dir.display(), volume = %volume, source = %source, "already mounted by something else; leaving it");
                Ok(MountOutcome::AlreadyMounted)
            }
        }
    }

    async fn bind_and_label(&self, source: &Path, dir: &Path, read_only: bool) -> Result<(), DriverError> {
        std::fs::create_dir_all(dir).map_err(|e| DriverError::Io {
            action: "create pod volume directory",
            path: dir.to_path_buf(),
            source: e,
        })?;
        // Mount syscalls run on this thread: a helper thread would cost more
        // than the syscall, and the runtime waits for it on exit anyway.
        self.mounter.bind(source, dir, read_only)?;
        if self.selinux
            && let Err(err) = self.mounter.relabel(dir, &self.config.selinux_label)
        {
            let _ = self.unbind_all(dir).await;
            return Err(err.into());
        }
        Ok(())
    }

    /// Undoes the plugin mount after a later step failed.
    async fn roll_back(&self, dir: &Path, volume: &VolumeName, id: &MountId, error: DriverError) -> DriverError {
        tracing::warn!(volume = %volume, pod = %id, error = %error_chain(&error), "mount failed after the plugin mounted; undoing");
        match self.backend.unmount(volume, id).await {
            Ok(()) => {
                if let Err(err) = self.state.forget(dir) {
                    tracing::warn!(error = %error_chain(&err), "cannot delete the mount record");
                }
                error
            }
            Err(rollback) => {
                DriverError::RollbackFailed { error: error_chain(&error), rollback: error_chain(&rollback) }
            }
        }
    }

    /// If a mount of `dir` was recorded but is not in place, undoes the
    /// plugin's side and deletes the record. Returns whether it did.
    pub async fn undo_recorded_mount(&self, dir: &Path) -> Result<bool, DriverError> {
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

    /// Recovers after an interrupted `mount` (SIGTERM): takes the volume's
    /// lock and undoes a half-done mount of `dir`.
    pub async fn recover_interrupted(&self, dir: &Path) -> Result<bool, DriverError> {
        let Some(record) = self.state.record(dir)? else { return Ok(false) };
        if record.phase == Phase::Mounted {
            return Ok(false);
        }
        let _lock = self.state.lock(&record.volume).await?;
        self.undo_recorded_mount(dir).await
    }

    /// Unmounts the pod volume directory `dir`, working from the path alone.
    pub async fn unmount(&self, dir: &Path) -> Result<(), DriverError> {
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
                let id = MountId::new(
                    pod_uid_from_dir(dir).ok_or_else(|| DriverError::NoPodUid { dir: dir.to_path_buf() })?,
                )?;
                (volume, id, Some(source))
            }
        };
        tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, "unmount requested");
        let _lock = self.state.lock(volume.as_str()).await?;
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
        tracing::info!(dir = %dir.display(), volume = %volume, pod = %id, "unmounted");
        Ok(())
    }

    /// Removes every mount stacked on `dir`, until the kernel says nothing
    /// is mounted there (`EINVAL`); no mount table read needed.
    async fn unbind_all(&self, dir: &Path) -> Result<(), DriverError> {
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
    async fn identify(&self, dir: &Path, entry: &MountEntry) -> Result<(VolumeName, PathBuf), DriverError> {
        let unknown = |reason: String| DriverError::UnknownVolume { dir: dir.to_path_buf(), reason };
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
/// device whose root contains the bind's root, joined with the rest.
pub fn bind_source(entry: &MountEntry, table: &[MountEntry], dir: &Path) -> Option<PathBuf> {
    table
        .iter()
        .filter(|m| m.device == entry.device && m.mount_point != dir && m.mount_id != entry.mount_id)
        .filter_map(|m| entry.root.strip_prefix(&m.root).ok().map(|rest| (m, rest)))
        .max_by_key(|(m, _)| m.root.as_os_str().len())
        .map(|(m, rest)| if rest.as_os_str().is_empty() { m.mount_point.clone() } else { m.mount_point.join(rest) })
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

    fn driver(dir: &Path, selinux: bool) -> (Driver, Arc<dory_core::RecordingMounter>) {
        let mut config = DriverConfig::defaults(&dir.join("d.json"));
        config.state_dir = dir.join("state");
        let backend = Arc::new(dory_backend_mock::MockBackend::new(dir.join("volumes")).unwrap());
        let mounter = Arc::new(dory_core::RecordingMounter::default());
        (Driver::new(config, backend, mounter.clone(), selinux), mounter)
    }

    #[tokio::test]
    async fn selinux_hosts_get_the_mount_relabelled_read_only_binds_stay_read_only() {
        let scratch = tempfile::tempdir().unwrap();
        let (driver, mounter) = driver(scratch.path(), true);
        let dir = scratch.path().join("pods/uid-1/volumes/d~x/v1");
        let request = MountRequest::parse(r#"{"name":"v1","kubernetes.io/readwrite":"ro"}"#).unwrap();
        let outcome = driver.mount(&dir, &request).await.unwrap();
        let source = scratch.path().join("volumes/v1");
        assert_eq!(outcome, MountOutcome::Mounted { source: source.clone() });
        assert_eq!(
            mounter.calls(),
            [
                dory_core::RecordedMount::Bind { source, target: dir.clone(), read_only: true },
                dory_core::RecordedMount::Relabel {
                    path: dir.clone(),
                    label: "system_u:object_r:container_file_t:s0".into()
                },
            ]
        );
        assert_eq!(driver.mount(&dir, &request).await.unwrap(), MountOutcome::AlreadyMounted);
        driver.unmount(&dir).await.unwrap();
        assert!(mounter.mounted_at(&dir).unwrap().is_none());
    }

    #[tokio::test]
    async fn without_selinux_nothing_is_relabelled() {
        let scratch = tempfile::tempdir().unwrap();
        let (driver, mounter) = driver(scratch.path(), false);
        let dir = scratch.path().join("pods/uid-2/volumes/d~x/v2");
        driver.mount(&dir, &MountRequest::parse(r#"{"name":"v2"}"#).unwrap()).await.unwrap();
        assert!(!mounter.calls().iter().any(|c| matches!(c, dory_core::RecordedMount::Relabel { .. })));
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
