//! A minimal HTTP/1.1 client on a `TcpStream`, for the HTTP ingest scenarios and for
//! checking what telehub stored: one keep-alive connection, one request at a time,
//! bodies framed by `Content-Length` (what telehub's API sends). A server that answers
//! `Connection: close` (gunicorn's sync workers, for the tutorial baseline) gets a new
//! connection for the next request. Like the MQTT client, it shares no code with the
//! server it measures.
//!
//! With an admin token, every `/api/v1` request carries `Authorization: Bearer <token>`
//! (telehub's API needs it); other paths (`/data`, `/readyz`) go without.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::client::READ_CHUNK;

/// A request that takes longer than this fails the run instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A response: its status and body.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

impl Response {
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy), for error messages.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection.
pub(crate) struct HttpConn {
    addr: SocketAddr,
    /// `None` after the server said `Connection: close`, until the next request.
    stream: Option<TcpStream>,
    rbuf: BytesMut,
    out: BytesMut,
    /// `Authorization: Bearer …\r\n` for `/api/v1` requests.
    authorization: Option<String>,
    /// Connections opened after the first.
    pub(crate) reconnects: u64,
}

async fn open(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl HttpConn {
    /// A connection to `addr`; `token` is sent as `Authorization: Bearer` on `/api/v1`
    /// requests.
    pub(crate) async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Self> {
        let stream = open(addr).await?;
        Ok(Self {
            addr,
            stream: Some(stream),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::new(),
            authorization: token.map(|t| format!("Authorization: Bearer {t}\r\n")),
            reconnects: 0,
        })
    }

    pub(crate) async fn get(&mut self, path: &str) -> Result<Response> {
        self.request("GET", path, None, &[]).await
    }

    pub(crate) async fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Response> {
        self.request("POST", path, Some(content_type), body).await
    }

    /// Sends a request (head and body in one `write`) and reads its response.
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        self.out.clear();
        self.out.put_slice(format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr).as_bytes());
        if let Some(auth) = &self.authorization
            && needs_token(path)
        {
            self.out.put_slice(auth.as_bytes());
        }
        if let Some(ct) = content_type {
            self.out.put_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        if method != "GET" || !body.is_empty() {
            self.out.put_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        self.out.put_slice(b"\r\n");
        self.out.put_slice(body);
        let exchange = async {
            if self.stream.is_none() {
                self.stream = Some(open(self.addr).await?);
                self.rbuf.clear();
                self.reconnects += 1;
            }
            let stream = self.stream.as_mut().context("no connection")?;
            stream.write_all(&self.out).await?;
            self.read_response().await
        };
        timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {path}: no response within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path}"))
    }

    async fn read_response(&mut self) -> Result<Response> {
        let (status, head_len, body_len, close) = loop {
            if let Some(head) = parse_head(&self.rbuf)? {
                break head;
            }
            if self.rbuf.len() > MAX_HEAD {
                bail!("response head longer than {MAX_HEAD} bytes");
            }
            self.fill().await?;
        };
        while self.rbuf.len() < head_len + body_len {
            self.fill().await?;
        }
        self.rbuf.advance(head_len);
        let body = self.rbuf.split_to(body_len).freeze();
        if close {
            self.stream = None;
        }
        Ok(Response { status, body })
    }

    async fn fill(&mut self) -> Result<()> {
        self.rbuf.reserve(READ_CHUNK);
        let stream = self.stream.as_mut().context("no connection")?;
        if stream.read_buf(&mut self.rbuf).await? == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }
}

/// Whether `path` is telehub's admin API, which needs the token.
fn needs_token(path: &str) -> bool {
    path.strip_prefix("/api/v1").is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
}

/// The status, head length, body length and `Connection: close` of the response at the
/// start of `buf`, or `None` while its head is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, usize, bool)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse().context("malformed Content-Length")?);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked responses are not supported by this client");
        }
    }
    let length = length.with_context(|| format!("response {status} has no Content-Length"))?;
    Ok(Some((status, end + 4, length, close)))
}

/// Points stored for `device`'s `metrics` with `from <= ts < to`, counted by the API
/// from raw points (`agg=count` with a step that no rollup divides, so the store reads
/// the points themselves, not the rollups built from them).
pub(crate) async fn count_points(
    conn: &mut HttpConn,
    device: &str,
    metrics: &[String],
    from: u64,
    to: u64,
) -> Result<u64> {
    let path = format!(
        "/api/v1/devices/{device}/telemetry?metric={}&from={from}&to={to}&step=86401s&agg=count",
        metrics.join(",")
    );
    let response = conn.get(&path).await?;
    if response.status == 404 {
        return Ok(0); // the device never got anything stored
    }
    if !response.is_success() {
        bail!("GET {path}: {} {}", response.status, response.text());
    }
    let answer: serde_json::Value = serde_json::from_slice(&response.body).context("count answer")?;
    let resolution = answer.get("resolution").and_then(|r| r.as_str());
    if resolution != Some("raw") {
        bail!("GET {path}: answered from {resolution:?}, expected raw points");
    }
    let buckets = answer.get("buckets").and_then(|b| b.as_array()).context("no buckets in the answer")?;
    Ok(buckets.iter().filter_map(|b| b.get("count")?.as_u64()).sum())
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let buf = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_head(buf).unwrap(), Some((200, buf.len() - 2, 2, false)));
        assert_eq!(parse_head(&buf[..20]).unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        let r = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nretry-after: 1\r\n\r\n";
        assert_eq!(parse_head(r).unwrap(), Some((429, r.len(), 0, false)));
        let r = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_head(r).unwrap(), Some((200, r.len(), 0, true)));
    }

    #[test]
    fn only_the_api_gets_the_token() {
        assert!(needs_token("/api/v1/devices/d/telemetry?metric=x"));
        assert!(needs_token("/api/v1"));
        assert!(!needs_token("/data"));
        assert!(!needs_token("/readyz"));
        assert!(!needs_token("/api/v10"));
    }
}
