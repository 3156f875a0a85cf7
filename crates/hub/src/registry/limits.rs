//! Rate limits (GCRA, keyed by client IP, device or HTTP principal) and the global IP
//! allowlist. Keyed state is evicted periodically ([`Limits::tidy`]) so memory follows
//! the active keys, not every key ever seen.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use telehub_core::DeviceId;

use super::config::{AuthConfig, RateConfig};

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// One keyed limit; `None` when configured off.
struct Limit<K: Hash + Eq + Clone>(Option<Keyed<K>>);

impl<K: Hash + Eq + Clone> Limit<K> {
    fn new(per_second: u32, burst: u32) -> Self {
        Self(NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate).max(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        }))
    }

    /// `Err(wait)` when `key` is over its limit for `n` more.
    fn check(&self, key: &K, n: u32) -> Result<(), Duration> {
        let Some(limiter) = &self.0 else { return Ok(()) };
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            // more at once than the burst can ever hold: refuse for a second
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    fn tidy(&self) {
        if let Some(limiter) = &self.0 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Every limit of `[auth]`.
pub(crate) struct Limits {
    allowlist: Vec<IpNet>,
    connections: Limit<IpAddr>,
    messages: Limit<DeviceId>,
    http: Limit<String>,
}

impl Limits {
    pub(crate) fn new(config: &AuthConfig) -> Self {
        let RateConfig {
            connections_per_ip,
            connections_burst,
            messages_per_device,
            messages_burst,
            http_requests,
            http_burst,
        } = config.rate;
        Self {
            allowlist: config.ip_allowlist.clone(),
            connections: Limit::new(connections_per_ip, connections_burst),
            messages: Limit::new(messages_per_device, messages_burst),
            http: Limit::new(http_requests, http_burst),
        }
    }

    /// Whether `ip` is on the global allowlist (an empty list allows all).
    pub(crate) fn ip_allowed(&self, ip: IpAddr) -> bool {
        ip_in(&self.allowlist, ip)
    }

    /// One new connection from `ip`.
    pub(crate) fn connection(&self, ip: IpAddr) -> Result<(), Duration> {
        self.connections.check(&canonical(ip), 1)
    }

    /// `n` messages from `device`.
    pub(crate) fn messages(&self, device: &DeviceId, n: u32) -> Result<(), Duration> {
        self.messages.check(device, n)
    }

    /// One HTTP request of `key`.
    pub(crate) fn http(&self, key: &str) -> Result<(), Duration> {
        self.http.check(&key.to_owned(), 1)
    }

    /// Forgets keys whose state is back to fresh.
    pub(crate) fn tidy(&self) {
        self.connections.tidy();
        self.messages.tidy();
        self.http.tidy();
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address, so one client is one key.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Whether `ip` is in one of `nets`; an empty list allows all.
pub(crate) fn ip_in(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.is_empty() || nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn allowlists_match_cidrs_and_mapped_addresses() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(ip_in(&nets, "10.1.2.3".parse().unwrap()));
        assert!(ip_in(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(ip_in(&nets, "::1".parse().unwrap()));
        assert!(!ip_in(&nets, "127.0.0.1".parse().unwrap()));
        assert!(ip_in(&[], "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_limit_refuses_beyond_its_burst_and_says_how_long_to_wait() {
        let config = AuthConfig {
            rate: RateConfig { messages_per_device: 1, messages_burst: 3, ..RateConfig::default() },
            ..AuthConfig::default()
        };
        let limits = Limits::new(&config);
        for _ in 0..3 {
            limits.messages(&id("a"), 1).unwrap();
        }
        let wait = limits.messages(&id("a"), 1).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        limits.messages(&id("b"), 1).expect("another device has its own budget");
        assert!(limits.messages(&id("c"), 10).is_err(), "more than the burst at once");
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let config = AuthConfig {
            rate: RateConfig { http_requests: 0, ..RateConfig::default() },
            ..AuthConfig::default()
        };
        let limits = Limits::new(&config);
        for _ in 0..100_000 {
            limits.http("ip:1").unwrap();
        }
    }
}
