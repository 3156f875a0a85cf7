//! [`ShadowStore`]: each device's state shadow, a desired and a reported JSON document
//! under one version number that every change increments, so writers of the desired
//! document can compare-and-set against the version they read.

use std::future::Future;

use telehub_core::DeviceId;

use crate::{StoreError, Timestamp};

/// A device's state shadow.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// What the device should be (`{}` until first set).
    pub desired: serde_json::Value,
    /// What the device says it is (`{}` until first reported).
    pub reported: serde_json::Value,
    /// Incremented by every change of either document; the first change makes it 1
    /// (a device without a shadow is at version 0).
    pub version: i64,
    /// When desired was last set.
    pub desired_at: Option<Timestamp>,
    /// When reported was last set.
    pub reported_at: Option<Timestamp>,
}

/// A compare-and-set lost: the shadow is at `current_version`, not the one expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowConflict {
    /// The version the shadow is at (0 when the device has none).
    pub current_version: i64,
}

/// Device state shadows.
///
/// Every method is safe to call from many tasks (and nodes) at once, and durable when
/// its future resolves `Ok`. JSON holding U+0000 is refused with
/// [`StoreError::Backend`] on both backends.
pub trait ShadowStore: Send + Sync + 'static {
    /// The device's shadow, `None` if it was never set.
    fn shadow_get(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Option<Shadow>, StoreError>> + Send;

    /// Replaces the desired document at `at` and increments the version, if
    /// `expected_version` is `None` or the current version (0 for a device without a
    /// shadow); else changes nothing and returns the conflict.
    fn shadow_set_desired(
        &self,
        device: &DeviceId,
        desired: serde_json::Value,
        expected_version: Option<i64>,
        at: Timestamp,
    ) -> impl Future<Output = Result<Result<Shadow, ShadowConflict>, StoreError>> + Send;

    /// Replaces the reported document at `at` and increments the version.
    fn shadow_set_reported(
        &self,
        device: &DeviceId,
        reported: serde_json::Value,
        at: Timestamp,
    ) -> impl Future<Output = Result<Shadow, StoreError>> + Send;

    /// Deletes the device's shadow (when the device is deleted); whether it had one.
    fn shadow_delete(&self, device: &DeviceId) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Refuses a document holding U+0000 (see [`ShadowStore`]).
pub(crate) fn refuse_nul(doc: &serde_json::Value) -> Result<(), StoreError> {
    if crate::registry::json_has_nul(doc) {
        return Err(StoreError::Backend("a shadow document contains a NUL character".into()));
    }
    Ok(())
}

/// Which document a write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Desired,
    Reported,
}

impl Side {
    /// The `UPDATE … SET` clause of this side; `{d}` is the document's parameter, `{t}`
    /// the time's.
    pub(crate) fn set_clause(self, d: &str, t: &str) -> String {
        match self {
            Side::Desired => format!("desired = {d}, desired_at = {t}, version = version + 1"),
            Side::Reported => format!("reported = {d}, reported_at = {t}, version = version + 1"),
        }
    }
}
