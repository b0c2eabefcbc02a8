//! What a playbook's escalation needs of plans archived out of memory: each
//! earlier offence (a plan of a playbook that neither failed nor was rolled
//! back), by playbook, target and time. Repeat offenders are counted from
//! the plans in memory plus these, so archiving (past
//! `state.keep_finished_plans`) does not make an offender new again, and a
//! checkpoint carries them across restarts.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::plan::{Plan, PlanStatus};
use crate::playbooks::escalate::MAX_WINDOW_SECS;

/// At most this many are kept (about 150 bytes each): a flood of bare
/// alerts would otherwise hold memory for the whole escalation window.
/// Past it the oldest go first.
pub const MAX_ARCHIVED_OFFENCES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedOffence {
    pub playbook: String,
    pub plan_id: String,
    pub created_ms: u64,
    pub targets: Vec<String>,
}

/// Whether `plan` counts as an offence for its playbook's escalation: a
/// plan that failed, or that an operator rolled back (a false positive),
/// does not.
pub fn is_offence(plan: &Plan) -> bool {
    plan.playbook.is_some() && plan.status != PlanStatus::Failed && plan.rollback.is_none()
}

#[derive(Debug, Default)]
pub struct Offences(VecDeque<ArchivedOffence>);

impl Offences {
    pub fn from_checkpoint(kept: Vec<ArchivedOffence>) -> Offences {
        Offences(kept.into())
    }

    /// Notes an offence whose plan leaves memory.
    pub fn archive(&mut self, plan: &Plan) {
        let Some(playbook) = plan.playbook.as_ref().filter(|_| is_offence(plan)) else {
            return;
        };
        if self.0.len() >= MAX_ARCHIVED_OFFENCES {
            self.0.pop_front();
        }
        self.0.push_back(ArchivedOffence {
            playbook: playbook.name.clone(),
            plan_id: plan.id.clone(),
            created_ms: plan.created_ms,
            targets: plan.targets().map(str::to_string).collect(),
        });
    }

    /// Forgets a plan taken back into memory (to be rolled back, say):
    /// from then on it is counted, or not, where it is.
    pub fn readmit(&mut self, plan_id: &str) {
        self.0.retain(|o| o.plan_id != plan_id);
    }

    /// Forgets offences older than the longest escalation window.
    pub fn prune(&mut self, now_ms: u64) {
        let since = now_ms.saturating_sub(MAX_WINDOW_SECS * 1000);
        self.0.retain(|o| o.created_ms >= since);
    }

    /// Archived offences of `playbook` since `since_ms` sharing a target
    /// with `targets`.
    pub fn count(&self, playbook: &str, since_ms: u64, targets: &[&str]) -> usize {
        self.0
            .iter()
            .filter(|o| o.playbook == playbook && o.created_ms >= since_ms)
            .filter(|o| o.targets.iter().any(|t| targets.contains(&t.as_str())))
            .count()
    }

    /// For a checkpoint.
    pub fn to_vec(&self) -> Vec<ArchivedOffence> {
        self.0.iter().cloned().collect()
    }
}
