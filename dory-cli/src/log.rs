//! The driver's log: one file (never stdout or stderr, which kubelet parses),
//! rotated by size, one line per event with the pid, so lines can be grepped
//! by pod UID, volume name or pid.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing_subscriber::fmt::MakeWriter;

/// How many rotated files are kept (`dory.log.1` .. `dory.log.4`).
const KEEP_ROTATED: u32 = 4;

/// Appends to a log file, rotating it when it grows past `max_bytes`.
#[derive(Clone, Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
}

impl RotatingFile {
    /// Opens (creating its directory) the log at `path`.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), max_bytes })
    }

    fn rotate_if_full(&self) {
        let Ok(metadata) = std::fs::metadata(&self.path) else { return };
        if metadata.len() < self.max_bytes {
            return;
        }
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

/// One line's writer: opened in append mode so lines of concurrent drivers
/// never interleave.
pub struct LogLine(Option<File>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(file) => file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = LogLine;

    fn make_writer(&'a self) -> Self::Writer {
        self.rotate_if_full();
        LogLine(OpenOptions::new().create(true).append(true).open(&self.path).ok())
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
    fn rotates_by_size_and_keeps_four() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/dory.log");
        let log = RotatingFile::open(&path, 10).unwrap();
        for i in 0..7 {
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
