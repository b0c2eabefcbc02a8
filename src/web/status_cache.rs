//! The agent's `Status` reply, kept for a moment. `/antibody/status` and
//! `/metrics` are public: without this every request (a dashboard left
//! open on many screens, a scraper, anyone on loopback) was one D-Bus call
//! into the privileged agent. A reply is reused for `ttl` (1 s); an error
//! is not kept, so the agent's return shows at once, and the lock is never
//! held across the call, so a slow agent cannot queue requests behind it.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const STATUS_TTL: Duration = Duration::from_secs(1);

pub struct Cached<T> {
    ttl: Duration,
    slot: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Cached<T> {
    pub fn new(ttl: Duration) -> Cached<T> {
        Cached {
            ttl,
            slot: Mutex::new(None),
        }
    }

    /// The kept value while it is fresh, else `fetch`'s (kept if Ok).
    pub async fn get<E, F, Fut>(&self, fetch: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some((at, value)) = crate::sync::lock(&self.slot).as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        let value = fetch().await?;
        *crate::sync::lock(&self.slot) = Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_reply_is_reused_while_fresh_an_error_never() {
        let cache = Cached::new(Duration::from_millis(300));
        let calls = AtomicU32::new(0);
        let fetch = |ok: bool| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if ok {
                    Ok(format!("reply {n}"))
                } else {
                    Err("away")
                }
            }
        };
        assert_eq!(cache.get(|| fetch(false)).await, Err("away"));
        assert_eq!(cache.get(|| fetch(true)).await, Ok("reply 2".into()));
        for _ in 0..10 {
            assert_eq!(cache.get(|| fetch(true)).await, Ok("reply 2".into()));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one call for 11 requests");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(cache.get(|| fetch(true)).await, Ok("reply 3".into()));
    }
}
