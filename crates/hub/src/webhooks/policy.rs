//! The sender's pure decisions: when to try a failed delivery again (exponential
//! back-off with jitter, within the maximum age) and whether an endpoint may be tried at
//! all (a per-endpoint circuit breaker).

use std::time::Duration;

use telehub_store::Timestamp;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What to do with a delivery whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this time.
    RetryAt(Timestamp),
    /// It is older than the maximum age: the dead-letter list.
    Dead,
}

/// Exponential back-off: `initial · 2^(attempts-1)`, at most `max`, with "equal jitter"
/// (a uniform half of it is random, so retries of many deliveries spread out), never past
/// `pending_since + max_age` (the last attempt is made at the maximum age).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How long a delivery is tried, from when it became pending.
    pub max_age: Duration,
}

impl Backoff {
    /// The delay before attempt `attempts + 1`, after `attempts` failures (≥ 1), without
    /// jitter.
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << exp).min(self.max)
    }

    /// The decision after the failed attempt number `attempts` (counting it), made at
    /// `now`; `jitter` is uniform in `[0, 1)`.
    pub fn after_failure(
        &self,
        attempts: u32,
        pending_since: Timestamp,
        now: Timestamp,
        jitter: f64,
    ) -> AfterFailure {
        let deadline = pending_since.0.saturating_add(ms(self.max_age));
        if now.0 >= deadline {
            return AfterFailure::Dead;
        }
        let d = ms(self.delay(attempts));
        let delay = d / 2 + ((d / 2) as f64 * jitter.clamp(0.0, 1.0)) as i64;
        AfterFailure::RetryAt(Timestamp(now.0.saturating_add(delay.max(1)).min(deadline)))
    }
}

/// A uniform random number in `[0, 1)`.
pub fn jitter() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random source");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it (0: never).
    pub failures: u32,
    /// How long it stays open before one trial attempt (half-open).
    pub cooldown: Duration,
}

/// One endpoint's circuit breaker: closed (every delivery is tried) until `failures`
/// consecutive attempts fail; then open (nothing is tried) for `cooldown`; then half-open:
/// one trial attempt, whose success closes it and whose failure opens it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breaker {
    consecutive: u32,
    open_until: Option<i64>,
    trial: bool,
}

/// The breaker's state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Every delivery is tried.
    Closed,
    /// Nothing is tried until the cool-down ends.
    Open,
    /// One trial attempt is allowed (or under way).
    HalfOpen,
}

impl Breaker {
    /// The state at `now`.
    pub fn state(&self, now: Timestamp) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now.0 < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// May an attempt start at `now`? In half-open, only one (the trial) until its
    /// outcome is recorded.
    pub fn try_acquire(&mut self, now: Timestamp) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.trial => false,
            BreakerState::HalfOpen => {
                self.trial = true;
                true
            }
        }
    }

    /// An attempt succeeded: closed.
    pub fn success(&mut self) {
        *self = Self::default();
    }

    /// An attempt failed at `now`; returns whether this opened the breaker.
    pub fn failure(&mut self, config: BreakerConfig, now: Timestamp) -> bool {
        self.consecutive = self.consecutive.saturating_add(1);
        let was_trial = std::mem::take(&mut self.trial);
        if config.failures == 0 || (!was_trial && self.consecutive < config.failures) {
            return false;
        }
        self.open_until = Some(now.0.saturating_add(ms(config.cooldown)));
        true
    }

    /// When it closes for a trial, if open.
    pub fn open_until(&self) -> Option<Timestamp> {
        self.open_until.map(Timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let b = Backoff { initial: S, max: 60 * S, max_age: 3600 * S };
        let delays: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(u32::MAX), 60 * S, "no overflow");
    }

    #[test]
    fn jitter_spreads_within_the_upper_half_and_never_past_the_maximum_age() {
        let b = Backoff { initial: 10 * S, max: 60 * S, max_age: 100 * S };
        let t0 = Timestamp(1_000_000);
        // after the 2nd failure: 20 s, jittered within [10 s, 20 s)
        assert_eq!(b.after_failure(2, t0, t0, 0.0), AfterFailure::RetryAt(Timestamp(t0.0 + 10_000)));
        assert_eq!(b.after_failure(2, t0, t0, 0.5), AfterFailure::RetryAt(Timestamp(t0.0 + 15_000)));
        let AfterFailure::RetryAt(t) = b.after_failure(2, t0, t0, 0.999_999) else { panic!() };
        assert!(t.0 < t0.0 + 20_000);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
        // close to the maximum age: the last attempt is at the maximum age exactly
        let late = Timestamp(t0.0 + 95_000);
        assert_eq!(b.after_failure(5, t0, late, 0.5), AfterFailure::RetryAt(Timestamp(t0.0 + 100_000)));
        assert_eq!(b.after_failure(6, t0, Timestamp(t0.0 + 100_000), 0.5), AfterFailure::Dead);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_then_lets_one_trial_through() {
        let cfg = BreakerConfig { failures: 3, cooldown: 30 * S };
        let mut b = Breaker::default();
        let t = |s: i64| Timestamp(s * 1000);
        assert!(b.try_acquire(t(0)));
        assert!(!b.failure(cfg, t(0)));
        assert!(!b.failure(cfg, t(1)));
        b.success();
        assert!(!b.failure(cfg, t(2)), "a success resets the count");
        assert!(!b.failure(cfg, t(3)));
        assert!(b.failure(cfg, t(4)), "the third in a row opens it");
        assert_eq!(b.state(t(5)), BreakerState::Open);
        assert!(!b.try_acquire(t(33)));
        assert_eq!(b.state(t(34)), BreakerState::HalfOpen);
        assert!(b.try_acquire(t(34)), "one trial");
        assert!(!b.try_acquire(t(34)), "only one");
        assert!(b.failure(cfg, t(35)), "a failed trial opens it again");
        assert_eq!(b.open_until(), Some(t(65)));
        assert!(!b.try_acquire(t(64)));
        assert!(b.try_acquire(t(65)));
        b.success();
        assert_eq!(b.state(t(65)), BreakerState::Closed);
        assert!(b.try_acquire(t(65)) && b.try_acquire(t(65)));
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let mut b = Breaker::default();
        for i in 0..100 {
            assert!(!b.failure(BreakerConfig { failures: 0, cooldown: S }, Timestamp(i)));
        }
        assert_eq!(b.state(Timestamp(100)), BreakerState::Closed);
    }
}
