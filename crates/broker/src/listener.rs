//! The accept loops, one per transport (MQTT over TCP, TLS, WebSocket, secure
//! WebSocket): one tracked task per connection, which does the transport's handshakes
//! and then runs the same `connection::serve` as every other transport. Stopped by
//! `shutdown`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::TransportKind;
use crate::connection::Peer;
use crate::stats::Stats;
use crate::tls::Tls;
use crate::{BindError, Shared, connection, ws};

/// How clients speak to a listener.
#[derive(Clone)]
pub(crate) enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls(Arc<Tls>),
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss(Arc<Tls>),
}

impl Transport {
    /// Its kind, as the authenticator sees it.
    fn kind(&self) -> TransportKind {
        match self {
            Self::Tcp => TransportKind::Tcp,
            Self::Tls(_) => TransportKind::Tls,
            Self::Ws => TransportKind::Ws,
            Self::Wss(_) => TransportKind::Wss,
        }
    }

    /// What it is called in error messages.
    fn name(&self) -> &'static str {
        match self {
            Self::Tcp => "MQTT",
            Self::Tls(_) => "MQTT over TLS",
            Self::Ws => "MQTT over WebSocket",
            Self::Wss(_) => "MQTT over secure WebSocket",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "mqtt",
            Self::Tls(_) => "mqtts",
            Self::Ws => "ws",
            Self::Wss(_) => "wss",
        })
    }
}

/// A bound listener and its transport.
pub(crate) struct Listener {
    pub(crate) transport: Transport,
    tcp: TcpListener,
    pub(crate) local_addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` for `transport`.
    ///
    /// # Errors
    ///
    /// [`BindError::Listen`] when the address cannot be bound.
    pub(crate) async fn bind(transport: Transport, addr: SocketAddr) -> Result<Self, BindError> {
        let err = |source| BindError::Listen { transport: transport.name(), addr, source };
        let tcp = TcpListener::bind(addr).await.map_err(err)?;
        let local_addr = tcp.local_addr().map_err(err)?;
        Ok(Self { transport, tcp, local_addr })
    }
}

/// Accepts until `shutdown` is cancelled. Accept errors (e.g. out of file descriptors)
/// are logged and retried after a short pause instead of ending the listener. A socket
/// the authenticator does not `accept` is closed at once, before any handshake.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: Listener, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.tcp.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                if !shared.auth.accept(peer) {
                    Stats::add(&shared.stats.connections_refused, 1);
                    debug!(%peer, transport = %listener.transport, "connection refused by the authenticator");
                    drop(stream);
                    continue;
                }
                // NODELAY keeps latency low; the writer already coalesces packets into
                // one write per wake-up, so Nagle would only add delay.
                let _ = stream.set_nodelay(true);
                let shared2 = Arc::clone(&shared);
                let transport = listener.transport.clone();
                shared.tasks.spawn(open(shared2, transport, stream, peer, shutdown.child_token()));
            }
            Err(e) => {
                warn!(transport = %listener.transport, error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Does the handshakes of `transport` on a new connection, then serves it.
///
/// `connect_timeout` covers everything up to CONNECT: the TLS and WebSocket handshakes
/// and the CONNECT packet share one deadline, so a client cannot stretch it by being
/// slow at each step.
async fn open(
    shared: Arc<Shared>,
    transport: Transport,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    let deadline = Instant::now() + shared.config.connect_timeout;
    let transport = &transport;
    // a WebSocket message may carry several packets: room for two of the largest
    let max_message = (shared.config.max_packet_size as usize).saturating_mul(2).max(64 * 1024);
    macro_rules! handshake {
        ($what:literal, $step:expr) => {
            match step(&cancel, deadline, $step).await {
                Ok(s) => s,
                Err(error) => {
                    debug!(%peer, %transport, error = %error, concat!($what, " handshake failed"));
                    return;
                }
            }
        };
    }
    let mut client = Peer { addr: peer, transport: transport.kind(), cert_sha256: None };
    // The task's future is as big as its biggest arm: the TLS and WebSocket ones (their
    // handshakes and streams, about 18 KB) are boxed, so that an idle TCP connection
    // does not carry them.
    match transport {
        Transport::Tcp => connection::serve(shared, stream.into_split(), client, deadline, cancel).await,
        Transport::Tls(tls) => {
            Box::pin(async move {
                let stream = handshake!("TLS", tls.acceptor().accept(stream));
                client.cert_sha256 = cert_sha256(&stream);
                connection::serve(shared, tokio::io::split(stream), client, deadline, cancel).await;
            })
            .await;
        }
        Transport::Ws => {
            Box::pin(async move {
                let stream = handshake!("WebSocket", ws::accept(stream, max_message));
                connection::serve(shared, tokio::io::split(stream), client, deadline, cancel).await;
            })
            .await;
        }
        Transport::Wss(tls) => {
            Box::pin(async move {
                let stream = handshake!("TLS", tls.acceptor().accept(stream));
                client.cert_sha256 = cert_sha256(&stream);
                let stream = handshake!("WebSocket", ws::accept(stream, max_message));
                connection::serve(shared, tokio::io::split(stream), client, deadline, cancel).await;
            })
            .await;
        }
    }
}

/// SHA-256 of the DER of the client's certificate (the first of the chain it sent,
/// which the handshake verified against the client CA), if it sent one.
fn cert_sha256(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<[u8; 32]> {
    let cert = stream.get_ref().1.peer_certificates()?.first()?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    digest.as_ref().try_into().ok()
}

/// Runs one handshake step until `deadline`, or until `cancel`.
async fn step<T, E: fmt::Display>(
    cancel: &CancellationToken,
    deadline: Instant,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    tokio::select! {
        _ = cancel.cancelled() => Err("server shutting down".to_owned()),
        r = tokio::time::timeout_at(deadline, step) => match r {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timeout".to_owned()),
        },
    }
}
