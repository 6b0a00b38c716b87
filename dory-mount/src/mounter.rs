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
    /// A recursive bind; read-only needs a second, remounting call (the
    /// kernel ignores `MS_RDONLY` on the first). If that second call fails
    /// the bind is undone, so no writable mount is left behind.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        let bind_error = |err: nix::Error| Error::Bind {
            source_path: source.into(),
            target: target.into(),
            read_only,
            source: errno(err),
        };
        nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(bind_error)?;
        if read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(err) = nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                let _ = nix::mount::umount2(target, MntFlags::empty());
                return Err(bind_error(err));
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW)
            .map_err(|err| Error::Unmount { target: target.into(), source: errno(err) })
    }

    fn mount_table(&self) -> Result<Vec<MountEntry>> {
        // /proc files report size 0; start with a buffer that holds a busy
        // node's table instead of growing from 32 bytes.
        let mut text = String::with_capacity(64 * 1024);
        std::fs::File::open(&self.mountinfo)
            .and_then(|mut file| std::io::Read::read_to_string(&mut file, &mut text))
            .map_err(|source| Error::MountTable { path: self.mountinfo.clone(), source })?;
        Ok(parse_mountinfo(&text))
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
