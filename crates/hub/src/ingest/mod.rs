//! Telemetry ingest: messages and HTTP bodies become [`Record`]s ([`mapping`]), wait in
//! one bounded queue, and a single [`Writer`] task groups many callers' records into one
//! store write (group commit). A caller's future resolves only after its records are
//! committed, so an MQTT acknowledgement or an HTTP 2xx sent after it is durable.
//!
//! **The queue is bounded in records** ([`Config::queue_capacity`]), counting the records
//! being written. When it is full:
//!
//! * [`Ingest::try_ingest`] (HTTP) refuses at once with [`IngestError::QueueFull`], which
//!   carries the `Retry-After` to answer with (429);
//! * [`Ingest::ingest`] and, for QoS 1/2 messages, [`Ingest::offer_message`] (MQTT) wait
//!   for room, so the acknowledgement waits and the publisher's receive maximum slows it
//!   down; a QoS 0 message has no acknowledgement to hold and is refused.
//!
//! Nothing is dropped silently: every refusal is counted in [`IngestStats`].

mod hook;
pub mod mapping;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use telehub_core::{Message, QoS};
use telehub_store::{Record, StoreError, TelemetryStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use mapping::{DeviceSource, FieldRules, MapError, Mapping};

use crate::timestamp::ArrivalClock;

/// The `[ingest]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Records accepted but not yet committed (waiting or being written), at most.
    pub queue_capacity: usize,
    /// Records per store write, at most (one write may take several callers' records).
    pub max_batch_records: usize,
    /// What a refused HTTP client is told to wait (`Retry-After`, whole seconds).
    #[serde(with = "telehub_core::duration")]
    pub retry_after: Duration,
    /// A store write running longer than this makes the hub not ready (`/readyz`).
    #[serde(with = "telehub_core::duration")]
    pub stall_timeout: Duration,
    /// Published topics that are telemetry, tried in order; the first match wins.
    pub mappings: Vec<Mapping>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            queue_capacity: 100_000,
            max_batch_records: 10_000,
            retry_after: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(30),
            mappings: Mapping::defaults(),
        }
    }
}

/// Why records were not committed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The queue is full (only from [`Ingest::try_ingest`]); try again after `retry_after`.
    #[error("the ingest queue is full ({capacity} records waiting for the store)")]
    QueueFull {
        /// The configured capacity.
        capacity: usize,
        /// How long the client should wait.
        retry_after: Duration,
    },
    /// More records at once than the whole queue holds.
    #[error("{records} records at once is more than the ingest queue holds ({capacity})")]
    TooLarge {
        /// Records offered.
        records: usize,
        /// The configured capacity.
        capacity: usize,
    },
    /// Ingest is shutting down.
    #[error("ingest is shutting down")]
    Closed,
    /// The store refused the write; nothing of it was committed.
    #[error("the store write failed: {0}")]
    Store(#[source] Arc<StoreError>),
}

/// What a caller's records became, once committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Records committed (or already stored under the same `(device, msg_id)`).
    pub records: usize,
    /// Points in those records.
    pub points: usize,
}

/// Counters since start-up, each only ever growing (except [`IngestStats::queued`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Records committed.
    pub records: u64,
    /// Points committed.
    pub points: u64,
    /// Records skipped as already stored (`(device, msg_id)` dedupe).
    pub duplicates: u64,
    /// Store writes committed.
    pub batches: u64,
    /// Store writes that failed (their callers got [`IngestError::Store`]).
    pub write_errors: u64,
    /// Records refused because the queue was full ([`IngestError::QueueFull`]).
    pub refused_full: u64,
    /// Published messages on a mapped topic whose payload could not be used (not JSON,
    /// not an object, no device id…).
    pub rejected_payloads: u64,
    /// Records waiting or being written now.
    pub queued: u64,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    points: AtomicU64,
    duplicates: AtomicU64,
    batches: AtomicU64,
    write_errors: AtomicU64,
    refused_full: AtomicU64,
    rejected_payloads: AtomicU64,
}

/// Records from one caller, with the queue room they hold until committed.
struct Job {
    records: Vec<Record>,
    room: OwnedSemaphorePermit,
    reply: oneshot::Sender<Result<Receipt, IngestError>>,
}

struct Shared {
    config: Config,
    /// Free queue room, in records. Closed at shutdown.
    room: Arc<Semaphore>,
    /// Bounded by construction: every job holds at least one record of room, so there are
    /// never more jobs than `queue_capacity` and `try_send` never finds the channel full.
    jobs: mpsc::Sender<Job>,
    counters: Counters,
    /// Arrival times, unique per device.
    arrival: ArrivalClock,
    /// When the write in progress started.
    writing_since: std::sync::Mutex<Option<Instant>>,
    /// QoS 1/2 messages waiting for queue room ([`Ingest::offer_message`]); at most
    /// Receive Maximum per publisher, since the broker holds their acknowledgements.
    waiters: TaskTracker,
}

/// Where a queued caller's answer arrives.
type Answer = oneshot::Receiver<Result<Receipt, IngestError>>;

/// A queued message's commit, as [`Ingest::offer_message`] returns it.
pub type Pending = Pin<Box<dyn Future<Output = Result<Receipt, IngestError>> + Send + 'static>>;

/// The cloneable way to hand records to the writer.
#[derive(Clone)]
pub struct Ingest {
    shared: Arc<Shared>,
}

/// The task that commits queued records: run it with [`Writer::run`].
pub struct Writer<S> {
    shared: Arc<Shared>,
    jobs: mpsc::Receiver<Job>,
    store: Arc<S>,
}

impl Ingest {
    /// Creates the queue and its writer; nothing runs until [`Writer::run`] is spawned.
    pub fn new<S: TelemetryStore>(config: Config, store: Arc<S>) -> (Self, Writer<S>) {
        let capacity = config.queue_capacity.clamp(1, Semaphore::MAX_PERMITS);
        let (jobs, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            room: Arc::new(Semaphore::new(capacity)),
            config: Config {
                queue_capacity: capacity,
                max_batch_records: config.max_batch_records.max(1),
                ..config
            },
            jobs,
            counters: Counters::default(),
            arrival: ArrivalClock::default(),
            writing_since: std::sync::Mutex::new(None),
            waiters: TaskTracker::new(),
        });
        (Self { shared: shared.clone() }, Writer { shared, jobs: rx, store })
    }

    /// The ingest mappings in force.
    pub fn mappings(&self) -> &[Mapping] {
        &self.shared.config.mappings
    }

    /// Queues `records`, waiting for room if the queue is full, and resolves once they
    /// are committed.
    ///
    /// # Errors
    ///
    /// [`IngestError::TooLarge`], [`IngestError::Closed`] or [`IngestError::Store`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves may or may not leave the records committed.
    pub async fn ingest(&self, records: Vec<Record>) -> Result<Receipt, IngestError> {
        if records.is_empty() {
            return Ok(Receipt::default());
        }
        let n = self.permits_for(&records)?;
        let room = self.shared.room.clone().acquire_many_owned(n).await.map_err(|_| IngestError::Closed)?;
        self.enqueue(records, room)?.await.unwrap_or(Err(IngestError::Closed))
    }

    /// Queues `records` if there is room now, and resolves once they are committed.
    ///
    /// # Errors
    ///
    /// [`IngestError::QueueFull`] at once when there is no room, else as
    /// [`Ingest::ingest`].
    ///
    /// # Cancel safety
    ///
    /// As [`Ingest::ingest`].
    pub async fn try_ingest(&self, records: Vec<Record>) -> Result<Receipt, IngestError> {
        if records.is_empty() {
            return Ok(Receipt::default());
        }
        let n = self.permits_for(&records)?;
        let room = match self.shared.room.clone().try_acquire_many_owned(n) {
            Ok(room) => room,
            Err(TryAcquireError::NoPermits) => {
                self.shared.counters.refused_full.fetch_add(records.len() as u64, Ordering::Relaxed);
                return Err(self.queue_full());
            }
            Err(TryAcquireError::Closed) => return Err(IngestError::Closed),
        };
        self.enqueue(records, room)?.await.unwrap_or(Err(IngestError::Closed))
    }

    /// The broker side: maps a published message with the first matching mapping and,
    /// when it is telemetry, queues its record *now* and returns the future that
    /// resolves once it is committed (the broker holds the QoS 1/2 acknowledgement on
    /// it). Dropping the future does not un-queue the record.
    ///
    /// When the queue is full, a QoS 1/2 message (or a will) waits for room on a tracked
    /// task, so its acknowledgement waits and the publisher slows down; a QoS 0 message
    /// has no acknowledgement to hold, so it is refused and counted
    /// ([`IngestStats::refused_full`]).
    ///
    /// `None` when no mapping matches, or when the payload cannot be used: that is
    /// counted ([`IngestStats::rejected_payloads`]) and logged at debug, never an error
    /// for the publisher.
    pub fn offer_message(&self, message: &Message) -> Option<Pending> {
        let mapping = mapping::find(self.mappings(), &message.topic)?;
        let record = match mapping.map(&message.topic, &message.payload, &self.shared.arrival) {
            Ok(record) => record,
            Err(error) => {
                self.shared.counters.rejected_payloads.fetch_add(1, Ordering::Relaxed);
                debug!(topic = %message.topic, filter = %mapping.filter, %error, "telemetry payload not stored");
                return None;
            }
        };
        let answer = match self.shared.room.clone().try_acquire_many_owned(1) {
            Ok(room) => self.enqueue(vec![record], room),
            Err(TryAcquireError::Closed) => Err(IngestError::Closed),
            Err(TryAcquireError::NoPermits) if message.qos == QoS::AtMostOnce => {
                self.shared.counters.refused_full.fetch_add(1, Ordering::Relaxed);
                debug!(topic = %message.topic, "ingest queue full: QoS 0 telemetry not stored");
                Err(self.queue_full())
            }
            Err(TryAcquireError::NoPermits) => {
                let (reply, answer) = oneshot::channel();
                let this = self.clone();
                self.shared.waiters.spawn(async move {
                    let _ = reply.send(this.ingest(vec![record]).await);
                });
                Ok(answer)
            }
        };
        Some(Box::pin(async move { answer?.await.unwrap_or(Err(IngestError::Closed)) }))
    }

    /// The queue limit, in records.
    pub fn capacity(&self) -> usize {
        self.shared.config.queue_capacity
    }

    /// The arrival clock for records built outside [`Ingest::offer_message`] (HTTP).
    pub fn arrival(&self) -> &ArrivalClock {
        &self.shared.arrival
    }

    /// Counters since start-up.
    pub fn stats(&self) -> IngestStats {
        let c = &self.shared.counters;
        let free = self.shared.room.available_permits();
        IngestStats {
            records: c.records.load(Ordering::Relaxed),
            points: c.points.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            refused_full: c.refused_full.load(Ordering::Relaxed),
            rejected_payloads: c.rejected_payloads.load(Ordering::Relaxed),
            queued: self.shared.config.queue_capacity.saturating_sub(free) as u64,
        }
    }

    /// Whether the writer is accepting records and no store write has been running for
    /// longer than [`Config::stall_timeout`].
    pub fn is_healthy(&self) -> bool {
        let since = *self.shared.writing_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        !self.shared.room.is_closed() && since.is_none_or(|t| t.elapsed() < self.shared.config.stall_timeout)
    }

    fn permits_for(&self, records: &[Record]) -> Result<u32, IngestError> {
        let capacity = self.shared.config.queue_capacity;
        if records.len() > capacity {
            return Err(IngestError::TooLarge { records: records.len(), capacity });
        }
        // capacity ≤ Semaphore::MAX_PERMITS < u32::MAX
        Ok(u32::try_from(records.len()).expect("bounded by queue_capacity"))
    }

    fn queue_full(&self) -> IngestError {
        IngestError::QueueFull {
            capacity: self.shared.config.queue_capacity,
            retry_after: self.shared.config.retry_after,
        }
    }

    /// Hands `records` to the writer; the receiver gets the answer after the write.
    fn enqueue(&self, records: Vec<Record>, room: OwnedSemaphorePermit) -> Result<Answer, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.shared.jobs.try_send(Job { records, room, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Closed(_) => IngestError::Closed,
            mpsc::error::TrySendError::Full(_) => unreachable!("the channel holds queue_capacity jobs"),
        })?;
        Ok(answer)
    }
}

impl<S: TelemetryStore> Writer<S> {
    /// Commits queued records until `shutdown`, then refuses new records and commits
    /// everything already queued before returning (the flush of a graceful shutdown).
    /// Cancel `shutdown` only after the producers (HTTP, broker) have stopped, so the
    /// records they wait for still get committed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                job = self.jobs.recv() => job,
                () = shutdown.cancelled() => break,
            };
            let Some(first) = first else { return };
            self.write_batch(first).await;
        }
        // from here on, records not yet queued are refused (a waiting QoS 1/2 message
        // was not acknowledged, so its publisher sends it again); what is queued is
        // committed
        self.shared.room.close();
        self.jobs.close();
        let mut flushed = 0;
        while let Some(first) = self.jobs.recv().await {
            flushed += self.write_batch(first).await;
        }
        // every waiter has its answer or its refusal by now
        self.shared.waiters.close();
        self.shared.waiters.wait().await;
        debug!(records = flushed, "ingest queue flushed");
    }

    /// Writes `first` and whatever else is queued (up to the batch size) as one store
    /// write, and answers each caller. Returns the number of records written.
    async fn write_batch(&mut self, first: Job) -> usize {
        let max = self.shared.config.max_batch_records;
        let mut jobs = vec![first];
        let mut total = jobs[0].records.len();
        while total < max {
            match self.jobs.try_recv() {
                Ok(job) => {
                    total += job.records.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut receipts = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(total);
        let mut replies = Vec::with_capacity(jobs.len());
        let mut rooms = Vec::with_capacity(jobs.len());
        for job in jobs {
            let points = job.records.iter().map(|r| r.points.len()).sum();
            receipts.push(Receipt { records: job.records.len(), points });
            records.extend(job.records);
            replies.push(job.reply);
            rooms.push(job.room);
        }
        self.set_writing(Some(Instant::now()));
        let result = self.store.write(records).await;
        self.set_writing(None);
        drop(rooms);
        let c = &self.shared.counters;
        match result {
            Ok(summary) => {
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.records.fetch_add(summary.records as u64, Ordering::Relaxed);
                c.points.fetch_add(summary.points as u64, Ordering::Relaxed);
                c.duplicates.fetch_add(summary.duplicates as u64, Ordering::Relaxed);
                for (reply, receipt) in replies.into_iter().zip(receipts) {
                    // a caller that gave up waiting is no error: its records are committed
                    let _ = reply.send(Ok(receipt));
                }
            }
            Err(error) => {
                c.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(records = total, %error, "telemetry write failed");
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(IngestError::Store(error.clone())));
                }
            }
        }
        total
    }

    fn set_writing(&self, since: Option<Instant>) {
        *self.shared.writing_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = since;
    }
}

#[cfg(test)]
mod tests;
