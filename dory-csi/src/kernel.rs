//! Bind mounts by direct syscalls: a recursive bind, read-only down to every
//! submount when asked, unmounting everything stacked on a target, and
//! asking the mount table whether a path is a mount point.

use std::io;
use std::path::{Path, PathBuf};

use dory_core::{MountEntry, parse_mountinfo};
use nix::mount::{MntFlags, MsFlags};

fn errno(err: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(err as i32)
}

/// The mount table of this process's mount namespace.
pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// `target` as the kernel records it (symlinks resolved), or as given.
fn real(target: &Path) -> PathBuf {
    std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf())
}

/// The topmost mount on `target`, if any.
pub fn mounted_at(target: &Path) -> io::Result<Option<MountEntry>> {
    let target = real(target);
    Ok(mount_table()?.into_iter().rev().find(|entry| entry.mount_point == target))
}

/// Bind-mounts `source` (and every mount below it) onto `target`. Read-only
/// is applied to the bind and to every submount under it, so no path below
/// a read-only publish is writable; if that fails the bind is undone.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(errno)?;
    if read_only && let Err(err) = remount_read_only(target) {
        let _ = unmount_all(target);
        return Err(err);
    }
    Ok(())
}

fn remount_read_only(target: &Path) -> io::Result<()> {
    let target = real(target);
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let below: Vec<PathBuf> =
        mount_table()?.into_iter().map(|e| e.mount_point).filter(|p| p.starts_with(&target)).collect();
    for point in below {
        nix::mount::mount(None::<&str>, &point, None::<&str>, flags, None::<&str>).map_err(errno)?;
    }
    Ok(())
}

/// Removes every mount stacked on `target` (each with its submounts), until
/// the kernel says nothing is mounted there.
pub fn unmount_all(target: &Path) -> io::Result<()> {
    for _ in 0..16 {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
            Err(err) => return Err(errno(err)),
        }
    }
    Ok(())
}

/// Bytes and inodes of the filesystem holding `path`.
pub fn usage(path: &Path) -> io::Result<Usage> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(errno)?;
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
