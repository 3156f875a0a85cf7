//! MQTT over WebSocket: the HTTP upgrade (path `/mqtt`, subprotocol `mqtt`) and
//! [`WsStream`], which turns the binary messages of a WebSocket into the byte stream a
//! connection reads and writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// The one path MQTT is served at.
pub(crate) const PATH: &str = "/mqtt";
/// WebSocket read buffer, allocated for the life of the connection: small, as for plain
/// TCP (docs/perf.md measures idle connections); it grows for bigger frames.
const READ_BUFFER: usize = 4 * 1024;

/// Completes the WebSocket handshake on `stream`. A request for another path, or one that
/// does not offer subprotocol `mqtt`, is answered with an HTTP error and fails.
///
/// A WebSocket message may be up to `max_message` bytes: several MQTT packets may share a
/// message and one packet may span several, so this bounds memory, not packets (the MQTT
/// decoder checks those).
///
/// # Errors
///
/// The handshake failed or was refused.
pub(crate) async fn accept<S>(stream: S, max_message: usize) -> Result<WsStream<S>, tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // the connection's writer already coalesces packets into one write per wake-up
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check_request, Some(config)).await?;
    Ok(WsStream { ws, pending: Bytes::new() })
}

/// Accepts an upgrade of [`PATH`] that offers subprotocol `mqtt` (or `mqttv3.1`, which
/// MQTT 3.1 clients send), and selects it.
#[allow(clippy::result_large_err)] // the signature tungstenite's `Callback` asks for
fn check_request(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != PATH {
        return Err(refuse(StatusCode::NOT_FOUND, "MQTT over WebSocket is served at /mqtt"));
    }
    // [MQTT-6.0.0-3] the client offers "mqtt"; [MQTT-6.0.0-4] the server selects it
    let chosen = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| match p {
            "mqtt" => Some("mqtt"),
            "mqttv3.1" => Some("mqttv3.1"),
            _ => None,
        });
    let Some(chosen) = chosen else {
        return Err(refuse(StatusCode::BAD_REQUEST, "WebSocket subprotocol \"mqtt\" required"));
    };
    response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
    Ok(response)
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_owned()));
    *response.status_mut() = status;
    response
}

/// A WebSocket seen as a byte stream: reads return the payloads of binary messages in
/// order, whatever their boundaries; each write is sent as one binary message.
///
/// [MQTT-6.0.0-1] a text message is an error that ends the connection. Pings are
/// answered by tungstenite; a close message is the end of the stream.
pub(crate) struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::from(io::ErrorKind::BrokenPipe)
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            // end of stream: nothing put in `buf`
            let message = match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Binary(payload) => this.pending = payload,
                Message::Text(_) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message: MQTT is sent in binary messages",
                    )));
                }
                // empty binary messages are skipped by the loop: a read of 0 bytes would
                // mean end of stream
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut this.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) | Ok(()) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}
