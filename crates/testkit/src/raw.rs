//! [`RawClient`]: a client that sends raw bytes and reads raw packets, framed by the
//! fixed header and remaining length only, with bounded waits; over TCP, TLS or
//! WebSocket ([`Transport`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::parse::kind;
use crate::transport::{Conn, Transport};
use crate::{
    ARRIVAL_TIMEOUT, ConnAck, Connect, Packet, Publish, PublishPacket, QUIET_WINDOW, Version, build,
};

/// One client connection, speaking bytes.
///
/// The [`Version`] it holds (3.1.1 until a [`Connect`] says otherwise) only tells the
/// parsing helpers whether to expect MQTT 5 property blocks; [`RawClient::send`] sends
/// whatever it is given.
pub struct RawClient {
    stream: Conn,
    buf: BytesMut,
    version: Version,
}

/// What reading a packet ran into.
enum Next {
    Packet(Packet),
    Timeout,
    Closed,
    Failed(io::Error),
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

impl RawClient {
    /// Opens a TCP connection to `addr`; nothing is sent.
    ///
    /// # Panics
    ///
    /// When the connection cannot be made within [`ARRIVAL_TIMEOUT`].
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_via(addr, &Transport::Tcp).await
    }

    /// Opens a connection to `addr` over `transport` and completes its handshakes
    /// (TLS, WebSocket upgrade); nothing MQTT is sent.
    ///
    /// # Panics
    ///
    /// When the connection or a handshake fails or takes longer than [`ARRIVAL_TIMEOUT`].
    pub async fn connect_via(addr: SocketAddr, transport: &Transport) -> Self {
        match Self::try_connect_via(addr, transport).await {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to {addr} over {}: {e}", transport.name()),
        }
    }

    /// As [`RawClient::connect_via`], reporting failure (e.g. a refused client
    /// certificate) instead of panicking.
    pub async fn try_connect_via(addr: SocketAddr, transport: &Transport) -> io::Result<Self> {
        let stream = match tokio::time::timeout(ARRIVAL_TIMEOUT, Conn::open(addr, transport)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::from(io::ErrorKind::TimedOut)),
        };
        Ok(Self { stream, buf: BytesMut::with_capacity(4096), version: Version::V311 })
    }

    /// Connects over `transport`, sends `connect` and asserts that the CONNACK accepts
    /// it (code 0).
    pub async fn open_via(addr: SocketAddr, transport: &Transport, connect: &Connect) -> (Self, ConnAck) {
        let mut client = Self::connect_via(addr, transport).await;
        let ack = client.handshake(connect).await;
        assert_eq!(ack.code, 0, "CONNECT over {} refused: {ack:?}", transport.name());
        (client, ack)
    }

    /// Connects, sends `connect` and asserts that the CONNACK accepts it (code 0).
    pub async fn open(addr: SocketAddr, connect: &Connect) -> (Self, ConnAck) {
        let mut client = Self::connect(addr).await;
        let ack = client.handshake(connect).await;
        assert_eq!(ack.code, 0, "CONNECT refused: {ack:?}");
        (client, ack)
    }

    /// Sends `connect`, switches to its protocol version and returns the CONNACK,
    /// whatever its code.
    pub async fn handshake(&mut self, connect: &Connect) -> ConnAck {
        self.version = connect.version();
        self.send(&connect.to_bytes()).await;
        let packet = self.next_packet().await;
        packet.connack(self.version)
    }

    /// The protocol version the parsing helpers assume.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Writes `bytes` as they are.
    ///
    /// # Panics
    ///
    /// When the write fails.
    pub async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes).await {
            panic!("write of {} bytes failed: {e}", bytes.len());
        }
    }

    /// Writes `bytes`, reporting failure instead of panicking (the server may already
    /// have closed the connection).
    pub async fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// WebSocket only: sends `message` as it is (a text message, a ping...).
    ///
    /// # Panics
    ///
    /// When the connection is not a WebSocket or the send fails.
    pub async fn send_ws(&mut self, message: Message) {
        if let Err(e) = self.stream.send_message(message).await {
            panic!("WebSocket send failed: {e}");
        }
    }

    /// Closes our sending side (TCP FIN, TLS close_notify, WebSocket close): the
    /// server reads end of stream.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// A complete packet already in the buffer, if any.
    fn take_packet(&mut self) -> Option<Packet> {
        if self.buf.len() < 2 {
            return None;
        }
        let mut len = 0usize;
        let mut header = 1;
        loop {
            let &b = self.buf.get(header)?;
            len |= usize::from(b & 0x7f) << (7 * (header - 1));
            header += 1;
            if b & 0x80 == 0 {
                break;
            }
            assert!(
                header <= 4,
                "server sent a remaining length longer than 4 bytes: {:02x?}",
                &self.buf[..]
            );
        }
        if self.buf.len() < header + len {
            return None;
        }
        let first_byte = self.buf[0];
        self.buf.advance(header);
        let body = self.buf.split_to(len).to_vec();
        Some(Packet { first_byte, body })
    }

    async fn read_next(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(p) = self.take_packet() {
                return Next::Packet(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) => return Next::Closed,
                Ok(Ok(_)) => {}
                Ok(Err(e)) if is_reset(&e) => return Next::Closed,
                Ok(Err(e)) => return Next::Failed(e),
            }
        }
    }

    /// The next packet, waiting up to [`ARRIVAL_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// On timeout, or when the connection closes first.
    pub async fn next_packet(&mut self) -> Packet {
        match self.next_packet_within(ARRIVAL_TIMEOUT).await {
            Some(p) => p,
            None => panic!("no packet within {ARRIVAL_TIMEOUT:?}"),
        }
    }

    /// The next packet if one arrives within `wait`.
    ///
    /// # Panics
    ///
    /// When the connection closes first.
    pub async fn next_packet_within(&mut self, wait: Duration) -> Option<Packet> {
        match self.read_next(Instant::now() + wait).await {
            Next::Packet(p) => Some(p),
            Next::Timeout => None,
            Next::Closed => {
                panic!("connection closed while waiting for a packet (unread: {:02x?})", &self.buf[..])
            }
            Next::Failed(e) => panic!("read failed while waiting for a packet: {e}"),
        }
    }

    /// Asserts that the next packet is exactly `bytes` (fixed header included).
    pub async fn expect_bytes(&mut self, bytes: &[u8]) {
        let p = self.next_packet().await;
        assert_eq!(p.to_bytes(), bytes, "expected {:02x?}, got {p:?}", bytes);
    }

    /// Asserts that the server closes the connection (end of stream or reset) within
    /// [`ARRIVAL_TIMEOUT`] without sending another packet.
    pub async fn expect_closed(&mut self) {
        match self.read_next(Instant::now() + ARRIVAL_TIMEOUT).await {
            Next::Closed => {
                assert!(self.buf.is_empty(), "connection closed mid-packet: {:02x?}", &self.buf[..]);
            }
            Next::Packet(p) => panic!("expected the connection to close, got {p:?}"),
            Next::Timeout => panic!("connection still open after {ARRIVAL_TIMEOUT:?}"),
            Next::Failed(e) => panic!("expected the connection to close, read failed: {e}"),
        }
    }

    /// Asserts that the connection ends within [`ARRIVAL_TIMEOUT`] without another
    /// packet, by a close or by an error (e.g. a TLS alert); returns the error if any.
    pub async fn expect_gone(&mut self) -> Option<io::Error> {
        match self.read_next(Instant::now() + ARRIVAL_TIMEOUT).await {
            Next::Closed => None,
            Next::Failed(e) => Some(e),
            Next::Packet(p) => panic!("expected the connection to end, got {p:?}"),
            Next::Timeout => panic!("connection still open after {ARRIVAL_TIMEOUT:?}"),
        }
    }

    /// MQTT 5: asserts the next packet is DISCONNECT with `reason`, then that the server
    /// closes the connection.
    pub async fn expect_disconnect(&mut self, reason: u8) {
        let p = self.next_packet().await;
        assert_eq!(p.kind(), kind::DISCONNECT, "expected DISCONNECT {reason:#04x}, got {p:?}");
        assert_eq!(p.reason_code(), reason, "DISCONNECT reason code: {p:?}");
        self.expect_closed().await;
    }

    /// Asserts that nothing arrives, and the connection stays open, for [`QUIET_WINDOW`].
    pub async fn expect_nothing(&mut self) {
        match self.read_next(Instant::now() + QUIET_WINDOW).await {
            Next::Timeout => {}
            Next::Packet(p) => panic!("expected no packet, got {p:?}"),
            Next::Closed => panic!("expected no packet, the connection closed"),
            Next::Failed(e) => panic!("expected no packet, read failed: {e}"),
        }
    }

    /// Asserts the next packet is a PUBLISH and decodes it.
    pub async fn expect_publish(&mut self) -> PublishPacket {
        let p = self.next_packet().await;
        p.publish(self.version)
    }

    /// SUBSCRIBE to `(filter, options)` pairs; asserts the SUBACK's packet id and
    /// returns its codes.
    pub async fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&build::subscribe(self.version, packet_id, filters)).await;
        let (id, codes) = self.next_packet().await.suback(self.version);
        assert_eq!(id, packet_id, "SUBACK packet id");
        assert_eq!(codes.len(), filters.len(), "one SUBACK code per filter");
        codes
    }

    /// UNSUBSCRIBE from `filters`; asserts the UNSUBACK's packet id and returns its
    /// MQTT 5 reason codes (none for 3.1.1).
    pub async fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) -> Vec<u8> {
        self.send(&build::unsubscribe(self.version, packet_id, filters)).await;
        let (id, codes) = self.next_packet().await.unsuback(self.version);
        assert_eq!(id, packet_id, "UNSUBACK packet id");
        codes
    }

    /// Sends `publish` and completes its QoS flow: nothing for QoS 0, PUBACK for QoS 1,
    /// PUBREC / PUBREL / PUBCOMP for QoS 2. Asserts each ack carries the packet id and
    /// a success code. When this returns, the broker has routed the message (for QoS 1
    /// and 2; QoS 0 has no such guarantee).
    pub async fn publish(&mut self, publish: &Publish) {
        self.send(&publish.to_bytes()).await;
        let id = publish.packet_id();
        match publish.qos_level() {
            0 => {}
            1 => {
                let ack = self.next_packet().await;
                assert_eq!(
                    (ack.kind(), ack.packet_id(), ack.reason_code()),
                    (kind::PUBACK, id, 0),
                    "{ack:?}"
                );
            }
            _ => {
                let rec = self.next_packet().await;
                assert_eq!(
                    (rec.kind(), rec.packet_id(), rec.reason_code()),
                    (kind::PUBREC, id, 0),
                    "{rec:?}"
                );
                self.send(&build::pubrel(id)).await;
                let comp = self.next_packet().await;
                assert_eq!(
                    (comp.kind(), comp.packet_id(), comp.reason_code()),
                    (kind::PUBCOMP, id, 0),
                    "{comp:?}"
                );
            }
        }
    }

    /// PINGREQ; asserts the answer is exactly PINGRESP (`d0 00`).
    pub async fn ping(&mut self) {
        self.send(&build::pingreq()).await;
        self.expect_bytes(&[0xd0, 0x00]).await;
    }

    /// DISCONNECT, then asserts the server closes the connection.
    pub async fn disconnect(mut self) {
        self.send(&build::disconnect()).await;
        self.expect_closed().await;
    }
}
