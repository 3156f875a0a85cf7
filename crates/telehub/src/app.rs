//! [`App`]: binds everything telehub serves, reports where, runs until a signal, drains.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use telehub_broker::Broker;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;

/// Start-up failed for a reason the operator must fix (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be created or written.
    #[error("data directory {path} is not usable: {source}")]
    DataDir {
        /// The configured directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] telehub_broker::BindError),
}

/// telehub with its sockets bound and data directory checked; nothing runs yet.
pub struct App {
    broker: Broker,
    data_dir: PathBuf,
    config: Config,
}

impl App {
    /// Checks the data directory and binds the listeners.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming the path or address at fault.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let data_dir = prepare_data_dir(&config.data_dir)?;
        let broker = Broker::bind(config.mqtt.clone(), None).await?;
        Ok(Self { broker, data_dir, config })
    }

    /// The bound MQTT address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// Logs the start-up block, serves until `signal` completes, then drains: stops
    /// accepting, disconnects clients (MQTT 5: reason 0x8B) and waits for every task,
    /// at most `grace`.
    ///
    /// # Errors
    ///
    /// When tasks are still running after `grace`.
    pub async fn run_until(self, signal: impl Future<Output = ()>, grace: Duration) -> anyhow::Result<()> {
        info!(
            version = env!("CARGO_PKG_VERSION"),
            mqtt = %self.mqtt_addr(),
            data_dir = %self.data_dir.display(),
            "telehub started: mqtt://{} (MQTT 3.1/3.1.1/5.0), data in {}",
            self.mqtt_addr(),
            self.data_dir.display(),
        );
        info!(http = %self.config.http.listen, "the HTTP API is not served yet: it arrives with the telemetry API");
        if !self.config.mqtt.allow_anonymous {
            warn!("device credentials are not implemented yet: every MQTT client is accepted");
        }
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(self.broker.run(shutdown.clone()));
        tasks.close();
        signal.await;
        info!("shutting down");
        shutdown.cancel();
        tokio::time::timeout(grace, tasks.wait())
            .await
            .context("tasks still running after the shutdown grace period")?;
        info!("stopped");
        Ok(())
    }
}

fn prepare_data_dir(path: &Path) -> Result<PathBuf, StartError> {
    let err = |source| StartError::DataDir { path: path.to_owned(), source };
    std::fs::create_dir_all(path).map_err(err)?;
    // prove we can write here now, not at the first commit
    let probe = path.join(".telehub-write-check");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    std::fs::canonicalize(path).map_err(err)
}
