//! The mount journal: mount records in fixed slots of one preallocated file
//! (`<state dir>/mounts.journal`).
//!
//! Making a new record durable is then an overwrite of blocks the file
//! already has, plus `fdatasync`: no file is created, no directory entry
//! changes, and the filesystem's own journal has nothing to commit (the
//! data is written and the disk cache flushed; a new synced file costs a
//! journal commit on top, about twice the time).
//!
//! Layout: [`SLOTS`] slots of 4 KiB, one page each, so writing a slot never
//! rewrites another slot's blocks. A slot holds a record (from the start,
//! written once and synced) and, in its last 512-byte sector, the record's
//! completion mark (phase and source, rewritten without a sync; bound to
//! the record by the record's checksum, so a mark left over from an earlier
//! record in the slot never counts). Each part is
//! `[state u8][length u16 LE][fnv1a u64 LE]` (the record adds the fnv1a of
//! its directory) and JSON, zero-padded; a part whose checksum fails reads
//! as dead. A torn write of the page leaves each sector old or new: the
//! record's sectors are only ever rewritten with what they hold.
//!
//! A directory's record lives in one of the [`WINDOW`] slots from the hash
//! of the directory on (read with one `pread`); removing it empties its
//! slot. A directory whose window is full keeps its record in a file of its
//! own. Changes hold an exclusive `flock` on the file (briefly: no plugin
//! call is made under it), lookups a shared one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::state::{MountRecord, Phase, fnv1a};

/// How many records the journal holds (4 MiB; a node with more mounts at
/// once keeps the rest as files of their own).
pub(crate) const SLOTS: u64 = 1024;
/// The slots a directory's record may take.
pub(crate) const WINDOW: u64 = 8;
const SLOT: usize = 4096;
/// Where a slot's mark starts: its last sector.
const MARK_AT: usize = SLOT - 512;
const HEADER: usize = 1 + 2 + 8;
/// A record's header adds the hash of its directory.
const RECORD_HEADER: usize = HEADER + 8;
/// The largest JSON a record holds.
const RECORD_PAYLOAD: usize = MARK_AT - RECORD_HEADER;
/// The largest JSON a mark holds.
const MARK_PAYLOAD: usize = SLOT - MARK_AT - HEADER;

const EMPTY: u8 = 0;
const LIVE: u8 = 2;

/// What [`Journal::insert_new`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The record is in the journal and durable.
    Yes,
    /// The directory already has a record; nothing was written.
    Exists,
    /// The record does not fit (too long, or its window is full): keep it
    /// elsewhere.
    NoRoom,
}

/// The completion mark of a record.
#[derive(Serialize, Deserialize)]
struct Mark {
    /// The checksum of the record it completes.
    record: u64,
    source: Option<PathBuf>,
}

/// The journal file of one state directory.
#[derive(Clone, Debug)]
pub(crate) struct Journal {
    path: PathBuf,
}

/// The live record of a directory in its window.
struct Found {
    index: u64,
    record: MountRecord,
    checksum: u64,
}

/// A directory's window, as read.
struct Window {
    found: Option<Found>,
    /// The first slot a new record of the directory could take.
    free: Option<u64>,
}

impl Journal {
    /// The journal at `path` (created on first write).
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The journal file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The record of `dir`, if the journal has one.
    pub(crate) fn find(&self, dir: &Path) -> io::Result<Option<MountRecord>> {
        let Some(file) = self.open_existing(false)? else { return Ok(None) };
        let file = lock(file, FlockArg::LockShared)?;
        Ok(window(&file, dir)?.found.map(|found| found.record))
    }

    /// Adds `record` and makes it durable, unless its directory already has
    /// one.
    pub(crate) fn insert_new(&self, record: &MountRecord) -> io::Result<Inserted> {
        let Some(part) = encode_record(record) else { return Ok(Inserted::NoRoom) };
        let file = lock(self.open_for_writing()?, FlockArg::LockExclusive)?;
        let window = window(&file, &record.dir)?;
        if window.found.is_some() {
            return Ok(Inserted::Exists);
        }
        let Some(index) = window.free else { return Ok(Inserted::NoRoom) };
        if let Err(err) = write_slot(&file, index, &part) {
            // Perhaps half written: a record that guards nothing.
            let _ = file.write_all_at(&[EMPTY], offset(index));
            return Err(err);
        }
        let file = unlock(file)?;
        // Outside the lock: the flush waits for the disk, and other writers
        // need not wait for it.
        if let Err(err) = file.sync_data() {
            // Not durable, so nothing may rely on it: the caller sends no
            // Mount, and the next call must not find a record of one.
            let _ = self.remove(&record.dir);
            return Err(err);
        }
        Ok(Inserted::Yes)
    }

    /// Writes `record` over `dir`'s record, or adds it; synced when
    /// `durable`. False when it does not fit (nothing was written).
    pub(crate) fn put(&self, record: &MountRecord, durable: bool) -> io::Result<bool> {
        let Some(part) = encode_record(record) else { return Ok(false) };
        let file = lock(self.open_for_writing()?, FlockArg::LockExclusive)?;
        let window = window(&file, &record.dir)?;
        let Some(index) = window.found.map(|found| found.index).or(window.free) else { return Ok(false) };
        write_slot(&file, index, &part)?;
        if record.phase == Phase::Mounted {
            write_mark(&file, index, fnv1a(payload_of(&part)), record.source.as_deref())?;
        }
        let file = unlock(file)?;
        if durable {
            file.sync_data()?;
        }
        Ok(true)
    }

    /// Marks `dir`'s record complete, with the plugin's mountpoint `source`
    /// (not synced). False when the journal has no record of `dir`.
    pub(crate) fn mark(&self, dir: &Path, source: Option<&Path>) -> io::Result<bool> {
        let Some(file) = self.open_existing(true)? else { return Ok(false) };
        let file = lock(file, FlockArg::LockExclusive)?;
        let Some(found) = window(&file, dir)?.found else { return Ok(false) };
        write_mark(&file, found.index, found.checksum, source)?;
        Ok(true)
    }

    /// Removes `dir`'s record (not synced). False when there was none.
    pub(crate) fn remove(&self, dir: &Path) -> io::Result<bool> {
        let Some(file) = self.open_existing(true)? else { return Ok(false) };
        let file = lock(file, FlockArg::LockExclusive)?;
        let Some(found) = window(&file, dir)?.found else { return Ok(false) };
        file.write_all_at(&[EMPTY], offset(found.index))?;
        Ok(true)
    }

    /// The journal, if it exists.
    fn open_existing(&self, write: bool) -> io::Result<Option<File>> {
        match File::options().read(true).write(write).open(&self.path) {
            Ok(file) => Ok(Some(file)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Opens the journal, creating and preallocating it (zeros, synced)
    /// the first time, so later writes never allocate.
    fn open_for_writing(&self) -> io::Result<File> {
        let file = File::options().read(true).write(true).create(true).truncate(false).open(&self.path)?;
        let size = SLOTS * SLOT as u64;
        if file.metadata()?.len() >= size {
            return Ok(file);
        }
        let file = lock(file, FlockArg::LockExclusive)?;
        if file.metadata()?.len() < size {
            // Filled from the start each time: a fill cut short (a full
            // disk) is redone, not trusted.
            let zeros = vec![0u8; 64 * 1024];
            let mut at = 0;
            while at < size {
                let n = zeros.len().min((size - at) as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.sync_all()?;
            if let Some(parent) = self.path.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        unlock(file)
    }
}

/// Reads the window of `dir`: its record, if live, and its first free slot.
fn window(file: &File, dir: &Path) -> io::Result<Window> {
    let hash = fnv1a(dir.as_os_str().as_encoded_bytes());
    let start = hash % SLOTS;
    // One read, in two parts where the window wraps around the end.
    let mut slots = vec![0u8; WINDOW as usize * SLOT];
    let first = (SLOTS - start).min(WINDOW) as usize;
    read_at(file, &mut slots[..first * SLOT], offset(start))?;
    read_at(file, &mut slots[first * SLOT..], 0)?;
    let mut free = None;
    for step in 0..WINDOW {
        let index = (start + step) % SLOTS;
        let slot = &slots[step as usize * SLOT..(step as usize + 1) * SLOT];
        match decode(slot, hash) {
            Decoded::Free => free = free.or(Some(index)),
            Decoded::Other => {}
            Decoded::Live { record, checksum } if record.dir == dir => {
                return Ok(Window { found: Some(Found { index, record, checksum }), free });
            }
            Decoded::Live { .. } => {}
        }
    }
    Ok(Window { found: None, free })
}

/// Reads what there is (a short journal reads as zeros past its end).
fn read_at(file: &File, buffer: &mut [u8], at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

enum Decoded {
    /// Empty, or a part whose checksum fails (torn): free for a record.
    Free,
    /// A live record of another directory (its hash differs).
    Other,
    Live {
        record: MountRecord,
        checksum: u64,
    },
}

/// Decodes a slot, parsing the record only when its directory's hash is
/// `hash`.
fn decode(slot: &[u8], hash: u64) -> Decoded {
    let Some((LIVE, payload)) = part(&slot[..MARK_AT], RECORD_HEADER) else { return Decoded::Free };
    if slot[HEADER..RECORD_HEADER] != hash.to_le_bytes() {
        return Decoded::Other;
    }
    let Ok(mut record) = serde_json::from_slice::<MountRecord>(payload) else { return Decoded::Free };
    let checksum = fnv1a(payload);
    if let Some((LIVE, mark)) = part(&slot[MARK_AT..], HEADER)
        && let Ok(mark) = serde_json::from_slice::<Mark>(mark)
        && mark.record == checksum
    {
        record.phase = Phase::Mounted;
        record.source = mark.source.or(record.source);
    }
    Decoded::Live { record, checksum }
}

/// A part's state and payload, if its header and checksum hold (a part
/// whose state byte is 0 is empty, whatever follows).
fn part(bytes: &[u8], header: usize) -> Option<(u8, &[u8])> {
    if bytes[0] == EMPTY {
        return Some((EMPTY, &[]));
    }
    let length = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
    let checksum = u64::from_le_bytes(bytes[3..HEADER].try_into().ok()?);
    let payload = bytes.get(header..header + length)?;
    (fnv1a(payload) == checksum).then_some((bytes[0], payload))
}

/// The record part of `record` (phase and source go in the mark), or None
/// when it is too long for a slot.
fn encode_record(record: &MountRecord) -> Option<Vec<u8>> {
    let bare = MountRecord { source: None, phase: Phase::Mounting, ..record.clone() };
    let payload = serde_json::to_vec(&bare).ok()?;
    if payload.len() > RECORD_PAYLOAD {
        return None;
    }
    let mut part = Vec::with_capacity(MARK_AT);
    part.push(LIVE);
    part.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    part.extend_from_slice(&fnv1a(&payload).to_le_bytes());
    part.extend_from_slice(&fnv1a(record.dir.as_os_str().as_encoded_bytes()).to_le_bytes());
    part.extend_from_slice(&payload);
    Some(part)
}

/// The JSON of a record part made by [`encode_record`].
fn payload_of(part: &[u8]) -> &[u8] {
    &part[RECORD_HEADER..RECORD_HEADER + u16::from_le_bytes([part[1], part[2]]) as usize]
}

/// Writes a record part and clears the slot's mark: the whole slot, in one
/// write.
fn write_slot(file: &File, index: u64, record_part: &[u8]) -> io::Result<()> {
    let mut slot = record_part.to_vec();
    slot.resize(SLOT, 0);
    file.write_all_at(&slot, offset(index))
}

/// Writes the mark of the record whose checksum is `record`. A source too
/// long for the mark is left out (the mark still counts).
fn write_mark(file: &File, index: u64, record: u64, source: Option<&Path>) -> io::Result<()> {
    let encode = |mark: &Mark| {
        let payload = serde_json::to_vec(mark).ok().filter(|p| p.len() <= MARK_PAYLOAD)?;
        let mut part = Vec::with_capacity(SLOT - MARK_AT);
        part.push(LIVE);
        part.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        part.extend_from_slice(&fnv1a(&payload).to_le_bytes());
        part.extend_from_slice(&payload);
        part.resize(SLOT - MARK_AT, 0);
        Some(part)
    };
    let part = encode(&Mark { record, source: source.map(Path::to_path_buf) })
        .or_else(|| encode(&Mark { record, source: None }))
        .ok_or_else(|| io::Error::other("a mount mark does not encode"))?;
    file.write_all_at(&part, offset(index) + MARK_AT as u64)
}

fn offset(index: u64) -> u64 {
    index * SLOT as u64
}

fn lock(file: File, how: FlockArg) -> io::Result<Flock<File>> {
    Flock::lock(file, how).map_err(|(_, errno)| io::Error::from_raw_os_error(errno as i32))
}

fn unlock(file: Flock<File>) -> io::Result<File> {
    file.unlock().map_err(|(_, errno)| io::Error::from_raw_os_error(errno as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dir: &str, id: &str) -> MountRecord {
        MountRecord { dir: dir.into(), volume: "v".into(), mount_id: id.into(), source: None, phase: Phase::Mounting }
    }

    fn journal(scratch: &tempfile::TempDir) -> Journal {
        Journal::new(scratch.path().join("mounts.journal"))
    }

    fn start(dir: &str) -> u64 {
        fnv1a(dir.as_bytes()) % SLOTS
    }

    /// `n` directories whose windows start at the same slot.
    fn colliding(n: usize) -> Vec<String> {
        let mut by_start = std::collections::HashMap::<u64, Vec<String>>::new();
        (0..200_000)
            .map(|i| format!("/pods/p{i}/volumes/x/v"))
            .find_map(|dir| {
                let same = by_start.entry(start(&dir)).or_default();
                same.push(dir);
                (same.len() == n).then(|| same.clone())
            })
            .expect("directories sharing a window")
    }

    #[test]
    fn records_are_found_marked_and_removed() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let a = record("/pods/a/volumes/x/v", "a");
        assert_eq!(journal.find(&a.dir).unwrap(), None, "no journal yet");
        assert!(!journal.remove(&a.dir).unwrap());
        assert_eq!(journal.insert_new(&a).unwrap(), Inserted::Yes);
        assert_eq!(std::fs::metadata(scratch.path().join("mounts.journal")).unwrap().len(), SLOTS * SLOT as u64);
        assert_eq!(journal.insert_new(&MountRecord { mount_id: "b".into(), ..a.clone() }).unwrap(), Inserted::Exists);
        assert_eq!(journal.find(&a.dir).unwrap(), Some(a.clone()));
        assert!(journal.mark(&a.dir, Some(Path::new("/plugin/v"))).unwrap());
        let mounted = MountRecord { phase: Phase::Mounted, source: Some("/plugin/v".into()), ..a.clone() };
        assert_eq!(journal.find(&a.dir).unwrap(), Some(mounted));
        assert!(journal.remove(&a.dir).unwrap());
        assert!(!journal.remove(&a.dir).unwrap());
        assert_eq!(journal.find(&a.dir).unwrap(), None);
        assert!(!journal.mark(&a.dir, None).unwrap());
    }

    #[test]
    fn a_window_holds_its_records_in_any_order_of_removal_and_refuses_the_ninth() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let dirs = colliding(WINDOW as usize + 1);
        let records: Vec<_> = dirs.iter().map(|d| record(d, d)).collect();
        for r in &records[..WINDOW as usize] {
            assert_eq!(journal.insert_new(r).unwrap(), Inserted::Yes);
        }
        assert_eq!(journal.insert_new(&records[WINDOW as usize]).unwrap(), Inserted::NoRoom, "a full window");
        assert!(journal.remove(&records[0].dir).unwrap());
        assert!(journal.remove(&records[3].dir).unwrap());
        for (i, r) in records[..WINDOW as usize].iter().enumerate() {
            let expected = (i != 0 && i != 3).then(|| r.clone());
            assert_eq!(journal.find(&r.dir).unwrap(), expected, "{i}");
        }
        assert_eq!(journal.insert_new(&records[WINDOW as usize]).unwrap(), Inserted::Yes, "a freed slot is reused");
        assert_eq!(journal.find(&records[WINDOW as usize].dir).unwrap(), Some(records[WINDOW as usize].clone()));
    }

    #[test]
    fn a_window_wraps_around_the_end() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let dirs: Vec<String> =
            (0..200_000).map(|i| format!("/pods/w{i}/volumes/x/v")).filter(|d| start(d) == SLOTS - 1).take(3).collect();
        for d in &dirs {
            assert_eq!(journal.insert_new(&record(d, "id")).unwrap(), Inserted::Yes);
        }
        for d in &dirs {
            assert!(journal.find(Path::new(d)).unwrap().is_some(), "{d}");
        }
    }

    #[test]
    fn torn_parts_read_as_free_and_a_stale_mark_never_counts() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let a = record("/pods/a/volumes/x/v", "a");
        journal.insert_new(&a).unwrap();
        journal.mark(&a.dir, None).unwrap();
        let file = File::options().read(true).write(true).open(scratch.path().join("mounts.journal")).unwrap();
        let index = start(a.dir.to_str().unwrap());
        let old_mark = {
            let mut m = vec![0u8; SLOT - MARK_AT];
            file.read_at(&mut m, offset(index) + MARK_AT as u64).unwrap();
            m
        };
        // A record torn by a power loss mid-write: gone, harmlessly (its
        // Mount was not sent before the record was synced).
        file.write_all_at(b"garbage", offset(index) + RECORD_HEADER as u64).unwrap();
        assert_eq!(journal.find(&a.dir).unwrap(), None);
        // A new record in the slot does not inherit the old record's mark.
        assert_eq!(journal.insert_new(&a).unwrap(), Inserted::Yes);
        let b = MountRecord { mount_id: "other".into(), ..a.clone() };
        assert!(journal.put(&b, true).unwrap());
        file.write_all_at(&old_mark, offset(index) + MARK_AT as u64).unwrap();
        assert_eq!(journal.find(&a.dir).unwrap(), Some(b), "a mark of another record is no mark");
    }

    #[test]
    fn long_records_and_sources_fit_or_are_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        // A kubelet path of a few hundred bytes fits.
        let long = record(&format!("/var/lib/kubelet/pods/a/volumes/x/{}", "v".repeat(250)), "a");
        assert_eq!(journal.insert_new(&long).unwrap(), Inserted::Yes);
        let too_long = record(&format!("/pods/a/volumes/x/{}", "v/".repeat(2000)), "a");
        assert_eq!(journal.insert_new(&too_long).unwrap(), Inserted::NoRoom);
        assert!(!journal.put(&too_long, true).unwrap());
        // A mountpoint too long for the mark is left out; the mark counts.
        journal.mark(&long.dir, Some(&PathBuf::from("/s".repeat(400)))).unwrap();
        assert_eq!(journal.find(&long.dir).unwrap(), Some(MountRecord { phase: Phase::Mounted, ..long }));
    }

    #[test]
    fn a_fill_cut_short_is_redone() {
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("mounts.journal");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let journal = Journal::new(path.clone());
        let a = record("/pods/a/volumes/x/v", "a");
        assert_eq!(journal.insert_new(&a).unwrap(), Inserted::Yes);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SLOTS * SLOT as u64);
        assert_eq!(journal.find(&a.dir).unwrap(), Some(a));
    }

    #[test]
    fn concurrent_writers_never_lose_a_record() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let r = record(&format!("/pods/t{t}-{i}/volumes/x/v"), "id");
                        assert_eq!(journal.insert_new(&r).unwrap(), Inserted::Yes);
                        if i % 2 == 0 {
                            assert!(journal.remove(&r.dir).unwrap());
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for t in 0..8 {
            for i in 0..40 {
                let found = journal.find(Path::new(&format!("/pods/t{t}-{i}/volumes/x/v"))).unwrap();
                assert_eq!(found.is_some(), i % 2 == 1, "t{t}-{i}");
            }
        }
    }
}
