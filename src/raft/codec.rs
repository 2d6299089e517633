//! One encoding for what managers store and send each other: bincode (fixed-width integers),
//! decoded strictly (trailing bytes and oversized lengths are errors, not ignored). Stored
//! values are *sealed*: a format byte and a CRC-32 of the payload go in front, and every read
//! checks them, so a flipped byte on disk is reported instead of served as data.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Format byte of a sealed value (bump it when the layout changes).
/// 0xA2: the state gained the cluster PKI (0xA1 data is refused with a clear error).
/// 0xA3: CA rotation (the PKI's rotation, certificates recorded with their issuer).
/// 0xA4: restore from a backup (`Command::Restore`, `ClusterState::restored`).
/// 0xA5: group commit (`Command::Batch`). Only a value that holds a batch (a log entry, a
/// message carrying one) is written as 0xA5; everything else is still written as 0xA4, so
/// that an 0xA4 build reads it and a rolling upgrade from 0xA4 works.
pub const SEALED_FORMAT: u8 = 0xA5;
/// The oldest format this build reads, and what values without a batch are written as.
pub const BASE_FORMAT: u8 = 0xA4;

/// Whether this build reads values and messages of format `f`.
pub fn readable(f: u8) -> bool {
    (BASE_FORMAT..=SEALED_FORMAT).contains(&f)
}
const HEADER_BYTES: usize = 5;
/// Largest value decoded (a snapshot of the whole state included).
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x}): the bytes changed after they were written")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown format byte {0:#04x} (written by another version of Warren, or overwritten)")]
    Format(u8),
    #[error("{0} bytes, shorter than the 5-byte header")]
    Truncated(usize),
    #[error("undecodable: {0}")]
    Decode(String),
    #[error("the peer speaks format {found:#04x}, this manager reads {BASE_FORMAT:#04x} to {reads:#04x}: they run Warren versions with different formats; finish the upgrade (docs/operations.md, \"Upgrades\")")]
    PeerFormat { found: u8, reads: u8 },
}

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .with_limit(MAX_DECODE_BYTES)
}

pub fn to_bytes<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    use bincode::Options;
    options()
        .serialize(v)
        .expect("serializing an in-memory value cannot fail")
}

/// Decodes a whole message: trailing bytes are refused.
pub fn from_bytes<T: DeserializeOwned>(b: &[u8]) -> Result<T, CodecError> {
    use bincode::Options;
    options()
        .deserialize(b)
        .map_err(|e| CodecError::Decode(describe(&e)))
}

/// bincode's io errors carry an empty message for a short read; say what happened.
fn describe(e: &bincode::Error) -> String {
    match &**e {
        bincode::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the message ends early (truncated)".into()
        }
        bincode::ErrorKind::Io(io) if io.to_string().is_empty() => format!("{:?}", io.kind()),
        other => other.to_string(),
    }
}

/// Seals `v` as format `BASE_FORMAT` (see `seal_as` for a value that needs a newer one).
pub fn seal<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    seal_as(BASE_FORMAT, v)
}

pub fn seal_as<T: Serialize + ?Sized>(format: u8, v: &T) -> Vec<u8> {
    seal_bytes_as(format, &to_bytes(v))
}

pub fn seal_bytes(payload: &[u8]) -> Vec<u8> {
    seal_bytes_as(BASE_FORMAT, payload)
}

fn seal_bytes_as(format: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER_BYTES);
    out.push(format);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a sealed value, after checking its format byte and checksum.
pub fn unseal_bytes(b: &[u8]) -> Result<&[u8], CodecError> {
    if b.len() < HEADER_BYTES {
        return Err(CodecError::Truncated(b.len()));
    }
    if !readable(b[0]) {
        return Err(CodecError::Format(b[0]));
    }
    let stored = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes"));
    let payload = &b[HEADER_BYTES..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(payload)
}

pub fn unseal<T: DeserializeOwned>(b: &[u8]) -> Result<T, CodecError> {
    from_bytes(unseal_bytes(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_byte_is_caught() {
        let v = ("alpha".to_string(), 42u64, vec![1u8, 2, 3]);
        let sealed = seal(&v);
        assert_eq!(unseal::<(String, u64, Vec<u8>)>(&sealed).unwrap(), v);
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut b = sealed.clone();
                b[i] ^= 1 << bit;
                let got = unseal::<(String, u64, Vec<u8>)>(&b);
                // The format byte is outside the checksum: 0xA4 flipped to 0xA5 (a format
                // that reads the same bytes the same way) still gives the value written.
                if i == 0 && readable(b[0]) {
                    assert_eq!(got.unwrap(), v);
                    continue;
                }
                assert!(got.is_err(), "flip of bit {bit} of byte {i} went unnoticed");
            }
        }
        assert!(matches!(
            unseal::<u64>(&sealed[..3]),
            Err(CodecError::Truncated(3))
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = to_bytes(&7u32);
        assert_eq!(from_bytes::<u32>(&b).unwrap(), 7);
        b.push(0);
        assert!(from_bytes::<u32>(&b).is_err());
        let e = from_bytes::<String>(&[9, 0, 0, 0, 0, 0, 0, 0, b'a']).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
