//! Publishers for the throughput scenarios: QoS 0 writes as fast as the socket takes
//! (or at a set rate); QoS 1 keeps a window of unacknowledged PUBLISHes so the broker's
//! PUBACKs pace it. Both write many packets per `write`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};

use crate::client::{Conn, READ_CHUNK};
use crate::counters::Counters;
use crate::wire::{self, PUBACK, PublishTemplate};

/// Bytes of PUBLISHes per `write`.
const BATCH_BYTES: usize = 64 * 1024;
/// A write blocked this long past the end of the run fails the run instead of hanging.
const WRITE_GRACE: Duration = Duration::from_secs(30);

/// When a publisher stops, and how fast it may go.
#[derive(Clone, Copy)]
pub(crate) struct Limit {
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    /// Messages for this publisher; `None` until the deadline.
    pub(crate) count: Option<u64>,
    /// Messages per second for this publisher; `None` as fast as possible.
    pub(crate) rate: Option<u64>,
}

impl Limit {
    /// How many messages to send next (at most `max`), after waiting for the rate if
    /// need be; `None` when done.
    async fn next_batch(&self, sent: u64, max: u64) -> Option<u64> {
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return None;
            }
            let left = self.count.map_or(u64::MAX, |c| c.saturating_sub(sent));
            if left == 0 {
                return None;
            }
            let Some(rate) = self.rate else { return Some(left.min(max)) };
            let allowed = (now - self.started).as_nanos() as u64 * rate / 1_000_000_000 + 1;
            if allowed > sent {
                // at most 1 ms worth per batch keeps a paced stream smooth
                return Some(left.min(max).min(allowed - sent).min((rate / 1000).max(1)));
            }
            let next = self.started + Duration::from_nanos(sent * 1_000_000_000 / rate);
            tokio::time::sleep_until(next.min(self.deadline)).await;
        }
    }
}

fn batch_len(template: &PublishTemplate) -> u64 {
    (BATCH_BYTES / template.len()).max(1) as u64
}

/// Publishes at QoS 0 until `limit` says stop; returns how many were sent. Each
/// payload carries its sequence number.
pub(crate) async fn run_qos0(
    mut conn: Conn,
    template: PublishTemplate,
    limit: Limit,
    counters: Arc<Counters>,
) -> Result<u64> {
    let per_batch = batch_len(&template);
    let mut buf = BytesMut::with_capacity(BATCH_BYTES + template.len());
    let mut sent = 0u64;
    while let Some(n) = limit.next_batch(sent, per_batch).await {
        for k in 0..n {
            template.put(&mut buf, 0, sent + k);
        }
        timeout_at(limit.deadline + WRITE_GRACE, conn.stream.write_all(&buf))
            .await
            .context("a write blocked past the end of the run")??;
        buf.clear();
        sent += n;
        Counters::add(&counters.sent, n);
    }
    let mut out = BytesMut::new();
    wire::disconnect(&mut out);
    let _ = conn.stream.write_all(&out).await;
    Ok(sent)
}

/// Publishes at QoS 1 with at most `window` unacknowledged, until `limit` says stop,
/// then waits up to `drain` for the last acknowledgements. Returns how many were sent.
pub(crate) async fn run_qos1(
    conn: Conn,
    template: PublishTemplate,
    limit: Limit,
    window: usize,
    drain: Duration,
    counters: Arc<Counters>,
) -> Result<u64> {
    let Conn { stream, rbuf } = conn;
    let (read, mut write) = stream.into_split();
    let slots = Arc::new(Semaphore::new(window.max(1)));
    let acked = Arc::new(AtomicU64::new(0));
    let mut reader = JoinSet::new();
    reader.spawn(read_acks(read, rbuf, Arc::clone(&slots), Arc::clone(&acked), Arc::clone(&counters)));

    let per_batch = batch_len(&template);
    let mut buf = BytesMut::with_capacity(BATCH_BYTES + template.len());
    let mut sent = 0u64;
    let mut packet_id = 0u16;
    while let Some(n) = limit.next_batch(sent, per_batch).await {
        // a slot per message: wait for one, then take what else is free
        match timeout_at(limit.deadline, slots.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => break,
        }
        let more = (slots.available_permits() as u64).min(n - 1);
        if more > 0
            && let Ok(permits) = slots.try_acquire_many(more as u32)
        {
            permits.forget();
        }
        let got = 1 + more;
        for k in 0..got {
            // ids cycle over 1..=65535; the window keeps far fewer in flight
            packet_id = packet_id.checked_add(1).unwrap_or(1);
            template.put(&mut buf, packet_id, sent + k);
        }
        timeout_at(limit.deadline + WRITE_GRACE, write.write_all(&buf))
            .await
            .context("a write blocked past the end of the run")??;
        buf.clear();
        sent += got;
        Counters::add(&counters.sent, got);
    }
    let end = Instant::now() + drain;
    while acked.load(Ordering::Relaxed) < sent && Instant::now() < end && reader.try_join_next().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reader.abort_all();
    let mut out = BytesMut::new();
    wire::disconnect(&mut out);
    let _ = write.write_all(&out).await;
    Ok(sent)
}

/// Counts PUBACKs and frees a window slot for each.
async fn read_acks(
    mut read: OwnedReadHalf,
    mut rbuf: BytesMut,
    slots: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
    counters: Arc<Counters>,
) -> Result<()> {
    loop {
        let mut n = 0;
        while let Some((frame, used)) = wire::parse(&rbuf)? {
            if frame.kind() == PUBACK {
                n += 1;
            }
            rbuf.advance(used);
        }
        if n > 0 {
            slots.add_permits(n);
            acked.fetch_add(n as u64, Ordering::Relaxed);
            Counters::add(&counters.acked, n as u64);
        }
        rbuf.reserve(READ_CHUNK);
        if read.read_buf(&mut rbuf).await? == 0 {
            anyhow::bail!("connection closed by the broker");
        }
    }
}
