//! Retry delays: exponential in the attempt number, with ±25 % jitter so
//! many plans failing together do not retry in lockstep.

use crate::config::RetryConfig;

/// The delay before attempt `failed_attempt + 1`, given a jitter draw in 0..1.
pub fn retry_delay_ms(retry: &RetryConfig, failed_attempt: u32, jitter: f64) -> u64 {
    let exponent = failed_attempt.saturating_sub(1).min(20);
    let base = (retry.base_ms as f64) * (retry.factor as f64).powi(exponent as i32);
    let base = base.min(300_000.0);
    let jittered = base * (0.75 + 0.5 * jitter.clamp(0.0, 1.0));
    jittered.round() as u64
}

/// When a failed revert is tried again, if it is: only a failure that may
/// pass. A timed revert (a throttle's or an isolation's end) is never given
/// up while the agent runs: its back-off grows to 5 minutes and stays there.
/// A rollback's revert holds its plan, so it gets `retry.max_attempts` tries
/// like an action; past them a later `RollbackPlan` tries again.
pub fn revert_retry_ms(
    retry: &RetryConfig,
    transient: bool,
    timed: bool,
    failed_attempts: u32,
    jitter: f64,
) -> Option<u64> {
    let again = transient && (timed || failed_attempts < retry.max_attempts);
    if !again {
        return None;
    }
    if timed {
        return Some(endless_retry_ms(retry, failed_attempts, jitter));
    }
    Some(retry_delay_ms(retry, failed_attempts, jitter))
}

/// The delay before trying again something retried without end (a timed
/// revert, a call back): never faster than every 100 ms and always
/// growing, whatever `retry` allows (`base_ms = 0`, `factor = 1`), since
/// each failure is a durable record; at most 5 minutes.
pub fn endless_retry_ms(retry: &RetryConfig, failed_attempts: u32, jitter: f64) -> u64 {
    let floor = RetryConfig {
        base_ms: retry.base_ms.max(100),
        factor: retry.factor.max(2),
        max_attempts: retry.max_attempts,
    };
    retry_delay_ms(&floor, failed_attempts, jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter() {
        let r = RetryConfig {
            base_ms: 200,
            factor: 2,
            max_attempts: 4,
        };
        assert_eq!(retry_delay_ms(&r, 1, 0.5), 200);
        assert_eq!(retry_delay_ms(&r, 2, 0.5), 400);
        assert_eq!(retry_delay_ms(&r, 3, 0.5), 800);
        assert_eq!(retry_delay_ms(&r, 1, 0.0), 150);
        assert_eq!(retry_delay_ms(&r, 1, 1.0), 250);
        assert_eq!(retry_delay_ms(&r, 99, 0.5), 300_000);
    }

    #[test]
    fn a_timed_revert_is_retried_without_end_and_a_rollback_as_an_action() {
        let r = RetryConfig {
            base_ms: 200,
            factor: 2,
            max_attempts: 4,
        };
        assert_eq!(revert_retry_ms(&r, true, true, 1, 0.5), Some(200));
        assert_eq!(revert_retry_ms(&r, true, true, 3, 0.5), Some(800));
        let flat = RetryConfig {
            base_ms: 0,
            factor: 1,
            max_attempts: 4,
        };
        assert_eq!(revert_retry_ms(&flat, true, true, 1, 0.5), Some(100));
        assert_eq!(revert_retry_ms(&flat, true, true, 2, 0.5), Some(200));
        assert_eq!(revert_retry_ms(&r, true, true, 40, 0.5), Some(300_000));
        assert_eq!(revert_retry_ms(&r, true, false, 3, 0.5), Some(800));
        assert_eq!(revert_retry_ms(&r, true, false, 4, 0.5), None);
        assert_eq!(revert_retry_ms(&r, false, true, 1, 0.5), None);
        assert_eq!(revert_retry_ms(&r, false, false, 1, 0.5), None);
    }
}
