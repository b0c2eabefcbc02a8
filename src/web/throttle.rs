//! The slow-down for peers that keep failing authentication: past
//! `max_failures` failures within `window`, every further failed
//! authentication of that peer is answered 429 until the window that
//! counted them has passed (the caller checks the credential first, so a
//! valid one always passes: see `routes::authenticate`). Pure: the caller
//! passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Peers remembered at most; past that the stale ones are forgotten first,
/// then (under a flood from many addresses) the oldest.
const MAX_PEERS: usize = 10_000;

struct Record {
    window_start: Instant,
    failures: u32,
}

pub struct FailureThrottle {
    max_failures: u32,
    window: Duration,
    peers: HashMap<IpAddr, Record>,
}

impl FailureThrottle {
    pub fn new(max_failures: u32, window: Duration) -> FailureThrottle {
        FailureThrottle {
            max_failures,
            window,
            peers: HashMap::new(),
        }
    }

    /// `Err(seconds to wait)` while `peer` is slowed down.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), u64> {
        match self.peers.get(&peer) {
            Some(r) if r.failures >= self.max_failures => {
                let ends = r.window_start + self.window;
                if now < ends {
                    // Rounded up: a client that waits Retry-After is let in.
                    Err((ends - now).as_millis().div_ceil(1000).max(1) as u64)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure; true when this one starts the slow-down (the
    /// caller journals it once, not on every refused request).
    pub fn failure(&mut self, peer: IpAddr, now: Instant) -> bool {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&peer) {
            self.forget_stale(now);
        }
        let window = self.window;
        let record = self.peers.entry(peer).or_insert(Record {
            window_start: now,
            failures: 0,
        });
        if now.duration_since(record.window_start) >= window {
            record.window_start = now;
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        record.failures == self.max_failures
    }

    fn forget_stale(&mut self, now: Instant) {
        let window = self.window;
        self.peers
            .retain(|_, r| now.duration_since(r.window_start) < window);
        if self.peers.len() >= MAX_PEERS {
            if let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, r)| r.window_start)
                .map(|(ip, _)| *ip)
            {
                self.peers.remove(&oldest);
            }
        }
    }

    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn slows_down_after_max_failures_until_the_window_ends() {
        let t0 = Instant::now();
        let mut t = FailureThrottle::new(3, Duration::from_secs(60));
        assert!(!t.failure(A, t0));
        assert!(!t.failure(A, t0));
        assert_eq!(t.check(A, t0), Ok(()));
        assert!(t.failure(A, t0), "the third failure starts the slow-down");
        assert_eq!(t.check(A, t0), Err(60));
        assert_eq!(t.check(A, t0 + Duration::from_millis(59_500)), Err(1));
        assert_eq!(t.check(B, t0), Ok(()), "other peers are not affected");
        assert_eq!(t.check(A, t0 + Duration::from_secs(60)), Ok(()));
        // A new window counts from zero again.
        assert!(!t.failure(A, t0 + Duration::from_secs(61)));
        assert_eq!(t.check(A, t0 + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn memory_stays_bounded_under_many_peers() {
        let t0 = Instant::now();
        let mut t = FailureThrottle::new(3, Duration::from_secs(60));
        for n in 0..(MAX_PEERS as u32 + 500) {
            t.failure(IpAddr::V4(n.into()), t0 + Duration::from_millis(n as u64));
        }
        assert!(t.peers() <= MAX_PEERS);
    }
}
