//! Connection storm: thousands of clients connect at once over TCP and drop in
//! different ways; afterwards the broker still serves a subscriber connected before the
//! storm, accepts new clients, and its live connection count is back where it started.

use std::sync::Arc;
use std::time::Duration;

use telehub_broker::Control;
use telehub_testkit::{Connect, Publish, TestBroker, Version, build};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// Clients per way of dropping.
const PER_KIND: usize = 500;

/// Upper bound for the whole storm to play out: a hang detector, not a speed
/// requirement (a storm on a loaded 2-core machine may queue in the accept backlog).
const STORM_BOUND: Duration = Duration::from_secs(180);

/// Upper bound for the broker to notice every dropped connection.
const SETTLE_BOUND: Duration = Duration::from_secs(60);

const TOPIC: &str = "storm/after";

/// How a storm client leaves.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// Closes the socket right after CONNACK, without DISCONNECT (its will is published).
    AfterConnack,
    /// Sends half of its CONNECT, then closes.
    MidConnect,
    /// Subscribes to [`TOPIC`], then closes without DISCONNECT.
    AfterSubscribe,
    /// Sends PINGREQ and closes without reading the PINGRESP (a reset when it arrived).
    UnreadPingResp,
    /// Sends DISCONNECT and waits for the server to close.
    CleanDisconnect,
}

const EXITS: [Exit; 5] =
    [Exit::AfterConnack, Exit::MidConnect, Exit::AfterSubscribe, Exit::UnreadPingResp, Exit::CleanDisconnect];

/// Reads exactly `expected.len()` bytes and asserts they are `expected`.
async fn expect(stream: &mut TcpStream, expected: &[u8], what: &str) {
    let mut got = vec![0; expected.len()];
    if let Err(e) = stream.read_exact(&mut got).await {
        panic!("{what}: read failed: {e}");
    }
    assert_eq!(got, expected, "{what}");
}

/// One storm client: connects as `storm-<n>` (MQTT 3.1.1, clean session) and leaves by
/// `exit`. Raw bytes on a plain socket with no per-step timeout: the storm as a whole is
/// bounded by [`STORM_BOUND`].
async fn storm_client(addr: std::net::SocketAddr, n: usize, exit: Exit, start: Arc<Barrier>) {
    start.wait().await;
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => panic!("storm client {n} ({exit:?}) cannot connect: {e}"),
    };
    let connect = Connect::v311(&format!("storm-{n}")).will(&format!("storm/will/{n}"), b"gone", 0, false);
    let connect = connect.to_bytes();
    if let Exit::MidConnect = exit {
        stream.write_all(&connect[..connect.len() / 2]).await.unwrap();
        return;
    }
    stream.write_all(&connect).await.unwrap();
    expect(&mut stream, &[0x20, 0x02, 0x00, 0x00], "CONNACK accepted").await;
    match exit {
        Exit::AfterConnack | Exit::MidConnect => {}
        Exit::AfterSubscribe => {
            stream.write_all(&build::subscribe(Version::V311, 1, &[(TOPIC, 1)])).await.unwrap();
            expect(&mut stream, &[0x90, 0x03, 0x00, 0x01, 0x01], "SUBACK QoS 1").await;
        }
        Exit::UnreadPingResp => stream.write_all(&build::pingreq()).await.unwrap(),
        Exit::CleanDisconnect => {
            stream.write_all(&build::disconnect()).await.unwrap();
            let mut rest = Vec::new();
            // [MQTT-3.14.4-1] the server closes after DISCONNECT, sending nothing more
            let read = stream.read_to_end(&mut rest).await;
            assert!(rest.is_empty(), "bytes after DISCONNECT: {rest:02x?} ({read:?})");
        }
    }
}

/// Waits until the broker counts `want` live connections, both in [`Control`] (past
/// CONNACK) and in its `connections_current` statistic (which a connection leaves later,
/// after its session is detached and its will sent).
///
/// # Panics
///
/// When that has not happened within [`SETTLE_BOUND`].
async fn wait_for_connections(broker: &TestBroker, control: &Control, want: usize) {
    let deadline = Instant::now() + SETTLE_BOUND;
    loop {
        let live = control.connection_count();
        let current = broker.stats().snapshot().connections_current;
        if live == want && current == want as u64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {SETTLE_BOUND:?}: {live} live connections, {current} current, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_serves_after_a_connection_storm() {
    let broker = TestBroker::start().await;
    let control = broker.control();

    let (mut bystander, _) = broker.client(&Connect::v311("storm-bystander")).await;
    assert_eq!(bystander.subscribe(1, &[(TOPIC, 1)]).await, [1]);
    wait_for_connections(&broker, &control, 1).await;
    let before = control.connection_count();

    let total = PER_KIND * EXITS.len();
    let start = Arc::new(Barrier::new(total));
    let tasks = TaskTracker::new();
    let handles: Vec<_> = (0..total)
        .map(|n| tasks.spawn(storm_client(broker.addr(), n, EXITS[n % EXITS.len()], Arc::clone(&start))))
        .collect();
    tasks.close();
    let storm = async {
        for handle in handles {
            if let Err(e) = handle.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    };
    if tokio::time::timeout(STORM_BOUND, storm).await.is_err() {
        panic!("{total} storm clients not done within {STORM_BOUND:?}");
    }

    // every storm connection is gone, and only those
    wait_for_connections(&broker, &control, before).await;

    // the bystander still receives, from a client that connects after the storm
    let (mut publisher, _) = broker.client(&Connect::v311("storm-publisher")).await;
    publisher.publish(&Publish::new(Version::V311, TOPIC, b"still here").qos(1, 1)).await;
    let got = bystander.expect_publish().await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), (TOPIC, &b"still here"[..]));
    bystander.send(&build::puback(got.id())).await;
    // and nothing else: the storm clients' subscriptions and wills went nowhere near it
    bystander.expect_nothing().await;
    broker.assert_serving().await;
    publisher.disconnect().await;
    broker.stop().await;
}
