//! [`Control`]: acting on live connections from outside the broker (the hub's device
//! registry drops a deleted device's or a revoked credential's connections), and the
//! set of live connections it acts on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use telehub_core::{ClientId, DeviceId};
use tokio_util::sync::CancellationToken;

use crate::auth::{Principal, SharedAuthenticator};

/// One authenticated connection.
struct LiveConn {
    principal: Principal,
    /// Cancelled by [`Control::disconnect_where`]: the connection closes with
    /// Administrative action (MQTT 5: DISCONNECT 0x98).
    revoke: CancellationToken,
}

#[derive(Default)]
struct LiveMap {
    by_conn: HashMap<u64, LiveConn>,
    /// How many live connections each device has.
    devices: HashMap<DeviceId, usize>,
}

/// The connections past CONNACK, by connection id: one entry per open connection,
/// removed when it ends ([`Registration`]'s drop).
#[derive(Default)]
pub(crate) struct Live {
    map: Mutex<LiveMap>,
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, LiveMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records connection `conn` of `principal`; it lasts as long as the returned
    /// [`Registration`], which tells `auth` the connection ended when dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        conn: u64,
        principal: Principal,
        client_id: ClientId,
        auth: SharedAuthenticator,
    ) -> Registration {
        let revoke = CancellationToken::new();
        let mut map = self.lock();
        if let Some(device) = &principal.device {
            *map.devices.entry(device.clone()).or_default() += 1;
        }
        map.by_conn.insert(conn, LiveConn { principal: principal.clone(), revoke: revoke.clone() });
        drop(map);
        Registration { live: Arc::clone(self), conn, principal, client_id, auth, revoke }
    }

    fn remove(&self, conn: u64) {
        let mut map = self.lock();
        let Some(gone) = map.by_conn.remove(&conn) else { return };
        if let Some(device) = gone.principal.device
            && let Some(n) = map.devices.get_mut(&device)
        {
            *n -= 1;
            if *n == 0 {
                map.devices.remove(&device);
            }
        }
    }
}

/// A connection's entry in [`Live`]. Dropping it removes the entry and calls
/// [`Authenticator::disconnected`](crate::Authenticator::disconnected).
pub(crate) struct Registration {
    live: Arc<Live>,
    conn: u64,
    principal: Principal,
    client_id: ClientId,
    auth: SharedAuthenticator,
    revoke: CancellationToken,
}

impl Registration {
    /// Cancelled when [`Control::disconnect_where`] picks this connection.
    pub(crate) fn revoked(&self) -> &CancellationToken {
        &self.revoke
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.remove(self.conn);
        self.auth.disconnected(&self.principal, &self.client_id);
    }
}

/// Acts on the broker's live connections from outside it, e.g. from the device
/// registry when a device is deleted or a credential revoked. Cheap to clone; valid
/// before, while and after the broker runs (see [`Broker::control`](crate::Broker::control)).
#[derive(Clone)]
pub struct Control {
    pub(crate) live: Arc<Live>,
    /// Weak: the registry holds a `Control` and the broker holds the registry.
    pub(crate) shared: std::sync::Weak<crate::Shared>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("connections", &self.live.lock().by_conn.len()).finish()
    }
}

impl Control {
    /// Publishes `message` as the hub (a command to a device, a rule's action): it is
    /// retained if flagged, offered to the ingest hook with no publisher (as a will is),
    /// and queued for every matching session. Returns how many sessions it was queued
    /// for; 0 when nobody subscribes or the broker is gone.
    pub async fn publish(&self, message: telehub_core::Message) -> usize {
        match self.shared.upgrade() {
            Some(shared) => crate::sessions::publish_from_hub(&shared, Arc::new(message)).await,
            None => 0,
        }
    }

    /// Closes every connection whose [`Principal`] matches `pred`; returns how many it
    /// picked. MQTT 5 clients are sent DISCONNECT 0x98 (Administrative action) first;
    /// their wills are published as for any connection the server closes (an
    /// authenticator that must prevent them refuses them in
    /// [`Authenticator::authorize_publish`](crate::Authenticator::authorize_publish)).
    ///
    /// Returns at once: each connection closes on its own task shortly after. A
    /// connection whose CONNECT is still being authenticated is not seen; the
    /// authenticator should already answer for it from the changed registry. `pred`
    /// runs under a lock: keep it quick.
    pub fn disconnect_where(&self, pred: impl Fn(&Principal) -> bool) -> usize {
        let map = self.live.lock();
        let mut n = 0;
        for live in map.by_conn.values() {
            if !live.revoke.is_cancelled() && pred(&live.principal) {
                live.revoke.cancel();
                n += 1;
            }
        }
        n
    }

    /// True while at least one connection authenticated as `device` is open.
    pub fn is_connected(&self, device: &DeviceId) -> bool {
        self.live.lock().devices.contains_key(device)
    }

    /// The devices with at least one open connection, in no particular order.
    pub fn connected_devices(&self) -> Vec<DeviceId> {
        self.live.lock().devices.keys().cloned().collect()
    }

    /// How many connections are open past CONNACK.
    pub fn connection_count(&self) -> usize {
        self.live.lock().by_conn.len()
    }
}
