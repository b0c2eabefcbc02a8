//! What a plan does next, decided from its state alone. The same function
//! drives a fresh plan, a retried action and a plan resumed after a crash.

use super::event::RevertReason;
use super::model::{ActionState, Plan, PlanStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Mark the plan in progress.
    Start,
    /// Run attempt `attempt` (1-based) of an action.
    Apply {
        index: usize,
        attempt: u32,
    },
    /// An attempt was interrupted by a crash: ask the handler what happened.
    Recover {
        index: usize,
    },
    Revert {
        index: usize,
        reason: RevertReason,
    },
    /// An action that will not run because an earlier one failed.
    Skip {
        index: usize,
    },
    /// In a simulated plan: record what the action would do.
    Simulate {
        index: usize,
    },
    Finish(PlanStatus),
    FinishRollback,
    /// Nothing left to do.
    Done,
}

pub fn next_step(plan: &Plan) -> Step {
    match plan.status {
        PlanStatus::Pending => Step::Start,
        PlanStatus::InProgress => in_progress_step(plan),
        PlanStatus::Success | PlanStatus::Failed => finished_step(plan),
    }
}

fn in_progress_step(plan: &Plan) -> Step {
    if let Some(index) = plan.actions.iter().position(|a| a.in_flight) {
        return Step::Recover { index };
    }
    let failed = plan.actions.iter().any(|a| a.state == ActionState::Failed);
    if failed {
        // Newest first: undo in the reverse order of application.
        if let Some(index) = plan.revertible_indexes().next_back() {
            return Step::Revert {
                index,
                reason: RevertReason::Rollback,
            };
        }
        if let Some(index) = first_pending(plan) {
            return Step::Skip { index };
        }
        return Step::Finish(PlanStatus::Failed);
    }
    match first_pending(plan) {
        Some(index) if plan.simulated() => Step::Simulate { index },
        Some(index) => Step::Apply {
            index,
            attempt: plan.actions[index].attempts + 1,
        },
        None => Step::Finish(PlanStatus::Success),
    }
}

fn finished_step(plan: &Plan) -> Step {
    match &plan.rollback {
        Some(r) if r.finished_at.is_none() => match plan.revertible_indexes().next_back() {
            Some(index) => Step::Revert {
                index,
                reason: RevertReason::Operator,
            },
            None => Step::FinishRollback,
        },
        _ => Step::Done,
    }
}

fn first_pending(plan: &Plan) -> Option<usize> {
    plan.actions
        .iter()
        .position(|a| a.state == ActionState::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::alert::{Severity, Source};
    use crate::plan::event::Event;
    use crate::plan::model::{ActionSeed, PlanSeed};
    use serde_json::json;

    fn plan(reversible: &[bool]) -> Plan {
        let seed = PlanSeed {
            id: "p".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            source: Source::Manual,
            severity: Severity::Low,
            description: "d".into(),
            alert_sha256: "h".into(),
            context: None,
            playbook: None,
            callback: false,
            actions: reversible
                .iter()
                .map(|&r| ActionSeed {
                    kind: "t".into(),
                    params: json!({}),
                    targets: vec![],
                    reversible: r,
                })
                .collect(),
        };
        Plan::from_seed(seed, 1, 0)
    }

    fn applied(index: usize) -> Event {
        Event::ActionApplied {
            index,
            attempt: 1,
            summary: "ok".into(),
            changes: json!({}),
            revert_at_ms: None,
        }
    }

    #[test]
    fn runs_actions_in_order_then_succeeds() {
        let mut p = plan(&[true, true]);
        assert_eq!(next_step(&p), Step::Start);
        p.apply_event(&Event::PlanStarted {}, 1);
        assert_eq!(
            next_step(&p),
            Step::Apply {
                index: 0,
                attempt: 1
            }
        );
        p.apply_event(
            &Event::ActionStarted {
                index: 0,
                attempt: 1,
                prepared: None,
            },
            2,
        );
        assert_eq!(next_step(&p), Step::Recover { index: 0 });
        p.apply_event(&applied(0), 3);
        assert_eq!(
            next_step(&p),
            Step::Apply {
                index: 1,
                attempt: 1
            }
        );
        p.apply_event(
            &Event::ActionStarted {
                index: 1,
                attempt: 1,
                prepared: None,
            },
            4,
        );
        p.apply_event(&applied(1), 5);
        assert_eq!(next_step(&p), Step::Finish(PlanStatus::Success));
    }

    #[test]
    fn transient_failure_asks_for_the_next_attempt() {
        let mut p = plan(&[true]);
        p.apply_event(&Event::PlanStarted {}, 1);
        p.apply_event(
            &Event::ActionStarted {
                index: 0,
                attempt: 1,
                prepared: None,
            },
            2,
        );
        p.apply_event(
            &Event::ActionAttemptFailed {
                index: 0,
                attempt: 1,
                error: "busy".into(),
                retry_in_ms: 10,
            },
            3,
        );
        assert_eq!(
            next_step(&p),
            Step::Apply {
                index: 0,
                attempt: 2
            }
        );
    }

    #[test]
    fn failure_reverts_newest_first_skips_rest_then_fails() {
        let mut p = plan(&[true, false, true, true, true]);
        p.apply_event(&Event::PlanStarted {}, 1);
        for i in 0..3 {
            p.apply_event(&applied(i), 2);
        }
        p.apply_event(
            &Event::ActionFailed {
                index: 3,
                attempt: 4,
                error: "no".into(),
            },
            3,
        );
        assert_eq!(
            next_step(&p),
            Step::Revert {
                index: 2,
                reason: RevertReason::Rollback
            }
        );
        let reverted = |i| Event::ActionReverted {
            index: i,
            reason: RevertReason::Rollback,
            summary: "undone".into(),
        };
        p.apply_event(&reverted(2), 4);
        // Action 1 is not reversible: it is passed over.
        assert_eq!(
            next_step(&p),
            Step::Revert {
                index: 0,
                reason: RevertReason::Rollback
            }
        );
        p.apply_event(&reverted(0), 5);
        assert_eq!(next_step(&p), Step::Skip { index: 4 });
        p.apply_event(
            &Event::ActionSkipped {
                index: 4,
                reason: "x".into(),
            },
            6,
        );
        assert_eq!(next_step(&p), Step::Finish(PlanStatus::Failed));
        p.apply_event(
            &Event::PlanFinished {
                status: PlanStatus::Failed,
            },
            7,
        );
        assert_eq!(next_step(&p), Step::Done);
        assert!(p
            .log
            .iter()
            .any(|l| l.message.contains("rolled back after a later failure")));
    }

    #[test]
    fn operator_rollback_of_a_finished_plan() {
        let mut p = plan(&[true, true]);
        p.apply_event(&Event::PlanStarted {}, 1);
        p.apply_event(&applied(0), 2);
        p.apply_event(&applied(1), 3);
        p.apply_event(
            &Event::PlanFinished {
                status: PlanStatus::Success,
            },
            4,
        );
        assert_eq!(next_step(&p), Step::Done);
        p.apply_event(&Event::RollbackRequested { by: "uid 0".into() }, 5);
        assert_eq!(
            next_step(&p),
            Step::Revert {
                index: 1,
                reason: RevertReason::Operator
            }
        );
        for i in [1, 0] {
            p.apply_event(
                &Event::ActionReverted {
                    index: i,
                    reason: RevertReason::Operator,
                    summary: "u".into(),
                },
                6,
            );
        }
        assert_eq!(next_step(&p), Step::FinishRollback);
        p.apply_event(&Event::RollbackFinished {}, 7);
        assert_eq!(next_step(&p), Step::Done);
        assert_eq!(p.status, PlanStatus::Success);
    }

    #[test]
    fn events_round_trip_through_ledger_parts() {
        let e = Event::ActionApplied {
            index: 2,
            attempt: 1,
            summary: "s".into(),
            changes: json!({"a": 1}),
            revert_at_ms: Some(5),
        };
        let (kind, payload) = e.to_parts();
        assert_eq!(kind, "action_applied");
        assert_eq!(Event::from_parts(&kind, &payload).unwrap(), e);
        let (kind, payload) = Event::PlanStarted {}.to_parts();
        assert_eq!(
            Event::from_parts(&kind, &payload).unwrap(),
            Event::PlanStarted {}
        );
    }
}
