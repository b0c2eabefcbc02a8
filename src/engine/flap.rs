//! The flap limiter (DESIGN.md §3): at most `restart.burst` restarts of one
//! unit within `restart.interval_secs`. It counts from the plans, which are
//! the fold of the ledger, so restarting the agent does not reset it. Pure.

use crate::plan::{actions_of, ActionState, Plan};
use crate::time::parse_rfc3339;

/// One action of a plan: `(plan id, action index)`.
pub type ActionRef<'a> = (&'a str, usize);

/// Which restarts count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Those started within the window: the check before a restart.
    Started,
    /// Also those still waiting in open plans, which will restart the unit
    /// soon: the check at submission.
    StartedAndQueued,
}

/// Restarts of `target` by actions of type `kind` that count at `now_ms`.
/// `except` is the action asking, which does not count against itself.
pub fn restarts_counted<'a>(
    plans: impl Iterator<Item = &'a Plan>,
    kind: &str,
    target: &str,
    now_ms: u64,
    window_ms: u64,
    counting: Counting,
    except: Option<ActionRef<'_>>,
) -> usize {
    let since = now_ms.saturating_sub(window_ms);
    actions_of(plans)
        .filter(|(plan, index, action)| {
            // A simulated restart restarts nothing.
            !plan.simulated()
                && action.seed.kind == kind
                && action.seed.targets.iter().any(|t| t == target)
                && except != Some((plan.id.as_str(), *index))
        })
        .filter(|(plan, _, action)| match action.started_at.as_deref() {
            Some(started) => parse_rfc3339(started).is_some_and(|ms| ms >= since),
            None => {
                counting == Counting::StartedAndQueued
                    && !plan.status.is_finished()
                    && action.state == ActionState::Pending
            }
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ActionSeed, Event, PlanSeed, Severity, Source};

    fn plan(id: &str, unit: &str, seq: u64) -> Plan {
        let seed = PlanSeed {
            id: id.into(),
            timestamp: crate::time::rfc3339(1_000),
            source: Source::Watchdog,
            severity: Severity::High,
            description: "flap".into(),
            alert_sha256: format!("{id}-hash"),
            context: None,
            playbook: None,
            callback: false,
            actions: vec![ActionSeed {
                kind: "restart_service".into(),
                params: serde_json::json!({"name": unit}),
                targets: vec![format!("unit:{unit}")],
                reversible: false,
            }],
        };
        Plan::from_seed(seed, seq, 1_000)
    }

    fn started(mut p: Plan, at_ms: u64) -> Plan {
        p.apply_event(&Event::PlanStarted {}, at_ms);
        p.apply_event(
            &Event::ActionStarted {
                index: 0,
                attempt: 1,
                prepared: None,
            },
            at_ms,
        );
        p
    }

    const MIN: u64 = 60_000;

    #[test]
    fn counts_started_within_the_window_and_waiting_ones() {
        let plans = [
            started(plan("a", "web.service", 1), 10 * MIN),
            started(plan("b", "web.service", 2), 14 * MIN),
            plan("c", "web.service", 3),
            started(plan("d", "db.service", 4), 14 * MIN),
        ];
        let count = |now, except| {
            restarts_counted(
                plans.iter(),
                "restart_service",
                "unit:web.service",
                now,
                5 * MIN,
                Counting::StartedAndQueued,
                except,
            )
        };
        // At 15 min all of a, b and c count; at 16 min a has left the window.
        assert_eq!(count(15 * MIN, None), 3);
        assert_eq!(count(16 * MIN, None), 2);
        // The asking action does not count itself.
        assert_eq!(count(15 * MIN, Some(("c", 0))), 2);
        // Before a restart, only those made count.
        let made = restarts_counted(
            plans.iter(),
            "restart_service",
            "unit:web.service",
            15 * MIN,
            5 * MIN,
            Counting::Started,
            Some(("c", 0)),
        );
        assert_eq!(made, 2);
    }

    #[test]
    fn retries_of_one_action_count_once_and_unstarted_finished_ones_not_at_all() {
        let mut p = started(plan("a", "web.service", 1), 10 * MIN);
        p.apply_event(
            &Event::ActionStarted {
                index: 0,
                attempt: 2,
                prepared: None,
            },
            10 * MIN + 500,
        );
        let mut skipped = plan("b", "web.service", 2);
        skipped.apply_event(
            &Event::ActionFailed {
                index: 0,
                attempt: 1,
                error: "RateLimited".into(),
            },
            10 * MIN,
        );
        skipped.apply_event(
            &Event::PlanFinished {
                status: crate::plan::PlanStatus::Failed,
            },
            10 * MIN,
        );
        let plans = [p, skipped];
        let n = restarts_counted(
            plans.iter(),
            "restart_service",
            "unit:web.service",
            11 * MIN,
            5 * MIN,
            Counting::StartedAndQueued,
            None,
        );
        assert_eq!(n, 1);
    }
}
