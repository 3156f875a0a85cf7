//! [`Admission`]: the bound on points waiting for a backend's writer. A write holds
//! permits for its points from the moment it is queued until it is answered, so the
//! queue never holds more than `max_queued_points` (a larger single write takes them
//! all and goes alone). Overflow policy: the caller waits (backpressure), nothing is
//! dropped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::StoreError;

/// Points admitted to a writer's queue.
#[derive(Debug)]
pub(crate) struct Admission {
    semaphore: Arc<Semaphore>,
    max: u32,
}

impl Admission {
    pub(crate) fn new(max_points: usize) -> Self {
        let max = u32::try_from(max_points.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Self { semaphore: Arc::new(Semaphore::new(max as usize)), max }
    }

    /// Waits until `points` more points fit in the queue.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] once [`Admission::close`] was called.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is taken until it resolves.
    pub(crate) async fn admit(&self, points: usize) -> Result<OwnedSemaphorePermit, StoreError> {
        let n = u32::try_from(points).unwrap_or(u32::MAX).clamp(1, self.max);
        self.semaphore.clone().acquire_many_owned(n).await.map_err(|_| StoreError::Closed)
    }

    /// Refuses every later [`Admission::admit`], and wakes the waiting ones with an error.
    pub(crate) fn close(&self) {
        self.semaphore.close();
    }

    /// Whether [`Admission::close`] was called: the store takes no more writes of any
    /// kind.
    pub(crate) fn is_closed(&self) -> bool {
        self.semaphore.is_closed()
    }
}

/// The number of points of `records`, for [`Admission::admit`].
pub(crate) fn point_count(records: &[crate::Record]) -> usize {
    records.iter().map(|r| r.points.len()).sum()
}
