//! Totals shared by a scenario's tasks, updated once per batch rather than per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Default)]
pub(crate) struct Counters {
    /// PUBLISHes written by the publishers.
    pub(crate) sent: AtomicU64,
    /// PUBACKs the publishers received (QoS 1).
    pub(crate) acked: AtomicU64,
    /// PUBLISHes the subscribers received.
    pub(crate) received: AtomicU64,
    /// When the last PUBLISH reached a subscriber, in ns after the run started.
    pub(crate) last_received_ns: AtomicU64,
}

impl Counters {
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records `n` PUBLISHes received now.
    pub(crate) fn received_at(&self, n: u64, started: Instant) {
        Self::add(&self.received, n);
        self.last_received_ns.fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// From the start of the run to the last PUBLISH received.
    pub(crate) fn receive_window(&self) -> Duration {
        Duration::from_nanos(Self::get(&self.last_received_ns))
    }

    /// After the publishers stopped: waits until the subscribers received `expected`
    /// (they never will if the broker dropped some), nothing arrived for `quiet`, or
    /// `drain` passed.
    pub(crate) async fn wait_drained(&self, expected: u64, quiet: Duration, drain: Duration) {
        let end = Instant::now() + drain;
        let mut last = Self::get(&self.received);
        let mut last_change = Instant::now();
        while last < expected && Instant::now() < end && last_change.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = Self::get(&self.received);
            if now != last {
                last = now;
                last_change = Instant::now();
            }
        }
    }
}
