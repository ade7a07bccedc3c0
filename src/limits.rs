//! Limits: in-flight requests and the rate limit.
//!
//! Promise: at most `max_in_flight` requests are handled at once, and all callers together stay
//! under the token bucket.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Counts requests being handled; `try_enter` fails when the limit is reached.
#[derive(Debug)]
pub struct InFlight {
    max: u64,
    current: Arc<AtomicU64>,
}

/// Holds one in-flight slot until dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    current: Arc<AtomicU64>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.current.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    /// `current` is shared with the metrics gauge.
    pub fn new(max: usize, current: Arc<AtomicU64>) -> Self {
        InFlight {
            max: max as u64,
            current,
        }
    }

    pub fn try_enter(&self) -> Option<InFlightGuard> {
        let mut now = self.current.load(Ordering::Acquire);
        loop {
            if now >= self.max {
                return None;
            }
            match self.current.compare_exchange_weak(
                now,
                now + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(InFlightGuard {
                        current: self.current.clone(),
                    })
                }
                Err(actual) => now = actual,
            }
        }
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }
}

/// One token bucket for all callers together (governor's GCRA).
#[derive(Debug)]
pub struct RateLimit {
    limiter: Option<DefaultDirectRateLimiter>,
}

impl RateLimit {
    /// `None` disables the limit.
    pub fn new(rate: Option<(u32, u32)>) -> Self {
        let limiter = rate.and_then(|(per_second, burst)| {
            let per_second = std::num::NonZeroU32::new(per_second)?;
            let burst = std::num::NonZeroU32::new(burst)?;
            Some(RateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            ))
        });
        RateLimit { limiter }
    }

    /// `Ok` when the request may go; `Err(seconds)` is the `Retry-After` value (at least 1).
    pub fn check(&self) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }
}

/// Boxed future type used by the lifecycle watchers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_limit_holds() {
        let f = InFlight::new(2, Arc::default());
        let a = f.try_enter().unwrap();
        let _b = f.try_enter().unwrap();
        assert!(f.try_enter().is_none());
        drop(a);
        assert!(f.try_enter().is_some());
    }

    #[test]
    fn rate_limit_refuses_past_burst_with_retry_after() {
        let r = RateLimit::new(Some((1, 2)));
        assert!(r.check().is_ok());
        assert!(r.check().is_ok());
        let retry = r.check().unwrap_err();
        assert!(retry >= 1);
        assert!(RateLimit::new(None).check().is_ok());
    }
}
