//! Plans a calling uid may create (`auth.submit_rate_per_sec`,
//! `auth.submit_burst`): one token bucket per uid other than root. Pure:
//! the caller passes the clock.

use std::collections::HashMap;

/// Buckets kept at most; past it the fullest (the most idle) goes first,
/// which loses nothing: a full bucket is what a new one starts as.
const MAX_BUCKETS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

#[derive(Debug, Default)]
pub struct SubmitBuckets {
    buckets: HashMap<u32, Bucket>,
}

impl SubmitBuckets {
    /// Takes one token for `uid` at `now_ms`, or says how many ms until
    /// one is there. `rate_per_sec` 0 means no limit.
    pub fn take(
        &mut self,
        uid: u32,
        now_ms: u64,
        rate_per_sec: u32,
        burst: u32,
    ) -> Result<(), u64> {
        if rate_per_sec == 0 {
            return Ok(());
        }
        let (rate, burst) = (f64::from(rate_per_sec), f64::from(burst.max(1)));
        if !self.buckets.contains_key(&uid) && self.buckets.len() >= MAX_BUCKETS {
            self.forget_fullest(now_ms, rate, burst);
        }
        let bucket = self.buckets.entry(uid).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.at_ms) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64)
        }
    }

    /// Gives back a token taken for a plan that was not created.
    pub fn refund(&mut self, uid: u32, burst: u32) {
        if let Some(bucket) = self.buckets.get_mut(&uid) {
            bucket.tokens = (bucket.tokens + 1.0).min(f64::from(burst.max(1)));
        }
    }

    fn forget_fullest(&mut self, now_ms: u64, rate: f64, burst: f64) {
        let level = |b: &Bucket| {
            (b.tokens + now_ms.saturating_sub(b.at_ms) as f64 / 1000.0 * rate).min(burst)
        };
        if let Some(uid) = self
            .buckets
            .iter()
            .max_by(|a, b| level(a.1).total_cmp(&level(b.1)))
            .map(|(uid, _)| *uid)
        {
            self.buckets.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = SubmitBuckets::default();
        for _ in 0..3 {
            assert_eq!(b.take(1000, 0, 10, 3), Ok(()));
        }
        assert_eq!(b.take(1000, 0, 10, 3), Err(100), "one token every 100 ms");
        assert_eq!(b.take(1000, 50, 10, 3), Err(50));
        assert_eq!(b.take(1000, 100, 10, 3), Ok(()));
        // Another uid has a bucket of its own.
        assert_eq!(b.take(1001, 100, 10, 3), Ok(()));
        // Refilled, never past the burst.
        assert_eq!(b.take(1000, 100_000, 10, 3), Ok(()));
        assert_eq!(b.take(1000, 100_000, 10, 3), Ok(()));
        assert_eq!(b.take(1000, 100_000, 10, 3), Ok(()));
        assert!(b.take(1000, 100_000, 10, 3).is_err());
        // A token given back (the plan could not be recorded).
        assert!(b.take(1000, 100_000, 10, 3).is_err());
        b.refund(1000, 3);
        assert_eq!(b.take(1000, 100_000, 10, 3), Ok(()));
        // Rate 0: no limit.
        for _ in 0..10 {
            assert_eq!(b.take(7, 0, 0, 1), Ok(()));
        }
    }

    #[test]
    fn the_number_of_buckets_is_bounded_and_the_busiest_are_kept() {
        let mut b = SubmitBuckets::default();
        // uid 0 is drained; the others take one token each.
        for _ in 0..5 {
            let _ = b.take(0, 0, 1, 5);
        }
        for uid in 1..(MAX_BUCKETS as u32 + 100) {
            b.take(uid, 0, 1, 5).unwrap();
        }
        assert_eq!(b.buckets.len(), MAX_BUCKETS);
        assert!(b.take(0, 0, 1, 5).is_err(), "the drained bucket was kept");
    }
}
