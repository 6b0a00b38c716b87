//! [`LinuxMounter`]: the [`Mounter`] for Linux, by direct syscalls (never by
//! running `mount`, `umount` or `chcon`).

use std::io;
use std::path::{Path, PathBuf};

use dory_core::{Error, MountEntry, Mounter, Result, parse_mountinfo};
use nix::mount::{MntFlags, MsFlags};

/// The `security.selinux` extended attribute, which holds a file's label.
const SELINUX_XATTR: &str = "security.selinux";

/// Mounts with `mount(2)`/`umount2(2)` and reads `/proc/self/mountinfo`.
#[derive(Clone, Debug)]
pub struct LinuxMounter {
    mountinfo: PathBuf,
}

impl Default for LinuxMounter {
    fn default() -> Self {
        Self { mountinfo: PathBuf::from("/proc/self/mountinfo") }
    }
}

impl LinuxMounter {
    /// True when the kernel has SELinux enabled (selinuxfs is mounted).
    pub fn selinux_enabled() -> bool {
        Path::new("/sys/fs/selinux/enforce").exists()
    }
}

fn errno(err: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(err as i32)
}

impl Mounter for LinuxMounter {
    /// A recursive bind (submounts of the source come along, as with
    /// Docker's volume binds); read-only needs remounting calls (the kernel
    /// ignores `MS_RDONLY` on the first), one for the bind and one for each
    /// submount, so no part of the tree stays writable. If one fails the
    /// whole bind is undone, so no writable mount is left behind.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        let bind_error =
            |err: io::Error| Error::Bind { source_path: source.into(), target: target.into(), read_only, source: err };
        nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| bind_error(errno(e)))?;
        if read_only && let Err(err) = self.remount_read_only(target) {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
            return Err(bind_error(err));
        }
        Ok(())
    }

    /// Unmounts `target` and every mount below it: a plain unmount first,
    /// and when submounts make that `EBUSY`, a detach of the whole tree (a
    /// mount inside a plugin's mountpoint came along with the recursive
    /// bind, and must not make the pod impossible to tear down).
    fn unmount(&self, target: &Path) -> Result<()> {
        let unmount_error = |err: nix::Error| Error::Unmount { target: target.into(), source: errno(err) };
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Err(nix::errno::Errno::EBUSY) => {
                tracing::info!(target = %target.display(), "busy (submounts?); detaching the whole mount tree");
                nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW | MntFlags::MNT_DETACH).map_err(unmount_error)
            }
            other => other.map_err(unmount_error),
        }
    }

    /// Lines whose paths are not UTF-8 are read lossily (those paths then
    /// match nothing) instead of failing the whole table.
    fn mount_table(&self) -> Result<Vec<MountEntry>> {
        // /proc files report size 0; start with a buffer that holds a busy
        // node's table instead of growing from 32 bytes.
        let mut bytes = Vec::with_capacity(64 * 1024);
        std::fs::File::open(&self.mountinfo)
            .and_then(|mut file| std::io::Read::read_to_end(&mut file, &mut bytes))
            .map_err(|source| Error::MountTable { path: self.mountinfo.clone(), source })?;
        Ok(parse_mountinfo(&String::from_utf8_lossy(&bytes)))
    }

    /// The topmost mount whose mount point is `target` (compared after
    /// resolving symlinks, as the kernel records real paths).
    fn mounted_at(&self, target: &Path) -> Result<Option<MountEntry>> {
        let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
        Ok(self.mount_table()?.into_iter().rev().find(|entry| entry.mount_point == target))
    }

    /// Asks the kernel (`openat2` with `RESOLVE_NO_XDEV`), which costs a few
    /// syscalls where a busy node's mount table costs milliseconds to read;
    /// falls back to the mount table where `openat2` is unavailable.
    fn is_mount_point(&self, target: &Path) -> Result<bool> {
        match crosses_into_a_mount(target) {
            Some(answer) => Ok(answer),
            None => Ok(self.mounted_at(target)?.is_some()),
        }
    }

    /// Sets the label on `path` and everything below it, without following
    /// symlinks out of the tree.
    fn relabel(&self, path: &Path, label: &str) -> Result<()> {
        let relabel_error =
            |p: &Path, source: io::Error| Error::Relabel { path: p.into(), label: label.into(), source };
        let mut pending = vec![path.to_path_buf()];
        while let Some(current) = pending.pop() {
            xattr::set(&current, SELINUX_XATTR, label.as_bytes()).map_err(|e| relabel_error(&current, e))?;
            let metadata = std::fs::symlink_metadata(&current).map_err(|e| relabel_error(&current, e))?;
            if metadata.is_dir() {
                for entry in std::fs::read_dir(&current).map_err(|e| relabel_error(&current, e))? {
                    let entry = entry.map_err(|e| relabel_error(&current, e))?;
                    if !entry.file_type().map_err(|e| relabel_error(&current, e))?.is_symlink() {
                        pending.push(entry.path());
                    }
                }
            }
        }
        Ok(())
    }
}

impl LinuxMounter {
    /// Makes the bind at `target` and every mount below it read-only.
    fn remount_read_only(&self, target: &Path) -> io::Result<()> {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        let remount = |path: &Path| nix::mount::mount(None::<&str>, path, None::<&str>, flags, None::<&str>);
        remount(target).map_err(errno)?;
        // Submounts came along with MS_REC: the mount table says which
        // (read for read-only binds only; read-write ones never need it).
        let table = self.mount_table().map_err(|e| io::Error::other(e.to_string()))?;
        let target = std::fs::canonicalize(target)?;
        let Some(top) = table.iter().rev().find(|e| e.mount_point == target) else { return Ok(()) };
        let mut below = vec![top.mount_id];
        for entry in &table {
            if below.contains(&entry.parent_id) && entry.mount_id != top.mount_id {
                below.push(entry.mount_id);
                if !entry.is_read_only() {
                    remount(&entry.mount_point).map_err(errno)?;
                }
            }
        }
        Ok(())
    }
}

/// Opening `target` from its parent without crossing mounts fails with
/// `EXDEV` exactly when `target` is a mount point, bind mounts included.
/// `None` when the kernel cannot say (no `openat2` before Linux 5.6, a
/// seccomp filter) or the path does not resolve cleanly.
fn crosses_into_a_mount(target: &Path) -> Option<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

    let target = match std::fs::canonicalize(target) {
        Ok(path) => path,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Some(false),
        Err(_) => return None,
    };
    let (parent, name) = (target.parent()?, target.file_name()?);
    let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    let parent = nix::fcntl::open(parent, flags | OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty()).ok()?;
    let how = OpenHow::new().flags(flags | OFlag::O_NOFOLLOW).resolve(ResolveFlag::RESOLVE_NO_XDEV);
    match nix::fcntl::openat2(&parent, name, how) {
        Ok(_) => Some(false),
        Err(Errno::EXDEV) => Some(true),
        Err(Errno::ENOENT) => Some(false),
        Err(_) => None,
    }
}

/// Reads back the SELinux label of `path`, if it has one.
pub fn selinux_label(path: &Path) -> io::Result<Option<String>> {
    Ok(xattr::get(path, SELINUX_XATTR)?.map(|bytes| String::from_utf8_lossy(&bytes).trim_end_matches('\0').to_owned()))
}
