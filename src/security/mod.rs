//! Who is calling: the cluster's certificates (`pki`), credentials on disk (`store`), and the
//! transport that carries them.
//!
//! The seam between the two builds is here and nowhere else:
//! - production: every connection is mutual TLS (`tls`); the caller is the verified client
//!   certificate of the connection the request came on;
//! - simulator (madsim has no TLS): a simulated host publishes the certificate of the
//!   credential it holds (`sim_seam`), and the caller is the certificate the host at the
//!   request's source address published, checked against the trusted CAs the same way.
//!
//! Either way `core::authz` decides what the caller may do.

pub mod enroll;
pub mod pki;
pub mod renew;
pub mod rotate;
pub mod store;
#[cfg(not(madsim))]
pub mod tls;

#[cfg(madsim)]
pub mod sim_seam;

use crate::core::authz::Caller;
use pki::CertRole;

/// How many parsed certificates `caller_from_cert` remembers.
const CALLER_MEMO_ENTRIES: usize = 256;

/// Certificates already parsed, by their bytes: every request names its caller, and parsing
/// the same certificate again on each one showed in the profile. A pure memo (the answer is
/// a function of the bytes), cleared whole when full.
static CALLER_MEMO: std::sync::Mutex<std::collections::BTreeMap<Vec<u8>, Caller>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The caller that `cert_der` (already verified) names.
pub fn caller_from_cert(cert_der: &[u8]) -> Caller {
    if let Some(c) = CALLER_MEMO.lock().expect("caller memo lock").get(cert_der) {
        return c.clone();
    }
    let caller = parse_caller(cert_der);
    let mut memo = CALLER_MEMO.lock().expect("caller memo lock");
    if memo.len() >= CALLER_MEMO_ENTRIES {
        memo.clear();
    }
    memo.insert(cert_der.to_vec(), caller.clone());
    caller
}

fn parse_caller(cert_der: &[u8]) -> Caller {
    let Ok(who) = pki::identity(cert_der) else {
        return Caller::Anonymous;
    };
    let expires_ms = who
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match who.role {
        CertRole::Admin => Caller::Admin {
            name: who.id,
            serial_hex: who.serial_hex,
            expires_ms,
        },
        CertRole::Worker => Caller::Worker {
            node_id: who.id,
            serial_hex: who.serial_hex,
            expires_ms,
        },
        CertRole::Manager => match who.id.parse() {
            Ok(id) => Caller::Manager {
                id,
                serial_hex: who.serial_hex,
                expires_ms,
            },
            Err(_) => Caller::Anonymous,
        },
    }
}

/// Who sent `req`.
#[cfg(not(madsim))]
pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions()
        .get::<tls::PeerInfo>()
        .and_then(|p| p.client_cert.as_ref())
        .map_or(Caller::Anonymous, |c| caller_from_cert(c))
}

#[cfg(madsim)]
pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.remote_addr()
        .and_then(|a| sim_seam::credential_of(a.ip()))
        .map_or(Caller::Anonymous, |c| caller_from_cert(&c))
}

/// Who sent `req`, and may they call `rpc` about `target`? (`core::authz` decides; the
/// revoked serials come from the replicated state.)
pub fn check<T>(
    req: &tonic::Request<T>,
    rpc: crate::core::authz::Rpc,
    target: crate::core::authz::Target<'_>,
    revoked: impl Fn(&str) -> bool,
) -> Result<Caller, crate::core::authz::Denied> {
    let who = caller(req);
    check_caller(&who, rpc, target, revoked)?;
    Ok(who)
}

/// `check` for a caller already known (a stream's later messages: a connection may outlive
/// its certificate or see it revoked).
pub fn check_caller(
    who: &Caller,
    rpc: crate::core::authz::Rpc,
    target: crate::core::authz::Target<'_>,
    revoked: impl Fn(&str) -> bool,
) -> Result<(), crate::core::authz::Denied> {
    #[cfg(madsim)]
    if !sim_seam::enforced() {
        return Ok(());
    }
    crate::core::authz::authorize(who, rpc, target, crate::manager::now_ms(), revoked)
}

/// Where the operator credential is: `--tls-dir`, `WARREN_TLS_DIR`, else `~/.warren`.
pub fn operator_dir(dir: Option<&std::path::Path>) -> std::path::PathBuf {
    match dir
        .map(|d| d.as_os_str().to_owned())
        .or_else(|| std::env::var_os("WARREN_TLS_DIR"))
    {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(".warren"))
            .unwrap_or_else(|| std::path::PathBuf::from(".warren")),
    }
}

/// The operator credential (see `operator_dir`).
pub fn operator_credential(
    dir: Option<&std::path::Path>,
) -> anyhow::Result<crate::security::store::Credential> {
    use crate::security::store::Credential;
    let dir = operator_dir(dir);
    if !Credential::exists(&dir, "admin") {
        anyhow::bail!(
            "no operator credential in {} (admin.crt): pass --tls-dir DIR or set WARREN_TLS_DIR to the directory `cluster init` printed (DATA_DIR/admin on the first manager), or to one made with `warren cluster admin-cert --out DIR`",
            dir.display()
        );
    }
    use anyhow::Context;
    let cred = Credential::load(&dir, "admin")
        .with_context(|| format!("reading the operator credential in {}", dir.display()))?;
    let who = cred.identity()?;
    if who.not_after <= crate::clock::now() {
        anyhow::bail!(
            "the operator credential in {} ({}) expired at {}; an operator with a valid one can issue a new one with `warren cluster admin-cert --out DIR`",
            dir.display(),
            who.id,
            humantime::format_rfc3339_seconds(who.not_after)
        );
    }
    Ok(cred)
}

/// How this process connects and serves: its credential and the CAs it trusts.
#[derive(Clone, Debug)]
pub struct Transport {
    #[cfg(not(madsim))]
    tls: std::sync::Arc<tls::Tls>,
    #[cfg(madsim)]
    sim: std::sync::Arc<sim_seam::SimTls>,
    /// Bumped when the credential or the trusted CAs change: connections opened before
    /// speak for the old ones, so channel caches reconnect (`generation`).
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the credential's certificate is not usable: {0}")]
    Cert(#[from] pki::PkiError),
    #[cfg(not(madsim))]
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

impl Transport {
    /// Presents `cred` and trusts its CAs.
    pub fn new(cred: &store::Credential) -> Result<Transport, TransportError> {
        let cluster_id = cred.identity()?.cluster_id;
        Self::trusting(&cluster_id, cred.ca_der.clone(), Some(cred))
    }

    /// Trusts `roots` for `cluster_id`, presenting `cred` if given (a node without a
    /// certificate yet presents none).
    pub fn trusting(
        cluster_id: &str,
        roots: Vec<Vec<u8>>,
        cred: Option<&store::Credential>,
    ) -> Result<Transport, TransportError> {
        #[cfg(not(madsim))]
        {
            let own = cred.map(|c| {
                (
                    c.cert_der.as_slice(),
                    c.chain_der.as_slice(),
                    c.key_pkcs8.as_slice(),
                )
            });
            Ok(Transport {
                tls: tls::Tls::new(cluster_id, roots, own)?,
                generation: Default::default(),
            })
        }
        #[cfg(madsim)]
        {
            Ok(Transport {
                sim: sim_seam::SimTls::new(cluster_id, roots, cred.map(|c| c.cert_der.clone())),
                generation: Default::default(),
            })
        }
    }

    /// Trusts any server: only to fetch the CA certificate, which the caller checks
    /// against its join token before it sends anything else.
    pub fn bootstrap() -> Transport {
        #[cfg(not(madsim))]
        {
            Transport {
                tls: tls::Tls::bootstrap(),
                generation: Default::default(),
            }
        }
        #[cfg(madsim)]
        {
            Transport {
                sim: sim_seam::SimTls::new("", Vec::new(), None),
                generation: Default::default(),
            }
        }
    }

    /// Presents a new certificate from now on (renewal).
    pub fn set_own(&self, cred: &store::Credential) -> Result<(), TransportError> {
        #[cfg(not(madsim))]
        self.tls
            .set_own(&cred.cert_der, &cred.chain_der, &cred.key_pkcs8)?;
        #[cfg(madsim)]
        self.sim.set_own(cred.cert_der.clone());
        self.bump();
        Ok(())
    }

    /// Trusts `roots` from now on (a CA rotation).
    pub fn set_roots(&self, roots: Vec<Vec<u8>>) {
        #[cfg(not(madsim))]
        self.tls.set_roots(roots);
        #[cfg(madsim)]
        {
            *self.sim.roots.write().unwrap() = roots;
        }
        self.bump();
    }

    /// The CAs trusted now.
    pub fn roots(&self) -> Vec<Vec<u8>> {
        #[cfg(not(madsim))]
        return self.tls.roots();
        #[cfg(madsim)]
        return self.sim.roots.read().unwrap().clone();
    }

    fn bump(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Changes when what a new connection presents or trusts changes: a channel opened at
    /// another generation should be replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Opens a channel to `ep` (TLS in production).
    pub async fn connect(
        &self,
        ep: &tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        #[cfg(not(madsim))]
        {
            ep.connect_with_connector(tls::connector(self.tls.clone())).await
        }
        #[cfg(madsim)]
        {
            self.sim.publish();
            ep.connect().await
        }
    }

    /// A channel to `ep` opened on first use.
    pub fn connect_lazy(&self, ep: &tonic::transport::Endpoint) -> tonic::transport::Channel {
        #[cfg(not(madsim))]
        {
            ep.connect_with_connector_lazy(tls::connector(self.tls.clone()))
        }
        #[cfg(madsim)]
        {
            self.sim.publish();
            ep.connect_lazy()
        }
    }

    #[cfg(not(madsim))]
    pub fn tls(&self) -> &std::sync::Arc<tls::Tls> {
        &self.tls
    }

    #[cfg(madsim)]
    pub fn sim(&self) -> &std::sync::Arc<sim_seam::SimTls> {
        &self.sim
    }
}
