//! The kernel seam: bind mounts, unmounts, the mount table and SELinux labels.
//!
//! The trait is synchronous, as the syscalls are; async callers use
//! `spawn_blocking`. The real implementation lives with the binary that
//! mounts (`dory-cli`); [`RecordingMounter`] is the fake for unit tests.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount ID, unique while mounted.
    pub mount_id: u32,
    /// ID of the parent mount.
    pub parent_id: u32,
    /// `major:minor` of the backing device.
    pub device: String,
    /// Path inside the source filesystem that is mounted (for a bind mount,
    /// the bound directory relative to its filesystem's root).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    /// Filesystem type.
    pub fs_type: String,
    /// Filesystem-specific source (device, or a name like `tmpfs`).
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl MountEntry {
    /// True when this mount is read-only.
    pub fn is_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }
}

/// Makes and inspects mounts.
pub trait Mounter: Send + Sync {
    /// Bind-mounts `source` onto `target`, read-only when asked.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<()>;

    /// Unmounts whatever is mounted on `target`.
    fn unmount(&self, target: &Path) -> Result<()>;

    /// What is mounted at `target` (the topmost mount), if anything.
    fn mounted_at(&self, target: &Path) -> Result<Option<MountEntry>>;

    /// Whether anything is mounted at `target`. The default reads the mount
    /// table; an implementation may ask the kernel more cheaply.
    fn is_mount_point(&self, target: &Path) -> Result<bool> {
        Ok(self.mounted_at(target)?.is_some())
    }

    /// Every mount, in mount table order.
    fn mount_table(&self) -> Result<Vec<MountEntry>>;

    /// Applies SELinux `label` to `path` and everything below it.
    fn relabel(&self, path: &Path, label: &str) -> Result<()>;
}

/// Parses the text of `/proc/<pid>/mountinfo`. Lines that do not have the
/// documented shape are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (head, tail) = line.split_once(" - ")?;
    let mut head = head.split(' ');
    let mount_id = head.next()?.parse().ok()?;
    let parent_id = head.next()?.parse().ok()?;
    let device = head.next()?.to_owned();
    let root = PathBuf::from(unescape_octal(head.next()?));
    let mount_point = PathBuf::from(unescape_octal(head.next()?));
    let mount_options = head.next()?.split(',').map(str::to_owned).collect();
    let mut tail = tail.splitn(3, ' ');
    let fs_type = unescape_octal(tail.next()?);
    let source = unescape_octal(tail.next()?);
    let super_options = tail.next().unwrap_or_default().to_owned();
    Some(MountEntry { mount_id, parent_id, device, root, mount_point, mount_options, fs_type, source, super_options })
}

/// The kernel escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One call seen by [`RecordingMounter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedMount {
    /// A bind mount.
    Bind {
        /// Source directory.
        source: PathBuf,
        /// Target directory.
        target: PathBuf,
        /// Read-only bind.
        read_only: bool,
    },
    /// An unmount.
    Unmount {
        /// Target directory.
        target: PathBuf,
    },
    /// A relabel.
    Relabel {
        /// Path relabelled.
        path: PathBuf,
        /// Label applied.
        label: String,
    },
}

/// A [`Mounter`] that changes nothing and remembers what it was asked, with
/// an in-memory mount table, for unit tests.
#[derive(Debug, Default)]
pub struct RecordingMounter {
    state: Mutex<RecordingState>,
}

#[derive(Debug, Default)]
struct RecordingState {
    calls: Vec<RecordedMount>,
    table: Vec<MountEntry>,
    next_id: u32,
}

impl RecordingMounter {
    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<RecordedMount> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecordingState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Mounter for RecordingMounter {
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        let mut state = self.lock();
        state.calls.push(RecordedMount::Bind { source: source.into(), target: target.into(), read_only });
        state.next_id += 1;
        let entry = MountEntry {
            mount_id: state.next_id,
            parent_id: 0,
            device: "0:0".into(),
            root: source.into(),
            mount_point: target.into(),
            mount_options: vec![if read_only { "ro" } else { "rw" }.into()],
            fs_type: "none".into(),
            source: "recording".into(),
            super_options: "rw".into(),
        };
        state.table.push(entry);
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        let mut state = self.lock();
        state.calls.push(RecordedMount::Unmount { target: target.into() });
        match state.table.iter().rposition(|e| e.mount_point == target) {
            Some(index) => {
                state.table.remove(index);
                Ok(())
            }
            None => Err(Error::Unmount { target: target.into(), source: std::io::Error::from_raw_os_error(22) }),
        }
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<MountEntry>> {
        Ok(self.lock().table.iter().rev().find(|e| e.mount_point == target).cloned())
    }

    fn mount_table(&self) -> Result<Vec<MountEntry>> {
        Ok(self.lock().table.clone())
    }

    fn relabel(&self, path: &Path, label: &str) -> Result<()> {
        self.lock().calls.push(RecordedMount::Relabel { path: path.into(), label: label.into() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 22 0:31 /vols/v\\0401 /var/lib/kubelet/pods/p1/volumes/dory~x/v1 ro,nosuid master:7 - btrfs /dev/loop0 rw,space_cache
garbage line
37 22 0:32 / /mnt/with\\134backslash rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let entries = parse_mountinfo(SAMPLE);
        assert_eq!(entries.len(), 3);
        let bind = &entries[1];
        assert_eq!(bind.mount_id, 36);
        assert_eq!(bind.parent_id, 22);
        assert_eq!(bind.root, PathBuf::from("/vols/v 1"));
        assert_eq!(bind.mount_point, PathBuf::from("/var/lib/kubelet/pods/p1/volumes/dory~x/v1"));
        assert!(bind.is_read_only());
        assert_eq!(bind.fs_type, "btrfs");
        assert_eq!(bind.source, "/dev/loop0");
        assert_eq!(entries[2].mount_point, PathBuf::from("/mnt/with\\backslash"));
        assert!(!entries[2].is_read_only());
    }

    #[test]
    fn recording_mounter_keeps_a_table() {
        let mounter = RecordingMounter::default();
        mounter.bind(Path::new("/src"), Path::new("/dst"), true).unwrap();
        let entry = mounter.mounted_at(Path::new("/dst")).unwrap().unwrap();
        assert!(entry.is_read_only());
        mounter.unmount(Path::new("/dst")).unwrap();
        assert!(mounter.mounted_at(Path::new("/dst")).unwrap().is_none());
        assert!(mounter.unmount(Path::new("/dst")).is_err());
        assert_eq!(
            mounter.calls(),
            vec![
                RecordedMount::Bind { source: "/src".into(), target: "/dst".into(), read_only: true },
                RecordedMount::Unmount { target: "/dst".into() },
                RecordedMount::Unmount { target: "/dst".into() },
            ]
        );
    }
}
