//! [`Transport`]: how a test client reaches the broker (TCP, TLS, WebSocket, secure
//! WebSocket), and the client side of each handshake. Written against rustls and
//! tungstenite directly, sharing no code with the broker's transports.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt as _};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

/// A WebSocket message, for [`crate::RawClient::send_ws`].
pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How a test client speaks to the broker.
#[derive(Clone)]
pub enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS with this client config (which CA it trusts, which certificate it
    /// presents).
    Tls(Arc<ClientConfig>),
    /// MQTT over WebSocket at `/mqtt`, subprotocol `mqtt`.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss(Arc<ClientConfig>),
}

impl Transport {
    /// Its short name, for test messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls(_) => "tls",
            Self::Ws => "ws",
            Self::Wss(_) => "wss",
        }
    }

    /// The broker's listener for this transport.
    ///
    /// # Panics
    ///
    /// When the broker does not listen for it.
    pub fn addr(&self, addrs: &telehub_broker::Addrs) -> SocketAddr {
        let addr = match self {
            Self::Tcp => Some(addrs.mqtt),
            Self::Tls(_) => addrs.mqtts,
            Self::Ws => addrs.ws,
            Self::Wss(_) => addrs.wss,
        };
        addr.unwrap_or_else(|| panic!("the broker has no {} listener", self.name()))
    }
}

/// A byte stream a test can box.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An open client connection.
pub(crate) enum Conn {
    /// TCP or TLS: bytes as they are.
    Bytes(Box<dyn Io>),
    /// WebSocket: each send is one binary message.
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

async fn tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn tls(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").map_err(other)?;
    TlsConnector::from(Arc::clone(config)).connect(name, tcp(addr).await?).await
}

/// The WebSocket handshake for `path` on `stream`, offering `subprotocol` if any.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    scheme: &str,
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<WebSocketStream<S>, tungstenite::Error> {
    let mut request = format!("{scheme}://localhost:{}{path}", addr.port()).into_client_request()?;
    if let Some(p) = subprotocol {
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).map_err(other)?);
    }
    Ok(tokio_tungstenite::client_async(request, stream).await?.0)
}

impl Conn {
    /// Connects to `addr` over `transport` and completes its handshakes.
    pub(crate) async fn open(addr: SocketAddr, transport: &Transport) -> io::Result<Self> {
        Ok(match transport {
            Transport::Tcp => Self::Bytes(Box::new(tcp(addr).await?)),
            Transport::Tls(config) => Self::Bytes(Box::new(tls(addr, config).await?)),
            Transport::Ws => {
                let stream: Box<dyn Io> = Box::new(tcp(addr).await?);
                Self::Ws(Box::new(upgrade(stream, "ws", addr, "/mqtt", Some("mqtt")).await.map_err(other)?))
            }
            Transport::Wss(config) => {
                let stream: Box<dyn Io> = Box::new(tls(addr, config).await?);
                Self::Ws(Box::new(upgrade(stream, "wss", addr, "/mqtt", Some("mqtt")).await.map_err(other)?))
            }
        })
    }

    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Bytes(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Self::Ws(ws) => ws.send(Message::Binary(bytes.to_vec().into())).await.map_err(other),
        }
    }

    /// Sends a WebSocket message as it is (e.g. a text message).
    pub(crate) async fn send_message(&mut self, message: Message) -> io::Result<()> {
        match self {
            Self::Bytes(_) => panic!("not a WebSocket connection"),
            Self::Ws(ws) => ws.send(message).await.map_err(other),
        }
    }

    /// Appends what arrives next (WebSocket: the next binary message) to `buf`; 0 at
    /// the end of the stream. Cancel safe.
    pub(crate) async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Self::Bytes(s) => s.read_buf(buf).await,
            Self::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Ok(Message::Binary(b))) => {
                        buf.extend_from_slice(&b);
                        if !b.is_empty() {
                            return Ok(b.len());
                        }
                    }
                    Some(Ok(Message::Text(t))) => return Err(other(format!("server sent text: {t}"))),
                    Some(Ok(_)) => {}
                    Some(Err(tungstenite::Error::Io(e))) => return Err(e),
                    Some(Err(
                        tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::AlreadyClosed
                        | tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                        ),
                    )) => return Ok(0),
                    Some(Err(e)) => return Err(other(e)),
                }
            },
        }
    }

    /// Closes our sending side: TCP FIN, TLS close_notify, WebSocket close message.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Self::Bytes(s) => s.shutdown().await,
            Self::Ws(ws) => SinkExt::close(ws.as_mut()).await.map_err(other),
        }
    }
}

/// The certificate chain a TLS listener at `addr` presents now (leaf first), through a
/// fresh connection trusting `config`'s CA.
///
/// # Panics
///
/// When the handshake fails.
pub async fn peer_certificates(addr: SocketAddr, config: &Arc<ClientConfig>) -> Vec<CertificateDer<'static>> {
    let stream = tls(addr, config).await.unwrap_or_else(|e| panic!("TLS handshake with {addr} failed: {e}"));
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    chain.iter().map(|c| c.clone().into_owned()).collect()
}

/// Tries the WebSocket handshake at `path` offering `subprotocol` (over TLS with `tls`
/// when given) and returns the HTTP status: 101 when the upgrade was accepted, the
/// refusal's status otherwise.
///
/// # Panics
///
/// When the connection fails before an HTTP answer.
pub async fn ws_handshake_status(
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
    tls_config: Option<&Arc<ClientConfig>>,
) -> u16 {
    let stream: Box<dyn Io> = match tls_config {
        None => Box::new(tcp(addr).await.expect("connect")),
        Some(config) => Box::new(tls(addr, config).await.expect("TLS handshake")),
    };
    let scheme = if tls_config.is_some() { "wss" } else { "ws" };
    match upgrade(stream, scheme, addr, path, subprotocol).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("WebSocket handshake at {path} failed without an HTTP answer: {e}"),
    }
}
