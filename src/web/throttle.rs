//! The slow-down for peers that keep failing authentication: past
//! `max_failures` failures within `window`, every further failed
//! authentication of that peer is answered 429 until the window that
//! counted them has passed (the caller checks the credential first, so a
//! valid one always passes: see `routes::authenticate`). Pure: the caller
//! passes the time.
//!
//! Peers are keyed by IPv4 address, or by IPv6 /64: one host usually holds
//! a whole /64 and could otherwise take a fresh address for every guess.
//!
//! Memory is bounded without ever scanning the table: records live in two
//! generations, each at most one window long. A record is moved into the
//! current generation whenever it counts a failure; when a generation is a
//! window old it becomes the previous one and the previous one is dropped
//! whole, since none of its records was touched for a full window and so
//! none can still be slowing its peer down. When the table is full, a new
//! peer is not recorded (until the next rotation, at most one window), and
//! no recorded peer, a slowed-down one least of all, is evicted for it:
//! evicting would let a flood of fresh addresses lift the slow-down of the
//! one that is guessing. `failure` then answers `Full` so the caller can
//! say so.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Peers remembered at most, over both generations.
pub const MAX_PEERS: usize = 10_000;

#[derive(Clone, Copy)]
struct Record {
    window_start: Instant,
    failures: u32,
}

/// What one counted failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Counted; the peer is not (or was already) slowed down.
    Counted,
    /// This failure started the slow-down (journaled once, by the caller).
    SlowedDown,
    /// The table is full and this peer is new: not recorded.
    Full,
}

pub struct FailureThrottle {
    max_failures: u32,
    window: Duration,
    current: HashMap<IpAddr, Record>,
    previous: HashMap<IpAddr, Record>,
    generation_start: Option<Instant>,
}

/// The key a peer is counted under: IPv4 as is, IPv6 by its /64.
pub fn key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

impl FailureThrottle {
    pub fn new(max_failures: u32, window: Duration) -> FailureThrottle {
        FailureThrottle {
            max_failures,
            window,
            current: HashMap::new(),
            previous: HashMap::new(),
            generation_start: None,
        }
    }

    fn record(&self, key: &IpAddr) -> Option<&Record> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// `Err(seconds to wait)` while `peer` is slowed down.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), u64> {
        match self.record(&key(peer)) {
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

    /// Counts one failure of `peer`.
    pub fn failure(&mut self, peer: IpAddr, now: Instant) -> Counted {
        self.rotate(now);
        let key = key(peer);
        let record = match self.current.remove(&key) {
            Some(r) => Some(r),
            None => self.previous.remove(&key),
        };
        let mut record = match record {
            Some(r) => r,
            None if self.peers() >= MAX_PEERS => return Counted::Full,
            None => Record {
                window_start: now,
                failures: 0,
            },
        };
        if now.duration_since(record.window_start) >= self.window {
            record.window_start = now;
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        self.current.insert(key, record);
        if record.failures == self.max_failures {
            Counted::SlowedDown
        } else {
            Counted::Counted
        }
    }

    /// Starts a new generation once the current one is a window old.
    fn rotate(&mut self, now: Instant) {
        let start = *self.generation_start.get_or_insert(now);
        let age = now.duration_since(start);
        if age < self.window {
            return;
        }
        self.previous = if age >= self.window * 2 {
            // Nothing in either generation was touched for a window.
            HashMap::new()
        } else {
            std::mem::take(&mut self.current)
        };
        self.current.clear();
        self.generation_start = Some(now);
    }

    pub fn peers(&self) -> usize {
        self.current.len() + self.previous.len()
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
        assert_eq!(t.failure(A, t0), Counted::Counted);
        assert_eq!(t.failure(A, t0), Counted::Counted);
        assert_eq!(t.check(A, t0), Ok(()));
        assert_eq!(
            t.failure(A, t0),
            Counted::SlowedDown,
            "the third failure starts the slow-down"
        );
        assert_eq!(t.check(A, t0), Err(60));
        assert_eq!(t.check(A, t0 + Duration::from_millis(59_500)), Err(1));
        assert_eq!(t.check(B, t0), Ok(()), "other peers are not affected");
        assert_eq!(t.check(A, t0 + Duration::from_secs(60)), Ok(()));
        // A new window counts from zero again.
        assert_eq!(t.failure(A, t0 + Duration::from_secs(61)), Counted::Counted);
        assert_eq!(t.check(A, t0 + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn ipv6_peers_are_one_per_64() {
        let t0 = Instant::now();
        let mut t = FailureThrottle::new(3, Duration::from_secs(60));
        for n in 1..=3u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 7, n, n, n, n));
            t.failure(ip, t0);
        }
        let same_64: IpAddr = "2001:db8:0:7::ffff".parse().unwrap();
        let next_64: IpAddr = "2001:db8:0:8::1".parse().unwrap();
        assert!(t.check(same_64, t0).is_err(), "a /64 is one peer");
        assert_eq!(t.check(next_64, t0), Ok(()));
        // IPv4-mapped is the IPv4 peer.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            t.failure(mapped, t0);
        }
        assert!(t.check(A, t0).is_err());
    }

    #[test]
    fn memory_stays_bounded_and_a_slowed_peer_is_never_evicted() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut t = FailureThrottle::new(3, window);
        for _ in 0..3 {
            t.failure(A, t0);
        }
        // A flood of new addresses within the window.
        let mut full = 0;
        for n in 0..(MAX_PEERS as u32 + 500) {
            let ip = IpAddr::V4((0x0b00_0000 + n).into());
            if t.failure(ip, t0 + Duration::from_millis(n as u64 / 1000)) == Counted::Full {
                full += 1;
            }
        }
        assert!(t.peers() <= MAX_PEERS);
        assert_eq!(full, 501, "new peers past the bound are not recorded");
        assert!(
            t.check(A, t0 + Duration::from_secs(30)).is_err(),
            "the guesser is still slowed down"
        );
        // A window later the flood is in the previous generation; two
        // windows later it is gone, and new peers are recorded again.
        t.failure(B, t0 + window * 2 + Duration::from_secs(1));
        assert_eq!(t.peers(), 1);
    }

    #[test]
    fn a_record_survives_one_rotation_while_it_still_counts() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut t = FailureThrottle::new(3, window);
        t.failure(B, t0); // starts the first generation
        let t1 = t0 + Duration::from_secs(50);
        for _ in 0..3 {
            t.failure(A, t1);
        }
        // The generation rotates at t0 + 60: A's record moves to the
        // previous one and keeps slowing A down until t1 + 60.
        t.failure(B, t0 + Duration::from_secs(61));
        assert_eq!(t.check(A, t0 + Duration::from_secs(100)), Err(10));
        assert_eq!(t.check(A, t1 + window), Ok(()));
    }
}
