//! Credentials on disk: `NAME.crt` (the certificate), `NAME.key` (its private key, PKCS#8)
//! and `ca.crt` (the trusted CA certificates), PEM, mode 0600, each written to a temporary
//! file, fsynced and renamed into place so a crash leaves the old or the new file, never half
//! of one. `NAME` is `node` in a node's data dir (`DATA_DIR/tls/`) and `admin` in an
//! operator's credential directory.

use super::pki::{self, CertIdentity};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub cert_der: Vec<u8>,
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
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")), dir.join("ca.crt"))
}

impl Credential {
    pub fn identity(&self) -> Result<CertIdentity, pki::PkiError> {
        pki::identity(&self.cert_der)
    }

    /// Is there a credential called `name` in `dir`?
    pub fn exists(dir: &Path, name: &str) -> bool {
        paths(dir, name).0.exists()
    }

    pub fn load(dir: &Path, name: &str) -> Result<Credential, StoreError> {
        let (crt, key, ca) = paths(dir, name);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| StoreError::Read {
                path: p.display().to_string(),
                source,
            })
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
        let cred = Credential {
            cert_der: first(&crt, "CERTIFICATE", "certificate")?.remove(0),
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
        std::fs::create_dir_all(dir).map_err(werr(dir))?;
        set_mode(dir, 0o700).map_err(werr(dir))?;
        let ca_pem: String = self.ca_der.iter().map(|c| pki::pem_encode("CERTIFICATE", c)).collect();
        write_private(&ca, ca_pem.as_bytes()).map_err(werr(&ca))?;
        write_private(&key, pki::pem_encode("PRIVATE KEY", &self.key_pkcs8).as_bytes()).map_err(werr(&key))?;
        // The certificate last: its presence says the credential is complete.
        write_private(&crt, pki::pem_encode("CERTIFICATE", &self.cert_der).as_bytes()).map_err(werr(&crt))?;
        Ok(())
    }
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_p: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Writes `data` to `path` with mode 0600: temporary file, fsync, rename, fsync the directory.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        set_mode(&tmp, 0o600)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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
        assert!(matches!(Credential::load(&d, "admin"), Err(StoreError::Empty { .. })));
        assert!(matches!(Credential::load(&d, "node"), Err(StoreError::Read { .. })));
    }
}
