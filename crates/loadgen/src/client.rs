//! A raw MQTT 3.1.1 client on a `TcpStream`: CONNECT/CONNACK and SUBSCRIBE/SUBACK
//! handshakes, then the scenarios read and write the socket themselves, many packets
//! per syscall. A blocking twin serves the latency scenario, which runs on OS threads.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, CONNACK, Login, SUBACK};

/// Bytes read per `read` at most, and the starting capacity of a read buffer.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// A CONNACK's return code (0: accepted; 3.1.1: 4 bad user name or password, 5 not
/// authorized).
pub(crate) fn connack_code(frame: &wire::Frame<'_>) -> Result<u8> {
    match frame.body {
        [_, code] => Ok(*code),
        _ => bail!("malformed CONNACK"),
    }
}

/// Checks a CONNACK and SUBACK.
fn check_connack(frame: &wire::Frame<'_>) -> Result<()> {
    match connack_code(frame)? {
        0 => Ok(()),
        code => bail!("CONNACK refused: return code {code}"),
    }
}

fn check_suback(frame: &wire::Frame<'_>, packet_id: u16) -> Result<()> {
    if frame.packet_id()? != packet_id {
        bail!("SUBACK for another packet id");
    }
    match frame.body.get(2) {
        Some(0x80) | None => bail!("SUBSCRIBE refused"),
        Some(_) => Ok(()),
    }
}

/// An async connection after CONNACK. Bytes read past a handshake stay in `rbuf`.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) rbuf: BytesMut,
}

impl Conn {
    /// Connects anonymously and completes CONNECT/CONNACK.
    pub(crate) async fn connect(addr: SocketAddr, client_id: &str, keep_alive: u16) -> Result<Self> {
        Self::connect_with_buffer(addr, client_id, keep_alive, &Login::anonymous(), READ_CHUNK).await
    }

    /// As [`Conn::connect`] with `login`'s user name and password.
    pub(crate) async fn connect_as(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
        login: &Login,
    ) -> Result<Self> {
        Self::connect_with_buffer(addr, client_id, keep_alive, login, READ_CHUNK).await
    }

    /// As [`Conn::connect_as`] with a read buffer of `capacity` bytes (small for idle
    /// connections).
    pub(crate) async fn connect_with_buffer(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
        login: &Login,
        capacity: usize,
    ) -> Result<Self> {
        Self::connect_from(addr, None, client_id, keep_alive, login, capacity).await
    }

    /// As [`Conn::connect_with_buffer`] from local address `local` (any port): with
    /// several loopback source addresses one generator opens more connections than one
    /// address has ephemeral ports.
    pub(crate) async fn connect_from(
        addr: SocketAddr,
        local: Option<std::net::IpAddr>,
        client_id: &str,
        keep_alive: u16,
        login: &Login,
        capacity: usize,
    ) -> Result<Self> {
        let stream = match local {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
        }
        .with_context(|| format!("connecting to {addr} from {local:?}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Self { stream, rbuf: BytesMut::with_capacity(capacity) };
        let mut out = BytesMut::new();
        wire::connect(&mut out, client_id, keep_alive, login);
        conn.stream.write_all(&out).await?;
        conn.expect(CONNACK, check_connack).await.with_context(|| format!("{client_id}: CONNECT"))?;
        Ok(conn)
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<()> {
        let mut out = BytesMut::new();
        wire::subscribe(&mut out, 1, filter, qos);
        self.stream.write_all(&out).await?;
        self.expect(SUBACK, |f| check_suback(f, 1)).await.context("SUBSCRIBE")
    }

    /// Reads until a packet of `kind` arrives and checks it; other packets before it are
    /// an error (nothing else is expected during a handshake).
    async fn expect(&mut self, kind: u8, check: impl Fn(&wire::Frame<'_>) -> Result<()>) -> Result<()> {
        loop {
            if take_expected(&mut self.rbuf, kind, &check)? {
                return Ok(());
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }

    /// Reads more bytes into `rbuf`; an error at end of stream.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: bytes read stay in `rbuf`.
    pub(crate) async fn fill(&mut self) -> Result<usize> {
        self.rbuf.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            bail!("connection closed by the broker");
        }
        Ok(n)
    }
}

/// A blocking connection after CONNACK, for the latency scenario's threads.
pub(crate) struct SyncConn {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) rbuf: BytesMut,
}

impl SyncConn {
    pub(crate) fn connect(addr: SocketAddr, client_id: &str, keep_alive: u16) -> Result<Self> {
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut conn = Self { stream, rbuf: BytesMut::with_capacity(READ_CHUNK) };
        let mut out = BytesMut::new();
        wire::connect(&mut out, client_id, keep_alive, &Login::anonymous());
        conn.stream.write_all(&out)?;
        conn.expect(CONNACK, check_connack).with_context(|| format!("{client_id}: CONNECT"))?;
        Ok(conn)
    }

    pub(crate) fn subscribe(&mut self, filter: &str, qos: u8) -> Result<()> {
        let mut out = BytesMut::new();
        wire::subscribe(&mut out, 1, filter, qos);
        self.stream.write_all(&out)?;
        self.expect(SUBACK, |f| check_suback(f, 1)).context("SUBSCRIBE")
    }

    fn expect(&mut self, kind: u8, check: impl Fn(&wire::Frame<'_>) -> Result<()>) -> Result<()> {
        loop {
            if take_expected(&mut self.rbuf, kind, &check)? {
                return Ok(());
            }
            if self.fill()? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }

    /// Reads more bytes into `rbuf`: `Ok(0)` at end of stream; a read timeout is
    /// reported as an error of kind `WouldBlock`/`TimedOut`.
    pub(crate) fn fill(&mut self) -> std::io::Result<usize> {
        let start = self.rbuf.len();
        self.rbuf.resize(start + READ_CHUNK, 0);
        let r = self.stream.read(&mut self.rbuf[start..]);
        let n = *r.as_ref().unwrap_or(&0);
        self.rbuf.truncate(start + n);
        r
    }
}

/// Takes the next packet from `rbuf` if a whole one is there: it must be of `kind` and
/// pass `check`. `Ok(false)` means more bytes are needed. Shared by the async and the
/// blocking client.
fn take_expected(
    rbuf: &mut BytesMut,
    kind: u8,
    check: &impl Fn(&wire::Frame<'_>) -> Result<()>,
) -> Result<bool> {
    let Some((frame, used)) = wire::parse(rbuf)? else { return Ok(false) };
    if frame.kind() != kind {
        bail!("expected packet 0x{kind:02x}, got 0x{:02x}", frame.header);
    }
    check(&frame)?;
    rbuf.advance(used);
    Ok(true)
}
