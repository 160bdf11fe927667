//! Rate limits (governor): per client IP on every route, per signed-in user on writes.
//!
//! Both limiters are keyed GCRA maps in memory. Keys that have been idle for a while are
//! dropped by a background sweep (`retain_recent`), so a flood of distinct IPs cannot grow
//! the maps without bound. Limits are per instance: with N instances behind a balancer a
//! client gets N times the rate, which is the usual trade for not paying a Redis round trip
//! on every request.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use platform::config::RateLimitSettings;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{ApiError, RATE_LIMITED};

type Keyed<K, C> = RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limiters, on the system clock in production and on a fake one in tests.
pub struct Limits<C: Clock = DefaultClock> {
    enabled: bool,
    clock: C,
    by_ip: Keyed<IpAddr, C>,
    by_user: Keyed<Uuid, C>,
}

fn keyed<K: Clone + Hash + Eq, C: Clock>(per_sec: NonZeroU32, burst: NonZeroU32, clock: C) -> Keyed<K, C> {
    RateLimiter::new(Quota::per_second(per_sec).allow_burst(burst), DefaultKeyedStateStore::default(), clock)
}

impl Limits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self::with_clock(settings, DefaultClock::default())
    }

    /// Sweeps idle keys every `every` until `stop` fires.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let limits = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => limits.sweep(),
                }
            }
        });
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(settings: &RateLimitSettings, clock: C) -> Self {
        Self {
            enabled: settings.enabled,
            by_ip: keyed(settings.ip_per_sec, settings.ip_burst, clock.clone()),
            by_user: keyed(settings.user_per_sec, settings.user_burst, clock.clone()),
            clock,
        }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(&self.by_ip, &ip)
    }

    pub fn check_user(&self, user_id: Uuid) -> Result<(), ApiError> {
        self.check(&self.by_user, &user_id)
    }

    fn check<K: Clone + Hash + Eq>(&self, limiter: &Keyed<K, C>, key: &K) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        limiter.check_key(key).map_err(|not_until| refused(not_until.wait_time_from(self.clock.now())))
    }

    /// How many keys each limiter holds (for the metrics and the test of the sweep).
    pub fn len(&self) -> (usize, usize) {
        (self.by_ip.len(), self.by_user.len())
    }

    pub fn sweep(&self) {
        self.by_ip.retain_recent();
        self.by_ip.shrink_to_fit();
        self.by_user.retain_recent();
        self.by_user.shrink_to_fit();
    }
}

fn refused(wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError { retry_after_secs: Some(secs.max(1)), ..ApiError::new(RATE_LIMITED, "too many requests; slow down") }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits_on(enabled: bool, clock: FakeRelativeClock) -> Limits<FakeRelativeClock> {
        let n = |n| NonZeroU32::new(n).unwrap();
        let settings = RateLimitSettings {
            enabled,
            ip_per_sec: n(1),
            ip_burst: n(2),
            user_per_sec: n(1),
            user_burst: n(1),
            idle_secs: 1.try_into().unwrap(),
        };
        Limits::with_clock(&settings, clock)
    }

    fn limits(enabled: bool) -> Limits<FakeRelativeClock> {
        limits_on(enabled, FakeRelativeClock::default())
    }

    #[test]
    fn the_burst_passes_then_the_next_request_is_told_when_to_retry() {
        let limits = limits(true);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(limits.check_ip(ip).is_ok());
        assert!(limits.check_ip(ip).is_ok());
        let err = limits.check_ip(ip).unwrap_err();
        assert_eq!(err.code, RATE_LIMITED);
        assert_eq!(err.retry_after_secs, Some(1));
        assert!(limits.check_ip("10.0.0.2".parse().unwrap()).is_ok(), "keys are independent");
    }

    #[test]
    fn users_are_limited_separately_from_ips() {
        let limits = limits(true);
        let user = Uuid::now_v7();
        assert!(limits.check_user(user).is_ok());
        assert!(limits.check_user(user).is_err());
        assert!(limits.check_user(Uuid::now_v7()).is_ok());
    }

    #[test]
    fn disabled_limits_let_everything_through() {
        let limits = limits(false);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(limits.check_ip(ip).is_ok());
        }
    }

    #[test]
    fn the_sweep_drops_keys_that_have_recovered() {
        let clock = FakeRelativeClock::default();
        let limits = limits_on(true, clock.clone());
        for i in 0..50u8 {
            let _ = limits.check_ip(IpAddr::from([10, 0, 1, i]));
        }
        assert_eq!(limits.len().0, 50);
        clock.advance(Duration::from_millis(2100));
        limits.sweep();
        assert_eq!(limits.len().0, 0);
    }
}
