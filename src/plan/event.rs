//! Ledger events and how each one changes a plan. The engine appends an event,
//! waits until it is durable, then folds it into its in-memory plan with
//! [`Plan::apply_event`]; recovery folds the same events from disk, so the two
//! can never disagree.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{
    ActionState, Callback, CallbackState, LogLine, Plan, PlanAction, PlanSeed, PlanStatus, Rollback,
};
use crate::time::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevertReason {
    /// A later action of the plan failed for good.
    Rollback,
    /// `RollbackPlan` was called.
    Operator,
    /// The action's own duration ran out.
    Expired,
}

impl RevertReason {
    fn describe(self) -> &'static str {
        match self {
            RevertReason::Rollback => "rolled back after a later failure",
            RevertReason::Operator => "rolled back on request",
            RevertReason::Expired => "reverted when its time ran out",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum Event {
    AgentStarted {
        version: String,
        pid: u32,
    },
    AgentStopping {
        reason: String,
    },
    ConfigReloaded {
        ok: bool,
        detail: String,
    },
    /// Recorded when a walk of the chain finds it broken; the agent goes on.
    ChainBroken {
        broken_at: u64,
        report: String,
    },
    PlanCreated {
        plan: PlanSeed,
    },
    PlanStarted {},
    ActionStarted {
        index: usize,
        attempt: u32,
        /// What the handler's `prepare` read just before the change: the
        /// values a revert or a recovery after a crash puts back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prepared: Option<Value>,
    },
    ActionApplied {
        index: usize,
        attempt: u32,
        summary: String,
        changes: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revert_at_ms: Option<u64>,
    },
    /// A transient failure; another attempt follows after `retry_in_ms`.
    ActionAttemptFailed {
        index: usize,
        attempt: u32,
        error: String,
        retry_in_ms: u64,
    },
    ActionFailed {
        index: usize,
        attempt: u32,
        error: String,
    },
    /// After a crash: did the interrupted attempt take effect?
    ActionRecovered {
        index: usize,
        took_effect: bool,
        detail: String,
    },
    ActionReverted {
        index: usize,
        reason: RevertReason,
        summary: String,
    },
    ActionRevertFailed {
        index: usize,
        reason: RevertReason,
        error: String,
        /// Set when the failure may pass (systemd or nft briefly out of
        /// reach): the revert is tried again after this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
    ActionSkipped {
        index: usize,
        reason: String,
    },
    /// In a simulated plan: what the action would do (its dry run, or the
    /// dry run's error); nothing was changed.
    ActionSimulated {
        index: usize,
        would: Value,
    },
    PlanFinished {
        status: PlanStatus,
    },
    RollbackRequested {
        by: String,
    },
    RollbackFinished {},
    /// Reconcile found a throttled unit's limits changed from outside the
    /// agent (`systemctl set-property`, say). Recorded, not fought: the
    /// operator's change stands until the throttle ends or is rolled back.
    UnitDrift {
        index: usize,
        unit: String,
        /// The limits the throttle set, and those found.
        expected: Value,
        found: Value,
    },
    /// Reconcile found the agent's nftables table missing what the ledger
    /// says is in force (someone ran `nft flush ruleset`, say), and put it
    /// back with the time each mitigation had left.
    NftDrift {
        table_rebuilt: bool,
        restored: Vec<Value>,
        detail: String,
    },
    /// The plan's source took the call back (a 2xx answer).
    CallbackDelivered {
        attempt: u32,
        http_status: u16,
    },
    /// An attempt of the call back failed: tried again after
    /// `retry_in_ms`, or, without it, given up.
    CallbackFailed {
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
    /// The journal mirror's queue was full (journald slower than the
    /// ledger): these records went to the ledger only, not the journal.
    JournalDropped {
        count: u64,
        first_seq: u64,
        last_seq: u64,
    },
    /// Retention (`ledger.max_bytes`, `ledger.retain_days`) removes the
    /// oldest segments, `first_segment` to `last_segment`: written, durably,
    /// before the anchor and before any is removed. The chain then
    /// verifies from `first_kept_seq`, whose `prev` is `prev_hash`; the
    /// scan accepts an anchor only when the kept chain holds this record.
    LedgerPruned {
        first_segment: u64,
        last_segment: u64,
        segments: u64,
        bytes: u64,
        first_kept_seq: u64,
        prev_hash: String,
    },
}

impl Event {
    /// The record's `kind` as written in the ledger.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::AgentStarted { .. } => "agent_started",
            Event::AgentStopping { .. } => "agent_stopping",
            Event::ConfigReloaded { .. } => "config_reloaded",
            Event::ChainBroken { .. } => "chain_broken",
            Event::PlanCreated { .. } => "plan_created",
            Event::PlanStarted {} => "plan_started",
            Event::ActionStarted { .. } => "action_started",
            Event::ActionApplied { .. } => "action_applied",
            Event::ActionAttemptFailed { .. } => "action_attempt_failed",
            Event::ActionFailed { .. } => "action_failed",
            Event::ActionRecovered { .. } => "action_recovered",
            Event::ActionReverted { .. } => "action_reverted",
            Event::ActionRevertFailed { .. } => "action_revert_failed",
            Event::ActionSkipped { .. } => "action_skipped",
            Event::ActionSimulated { .. } => "action_simulated",
            Event::PlanFinished { .. } => "plan_finished",
            Event::RollbackRequested { .. } => "rollback_requested",
            Event::RollbackFinished {} => "rollback_finished",
            Event::NftDrift { .. } => "nft_drift",
            Event::UnitDrift { .. } => "unit_drift",
            Event::CallbackDelivered { .. } => "callback_delivered",
            Event::CallbackFailed { .. } => "callback_failed",
            Event::JournalDropped { .. } => "journal_dropped",
            Event::LedgerPruned { .. } => "ledger_pruned",
        }
    }

    /// (kind, payload) as stored in a ledger record.
    pub fn to_parts(&self) -> (String, Value) {
        let mut v = serde_json::to_value(self).expect("events always serialize");
        let payload = v
            .get_mut("payload")
            .map(Value::take)
            .unwrap_or_else(|| Value::Object(Default::default()));
        (self.kind().to_string(), payload)
    }

    pub fn from_parts(kind: &str, payload: &Value) -> Result<Event, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"kind": kind, "payload": payload}))
    }

    /// The action index the event is about, if any.
    pub fn action_index(&self) -> Option<usize> {
        match self {
            Event::ActionStarted { index, .. }
            | Event::ActionApplied { index, .. }
            | Event::ActionAttemptFailed { index, .. }
            | Event::ActionFailed { index, .. }
            | Event::ActionRecovered { index, .. }
            | Event::ActionReverted { index, .. }
            | Event::ActionRevertFailed { index, .. }
            | Event::ActionSkipped { index, .. }
            | Event::ActionSimulated { index, .. }
            | Event::UnitDrift { index, .. } => Some(*index),
            _ => None,
        }
    }
}

impl Plan {
    /// A new plan from its `plan_created` record.
    pub fn from_seed(seed: PlanSeed, seq: u64, ts_ms: u64) -> Plan {
        let ts = rfc3339(ts_ms);
        let actions = seed
            .actions
            .into_iter()
            .map(|seed| PlanAction {
                seed,
                state: ActionState::Pending,
                attempts: 0,
                in_flight: false,
                started_at: None,
                finished_at: None,
                changes: None,
                revert_at: None,
                revert_at_ms: None,
                error: None,
                revert_failed: false,
                revert_attempts: 0,
                timed_revert_failures: 0,
                revert_retry_at: None,
                revert_retry_at_ms: None,
                last_drift: None,
                prepared: None,
                would: None,
            })
            .collect::<Vec<_>>();
        let mut plan = Plan {
            id: seed.id,
            timestamp: seed.timestamp,
            source: seed.source,
            severity: seed.severity,
            description: seed.description,
            log: Vec::new(),
            status: PlanStatus::Pending,
            alert_sha256: seed.alert_sha256,
            context: seed.context,
            updated: ts.clone(),
            finished_at: None,
            rollback: None,
            playbook: seed.playbook,
            callback: seed.callback.then(Callback::owed),
            seq,
            last_seq: seq,
            created_ms: ts_ms,
            finished_ms: None,
            actions,
        };
        let summary = format!("plan created with {} action(s)", plan.actions.len());
        plan.log_line(&ts, summary);
        plan
    }

    fn log_line(&mut self, ts: &str, message: String) {
        self.log.push(LogLine {
            ts: ts.to_string(),
            message,
        });
    }

    fn action_label(&self, index: usize) -> String {
        match self.actions.get(index) {
            Some(a) => format!("action {index} ({})", a.seed.kind),
            None => format!("action {index}"),
        }
    }

    /// Folds one event into the plan. Events about an index the plan does not
    /// have are ignored (they cannot come from this agent's own ledger).
    pub fn apply_event(&mut self, event: &Event, ts_ms: u64) {
        let ts = rfc3339(ts_ms);
        self.updated = ts.clone();
        if let Some(index) = event.action_index() {
            if index >= self.actions.len() {
                return;
            }
        }
        let label = event.action_index().map(|i| self.action_label(i));
        let label = label.as_deref().unwrap_or("");
        let line = match event {
            Event::PlanStarted {} => {
                self.status = PlanStatus::InProgress;
                "plan started".to_string()
            }
            Event::ActionStarted {
                index,
                attempt,
                prepared,
            } => {
                let a = &mut self.actions[*index];
                a.attempts = a.attempts.max(*attempt);
                a.in_flight = true;
                a.prepared = prepared.clone();
                a.started_at.get_or_insert_with(|| ts.clone());
                match prepared {
                    Some(_) => {
                        format!("{label}: attempt {attempt} started (state before recorded)")
                    }
                    None => format!("{label}: attempt {attempt} started"),
                }
            }
            Event::ActionApplied {
                index,
                summary,
                changes,
                revert_at_ms,
                ..
            } => {
                let a = &mut self.actions[*index];
                a.state = ActionState::Applied;
                a.in_flight = false;
                a.finished_at = Some(ts.clone());
                a.changes = Some(changes.clone());
                a.revert_at_ms = *revert_at_ms;
                a.revert_at = revert_at_ms.map(rfc3339);
                a.error = None;
                format!("{label}: applied: {summary}")
            }
            Event::ActionAttemptFailed {
                index,
                attempt,
                error,
                retry_in_ms,
            } => {
                let a = &mut self.actions[*index];
                // An attempt can fail before it starts (its `prepare` could
                // not read the system): it is used up all the same.
                a.attempts = a.attempts.max(*attempt);
                a.in_flight = false;
                a.error = Some(error.clone());
                format!("{label}: attempt {attempt} failed: {error}; retrying in {retry_in_ms} ms")
            }
            Event::ActionFailed {
                index,
                attempt,
                error,
            } => {
                let a = &mut self.actions[*index];
                a.attempts = a.attempts.max(*attempt);
                a.state = ActionState::Failed;
                a.in_flight = false;
                a.finished_at = Some(ts.clone());
                a.error = Some(error.clone());
                format!("{label}: failed after {attempt} attempt(s): {error}")
            }
            Event::ActionRecovered {
                index,
                took_effect,
                detail,
            } => {
                self.actions[*index].in_flight = false;
                let verdict = if *took_effect {
                    "had taken effect"
                } else {
                    "had not taken effect"
                };
                format!(
                    "{label}: after an agent restart the interrupted attempt {verdict}: {detail}"
                )
            }
            Event::ActionReverted {
                index,
                reason,
                summary,
            } => {
                let a = &mut self.actions[*index];
                a.state = ActionState::Reverted;
                a.revert_at_ms = None;
                a.revert_retry_at_ms = None;
                a.revert_retry_at = None;
                format!("{label}: {}: {summary}", reason.describe())
            }
            Event::ActionRevertFailed {
                index,
                reason,
                error,
                retry_in_ms,
            } => {
                // It stays applied either way: the change is still in place.
                let a = &mut self.actions[*index];
                let timed = *reason == RevertReason::Expired;
                if timed {
                    a.timed_revert_failures += 1;
                } else {
                    a.revert_attempts += 1;
                }
                a.error = Some(error.clone());
                let failed = format!("{label}: could not be {}: {error}", reason.describe());
                match (retry_in_ms, timed) {
                    (Some(ms), true) => {
                        // Tried again by its timer (also after a restart);
                        // the mitigation's end (`revert_at`) is unchanged.
                        let at = ts_ms.saturating_add(*ms);
                        a.revert_retry_at_ms = Some(at);
                        a.revert_retry_at = Some(rfc3339(at));
                        format!("{failed}; trying again in {ms} ms")
                    }
                    // A rollback tries again in place.
                    (Some(ms), false) => format!("{failed}; trying again in {ms} ms"),
                    (None, _) => {
                        // Left for a later rollback. A timed end still to
                        // come keeps its timer: giving up a rollback does
                        // not give up the end of the mitigation.
                        a.revert_failed = true;
                        if timed {
                            a.revert_at_ms = None;
                            a.revert_at = None;
                            a.revert_retry_at_ms = None;
                            a.revert_retry_at = None;
                        }
                        failed
                    }
                }
            }
            Event::ActionSkipped { index, reason } => {
                let a = &mut self.actions[*index];
                a.state = ActionState::Skipped;
                format!("{label}: skipped: {reason}")
            }
            Event::ActionSimulated { index, would } => {
                let a = &mut self.actions[*index];
                a.state = ActionState::Simulated;
                a.finished_at = Some(ts.clone());
                a.would = Some(would.clone());
                format!(
                    "{label}: simulated, nothing changed (what it would do: the action's `would`)"
                )
            }
            Event::PlanFinished { status } => {
                self.status = *status;
                self.finished_at = Some(ts.clone());
                self.finished_ms = Some(ts_ms);
                format!("plan finished: {}", status.as_str())
            }
            Event::RollbackRequested { by } => {
                for a in &mut self.actions {
                    a.revert_failed = false;
                    a.revert_attempts = 0;
                }
                self.rollback = Some(Rollback {
                    requested_at: ts.clone(),
                    by: by.clone(),
                    finished_at: None,
                });
                format!("rollback requested by {by}")
            }
            Event::UnitDrift {
                index,
                unit,
                expected,
                found,
            } => {
                self.actions[*index].last_drift = Some(found.clone());
                format!(
                    "{label}: {unit}'s limits were changed from outside the agent: the throttle set {expected}, found {found}; left as found (the throttle's end still restores the values from before it, `antibodyctl rollback` ends it now)"
                )
            }
            Event::CallbackDelivered {
                attempt,
                http_status,
            } => {
                let callback = self.callback.get_or_insert_with(Callback::owed);
                callback.state = CallbackState::Delivered;
                callback.attempts = *attempt;
                callback.http_status = Some(*http_status);
                callback.error = None;
                callback.next_attempt_at = None;
                callback.next_attempt_ms = None;
                format!("call back delivered (HTTP {http_status}, attempt {attempt})")
            }
            Event::CallbackFailed {
                attempt,
                http_status,
                error,
                retry_in_ms,
            } => {
                let callback = self.callback.get_or_insert_with(Callback::owed);
                callback.attempts = *attempt;
                callback.http_status = *http_status;
                callback.error = Some(error.clone());
                let at = retry_in_ms.map(|ms| ts_ms.saturating_add(ms));
                callback.next_attempt_ms = at;
                callback.next_attempt_at = at.map(rfc3339);
                // A receiver away for days fails hundreds of attempts: the
                // log keeps the first five and every tenth (the ledger
                // keeps them all, and `callback` the latest).
                if retry_in_ms.is_some() && *attempt > 5 && attempt % 10 != 0 {
                    return;
                }
                match retry_in_ms {
                    Some(ms) => {
                        format!(
                            "call back attempt {attempt} failed: {error}; trying again in {ms} ms"
                        )
                    }
                    None => {
                        callback.state = CallbackState::GivenUp;
                        format!("call back attempt {attempt} failed: {error}; given up")
                    }
                }
            }
            Event::RollbackFinished {} => {
                if let Some(r) = &mut self.rollback {
                    r.finished_at = Some(ts.clone());
                }
                "rollback finished".to_string()
            }
            Event::PlanCreated { .. }
            | Event::AgentStarted { .. }
            | Event::AgentStopping { .. }
            | Event::ConfigReloaded { .. }
            | Event::ChainBroken { .. }
            | Event::NftDrift { .. }
            | Event::JournalDropped { .. }
            | Event::LedgerPruned { .. } => return,
        };
        self.log_line(&ts, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ActionSeed, PlanSeed, Severity, Source};
    use serde_json::json;

    fn applied_timed_plan() -> Plan {
        let seed = PlanSeed {
            id: "p".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            source: Source::Manual,
            severity: Severity::High,
            description: "d".into(),
            alert_sha256: "h".into(),
            context: None,
            playbook: None,
            callback: false,
            actions: vec![ActionSeed {
                kind: "throttle_entity".into(),
                params: json!({}),
                targets: vec![],
                reversible: true,
            }],
        };
        let mut plan = Plan::from_seed(seed, 1, 1_000);
        let applied = Event::ActionApplied {
            index: 0,
            attempt: 1,
            summary: "s".into(),
            changes: json!({}),
            revert_at_ms: Some(5_000),
        };
        plan.apply_event(&applied, 2_000);
        plan
    }

    fn revert_failed(retry_in_ms: Option<u64>) -> Event {
        Event::ActionRevertFailed {
            index: 0,
            reason: RevertReason::Expired,
            error: "out of reach".into(),
            retry_in_ms,
        }
    }

    #[test]
    fn a_timed_revert_that_may_pass_comes_due_again_from_the_record_alone() {
        // What a restart replays: the record says when to try again.
        let mut plan = applied_timed_plan();
        plan.apply_event(&revert_failed(Some(800)), 5_000);
        assert_eq!(
            plan.pending_timed_reverts().collect::<Vec<_>>(),
            [(5_800, 0)]
        );
        assert_eq!(plan.actions[0].timed_revert_failures, 1);
        assert!(!plan.actions[0].revert_failed);
        // The mitigation still ended at 5 000: reconcile must not restore it.
        assert_eq!(plan.actions[0].revert_at_ms, Some(5_000));
        let mut stored = plan.clone();
        stored.actions[0].revert_retry_at_ms = None;
        stored.restore_derived();
        assert_eq!(
            stored.pending_timed_reverts().collect::<Vec<_>>(),
            [(5_800, 0)]
        );
        assert_eq!(plan.revertible_indexes().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_revert_failed_for_good_is_left_to_a_rollback() {
        let mut plan = applied_timed_plan();
        plan.apply_event(&revert_failed(None), 5_000);
        assert_eq!(plan.pending_timed_reverts().count(), 0);
        assert!(plan.actions[0].revert_failed);
        assert_eq!(plan.actions[0].state, ActionState::Applied);
        plan.apply_event(&Event::RollbackRequested { by: "root".into() }, 6_000);
        assert_eq!(plan.revertible_indexes().collect::<Vec<_>>(), [0]);
        assert_eq!(plan.actions[0].revert_attempts, 0);
    }

    #[test]
    fn a_rollback_that_gives_up_keeps_the_timed_end() {
        let mut plan = applied_timed_plan();
        let gave_up = Event::ActionRevertFailed {
            index: 0,
            reason: RevertReason::Operator,
            error: "out of reach".into(),
            retry_in_ms: None,
        };
        plan.apply_event(&gave_up, 3_000);
        assert!(plan.actions[0].revert_failed);
        assert_eq!(
            plan.pending_timed_reverts().collect::<Vec<_>>(),
            [(5_000, 0)]
        );
        assert_eq!(plan.actions[0].revert_attempts, 1);
        assert_eq!(plan.actions[0].timed_revert_failures, 0);
    }

    #[test]
    fn an_old_record_without_retry_reads_as_failed_for_good() {
        let old = json!({"index": 0, "reason": "expired", "error": "e"});
        let event = Event::from_parts("action_revert_failed", &old);
        assert!(matches!(
            event,
            Ok(Event::ActionRevertFailed {
                retry_in_ms: None,
                ..
            })
        ));
    }
}
