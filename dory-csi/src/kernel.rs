//! What the node service asks of the kernel beyond `dory-mount`'s
//! [`LinuxMounter`]: read-only all the way down, and usage figures.

use std::io;
use std::path::{Path, PathBuf};

use dory_core::{Error, MountEntry, Mounter, Result};
use dory_mount::LinuxMounter;
use nix::mount::MsFlags;

/// [`LinuxMounter`], with a read-only bind made read-only on every submount
/// too (the recursive bind carries the plugin's own submounts along, and a
/// remount of the top alone would leave them writable). If any remount
/// fails, the bind is undone.
#[derive(Clone, Debug, Default)]
pub struct RecursiveReadOnly {
    inner: LinuxMounter,
}

impl Mounter for RecursiveReadOnly {
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        self.inner.bind(source, target, read_only)?;
        if !read_only {
            return Ok(());
        }
        let real = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
        let below: Vec<PathBuf> = self
            .inner
            .mount_table()?
            .into_iter()
            .filter(|entry| entry.mount_point != real && entry.mount_point.starts_with(&real) && !entry.is_read_only())
            .map(|entry| entry.mount_point)
            .collect();
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for point in below {
            if let Err(errno) = nix::mount::mount(None::<&str>, &point, None::<&str>, flags, None::<&str>) {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
                return Err(Error::Bind {
                    source_path: source.to_path_buf(),
                    target: point,
                    read_only: true,
                    source: io::Error::from_raw_os_error(errno as i32),
                });
            }
        }
        Ok(())
    }

    /// Detaches the bind with everything below it.
    fn unmount(&self, target: &Path) -> Result<()> {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW).map_err(
            |errno| Error::Unmount { target: target.into(), source: io::Error::from_raw_os_error(errno as i32) },
        )
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<MountEntry>> {
        self.inner.mounted_at(target)
    }

    fn is_mount_point(&self, target: &Path) -> Result<bool> {
        self.inner.is_mount_point(target)
    }

    fn mount_table(&self) -> Result<Vec<MountEntry>> {
        self.inner.mount_table()
    }

    fn relabel(&self, path: &Path, label: &str) -> Result<()> {
        self.inner.relabel(path, label)
    }
}

/// Bytes and inodes of the filesystem holding `path`.
pub fn usage(path: &Path) -> io::Result<Usage> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let block = stat.fragment_size();
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Ok(Usage {
        bytes_total: clamp(stat.blocks().saturating_mul(block)),
        bytes_available: clamp(stat.blocks_available().saturating_mul(block)),
        bytes_used: clamp(stat.blocks().saturating_sub(stat.blocks_free()).saturating_mul(block)),
        inodes_total: clamp(stat.files()),
        inodes_available: clamp(stat.files_available()),
        inodes_used: clamp(stat.files().saturating_sub(stat.files_free())),
    })
}

/// What `statvfs` says about a filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Size in bytes.
    pub bytes_total: i64,
    /// Bytes free for unprivileged users.
    pub bytes_available: i64,
    /// Bytes in use.
    pub bytes_used: i64,
    /// Inodes in all.
    pub inodes_total: i64,
    /// Inodes free for unprivileged users.
    pub inodes_available: i64,
    /// Inodes in use.
    pub inodes_used: i64,
}
