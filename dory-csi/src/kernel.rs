//! What the node service asks of the kernel beyond `dory-mount`'s
//! `LinuxMounter` (which binds, read-only all the way down, and unmounts):
//! usage figures of a published volume.

use std::io;
use std::path::Path;

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
