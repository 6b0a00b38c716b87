//! The mount journal: mount records in fixed slots of one preallocated file
//! (`<state dir>/mounts.journal`).
//!
//! Making a new record durable is then an overwrite of blocks the file
//! already has, plus `fdatasync`: no file is created, no directory entry
//! changes, and the filesystem's own journal has nothing to commit (the
//! data is written and the disk cache flushed; a new synced file costs a
//! journal commit on top, about twice the time).
//!
//! Layout: [`SLOTS`] slots of 1 KiB. A slot is two 512-byte sectors, each
//! written whole, so a torn write never mixes them: the record (written
//! once, synced) and its completion mark (phase and source, rewritten
//! without a sync; bound to its record by the record's checksum, so a mark
//! left over from an earlier record in the slot never counts). Each sector
//! is `[state u8][length u16 LE][fnv1a u64 LE][JSON]`, zero-padded; a
//! sector whose checksum fails reads as dead.
//!
//! A record lives at the first free slot of its directory's probe sequence
//! (hash of the directory, then the next slots); a removed record leaves a
//! tombstone while records after it in a sequence may depend on it, and
//! becomes empty otherwise. Changes hold an exclusive `flock` on the file
//! (briefly: no plugin call is made under it), lookups a shared one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::state::{MountRecord, Phase, fnv1a};

/// How many records the journal holds (a node with more mounts at once
/// keeps the rest as files of their own).
pub(crate) const SLOTS: u64 = 4096;
const SECTOR: usize = 512;
const SLOT: usize = 2 * SECTOR;
const HEADER: usize = 1 + 2 + 8;
/// The largest JSON a sector holds.
const PAYLOAD: usize = SECTOR - HEADER;
/// Slots read per `pread` while probing.
const CHUNK: u64 = 4;

const EMPTY: u8 = 0;
const DEAD: u8 = 1;
const LIVE: u8 = 2;

/// What [`Journal::insert_new`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The record is in the journal and durable.
    Yes,
    /// The directory already has a record; nothing was written.
    Exists,
    /// The record does not fit (too long, or no free slot): keep it
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

enum Slot {
    Empty,
    Dead,
    Live { record: MountRecord, checksum: u64 },
}

/// The journal file of one state directory.
#[derive(Clone, Debug)]
pub(crate) struct Journal {
    path: PathBuf,
}

impl Journal {
    /// The journal at `path` (created on first write).
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The record of `dir`, if the journal has one.
    pub(crate) fn find(&self, dir: &Path) -> io::Result<Option<MountRecord>> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let file = lock(file, FlockArg::LockShared)?;
        Ok(probe(&file, dir)?.found.map(|(_, record, _)| record))
    }

    /// Adds `record` and makes it durable, unless its directory already has
    /// one.
    pub(crate) fn insert_new(&self, record: &MountRecord) -> io::Result<Inserted> {
        let Some(sector) = encode_record(record) else { return Ok(Inserted::NoRoom) };
        let file = lock(self.open_for_writing()?, FlockArg::LockExclusive)?;
        let probed = probe(&file, &record.dir)?;
        if probed.found.is_some() {
            return Ok(Inserted::Exists);
        }
        let Some(index) = probed.free else { return Ok(Inserted::NoRoom) };
        write_slot(&file, index, &sector)?;
        let file = unlock(file)?;
        // Outside the lock: the flush waits for the disk, and other writers
        // need not wait for it.
        file.sync_data()?;
        Ok(Inserted::Yes)
    }

    /// Writes `record` over `dir`'s record, or adds it; synced when
    /// `durable`. False when it does not fit (nothing was written).
    pub(crate) fn put(&self, record: &MountRecord, durable: bool) -> io::Result<bool> {
        let Some(sector) = encode_record(record) else { return Ok(false) };
        let file = lock(self.open_for_writing()?, FlockArg::LockExclusive)?;
        let probed = probe(&file, &record.dir)?;
        let Some(index) = probed.found.as_ref().map(|(index, ..)| *index).or(probed.free) else { return Ok(false) };
        write_slot(&file, index, &sector)?;
        if record.phase == Phase::Mounted {
            write_mark(&file, index, fnv1a(payload_of(&sector)), record.source.as_deref())?;
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
        let file = match File::options().read(true).write(true).open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        let file = lock(file, FlockArg::LockExclusive)?;
        let Some((index, _, checksum)) = probe(&file, dir)?.found else { return Ok(false) };
        write_mark(&file, index, checksum, source)?;
        Ok(true)
    }

    /// Removes `dir`'s record (not synced). False when there was none.
    pub(crate) fn remove(&self, dir: &Path) -> io::Result<bool> {
        let file = match File::options().read(true).write(true).open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        let file = lock(file, FlockArg::LockExclusive)?;
        let Some((index, ..)) = probe(&file, dir)?.found else { return Ok(false) };
        // A tombstone keeps later records of a probe sequence reachable;
        // where the next slot is empty, no sequence runs through this one,
        // nor through the tombstones just before it.
        if matches!(read_slot(&file, (index + 1) % SLOTS)?, Slot::Empty) {
            let mut at = index;
            loop {
                file.write_all_at(&[EMPTY], offset(at))?;
                at = (at + SLOTS - 1) % SLOTS;
                if at == index || !matches!(read_slot(&file, at)?, Slot::Dead) {
                    break;
                }
            }
        } else {
            file.write_all_at(&[DEAD], offset(index))?;
        }
        Ok(true)
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
        let length = file.metadata()?.len();
        if length < size {
            let zeros = vec![0u8; 64 * 1024];
            let mut at = length;
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

/// What probing for a directory found.
struct Probe {
    /// The slot, its record and the record's checksum.
    found: Option<(u64, MountRecord, u64)>,
    /// Where a new record of it would go.
    free: Option<u64>,
}

fn probe(file: &File, dir: &Path) -> io::Result<Probe> {
    let start = fnv1a(dir.as_os_str().as_encoded_bytes()) % SLOTS;
    let mut free = None;
    let mut chunk = vec![0u8; CHUNK as usize * SLOT];
    let mut chunk_at = u64::MAX;
    for step in 0..SLOTS {
        let index = (start + step) % SLOTS;
        if chunk_at == u64::MAX || index < chunk_at || index >= chunk_at + CHUNK {
            chunk_at = index - index % CHUNK;
            chunk.fill(0);
            read_at(file, &mut chunk, offset(chunk_at))?;
        }
        let at = (index - chunk_at) as usize * SLOT;
        match decode(&chunk[at..at + SLOT]) {
            Slot::Empty => return Ok(Probe { found: None, free: free.or(Some(index)) }),
            Slot::Dead => free = free.or(Some(index)),
            Slot::Live { record, checksum } if record.dir == dir => {
                return Ok(Probe { found: Some((index, record, checksum)), free });
            }
            Slot::Live { .. } => {}
        }
    }
    Ok(Probe { found: None, free })
}

fn read_slot(file: &File, index: u64) -> io::Result<Slot> {
    let mut slot = vec![0u8; SLOT];
    read_at(file, &mut slot, offset(index))?;
    Ok(decode(&slot))
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

fn decode(slot: &[u8]) -> Slot {
    let Some((state, payload)) = sector(&slot[..SECTOR]) else { return Slot::Dead };
    match state {
        EMPTY => return Slot::Empty,
        LIVE => {}
        _ => return Slot::Dead,
    }
    let Ok(mut record) = serde_json::from_slice::<MountRecord>(payload) else { return Slot::Dead };
    let checksum = fnv1a(payload);
    if let Some((LIVE, mark)) = sector(&slot[SECTOR..])
        && let Ok(mark) = serde_json::from_slice::<Mark>(mark)
        && mark.record == checksum
    {
        record.phase = Phase::Mounted;
        record.source = mark.source.or(record.source);
    }
    Slot::Live { record, checksum }
}

/// A sector's state and payload, if its header and checksum hold (an
/// all-zero sector is empty).
fn sector(bytes: &[u8]) -> Option<(u8, &[u8])> {
    if bytes[0] == EMPTY {
        return Some((EMPTY, &[]));
    }
    let length = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
    let checksum = u64::from_le_bytes(bytes[3..HEADER].try_into().ok()?);
    let payload = bytes.get(HEADER..HEADER + length)?;
    (fnv1a(payload) == checksum).then_some((bytes[0], payload))
}

fn encode(state: u8, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > PAYLOAD {
        return None;
    }
    let mut sector = Vec::with_capacity(SECTOR);
    sector.push(state);
    sector.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    sector.extend_from_slice(&fnv1a(payload).to_le_bytes());
    sector.extend_from_slice(payload);
    sector.resize(SECTOR, 0);
    Some(sector)
}

/// The record sector of `record` (phase and source go in the mark).
fn encode_record(record: &MountRecord) -> Option<Vec<u8>> {
    let bare = MountRecord { source: None, phase: Phase::Mounting, ..record.clone() };
    encode(LIVE, &serde_json::to_vec(&bare).ok()?)
}

/// Writes a record sector and clears the slot's mark, in one write.
fn write_slot(file: &File, index: u64, record_sector: &[u8]) -> io::Result<()> {
    let mut slot = record_sector.to_vec();
    slot.resize(SLOT, 0);
    file.write_all_at(&slot, offset(index))
}

/// The JSON of a sector made by [`encode`].
fn payload_of(sector: &[u8]) -> &[u8] {
    &sector[HEADER..HEADER + u16::from_le_bytes([sector[1], sector[2]]) as usize]
}

/// Writes the mark of the record whose checksum is `record`. A source too
/// long for the sector is left out (the mark still counts).
fn write_mark(file: &File, index: u64, record: u64, source: Option<&Path>) -> io::Result<()> {
    let with_source = serde_json::to_vec(&Mark { record, source: source.map(Path::to_path_buf) }).unwrap_or_default();
    let sector = encode(LIVE, &with_source)
        .or_else(|| encode(LIVE, &serde_json::to_vec(&Mark { record, source: None }).unwrap_or_default()))
        .ok_or_else(|| io::Error::other("a mount mark does not encode"))?;
    file.write_all_at(&sector, offset(index) + SECTOR as u64)
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

    #[test]
    fn records_are_found_marked_and_removed() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let a = record("/pods/a/volumes/x/v", "a");
        assert_eq!(journal.find(&a.dir).unwrap(), None, "no journal yet");
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
    }

    #[test]
    fn a_record_behind_a_removed_one_stays_reachable() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        // Directories whose probe sequences collide: same start slot.
        let dirs: Vec<String> = {
            let mut by_slot = std::collections::HashMap::<u64, Vec<String>>::new();
            (0..20000)
                .map(|i| format!("/pods/p{i}/volumes/x/v"))
                .find_map(|dir| {
                    let slot = fnv1a(dir.as_bytes()) % SLOTS;
                    let same = by_slot.entry(slot).or_default();
                    same.push(dir);
                    (same.len() == 3).then(|| same.clone())
                })
                .expect("three directories sharing a slot")
        };
        let records: Vec<_> = dirs.iter().map(|d| record(d, d)).collect();
        for r in &records {
            assert_eq!(journal.insert_new(r).unwrap(), Inserted::Yes);
        }
        assert!(journal.remove(&records[0].dir).unwrap());
        assert_eq!(journal.find(&records[2].dir).unwrap(), Some(records[2].clone()), "found past a tombstone");
        assert_eq!(journal.insert_new(&records[0]).unwrap(), Inserted::Yes, "the tombstone is reused");
        for r in &records {
            assert!(journal.remove(&r.dir).unwrap());
        }
        // With every record gone, the sequence is empty again.
        let file = File::open(scratch.path().join("mounts.journal")).unwrap();
        let start = fnv1a(dirs[0].as_bytes()) % SLOTS;
        for step in 0..3 {
            assert!(matches!(read_slot(&file, (start + step) % SLOTS).unwrap(), Slot::Empty), "{step}");
        }
    }

    #[test]
    fn torn_sectors_read_as_dead_and_a_stale_mark_never_counts() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let a = record("/pods/a/volumes/x/v", "a");
        journal.insert_new(&a).unwrap();
        journal.mark(&a.dir, None).unwrap();
        let file = File::options().read(true).write(true).open(scratch.path().join("mounts.journal")).unwrap();
        let index = fnv1a(a.dir.as_os_str().as_encoded_bytes()) % SLOTS;
        // A record sector torn by a power loss mid-write: gone, harmlessly
        // (its Mount was not sent before the record was synced).
        file.write_all_at(b"garbage", offset(index) + HEADER as u64).unwrap();
        assert_eq!(journal.find(&a.dir).unwrap(), None);
        // A new record in the slot does not inherit the old slot's mark.
        let old_mark = {
            let mut m = vec![0u8; SECTOR];
            file.read_at(&mut m, offset(index) + SECTOR as u64).unwrap();
            m
        };
        assert_eq!(journal.insert_new(&a).unwrap(), Inserted::Yes);
        let b = MountRecord { mount_id: "other".into(), ..a.clone() };
        journal.put(&b, true).unwrap();
        file.write_all_at(&old_mark, offset(index) + SECTOR as u64).unwrap();
        assert_eq!(journal.find(&a.dir).unwrap(), Some(b), "a mark of another record is no mark");
    }

    #[test]
    fn records_too_long_for_a_sector_are_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let long = record(&format!("/pods/a/volumes/x/{}", "v".repeat(600)), "a");
        assert_eq!(journal.insert_new(&long).unwrap(), Inserted::NoRoom);
        assert!(!journal.put(&long, true).unwrap());
        // A mountpoint too long for the mark is left out; the mark counts.
        let a = record("/pods/a/volumes/x/v", "a");
        journal.insert_new(&a).unwrap();
        journal.mark(&a.dir, Some(&PathBuf::from("/s".repeat(400)))).unwrap();
        assert_eq!(journal.find(&a.dir).unwrap(), Some(MountRecord { phase: Phase::Mounted, ..a }));
    }

    #[test]
    fn concurrent_writers_never_lose_a_record() {
        let scratch = tempfile::tempdir().unwrap();
        let journal = journal(&scratch);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
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
            for i in 0..50 {
                let found = journal.find(Path::new(&format!("/pods/t{t}-{i}/volumes/x/v"))).unwrap();
                assert_eq!(found.is_some(), i % 2 == 1, "t{t}-{i}");
            }
        }
    }
}
