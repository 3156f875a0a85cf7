//! A counting subscriber for the throughput scenarios: parses every PUBLISH in what one
//! `read` returned, acknowledges QoS 1 ones in one `write`, and pings on keep-alive.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::Conn;
use crate::counters::Counters;
use crate::wire::{self, PUBLISH};

/// Keep-alive asked for by throughput clients; subscribers ping at half of it.
pub(crate) const KEEP_ALIVE: u16 = 60;

/// Counts PUBLISHes into `counters` until `stop` changes.
pub(crate) async fn run(
    mut conn: Conn,
    counters: Arc<Counters>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut out = BytesMut::new();
    let every = Duration::from_secs(u64::from(KEEP_ALIVE) / 2);
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            r = conn.fill() => { r?; }
            _ = stop.changed() => break,
            _ = ping.tick() => wire::pingreq(&mut out),
        }
        let mut n = 0;
        while let Some((frame, used)) = wire::parse(&conn.rbuf)? {
            if frame.kind() == PUBLISH {
                n += 1;
                if let (Some(id), _) = frame.publish()? {
                    wire::puback(&mut out, id);
                }
            }
            conn.rbuf.advance(used);
        }
        if n > 0 {
            counters.received_at(n, started);
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).await?;
            out.clear();
        }
    }
    wire::disconnect(&mut out);
    let _ = conn.stream.write_all(&out).await;
    Ok(())
}

/// Waits briefly for stopped subscribers; reports (does not fail on) their errors, since
/// the counts they left are what the run measured. Stragglers are aborted.
pub(crate) async fn join_all(mut tasks: JoinSet<Result<()>>) {
    let end = Instant::now() + Duration::from_secs(2);
    while let Ok(Some(r)) = tokio::time::timeout_at(end, tasks.join_next()).await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("subscriber: {e:#}"),
            Err(e) => eprintln!("subscriber: {e}"),
        }
    }
    if !tasks.is_empty() {
        eprintln!("{} subscribers did not stop in time", tasks.len());
        tasks.abort_all();
    }
}
