//! The Raft log's write-ahead file (`warren.wal`, beside `warren.redb`). An append is made
//! durable by one small write and one fdatasync here; the database takes the same entries
//! without an fsync of its own (`Durability::None`), and a later durable commit (a snapshot's
//! purge, a vote, or the file passing `RESET_BYTES`) makes them durable there, after which
//! the file starts empty again. Why (issue #16): a durable redb commit of one entry took
//! 0.46-0.53 ms on this machine's disk, an append and fdatasync of a few hundred bytes 0.13 ms,
//! and a write waits for two of them in a row (the leader's, then a follower's).
//!
//! At open, the records are replayed into the database in order: an append puts its entries,
//! a truncation deletes from its index on. Replaying over a database that already holds some
//! or all of their effect gives the same log, so a crash at any point between the file and
//! the database is safe. Record: length (u32, little-endian; its top bit set on a record that
//! ends in `END_MARK`), CRC-32 of the length, CRC-32 of the body, body, `END_MARK`. A record
//! is written by one write call: only the last can be cut short.
//!
//! The file is kept `AHEAD_BYTES` longer than its records, as zeros (a sparse hole): an
//! append then changes no file size (a block of the hole is allocated as it is first written,
//! once per 4 KiB, not once per append). On ext4 a size change makes every fdatasync a
//! journal commit, and the three managers of one machine queue for that one journal: 0.32 ms
//! per fdatasync of a growing file against 0.25 ms within the space kept ahead, three writers
//! at once on this machine (etcd keeps its WAL segments allocated ahead for the same reason).
//! A crash can then leave the last record cut short *inside* the file: the sectors the disk
//! wrote, then zeros (`torn`).

use redb::StorageBackend;
use serde::{Deserialize, Serialize};

/// The file is emptied after a durable database commit once it is at least this large.
pub const RESET_BYTES: u64 = 4 << 20;
/// The largest record read back: a batch of appended entries, bounded far below this by
/// openraft's `max_payload_entries` and the entry size limit.
const MAX_RECORD_BYTES: u32 = 256 << 20;
const HEADER: usize = 12;
/// The file is kept this much longer than its records (zeros, not allocated on disk).
pub const AHEAD_BYTES: u64 = 1 << 20;
/// A record's last byte (with `MARKED` set in its length): never zero, so a record whose
/// last sector was never written (zeros) cannot pass for a whole one.
const END_MARK: u8 = 0xA5;
const MARKED: u32 = 1 << 31;
/// The unit a disk writes whole: a write cut short by a crash leaves some sectors as they
/// were, the rest new.
const SECTOR: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Log entries as the database stores them: (index, sealed entry).
    Append(Vec<(u64, Vec<u8>)>),
    /// Entries at this index and after are gone.
    Truncate(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("record at byte {offset} is corrupt: {why}")]
    Corrupt { offset: u64, why: String },
}

#[derive(Debug)]
pub struct Wal {
    /// Shared with a sync running behind the leader's appends (`raft::durable`): a write
    /// and an fdatasync of one file may run at once.
    file: std::sync::Arc<dyn StorageBackend>,
    /// Where the records end; the file is `allocated` long, zeros after `len`.
    len: u64,
    allocated: u64,
}

impl Wal {
    /// Reads every record of `file`. A last record cut short, or zeros where a record should
    /// be, is a write a crash interrupted (never reported durable): it is cut off. Any other
    /// damage is refused.
    pub fn open(file: Box<dyn StorageBackend>) -> Result<(Wal, Vec<Record>), WalError> {
        let len = file.len()?;
        let mut bytes = vec![0u8; len as usize];
        file.read(0, &mut bytes)?;
        let (records, good) = parse(&bytes)?;
        if bytes[good as usize..].iter().any(|b| *b != 0) {
            // A cut record: gone, so that the space after the records is zeros again.
            file.set_len(good)?;
        }
        let allocated = len.max(good + AHEAD_BYTES);
        file.set_len(allocated)?;
        // What a killed process wrote may still be only in the page cache: on disk before
        // anything read from it is relied on.
        file.sync_data()?;
        Ok((
            Wal {
                file: file.into(),
                len: good,
                allocated,
            },
            records,
        ))
    }

    /// Appends `record` and waits until it is on disk.
    pub fn append(&mut self, record: &Record) -> std::io::Result<()> {
        self.write(record)?;
        self.file.sync_data()
    }

    /// Appends `record` without waiting for the disk: `file().sync_data()` makes it durable.
    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        let out = encode(record)?;
        let end = self.len + out.len() as u64;
        if end > self.allocated {
            self.file.set_len(end + AHEAD_BYTES)?;
            self.allocated = end + AHEAD_BYTES;
        }
        self.file.write(self.len, &out)?;
        self.len += out.len() as u64;
        Ok(())
    }

    pub fn file(&self) -> std::sync::Arc<dyn StorageBackend> {
        self.file.clone()
    }

    /// Empties the file: call only once the database holds every record durably.
    pub fn reset(&mut self) -> std::io::Result<()> {
        // Cut to nothing first: the space kept ahead must read as zeros again.
        self.file.set_len(0)?;
        self.file.set_len(AHEAD_BYTES)?;
        self.file.sync_data()?;
        self.len = 0;
        self.allocated = AHEAD_BYTES;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn encode(record: &Record) -> std::io::Result<Vec<u8>> {
    let body = bincode::serialize(record).map_err(std::io::Error::other)?;
    let len = (body.len() as u32 | MARKED).to_le_bytes();
    let mut out = Vec::with_capacity(HEADER + body.len() + 1);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out.push(END_MARK);
    Ok(out)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The records of `bytes`, and how many bytes they take.
fn parse(bytes: &[u8]) -> Result<(Vec<Record>, u64), WalError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        // `end`: where the record ends, as far as its header tells; `None` for a record
        // without an end mark (an earlier version's, in a file grown by each append: a
        // crash cut those short, within no zeros).
        let damaged = |why: String, end: Option<usize>| {
            if bytes[at..].iter().all(|b| *b == 0) || end.is_some_and(|end| torn(bytes, at, end)) {
                Ok(())
            } else {
                Err(WalError::Corrupt {
                    offset: at as u64,
                    why,
                })
            }
        };
        if bytes.len() - at < HEADER {
            // Cut short by a crash within the header.
            break;
        }
        let raw = u32_at(bytes, at);
        let (len, marked) = (raw & !MARKED, raw & MARKED != 0);
        if crc32fast::hash(&bytes[at..at + 4]) != u32_at(bytes, at + 4) || len > MAX_RECORD_BYTES {
            damaged("its length is damaged".into(), Some(at + HEADER))?;
            break;
        }
        let crc = u32_at(bytes, at + 8);
        let body_end = at + HEADER + len as usize;
        let end = body_end + usize::from(marked);
        if end > bytes.len() {
            // Cut short by a crash.
            break;
        }
        let body = &bytes[at + HEADER..body_end];
        if marked && bytes[body_end] != END_MARK {
            damaged("its end mark is missing".into(), Some(end))?;
            break;
        }
        if crc32fast::hash(body) != crc {
            // Whole but wrong, even as the last record: it may have been reported durable,
            // so it is refused, not dropped (unless it is a write cut short: `torn`).
            damaged("its checksum does not match".into(), marked.then_some(end))?;
            break;
        }
        match bincode::deserialize::<Record>(body) {
            Ok(r) => records.push(r),
            Err(e) => {
                damaged(format!("undecodable: {e}"), marked.then_some(end))?;
                break;
            }
        }
        at = end;
    }
    Ok((records, at as u64))
}

/// Whether the damaged record at `at`, which ends at `end` as far as its header tells (or
/// after its header, when that is unreadable), is a write a crash cut short within the
/// space kept ahead: nothing was written after it, and the sector holding its last byte
/// (its end mark, never zero; or the header's last byte) is still zeros. A whole record
/// damaged later keeps its end mark, and is refused.
fn torn(bytes: &[u8], at: usize, end: usize) -> bool {
    let end = end.min(bytes.len());
    let last_sector = ((end.saturating_sub(1)) / SECTOR * SECTOR).max(at);
    end > at && bytes[last_sector..].iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(records: &[Record]) -> Vec<u8> {
        records.iter().flat_map(|r| encode(r).unwrap()).collect()
    }

    fn two() -> Vec<Record> {
        vec![
            Record::Append(vec![(1, b"one".to_vec()), (2, b"two".to_vec())]),
            Record::Truncate(2),
        ]
    }

    /// What a crash can leave (a last record cut short, zeros) is read up to the last whole
    /// record; any other damage is refused, never skipped.
    #[test]
    fn a_cut_tail_is_dropped_and_damage_inside_is_refused() {
        let whole = encoded(&two());
        let first_len = encoded(&two()[..1]).len();
        assert_eq!(parse(&whole).unwrap(), (two(), whole.len() as u64));
        // Every cut inside the last record reads as the first record alone.
        for cut in first_len..whole.len() {
            let (records, good) = parse(&whole[..cut]).unwrap();
            assert_eq!((records.len(), good), (1, first_len as u64), "cut at {cut}");
        }
        // The last record's space written as zeros (a torn page): dropped.
        let mut zeroed = whole.clone();
        zeroed[first_len..].fill(0);
        assert_eq!(parse(&zeroed).unwrap().1, first_len as u64);
        // A flipped byte in the first record, with the second after it: refused.
        for i in 0..first_len {
            let mut bad = whole.clone();
            bad[i] ^= 0x20;
            assert!(
                matches!(parse(&bad), Err(WalError::Corrupt { offset: 0, .. })),
                "flip at {i}: {:?}",
                parse(&bad)
            );
        }
        // A flipped byte in the last record, whole: refused too (it may have been
        // acknowledged).
        let mut last = whole.clone();
        *last.last_mut().unwrap() ^= 1;
        assert!(matches!(parse(&last), Err(WalError::Corrupt { .. })));
    }

    /// A last record of several sectors, in the zeros kept ahead of the records.
    fn long_last() -> (Vec<Record>, Vec<u8>, usize) {
        let records = vec![
            Record::Append(vec![(1, b"one".to_vec())]),
            Record::Append(vec![(2, vec![7u8; 1500]), (3, vec![0u8; 40])]),
        ];
        let first_len = encoded(&records[..1]).len();
        let mut file = encoded(&records);
        file.resize(file.len() + 3 * SECTOR, 0);
        (records, file, first_len)
    }

    /// A crash inside the space kept ahead leaves the last record's first sectors and zeros
    /// for the rest: dropped, at every sector it can stop at. A whole last record with any
    /// byte damaged keeps its end mark: refused, even with the zeros after it.
    #[test]
    fn a_record_torn_within_the_zeros_ahead_is_dropped_and_a_damaged_whole_one_refused() {
        let (records, file, first_len) = long_last();
        let whole_len = encoded(&records).len();
        assert_eq!(parse(&file).unwrap(), (records, whole_len as u64));
        for stop in (0..whole_len).filter(|b| b % SECTOR == 0 && *b > first_len) {
            let mut torn = file.clone();
            torn[stop..].fill(0);
            let (got, good) = parse(&torn).unwrap();
            assert_eq!((got.len(), good), (1, first_len as u64), "written up to {stop}");
        }
        for i in first_len..whole_len {
            for flip in [0x01u8, 0xFF] {
                let mut bad = file.clone();
                bad[i] ^= flip;
                assert!(
                    matches!(parse(&bad), Err(WalError::Corrupt { .. })),
                    "flip {flip:#x} at {i}: {:?}",
                    parse(&bad).map(|(r, g)| (r.len(), g))
                );
            }
        }
        // Its last sector written and an earlier one not: not a tear in order; refused.
        let mut gap = file.clone();
        gap[first_len + SECTOR..first_len + 2 * SECTOR].fill(0);
        assert!(matches!(parse(&gap), Err(WalError::Corrupt { .. })));
    }

    /// Wherever the sector boundaries fall in a last record (its end mark the last byte of a
    /// sector, the first, its header cut across two): cut at any of them, it is dropped; with
    /// its end mark or the byte before it damaged, refused; with its end mark's sector still
    /// zeros but a whole record written after it, refused (not the last write).
    #[test]
    fn sector_boundaries_anywhere_in_the_last_record() {
        for shift in 0..SECTOR {
            let records = vec![
                Record::Append(vec![(1, vec![9u8; shift])]),
                Record::Append(vec![(2, vec![7u8; 900])]),
            ];
            let first_len = encoded(&records[..1]).len();
            let whole = encoded(&records);
            let mut file = whole.clone();
            file.resize(whole.len() + 2 * SECTOR, 0);
            assert_eq!(parse(&file).unwrap().0.len(), 2, "shift {shift}");
            for stop in (first_len + 1..whole.len()).filter(|b| b % SECTOR == 0) {
                let mut torn = file.clone();
                torn[stop..].fill(0);
                assert_eq!(
                    parse(&torn).unwrap(),
                    (records[..1].to_vec(), first_len as u64),
                    "shift {shift}, written up to {stop}"
                );
            }
            for at in [whole.len() - 1, whole.len() - 2] {
                let mut bad = file.clone();
                bad[at] ^= 0x01;
                assert!(
                    matches!(parse(&bad), Err(WalError::Corrupt { .. })),
                    "shift {shift}, flip at {at}"
                );
            }
            let mark_sector = ((whole.len() - 1) / SECTOR * SECTOR).max(first_len);
            let mut gap = whole.clone();
            gap[mark_sector..].fill(0);
            gap.extend(encoded(&records[1..]));
            gap.resize(gap.len() + SECTOR, 0);
            assert!(
                matches!(parse(&gap), Err(WalError::Corrupt { .. })),
                "shift {shift}: a zeroed end mark with a record after it"
            );
        }
    }

    /// An earlier version's records (no end mark, in a file grown by each append) are read
    /// as before: a cut last one is dropped, a damaged whole last one refused.
    #[test]
    fn records_without_an_end_mark_are_read_as_before() {
        let unmarked = |r: &Record| {
            let body = bincode::serialize(r).unwrap();
            let len = (body.len() as u32).to_le_bytes();
            let mut out = len.to_vec();
            out.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            out.extend_from_slice(&body);
            out
        };
        let old: Vec<u8> = two().iter().flat_map(unmarked).collect();
        let first_len = unmarked(&two()[0]).len();
        assert_eq!(parse(&old).unwrap(), (two(), old.len() as u64));
        assert_eq!(parse(&old[..old.len() - 1]).unwrap().1, first_len as u64);
        let mut bad = old.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(parse(&bad), Err(WalError::Corrupt { .. })));
    }

    /// The file stays `AHEAD_BYTES` past its records, so appends do not change its size;
    /// a reopen reads the records back, and a reset leaves zeros only.
    #[test]
    fn the_file_is_kept_longer_than_its_records() {
        let file = std::sync::Arc::new(redb::backends::InMemoryBackend::new());
        let (mut wal, none) = Wal::open(Box::new(Shared(file.clone()))).unwrap();
        assert!(none.is_empty());
        assert_eq!(file.len().unwrap(), AHEAD_BYTES);
        for r in two() {
            wal.append(&r).unwrap();
        }
        assert_eq!(
            file.len().unwrap(),
            AHEAD_BYTES,
            "an append changed the file's size"
        );
        // A record larger than the space left: the file grows past it, by the same margin.
        let big = Record::Append(vec![(3, vec![1u8; AHEAD_BYTES as usize])]);
        wal.append(&big).unwrap();
        assert_eq!(file.len().unwrap(), wal.len() + AHEAD_BYTES);
        let (wal2, back) = Wal::open(Box::new(Shared(file.clone()))).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(wal2.len(), wal.len());
        wal.reset().unwrap();
        let (_, after) = Wal::open(Box::new(Shared(file.clone()))).unwrap();
        assert!(after.is_empty());
        assert_eq!(file.len().unwrap(), AHEAD_BYTES);
    }

    /// A torn last record is cut off at open, so the space ahead is zeros again.
    #[test]
    fn open_cuts_a_torn_record_off() {
        let (_, mut bytes, first_len) = long_last();
        bytes[first_len + SECTOR..].fill(0);
        let file = std::sync::Arc::new(redb::backends::InMemoryBackend::new());
        file.set_len(bytes.len() as u64).unwrap();
        file.write(0, &bytes).unwrap();
        let (wal, records) = Wal::open(Box::new(Shared(file.clone()))).unwrap();
        assert_eq!((records.len(), wal.len()), (1, first_len as u64));
        let mut now = vec![0u8; file.len().unwrap() as usize];
        file.read(0, &mut now).unwrap();
        assert!(now[first_len..].iter().all(|b| *b == 0));
    }

    #[derive(Debug)]
    struct Shared(std::sync::Arc<redb::backends::InMemoryBackend>);

    impl StorageBackend for Shared {
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.0.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.0.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.0.write(offset, data)
        }
    }
}
