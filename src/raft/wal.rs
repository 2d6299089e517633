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
//! the database is safe. Record: length (u32, little-endian), CRC-32 of the length, CRC-32 of
//! the body, body. A record is written by one write call: only the last can be cut short.

use redb::StorageBackend;
use serde::{Deserialize, Serialize};

/// The file is emptied after a durable database commit once it is at least this large.
pub const RESET_BYTES: u64 = 4 << 20;
/// The largest record read back: a batch of appended entries, bounded far below this by
/// openraft's `max_payload_entries` and the entry size limit.
const MAX_RECORD_BYTES: u32 = 256 << 20;
const HEADER: usize = 12;

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    len: u64,
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
        if good < len {
            file.set_len(good)?;
        }
        // What a killed process wrote may still be only in the page cache: on disk before
        // anything read from it is relied on.
        file.sync_data()?;
        Ok((
            Wal {
                file: file.into(),
                len: good,
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
        self.file.write(self.len, &out)?;
        self.len += out.len() as u64;
        Ok(())
    }

    pub fn file(&self) -> std::sync::Arc<dyn StorageBackend> {
        self.file.clone()
    }

    /// Empties the file: call only once the database holds every record durably.
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
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
    let len = (body.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
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
        let damaged = |why: String| {
            if bytes[at..].iter().all(|b| *b == 0) {
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
        let len = u32_at(bytes, at);
        if crc32fast::hash(&bytes[at..at + 4]) != u32_at(bytes, at + 4) || len > MAX_RECORD_BYTES {
            damaged("its length is damaged".into())?;
            break;
        }
        let crc = u32_at(bytes, at + 8);
        let end = at + HEADER + len as usize;
        if end > bytes.len() {
            // Cut short by a crash.
            break;
        }
        let body = &bytes[at + HEADER..end];
        if crc32fast::hash(body) != crc {
            // Whole but wrong, even as the last record: it may have been reported durable,
            // so it is refused, not dropped (unless only zeros are left: a page never written).
            damaged("its checksum does not match".into())?;
            break;
        }
        match bincode::deserialize::<Record>(body) {
            Ok(r) => records.push(r),
            Err(e) => {
                damaged(format!("undecodable: {e}"))?;
                break;
            }
        }
        at = end;
    }
    Ok((records, at as u64))
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
}
