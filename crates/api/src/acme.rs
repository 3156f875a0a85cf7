//! ACME certificates for the HTTPS listener (the `acme` cargo feature), with rustls-acme.
//!
//! [`certs`] turns a validated `[http.acme]` into the listener's [`Certs`]:
//!
//! * the API's server config, whose certificate comes from rustls-acme's resolver (no
//!   certificate until the first one is deployed: until then HTTPS handshakes fail, and
//!   the plain HTTP listener serves as usual);
//! * the TLS-ALPN-01 challenge config, which `https::TlsListener` uses for the CA's
//!   `acme-tls/1` validation handshakes on the HTTPS port itself (so that port must be
//!   the one the CA reaches as 443, directly or forwarded);
//! * the [`Renewal`], which `Server::run` drives beside the listeners until the shutdown
//!   token: it deploys the certificate cached in `cache_dir` or orders one (the account
//!   key is created once and cached there too), renews when a third of the certificate's
//!   lifetime remains, and after a failed order retries with a back-off that doubles from
//!   1 s up to 2¹⁶ s (rustls-acme's). Every event is logged (`ACME: …`; rustls-acme's own
//!   steps, such as "trigger challenge for …", come through the `log` bridge under the
//!   `rustls_acme` target) and kept in [`AcmeStatus`].
//!
//! The CA is Let's Encrypt (production, or staging with `staging`) or the `directory` of
//! another (step-ca, pebble), whose TLS certificate is checked against the public roots
//! or the `directory_ca` file. The aws-lc-rs provider is passed explicitly, as everywhere.
//!
//! Tested here: the challenge routing, and that a server whose CA cannot be reached
//! starts, serves plain HTTP, caches the account key, reports the failed order and stops
//! on shutdown. A real order against a CA is not (none is reachable from the tests).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_core::Stream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_acme::caches::DirCache;
use rustls_acme::{AcmeState, EventError, EventOk};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::https::{AcmeConfig, AcmeStatus, Certs, HTTP_1_1};

type State = AcmeState<io::Error, io::Error>;
type Event = rustls_acme::Event<io::Error, io::Error>;

/// Keeps the ACME certificate deployed and current; see the module docs.
pub(crate) struct Renewal {
    /// In a mutex only so the server stays `Sync`; taken whole by [`Renewal::run`].
    state: Mutex<State>,
    status: watch::Sender<AcmeStatus>,
    domains: Vec<String>,
    directory: String,
    cache_dir: PathBuf,
}

/// The HTTPS listener's certificates from ACME as `config` (validated) says; creates
/// `cache_dir` (mode 0700) and checks it is writable.
///
/// # Errors
///
/// The setting at fault and why: `cache_dir` cannot be created or written,
/// `directory_ca` cannot be read.
pub(crate) fn certs(config: &AcmeConfig) -> Result<Certs, String> {
    prepare_cache_dir(&config.cache_dir)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let acme = match &config.directory_ca {
        None => rustls_acme::AcmeConfig::new_with_provider(&config.domains, Arc::clone(&provider)),
        Some(path) => {
            let client = directory_client(path, Arc::clone(&provider))?;
            rustls_acme::AcmeConfig::new_with_client_config(&config.domains, client)
        }
    };
    let contact = match config.contact.strip_prefix("mailto:") {
        Some(_) => config.contact.clone(),
        None => format!("mailto:{}", config.contact),
    };
    let directory = config.directory_url().to_owned();
    let state = acme
        .contact_push(contact)
        .directory(&directory)
        .cache(DirCache::new(config.cache_dir.clone()))
        .state();
    let challenge = state.challenge_rustls_config_with_provider(Arc::clone(&provider));
    let mut serve = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("`[http.acme]`: cannot make the TLS config: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(state.resolver());
    serve.alpn_protocols = vec![HTTP_1_1.to_vec()];
    let (status, receiver) = watch::channel(AcmeStatus::default());
    let renewal = Renewal {
        state: Mutex::new(state),
        status,
        domains: config.domains.clone(),
        directory,
        cache_dir: config.cache_dir.clone(),
    };
    Ok(Certs {
        serve: Arc::new(serve),
        challenge: Some(challenge),
        renewal: Some(renewal),
        status: Some(receiver),
    })
}

/// Creates `dir` (0700: it will hold the account key and the certificate's private key),
/// warns when an existing one is open to others, and checks a file can be written in it.
fn prepare_cache_dir(dir: &Path) -> Result<(), String> {
    let fail =
        |what: &str, e: io::Error| format!("`http.acme.cache_dir`: cannot {what} {}: {e}", dir.display());
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        builder.mode(0o700);
        builder.create(dir).map_err(|e| fail("create", e))?;
        let mode = std::fs::metadata(dir).map_err(|e| fail("read", e))?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                cache_dir = %dir.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "`http.acme.cache_dir` holds private keys but others may read it: chmod 700"
            );
        }
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(|e| fail("create", e))?;
    let probe = dir.join(".telehub-write-check");
    std::fs::write(&probe, b"").map_err(|e| fail("write in", e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The client config for a private CA's directory: its server certificate is checked
/// against the roots in `path` (PEM) only.
fn directory_client(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<ClientConfig>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("`http.acme.directory_ca`: {}: {e}", path.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(&e))? {
        roots.add(cert.map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
    }
    if roots.is_empty() {
        return Err(fail(&"holds no certificate"));
    }
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Renewal {
    /// Deploys, orders and renews the certificate until `shutdown` (an order in progress
    /// is dropped; the next start resumes from `cache_dir`).
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let Self { state, status, domains, directory, cache_dir } = self;
        let mut state = Box::pin(state.into_inner().unwrap_or_else(PoisonError::into_inner));
        tracing::info!(
            ?domains,
            %directory,
            cache_dir = %cache_dir.display(),
            "ACME: deploying the certificate cached in cache_dir, or ordering one"
        );
        loop {
            let next = std::future::poll_fn(|cx| state.as_mut().poll_next(cx));
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                event = next => event,
            };
            // the stream never ends; were it to, there is nothing left to renew
            let Some(event) = event else { break };
            status.send_modify(|status| record(status, event));
        }
        tracing::debug!("ACME: renewal stopped");
    }
}

/// Logs `event` and counts it in `status`.
fn record(status: &mut AcmeStatus, event: Event) {
    match event {
        Ok(EventOk::DeployedCachedCert) => {
            tracing::info!(
                "ACME: deployed the cached certificate; it is renewed when a third of its lifetime remains"
            );
            status.certificate = true;
        }
        Ok(EventOk::DeployedNewCert) => {
            tracing::info!("ACME: ordered and deployed a new certificate");
            status.certificate = true;
            status.ordered += 1;
            status.failures = 0;
            status.last_error = None;
        }
        Ok(EventOk::CertCacheStore) => tracing::debug!("ACME: certificate stored in cache_dir"),
        Ok(EventOk::AccountCacheStore) => tracing::info!("ACME: new account key stored in cache_dir"),
        Err(EventError::Order(e)) => {
            let retry_in = backoff(status.failures);
            status.failures = status.failures.saturating_add(1);
            tracing::error!(
                error = %e,
                failures = status.failures,
                ?retry_in,
                "ACME: the certificate order failed; retrying after the back-off"
            );
            status.last_error = Some(format!("order: {e}"));
        }
        Err(e) => {
            tracing::error!(error = %e, "ACME: cache or certificate error");
            status.last_error = Some(e.to_string());
        }
    }
}

/// How long rustls-acme waits before the next order after `failures` failed in a row:
/// 1 s doubling per failure, at most 2¹⁶ s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_up_to_a_cap() {
        let secs: Vec<u64> = [0, 1, 2, 10, 16, 17, 1000].into_iter().map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 1024, 65536, 65536, 65536]);
    }

    #[test]
    fn order_failures_are_counted_until_a_certificate_is_deployed() {
        let mut status = AcmeStatus::default();
        record(&mut status, Ok(EventOk::AccountCacheStore));
        assert_eq!(status, AcmeStatus::default());
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        record(&mut status, Err(EventError::CertCacheStore(refused)));
        assert!(status.last_error.as_deref().unwrap().contains("refused"), "{status:?}");
        record(&mut status, Ok(EventOk::DeployedNewCert));
        assert_eq!(
            (status.certificate, status.ordered, status.failures, status.last_error),
            (true, 1, 0, None)
        );
    }
}
