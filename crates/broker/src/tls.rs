//! TLS for the MQTT/TLS and secure WebSocket listeners: the server certificate, its key
//! and the optional client CA, read from PEM files, and their reload on SIGHUP or when
//! the files change.
//!
//! The [`ServerConfig`] sits behind a lock that each accept reads once: a reload swaps
//! in a new one for the connections that come after it, and connections already open
//! keep the certificate they were accepted with. This also lets a reload change the
//! client CA, which a certificate resolver alone (`ResolvesServerCert`) could not.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::TlsConfig;

/// The TLS certificate, key or client CA cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of `mqtt.tls.cert` and `mqtt.tls.key` is set.
    #[error("`mqtt.tls.{missing}` is not set: TLS needs both `cert` and `key`")]
    Incomplete {
        /// The key that is missing.
        missing: &'static str,
    },
    /// A file cannot be read or is not PEM.
    #[error("cannot read the TLS {what} {}", path.display())]
    Read {
        /// "certificate", "private key" or "client CA".
        what: &'static str,
        /// The configured file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file holds no PEM item of the kind expected.
    #[error("no PEM {what} in {}", path.display())]
    Empty {
        /// "certificate", "private key" or "client CA".
        what: &'static str,
        /// The configured file.
        path: PathBuf,
    },
    /// The certificate and key were read but do not make a usable server identity
    /// (e.g. the key does not belong to the certificate).
    #[error("the TLS certificate {} and key {} are not usable", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client CA file holds no usable CA certificate.
    #[error("the TLS client CA {} is not usable", path.display())]
    ClientCa {
        /// The configured file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// The files a TLS listener reads.
#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// What a change to a file changes: its modification time and size (`None`: unreadable).
type Stamp = Option<(SystemTime, u64)>;

impl Files {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.paths()
            .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }

    /// Reads every file and builds the server config.
    fn load(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let certs = read_certs(&self.cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|source| read_error(&self.key, "private key", source))?;
        let identity = |source| TlsError::Identity { cert: self.cert.clone(), key: self.key.clone(), source };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(identity)?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for ca in read_certs(path, "client CA")? {
                    // an unparsable CA surfaces as the builder's "no root certificates"
                    let _ = roots.add(ca);
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|source| TlsError::ClientCa { path: path.clone(), source })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        // rustls checks here that the key belongs to the certificate
        builder.with_single_cert(certs, key).map_err(identity)
    }
}

/// The aws-lc-rs provider, passed to every builder rather than installed process-wide:
/// with both of rustls' provider features enabled (as other crates may do), the
/// builders that pick the process default would panic (reference/deps.md §5).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_error(path: &Path, what: &'static str, source: rustls::pki_types::pem::Error) -> TlsError {
    match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty { what, path: path.to_owned() },
        source => TlsError::Read { what, path: path.to_owned(), source },
    }
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |source| read_error(path, what, source);
    let certs =
        CertificateDer::pem_file_iter(path).map_err(err)?.collect::<Result<Vec<_>, _>>().map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_owned() });
    }
    Ok(certs)
}

/// The TLS side of the listeners that use it: the server config in use, swapped by
/// [`Tls::reload`].
#[derive(Debug)]
pub(crate) struct Tls {
    files: Files,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files of `config`; `None` when TLS is not configured.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file at fault.
    pub(crate) fn from_config(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let (cert, key) = match (&config.cert, &config.key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (Some(_), None) => return Err(TlsError::Incomplete { missing: "key" }),
            (None, Some(_)) => return Err(TlsError::Incomplete { missing: "cert" }),
        };
        let files = Files { cert, key, client_ca: config.client_ca.clone() };
        let current = RwLock::new(Arc::new(files.load()?));
        Ok(Some(Self { files, current }))
    }

    /// An acceptor with the config in use now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner)))
    }

    /// Reads the files again; new connections get the result. On error the config in
    /// use stays.
    fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(self.files.load()?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }
}

/// SIGHUP, when it could be registered. Registered at bind, before the start-up line,
/// so that a SIGHUP after it never has its default action (terminate).
pub(crate) struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangup {
    /// Registers for SIGHUP (not on other platforms).
    pub(crate) fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(s) => Self(Some(s)),
                Err(e) => {
                    warn!(error = %e, "cannot handle SIGHUP: the TLS certificate reloads only when its files change");
                    Self(None)
                }
            }
        }
        #[cfg(not(unix))]
        Self()
    }

    /// Completes on the next SIGHUP; never without one.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.0
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Reloads `tls` on SIGHUP, and when a file's modification time or size changed since
/// the last look (every `interval`; zero: never), until `stop`.
///
/// The look is a `stat` of two or three files, and a reload reads a few kilobytes: done
/// on the runtime thread, as a blocking-pool hop would cost more than it saves.
pub(crate) async fn reload_loop(
    tls: Arc<Tls>,
    interval: Duration,
    mut hangup: Hangup,
    stop: CancellationToken,
) {
    let mut seen = tls.files.stamps();
    let poll = async |seen: &[Stamp]| {
        if interval.is_zero() {
            std::future::pending::<()>().await;
        }
        loop {
            tokio::time::sleep(interval).await;
            if tls.files.stamps() != seen {
                // let a writer that replaces the certificate and then the key finish
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        }
    };
    loop {
        let trigger = tokio::select! {
            () = stop.cancelled() => return,
            () = hangup.recv() => "SIGHUP",
            () = poll(&seen) => "file change",
        };
        seen = tls.files.stamps();
        match tls.reload() {
            Ok(()) => info!(cert = %tls.files.cert.display(), trigger, "TLS certificate reloaded"),
            Err(e) => error!(
                error = %e,
                cause = %std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default(),
                trigger,
                "TLS certificate not reloaded: the previous one stays in use"
            ),
        }
    }
}
