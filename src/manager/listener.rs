//! How the managers' gRPC servers take connections: HTTP/2 keep-alive (a silent peer is
//! dropped), TCP keep-alive, and in the production build mutual TLS (`security::tls`), a cap
//! on open connections and deadlines for the TLS handshake and the HTTP/2 preface, so a
//! thousand sockets that never speak cannot hold the manager's file descriptors for ever.
//! The simulator's network has no sockets to guard and no TLS (see `security`).

#[cfg(not(madsim))]
use crate::core::limits::{HANDSHAKE_TIMEOUT_MS, MAX_API_CONNECTIONS};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::server::Router;
use tonic::transport::Server;

/// HTTP/2 pings every this long on an idle connection...
pub const KEEPALIVE_INTERVAL_MS: u64 = 10_000;
/// ...and a connection whose peer does not answer one within this long is closed.
pub const KEEPALIVE_TIMEOUT_MS: u64 = 10_000;

pub fn builder() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_millis(KEEPALIVE_INTERVAL_MS)))
        .http2_keepalive_timeout(Some(Duration::from_millis(KEEPALIVE_TIMEOUT_MS)))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .max_concurrent_streams(crate::core::limits::MAX_STREAMS_PER_CONNECTION)
}

#[cfg(madsim)]
pub async fn serve(
    router: Router,
    addr: SocketAddr,
    stop: impl Future<Output = ()>,
    _transport: &crate::security::Transport,
) -> Result<(), tonic::transport::Error> {
    router.serve_with_shutdown(addr, stop).await
}

#[cfg(not(madsim))]
pub async fn serve(
    router: Router,
    addr: SocketAddr,
    stop: impl Future<Output = ()>,
    transport: &crate::security::Transport,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let cap = connection_cap();
    let reserved = crate::core::limits::reserved_connections(cap);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap - reserved));
    // Taken only when `slots` are all in use, and kept only by operators and managers.
    let kept = std::sync::Arc::new(tokio::sync::Semaphore::new(reserved));
    let acceptor = tokio_rustls::TlsAcceptor::from(transport.tls().server_config());
    // Handshakes run beside each other, so one slow client holds up nobody else.
    let (tx, rx) = tokio::sync::mpsc::channel::<guarded::Conn>(64);
    let accept_loop = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((io, peer)) => match slots
                    .clone()
                    .try_acquire_owned()
                    .map(|p| (p, false))
                    .or_else(|_| kept.clone().try_acquire_owned().map(|p| (p, true)))
                {
                    Ok((permit, from_reserve)) => {
                        let _ = io.set_nodelay(true);
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            let deadline = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
                            match tokio::time::timeout(deadline, acceptor.accept(io)).await {
                                Ok(Ok(tls)) => {
                                    let conn = guarded::Guarded::new(tls, permit, peer, deadline);
                                    if from_reserve && !conn.may_hold_reserved() {
                                        refused::note(
                                            peer,
                                            "too many open connections; the rest are kept for operators and managers",
                                        );
                                        return;
                                    }
                                    let _ = tx.send(conn).await;
                                }
                                Ok(Err(e)) => refused::note(peer, &e.to_string()),
                                Err(_) => refused::note(peer, "TLS handshake timed out"),
                            }
                        });
                    }
                    Err(_) => {
                        tracing::warn!(%peer, limit = cap, reserved, "connection refused: too many open connections");
                    }
                },
                Err(e) => {
                    // Out of file descriptors, say: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let incoming = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok::<_, std::io::Error>(c), rx))
    });
    let r = router.serve_with_incoming_shutdown(incoming, stop).await;
    accept_loop.abort();
    r?;
    Ok(())
}

/// Refused handshakes, in the log at most once a second (a scan must not flood it), each
/// line saying how many more were refused meanwhile.
#[cfg(not(madsim))]
mod refused {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    static QUIET: AtomicU64 = AtomicU64::new(0);

    pub fn note(peer: std::net::SocketAddr, reason: &str) {
        let mut last = LAST.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
            QUIET.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(std::time::Instant::now());
        let more = QUIET.swap(0, Ordering::Relaxed);
        tracing::info!(%peer, reason, refused_since_last_line = more, "TLS connection refused");
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Go programs (etcd,
/// Nomad) do at start: distributions leave the soft limit at 1,024, which would cap a
/// manager at 256 connections (`connection_cap`). Returns (before, after).
#[cfg(not(madsim))]
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, soft.max(hard)))
}

/// The simulator has no file descriptors.
#[cfg(madsim)]
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    Ok((0, 0))
}

/// Open connections one server takes: `MAX_API_CONNECTIONS`, or a quarter of the process's
/// file descriptor limit if that is lower (two servers, the Raft peers, the database and
/// new connections need the rest).
#[cfg(not(madsim))]
pub fn connection_cap() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    MAX_API_CONNECTIONS.min((soft / 4).max(16) as usize)
}

#[cfg(not(madsim))]
mod guarded {
    use crate::security::tls::PeerInfo;
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;
    use tonic::transport::server::Connected;

    /// The HTTP/2 client preface is 24 bytes.
    const PREFACE_BYTES: usize = 24;

    pub type Conn = Guarded<tokio_rustls::server::TlsStream<TcpStream>>;

    /// A connection holding one of the server's connection slots, closed with an error if
    /// its first 24 bytes do not arrive within the handshake deadline.
    pub struct Guarded<T> {
        io: T,
        peer: PeerInfo,
        _slot: tokio::sync::OwnedSemaphorePermit,
        handshake: Option<Pin<Box<tokio::time::Sleep>>>,
        read: usize,
    }

    impl Conn {
        pub fn new(
            io: tokio_rustls::server::TlsStream<TcpStream>,
            slot: tokio::sync::OwnedSemaphorePermit,
            remote: std::net::SocketAddr,
            deadline: Duration,
        ) -> Self {
            let client_cert = io
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            Guarded {
                io,
                peer: PeerInfo {
                    remote_addr: Some(remote),
                    client_cert,
                },
                _slot: slot,
                handshake: Some(Box::pin(tokio::time::sleep(deadline))),
                read: 0,
            }
        }
    }

    impl Conn {
        /// Whether its client may take one of the connections kept for operators and
        /// managers (`core::authz::may_hold_reserved_connection`).
        pub fn may_hold_reserved(&self) -> bool {
            let caller = self
                .peer
                .client_cert
                .as_ref()
                .map_or(crate::core::authz::Caller::Anonymous, |c| {
                    crate::security::caller_from_cert(c)
                });
            crate::core::authz::may_hold_reserved_connection(&caller)
        }
    }

    impl Connected for Conn {
        type ConnectInfo = PeerInfo;
        fn connect_info(&self) -> PeerInfo {
            self.peer.clone()
        }
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            let res = Pin::new(&mut self.io).poll_read(cx, buf);
            self.read += buf.filled().len() - before;
            if self.read >= PREFACE_BYTES {
                self.handshake = None;
            } else if let Some(h) = self.handshake.as_mut() {
                if res.is_pending() && h.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake deadline",
                    )));
                }
            }
            res
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }
    }
}
