//! Webhooks and live streams wired into the app: the tap's feed and broadcast, the
//! endpoints, the inbound hooks, then the dispatcher, the sender and the API's `Hooks`.

use std::sync::Arc;

use telehub_core::Message;
use telehub_hub::events::{Events, Tap};
use telehub_hub::ingest::Ingest;
use telehub_hub::registry::RegistryError;
use telehub_hub::webhooks::{Inbound, WebhookError, Webhooks};
use telehub_store::Store;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::StartError;

/// Hub-wide backlog of the message broadcast live streams read, at least.
const STREAM_BROADCAST: usize = 1024;

/// Webhooks and streams, bound but not running.
pub(crate) struct Parts {
    webhooks: Webhooks<Store>,
    inbound: Inbound,
    feed: mpsc::Receiver<Arc<Message>>,
    messages: broadcast::Sender<Arc<Message>>,
    events: Events,
}

impl Parts {
    /// Adds the webhook feed and the stream broadcast to `tap`, loads the endpoints and
    /// checks the inbound hooks.
    pub(crate) async fn bind(
        tap: &mut Tap<Ingest>,
        store: Arc<Store>,
        config: &telehub_hub::webhooks::Config,
        events: Events,
    ) -> Result<Self, StartError> {
        let inbound =
            Inbound::new(&config.inbound).map_err(|e| StartError::Registry(RegistryError::Invalid(e)))?;
        let webhooks = Webhooks::open(store, config.clone()).await.map_err(|e| match e {
            WebhookError::Store(e) => StartError::Store(e),
            e => StartError::Registry(RegistryError::Invalid(e.to_string())),
        })?;
        let feed = tap.feed("webhooks", config.feed_capacity);
        let messages = tap.broadcast(config.stream_buffer.max(STREAM_BROADCAST));
        Ok(Self { webhooks, inbound, feed, messages, events })
    }

    /// The webhook service (rules call endpoints through it).
    pub(crate) fn service(&self) -> Webhooks<Store> {
        self.webhooks.clone()
    }

    /// Gives the API its `Hooks` (publishing through `control`) and starts the sender on
    /// `producers` (it stops at `shutdown`); returns the dispatcher, to run beside the
    /// ingest writer (it writes what it still holds once the producers have stopped).
    pub(crate) fn start(
        self,
        http: &telehub_api::Server,
        control: telehub_broker::Control,
        shutdown: &CancellationToken,
        producers: &TaskTracker,
    ) -> Dispatcher {
        let events = self.events.subscribe();
        http.hooks(telehub_api::Hooks::new(
            self.webhooks.clone(),
            self.inbound,
            control,
            self.messages,
            self.events,
            shutdown.clone(),
        ));
        producers.spawn(self.webhooks.clone().send(shutdown.clone()));
        Dispatcher { webhooks: self.webhooks, feed: self.feed, events }
    }
}

/// The dispatcher, ready to run.
pub(crate) struct Dispatcher {
    webhooks: Webhooks<Store>,
    feed: mpsc::Receiver<Arc<Message>>,
    events: broadcast::Receiver<Arc<telehub_hub::events::HubEvent>>,
}

impl Dispatcher {
    /// Runs until `stop`, then writes what it holds.
    pub(crate) async fn run(self, stop: CancellationToken) {
        self.webhooks.dispatch(self.feed, self.events, stop).await;
    }
}
