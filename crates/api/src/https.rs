//! HTTPS: the TLS listener that `axum::serve` takes, its certificate ([`Certs`]: the same
//! PEM files as `[mqtt.tls]`, or ACME's), the plain listener's redirect to HTTPS, and
//! `[http.acme]`.
//!
//! [`TlsListener`] accepts TCP connections and runs their TLS handshakes concurrently
//! (at most [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]), handing
//! `axum::serve` only finished handshakes: a client that stalls its handshake holds up
//! nobody. Failed handshakes are logged at `debug` and skipped.
//!
//! Each handshake starts by reading the ClientHello; [`route`] then picks the server
//! config. A hello whose only ALPN protocol is `acme-tls/1` is the CA validating a
//! TLS-ALPN-01 challenge (RFC 8737): with ACME on, it is answered with the challenge
//! certificate and closed, never reaching the API; every other hello gets the API's
//! config (HTTP/1.1).
//!
//! ACME (Let's Encrypt) is configured in `[http.acme]`, which every build parses and
//! validates. With the `acme` cargo feature, `crate::acme` obtains and renews the
//! certificate (see there); without it a config that sets `[http.acme]` is refused at
//! start, saying to rebuild with the feature. `[mqtt.tls]` is never affected: the MQTT
//! TLS listener keeps its certificate files.

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
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

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
    /// Use Let's Encrypt's staging environment (untrusted certificates, generous limits).
    #[serde(default)]
    pub staging: bool,
    /// The ACME directory URL of another CA (a private one such as step-ca or pebble);
    /// none: Let's Encrypt (production, or staging with `staging`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// PEM file of the root certificates that the `directory` server's own TLS certificate
    /// is checked against, instead of the public (webpki) roots: for a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca: Option<PathBuf>,
}

/// Let's Encrypt's ACME directory.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging ACME directory (`staging = true`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

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
        if let Some(url) = &self.directory {
            let host =
                url.strip_prefix("https://").map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
            let valid = host.is_some_and(|h| !h.is_empty() && !h.contains(['@', ' ']));
            if !valid {
                return Err(format!(
                    "`http.acme.directory`: {url:?} is not an https:// URL (e.g. \"https://ca.internal:9000/acme/acme/directory\")"
                ));
            }
            if self.staging {
                return Err(
                    "`http.acme.staging` is Let's Encrypt's: drop it when `http.acme.directory` is set"
                        .into(),
                );
            }
        } else if self.directory_ca.is_some() {
            return Err("`http.acme.directory_ca` is for a private CA: set `http.acme.directory` too".into());
        }
        Ok(())
    }

    /// The ACME directory URL the certificate is ordered from.
    pub fn directory_url(&self) -> &str {
        match (&self.directory, self.staging) {
            (Some(url), _) => url,
            (None, true) => LETS_ENCRYPT_STAGING,
            (None, false) => LETS_ENCRYPT_PRODUCTION,
        }
    }
}

/// What the ACME renewal has done so far ([`crate::Server::acme_status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcmeStatus {
    /// A certificate is being served (from `cache_dir` or newly ordered).
    pub certificate: bool,
    /// Certificates ordered and deployed since the start.
    pub ordered: u64,
    /// Orders that failed in a row (0 after a success); each is retried after a back-off
    /// that doubles, from 1 s up to about 18 h.
    pub failures: u32,
    /// The most recent error (an order or the cache), until the next success.
    pub last_error: Option<String>,
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

/// Why a config with `[http.acme]` cannot start in a build without the `acme` feature.
#[cfg(not(feature = "acme"))]
pub(crate) fn acme_refusal() -> String {
    "`[http.acme]`: built without the acme feature: rebuild with --features acme".into()
}

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Which server config a handshake gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The API's certificate, HTTP/1.1.
    Serve,
    /// A TLS-ALPN-01 validation: the challenge certificate, then the connection closes.
    Challenge,
}

/// The route for a ClientHello offering the ALPN protocols `alpn`, on a listener that
/// answers ACME challenges (`acme`) or not. As RFC 8737 (and rustls-acme) define it, a
/// validation offers `acme-tls/1` and nothing else.
pub(crate) fn route<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>, acme: bool) -> Route {
    if acme && alpn.into_iter().flatten().eq([ACME_TLS_ALPN]) { Route::Challenge } else { Route::Serve }
}

/// Where the HTTPS listener's certificate comes from: the server config for the API, and
/// with ACME the one for challenges and the renewal that keeps the certificate current.
pub(crate) struct Certs {
    pub(crate) serve: Arc<ServerConfig>,
    pub(crate) challenge: Option<Arc<ServerConfig>>,
    pub(crate) renewal: Option<Renewal>,
    pub(crate) status: Option<watch::Receiver<AcmeStatus>>,
}

impl Certs {
    /// The certificate chain in `cert` and the key in `key` (PEM); see [`server_config`].
    pub(crate) fn files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let serve = Arc::new(server_config(cert, key)?);
        Ok(Self { serve, challenge: None, renewal: None, status: None })
    }

    /// A certificate from ACME as `config` says (already validated); `cache_dir` is
    /// created. The certificate is ordered once [`Renewal::run`] runs.
    #[cfg(feature = "acme")]
    pub(crate) fn acme(config: &AcmeConfig) -> Result<Self, String> {
        crate::acme::certs(config)
    }

    /// Refused: this build cannot obtain certificates.
    #[cfg(not(feature = "acme"))]
    pub(crate) fn acme(_: &AcmeConfig) -> Result<Self, String> {
        Err(acme_refusal())
    }
}

/// The ACME renewal; none can exist without the `acme` feature.
#[cfg(feature = "acme")]
pub(crate) use crate::acme::Renewal;
/// The ACME renewal; none can exist without the `acme` feature.
#[cfg(not(feature = "acme"))]
pub(crate) enum Renewal {}

/// Runs `renewal`, if any, until `shutdown`.
pub(crate) async fn renew(renewal: Option<Renewal>, shutdown: CancellationToken) {
    #[cfg(feature = "acme")]
    if let Some(renewal) = renewal {
        renewal.run(shutdown).await;
    }
    #[cfg(not(feature = "acme"))]
    if let Some(never) = renewal {
        match never {}
    } else {
        drop(shutdown);
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
    config.alpn_protocols = vec![HTTP_1_1.to_vec()];
    Ok(config)
}

/// The ALPN protocol the API is served with.
pub(crate) const HTTP_1_1: &[u8] = b"http/1.1";

fn read<'a>(what: &'static str, path: &'a Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + 'a {
    move |source| TlsError::Read { what, path: path.to_owned(), source }
}

/// A TCP listener whose connections come out TLS-terminated.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    /// The API's server config.
    serve: Arc<ServerConfig>,
    /// With ACME: the server config that answers TLS-ALPN-01 challenges.
    challenge: Option<Arc<ServerConfig>>,
    /// With ACME: the renewal, until [`TlsListener::take_renewal`].
    renewal: Option<Renewal>,
    status: Option<watch::Receiver<AcmeStatus>>,
    /// Handshakes in progress; each resolves to the connection, or `None` when it
    /// failed (already logged) or was an ACME challenge.
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, certs: Certs) -> Self {
        let Certs { serve, challenge, renewal, status } = certs;
        Self { tcp, serve, challenge, renewal, status, handshakes: JoinSet::new() }
    }

    /// The ACME renewal, to be run beside the listener (once).
    pub(crate) fn take_renewal(&mut self) -> Option<Renewal> {
        self.renewal.take()
    }

    /// What the ACME renewal has done, with ACME on.
    pub(crate) fn acme_status(&self) -> Option<watch::Receiver<AcmeStatus>> {
        self.status.clone()
    }

    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let (serve, challenge) = (Arc::clone(&self.serve), self.challenge.clone());
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, serve, challenge)).await {
                Ok(Ok(Some(tls))) => Some((tls, peer)),
                Ok(Ok(None)) => {
                    tracing::info!(%peer, "ACME: answered a TLS-ALPN-01 validation");
                    None
                }
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

/// One handshake, with the config [`route`] picks for its ClientHello: the connection for
/// the API, or `None` once a TLS-ALPN-01 validation has been answered (and closed).
async fn handshake(
    tcp: TcpStream,
    serve: Arc<ServerConfig>,
    challenge: Option<Arc<ServerConfig>>,
) -> io::Result<Option<TlsStream<TcpStream>>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let chosen = route(start.client_hello().alpn(), challenge.is_some());
    match (chosen, challenge) {
        (Route::Challenge, Some(challenge)) => {
            let mut tls = start.into_stream(challenge).await?;
            // the validation ends with the handshake; a failed close changes nothing
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            Ok(None)
        }
        _ => start.into_stream(serve).await.map(Some),
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
            directory: None,
            directory_ca: None,
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
            (private("http://ca.internal/directory"), "`http.acme.directory`: \"http://ca.internal"),
            (private("https:///directory"), "is not an https:// URL"),
            (private("ca.internal"), "is not an https:// URL"),
            (AcmeConfig { staging: true, ..private("https://ca.internal/d") }, "drop it when"),
            (
                AcmeConfig {
                    directory_ca: Some("ca.pem".into()),
                    ..acme(&["hub.example.com"], "o@example.com")
                },
                "set `http.acme.directory` too",
            ),
        ];
        for (config, needle) in cases {
            let e = config.validate().unwrap_err();
            assert!(e.contains(needle), "{e:?} does not contain {needle:?}");
        }
    }

    fn private(url: &str) -> AcmeConfig {
        AcmeConfig { directory: Some(url.into()), ..acme(&["hub.example.com"], "o@example.com") }
    }

    #[test]
    fn the_directory_is_lets_encrypt_unless_another_is_named() {
        let production = acme(&["hub.example.com"], "o@example.com");
        assert_eq!(production.directory_url(), LETS_ENCRYPT_PRODUCTION);
        let staging = AcmeConfig { staging: true, ..production.clone() };
        assert_eq!(staging.directory_url(), LETS_ENCRYPT_STAGING);
        let step_ca = AcmeConfig {
            directory_ca: Some("/etc/step/root_ca.crt".into()),
            ..private("https://ca.internal:9000/acme/acme/directory")
        };
        assert_eq!(step_ca.validate(), Ok(()));
        assert_eq!(step_ca.directory_url(), "https://ca.internal:9000/acme/acme/directory");
        assert_eq!(private("https://127.0.0.1:14000/dir").validate(), Ok(()));
    }

    #[test]
    fn only_a_hello_offering_just_acme_tls_1_is_a_challenge() {
        let hello =
            |alpn: &[&'static str]| Some(alpn.iter().map(|p| p.as_bytes()).collect::<Vec<_>>().into_iter());
        assert_eq!(route(hello(&["acme-tls/1"]), true), Route::Challenge);
        for alpn in [
            &["http/1.1"][..],
            &["h2", "http/1.1"],
            &["acme-tls/1", "http/1.1"],
            &["http/1.1", "acme-tls/1"],
            &[],
        ] {
            assert_eq!(route(hello(alpn), true), Route::Serve, "{alpn:?}");
        }
        assert_eq!(route(None::<std::vec::IntoIter<&[u8]>>, true), Route::Serve);
        // without ACME (certificate files) nothing is a challenge
        assert_eq!(route(hello(&["acme-tls/1"]), false), Route::Serve);
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
