//! Connection rate: W workers, each opening connections one after the other as fast as
//! the broker answers (TCP connect, CONNECT, CONNACK, DISCONNECT, close), for a duration
//! or a count. Reports accepted connections per second, refusals (by CONNACK return
//! code) and other failures, and the handshake time from TCP connect to CONNACK.
//!
//! Authentication (`--auth`):
//! * `none`: no user name or password (anonymous);
//! * `token`: `--username` and `--password` (a device token or a password);
//! * `jwt`: a JWT signed with the device's private key (`--jwt-key`, PEM, `--jwt-alg`
//!   RS256 or ES256) as the password, user name `unused` (what Google Cloud IoT Core
//!   devices send), claims `sub` = `--device`, `aud` = `--audience`, `iat` = now, `exp`
//!   = now + 1 h. By default signed afresh for every connection, as devices do when they
//!   connect, so the generator pays a signature per connection (its CPU is reported);
//!   `--jwt-sign once` signs once per worker and reuses the token, which leaves only the
//!   broker's verification in the loop.
//!
//! Every connection gets its own client id, as a fleet of devices would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use crate::client::connack_code;
use crate::procstat::CpuWindow;
use crate::report::Report;
use crate::wire::{self, CONNACK, Login};
use crate::{Target, parse_duration};

/// Keep-alive asked for in each CONNECT (the connection lives for one round trip).
const KEEP_ALIVE: u16 = 60;
/// A handshake that takes longer than this counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker's pause after a failure other than a refusal (a broker gone away must not
/// make it spin).
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Lifetime of the JWTs (`exp - iat`).
const JWT_LIFETIME_S: u64 = 3600;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMode {
    /// No credentials.
    None,
    /// `--username` / `--password`.
    Token,
    /// A device-signed JWT as the password.
    Jwt,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtAlg {
    Rs256,
    Es256,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtSign {
    /// A fresh JWT for every connection.
    Connection,
    /// One JWT per worker, reused.
    Once,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Workers, each connecting one connection after the other.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// How long to connect [default: 10s; with --count, at most 300s].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Connections to open in all (shared among the workers).
    #[arg(long)]
    count: Option<u64>,
    /// How the connections authenticate.
    #[arg(long, value_enum, default_value_t = AuthMode::None)]
    auth: AuthMode,
    /// User name (`--auth token`: the device id).
    #[arg(long, required_if_eq("auth", "token"))]
    username: Option<String>,
    /// Password (`--auth token`: the device token).
    #[arg(long, required_if_eq("auth", "token"))]
    password: Option<String>,
    /// The device's private key, PEM (`--auth jwt`).
    #[arg(long, value_name = "FILE", required_if_eq("auth", "jwt"))]
    jwt_key: Option<PathBuf>,
    /// The key's algorithm.
    #[arg(long, value_enum, default_value_t = JwtAlg::Rs256)]
    jwt_alg: JwtAlg,
    /// When to sign: for every connection, or once per worker.
    #[arg(long, value_enum, default_value_t = JwtSign::Connection)]
    jwt_sign: JwtSign,
    /// The device, the JWT's `sub` claim (`--auth jwt`).
    #[arg(long, required_if_eq("auth", "jwt"))]
    device: Option<String>,
    /// The JWT's `aud` claim.
    #[arg(long, default_value = "telehub")]
    audience: String,
}

impl Args {
    fn duration(&self) -> Duration {
        match (self.duration, self.count) {
            (Some(d), _) => d,
            (None, Some(_)) => Duration::from_secs(300),
            (None, None) => Duration::from_secs(10),
        }
    }
}

/// What a connection presents.
enum Credentials {
    Fixed(Login),
    Jwt(Box<Signer>),
}

/// Signs device JWTs.
struct Signer {
    key: EncodingKey,
    header: Header,
    device: String,
    audience: String,
    per_connection: bool,
}

impl Signer {
    fn sign(&self) -> Result<Login> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_secs();
        let claims = serde_json::json!({
            "sub": self.device,
            "aud": self.audience,
            "iat": now,
            "exp": now + JWT_LIFETIME_S,
        });
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key).context("signing the JWT")?;
        Ok(Login::new("unused", token))
    }
}

impl Credentials {
    fn from_args(args: &Args) -> Result<Self> {
        Ok(match args.auth {
            AuthMode::None => Self::Fixed(Login::anonymous()),
            AuthMode::Token => Self::Fixed(Login::new(
                args.username.clone().context("--auth token needs --username")?,
                args.password.clone().context("--auth token needs --password")?,
            )),
            AuthMode::Jwt => {
                let path = args.jwt_key.as_ref().context("--auth jwt needs --jwt-key")?;
                let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let (key, alg) = match args.jwt_alg {
                    JwtAlg::Rs256 => (EncodingKey::from_rsa_pem(&pem), Algorithm::RS256),
                    JwtAlg::Es256 => (EncodingKey::from_ec_pem(&pem), Algorithm::ES256),
                };
                let key = key.with_context(|| format!("{}: not a {alg:?} private key", path.display()))?;
                let signer = Signer {
                    key,
                    header: Header::new(alg),
                    device: args.device.clone().context("--auth jwt needs --device")?,
                    audience: args.audience.clone(),
                    per_connection: args.jwt_sign == JwtSign::Connection,
                };
                signer.sign()?; // a bad key fails here, before the run
                Self::Jwt(Box::new(signer))
            }
        })
    }
}

/// What one worker did.
#[derive(Default)]
struct Tally {
    accepted: u64,
    /// CONNACKs with a non-zero return code, by code.
    refused: BTreeMap<u8, u64>,
    /// Closed, reset or timed out before a CONNACK; malformed answers.
    failed: u64,
    first_failure: Option<String>,
    /// Handshake times of the accepted connections, µs.
    latencies_us: Vec<u32>,
    /// JWTs signed and the time spent signing them.
    signed: u64,
    signing: Duration,
}

pub(crate) async fn run(target: &Target, args: &Args) -> Result<Report> {
    let credentials = Arc::new(Credentials::from_args(args)?);
    let tag = format!("lg-{}-cr", std::process::id());
    let budget = args.count.map(|c| Arc::new(AtomicU64::new(c)));

    let cpu = CpuWindow::start(target.broker_pid)?;
    let started = Instant::now();
    let deadline = started + args.duration();
    let mut tasks = JoinSet::new();
    for w in 0..args.workers.max(1) {
        let worker = Worker {
            addr: target.addr,
            client_prefix: format!("{tag}-w{w}-"),
            credentials: Arc::clone(&credentials),
            budget: budget.clone(),
            deadline,
        };
        tasks.spawn(worker.run());
    }
    let mut total = Tally::default();
    while let Some(r) = tasks.join_next().await {
        let t = r.context("worker panicked")??;
        total.accepted += t.accepted;
        for (code, n) in t.refused {
            *total.refused.entry(code).or_default() += n;
        }
        total.failed += t.failed;
        total.first_failure = total.first_failure.or(t.first_failure);
        total.latencies_us.extend(t.latencies_us);
        total.signed += t.signed;
        total.signing += t.signing;
    }
    let window = started.elapsed();
    let usage = cpu.stop()?;
    if let Some(f) = &total.first_failure {
        eprintln!("telehub-loadgen: first failed connection: {f}");
    }
    if total.accepted == 0 {
        bail!("no connection was accepted: {}", total.first_failure.unwrap_or_default());
    }
    total.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let us = total.latencies_us[((total.latencies_us.len() - 1) as f64 * p) as usize];
        format!("{:.2}", f64::from(us) / 1000.0)
    };
    let refused: u64 = total.refused.values().sum();
    let codes: Vec<String> = total.refused.iter().map(|(code, n)| format!("{code}:{n}")).collect();

    let mut report = Report::new("connect-rate");
    report
        .add(
            "auth",
            match args.auth {
                AuthMode::None => "none",
                AuthMode::Token => "token",
                AuthMode::Jwt => match args.jwt_alg {
                    JwtAlg::Rs256 => "jwt-rs256",
                    JwtAlg::Es256 => "jwt-es256",
                },
            },
        )
        .add("workers", args.workers.max(1))
        .add_rate("rate", total.accepted, window)
        .add("accepted", total.accepted)
        .add("refused", refused)
        .add("refused_codes", if codes.is_empty() { "-".to_owned() } else { codes.join(",") })
        .add("failed", total.failed)
        .add("p50_ms", pct(0.5))
        .add("p99_ms", pct(0.99));
    if args.auth == AuthMode::Jwt {
        let mean_us = total.signing.as_secs_f64() * 1e6 / total.signed.max(1) as f64;
        report
            .add(
                "jwt_sign",
                match args.jwt_sign {
                    JwtSign::Connection => "per-connection",
                    JwtSign::Once => "once-per-worker",
                },
            )
            .add("jwts_signed", total.signed)
            .add("sign_us", format!("{mean_us:.0}"));
    }
    report.add_per_broker_cpu("per_broker_cpu_s", total.accepted, &usage).add_cpu(&usage);
    Ok(report)
}

/// One worker's connections, one after the other.
struct Worker {
    addr: std::net::SocketAddr,
    client_prefix: String,
    credentials: Arc<Credentials>,
    /// Connections left to open in all, when counted.
    budget: Option<Arc<AtomicU64>>,
    deadline: Instant,
}

impl Worker {
    async fn run(self) -> Result<Tally> {
        let mut tally = Tally::default();
        let mut buf = BytesMut::with_capacity(4096);
        let mut client_id = String::with_capacity(self.client_prefix.len() + 12);
        let mut reused: Option<Login> = None;
        let mut n = 0u64;
        while Instant::now() < self.deadline {
            if let Some(budget) = &self.budget
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
                    .is_err()
            {
                break;
            }
            let login = match &*self.credentials {
                Credentials::Fixed(login) => login,
                Credentials::Jwt(signer) => {
                    if signer.per_connection || reused.is_none() {
                        let t = Instant::now();
                        reused = Some(signer.sign()?);
                        tally.signing += t.elapsed();
                        tally.signed += 1;
                    }
                    reused.as_ref().context("no JWT")?
                }
            };
            client_id.clear();
            client_id.push_str(&self.client_prefix);
            client_id.push_str(&n.to_string());
            n += 1;
            let t = Instant::now();
            match timeout(HANDSHAKE_TIMEOUT, handshake(self.addr, &client_id, login, &mut buf)).await {
                Ok(Ok(0)) => {
                    tally.accepted += 1;
                    tally.latencies_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
                Ok(Ok(code)) => {
                    *tally.refused.entry(code).or_default() += 1;
                    tally.first_failure.get_or_insert_with(|| format!("CONNACK return code {code}"));
                }
                Ok(Err(e)) => {
                    tally.failed += 1;
                    tally.first_failure.get_or_insert_with(|| format!("{e:#}"));
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
                Err(_) => {
                    tally.failed += 1;
                    tally
                        .first_failure
                        .get_or_insert_with(|| format!("no CONNACK within {HANDSHAKE_TIMEOUT:?}"));
                }
            }
        }
        Ok(tally)
    }
}

/// One connection: TCP connect, CONNECT, CONNACK, and when accepted DISCONNECT; the
/// CONNACK's return code. The socket closes when it returns.
async fn handshake(
    addr: std::net::SocketAddr,
    client_id: &str,
    login: &Login,
    buf: &mut BytesMut,
) -> Result<u8> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    buf.clear();
    wire::connect(buf, client_id, KEEP_ALIVE, login);
    stream.write_all(buf).await?;
    buf.clear();
    let code = loop {
        if let Some((frame, _)) = wire::parse(buf)? {
            if frame.kind() != CONNACK {
                bail!("expected CONNACK, got packet 0x{:02x}", frame.header);
            }
            break connack_code(&frame)?;
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed by the broker before CONNACK");
        }
    };
    if code == 0 {
        buf.clear();
        wire::disconnect(buf);
        stream.write_all(buf).await?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key in PKCS#8 (what `openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256` writes), for this test only.
    const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgS4t7ycj2YcH6wlup
MAX/n1dwqFwGXyeJxwWifdafPgWhRANCAASNfqQZEuQGrMwyerJfbuNzpphWgLd9
MBlzqWzRtskl2u/0kn6Pd9c8OPdwyLmQfCjW52wNvnMu6urJJesW+1DL
-----END PRIVATE KEY-----
";

    #[test]
    fn a_signed_jwt_carries_the_device_and_audience() {
        let signer = Signer {
            key: EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap(),
            header: Header::new(Algorithm::ES256),
            device: "dev-1".into(),
            audience: "telehub".into(),
            per_connection: true,
        };
        let login = signer.sign().unwrap();
        assert_eq!(login.username.as_deref(), Some("unused"));
        let token = String::from_utf8(login.password.unwrap()).unwrap();
        assert!(token.starts_with("eyJ"), "{token}");
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        let payload = token.split('.').nth(1).unwrap();
        let claims = decode_base64url(payload);
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["sub"], "dev-1");
        assert_eq!(claims["aud"], "telehub");
        let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
        assert_eq!(exp - iat, JWT_LIFETIME_S);
    }

    /// Base64url without padding, for the test's look at the claims.
    fn decode_base64url(s: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        };
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes() {
            acc = (acc << 6) | u32::from(value(c));
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}
