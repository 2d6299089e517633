//! A manager's credential (`DATA_DIR/tls/node.*`): made with a new cluster CA at `cluster
//! init` (with the first operator credential in `DATA_DIR/admin/`), got with a join token
//! at `manager join`, loaded on every later start.

use super::Identity;
use crate::core::limits::{MAX_CERT_TTL_MS, MIN_CERT_TTL_MS};
use crate::raft::disk;
use crate::security::pki::{self, Ca, CertRole, Key, DEFAULT_CERT_TTL};
use crate::security::store::Credential;
use anyhow::{anyhow, Context};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const TLS_DIR: &str = "tls";
pub const ADMIN_DIR: &str = "admin";
/// The new CA's key, kept only until the first leader has put the CA in the replicated state,
/// and the node certificate lifetime chosen at init.
const INIT_CA_KEY: &str = "init-ca.key";
const INIT_CERT_TTL: &str = "init-cert-ttl";

pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR)
}

pub fn admin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_DIR)
}

fn sign_new(
    ca: &Ca,
    trust: &Trust,
    cluster_id: &str,
    role: CertRole,
    id: &str,
    ttl: Duration,
) -> anyhow::Result<Credential> {
    let key = Key::generate()?;
    let cert = ca.sign(&key.request()?, cluster_id, role, id, crate::clock::now(), ttl)?;
    Ok(Credential {
        cert_der: cert,
        chain_der: trust.chain_der.clone(),
        key_pkcs8: key.pkcs8_der().to_vec(),
        ca_der: trust.ca_der.clone(),
    })
}

/// What a new certificate is presented with and what its holder trusts.
struct Trust {
    /// The CAs to trust, the signing one first.
    ca_der: Vec<Vec<u8>>,
    /// The signing CA cross-signed by the old one, during a CA rotation.
    chain_der: Vec<Vec<u8>>,
}

/// `cluster init`: the cluster CA, this manager's credential and the first operator
/// credential (`DATA_DIR/admin`). Done once; a restart of an init finds them.
pub fn create_at_init(
    data_dir: &Path,
    identity: &Identity,
    cert_ttl: Duration,
) -> anyhow::Result<Credential> {
    if Credential::exists(&tls_dir(data_dir), "node") {
        return load(data_dir);
    }
    let ttl_ms = cert_ttl.as_millis() as i64;
    if !(MIN_CERT_TTL_MS..=MAX_CERT_TTL_MS).contains(&ttl_ms) {
        anyhow::bail!(
            "--cert-ttl {} is out of range: use 10s to 365d",
            humantime::format_duration(cert_ttl)
        );
    }
    let ca = Ca::create(&identity.cluster_id, crate::clock::now())?;
    let trust = Trust {
        ca_der: vec![ca.cert_der.clone()],
        chain_der: Vec::new(),
    };
    issue_first(data_dir, identity, &ca, &trust, ttl_ms)
}

/// `cluster init --restore`: this manager's credential and an operator credential, signed
/// by the backed-up cluster's CA, so that its workers and operators keep theirs.
pub fn create_at_restore(
    data_dir: &Path,
    identity: &Identity,
    pki: &crate::core::state::Pki,
) -> anyhow::Result<Credential> {
    if Credential::exists(&tls_dir(data_dir), "node") {
        return load(data_dir);
    }
    let ca = Ca::load(&pki.ca_cert_der, &pki.ca_key_pkcs8)
        .context("the CA in the backup is unusable; use another backup")?;
    let ttl_ms = if pki.cert_ttl_ms > 0 {
        pki.cert_ttl_ms
    } else {
        DEFAULT_CERT_TTL.as_millis() as i64
    };
    let trust = Trust {
        ca_der: pki.trusted(),
        chain_der: pki.chain(),
    };
    issue_first(data_dir, identity, &ca, &trust, ttl_ms)
}

/// The CA key file (until the CA and the certificates below are in the replicated state),
/// this manager's credential and the operator credential.
fn issue_first(
    data_dir: &Path,
    identity: &Identity,
    ca: &Ca,
    trust: &Trust,
    ttl_ms: i64,
) -> anyhow::Result<Credential> {
    let dir = tls_dir(data_dir);
    disk::create_private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    disk::write_private(
        &dir.join(INIT_CA_KEY),
        pki::pem_encode("PRIVATE KEY", ca.key_pkcs8()).as_bytes(),
    )
    .with_context(|| format!("cannot write {}", dir.join(INIT_CA_KEY).display()))?;
    disk::write_private(&dir.join(INIT_CERT_TTL), ttl_ms.to_string().as_bytes())
        .with_context(|| format!("cannot write {}", dir.join(INIT_CERT_TTL).display()))?;
    let admin = sign_new(
        ca,
        trust,
        &identity.cluster_id,
        CertRole::Admin,
        "admin",
        DEFAULT_CERT_TTL,
    )?;
    admin.save(&admin_dir(data_dir), "admin")?;
    let own = sign_new(
        ca,
        trust,
        &identity.cluster_id,
        CertRole::Manager,
        &identity.node_id.to_string(),
        Duration::from_millis(ttl_ms as u64),
    )?;
    own.save(&dir, "node")?;
    tracing::info!(
        dir = %admin_dir(data_dir).display(),
        "operator credential written; use it with `export WARREN_TLS_DIR={}` or `--tls-dir`",
        admin_dir(data_dir).display()
    );
    Ok(own)
}

/// What `cluster init` left for the first leader to replicate: the CA (certificate and
/// key) and the certificates it signed at init (holder, serial, expiry in ms).
pub struct PendingCa {
    pub cert_der: Vec<u8>,
    pub key_pkcs8: Vec<u8>,
    pub cert_ttl_ms: i64,
    pub issued: Vec<(String, String, i64)>,
}

pub fn pending_ca(data_dir: &Path) -> anyhow::Result<Option<PendingCa>> {
    let dir = tls_dir(data_dir);
    let Some(key_pem) = disk::read_durable(&dir.join(INIT_CA_KEY))? else {
        return Ok(None);
    };
    let key_pkcs8 = pki::pem_blocks(&String::from_utf8_lossy(&key_pem), "PRIVATE KEY")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} is damaged", dir.join(INIT_CA_KEY).display()))?;
    let own = Credential::load(&dir, "node")?;
    let mut issued = Vec::new();
    for cred in [&own, &Credential::load(&admin_dir(data_dir), "admin")?] {
        let who = cred.identity()?;
        let not_after_ms = who
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        issued.push((
            crate::core::state::holder(who.role.as_str(), &who.id),
            who.serial_hex,
            not_after_ms,
        ));
    }
    let cert_ttl_ms = disk::read_durable(&dir.join(INIT_CERT_TTL))?
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
        .unwrap_or(DEFAULT_CERT_TTL.as_millis() as i64);
    Ok(Some(PendingCa {
        cert_der: own.ca_der[0].clone(),
        key_pkcs8,
        cert_ttl_ms,
        issued,
    }))
}

/// The CA is in the replicated state: its key file goes.
pub fn pending_ca_done(data_dir: &Path) -> std::io::Result<()> {
    disk::remove(&tls_dir(data_dir).join(INIT_CA_KEY))?;
    disk::remove(&tls_dir(data_dir).join(INIT_CERT_TTL))
}

pub fn load(data_dir: &Path) -> anyhow::Result<Credential> {
    let dir = tls_dir(data_dir);
    if !Credential::exists(&dir, "node") {
        anyhow::bail!(
            "data dir {} has no TLS credential ({}/node.crt): it was made by a Warren without TLS, or the file was removed; remove this manager (`warren manager remove ID`) and join it again with a new token",
            data_dir.display(),
            dir.display()
        );
    }
    Ok(Credential::load(&dir, "node")?)
}

/// Tells the renewal task what CAs the replicated state trusts, whenever that changes (a CA
/// rotation starting or completing), until `stop`.
pub async fn follow_trust(
    m: super::ManagerRef,
    tx: tokio::sync::watch::Sender<crate::security::renew::TrustView>,
    stop: super::changes::Stop,
) {
    loop {
        let seen = m.changes.version();
        let trusted = m.state.read().unwrap().state.pki.trusted();
        if !trusted.is_empty() {
            tx.send_if_modified(|v| {
                let changed = *v != trusted;
                if changed {
                    *v = trusted;
                }
                changed
            });
        }
        tokio::select! {
            biased;
            _ = stop.wait() => return,
            r = m.changes.after(seen) => if r.is_none() { return },
        }
    }
}
