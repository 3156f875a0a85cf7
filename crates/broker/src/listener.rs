//! The MQTT/TCP accept loop: one tracked task per connection, stopped by `shutdown`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{Shared, connection};

/// Accepts until `shutdown` is cancelled. Accept errors (e.g. out of file descriptors)
/// are logged and retried after a short pause instead of ending the listener.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // NODELAY keeps latency low; the writer already coalesces packets into
                // one write per wake-up, so Nagle would only add delay.
                let _ = stream.set_nodelay(true);
                let shared2 = Arc::clone(&shared);
                shared.tasks.spawn(connection::serve(shared2, stream, peer, shutdown.child_token()));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}
