//! Join tokens: format, parsing and the validity check, all pure.
//!
//! A token reads `WRN2-<cluster id>-<m|w>-<CA fingerprint>-<32 hex digits>`: the cluster id and
//! role are in the clear so a mistake (wrong cluster, wrong role) gets a precise message; the
//! CA fingerprint (SHA-256 of the CA certificate, 64 hex digits) lets a joining node check the
//! cluster it reached before it sends anything (as Swarm's `SWMTKN-1-<CA digest>-<secret>`);
//! the 128-bit secret is what makes it a credential. The replicated state keeps only the
//! SHA-256 of the whole token, so every manager can check it and none can print it again.

use super::model::{JoinTokenRecord, Role};
use super::state::ClusterState;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "WRN2";
/// Hex digits of the CA fingerprint (SHA-256).
pub const CA_FINGERPRINT_HEX_LEN: usize = 64;
/// Hex digits of the secret part: 128 random bits.
pub const SECRET_HEX_LEN: usize = 32;
pub const DEFAULT_TTL_MS: i64 = 24 * 3600 * 1000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is malformed ({0}); copy it again from `warren cluster join-token`")]
    Malformed(&'static str),
    #[error("the join token belongs to cluster {token_cluster}, not to this cluster ({cluster})")]
    WrongCluster { token_cluster: String, cluster: String },
    #[error("the join token names another CA than this cluster's (fingerprint {token_ca}..., the cluster's is {cluster_ca}...): it was altered, or the CA was rotated since; issue a new one with `warren cluster join-token`")]
    WrongCa { token_ca: String, cluster_ca: String },
    #[error(
        "this is a {token_role} token; joining as a {wanted} needs `warren cluster join-token {wanted}`"
    )]
    WrongRole {
        token_role: &'static str,
        wanted: &'static str,
    },
    #[error("the join token expired; issue a new one with `warren cluster join-token {role}`")]
    Expired { role: &'static str },
    #[error("the join token is not valid here: it was rotated out or never issued; issue a new one with `warren cluster join-token {role}`")]
    Unknown { role: &'static str },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedToken {
    pub cluster_id: String,
    pub role: Role,
    /// SHA-256 of the cluster CA's certificate, lowercase hex.
    pub ca_fingerprint: String,
}

fn role_letter(role: Role) -> char {
    match role {
        Role::Manager => 'm',
        Role::Worker => 'w',
    }
}

/// Builds a token from its parts; `secret_hex` must be SECRET_HEX_LEN lowercase hex digits.
pub fn format(cluster_id: &str, role: Role, ca_fingerprint: &str, secret_hex: &str) -> String {
    debug_assert_eq!(secret_hex.len(), SECRET_HEX_LEN);
    debug_assert_eq!(ca_fingerprint.len(), CA_FINGERPRINT_HEX_LEN);
    format!(
        "{PREFIX}-{cluster_id}-{}-{ca_fingerprint}-{secret_hex}",
        role_letter(role)
    )
}

/// SHA-256 of a CA certificate, lowercase hex, as tokens carry it.
pub fn ca_fingerprint(ca_cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(ca_cert_der))
}

pub fn parse(token: &str) -> Result<ParsedToken, TokenError> {
    let token = token.trim();
    let mut parts = token.split('-');
    let (Some(prefix), Some(cluster_id), Some(role), Some(ca), Some(secret), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed(
            "expected WRN2-<cluster>-<m|w>-<CA fingerprint>-<secret>",
        ));
    };
    if prefix != PREFIX {
        return Err(TokenError::Malformed(
            "it does not start with WRN2- (a WRN1- token comes from a Warren without TLS)",
        ));
    }
    if cluster_id.is_empty() || !cluster_id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed("bad cluster id"));
    }
    let role = match role {
        "m" => Role::Manager,
        "w" => Role::Worker,
        _ => return Err(TokenError::Malformed("role must be m or w")),
    };
    if ca.len() != CA_FINGERPRINT_HEX_LEN || !ca.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed("bad CA fingerprint"));
    }
    if secret.len() != SECRET_HEX_LEN || !secret.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed("bad secret"));
    }
    Ok(ParsedToken {
        cluster_id: cluster_id.to_string(),
        role,
        ca_fingerprint: ca.to_ascii_lowercase(),
    })
}

pub fn hash_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Is `token` a valid, unexpired token of role `wanted` in `state` at `now_ms`?
pub fn check(state: &ClusterState, token: &str, wanted: Role, now_ms: i64) -> Result<(), TokenError> {
    let parsed = parse(token)?;
    if parsed.cluster_id != state.cluster_id {
        return Err(TokenError::WrongCluster {
            token_cluster: parsed.cluster_id,
            cluster: state.cluster_id.clone(),
        });
    }
    let cluster_ca = ca_fingerprint(&state.pki.ca_cert_der);
    // During a CA rotation a token made before it (naming the old CA) still works.
    let trusted = state
        .pki
        .trusted()
        .iter()
        .any(|c| ca_fingerprint(c) == parsed.ca_fingerprint);
    if !trusted {
        return Err(TokenError::WrongCa {
            token_ca: parsed.ca_fingerprint[..12].to_string(),
            cluster_ca: cluster_ca[..12].to_string(),
        });
    }
    if parsed.role != wanted {
        return Err(TokenError::WrongRole {
            token_role: parsed.role.as_str(),
            wanted: wanted.as_str(),
        });
    }
    let hash = hash_hex(token);
    // Look at every record of the role so the time taken does not tell which one matched.
    let mut found: Option<&JoinTokenRecord> = None;
    for rec in state.join_tokens.iter().filter(|r| r.role == wanted) {
        if constant_time_eq(rec.hash_hex.as_bytes(), hash.as_bytes()) {
            found = Some(rec);
        }
    }
    match found {
        Some(rec) if rec.expires_at_ms > now_ms => Ok(()),
        Some(_) => Err(TokenError::Expired {
            role: wanted.as_str(),
        }),
        None => Err(TokenError::Unknown {
            role: wanted.as_str(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Command;

    const SECRET_A: &str = "0123456789abcdef0123456789abcdef";
    const SECRET_B: &str = "fedcba9876543210fedcba9876543210";
    const CA: &[u8] = b"the CA certificate";

    fn format(cluster_id: &str, role: Role, secret_hex: &str) -> String {
        super::format(cluster_id, role, &ca_fingerprint(CA), secret_hex)
    }

    fn state_with(tokens: &[(&str, i64)], rotate_last: bool) -> ClusterState {
        let mut st = ClusterState {
            cluster_id: "c0ffee".into(),
            ..Default::default()
        };
        st.pki.ca_cert_der = CA.to_vec();
        for (i, (tok, expires)) in tokens.iter().enumerate() {
            let role = parse(tok).unwrap().role;
            st.apply(
                i as u64 + 1,
                Command::SetJoinToken {
                    role,
                    hash_hex: hash_hex(tok),
                    expires_at_ms: *expires,
                    rotate: rotate_last && i + 1 == tokens.len(),
                    now_ms: 0,
                },
            )
            .unwrap();
        }
        st
    }

    #[test]
    fn format_parse_round_trip() {
        let t = format("c0ffee", Role::Manager, SECRET_A);
        let fp = ca_fingerprint(CA);
        assert_eq!(t, std::format!("WRN2-c0ffee-m-{fp}-{SECRET_A}"));
        assert_eq!(
            parse(&t).unwrap(),
            ParsedToken {
                cluster_id: "c0ffee".into(),
                role: Role::Manager,
                ca_fingerprint: fp,
            }
        );
    }

    #[test]
    fn checks() {
        let m = format("c0ffee", Role::Manager, SECRET_A);
        let w = format("c0ffee", Role::Worker, SECRET_B);
        let st = state_with(&[(&m, 1_000), (&w, 1_000)], false);
        let other_cluster = format("beef", Role::Manager, SECRET_A);
        let unknown = format("c0ffee", Role::Manager, SECRET_B);
        // The same token with one digit of its CA fingerprint changed.
        let tampered = {
            let i = m.find(&ca_fingerprint(CA)).unwrap() + 5;
            let mut b = m.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8(b).unwrap()
        };
        let old_format = std::format!("WRN1-c0ffee-m-{SECRET_A}");
        type Case<'a> = (&'a str, Role, i64, Result<(), fn(&TokenError) -> bool>);
        let cases: Vec<Case> = vec![
            (&m, Role::Manager, 999, Ok(())),
            (&w, Role::Worker, 0, Ok(())),
            (
                &w,
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::WrongRole { .. })),
            ),
            (
                &m,
                Role::Manager,
                1_000,
                Err(|e| matches!(e, TokenError::Expired { .. })),
            ),
            (
                &other_cluster,
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::WrongCluster { .. })),
            ),
            (
                &unknown,
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::Unknown { .. })),
            ),
            (
                &tampered,
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::WrongCa { .. })),
            ),
            (
                &old_format,
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::Malformed(_))),
            ),
            (
                "garbage",
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::Malformed(_))),
            ),
            (
                "",
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::Malformed(_))),
            ),
            (
                "WRN1-c0ffee-x-0123456789abcdef0123456789abcdef",
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::Malformed(_))),
            ),
            (
                "WRN1-c0ffee-m-0123",
                Role::Manager,
                0,
                Err(|e| matches!(e, TokenError::Malformed(_))),
            ),
        ];
        for (tok, role, now, want) in cases {
            let got = check(&st, tok, role, now);
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{tok} as {role:?} at {now}"),
                Err(f) => assert!(got.as_ref().is_err_and(f), "{tok} as {role:?} at {now}: {got:?}"),
            }
        }
    }

    #[test]
    fn rotation_invalidates_earlier_tokens_of_the_role() {
        let m1 = format("c0ffee", Role::Manager, SECRET_A);
        let w = format("c0ffee", Role::Worker, SECRET_A);
        let m2 = format("c0ffee", Role::Manager, SECRET_B);
        let st = state_with(&[(&m1, 10), (&w, 10), (&m2, 10)], true);
        assert!(matches!(
            check(&st, &m1, Role::Manager, 0),
            Err(TokenError::Unknown { .. })
        ));
        assert_eq!(check(&st, &m2, Role::Manager, 0), Ok(()));
        assert_eq!(
            check(&st, &w, Role::Worker, 0),
            Ok(()),
            "rotating managers keeps worker tokens"
        );
    }

    #[test]
    fn messages_never_contain_the_secret() {
        let m = format("c0ffee", Role::Manager, SECRET_A);
        let st = state_with(&[], false);
        let msg = check(&st, &m, Role::Manager, 0).unwrap_err().to_string();
        assert!(!msg.contains(SECRET_A), "{msg}");
    }
}
