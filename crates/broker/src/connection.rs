//! One client connection: the CONNECT handshake, the reader loop (keep-alive, packet
//! handling, routing), and a writer task that coalesces control packets and queued
//! deliveries into one `write` per wake-up.
//!
//! The code is generic over the byte stream, so every transport gets the same broker
//! behaviour: [`ReadHalf`] and [`WriteHalf`] are the two halves of a TCP, TLS or
//! WebSocket connection (`listener` does the handshakes and the split). Plain TCP keeps
//! its own split and read path (see [`ReadHalf`]); the other streams are split with
//! `tokio::io::split`, whose halves share the stream behind a lock taken per poll.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use telehub_core::{ClientId, Message, QoS, TopicFilter, TopicName};
use telehub_mqtt::{
    BrokerTime, ConnAckCode, Connect, Decoder, Delivery, Encoder, Inbound, Outbound, ProtocolError,
    ProtocolVersion, PublishIn, ReasonString, SubAckCode, SubOptions,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Shared;
use crate::auth::{ConnectInfo, Principal, PublishRefusal, Refusal, TransportKind};
use crate::hook::IngestAck;
use crate::persist::Op;
use crate::router::Subscriber;
use crate::sessions::{self, AttachRequest, QuotaExceeded, SessionEntry, Sessions};
use crate::stats::Stats;

/// Control packets (acks, SUBACK, PINGRESP) waiting for the writer. When full the
/// reader waits, so a client that does not read stops being read from.
const CONTROL_QUEUE: usize = 64;
/// Bytes encoded per write before the writer yields.
const WRITE_BATCH: usize = 64 * 1024;
/// Read buffer taken per readiness while data flows; grows to the largest packet.
const READ_BUFFER: usize = 4 * 1024;
/// How long a closing connection waits for its writer to flush.
const FLUSH_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum ReadError {
    Protocol(ProtocolError),
    Io(io::Error),
}

impl From<ProtocolError> for ReadError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

/// The read half of a client's byte stream.
///
/// Neither implementation holds a buffer while the connection waits, so an idle
/// connection holds no read buffer (docs/perf.md, idle connections): plain TCP waits
/// with `readable()` and only then takes a buffer for `try_read_buf`; TLS and WebSocket
/// streams can only be read through `AsyncRead`, which wants the buffer before the bytes
/// arrive, so they are polled into a chunk on the stack (gone when the poll returns) and
/// copied into the buffer once bytes are there. The layers below keep buffers of their
/// own (rustls its records, tungstenite a small read buffer: see `ws`).
pub(crate) trait ReadHalf: Send + 'static {
    /// Waits for bytes and appends them to `buf`; `Ok(0)` at end of stream.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no byte is consumed unless the future completes.
    fn read_into(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
}

/// Makes room for a read: a fresh [`READ_BUFFER`] per read while data flows, which the
/// decoded payloads then share.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_BUFFER / 4 {
        buf.reserve(READ_BUFFER);
    }
}

impl ReadHalf for OwnedReadHalf {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            // `readable()` consumes nothing
            self.readable().await?;
            reserve(buf);
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if buf.is_empty() {
                        *buf = BytesMut::new(); // spurious wake-up: stay idle without a buffer
                    }
                }
                r => return r,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> ReadHalf for tokio::io::ReadHalf<S> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        // cancel safe: a pending `poll_read` has consumed nothing
        std::future::poll_fn(|cx| {
            let mut chunk = [0u8; READ_BUFFER];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut *self).poll_read(cx, &mut read))?;
            let filled = read.filled();
            if !filled.is_empty() {
                reserve(buf);
                buf.extend_from_slice(filled);
            }
            Poll::Ready(Ok(filled.len()))
        })
        .await
    }
}

/// The write half of a client's byte stream. Every write is followed by a flush, which
/// TLS (records) and WebSocket (messages) need and TCP ignores.
pub(crate) trait WriteHalf: AsyncWrite + Send + Unpin + 'static {}

impl<W: AsyncWrite + Send + Unpin + 'static> WriteHalf for W {}

struct Reader<R> {
    read: R,
    buf: BytesMut,
    decoder: Decoder,
}

impl<R: ReadHalf> Reader<R> {
    /// Reads the next packet; `None` at end of stream.
    ///
    /// The read buffer exists only while bytes are waiting to be decoded: an idle
    /// connection holds none between reads (see [`ReadHalf`] for while it waits).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: partial bytes stay in `self.buf` and the decoder keeps its state;
    /// the only await is [`ReadHalf::read_into`], which is cancel safe.
    async fn next(&mut self, stats: &Stats) -> Result<Option<Inbound>, ReadError> {
        loop {
            if !self.buf.is_empty()
                && let Some(packet) = self.decoder.decode(&mut self.buf)?
            {
                return Ok(Some(packet));
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
            match self.read.read_into(&mut self.buf).await {
                Ok(0) => return Ok(None),
                Ok(n) => Stats::add(&stats.bytes_received, n as u64),
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

/// Why a connection ended.
enum Exit {
    /// DISCONNECT from the client, with its reason code.
    Disconnect(u8),
    /// The client closed the socket or it failed.
    Closed,
    /// The client broke the protocol.
    Protocol(ProtocolError),
    /// MQTT 5 AUTH: enhanced authentication is not offered (0x8C).
    AuthNotSupported,
    /// Another connection took the session over.
    TakenOver,
    /// The server is shutting down.
    Shutdown,
    /// An MQTT 3.x message could not be stored; closed unacknowledged.
    IngestFailed,
    /// [`Control::disconnect_where`](crate::Control::disconnect_where) picked this
    /// connection (0x98 Administrative action).
    Revoked,
    /// An MQTT 3.x client published faster than the authenticator allows; 3.x cannot be
    /// told, so it is closed with the message unacknowledged.
    RateTooHigh,
}

/// Who is at the other end of a new connection, as the listener saw it.
pub(crate) struct Peer {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// The transport it came over.
    pub(crate) transport: TransportKind,
    /// SHA-256 of the DER of its TLS client certificate, if it sent one.
    pub(crate) cert_sha256: Option<[u8; 32]>,
}

/// Serves one connection, its transport's handshake done, until it closes, is taken
/// over, or `cancel` fires. CONNECT must arrive, and be authenticated, before
/// `connect_deadline`.
pub(crate) async fn serve<R: ReadHalf, W: WriteHalf>(
    shared: Arc<Shared>,
    (read, write): (R, W),
    client: Peer,
    connect_deadline: Instant,
    cancel: CancellationToken,
) {
    let peer = client.addr;
    Stats::add(&shared.stats.connections_total, 1);
    let mut reader =
        Reader { read, buf: BytesMut::new(), decoder: Decoder::new(shared.config.max_packet_size) };
    let first = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout_at(connect_deadline, reader.next(&shared.stats)) => r,
    };
    let connect = match first {
        Ok(Ok(Some(Inbound::Connect(c)))) => c,
        Ok(Ok(_)) => return,
        Ok(Err(ReadError::Protocol(e))) => {
            let version = reader.decoder.version();
            debug!(%peer, ?version, error = %e, "refused at CONNECT");
            if e != ProtocolError::ClientIdRejected {
                Stats::add(&shared.stats.protocol_errors, 1);
            }
            return match version {
                // §3.1.4, §4.13: once the CONNECT says MQTT 5, the client is told why
                // (0x81 Malformed Packet, 0x82 Protocol Error, ...) before the close
                Some(ProtocolVersion::V5) => {
                    let refused = match reader.decoder.connect_maximum_packet_size() {
                        Some(max) => Refused {
                            code: e.connack_code(),
                            reason: Some(e.reason_string()),
                            max_packet_size: max,
                        },
                        // the client's limit is unknown: a reason string might break it
                        // ([MQTT-3.2.2-19])
                        None => Refused::without_reason(e.connack_code()),
                    };
                    refuse(write, ProtocolVersion::V5, refused).await;
                }
                // [MQTT-3.1.3-8] the codec refuses an empty client id without clean
                // session before `run_connected` can see it; the client must still get
                // CONNACK 0x02 rather than a silently closed socket
                Some(version) if e == ProtocolError::ClientIdRejected => {
                    refuse(write, version, Refused::without_reason(ConnAckCode::ClientIdRejected)).await;
                }
                // 3.x has no CONNACK code for the rest ([MQTT-3.1.4-1]: close)
                _ => {}
            };
        }
        Ok(Err(ReadError::Io(_))) => return,
        Err(_) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            return;
        }
    };
    let conn = shared.sessions.next_conn_id();
    Stats::add(&shared.stats.connections_current, 1);
    run_connected(&shared, reader, write, *connect, (&client, connect_deadline), conn, cancel).await;
    shared.stats.connections_current.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// A refused CONNECT: the CONNACK code, the MQTT 5 reason string saying why, and the
/// client's Maximum Packet Size the CONNACK must fit ([MQTT-3.2.2-19]).
struct Refused {
    code: ConnAckCode,
    reason: Option<ReasonString>,
    max_packet_size: u32,
}

impl Refused {
    fn without_reason(code: ConnAckCode) -> Self {
        Self { code, reason: None, max_packet_size: 0 }
    }
}

/// Refuses a CONNECT and closes.
async fn refuse(mut write: impl WriteHalf, version: ProtocolVersion, refused: Refused) {
    let mut buf = BytesMut::new();
    let connack = Outbound::ConnAck {
        session_present: false,
        code: refused.code,
        assigned_client_id: None,
        server_keep_alive: None,
        receive_maximum: 1,
        maximum_packet_size: 0,
        topic_alias_maximum: 0,
        reason_string: refused.reason,
    };
    let mut encoder = Encoder::new(version, refused.max_packet_size);
    if encoder.encode(connack, &mut buf).is_ok() && write.write_all(&buf).await.is_ok() {
        let _ = write.flush().await;
    }
    let _ = write.shutdown().await;
}

#[allow(clippy::too_many_lines)]
async fn run_connected<R: ReadHalf, W: WriteHalf>(
    shared: &Arc<Shared>,
    mut reader: Reader<R>,
    write: W,
    connect: Connect,
    (client, connect_deadline): (&Peer, Instant),
    conn: u64,
    cancel: CancellationToken,
) {
    let peer = client.addr;
    let version = connect.version;
    let config = &shared.config;
    // [MQTT-3.1.3-8] a 3.1.1 client with an empty id must ask for a clean session;
    // [MQTT-3.1.3-7] otherwise the server assigns one (MQTT 5: Assigned Client Identifier).
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !version.is_v5() && !connect.clean_start {
            return refuse(write, version, Refused::without_reason(ConnAckCode::ClientIdRejected)).await;
        }
        // unique by connection id, unguessable by a per-process random suffix
        let salt = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), conn);
        let id = ClientId::new(format!("telehub-{conn:x}-{salt:016x}"));
        assigned = version.is_v5().then(|| id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    let max_keep_alive = u16::try_from(config.max_keep_alive.as_secs()).unwrap_or(u16::MAX);
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if keep_alive > max_keep_alive || (keep_alive == 0 && max_keep_alive < u16::MAX && version.is_v5()) {
        if !version.is_v5() {
            // 3.x cannot be told another value: refuse, as Mosquitto does
            return refuse(write, version, Refused::without_reason(ConnAckCode::KeepAliveTooLong)).await;
        }
        keep_alive = max_keep_alive;
        server_keep_alive = Some(max_keep_alive);
    }
    let expiry = if version.is_v5() {
        match connect.session_expiry {
            u32::MAX => Some(config.max_session_expiry),
            secs => Some(Duration::from_secs(u64::from(secs)).min(config.max_session_expiry)),
        }
    } else if connect.clean_start {
        Some(Duration::ZERO)
    } else {
        None // 3.x persistent sessions last until a clean session replaces them
    };
    let principal = match authenticate(shared, &connect, &client_id, client, connect_deadline, &cancel).await
    {
        Ok(principal) => principal,
        Err(None) => return,
        Err(Some((code, reason))) => {
            Stats::add(&shared.stats.auth_failures, 1);
            let max_packet_size = connect.maximum_packet_size.unwrap_or(0);
            return refuse(write, version, Refused { code, reason: Some(reason), max_packet_size }).await;
        }
    };

    let waker = Arc::new(Notify::new());
    let attached = shared.sessions.attach(
        shared,
        AttachRequest {
            client_id: client_id.clone(),
            conn,
            clean_start: connect.clean_start,
            expiry,
            receive_maximum: connect.receive_maximum,
            kick: cancel.clone(),
            waker: Arc::clone(&waker),
        },
    );
    let entry = attached.entry;
    debug!(%peer, client_id = %client_id, ?version, session_present = attached.session_present, "connected");
    if attached.durable {
        // the session is on disk before its client is told it exists
        wait_durable(shared, "CONNACK").await;
    }

    let mut initial = vec![Outbound::ConnAck {
        session_present: attached.session_present,
        code: ConnAckCode::Success,
        assigned_client_id: assigned,
        server_keep_alive,
        receive_maximum: config.receive_maximum,
        maximum_packet_size: config.max_packet_size,
        topic_alias_maximum: config.topic_alias_maximum,
        reason_string: None,
    }];
    initial.extend(attached.resend);
    // from here until it is dropped: in `Control`'s view (before the client can see its
    // CONNACK), and `disconnected` when it ends
    let registration =
        shared.live.register(conn, principal.clone(), client_id.clone(), Arc::clone(&shared.auth));
    let revoked = registration.revoked().clone();
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let stop_writer = CancellationToken::new();
    let writer = shared.tasks.spawn(write_loop(Writer {
        initial,
        write,
        encoder: Encoder::new(version, connect.maximum_packet_size.unwrap_or(0))
            .with_topic_aliases(connect.topic_alias_maximum)
            .with_problem_information(connect.request_problem_information),
        control: control_rx,
        entry: Arc::clone(&entry),
        conn,
        waker,
        stop: stop_writer.clone(),
        stats: Arc::clone(&shared.stats),
        started: shared.started,
        shared: Arc::clone(shared),
    }));

    shared.auth.connected(&principal, &client_id, peer);

    let ingest_failed = CancellationToken::new();
    let mut conn_state = Connection {
        shared,
        entry: &entry,
        conn,
        version,
        control,
        client_id: &client_id,
        principal: &principal,
        acker: None,
        ingest_failed: ingest_failed.clone(),
        topic_aliases: HashMap::new(),
    };
    // [MQTT-3.1.2-24] 1.5 × keep-alive without any packet closes the connection
    let idle_limit = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let exit = loop {
        let deadline = idle_limit.map(|d| Instant::now() + d);
        let packet = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                break if still_owns(&entry, conn) { Exit::Shutdown } else { Exit::TakenOver };
            }
            _ = revoked.cancelled() => break Exit::Revoked,
            _ = ingest_failed.cancelled() => break Exit::IngestFailed,
            r = read_until(&mut reader, &shared.stats, deadline) => r,
        };
        let packet = match packet {
            Ok(Some(p)) => p,
            Ok(None) => break Exit::Closed,
            Err(ReadError::Io(e)) => {
                debug!(%peer, client_id = %client_id, error = %e, "connection failed");
                break Exit::Closed;
            }
            Err(ReadError::Protocol(e)) => break Exit::Protocol(e),
        };
        match conn_state.handle(packet).await {
            Ok(None) => {}
            Ok(Some(exit)) => break exit,
            Err(e) => break Exit::Protocol(e),
        }
    };

    // out of `Control`'s view before the client can see the connection end
    drop(registration);
    // MQTT 5 DISCONNECT reason codes and reason strings, in one place
    let (will_allowed, disconnect) = match exit {
        Exit::Disconnect(reason) => (reason == 0x04, None), // 0x04: disconnect with will
        Exit::Closed => (true, None),
        Exit::Protocol(e) => {
            Stats::add(&shared.stats.protocol_errors, 1);
            debug!(%peer, client_id = %client_id, error = %e, "protocol error");
            (true, Some((e.reason_code() as u8, e.reason_string())))
        }
        Exit::AuthNotSupported => {
            (true, Some((0x8c, ReasonString::new("enhanced authentication is not supported"))))
        }
        Exit::TakenOver => {
            (true, Some((0x8e, ReasonString::new("session taken over by another connection"))))
        }
        Exit::Shutdown => (false, Some((0x8b, ReasonString::new("server shutting down")))),
        Exit::IngestFailed | Exit::RateTooHigh => (true, None),
        Exit::Revoked => (true, Some((0x98, ReasonString::new("disconnected by an administrator")))),
    };
    // end or park the session first, so a client reconnecting as soon as it sees the
    // socket close finds the session in its final state
    let generation = shared.sessions.detach(shared, &entry, conn);
    // held acknowledgements go out (as their commits finish) before the DISCONNECT
    if let Some(mut acker) = conn_state.acker.take() {
        drop(acker.queue);
        if tokio::time::timeout(FLUSH_GRACE, &mut acker.task).await.is_err() {
            // the futures only observe the hub's work, so giving up on them loses
            // nothing; the unacknowledged messages are resent by the client
            acker.task.abort();
        }
    }
    if let (Some((reason, text)), true) = (disconnect, version.is_v5()) {
        let _ = conn_state.control.try_send(Outbound::Disconnect(reason, Some(text)));
    }
    drop(conn_state);
    if tokio::time::timeout(FLUSH_GRACE, writer).await.is_err() {
        stop_writer.cancel();
    }
    if let (true, Some(will)) = (will_allowed, connect.will) {
        send_will(shared, &entry, generation, will.message, will.delay).await;
    }
    debug!(%peer, client_id = %client_id, "disconnected");
}

/// Waits until everything recorded for the disk so far is committed, before `what` is
/// sent. A failed write is logged and `what` sent all the same: the session goes on in
/// memory.
async fn wait_durable(shared: &Shared, what: &str) {
    if let Some(p) = &shared.persist
        && let Err(e) = p.flush().await
    {
        tracing::warn!(error = %e, "durable state not written before {what}");
    }
}

/// Asks the authenticator about a CONNECT: its credentials, within `deadline`, then its
/// will, as a PUBLISH of the will's topic. The error is the CONNACK code to refuse with
/// and the MQTT 5 reason string, `None` when the broker is shutting down (closed without
/// CONNACK).
async fn authenticate(
    shared: &Shared,
    connect: &Connect,
    client_id: &ClientId,
    client: &Peer,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Principal, Option<(ConnAckCode, ReasonString)>> {
    let info = ConnectInfo {
        client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        peer: client.addr,
        transport: client.transport,
        cert_sha256: client.cert_sha256,
    };
    let verdict = tokio::select! {
        _ = cancel.cancelled() => return Err(None),
        r = tokio::time::timeout_at(deadline, shared.auth.authenticate(info)) => r,
    };
    let principal = match verdict {
        Ok(Ok(principal)) => principal,
        Ok(Err(refusal)) => {
            debug!(peer = %client.addr, client_id = %client_id, ?refusal, "CONNECT refused");
            return Err(Some((refusal_code(refusal), refusal.reason_string())));
        }
        Err(_) => {
            debug!(peer = %client.addr, client_id = %client_id, "authentication not done within the connect timeout");
            let reason = ReasonString::new("authentication not done within the connect timeout");
            return Err(Some((ConnAckCode::ServerUnavailable, reason)));
        }
    };
    if let Some(will) = &connect.will
        && let Err(refusal) = shared.auth.authorize_publish(&principal, &will.message)
    {
        debug!(peer = %client.addr, client_id = %client_id, topic = %will.message.topic, ?refusal, "will refused");
        let reason = format!("not authorized to publish the will to {}", will.message.topic.as_str());
        return Err(Some((ConnAckCode::NotAuthorized, ReasonString::new(reason))));
    }
    Ok(principal)
}

/// The CONNACK that says `refusal` ([`Refusal::connack_code`] in each version).
fn refusal_code(refusal: Refusal) -> ConnAckCode {
    match refusal {
        Refusal::BadCredentials => ConnAckCode::BadCredentials,
        Refusal::NotAuthorized => ConnAckCode::NotAuthorized,
        Refusal::ConnectionRate => ConnAckCode::ConnectionRate,
        Refusal::Unavailable => ConnAckCode::ServerUnavailable,
    }
}

/// True while `conn` owns the session. A cancelled connection that still owns its
/// session is being shut down; a takeover moves the session before cancelling.
fn still_owns(entry: &SessionEntry, conn: u64) -> bool {
    entry.lock_owned(conn).is_ok()
}

/// Publishes a will now, or after its delay unless the client reconnects first
/// (MQTT 5 Will Delay Interval; the session's expiry caps the delay).
async fn send_will(
    shared: &Arc<Shared>,
    entry: &Arc<SessionEntry>,
    generation: Option<u64>,
    will: Message,
    delay: Duration,
) {
    let will = Arc::new(will);
    let delay = match generation.and_then(|_| Sessions::expiry_of(entry)) {
        Some(expiry) => delay.min(expiry),
        None => delay,
    };
    if delay.is_zero() || generation.is_none() {
        let _ = sessions::publish(shared, None, will, false).await;
        return;
    }
    let (shared, entry, generation) = (Arc::clone(shared), Arc::clone(entry), generation.unwrap_or_default());
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stopping.cancelled() => return, // not published at shutdown
        }
        if Sessions::is_still_gone(&entry, generation) {
            let _ = sessions::publish(&shared, None, will, false).await;
        }
    });
}

async fn read_until<R: ReadHalf>(
    reader: &mut Reader<R>,
    stats: &Stats,
    deadline: Option<Instant>,
) -> Result<Option<Inbound>, ReadError> {
    match deadline {
        None => reader.next(stats).await,
        Some(at) => match tokio::time::timeout_at(at, reader.next(stats)).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Protocol(ProtocolError::KeepAliveTimeout)),
        },
    }
}

/// The reader side of a connected client.
struct Connection<'a> {
    shared: &'a Arc<Shared>,
    entry: &'a Arc<SessionEntry>,
    conn: u64,
    version: ProtocolVersion,
    control: mpsc::Sender<Outbound>,
    client_id: &'a ClientId,
    /// Who the authenticator said the client is.
    principal: &'a Principal,
    /// Holds acknowledgements until the hub has stored their messages.
    acker: Option<Acker>,
    /// Cancelled by the acker when an MQTT 3.x message could not be stored.
    ingest_failed: CancellationToken,
    /// MQTT 5 topic aliases this client defined ([MQTT-3.3.2-10]: per connection).
    topic_aliases: HashMap<u16, TopicName>,
}

struct Acker {
    queue: mpsc::Sender<(Option<IngestAck>, Outbound)>,
    task: tokio::task::JoinHandle<()>,
}

/// Awaits each held acknowledgement in arrival order and passes the ack on to the
/// writer. On a failed ingest, MQTT 5 gets the reason code; MQTT 3.x cannot be told,
/// so the connection is closed unacknowledged and the client resends after reconnect.
async fn ack_loop(
    mut pending: mpsc::Receiver<(Option<IngestAck>, Outbound)>,
    control: mpsc::Sender<Outbound>,
    version: ProtocolVersion,
    ingest_failed: CancellationToken,
) {
    while let Some((ack, packet)) = pending.recv().await {
        let result = match ack {
            Some(ack) => ack.await,
            None => Ok(()),
        };
        let packet = match (result, packet) {
            (Ok(()), packet) => packet,
            (Err(e), _) if !version.is_v5() => {
                debug!(error = %e, "ingest failed: closing the MQTT 3.x connection unacknowledged");
                ingest_failed.cancel();
                return;
            }
            (Err(e), Outbound::PubAck(id, ..)) => {
                Outbound::PubAck(id, e.reason_code(), Some(e.reason_string()))
            }
            (Err(e), Outbound::PubRec(id, ..)) => {
                Outbound::PubRec(id, e.reason_code(), Some(e.reason_string()))
            }
            (Err(_), packet) => packet,
        };
        if control.send(packet).await.is_err() {
            return;
        }
    }
}

type Handled = Result<Option<Exit>, ProtocolError>;

impl Connection<'_> {
    async fn send(&self, packet: Outbound) -> Handled {
        // the writer is gone only when the socket failed: end quietly
        match self.control.send(packet).await {
            Ok(()) => Ok(None),
            Err(_) => Ok(Some(Exit::Closed)),
        }
    }

    async fn handle(&mut self, packet: Inbound) -> Handled {
        match packet {
            Inbound::Publish(p) => self.publish(*p).await,
            Inbound::PubAck(id) => self.ack(|s| s.on_puback(id)),
            Inbound::PubComp(id) => self.ack(|s| s.on_pubcomp(id)),
            Inbound::PubRec(id) => {
                let rel = match self.entry.lock_owned(self.conn) {
                    Ok(mut st) => {
                        let rel = st.session.on_pubrec(id);
                        st.sync(self.shared, self.client_id);
                        rel
                    }
                    Err(_) => return Ok(Some(Exit::TakenOver)),
                };
                match rel {
                    Ok(rel) => self.send(rel).await,
                    Err(e) => {
                        debug!(client_id = %self.client_id, packet_id = id, error = %e, "PUBREC ignored");
                        Ok(None)
                    }
                }
            }
            Inbound::PubRel(id) => {
                let reason = match self.entry.lock_owned(self.conn) {
                    Ok(mut st) => {
                        let reason = st.session.on_pubrel(id);
                        if reason == 0x00 {
                            st.record(self.shared, || Op::DeleteIncomingQos2(self.client_id.clone(), id));
                        }
                        reason
                    }
                    Err(_) => return Ok(Some(Exit::TakenOver)),
                };
                // 0x92: no QoS 2 flow with this id is open (anymore)
                let text =
                    (reason >= 0x80).then(|| ReasonString::new(format!("packet identifier {id} not found")));
                self.send(Outbound::PubComp(id, reason, text)).await
            }
            Inbound::Subscribe { packet_id, filters, subscription_id } => {
                self.subscribe(packet_id, filters, subscription_id).await
            }
            Inbound::Unsubscribe { packet_id, filters } => self.unsubscribe(packet_id, filters).await,
            Inbound::PingReq => self.send(Outbound::PingResp).await,
            Inbound::Disconnect { reason, session_expiry } => {
                if let Some(secs) = session_expiry {
                    let mut st =
                        self.entry.lock_owned(self.conn).map_err(|_| ProtocolError::UnexpectedPacket)?;
                    // [MQTT-3.14.2-2] a session that expired at disconnect may not be revived
                    if st.expiry == Some(Duration::ZERO) && secs != 0 {
                        return Err(ProtocolError::UnexpectedPacket);
                    }
                    let cap = self.shared.config.max_session_expiry;
                    st.expiry = Some(if secs == u32::MAX {
                        cap
                    } else {
                        Duration::from_secs(u64::from(secs)).min(cap)
                    });
                }
                Ok(Some(Exit::Disconnect(reason)))
            }
            Inbound::Auth => Ok(Some(Exit::AuthNotSupported)),
            Inbound::Connect(_) => Err(ProtocolError::SecondConnect), // [MQTT-3.1.0-2]
            Inbound::ServerOnly => Err(ProtocolError::UnexpectedPacket),
        }
    }

    /// PUBACK / PUBCOMP: frees a slot in the in-flight window. An ack for an unknown
    /// id (e.g. after a session was cleaned) is ignored, as Mosquitto does.
    fn ack(&self, f: impl FnOnce(&mut telehub_mqtt::Session) -> Result<(), ProtocolError>) -> Handled {
        let result = match self.entry.lock_owned(self.conn) {
            Ok(mut st) => {
                let result = f(&mut st.session);
                st.sync(self.shared, self.client_id);
                result
            }
            Err(_) => return Ok(Some(Exit::TakenOver)),
        };
        if let Err(e) = result {
            debug!(client_id = %self.client_id, error = %e, "acknowledgement ignored");
        }
        self.entry.wake();
        Ok(None)
    }

    async fn publish(&mut self, p: PublishIn) -> Handled {
        let topic = match p.topic_alias {
            None => TopicName::new(p.topic).map_err(|_| ProtocolError::InvalidTopicName)?,
            // [MQTT-3.3.2-9] an alias is 1 ..= the Topic Alias Maximum we announced
            Some(alias) if alias == 0 || alias > self.shared.config.topic_alias_maximum => {
                let max = self.shared.config.topic_alias_maximum;
                return Err(ProtocolError::TopicAliasOutOfRange { alias, max });
            }
            // a topic with an alias (re)defines it; an empty topic uses it
            Some(alias) if p.topic.is_empty() => {
                self.topic_aliases.get(&alias).cloned().ok_or(ProtocolError::TopicAliasUndefined { alias })?
            }
            Some(alias) => {
                let topic = TopicName::new(p.topic).map_err(|_| ProtocolError::InvalidTopicName)?;
                self.topic_aliases.insert(alias, topic.clone());
                topic
            }
        };
        let message =
            Message { topic, payload: p.payload, qos: p.qos, retain: p.retain, properties: p.properties };
        let v5 = self.version.is_v5();
        match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => {
                // refused (by the authenticator or a queue limit): dropped (there is
                // nothing to answer), whatever the version
                if self.authorize(&message).is_ok() {
                    let _ =
                        sessions::publish(self.shared, Some(self.client_id), Arc::new(message), false).await;
                }
                Ok(None)
            }
            (QoS::AtLeastOnce, Some(id)) => {
                let ack = match self.authorize(&message) {
                    Ok(()) => {
                        match sessions::publish(self.shared, Some(self.client_id), Arc::new(message), false)
                            .await
                        {
                            Ok(ack) => ack,
                            // MQTT 5 §3.4.2.1: 0x97 Quota exceeded; nothing was routed
                            Err(QuotaExceeded) if v5 => {
                                let refused = Outbound::PubAck(
                                    id,
                                    QuotaExceeded::REASON_CODE,
                                    Some(QuotaExceeded::reason_string()),
                                );
                                return self.ack_after(None, refused).await;
                            }
                            // 3.x has no negative PUBACK: acknowledged, dropped (counted),
                            // as a 3.x publish the authenticator refuses
                            Err(QuotaExceeded) => None,
                        }
                    }
                    Err(refusal) if v5 => {
                        let text = refusal.reason_string(&message.topic);
                        return self
                            .ack_after(None, Outbound::PubAck(id, refusal.reason_code(), Some(text)))
                            .await;
                    }
                    Err(PublishRefusal::RateTooHigh) => return Ok(Some(Exit::RateTooHigh)),
                    Err(PublishRefusal::NotAuthorized) => None, // 3.x: acknowledged, dropped
                };
                self.ack_after(ack, Outbound::PubAck(id, 0, None)).await
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // on disk, the packet id and the deliveries it caused are committed
                // together: a resend after a restart is then either not routed (both
                // there) or routed for the first time (neither there)
                let mut hold = None;
                let (is_new, durable) = {
                    let Ok(mut st) = self.entry.lock_owned(self.conn) else {
                        return Ok(Some(Exit::TakenOver));
                    };
                    if st.session.incoming_qos2_pending() >= usize::from(self.shared.config.receive_maximum) {
                        return Err(ProtocolError::ReceiveMaximumExceeded); // [MQTT-3.3.4-9]
                    }
                    let is_new = st.session.on_incoming_qos2(id);
                    let durable = is_new && st.is_persistent() && self.shared.persist.is_some();
                    if durable && let Some(p) = self.shared.persist.as_deref() {
                        hold = Some(crate::persist::Hold::new(p));
                        st.record(self.shared, || Op::AddIncomingQos2(self.client_id.clone(), id));
                    }
                    (is_new, durable)
                };
                if !is_new {
                    // [MQTT-4.3.3-9] a resent PUBLISH is acknowledged, not routed again
                    // (nor asked about again: it was accepted the first time)
                    Stats::add(&self.shared.stats.messages_received, 1);
                    return self.ack_after(None, Outbound::PubRec(id, 0, None)).await;
                }
                // Err(None): acknowledged and dropped; Err(Some(reason)): the flow ends
                let routed = match self.authorize(&message) {
                    Ok(()) => {
                        match sessions::publish(self.shared, Some(self.client_id), Arc::new(message), durable)
                            .await
                        {
                            Ok(ack) => Ok(ack),
                            // MQTT 5 §3.5.2.1: 0x97 Quota exceeded; nothing was routed
                            Err(QuotaExceeded) if v5 => {
                                Err(Some((QuotaExceeded::REASON_CODE, QuotaExceeded::reason_string())))
                            }
                            // 3.x: as NotAuthorized below
                            Err(QuotaExceeded) => Err(None),
                        }
                    }
                    Err(PublishRefusal::NotAuthorized) if !v5 => Err(None),
                    Err(refusal) => Err(Some((refusal.reason_code(), refusal.reason_string(&message.topic)))),
                };
                let ack = match routed {
                    Ok(ack) => ack,
                    // 3.x NotAuthorized or over a queue limit: PUBREC, then PUBCOMP on
                    // PUBREL, as usual; dropped
                    Err(None) => self.shared.persist.as_deref().filter(|_| durable).map(|p| p.flush()),
                    Err(Some((reason, text))) => {
                        // the flow ends here (5.0: PUBREC >= 0x80, a later PUBREL gets
                        // PUBCOMP 0x92; 3.x: closed, and a resend must be asked about anew)
                        if let Ok(mut st) = self.entry.lock_owned(self.conn)
                            && st.session.on_pubrel(id) == 0x00
                        {
                            st.record(self.shared, || Op::DeleteIncomingQos2(self.client_id.clone(), id));
                        }
                        if !v5 {
                            return Ok(Some(Exit::RateTooHigh));
                        }
                        return self.ack_after(None, Outbound::PubRec(id, reason, Some(text))).await;
                    }
                };
                drop(hold);
                self.ack_after(ack, Outbound::PubRec(id, 0, None)).await
            }
            _ => Err(ProtocolError::MalformedPacket),
        }
    }

    /// Asks the authenticator whether this client may publish `message`, and counts it
    /// as received or refused.
    fn authorize(&self, message: &Message) -> Result<(), PublishRefusal> {
        let stats = &self.shared.stats;
        match self.shared.auth.authorize_publish(self.principal, message) {
            Ok(()) => {
                Stats::add(&stats.messages_received, 1);
                Ok(())
            }
            Err(refusal) => {
                Stats::add(&stats.messages_refused, 1);
                debug!(client_id = %self.client_id, topic = %message.topic, ?refusal, "PUBLISH refused");
                Err(refusal)
            }
        }
    }

    /// Sends a PUBACK/PUBREC once `ack` (the hub's commit) resolves, keeping
    /// acknowledgements in PUBLISH order ([MQTT-4.6.0-2]). The first held ack starts an
    /// acker task; from then on every ack of this connection goes through it. At most
    /// Receive Maximum acks wait; beyond that this reader waits too (backpressure).
    async fn ack_after(&mut self, ack: Option<IngestAck>, packet: Outbound) -> Handled {
        if ack.is_none() && self.acker.is_none() {
            return self.send(packet).await;
        }
        let acker = match &self.acker {
            Some(acker) => acker.queue.clone(),
            None => {
                let (queue, pending) = mpsc::channel(usize::from(self.shared.config.receive_maximum.max(1)));
                let task = self.shared.tasks.spawn(ack_loop(
                    pending,
                    self.control.clone(),
                    self.version,
                    self.ingest_failed.clone(),
                ));
                self.acker = Some(Acker { queue: queue.clone(), task });
                queue
            }
        };
        if self.version.is_v5() && acker.capacity() == 0 {
            // Receive Maximum acknowledgements are already held (plus the one the acker
            // awaits): this PUBLISH exceeds what we announced ([MQTT-3.3.4-9], 0x93).
            // 3.x has no Receive Maximum: the reader just waits for room below.
            return Err(ProtocolError::ReceiveMaximumExceeded);
        }
        match acker.send((ack, packet)).await {
            Ok(()) => Ok(None),
            Err(_) => Ok(Some(Exit::Closed)),
        }
    }

    async fn subscribe(
        &mut self,
        packet_id: u16,
        filters: Vec<(bytestring::ByteString, SubOptions)>,
        subscription_id: Option<u32>,
    ) -> Handled {
        let mut codes = Vec::with_capacity(filters.len());
        let mut refused = Refusals::default();
        let mut retained = Vec::new();
        let mut durable = false;
        for (n, (raw, options)) in filters.into_iter().enumerate() {
            let filter = match TopicFilter::new(raw) {
                Ok(filter) => filter,
                Err(e) => {
                    codes.push(SubAckCode::TopicFilterInvalid);
                    refused.add(|| format!("topic filter {}: {e}", n + 1));
                    continue;
                }
            };
            let shared = match filter.split_shared() {
                None => None,
                Some(Ok((_, inner))) => Some(inner),
                Some(Err(e)) => {
                    codes.push(SubAckCode::TopicFilterInvalid);
                    refused.add(|| format!("topic filter {}: {e}", n + 1));
                    continue;
                }
            };
            if shared.is_some() && options.no_local {
                return Err(ProtocolError::SharedNoLocal); // [MQTT-3.8.3-4]
            }
            if !self.shared.auth.authorize_subscribe(self.principal, filter.as_str()) {
                debug!(client_id = %self.client_id, filter = %filter.as_str(), "SUBSCRIBE refused");
                codes.push(SubAckCode::NotAuthorized);
                refused.add(|| format!("not authorized to subscribe to {}", filter.as_str()));
                continue;
            }
            match self.entry.lock_owned(self.conn) {
                Ok(mut st) => {
                    st.subscriptions.insert(filter.clone(), (options, subscription_id));
                    st.record_session(self.shared, self.client_id);
                    durable |= st.is_persistent();
                }
                Err(_) => return Ok(Some(Exit::TakenOver)),
            }
            let subscriber = Subscriber { entry: Arc::clone(self.entry), options, subscription_id };
            if let Some(inner) = shared {
                // no retained messages on a shared subscription: the group is not a new
                // subscriber each time a member joins
                self.shared.router.subscribe_shared(&filter, inner, subscriber);
                codes.push(SubAckCode::Granted(options.qos));
                continue;
            }
            let existed = self.shared.router.subscribe(&filter, subscriber);
            // [MQTT-3.3.1-6] retained messages go to a new subscription; MQTT 5 Retain
            // Handling 1 sends them only if it is new, 2 never
            let wants_retained = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if wants_retained {
                for (m, expires_at) in self.shared.router.retained_matching(&filter, self.shared.now()) {
                    retained.push(Delivery {
                        qos: m.qos.min(options.qos),
                        message: m,
                        retain: true,
                        subscription_ids: subscription_id.into_iter().collect(),
                        expires_at,
                        persist_id: None,
                    });
                }
            }
            codes.push(SubAckCode::Granted(options.qos));
        }
        if durable {
            wait_durable(self.shared, "SUBACK").await;
        }
        if let Some(exit) = self.send(Outbound::SubAck(packet_id, codes, refused.reason())).await? {
            return Ok(Some(exit));
        }
        for d in retained {
            // [MQTT-3.3.1-8] sent with RETAIN set because of the new subscription
            self.entry.enqueue(self.shared, d).await;
        }
        Ok(None)
    }

    async fn unsubscribe(&mut self, packet_id: u16, filters: Vec<bytestring::ByteString>) -> Handled {
        let mut codes = Vec::with_capacity(filters.len());
        let mut refused = Refusals::default();
        let mut durable = false;
        for (n, raw) in filters.into_iter().enumerate() {
            let filter = match TopicFilter::new(raw) {
                Ok(filter) => filter,
                Err(e) => {
                    codes.push(0x8f);
                    refused.add(|| format!("topic filter {}: {e}", n + 1));
                    continue;
                }
            };
            let had = match self.entry.lock_owned(self.conn) {
                Ok(mut st) => {
                    let had = st.subscriptions.remove(&filter).is_some();
                    if had {
                        st.record_session(self.shared, self.client_id);
                        durable |= st.is_persistent();
                    }
                    had
                }
                Err(_) => return Ok(Some(Exit::TakenOver)),
            };
            self.shared.router.unsubscribe(&filter, self.entry);
            codes.push(if had { 0x00 } else { 0x11 });
        }
        if durable {
            wait_durable(self.shared, "UNSUBACK").await;
        }
        // [MQTT-3.10.4-4] UNSUBACK even when nothing was removed
        self.send(Outbound::UnsubAck(packet_id, codes, refused.reason())).await
    }
}

/// The filters of one SUBSCRIBE / UNSUBSCRIBE that failed, for the one MQTT 5 reason
/// string their ack can carry: what went wrong with the first, and how many more failed.
/// Nothing is built while every filter succeeds.
#[derive(Default)]
struct Refusals {
    first: Option<String>,
    more: usize,
}

impl Refusals {
    fn add(&mut self, text: impl FnOnce() -> String) {
        match self.first {
            None => self.first = Some(text()),
            Some(_) => self.more += 1,
        }
    }

    fn reason(self) -> Option<ReasonString> {
        let first = self.first?;
        Some(ReasonString::new(match self.more {
            0 => first,
            more => format!("{first} (and {more} more)"),
        }))
    }
}

struct Writer<W> {
    /// CONNACK, then resent in-flight deliveries: written before anything else.
    initial: Vec<Outbound>,
    write: W,
    encoder: Encoder,
    control: mpsc::Receiver<Outbound>,
    entry: Arc<SessionEntry>,
    conn: u64,
    waker: Arc<Notify>,
    stop: CancellationToken,
    stats: Arc<Stats>,
    /// Start of the broker's clock, for message expiry.
    started: Instant,
    shared: Arc<Shared>,
}

impl<W> Writer<W> {
    fn encode(&mut self, packet: Outbound, buf: &mut BytesMut) {
        let is_publish = matches!(packet, Outbound::Publish { .. });
        match self.encoder.encode(packet, buf) {
            Ok(()) if is_publish => Stats::add(&self.stats.messages_sent, 1),
            Ok(()) => {}
            Err(e) => debug!(client_id = %self.entry.client_id, error = %e, "packet not encodable, not sent"),
        }
    }
}

/// Writes control packets first, then queued deliveries, many packets per `write`.
/// Ends when the reader drops its control sender (after flushing) or on `stop`.
async fn write_loop<W: WriteHalf>(mut w: Writer<W>) {
    let mut buf = BytesMut::new();
    for packet in std::mem::take(&mut w.initial) {
        w.encode(packet, &mut buf);
    }
    let mut control_open = true;
    loop {
        loop {
            match w.control.try_recv() {
                Ok(packet) => w.encode(packet, &mut buf),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    control_open = false;
                    break;
                }
            }
        }
        let now = BrokerTime(w.started.elapsed());
        let (more, durable) =
            match w.entry.drain(w.conn, &mut w.encoder, &mut buf, WRITE_BATCH, (now, &w.stats, &w.shared)) {
                Ok((sent, more, durable)) => {
                    Stats::add(&w.stats.messages_sent, sent);
                    (more, durable)
                }
                Err(_) => (false, false), // taken over: the new connection delivers
            };
        // a QoS 2 delivery of a session on disk goes out once its record is committed
        // (see `SessionEntry::drain`); a failed commit is logged by the journal, and
        // the delivery goes out as it would without persistence
        if durable && let Some(persist) = w.shared.persist.as_deref() {
            tokio::select! {
                _ = persist.flush() => {}
                _ = w.stop.cancelled() => return,
            }
        }
        if !buf.is_empty() {
            let len = buf.len() as u64;
            let written = async {
                w.write.write_all(&buf).await?;
                w.write.flush().await
            };
            tokio::select! {
                r = written => if r.is_err() { return },
                _ = w.stop.cancelled() => return,
            }
            Stats::add(&w.stats.bytes_sent, len);
            // keep the buffer while more is ready; free it before going idle
            if more {
                buf.clear();
            } else {
                buf = BytesMut::new();
            }
        }
        if more {
            continue;
        }
        if !control_open {
            break;
        }
        tokio::select! {
            biased;
            _ = w.stop.cancelled() => return,
            packet = w.control.recv() => match packet {
                Some(packet) => w.encode(packet, &mut buf),
                None => control_open = false,
            },
            _ = w.waker.notified() => {}
        }
    }
    let _ = w.write.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_sent_as_their_connack_codes() {
        let refusals =
            [Refusal::BadCredentials, Refusal::NotAuthorized, Refusal::ConnectionRate, Refusal::Unavailable];
        for refusal in refusals {
            for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
                let connack = Outbound::ConnAck {
                    session_present: false,
                    code: refusal_code(refusal),
                    assigned_client_id: None,
                    server_keep_alive: None,
                    receive_maximum: 1,
                    maximum_packet_size: 0,
                    topic_alias_maximum: 0,
                    reason_string: Some(refusal.reason_string()),
                };
                let mut buf = BytesMut::new();
                Encoder::new(version, 0).encode(connack, &mut buf).unwrap();
                // fixed header, one-byte remaining length, flags, then the code
                assert_eq!(buf[3], refusal.connack_code(version.is_v5()), "{refusal:?} over {version:?}");
            }
        }
    }
}
