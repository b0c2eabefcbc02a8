//! Repeat offenders: the n-th repeat within the window gets
//! `seconds × factor^n`, capped at `max_seconds`, plus up to `jitter_secs`
//! at random (as fail2ban's `bantime.increment` with `bantime.factor`,
//! `bantime.maxtime` and `bantime.rndtime`). Pure arithmetic: the caller
//! counts the repeats (from the ledger) and draws the jitter.

use serde::{Deserialize, Serialize};

/// A playbook's `[playbook.escalate]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalate {
    pub factor: u64,
    pub window_secs: u64,
    pub max_seconds: u64,
    #[serde(default)]
    pub jitter_secs: u64,
}

/// The longest factor, window and mitigation a playbook may ask for: a
/// week's window, ×1000 a step, and a day's mitigation, which is what the
/// time-bounded actions accept (`isolate_socket`, `throttle_entity`:
/// `seconds` 1..=86400): an escalation past it would make the action
/// refused, and the offender free, at the repeat that should hold longest.
pub const MAX_FACTOR: u64 = 1000;
pub const MAX_WINDOW_SECS: u64 = 7 * 86_400;
pub const MAX_SECONDS: u64 = 86_400;

impl Escalate {
    /// What is wrong with it, if anything (the key is named).
    pub fn problem(&self) -> Option<String> {
        if !(1..=MAX_FACTOR).contains(&self.factor) {
            return Some(format!(
                "factor: {} is not within 1..={MAX_FACTOR}",
                self.factor
            ));
        }
        if !(1..=MAX_WINDOW_SECS).contains(&self.window_secs) {
            return Some(format!(
                "window_secs: {} is not within 1..={MAX_WINDOW_SECS}",
                self.window_secs
            ));
        }
        if !(1..=MAX_SECONDS).contains(&self.max_seconds) {
            return Some(format!(
                "max_seconds: {} is not within 1..={MAX_SECONDS}",
                self.max_seconds
            ));
        }
        if self.max_seconds + self.jitter_secs > MAX_SECONDS {
            return Some(format!(
                "jitter_secs: max_seconds ({}) plus jitter_secs ({}) is past {MAX_SECONDS}, the longest the actions accept",
                self.max_seconds, self.jitter_secs
            ));
        }
        None
    }

    /// The seconds for the `repeat`-th repeat (0: the first offence) of a
    /// mitigation of `base` seconds, with `jitter` (already drawn, at most
    /// `jitter_secs`) added after the cap.
    pub fn seconds(&self, base: u64, repeat: u32, jitter: u64) -> u64 {
        let grown = self
            .factor
            .checked_pow(repeat)
            .and_then(|f| base.checked_mul(f))
            .unwrap_or(u64::MAX);
        grown
            .min(self.max_seconds.max(base))
            .saturating_add(jitter.min(self.jitter_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh() -> Escalate {
        Escalate {
            factor: 4,
            window_secs: 86_400,
            max_seconds: 86_400,
            jitter_secs: 0,
        }
    }

    #[test]
    fn each_repeat_multiplies_up_to_the_cap() {
        let e = ssh();
        let steps: Vec<u64> = (0..8).map(|n| e.seconds(600, n, 0)).collect();
        assert_eq!(
            steps,
            [600, 2_400, 9_600, 38_400, 86_400, 86_400, 86_400, 86_400]
        );
    }

    #[test]
    fn huge_repeats_saturate_and_never_overflow() {
        let e = Escalate {
            factor: MAX_FACTOR,
            ..ssh()
        };
        assert_eq!(e.seconds(600, u32::MAX, 0), 86_400);
        assert_eq!(
            e.seconds(u64::MAX, 3, 0),
            u64::MAX,
            "a base past the cap is the action's own"
        );
    }

    #[test]
    fn jitter_is_added_after_the_cap_and_bounded() {
        let e = Escalate {
            max_seconds: 86_000,
            jitter_secs: 30,
            ..ssh()
        };
        assert_eq!(e.problem(), None);
        assert_eq!(e.seconds(600, 0, 7), 607);
        assert_eq!(e.seconds(600, 9, 30), 86_030);
        assert_eq!(
            e.seconds(600, 0, 1_000),
            630,
            "a draw past jitter_secs is cut to it"
        );
    }

    #[test]
    fn out_of_range_keys_are_named() {
        for (e, key) in [
            (Escalate { factor: 0, ..ssh() }, "factor"),
            (
                Escalate {
                    window_secs: 0,
                    ..ssh()
                },
                "window_secs",
            ),
            (
                Escalate {
                    max_seconds: MAX_SECONDS + 1,
                    ..ssh()
                },
                "max_seconds",
            ),
            (
                Escalate {
                    jitter_secs: 1,
                    ..ssh()
                },
                "jitter_secs",
            ),
        ] {
            let problem = e.problem().expect(key);
            assert!(problem.starts_with(&format!("{key}: ")), "{problem}");
        }
        assert_eq!(ssh().problem(), None);
    }
}
