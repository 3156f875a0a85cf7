//! HTTPS: the TLS listener that `axum::serve` takes, the server certificate (the same PEM
//! files as `[mqtt.tls]`), the plain listener's redirect to HTTPS, and `[http.acme]`.
//!
//! [`TlsListener`] accepts TCP connections and runs their TLS handshakes concurrently
//! (at most [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]), handing
//! `axum::serve` only finished handshakes: a client that stalls its handshake holds up
//! nobody. Failed handshakes are logged at `debug` and skipped.
//!
//! ACME (Let's Encrypt) is configured in `[http.acme]`, which every build parses and
//! validates; obtaining certificates is not part of this build, so a config that
//! enables it is refused at start with a message saying why.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::ApiError;

/// Longest a client may take to finish its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most TLS handshakes in progress at once; the listener stops accepting while this
/// many are.
pub(crate) const MAX_HANDSHAKES: usize = 1024;

/// `[http.acme]`: certificates from an ACME CA (Let's Encrypt) for the HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The names the certificate is for (`["hub.example.com"]`); at least one.
    pub domains: Vec<String>,
    /// The account's contact e-mail address (`ops@example.com` or
    /// `mailto:ops@example.com`).
    pub contact: String,
    /// Where the account key and certificates are kept between starts.
    pub cache_dir: PathBuf,
    /// Use the CA's staging environment (untrusted certificates, generous limits).
    #[serde(default)]
    pub staging: bool,
}

impl AcmeConfig {
    /// Checks every field, naming the first one at fault.
    ///
    /// # Errors
    ///
    /// What is wrong, e.g. "`http.acme.domains`: \"*.example.com\" is not a DNS name".
    pub fn validate(&self) -> Result<(), String> {
        if self.domains.is_empty() {
            return Err("`http.acme.domains`: name at least one domain".into());
        }
        for domain in &self.domains {
            if !is_dns_name(domain) {
                return Err(format!(
                    "`http.acme.domains`: {domain:?} is not a DNS name (e.g. \"hub.example.com\"; no wildcards)"
                ));
            }
        }
        let email = self.contact.strip_prefix("mailto:").unwrap_or(&self.contact);
        let valid_email = email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && is_dns_name(host) && !email.contains(char::is_whitespace)
        });
        if !valid_email {
            return Err(format!("`http.acme.contact`: {:?} is not an e-mail address", self.contact));
        }
        if self.cache_dir.as_os_str().is_empty() {
            return Err("`http.acme.cache_dir`: name a directory".into());
        }
        Ok(())
    }
}

/// A fully qualified name of at least two labels, each 1 to 63 letters, digits or `-`
/// (not at either end), 253 characters at most.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= 253
        && name.split('.').count() >= 2
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Why a config with `[http.acme]` cannot start in this build.
pub(crate) fn acme_refusal() -> String {
    if cfg!(feature = "acme") {
        "`[http.acme]`: obtaining ACME certificates is not implemented yet: serve HTTPS with the \
         `[mqtt.tls]` cert and key files instead"
            .into()
    } else {
        "`[http.acme]`: built without the acme feature: rebuild with --features acme".into()
    }
}

/// The HTTPS certificate or key cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM item of the kind expected.
    #[error("cannot read the HTTPS {what} from {}: {source}", path.display())]
    Read {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate and key do not make a usable server identity.
    #[error("the HTTPS certificate {} and key {} are not usable: {source}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// The server config for the certificate chain in `cert` and the key in `key` (PEM),
/// HTTP/1.1 over ALPN, with the aws-lc-rs provider passed explicitly (as the broker
/// does: with both of rustls' provider features enabled, a builder that picks the
/// process default would panic).
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(read("certificate", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read("certificate", cert))?;
    if certs.is_empty() {
        return Err(read("certificate", cert)(rustls::pki_types::pem::Error::NoItemsFound));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(read("private key", key))?;
    let identity = |source| TlsError::Identity { cert: cert.to_owned(), key: key.to_owned(), source };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(identity)?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(identity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read<'a>(what: &'static str, path: &'a Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + 'a {
    move |source| TlsError::Read { what, path: path.to_owned(), source }
}

/// A TCP listener whose connections come out TLS-terminated.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    /// Handshakes in progress; each resolves to the connection, or `None` when it
    /// failed (already logged).
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, config: ServerConfig) -> Self {
        Self { tcp, acceptor: TlsAcceptor::from(Arc::new(config)), handshakes: JoinSet::new() }
    }

    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let acceptor = self.acceptor.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some((tls, peer)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "HTTPS handshake timed out");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((tcp, peer)) => self.start_handshake(tcp, peer),
                    Err(e) => accept_error(&e).await,
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// As axum's own listener: errors of one connection are skipped; others (too many open
/// files) are logged and accepting pauses a second, rather than spinning.
async fn accept_error(e: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "cannot accept an HTTPS connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The plain listener's router when `redirect_to_https` is on: every request is
/// answered 308 with the same host, the HTTPS port, and the same path and query.
pub(crate) fn redirect_router(https_port: u16) -> Router {
    Router::new().fallback(redirect).with_state(https_port)
}

async fn redirect(State(port): State<u16>, request: Request) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).and_then(host_name);
    let Some(host) = host else {
        return ApiError::BadRequest("a redirect to HTTPS needs a valid Host header".into()).into_response();
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location =
        if port == 443 { format!("https://{host}{path}") } else { format!("https://{host}:{port}{path}") };
    match HeaderValue::try_from(location) {
        Ok(location) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => ApiError::BadRequest("the path cannot be redirected".into()).into_response(),
    }
}

/// The host of a `Host` header without its port: a DNS name or IPv4 address, or an IPv6
/// address in brackets; `None` for anything else.
fn host_name(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok())) {
            return None;
        }
        let inner = &name[1..name.len() - 1];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        name
    } else {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return None,
            None => host,
        };
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
        valid.then_some(name)?
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme(domains: &[&str], contact: &str) -> AcmeConfig {
        AcmeConfig {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            contact: contact.into(),
            cache_dir: "acme".into(),
            staging: false,
        }
    }

    #[test]
    fn acme_config_is_validated_naming_the_field() {
        assert_eq!(acme(&["hub.example.com", "b.example.org."], "ops@example.com").validate(), Ok(()));
        assert_eq!(acme(&["hub.example.com"], "mailto:ops@example.com").validate(), Ok(()));
        let cases: &[(AcmeConfig, &str)] = &[
            (acme(&[], "ops@example.com"), "`http.acme.domains`: name at least one"),
            (acme(&["*.example.com"], "ops@example.com"), "\"*.example.com\" is not a DNS name"),
            (acme(&["localhost"], "ops@example.com"), "\"localhost\" is not a DNS name"),
            (acme(&["-a.example.com"], "ops@example.com"), "not a DNS name"),
            (acme(&["hub.example.com"], "ops"), "`http.acme.contact`: \"ops\" is not an e-mail"),
            (acme(&["hub.example.com"], "@example.com"), "`http.acme.contact`"),
            (acme(&["hub.example.com"], "a b@example.com"), "`http.acme.contact`"),
            (
                AcmeConfig { cache_dir: PathBuf::new(), ..acme(&["hub.example.com"], "o@example.com") },
                "`http.acme.cache_dir`",
            ),
        ];
        for (config, needle) in cases {
            let e = config.validate().unwrap_err();
            assert!(e.contains(needle), "{e:?} does not contain {needle:?}");
        }
    }

    #[test]
    fn host_names_lose_their_port_and_bad_ones_are_refused() {
        assert_eq!(host_name("hub.example.com"), Some("hub.example.com"));
        assert_eq!(host_name("hub.example.com:8080"), Some("hub.example.com"));
        assert_eq!(host_name("10.0.0.1:80"), Some("10.0.0.1"));
        assert_eq!(host_name("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_name("[::1]"), Some("[::1]"));
        for bad in ["", ":80", "a b", "evil.com/x", "a:b", "[zz]:1", "[::1]x", "x@y"] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }
}
