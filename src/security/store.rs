//! Credentials on disk: `NAME.crt` (the certificate), `NAME.key` (its private key, PKCS#8)
//! and `ca.crt` (the trusted CA certificates), PEM, mode 0600 in a 0700 directory, each
//! written to a temporary file, fsynced and renamed into place so a crash leaves the old or
//! the new file, never half of one (through the disk seam, so the simulator keeps them on its
//! simulated disk). `NAME` is `node` in a node's data dir (`DATA_DIR/tls/`) and `admin` in an
//! operator's credential directory.

use super::pki::{self, CertIdentity};
use crate::raft::disk;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub cert_der: Vec<u8>,
    /// CA certificates presented after it (during a CA rotation: the new CA signed by the
    /// old one); stored after it in `NAME.crt`.
    pub chain_der: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
    /// Trusted CA certificates (two during a CA rotation).
    pub ca_der: Vec<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} holds no {what}; it is damaged or not a Warren credential")]
    Empty { path: String, what: &'static str },
    #[error("{path}: {source}")]
    Bad { path: String, source: pki::PkiError },
}

fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join("ca.crt"),
    )
}

impl Credential {
    pub fn identity(&self) -> Result<CertIdentity, pki::PkiError> {
        pki::identity(&self.cert_der)
    }

    /// Is there a credential called `name` in `dir`?
    pub fn exists(dir: &Path, name: &str) -> bool {
        disk::exists(&paths(dir, name).0)
    }

    pub fn load(dir: &Path, name: &str) -> Result<Credential, StoreError> {
        let (crt, key, ca) = paths(dir, name);
        let read = |p: &Path| {
            let rerr = |source| StoreError::Read {
                path: p.display().to_string(),
                source,
            };
            let bytes = disk::read_durable(p)
                .map_err(rerr)?
                .ok_or_else(|| rerr(std::io::ErrorKind::NotFound.into()))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        let first = |p: &Path, label: &str, what: &'static str| -> Result<Vec<Vec<u8>>, StoreError> {
            let blocks = pki::pem_blocks(&read(p)?, label);
            if blocks.is_empty() {
                return Err(StoreError::Empty {
                    path: p.display().to_string(),
                    what,
                });
            }
            Ok(blocks)
        };
        let mut certs = first(&crt, "CERTIFICATE", "certificate")?;
        let cred = Credential {
            cert_der: certs.remove(0),
            chain_der: certs,
            key_pkcs8: first(&key, "PRIVATE KEY", "private key")?.remove(0),
            ca_der: first(&ca, "CERTIFICATE", "CA certificate")?,
        };
        cred.identity().map_err(|source| StoreError::Bad {
            path: crt.display().to_string(),
            source,
        })?;
        Ok(cred)
    }

    pub fn save(&self, dir: &Path, name: &str) -> Result<(), StoreError> {
        let (crt, key, ca) = paths(dir, name);
        let werr = |p: &Path| {
            let path = p.display().to_string();
            move |source| StoreError::Write { path, source }
        };
        disk::create_private_dir(dir).map_err(werr(dir))?;
        let ca_pem: String = self
            .ca_der
            .iter()
            .map(|c| pki::pem_encode("CERTIFICATE", c))
            .collect();
        disk::write_private(&ca, ca_pem.as_bytes()).map_err(werr(&ca))?;
        disk::write_private(&key, pki::pem_encode("PRIVATE KEY", &self.key_pkcs8).as_bytes())
            .map_err(werr(&key))?;
        // The certificate last: its presence says the credential is complete.
        let crt_pem: String = std::iter::once(&self.cert_der)
            .chain(&self.chain_der)
            .map(|c| pki::pem_encode("CERTIFICATE", c))
            .collect();
        disk::write_private(&crt, crt_pem.as_bytes()).map_err(werr(&crt))?;
        Ok(())
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use crate::security::pki::{Ca, CertRole, Key, DEFAULT_CERT_TTL};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_credentials_load_back_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("c1", std::time::SystemTime::now()).unwrap();
        let key = Key::generate().unwrap();
        let cert = ca
            .sign(
                &key.request().unwrap(),
                "c1",
                CertRole::Admin,
                "ops",
                std::time::SystemTime::now(),
                DEFAULT_CERT_TTL,
            )
            .unwrap();
        let cred = Credential {
            cert_der: cert,
            // A chain survives the round trip too.
            chain_der: vec![ca.cert_der.clone()],
            key_pkcs8: key.pkcs8_der().to_vec(),
            ca_der: vec![ca.cert_der.clone()],
        };
        let d = dir.path().join("creds");
        assert!(!Credential::exists(&d, "admin"));
        cred.save(&d, "admin").unwrap();
        assert!(Credential::exists(&d, "admin"));
        assert_eq!(Credential::load(&d, "admin").unwrap(), cred);
        for f in ["admin.crt", "admin.key", "ca.crt"] {
            let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        std::fs::write(d.join("admin.key"), "nothing here").unwrap();
        assert!(matches!(
            Credential::load(&d, "admin"),
            Err(StoreError::Empty { .. })
        ));
        assert!(matches!(
            Credential::load(&d, "node"),
            Err(StoreError::Read { .. })
        ));
    }
}
