//! A bare alert (no `actions`) gets the actions of the first playbook that
//! matches it (`crate::playbooks`), filled in from the alert and then
//! validated by their handlers exactly as if the alert had carried them:
//! the guards (protected units, addresses, paths) apply unchanged.
//!
//! Escalation counts repeats from the plans the engine holds (pending,
//! running, and the newest `state.keep_finished_plans` finished ones),
//! which a restart rebuilds from the checkpoint and the ledger, plus the
//! offences of plans archived out of memory (`offences.rs`, carried by the
//! checkpoint): neither archiving nor a restart forgets an offender. Plans
//! that failed or were rolled back are no offence.
//! Two alerts about one offender submitted at the same instant may both
//! count as its first: the count is taken before the plan is admitted.

use std::sync::Arc;

use super::offences::is_offence;
use super::Engine;
use crate::config::Config;
use crate::error::{AgentError, ErrorName};
use crate::plan::alert::{Alert, RawAction};
use crate::plan::model::PlaybookUse;
use crate::plan::ActionSeed;
use crate::playbooks::{self, AlertFacts, Playbook};
use crate::time::now_ms;

impl Engine {
    /// The chosen playbook's actions for `alert` (which gets them as its
    /// own), validated, and which playbook and repeat they came from.
    pub(super) async fn actions_from_playbook(
        &self,
        alert: &mut Alert,
        config: &Arc<Config>,
    ) -> Result<(Vec<ActionSeed>, PlaybookUse), AgentError> {
        let facts = facts_of(alert);
        let playbook = playbooks::choose(&config.loaded_playbooks, &facts)
            .map_err(|reasons| {
                let why: Vec<String> = reasons
                    .iter()
                    .map(|(name, why)| format!("{name}: {why}"))
                    .collect();
                let why = match why.is_empty() {
                    true => " (no playbook is loaded)".to_string(),
                    false => format!(" ({})", why.join("; ")),
                };
                AgentError::at(
                    ErrorName::InvalidAlert,
                    "actions",
                    format!(
                        "no actions and no playbook matches {}{why}",
                        facts.summary()
                    ),
                )
            })?
            .clone();
        let first = self
            .fill_and_validate(alert, config, &playbook, &facts, 0)
            .await?;
        let repeat = match &playbook.escalate {
            Some(e) => self.repeats(&playbook.name, &first, e.window_secs),
            None => 0,
        };
        let actions = if repeat == 0 {
            first
        } else {
            self.fill_and_validate(alert, config, &playbook, &facts, repeat)
                .await?
        };
        Ok((
            actions,
            PlaybookUse {
                name: playbook.name.clone(),
                file: playbook.file.clone(),
                repeat,
                simulate: playbook.simulate,
            },
        ))
    }

    async fn fill_and_validate(
        &self,
        alert: &mut Alert,
        config: &Arc<Config>,
        playbook: &Playbook,
        facts: &AlertFacts,
        repeat: u32,
    ) -> Result<Vec<ActionSeed>, AgentError> {
        let jitter = playbook
            .escalate
            .as_ref()
            .filter(|e| e.jitter_secs > 0)
            .map_or(0, |e| random_below(e.jitter_secs + 1));
        let filled = playbooks::fill(playbook, facts, repeat, jitter)
            .map_err(|e| AgentError::at(ErrorName::InvalidAlert, "", e))?;
        alert.actions = filled
            .actions
            .into_iter()
            .enumerate()
            .map(|(index, value)| RawAction { index, value })
            .collect();
        self.validate_actions(alert, config).await.map_err(|e| {
            AgentError::new(
                e.name,
                format!(
                    "playbook {} ({}): {}",
                    playbook.name, playbook.file, e.message
                ),
            )
        })
    }

    /// Earlier plans of playbook `name` within `window_secs` sharing a
    /// target with `actions`.
    fn repeats(&self, name: &str, actions: &[ActionSeed], window_secs: u64) -> u32 {
        let since = now_ms().saturating_sub(window_secs.saturating_mul(1000));
        let targets: Vec<&str> = actions
            .iter()
            .flat_map(|a| a.targets.iter().map(String::as_str))
            .collect();
        let inner = self.lock();
        let in_memory = inner
            .state
            .plans
            .values()
            .filter(|plan| plan.playbook.as_ref().is_some_and(|p| p.name == name))
            .filter(|plan| plan.created_ms >= since)
            .filter(|plan| is_offence(plan))
            .filter(|plan| plan.targets().any(|target| targets.contains(&target)))
            .count();
        let archived = inner.state.offences.count(name, since, &targets);
        u32::try_from(in_memory + archived).unwrap_or(u32::MAX)
    }
}

/// What playbooks match on and fill in.
pub fn facts_of(alert: &Alert) -> AlertFacts {
    let context = |key: &str| {
        alert
            .context
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    AlertFacts {
        source: alert.source,
        severity: alert.severity,
        kind: alert.kind.clone(),
        entity: context("entity"),
        alert_id: context("alert_id"),
    }
}

/// A random number below `bound` (> 0), for the escalation's jitter: the
/// 122 random bits of a version-4 UUID (from the kernel's getrandom).
fn random_below(bound: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(bound)) as u64
}
