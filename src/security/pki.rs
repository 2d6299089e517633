//! The cluster's certificates: the CA, node and admin certificates, certificate signing
//! requests, and reading an identity back out of a certificate.
//!
//! - Every key is Ed25519, generated from 32 bytes of the process's random source
//!   (`madsim::rand`: the OS-seeded CSPRNG in production, the seeded one in the simulator,
//!   so a simulated run's certificates replay from its seed). Ed25519 signatures are
//!   deterministic and fixed in size.
//! - A certificate names who holds it in one URI subject alternative name,
//!   `warren://CLUSTER/ROLE/ID` (role `manager`, `worker` or `admin`); the common name repeats
//!   the id for people reading it with `openssl x509`. Nothing else in it is trusted.
//! - The CA signs a request's public key only: names, lifetime and usages come from the CA's
//!   side, never from the request.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

/// Default lifetime of node and admin certificates; they renew at about half of it.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The CA's own lifetime.
pub const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from a little before they are issued, so a peer whose clock is
/// slightly behind accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
const URI_SCHEME: &str = "warren://";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum CertRole {
    Manager,
    Worker,
    Admin,
}

impl CertRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Manager => "manager",
            CertRole::Worker => "worker",
            CertRole::Admin => "admin",
        }
    }
    fn parse(s: &str) -> Option<CertRole> {
        match s {
            "manager" => Some(CertRole::Manager),
            "worker" => Some(CertRole::Worker),
            "admin" => Some(CertRole::Admin),
            _ => None,
        }
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertIdentity {
    pub cluster_id: String,
    /// When it was issued (its validity starts `BACKDATE` earlier).
    pub issued_at: SystemTime,
    pub role: CertRole,
    /// A manager's numeric id, a worker's node id, or an admin's name.
    pub id: String,
    /// Lowercase hex of the certificate's serial number (what revocation lists name).
    pub serial_hex: String,
    pub not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot build the certificate: {0}")]
    Build(#[from] rcgen::Error),
    #[error("not a valid certificate signing request: {0}")]
    BadRequest(String),
    #[error("not a Warren certificate: {0}")]
    NotOurs(String),
    #[error("{0:?} cannot be used in a certificate name: use letters, digits, '-', '_' and '.'")]
    BadName(String),
}

/// A private key (PKCS#8 DER) with its algorithm fixed to Ed25519.
pub struct Key {
    pkcs8: Vec<u8>,
    pair: KeyPair,
}

/// The fixed PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl Key {
    pub fn generate() -> Result<Key, PkiError> {
        let seed: [u8; 32] = madsim::rand::random();
        Key::from_pkcs8(&[&ED25519_PKCS8_PREFIX[..], &seed].concat())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Key, PkiError> {
        let pair = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(der.to_vec()),
            &rcgen::PKCS_ED25519,
        )?;
        Ok(Key {
            pkcs8: der.to_vec(),
            pair,
        })
    }

    pub fn from_pem(pem: &str) -> Result<Key, PkiError> {
        let der =
            pem_body(pem, "PRIVATE KEY").ok_or_else(|| PkiError::NotOurs("no PRIVATE KEY block".into()))?;
        Key::from_pkcs8(&der)
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn to_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// A signing request for this key (it carries no names: the CA sets them).
    pub fn request(&self) -> Result<Vec<u8>, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        Ok(params.serialize_request(&self.pair)?.der().to_vec())
    }
}

/// The cluster CA: its certificate and key.
pub struct Ca {
    pub cert_der: Vec<u8>,
    key_pkcs8: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// SHA-256 of a certificate's DER, lowercase hex: what a join token carries of the CA.
pub fn fingerprint_hex(cert_der: &[u8]) -> String {
    crate::core::token::ca_fingerprint(cert_der)
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = madsim::rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and of full length, so it prints the same everywhere
    SerialNumber::from_slice(&b)
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Names a certificate may carry: what node ids and admin names may contain.
fn check_name(s: &str) -> Result<(), PkiError> {
    let ok =
        !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(s.to_string()))
    }
}

fn ca_params(cluster_id: &str, now: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("warren cluster {cluster_id} CA"));
    dn.push(DnType::OrganizationName, format!("warren {cluster_id}"));
    // Each CA's name is its own, so a certificate's issuer says which CA signed it (two
    // are trusted during a rotation).
    let tag: [u8; 6] = madsim::rand::random();
    dn.push(DnType::OrganizationalUnitName, format!("ca {}", hex::encode(tag)));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = to_offset(now - BACKDATE);
    p.not_after = to_offset(now + CA_TTL);
    p.serial_number = Some(random_serial());
    p
}

impl Ca {
    /// A new CA for `cluster_id`.
    pub fn create(cluster_id: &str, now: SystemTime) -> Result<Ca, PkiError> {
        check_name(cluster_id)?;
        let key = Key::generate()?;
        let params = ca_params(cluster_id, now);
        let cert = params.self_signed(&key.pair)?;
        Ok(Ca {
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.pkcs8,
            issuer: Issuer::new(params, key.pair),
        })
    }

    /// A CA to replace `old` (`cluster ca --rotate`), and its certificate signed by `old`:
    /// presented after a certificate the new CA signed, it lets a node that trusts only the
    /// old CA accept that certificate until it learns of the new one.
    pub fn create_successor(old: &Ca, cluster_id: &str, now: SystemTime) -> Result<(Ca, Vec<u8>), PkiError> {
        check_name(cluster_id)?;
        let key = Key::generate()?;
        let mut params = ca_params(cluster_id, now);
        let cert = params.self_signed(&key.pair)?;
        params.serial_number = Some(random_serial());
        let cross = params.signed_by(&key.pair, &old.issuer)?;
        Ok((
            Ca {
                cert_der: cert.der().to_vec(),
                key_pkcs8: key.pkcs8,
                issuer: Issuer::new(params, key.pair),
            },
            cross.der().to_vec(),
        ))
    }

    /// The CA as kept in the replicated state.
    pub fn load(cert_der: &[u8], key_pkcs8: &[u8]) -> Result<Ca, PkiError> {
        let key = Key::from_pkcs8(key_pkcs8)?;
        // The issuer's name is the CA certificate's subject as stored.
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.to_vec()), key.pair)?;
        Ok(Ca {
            cert_der: cert_der.to_vec(),
            key_pkcs8: key.pkcs8,
            issuer,
        })
    }

    pub fn key_pkcs8(&self) -> &[u8] {
        &self.key_pkcs8
    }

    pub fn fingerprint_hex(&self) -> String {
        fingerprint_hex(&self.cert_der)
    }

    /// Signs `request`'s public key for `role`/`id` in `cluster_id`, valid for `ttl` from now.
    pub fn sign(
        &self,
        request_der: &[u8],
        cluster_id: &str,
        role: CertRole,
        id: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Vec<u8>, PkiError> {
        check_name(cluster_id)?;
        check_name(id)?;
        let mut csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(request_der))
                .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        // Only the request's key is used; everything else is ours.
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::OrganizationName, format!("warren {cluster_id}"));
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(
            format!("{URI_SCHEME}{cluster_id}/{}/{id}", role.as_str())
                .try_into()
                .map_err(|_| PkiError::BadName(id.to_string()))?,
        )];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = to_offset(now - BACKDATE);
        p.not_after = to_offset(now + ttl);
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        csr.params = p;
        Ok(csr.signed_by(&self.issuer)?.der().to_vec())
    }
}

/// Did the CA whose certificate is `ca_der` sign `cert_der`? (By name: every Warren CA's
/// name is its own. Says nothing about the signature, which TLS checks.)
pub fn issued_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    use x509_parser::prelude::*;
    match (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(ca_der),
    ) {
        (Ok((_, cert)), Ok((_, ca))) => cert.issuer().as_raw() == ca.subject().as_raw(),
        _ => false,
    }
}

/// One fingerprint for a set of trusted CAs (in order): what a heartbeat answer carries so a
/// worker notices the set changed.
pub fn bundle_fingerprint(cas_der: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    for c in cas_der {
        h.update((c.len() as u64).to_be_bytes());
        h.update(c);
    }
    hex::encode(h.finalize())
}

/// Who `cert_der` names. Says nothing about whether it is genuine: that is the TLS
/// verifier's job (chain to a trusted CA, validity, revocation).
pub fn identity(cert_der: &[u8]) -> Result<CertIdentity, PkiError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::NotOurs(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::NotOurs(e.to_string()))?
        .ok_or_else(|| PkiError::NotOurs("no subject alternative name".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with(URI_SCHEME) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris[..] else {
        return Err(PkiError::NotOurs(format!(
            "{} warren:// names, want one",
            uris.len()
        )));
    };
    let mut parts = uri[URI_SCHEME.len()..].split('/');
    let (Some(cluster_id), Some(role), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PkiError::NotOurs(format!("malformed name {uri}")));
    };
    let role = CertRole::parse(role).ok_or_else(|| PkiError::NotOurs(format!("unknown role in {uri}")))?;
    check_name(cluster_id).and(check_name(id))?;
    let not_after =
        std::time::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
    let issued_at = std::time::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_before.timestamp().max(0) as u64)
        + BACKDATE;
    Ok(CertIdentity {
        cluster_id: cluster_id.to_string(),
        issued_at,
        role,
        id: id.to_string(),
        serial_hex: hex::encode(cert.raw_serial()),
        not_after,
    })
}

impl CertIdentity {
    /// When its holder should get a new one: half way through its life.
    pub fn renew_at(&self) -> SystemTime {
        let life = self.not_after.duration_since(self.issued_at).unwrap_or_default();
        self.issued_at + life / 2
    }
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER of each `label` block in `pem`, in order.
pub fn pem_blocks(pem: &str, label: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(i) = rest.find(&begin) {
        let body = &rest[i + begin.len()..];
        let Some(j) = body.find(&end) else { break };
        let b64: String = body[..j].chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) {
            out.push(der);
        }
        rest = &body[j + end.len()..];
    }
    out
}

fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    pem_blocks(pem, label).into_iter().next()
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_signed_request_names_what_the_ca_says_and_round_trips() {
        let ca = Ca::create("c0ffee", now()).unwrap();
        let key = Key::generate().unwrap();
        let cert = ca
            .sign(
                &key.request().unwrap(),
                "c0ffee",
                CertRole::Worker,
                "edge-1",
                now(),
                DEFAULT_CERT_TTL,
            )
            .unwrap();
        let id = identity(&cert).unwrap();
        assert_eq!(
            (id.cluster_id.as_str(), id.role, id.id.as_str()),
            ("c0ffee", CertRole::Worker, "edge-1")
        );
        assert_eq!(id.not_after, now() + DEFAULT_CERT_TTL);
        assert_eq!(id.issued_at, now());
        assert_eq!(id.renew_at(), now() + DEFAULT_CERT_TTL / 2);
        assert_eq!(id.serial_hex.len(), 32);
        // The CA reloaded from its stored form signs certificates that chain the same way.
        let again = Ca::load(&ca.cert_der, ca.key_pkcs8()).unwrap();
        assert_eq!(again.fingerprint_hex(), ca.fingerprint_hex());
        let cert2 = again
            .sign(
                &key.request().unwrap(),
                "c0ffee",
                CertRole::Manager,
                "3",
                now(),
                DEFAULT_CERT_TTL,
            )
            .unwrap();
        let id2 = identity(&cert2).unwrap();
        assert_eq!((id2.role, id2.id.as_str()), (CertRole::Manager, "3"));
        assert_ne!(id.serial_hex, id2.serial_hex);
        // Keys and certificates survive PEM.
        let k2 = Key::from_pem(&key.to_pem()).unwrap();
        assert_eq!(k2.pkcs8_der(), key.pkcs8_der());
        assert_eq!(
            pem_blocks(&pem_encode("CERTIFICATE", &cert), "CERTIFICATE"),
            vec![cert]
        );
        // The CA itself is no identity.
        assert!(identity(&ca.cert_der).is_err());
    }

    #[test]
    fn bad_names_and_requests_are_refused() {
        let ca = Ca::create("c0ffee", now()).unwrap();
        let req = Key::generate().unwrap().request().unwrap();
        for bad in ["", "a/b", "x y", "../etc", &"n".repeat(129)] {
            assert!(
                matches!(
                    ca.sign(&req, "c0ffee", CertRole::Worker, bad, now(), DEFAULT_CERT_TTL),
                    Err(PkiError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        let mut flipped = req.clone();
        let n = flipped.len();
        flipped[n - 5] ^= 0x40; // in the signature
        assert!(matches!(
            ca.sign(&flipped, "c0ffee", CertRole::Worker, "w", now(), DEFAULT_CERT_TTL),
            Err(PkiError::BadRequest(_))
        ));
        assert!(matches!(
            ca.sign(b"junk", "c0ffee", CertRole::Worker, "w", now(), DEFAULT_CERT_TTL),
            Err(PkiError::BadRequest(_))
        ));
    }
}
