//! The Patch Plan as stored and returned by `GetPlan` (DESIGN.md §2).
//! A plan is never edited in place by callers: it is the fold of its ledger
//! events (`super::event`), so replaying the ledger rebuilds it exactly.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::alert::{Severity, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    Pending,
    InProgress,
    Success,
    Failed,
}

impl PlanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Pending => "pending",
            PlanStatus::InProgress => "in_progress",
            PlanStatus::Success => "success",
            PlanStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<PlanStatus> {
        [
            PlanStatus::Pending,
            PlanStatus::InProgress,
            PlanStatus::Success,
            PlanStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, PlanStatus::Success | PlanStatus::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    Pending,
    Applied,
    Failed,
    Reverted,
    Skipped,
    /// In a plan of a `simulate = true` playbook: what it would do was
    /// recorded (`would`); nothing was changed.
    Simulated,
}

/// What the plan was created with: written once, in the `plan_created` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSeed {
    pub id: String,
    pub timestamp: String,
    pub source: Source,
    pub severity: Severity,
    pub description: String,
    pub alert_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    pub actions: Vec<ActionSeed>,
    /// The playbook that chose the actions of a bare alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<PlaybookUse>,
    /// The alert's source is told when the plan finishes (its alert has a
    /// `context.alert_id` and the config had `[callbacks.SOURCE]` when the
    /// plan was made): recorded here so the promise outlives a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub callback: bool,
}

/// Which playbook made a plan's actions, and which repeat this was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaybookUse {
    pub name: String,
    pub file: String,
    /// Earlier plans of this playbook on the same target within its
    /// escalation window (0: a first offence).
    pub repeat: u32,
    /// The playbook has `simulate = true`: each action records what it
    /// would do (its dry run) and changes nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionSeed {
    #[serde(rename = "type")]
    pub kind: String,
    /// The parameters after validation (e.g. `vael` → `vael.service`).
    pub params: Value,
    /// Resources the action touches; plans sharing one run in order.
    pub targets: Vec<String>,
    pub reversible: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub ts: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanAction {
    #[serde(flatten)]
    pub seed: ActionSeed,
    pub state: ActionState,
    pub attempts: u32,
    /// Started and not yet settled: after a crash, `recover` decides.
    pub in_flight: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What `apply` changed, enough for `revert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Value>,
    /// When a timed action is reverted by itself (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_at: Option<String>,
    #[serde(skip)]
    pub revert_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A revert was tried and failed: the change is still in force. A later
    /// `RollbackPlan` tries again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revert_failed: bool,
    /// Failed tries of a rollback to revert it, since the last
    /// `RollbackPlan` (a rollback's revert gets `retry.max_attempts`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revert_attempts: u32,
    /// Failed tries of its timed revert (retried without end).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timed_revert_failures: u32,
    /// When a timed revert that failed is tried again (RFC 3339). The
    /// mitigation's own end stays `revert_at`: what reconcile restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_retry_at: Option<String>,
    #[serde(skip)]
    pub revert_retry_at_ms: Option<u64>,
    /// What the last `unit_drift` record found, so a reconcile records a
    /// drift once, not every round (rebuilt by replay).
    #[serde(skip)]
    pub last_drift: Option<Value>,
    /// The state `prepare` read before the latest attempt changed anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Value>,
    /// In a simulated plan: what the action would have done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would: Option<Value>,
}

/// Where the call back to the alert's source stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Callback {
    pub state: CallbackState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The receiver's answer to the latest attempt, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a failed attempt is tried again (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip)]
    pub next_attempt_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackState {
    /// Owed: sent once the plan finishes, retried until delivered.
    Pending,
    Delivered,
    /// The receiver refused it for good (a 4xx other than 408 and 429).
    GivenUp,
}

impl Callback {
    pub fn owed() -> Callback {
        Callback {
            state: CallbackState::Pending,
            attempts: 0,
            http_status: None,
            error: None,
            next_attempt_at: None,
            next_attempt_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    pub requested_at: String,
    pub by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub timestamp: String,
    pub source: Source,
    pub severity: Severity,
    pub description: String,
    pub actions: Vec<PlanAction>,
    pub status: PlanStatus,
    pub log: Vec<LogLine>,
    pub alert_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    pub updated: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<PlaybookUse>,
    /// The call back to the alert's source, when one is owed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
    /// Ledger sequence of the `plan_created` record: submission order.
    pub seq: u64,
    /// Ledger sequence of the plan's newest record (0 in plans archived
    /// before it was kept): retention removes an archived plan only once
    /// all its records are gone.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub last_seq: u64,
    #[serde(skip)]
    pub created_ms: u64,
    #[serde(skip)]
    pub finished_ms: Option<u64>,
}

/// Every action of every plan, with its plan and its index.
pub fn actions_of<'a>(
    plans: impl Iterator<Item = &'a Plan>,
) -> impl Iterator<Item = (&'a Plan, usize, &'a PlanAction)> {
    plans.flat_map(|plan| {
        plan.actions
            .iter()
            .enumerate()
            .map(move |(index, action)| (plan, index, action))
    })
}

impl Plan {
    /// Recomputes the fields kept out of JSON, after reading a stored plan
    /// (checkpoint or archive) instead of folding its events.
    pub fn restore_derived(&mut self) {
        use crate::time::parse_rfc3339;
        self.created_ms = parse_rfc3339(&self.timestamp).unwrap_or(0);
        self.finished_ms = self.finished_at.as_deref().and_then(parse_rfc3339);
        if let Some(callback) = &mut self.callback {
            callback.next_attempt_ms = callback.next_attempt_at.as_deref().and_then(parse_rfc3339);
        }
        for action in &mut self.actions {
            action.revert_at_ms = action.revert_at.as_deref().and_then(parse_rfc3339);
            action.revert_retry_at_ms = action.revert_retry_at.as_deref().and_then(parse_rfc3339);
        }
    }

    /// A plan of a `simulate = true` playbook: it changes nothing.
    pub fn simulated(&self) -> bool {
        self.playbook.as_ref().is_some_and(|p| p.simulate)
    }

    /// A rollback was asked for and has not finished.
    pub fn rolling_back(&self) -> bool {
        self.rollback
            .as_ref()
            .is_some_and(|r| r.finished_at.is_none())
    }

    /// A finished plan whose call back is still owed.
    pub fn callback_pending(&self) -> bool {
        self.status.is_finished()
            && self
                .callback
                .as_ref()
                .is_some_and(|c| c.state == CallbackState::Pending)
    }

    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.actions
            .iter()
            .flat_map(|a| a.seed.targets.iter().map(String::as_str))
    }

    /// Applied, reversible and not yet reverted: what a rollback would undo.
    pub fn revertible_indexes(&self) -> impl DoubleEndedIterator<Item = usize> + '_ {
        self.actions
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                a.seed.reversible && a.state == ActionState::Applied && !a.revert_failed
            })
            .map(|(i, _)| i)
    }

    /// Mitigations of this plan in force now: applied, reversible, not
    /// yet reverted.
    pub fn in_force_count(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| a.seed.reversible && a.state == ActionState::Applied)
            .count()
    }

    /// Why a rollback of this plan would revert nothing (no action of it
    /// is applied and reversible now), naming each action's state; `None`
    /// when something is in force.
    pub fn nothing_to_revert(&self) -> Option<String> {
        if self.in_force_count() > 0 {
            return None;
        }
        let actions: Vec<String> = self
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let state = serde_json::to_value(a.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let kind = if a.seed.reversible {
                    ""
                } else {
                    ", not reversible"
                };
                format!("[{i}] {} {state}{kind}", a.seed.kind)
            })
            .collect();
        Some(format!(
            "plan {} has nothing to revert: no action of it is applied and reversible now ({})",
            self.id,
            actions.join("; ")
        ))
    }

    /// Timed reverts still to come: (deadline ms, action index).
    pub fn pending_timed_reverts(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.actions
            .iter()
            .enumerate()
            .filter(|(_, a)| a.state == ActionState::Applied)
            .filter_map(|(i, a)| a.revert_retry_at_ms.or(a.revert_at_ms).map(|at| (at, i)))
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}
