//! The backup file (`warren cluster backup --out FILE`, `warren cluster init --restore FILE`):
//! a consistent copy of the replicated state, read through the leader.
//!
//! Layout: the 8 bytes `WARRENBK`, the file format version (u16, little endian), the state
//! format (the sealed-value format byte of `raft::codec`: the state's layout), the payload
//! length (u64, little endian), the SHA-256 of the payload, then the payload (a bincode
//! `Backup`). Every part is checked when read, so a truncated, damaged or foreign file is
//! refused with what is wrong, before anything is written.

use crate::core::limits::MAX_BACKUP_BYTES;
use crate::core::ClusterState;
use crate::raft::codec;
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub const MAGIC: &[u8; 8] = b"WARRENBK";
/// Version of the file layout above (not of the state inside: see `state_format`).
pub const FILE_VERSION: u16 = 1;
const HEADER_BYTES: usize = 8 + 2 + 1 + 8 + 32;
/// Largest chunk of the `Backup` stream.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub cluster_id: String,
    pub taken_at_ms: i64,
    /// The manager that served it, and the log position of the state.
    pub taken_by: u64,
    pub index: u64,
    pub term: u64,
    pub state: ClusterState,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a Warren backup file (it does not start with WARRENBK)")]
    NotABackup,
    #[error("truncated: {len} bytes, {need} expected; the copy was cut short, take the backup again")]
    Truncated { len: u64, need: u64 },
    #[error("{len} bytes, over the limit of {max} bytes for a backup")]
    TooLarge { len: u64, max: u64 },
    #[error("backup file format {found}, this binary reads format {reads}; restore it with the Warren version that wrote it, or a later one")]
    FileVersion { found: u16, reads: u16 },
    #[error("the state in it has format {found:#04x}, this binary reads {reads:#04x}; restore it with the Warren version that wrote it, or a later one")]
    StateFormat { found: u8, reads: u8 },
    #[error("checksum mismatch: the file changed after it was written (a flipped byte, or a partial copy); use another backup")]
    Checksum,
    #[error("the checksum matches but the state does not decode ({0}); it was not written by this version of Warren")]
    Decode(String),
    #[error("{extra} bytes follow the state; the file was appended to or is not one backup")]
    Trailing { extra: u64 },
}

pub fn encode(b: &Backup) -> Vec<u8> {
    let payload = codec::to_bytes(b);
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FILE_VERSION.to_le_bytes());
    // The state's layout has not changed since the base format.
    out.push(codec::BASE_FORMAT);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha2::Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
    let len = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(if MAGIC.starts_with(bytes) && !bytes.is_empty() {
            BackupError::Truncated {
                len,
                need: HEADER_BYTES as u64,
            }
        } else {
            BackupError::NotABackup
        });
    }
    if bytes.len() < HEADER_BYTES {
        return Err(BackupError::Truncated {
            len,
            need: HEADER_BYTES as u64,
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FILE_VERSION {
        return Err(BackupError::FileVersion {
            found: version,
            reads: FILE_VERSION,
        });
    }
    if !codec::readable(bytes[10]) {
        return Err(BackupError::StateFormat {
            found: bytes[10],
            reads: codec::SEALED_FORMAT,
        });
    }
    let payload_len = u64::from_le_bytes(bytes[11..19].try_into().expect("8 bytes"));
    if payload_len > MAX_BACKUP_BYTES {
        return Err(BackupError::TooLarge {
            len: payload_len,
            max: MAX_BACKUP_BYTES,
        });
    }
    let need = HEADER_BYTES as u64 + payload_len;
    if len < need {
        return Err(BackupError::Truncated { len, need });
    }
    if len > need {
        return Err(BackupError::Trailing { extra: len - need });
    }
    let payload = &bytes[HEADER_BYTES..];
    if sha2::Sha256::digest(payload).as_slice() != &bytes[19..HEADER_BYTES] {
        return Err(BackupError::Checksum);
    }
    codec::from_bytes(payload).map_err(|e| BackupError::Decode(e.to_string()))
}

/// The backup a `cluster init --restore` has yet to put in the replicated state, kept in the
/// data dir until it is there (a restart of an interrupted restore finishes it).
pub const PENDING_FILE: &str = "restore.pending";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingRestore {
    pub rejoin_grace_ms: i64,
    pub backup: Backup,
}

pub fn save_pending(data_dir: &std::path::Path, p: &PendingRestore) -> std::io::Result<()> {
    crate::raft::disk::write_private(&data_dir.join(PENDING_FILE), &codec::seal(p))
}

pub fn load_pending(data_dir: &std::path::Path) -> anyhow::Result<Option<PendingRestore>> {
    let path = data_dir.join(PENDING_FILE);
    match crate::raft::disk::read_durable(&path)? {
        None => Ok(None),
        Some(b) => Ok(Some(codec::unseal(&b).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); move the data dir aside and restore into a new one",
                path.display()
            )
        })?)),
    }
}

pub fn pending_exists(data_dir: &std::path::Path) -> bool {
    crate::raft::disk::exists(&data_dir.join(PENDING_FILE))
}

/// The restore entry is applied: the copy goes.
pub fn pending_done(data_dir: &std::path::Path) -> std::io::Result<()> {
    crate::raft::disk::remove(&data_dir.join(PENDING_FILE))
}

/// A one-line account of what a backup holds, for the operator.
pub fn summary(b: &Backup) -> String {
    let running = b
        .state
        .tasks
        .values()
        .filter(|t| t.state == crate::core::TaskState::Running)
        .count();
    format!(
        "cluster {}, taken {} by manager {} at index {}: {} services, {} tasks ({running} running), {} nodes",
        b.cluster_id,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(b.taken_at_ms).unwrap_or(0))
        ),
        b.taken_by,
        b.index,
        b.state.services.len(),
        b.state.tasks.len(),
        b.state.nodes.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Backup {
        Backup {
            cluster_id: "c1".into(),
            taken_at_ms: 1_700_000_000_000,
            taken_by: 1,
            index: 42,
            term: 3,
            state: ClusterState {
                cluster_id: "c1".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        assert_eq!(decode(&encode(&b)).unwrap(), b);
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_refused() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            let e = decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(e, BackupError::Truncated { .. } | BackupError::NotABackup),
                "cut at {cut}: {e}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode(&b).is_err(), "flip at byte {i} went unnoticed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), BackupError::Trailing { extra: 1 });
    }

    #[test]
    fn versions_are_named() {
        let mut b = encode(&sample());
        b[8] = 9;
        assert_eq!(
            decode(&b).unwrap_err(),
            BackupError::FileVersion {
                found: 9,
                reads: FILE_VERSION
            }
        );
        let mut b = encode(&sample());
        b[10] = 0xA1;
        assert!(matches!(
            decode(&b).unwrap_err(),
            BackupError::StateFormat { found: 0xA1, .. }
        ));
        assert_eq!(decode(b"{\"not\": 1}").unwrap_err(), BackupError::NotABackup);
    }
}
