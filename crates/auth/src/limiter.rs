//! Brute-force protection, per client address. A failed attempt (credentials presented and
//! wrong) is answered late: 250 ms times the address's failures in the last minute, at most
//! 3 s. Past `LIMIT` failures in a minute, the address is refused at once, whatever it
//! presents, until its failures age out: guessing becomes slow and then fruitless, and a
//! flood costs the server nothing but a refusal. Only the session that failed waits; nothing
//! else is held.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures from one address, within [`WINDOW`], after which it is refused at once.
pub const LIMIT: usize = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(3);
/// Addresses remembered at most (an attacker rotating addresses cannot grow the table).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
pub struct Limiter {
    fails: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// What the limiter says about an address before checking.
#[derive(Debug, PartialEq, Eq)]
pub enum Before {
    Check,
    /// Over the limit: refuse without checking. `first` is true for the attempt that crossed
    /// it (logged once, not per attempt).
    Refuse {
        first: bool,
    },
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.fails.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recent(list: &mut VecDeque<Instant>, now: Instant) -> usize {
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            list.pop_front();
        }
        list.len()
    }

    /// Before checking credentials from `ip`.
    pub fn before(&self, ip: IpAddr, now: Instant) -> Before {
        let mut map = self.lock();
        let Some(list) = map.get_mut(&ip) else {
            return Before::Check;
        };
        let n = Self::recent(list, now);
        if n < LIMIT {
            return Before::Check;
        }
        // Count the refusal too (capped), so that a flood keeps the address refused; the
        // first refusal past the limit is the one logged.
        let first = n == LIMIT;
        if n < LIMIT * 4 {
            list.push_back(now);
        }
        Before::Refuse { first }
    }

    /// Records a failure from `ip`; returns how long to wait before answering.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut map = self.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            // Forget addresses with nothing recent, then the table is bounded.
            map.retain(|_, l| Self::recent(l, now) > 0);
            if map.len() >= MAX_ADDRESSES {
                return MAX_DELAY;
            }
        }
        let list = map.entry(ip).or_default();
        Self::recent(list, now);
        list.push_back(now);
        (STEP * list.len() as u32).min(MAX_DELAY)
    }

    /// Failures from `ip` in the window (for tests and the API).
    pub fn failures(&self, ip: IpAddr, now: Instant) -> usize {
        self.lock().get_mut(&ip).map_or(0, |l| Self::recent(l, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_the_address_is_refused_until_its_failures_age_out() {
        let l = Limiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for i in 0..LIMIT {
            assert_eq!(l.before(ip, t0), Before::Check, "attempt {i}");
            delays.push(l.failed(ip, t0));
        }
        assert_eq!(delays[0], STEP);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), MAX_DELAY.min(STEP * LIMIT as u32));
        assert_eq!(l.before(ip, t0), Before::Refuse { first: true });
        assert_eq!(l.before(ip, t0), Before::Refuse { first: false });
        // Another address is not affected.
        assert_eq!(l.before(other, t0), Before::Check);
        // A minute later the failures have aged out.
        let later = t0 + WINDOW + Duration::from_secs(1);
        assert_eq!(l.before(ip, later), Before::Check);
        assert_eq!(l.failures(ip, later), 0);
    }
}
