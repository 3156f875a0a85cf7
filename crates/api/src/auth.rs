//! Who may call what: the [`guard`] middleware in front of every route, and the
//! extractors handlers take the caller from.
//!
//! Every request, in this order:
//!
//! 1. the TCP peer (`ConnectInfo`) must be on `[auth] ip_allowlist` (403);
//! 2. its route decides the credentials it needs ([`Class`]):
//!    * `/api/v1/...`: an admin token (`Authorization: Bearer`) with the scope `read`
//!      (GET, HEAD), `write` (other methods) or `admin` (`/api/v1/tokens...`);
//!    * the device ingest endpoints `POST /data` and `POST /api/v1/devices/{id}/telemetry`:
//!      a device token or device-signed JWT (`Authorization: Bearer`), a device token
//!      (`X-API-Key`), an admin token with `write`, or nothing when `allow_anonymous`;
//!      which devices the caller may ingest for is checked by the handler, once it
//!      knows the records' devices ([`authorize_ingest`]);
//!    * `GET /api/v1/stream` (live streams): an admin token with `read`, or device
//!      credentials as for ingest (or nothing when `allow_anonymous`); what a device may
//!      watch is checked by the handler, as an MQTT subscribe;
//!    * `POST /hooks/{name}` (inbound webhooks): no token; the handler checks the
//!      request's signature with the hook's secret;
//!    * the device's side of commands, `GET /api/v1/devices/{id}/commands/next` (HTTP
//!      long-poll) and `POST /api/v1/devices/{id}/commands/{cid}/ack`: credentials as for
//!      ingest; the handler checks that the caller is that device ([`IngestCall::permit_device`]);
//!    * anything else (`/healthz`, `/readyz`, `/metrics`, unknown paths): open;
//!
//!    missing or invalid credentials are a 401 with `WWW-Authenticate: Bearer`, valid
//!    ones without the scope a 403, and both are written to the audit log (`auth.http`,
//!    `denied`, the reason, never the secret);
//! 3. one request of the caller's rate key (`token:{id}`, `device:{id}`, else
//!    `ip:{addr}`; a refused request counts against its address) within `[auth.rate]`
//!    `http_requests` (429 with `Retry-After`).
//!
//! `POST /data` answers these refusals in its own `{"error": …}` shape.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use telehub_broker::{Principal, Refusal};
use telehub_core::DeviceId;
use telehub_hub::registry::{Actor, Admin, AdminRefusal, Registry, Scope};
use telehub_store::RegistryStore;
use telehub_store::registry::AuditEvent;

use crate::AppState;
use crate::error::{ApiError, Tutorial};

/// The header device ingest takes a device token in, as an alternative to `Bearer`.
const API_KEY: &str = "x-api-key";

/// Who made a request, as the guard established it; in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// An admin API token.
    Admin(Admin),
    /// A device, or an anonymous client (`allow_anonymous`), on a device ingest endpoint.
    Device(Principal),
    /// Nobody in particular: an open route.
    Open,
}

impl Caller {
    /// The key its requests are counted under.
    fn rate_key(&self, remote: IpAddr) -> String {
        match self {
            Self::Admin(admin) => format!("token:{}", admin.token_id),
            Self::Device(Principal { device: Some(id), .. }) => format!("device:{id}"),
            Self::Device(_) | Self::Open => format!("ip:{remote}"),
        }
    }

    /// How the request log names it.
    fn label(&self) -> String {
        match self {
            Self::Admin(admin) => format!("token:{}", admin.token_id),
            Self::Device(Principal { device: Some(id), .. }) => format!("device:{id}"),
            Self::Device(_) => "anonymous".into(),
            Self::Open => "-".into(),
        }
    }
}

/// The client's address: the TCP peer, or `0.0.0.0` for a router called in-process
/// without `ConnectInfo`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote(pub(crate) IpAddr);

impl Remote {
    fn of(request: &Request) -> Self {
        let ip = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip().to_canonical());
        Self(ip)
    }

    /// The address for the audit log, when there is a real one.
    pub(crate) fn known(self) -> Option<IpAddr> {
        (!self.0.is_unspecified()).then_some(self.0)
    }
}

/// The principal the request log shows; in the response's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Who(pub(crate) String);

/// What a route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// Nothing.
    Open,
    /// An admin token with this scope.
    Admin(Scope),
    /// Device credentials (or an admin token with `write`); `hint` is the device of the
    /// URL; `tutorial` answers refusals in the shape of `POST /data`.
    Ingest { hint: Option<DeviceId>, tutorial: bool },
    /// A live stream: an admin token with `read`, or device credentials.
    Stream,
}

/// What `method` on `path` (as sent, before routing) needs. Decided on the path rather
/// than per route, so that no `/api/v1` route can be added without an admin check.
fn classify(method: &Method, path: &str) -> Class {
    if path == "/data" && method == Method::POST {
        return Class::Ingest { hint: None, tutorial: true };
    }
    let Some(rest) = path.strip_prefix("/api/v1").filter(|r| r.is_empty() || r.starts_with('/')) else {
        return Class::Open;
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match segments.as_slice() {
        ["devices", id, "telemetry"] if method == Method::POST => {
            let hint = percent_decode(id).and_then(|id| DeviceId::new(id).ok());
            Class::Ingest { hint, tutorial: false }
        }
        ["devices", id, "commands", "next"] if method == Method::GET => {
            let hint = percent_decode(id).and_then(|id| DeviceId::new(id).ok());
            Class::Ingest { hint, tutorial: false }
        }
        ["devices", id, "commands", _, "ack"] if method == Method::POST => {
            let hint = percent_decode(id).and_then(|id| DeviceId::new(id).ok());
            Class::Ingest { hint, tutorial: false }
        }
        ["tokens", ..] => Class::Admin(Scope::Admin),
        ["stream"] if method == Method::GET => Class::Stream,
        _ if method == Method::GET || method == Method::HEAD => Class::Admin(Scope::Read),
        _ => Class::Admin(Scope::Write),
    }
}

/// `%XX` escapes of a path segment decoded; `None` for a bad escape or non-UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a bearer value is certainly a device credential (a device-signed JWT or a
/// generated device token), so the admin token check can be skipped.
fn is_device_credential(token: &str) -> bool {
    token.starts_with("eyJ") || token.starts_with("thd_")
}

/// The middleware: allowlist, authentication, rate limit (see the module docs). The
/// caller goes into the request's extensions for the handlers, its name into the
/// response's for the request log.
pub(crate) async fn guard<S: RegistryStore>(
    State(state): State<AppState<S>>,
    mut request: Request,
    next: Next,
) -> Response {
    let remote = Remote::of(&request);
    // owned: the request (its body is not Sync) cannot be borrowed across the awaits
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let class = classify(&method, &path);
    let tutorial = matches!(class, Class::Ingest { tutorial: true, .. });
    let registry = &state.registry;
    let refuse = |error: ApiError, who: String| {
        let mut response = if tutorial { Tutorial(error).into_response() } else { error.into_response() };
        response.extensions_mut().insert(Who(who));
        response
    };
    let denied = |actor: &str, reason: &str| {
        audit_denied(registry, actor, &method, &path, remote, reason);
    };
    if !registry.ip_allowed(remote.0) {
        denied("anonymous", "address not in the allowlist");
        return refuse(ApiError::Forbidden(format!("{} is not allowed to connect", remote.0)), "-".into());
    }
    let caller = match authenticate(registry, &class, request.headers(), remote).await {
        Ok(caller) => caller,
        Err(Refused { error, actor, reason }) => {
            // failed attempts count against the address: guessing tokens is rate limited
            if let Err(retry_after) = registry.http_rate(&format!("ip:{}", remote.0)) {
                return refuse(ApiError::RateLimited { retry_after }, actor);
            }
            if let Some(reason) = reason {
                denied(&actor, &reason);
            }
            return refuse(error, actor);
        }
    };
    let who = caller.label();
    if let Err(retry_after) = registry.http_rate(&caller.rate_key(remote.0)) {
        return refuse(ApiError::RateLimited { retry_after }, who);
    }
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(remote);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(Who(who));
    response
}

/// A refused authentication.
struct Refused {
    error: ApiError,
    /// Who it claimed to be, for the log.
    actor: String,
    /// The audit reason; `None` when the registry has written the event itself.
    reason: Option<String>,
}

async fn authenticate<S: RegistryStore>(
    registry: &Registry<S>,
    class: &Class,
    headers: &HeaderMap,
    remote: Remote,
) -> Result<Caller, Refused> {
    let bearer = bearer(headers);
    match class {
        Class::Open => Ok(Caller::Open),
        Class::Admin(needed) => registry
            .check_admin(bearer, *needed)
            .map(Caller::Admin)
            .map_err(|e| admin_refused(registry, bearer, e)),
        Class::Stream => {
            if let Some(token) = bearer.filter(|t| !is_device_credential(t)) {
                return registry
                    .check_admin(Some(token), Scope::Read)
                    .map(Caller::Admin)
                    .map_err(|e| admin_refused(registry, bearer, e));
            }
            let api_key = headers.get(API_KEY).and_then(|v| v.to_str().ok()).map(str::trim);
            registry.authenticate_http(bearer.or(api_key), None, remote.0).await.map(Caller::Device).map_err(
                |refusal| {
                    let error = match refusal {
                        Refusal::NotAuthorized => {
                            ApiError::Forbidden(format!("the device may not connect from {}", remote.0))
                        }
                        Refusal::ConnectionRate => {
                            ApiError::RateLimited { retry_after: std::time::Duration::from_secs(1) }
                        }
                        Refusal::Unavailable => ApiError::Unavailable(None),
                        Refusal::BadCredentials => ApiError::Unauthorized(
                            "an admin token, or a device's token or JWT, is required".into(),
                        ),
                    };
                    Refused { error, actor: "anonymous".into(), reason: None }
                },
            )
        }
        Class::Ingest { hint, .. } => {
            if let Some(token) = bearer.filter(|t| !is_device_credential(t)) {
                match registry.check_admin(Some(token), Scope::Write) {
                    Ok(admin) => return Ok(Caller::Admin(admin)),
                    Err(e @ AdminRefusal::Forbidden { .. }) => {
                        return Err(admin_refused(registry, bearer, e));
                    }
                    // not an admin token: perhaps a device's
                    Err(AdminRefusal::Missing | AdminRefusal::Invalid) => {}
                }
            }
            let api_key = headers.get(API_KEY).and_then(|v| v.to_str().ok()).map(str::trim);
            let presented = bearer.or(api_key);
            match registry.authenticate_http(presented, hint.as_ref(), remote.0).await {
                Ok(principal) => Ok(Caller::Device(principal)),
                Err(refusal) => {
                    let error = match refusal {
                        Refusal::BadCredentials if presented.is_none() => ApiError::Unauthorized(
                            "device credentials are required: Authorization: Bearer <device token or JWT> \
                             or X-API-Key: <device token>"
                                .into(),
                        ),
                        Refusal::BadCredentials => {
                            ApiError::Unauthorized("the device credentials are not valid".into())
                        }
                        Refusal::NotAuthorized => {
                            ApiError::Forbidden(format!("the device may not connect from {}", remote.0))
                        }
                        Refusal::ConnectionRate => {
                            ApiError::RateLimited { retry_after: std::time::Duration::from_secs(1) }
                        }
                        Refusal::Unavailable => ApiError::Unavailable(None),
                    };
                    // authenticate_http wrote the audit event
                    Err(Refused { error, actor: "anonymous".into(), reason: None })
                }
            }
        }
    }
}

fn admin_refused<S: RegistryStore>(
    registry: &Registry<S>,
    bearer: Option<&str>,
    refusal: AdminRefusal,
) -> Refused {
    let actor = match refusal {
        AdminRefusal::Missing => "anonymous".to_owned(),
        AdminRefusal::Invalid => "unknown".to_owned(),
        // a valid token with too small a scope: name it
        AdminRefusal::Forbidden { .. } => registry
            .check_admin(bearer, Scope::Read)
            .map_or_else(|_| "unknown".to_owned(), |a| format!("token:{}", a.token_id)),
    };
    Refused { error: refusal.into(), actor, reason: Some(refusal.to_string()) }
}

/// Writes an `auth.http` refusal to the audit log.
fn audit_denied<S: RegistryStore>(
    registry: &Registry<S>,
    actor: &str,
    method: &Method,
    path: &str,
    remote: Remote,
    reason: &str,
) {
    registry.audit(AuditEvent {
        ts: telehub_hub::timestamp::now(),
        actor: actor.to_owned(),
        action: "auth.http".into(),
        target: path.to_owned(),
        outcome: "denied".into(),
        remote: remote.known().map(|ip| ip.to_string()),
        detail: serde_json::json!({ "reason": reason, "method": method.as_str() }),
    });
}

/// An admin caller, for the handlers of `/api/v1` (the guard has checked its scope).
pub(crate) struct AdminCall {
    /// The caller as the audit log names it.
    pub(crate) actor: Actor,
}

impl<S: Send + Sync> FromRequestParts<S> for AdminCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let remote = parts.extensions.get::<Remote>().and_then(|r| r.known());
        match parts.extensions.get::<Caller>() {
            Some(Caller::Admin(admin)) => Ok(Self { actor: admin.actor(remote) }),
            _ => Err(AdminRefusal::Missing.into()),
        }
    }
}

/// The caller of a device ingest endpoint.
pub(crate) struct IngestCall {
    caller: Caller,
    remote: Remote,
}

impl<S: Send + Sync> FromRequestParts<S> for IngestCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let remote =
            parts.extensions.get::<Remote>().copied().unwrap_or(Remote(Ipv4Addr::UNSPECIFIED.into()));
        match parts.extensions.get::<Caller>() {
            Some(caller @ (Caller::Admin(_) | Caller::Device(_))) => {
                Ok(Self { caller: caller.clone(), remote })
            }
            _ => Err(ApiError::Unauthorized("device credentials are required".into())),
        }
    }
}

impl IngestCall {
    /// May the caller act as `device` (take its commands, report their outcomes)? The
    /// device itself, an anonymous client when `allow_anonymous` let it in, or an admin
    /// token with `write`; another device is refused (403).
    pub(crate) fn permit_device(&self, device: &DeviceId) -> Result<(), ApiError> {
        match &self.caller {
            Caller::Device(Principal { device: Some(own), .. }) if own != device => Err(ApiError::Forbidden(
                format!("{} may not take or acknowledge commands of device {device}", self.caller.label()),
            )),
            _ => Ok(()),
        }
    }

    /// May the caller store records of `device`? A device only as itself or where an
    /// ACL rule lets it publish `devices/{device}/telemetry` (403, audited); an admin
    /// token with `write` for any device.
    pub(crate) fn permit<S: RegistryStore>(
        &self,
        registry: &Registry<S>,
        device: &DeviceId,
    ) -> Result<(), ApiError> {
        let Caller::Device(principal) = &self.caller else { return Ok(()) };
        if registry.may_ingest(principal, device) {
            return Ok(());
        }
        let actor = self.caller.label();
        audit_denied(
            registry,
            &actor,
            &Method::POST,
            &format!("device:{device}"),
            self.remote,
            "may not send telemetry for this device",
        );
        Err(ApiError::Forbidden(format!("{actor} may not send telemetry for device {device}")))
    }

    /// [`IngestCall::permit`] for each device, then `n` messages of each `(device, n)`
    /// within the device's message rate (429); an admin token has no message rate.
    pub(crate) fn authorize<S: RegistryStore>(
        &self,
        registry: &Registry<S>,
        devices: &[(DeviceId, u32)],
    ) -> Result<(), ApiError> {
        for (device, _) in devices {
            self.permit(registry, device)?;
        }
        if let Caller::Device(_) = self.caller {
            for (device, n) in devices {
                registry
                    .device_rate(device, *n)
                    .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
            }
        }
        Ok(())
    }

    /// After a successful ingest: the devices were seen now (not for an admin token,
    /// which is not the device).
    pub(crate) fn seen<S: RegistryStore>(&self, registry: &Registry<S>, devices: &[(DeviceId, u32)]) {
        if let Caller::Device(_) = self.caller {
            for (device, _) in devices {
                registry.seen(device);
            }
        }
    }
}

/// `(device, records)` for each device in `records`, in first-seen order.
pub(crate) fn count_by_device(records: &[telehub_store::Record]) -> Vec<(DeviceId, u32)> {
    let mut counts: Vec<(DeviceId, u32)> = Vec::new();
    for r in records {
        match counts.iter_mut().find(|(d, _)| *d == r.device) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => counts.push((r.device.clone(), 1)),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_classified_by_path_and_method() {
        let c = |m: Method, p: &str| classify(&m, p);
        assert_eq!(c(Method::POST, "/data"), Class::Ingest { hint: None, tutorial: true });
        assert_eq!(c(Method::GET, "/data"), Class::Open);
        assert_eq!(
            c(Method::POST, "/api/v1/devices/pump%201/telemetry"),
            Class::Ingest { hint: Some(DeviceId::new("pump 1").unwrap()), tutorial: false }
        );
        assert_eq!(
            c(Method::POST, "/api/v1/devices/bad%2Fid/telemetry"),
            Class::Ingest { hint: None, tutorial: false }
        );
        assert_eq!(c(Method::GET, "/api/v1/devices/d/telemetry"), Class::Admin(Scope::Read));
        assert_eq!(c(Method::GET, "/api/v1/devices"), Class::Admin(Scope::Read));
        assert_eq!(c(Method::HEAD, "/api/v1/audit"), Class::Admin(Scope::Read));
        assert_eq!(c(Method::POST, "/api/v1/devices"), Class::Admin(Scope::Write));
        assert_eq!(c(Method::DELETE, "/api/v1/devices/d"), Class::Admin(Scope::Write));
        assert_eq!(c(Method::GET, "/api/v1/tokens"), Class::Admin(Scope::Admin));
        assert_eq!(c(Method::DELETE, "/api/v1/tokens/tk_1"), Class::Admin(Scope::Admin));
        let dev = Class::Ingest { hint: Some(DeviceId::new("d1").unwrap()), tutorial: false };
        assert_eq!(c(Method::GET, "/api/v1/devices/d1/commands/next"), dev);
        assert_eq!(c(Method::POST, "/api/v1/devices/d1/commands/cmd_1/ack"), dev);
        assert_eq!(c(Method::GET, "/api/v1/devices/d1/commands"), Class::Admin(Scope::Read));
        assert_eq!(c(Method::POST, "/api/v1/devices/d1/commands"), Class::Admin(Scope::Write));
        assert_eq!(c(Method::DELETE, "/api/v1/devices/d1/commands/cmd_1"), Class::Admin(Scope::Write));
        assert_eq!(c(Method::PATCH, "/api/v1/devices/d1/state/desired"), Class::Admin(Scope::Write));
        assert_eq!(c(Method::GET, "/api/v1"), Class::Admin(Scope::Read));
        assert_eq!(c(Method::GET, "/api/v1/"), Class::Admin(Scope::Read));
        assert_eq!(c(Method::GET, "/api/v1/nothing"), Class::Admin(Scope::Read));
        assert_eq!(c(Method::GET, "/api/v1/stream"), Class::Stream);
        assert_eq!(c(Method::POST, "/api/v1/stream"), Class::Admin(Scope::Write));
        assert_eq!(c(Method::GET, "/api/v1/webhooks"), Class::Admin(Scope::Read));
        assert_eq!(c(Method::POST, "/api/v1/webhooks/wh_1/deliveries/replay"), Class::Admin(Scope::Write));
        assert_eq!(c(Method::POST, "/hooks/github"), Class::Open, "signature-checked by the handler");
        for open in ["/healthz", "/readyz", "/metrics", "/api/v10", "/api", "/"] {
            assert_eq!(c(Method::GET, open), Class::Open, "{open}");
        }
    }

    #[test]
    fn bearer_and_percent_decoding() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert_eq!(percent_decode("a%20b%C3%A9").as_deref(), Some("a bé"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
