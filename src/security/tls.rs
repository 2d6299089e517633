//! mutual TLS on every connection (production build; the simulator's network has no TLS and
//! gets the caller's identity through `security::caller`).
//!
//! - Trust is the cluster CA, not host names: a client accepts a server whose certificate
//!   chains to a trusted CA and names a *manager* of this cluster, whatever address it dialled
//!   (as Swarm does); a server accepts a client certificate that chains to a trusted CA and
//!   names a holder in this cluster, or no certificate at all (a node getting its first one
//!   with a join token). What each caller may then do is `core::authz`'s decision.
//! - Trusted CAs and the own credential can change while connections are open (renewal, CA
//!   rotation): the verifiers and resolvers read them on every handshake.
//! - TLS 1.3 only; Ed25519 keys; ALPN h2.

use super::pki::{self, CertIdentity, CertRole};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad key: {0}")]
    Key(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate, the chain presented after it, and its key (PKCS#8).
pub type OwnCredential<'a> = (&'a [u8], &'a [Vec<u8>], &'a [u8]);

/// What one process trusts and presents.
pub struct Tls {
    cluster_id: String,
    /// CA certificates trusted (two during a CA rotation).
    roots: RwLock<Vec<CertificateDer<'static>>>,
    /// This process's certificate and key; none for a node getting its first certificate.
    own: RwLock<Option<Arc<CertifiedKey>>>,
    /// Accept any server (only to fetch the CA certificate, which the caller then checks
    /// against the fingerprint in its join token; nothing secret is sent on it).
    any_server: bool,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cluster_id", &self.cluster_id)
            .finish()
    }
}

impl Tls {
    pub fn new(
        cluster_id: &str,
        roots: Vec<Vec<u8>>,
        own: Option<OwnCredential<'_>>,
    ) -> Result<Arc<Tls>, TlsError> {
        let tls = Tls {
            cluster_id: cluster_id.to_string(),
            roots: RwLock::new(roots.into_iter().map(CertificateDer::from).collect()),
            own: RwLock::new(None),
            any_server: false,
            provider: provider(),
        };
        if let Some((cert, chain, key)) = own {
            tls.set_own(cert, chain, key)?;
        }
        Ok(Arc::new(tls))
    }

    /// For fetching the CA certificate before anything is trusted.
    pub fn bootstrap() -> Arc<Tls> {
        Arc::new(Tls {
            cluster_id: String::new(),
            roots: RwLock::new(Vec::new()),
            own: RwLock::new(None),
            any_server: true,
            provider: provider(),
        })
    }

    /// Presents `cert_der` (signed for `key_pkcs8`) followed by `chain_der` from the next
    /// handshake on.
    pub fn set_own(&self, cert_der: &[u8], chain_der: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<(), TlsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
        let signer = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let certs = std::iter::once(cert_der)
            .chain(chain_der.iter().map(Vec::as_slice))
            .map(|c| CertificateDer::from(c.to_vec()))
            .collect();
        let ck = CertifiedKey::new(certs, signer);
        *self.own.write().unwrap() = Some(Arc::new(ck));
        Ok(())
    }

    pub fn roots(&self) -> Vec<Vec<u8>> {
        self.roots.read().unwrap().iter().map(|c| c.to_vec()).collect()
    }

    pub fn set_roots(&self, roots: Vec<Vec<u8>>) {
        *self.roots.write().unwrap() = roots.into_iter().map(CertificateDer::from).collect();
    }

    /// Checks `cert` chains to a trusted CA, is valid at `now` for `usage` and names a
    /// holder in this cluster; returns who.
    fn verify(
        &self,
        cert: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<CertIdentity, rustls::Error> {
        let roots = self.roots.read().unwrap().clone();
        let anchors: Vec<_> = roots
            .iter()
            .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
            .collect();
        let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| bad_cert(format!("undecodable: {e}")))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| {
            bad_cert(match e {
                webpki::Error::CertExpired { .. } => "the certificate expired".to_string(),
                webpki::Error::UnknownIssuer => "the certificate is not from this cluster's CA".to_string(),
                other => format!("{other}"),
            })
        })?;
        let who = pki::identity(cert).map_err(|e| bad_cert(e.to_string()))?;
        if who.cluster_id != self.cluster_id {
            return Err(bad_cert(format!(
                "the certificate is for cluster {}",
                who.cluster_id
            )));
        }
        Ok(who)
    }

    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by ring")
            .with_client_cert_verifier(Arc::new(ClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(Own(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }

    pub fn client_config(self: &Arc<Self>) -> Arc<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by ring")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(Own(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }

    fn check_signature13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

fn bad_cert(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(reason),
    ))))
}

#[derive(Debug)]
struct Own(Arc<Tls>);

impl rustls::server::ResolvesServerCert for Own {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.own.read().unwrap().clone()
    }
}

impl rustls::client::ResolvesClientCert for Own {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.own.read().unwrap().clone()
    }
    fn has_certs(&self) -> bool {
        self.0.own.read().unwrap().is_some()
    }
}

/// The handshake-signature checks both verifiers share: TLS 1.3 and Ed25519 only.
macro_rules! tls13_ed25519_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls13RequiredForQuic,
            ))
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.check_signature13(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

#[derive(Debug)]
struct ClientVerifier(Arc<Tls>);

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    /// A node getting its first certificate has none; `core::authz` decides what it may do.
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(end_entity, intermediates, now, webpki::KeyUsage::client_auth())
            .map(|_| ClientCertVerified::assertion())
    }
    tls13_ed25519_signatures!();
}

#[derive(Debug)]
struct ServerVerifier(Arc<Tls>);

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.0.any_server {
            return Ok(ServerCertVerified::assertion());
        }
        let who = self
            .0
            .verify(end_entity, intermediates, now, webpki::KeyUsage::server_auth())?;
        if who.role != CertRole::Manager {
            return Err(bad_cert(format!(
                "the server presents a {} certificate, not a manager's",
                who.role.as_str()
            )));
        }
        Ok(ServerCertVerified::assertion())
    }
    tls13_ed25519_signatures!();
}

/// Who is at the other end of an accepted connection: what `security::caller` reads.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: Option<std::net::SocketAddr>,
    /// The verified client certificate, if the client presented one.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// A connector for tonic's `Endpoint::connect_with_connector`: TCP, then TLS with `tls`.
pub fn connector(
    tls: Arc<Tls>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<Prefixed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |uri: tonic::codegen::http::Uri| {
        let tls = tls.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("no host in address"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
            let mut stream = tokio_rustls::TlsConnector::from(tls.client_config())
                .connect(name, tcp)
                .await?;
            // In TLS 1.3 the server checks our certificate after our side of the handshake
            // is done; its verdict (an alert, or its first bytes) comes with the first read.
            // Waiting for it here makes a refused certificate a clear connect error instead
            // of a call cancelled later with the reason lost.
            let mut first = vec![0u8; 4096];
            let n = match tokio::time::timeout(
                FIRST_BYTES_WAIT,
                tokio::io::AsyncReadExt::read(&mut stream, &mut first),
            )
            .await
            {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e),
                Err(_) => 0,
            };
            first.truncate(n);
            Ok(hyper_util::rt::TokioIo::new(Prefixed {
                prefix: first,
                inner: stream,
            }))
        }
    })
}

/// How long a new connection waits for the server's first bytes (see `connector`).
const FIRST_BYTES_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A stream whose first bytes were already read: they are read again first.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    inner: T,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::pki::{Ca, Key};
    use std::time::{Duration, SystemTime};

    fn issue(ca: &Ca, cluster: &str, role: CertRole, id: &str, ttl: Duration) -> (Vec<u8>, Vec<u8>) {
        let key = Key::generate().unwrap();
        let cert = ca
            .sign(&key.request().unwrap(), cluster, role, id, SystemTime::now(), ttl)
            .unwrap();
        (cert, key.pkcs8_der().to_vec())
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn verification_accepts_this_cluster_and_refuses_the_rest() {
        let ca = Ca::create("c1", SystemTime::now()).unwrap();
        let other = Ca::create("c1", SystemTime::now()).unwrap();
        let tls = Tls::new("c1", vec![ca.cert_der.clone()], None).unwrap();
        let day = Duration::from_secs(86_400);
        let (w, _) = issue(&ca, "c1", CertRole::Worker, "w1", day);
        let who = tls
            .verify(
                &CertificateDer::from(w.clone()),
                &[],
                now(),
                webpki::KeyUsage::client_auth(),
            )
            .unwrap();
        assert_eq!((who.role, who.id.as_str()), (CertRole::Worker, "w1"));
        // Another CA (even one for the same cluster id), another cluster, an expired one.
        let (foreign, _) = issue(&other, "c1", CertRole::Worker, "w1", day);
        let (elsewhere, _) = issue(&ca, "c2", CertRole::Worker, "w1", day);
        let (old, _) = issue(&ca, "c1", CertRole::Worker, "w1", Duration::from_secs(1));
        let later = UnixTime::since_unix_epoch(
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap() + Duration::from_secs(60),
        );
        for (what, cert, at) in [
            ("foreign", foreign, now()),
            ("elsewhere", elsewhere, now()),
            ("expired", old, later),
        ] {
            let e = tls
                .verify(
                    &CertificateDer::from(cert),
                    &[],
                    at,
                    webpki::KeyUsage::client_auth(),
                )
                .unwrap_err();
            eprintln!("{what}: {e}");
        }
        // After a rotation both CAs are trusted.
        tls.set_roots(vec![ca.cert_der.clone(), other.cert_der.clone()]);
        let (foreign, _) = issue(&other, "c1", CertRole::Worker, "w1", day);
        assert!(tls
            .verify(
                &CertificateDer::from(foreign),
                &[],
                now(),
                webpki::KeyUsage::client_auth()
            )
            .is_ok());
    }

    #[test]
    fn during_a_ca_rotation_the_cross_signed_ca_bridges_old_and_new_trust() {
        let old = Ca::create("c1", SystemTime::now()).unwrap();
        let (new, cross) = Ca::create_successor(&old, "c1", SystemTime::now()).unwrap();
        assert_ne!(new.fingerprint_hex(), old.fingerprint_hex());
        let day = Duration::from_secs(86_400);
        let (leaf_new, _) = issue(&new, "c1", CertRole::Manager, "1", day);
        let (leaf_old, _) = issue(&old, "c1", CertRole::Worker, "w1", day);
        assert!(pki::issued_by(&leaf_new, &new.cert_der) && !pki::issued_by(&leaf_new, &old.cert_der));
        assert!(pki::issued_by(&leaf_old, &old.cert_der));
        let chain = [CertificateDer::from(cross.clone())];
        let verify = |roots: Vec<Vec<u8>>, leaf: &[u8], chain: &[CertificateDer<'_>]| {
            Tls::new("c1", roots, None)
                .unwrap()
                .verify(
                    &CertificateDer::from(leaf.to_vec()),
                    chain,
                    now(),
                    webpki::KeyUsage::server_auth(),
                )
                .is_ok()
        };
        // A node that still trusts only the old CA accepts the new one's certificate
        // through the cross-signed CA, and only with it.
        assert!(verify(vec![old.cert_der.clone()], &leaf_new, &chain));
        assert!(!verify(vec![old.cert_der.clone()], &leaf_new, &[]));
        // A node that trusts both accepts both; one that trusts only the new CA (after the
        // rotation) accepts the new certificates, with or without the chain, and not the old.
        let both = vec![new.cert_der.clone(), old.cert_der.clone()];
        assert!(verify(both.clone(), &leaf_new, &chain) && verify(both, &leaf_old, &[]));
        assert!(verify(vec![new.cert_der.clone()], &leaf_new, &chain));
        assert!(verify(vec![new.cert_der.clone()], &leaf_new, &[]));
        assert!(!verify(vec![new.cert_der.clone()], &leaf_old, &[]));
    }

    /// A real handshake over a socket pair: a worker client reaches a manager server; a
    /// server presenting a worker certificate is refused by the client.
    #[tokio::test]
    async fn handshakes_need_a_manager_on_the_server_side() {
        let ca = Ca::create("c1", SystemTime::now()).unwrap();
        let day = Duration::from_secs(86_400);
        let (m, mk) = issue(&ca, "c1", CertRole::Manager, "1", day);
        let (w, wk) = issue(&ca, "c1", CertRole::Worker, "w1", day);
        for (server_cert, server_key, want_ok) in [(&m, &mk, true), (&w, &wk, false)] {
            let server = Tls::new(
                "c1",
                vec![ca.cert_der.clone()],
                Some((server_cert, &[][..], server_key)),
            )
            .unwrap();
            let client = Tls::new("c1", vec![ca.cert_der.clone()], Some((&w, &[][..], &wk))).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
            let srv = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                acceptor
                    .accept(tcp)
                    .await
                    .map(|s| s.get_ref().1.peer_certificates().map(|c| c.len()))
            });
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let r = tokio_rustls::TlsConnector::from(client.client_config())
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await;
            assert_eq!(r.is_ok(), want_ok, "{r:?}");
            if want_ok {
                assert_eq!(
                    srv.await.unwrap().unwrap(),
                    Some(1),
                    "the server saw the client's certificate"
                );
            }
        }
    }
}
