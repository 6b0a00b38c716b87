//! The driver's log: one file (never stdout or stderr, which kubelet parses),
//! rotated by size, one line per event with the pid, so lines can be grepped
//! by pod UID, volume name or pid.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing_subscriber::fmt::MakeWriter;

/// How many rotated files are kept (`dory.log.1` .. `dory.log.4`).
const KEEP_ROTATED: u32 = 4;

/// Appends to a log file, rotated when it has grown past `max_bytes`.
///
/// The size is checked when the file is opened: a driver process is short
/// and writes a few lines, so one check per process keeps the file near its
/// limit without a `stat` per line.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
}

impl RotatingFile {
    /// Opens (creating its directory, rotating a full file) the log at `path`.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = Self { path: path.to_path_buf(), file: Self::append(path)? };
        if log.file.metadata()?.len() >= max_bytes {
            log.rotate();
            return Ok(Self { path: path.to_path_buf(), file: Self::append(path)? });
        }
        Ok(log)
    }

    /// Opens for appending; a new file is created mode 0600 (the log names
    /// volumes, pods and options), an existing one is brought to 0600.
    fn append(path: &Path) -> io::Result<File> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let metadata = file.metadata()?;
        if metadata.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(file)
    }

    fn rotate(&self) {
        for n in (1..KEEP_ROTATED).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        let _ = std::fs::rename(&self.path, self.rotated(1));
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }
}

/// One line's writer. The file is in append mode and each line is one
/// `write`, so lines of concurrent drivers never interleave.
pub struct LogLine<'a>(&'a File);

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&mut &*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine(&self.file)
    }
}

/// Sends this process's logs to `path`. Returns why it could not, if it
/// could not; the driver then runs without a log rather than failing.
pub fn init(path: &Path, max_bytes: u64, debug: bool) -> Result<(), String> {
    let file =
        RotatingFile::open(path, max_bytes).map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
    let level = if debug { tracing::Level::DEBUG } else { tracing::Level::INFO };
    tracing_subscriber::fmt()
        .with_writer(file)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dory.log");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(RotatingFile::open(&path, 1 << 20).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(RotatingFile::open(&path, 1 << 20).unwrap());
        assert_eq!(mode(&path), 0o600, "an existing world-readable log is tightened");
    }

    #[test]
    fn rotates_by_size_and_keeps_four() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/dory.log");
        for i in 0..7 {
            // One process per line, as with kubelet's calls.
            let log = RotatingFile::open(&path, 10).unwrap();
            log.make_writer().write_all(format!("line {i} padding\n").as_bytes()).unwrap();
        }
        assert!(path.exists());
        for n in 1..=4 {
            assert!(dir.path().join(format!("logs/dory.log.{n}")).exists(), "{n}");
        }
        assert!(!dir.path().join("logs/dory.log.5").exists());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 6 padding\n");
    }
}
