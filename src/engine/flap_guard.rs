//! The flap limiter applied: at `SubmitAlert` (counting restarts already made
//! and those still queued) and again just before each restart, where it is
//! the backstop for alerts accepted at the same moment. A refusal notifies
//! the operator on the journal and the `OperatorNotice` signal.

use super::flap::{restarts_counted, Counting};
use super::state::EngineState;
use super::Engine;
use crate::config::Config;
use crate::error::{AgentError, ErrorName};
use crate::plan::{Plan, PlanSeed, Severity, Source};
use crate::time::now_ms;

impl Engine {
    /// Whether the flap limiter counts actions of this type.
    fn is_flap_limited(&self, kind: &str) -> bool {
        self.registry.get(kind).is_some_and(|h| h.flap_limited())
    }

    pub(super) fn has_flap_limited(&self, plan: &Plan) -> bool {
        plan.actions
            .iter()
            .any(|a| self.is_flap_limited(&a.seed.kind))
    }

    fn flap_refusal(&self, target: &str, counted: usize, config: &Config) -> Option<String> {
        let burst = config.restart.burst as usize;
        (counted >= burst).then(|| {
            format!(
                "{target} already has {counted} restart(s) made or queued within {} s (restart.burst = {burst}); refusing another until the window passes",
                config.restart.interval_secs
            )
        })
    }

    /// Refuses a new plan whose restarts would pass the limit, counting the
    /// plan's own earlier actions on the same unit too.
    pub(super) fn flap_check_seed(
        &self,
        state: &EngineState,
        seed: &PlanSeed,
        config: &Config,
    ) -> Result<(), AgentError> {
        let window_ms = config.restart.interval_secs.saturating_mul(1000);
        let now = now_ms();
        for (index, action) in seed.actions.iter().enumerate() {
            let flap_limited = self.is_flap_limited(&action.kind);
            let Some(target) = action.targets.first().filter(|_| flap_limited) else {
                continue;
            };
            let earlier_in_seed = seed.actions[..index]
                .iter()
                .filter(|a| a.kind == action.kind && a.targets.first() == Some(target))
                .count();
            let counted = earlier_in_seed
                + restarts_counted(
                    state.plans.values(),
                    &action.kind,
                    target,
                    now,
                    window_ms,
                    Counting::StartedAndQueued,
                    None,
                );
            if let Some(why) = self.flap_refusal(target, counted, config) {
                return Err(AgentError::at(
                    ErrorName::RateLimited,
                    &format!("actions[{index}].name"),
                    why,
                ));
            }
        }
        Ok(())
    }

    /// Just before a flap-limited action's first attempt: `Err` says why it
    /// may not run.
    pub(super) fn flap_check_action(
        &self,
        plan_id: &str,
        index: usize,
        kind: &str,
        target: &str,
        alert: (Source, Severity),
    ) -> Result<(), String> {
        let config = self.config();
        let window_ms = config.restart.interval_secs.saturating_mul(1000);
        let counted = {
            let inner = self.lock();
            restarts_counted(
                inner.state.plans.values(),
                kind,
                target,
                now_ms(),
                window_ms,
                Counting::Started,
                Some((plan_id, index)),
            )
        };
        match self.flap_refusal(target, counted, &config) {
            Some(why) => {
                let message = format!("RateLimited: {why}");
                self.notify_rate_limited(plan_id, alert, &message);
                Err(message)
            }
            None => Ok(()),
        }
    }

    pub(super) fn notify_rate_limited(
        &self,
        plan_id: &str,
        alert: (Source, Severity),
        message: &str,
    ) {
        let message = format!("flap limit reached: {message}");
        self.tell_operator(plan_id, alert, "flap limit", message);
    }
}
