//! Carrying out one plan, step by step, as `plan::next_step` decides. Every
//! step is recorded durably before the next one starts, so a crash at any
//! point leaves a ledger from which the same loop can resume.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::backoff::{retry_delay_ms, revert_retry_ms};
use super::Engine;
use crate::actions::{ActionCtx, ActionHandler, Applied, Recovered, ValidateCtx};
use crate::events::AgentEvent;
use crate::plan::fields::Fields;
use crate::plan::{next_step, ActionState, Event, RevertReason, Severity, Source, Step};
use crate::time::now_ms;

/// What an action step needs from its plan, copied out of the lock.
#[derive(Clone)]
struct ActionJob {
    kind: String,
    params: Value,
    changes: Option<Value>,
    prepared: Option<Value>,
    targets: Vec<String>,
    state: ActionState,
    attempts: u32,
    revert_attempts: u32,
    timed_revert_failures: u32,
    revert_at_ms: Option<u64>,
    source: Source,
    severity: Severity,
    description: String,
}

impl Engine {
    /// The plan's next step, as if `carried` events were already folded in.
    fn plan_step(&self, plan_id: &str, carried: &[Event]) -> Option<Step> {
        let inner = self.lock();
        let plan = inner.state.plans.get(plan_id)?;
        if carried.is_empty() {
            return Some(next_step(plan));
        }
        let mut preview = plan.clone();
        let now = now_ms();
        for event in carried {
            preview.apply_event(event, now);
        }
        Some(next_step(&preview))
    }

    fn action_job(&self, plan_id: &str, index: usize) -> Option<ActionJob> {
        let inner = self.lock();
        let plan = inner.state.plans.get(plan_id)?;
        let action = plan.actions.get(index)?;
        Some(ActionJob {
            kind: action.seed.kind.clone(),
            params: action.seed.params.clone(),
            changes: action.changes.clone(),
            prepared: action.prepared.clone(),
            targets: action.seed.targets.clone(),
            state: action.state,
            attempts: action.attempts,
            revert_attempts: action.revert_attempts,
            timed_revert_failures: action.timed_revert_failures,
            revert_at_ms: action.revert_at_ms,
            source: plan.source,
            severity: plan.severity,
            description: plan.description.clone(),
        })
    }

    /// Announces a plan's new status and counts it under the plan's source.
    fn plan_status_changed(&self, plan_id: &str, status: &str) {
        let (source, owes_callback) = self
            .lock()
            .state
            .plans
            .get(plan_id)
            .map_or(("unknown", false), |plan| {
                (plan.source.as_str(), plan.callback_pending())
            });
        self.counters.plan(source, status);
        self.emit(AgentEvent::PlanStatusChanged {
            plan_id: plan_id.to_string(),
            status: status.to_string(),
        });
        if owes_callback {
            self.callback_wake.notify_one();
        }
    }

    fn action_finished(&self, plan_id: &str, index: usize, kind: &str, outcome: &str) {
        self.counters.action(kind, outcome);
        self.emit(AgentEvent::ActionFinished {
            plan_id: plan_id.to_string(),
            index: index as u32,
            kind: kind.to_string(),
            outcome: outcome.to_string(),
        });
        self.emit(AgentEvent::CountersChanged);
    }
}

fn ctx<'a>(
    engine: &'a Engine,
    config: &'a crate::config::Config,
    plan_id: &'a str,
    index: usize,
    job: &'a ActionJob,
) -> ActionCtx<'a> {
    ActionCtx {
        plan_id,
        source: job.source,
        severity: job.severity,
        description: &job.description,
        index,
        params: &job.params,
        config,
        sys: &engine.sys,
        own_unit: engine.own_unit.as_deref(),
        prepared: job.prepared.as_ref(),
    }
}

/// Records that gate no change of the system wait to be written with the
/// next record, and share its fsync: `plan_started` rides with the first
/// `action_started`, and the `action_started` of an action that needs no
/// write-ahead ([`ActionHandler::write_ahead`]) rides with its outcome.
#[derive(Default)]
struct Carry(Vec<Event>);

impl Carry {
    async fn record(&mut self, engine: &Engine, plan_id: &str, event: Event) {
        self.record_all(engine, plan_id, vec![event]).await;
    }

    /// The carried events, then `new`, in one write.
    async fn record_all(&mut self, engine: &Engine, plan_id: &str, new: Vec<Event>) {
        let mut events = std::mem::take(&mut self.0);
        let starts_plan = events.iter().any(|e| matches!(e, Event::PlanStarted {}));
        events.extend(new);
        engine.record_all(plan_id, events).await;
        if starts_plan {
            engine.plan_status_changed(plan_id, "in_progress");
        }
    }

    async fn flush(&mut self, engine: &Engine, plan_id: &str) {
        if let Some(last) = self.0.pop() {
            self.record(engine, plan_id, last).await;
        }
    }
}

pub(super) async fn run_plan(engine: &Arc<Engine>, plan_id: &str) {
    let mut carry = Carry::default();
    loop {
        // On stop the plan is left as the ledger has it; the next start resumes it.
        if engine.is_stopping() {
            return;
        }
        let Some(step) = engine.plan_step(plan_id, &carry.0) else {
            return;
        };
        if !matches!(
            step,
            Step::Start | Step::Apply { .. } | Step::Simulate { .. }
        ) {
            carry.flush(engine, plan_id).await;
        }
        match step {
            Step::Start => carry.0.push(Event::PlanStarted {}),
            Step::Apply { index, attempt } => {
                apply_action(engine, plan_id, index, attempt, &mut carry).await
            }
            Step::Recover { index } => recover_action(engine, plan_id, index).await,
            Step::Revert { index, reason } => revert_action(engine, plan_id, index, reason).await,
            Step::Simulate { index } => simulate_action(engine, plan_id, index, &mut carry).await,
            Step::Skip { index } => {
                let reason = "an earlier action failed".to_string();
                engine
                    .record(plan_id, Event::ActionSkipped { index, reason })
                    .await;
                if let Some(job) = engine.action_job(plan_id, index) {
                    engine.action_finished(plan_id, index, &job.kind, "skipped");
                }
            }
            Step::Finish(status) => {
                engine.record(plan_id, Event::PlanFinished { status }).await;
                engine.plan_status_changed(plan_id, status.as_str());
                return;
            }
            Step::FinishRollback => {
                engine.record(plan_id, Event::RollbackFinished {}).await;
                return;
            }
            Step::Done => return,
        }
    }
}

/// A simulated plan's action: the guards are checked again as for a real
/// run, then its dry run (which reads the system and changes nothing) is
/// recorded as what it would do. A refusal or a dry run that fails fails
/// the action, as the real run would, so the simulated plan ends as the
/// real one would (and a failed plan is no offence for escalation).
async fn simulate_action(engine: &Arc<Engine>, plan_id: &str, index: usize, carry: &mut Carry) {
    let Some(job) = engine.action_job(plan_id, index) else {
        return;
    };
    let config = engine.config();
    let Some(handler) = engine.registry.get(&job.kind).cloned() else {
        let error = format!("no handler for action type {:?}", job.kind);
        return fail_action(engine, carry, plan_id, index, &job.kind, 1, error).await;
    };
    if let Err(error) = recheck_guards(engine, handler.clone(), index, &job).await {
        return fail_action(engine, carry, plan_id, index, &job.kind, 1, error).await;
    }
    match handler
        .dry_run(&ctx(engine, &config, plan_id, index, &job))
        .await
    {
        Ok(would) => {
            carry
                .record(engine, plan_id, Event::ActionSimulated { index, would })
                .await;
            engine.action_finished(plan_id, index, &job.kind, "simulated");
        }
        Err(e) => {
            let error = format!("simulated: it would fail: {}", e.message);
            fail_action(engine, carry, plan_id, index, &job.kind, 1, error).await
        }
    }
}

async fn fail_action(
    engine: &Engine,
    carry: &mut Carry,
    plan_id: &str,
    index: usize,
    kind: &str,
    attempt: u32,
    error: String,
) {
    let failed = Event::ActionFailed {
        index,
        attempt,
        error,
    };
    carry.record(engine, plan_id, failed).await;
    engine.action_finished(plan_id, index, kind, "failed");
}

/// Re-checks the guards under the config in force now (DESIGN.md §3:
/// enforced at validation and again at apply), on a blocking thread when
/// they look at files.
async fn recheck_guards(
    engine: &Engine,
    handler: Arc<dyn ActionHandler>,
    index: usize,
    job: &ActionJob,
) -> Result<(), String> {
    let config = engine.config();
    let own_unit = engine.own_unit.clone();
    let params = job.params.clone();
    let on_disk = handler.validates_on_disk();
    let check = move || {
        let empty = serde_json::Map::new();
        let fields = Fields {
            path: format!("actions[{index}]"),
            map: params.as_object().unwrap_or(&empty),
        };
        let vctx = ValidateCtx {
            config: &config,
            own_unit: own_unit.as_deref(),
        };
        handler
            .validate(&fields, &vctx)
            .map(|_| ())
            .map_err(|e| format!("refused at apply: {}", e.message))
    };
    if !on_disk {
        return check();
    }
    tokio::task::spawn_blocking(check)
        .await
        .unwrap_or_else(|e| Err(format!("refused at apply: the guards' task failed: {e}")))
}

async fn apply_action(
    engine: &Arc<Engine>,
    plan_id: &str,
    index: usize,
    attempt: u32,
    carry: &mut Carry,
) {
    let Some(job) = engine.action_job(plan_id, index) else {
        return;
    };
    let config = engine.config();
    let Some(handler) = engine.registry.get(&job.kind).cloned() else {
        let error = format!("no handler for action type {:?}", job.kind);
        return fail_action(engine, carry, plan_id, index, &job.kind, attempt, error).await;
    };
    let max_attempts = config.retry.max_attempts;
    if attempt > max_attempts {
        let error = format!("gave up: all {max_attempts} attempt(s) used (the last was interrupted by an agent restart)");
        return fail_action(engine, carry, plan_id, index, &job.kind, attempt - 1, error).await;
    }
    if let Err(error) = recheck_guards(engine, handler.clone(), index, &job).await {
        return fail_action(engine, carry, plan_id, index, &job.kind, attempt, error).await;
    }
    // Retries are one restart: the limiter counts actions, at their first attempt.
    if let Some(target) = job
        .targets
        .first()
        .filter(|_| handler.flap_limited() && attempt == 1)
    {
        let alert = (job.source, job.severity);
        if let Err(error) = engine.flap_check_action(plan_id, index, &job.kind, target, alert) {
            return fail_action(engine, carry, plan_id, index, &job.kind, attempt, error).await;
        }
    }
    let step = Attempt {
        plan_id,
        index,
        attempt,
    };
    let result = prepare_and_apply(engine, handler.as_ref(), &step, job.clone(), carry).await;
    match result {
        Ok(applied) => record_applied(engine, &step, &job.kind, applied, carry).await,
        Err(e) if e.transient && attempt < max_attempts => {
            let retry_in_ms = retry_delay_ms(&config.retry, attempt, fastrand::f64());
            let failed = Event::ActionAttemptFailed {
                index,
                attempt,
                error: e.message,
                retry_in_ms,
            };
            carry.record(engine, plan_id, failed).await;
            tokio::time::sleep(Duration::from_millis(retry_in_ms)).await;
        }
        Err(e) => fail_action(engine, carry, plan_id, index, &job.kind, attempt, e.message).await,
    }
}

/// One attempt of one action.
struct Attempt<'a> {
    plan_id: &'a str,
    index: usize,
    attempt: u32,
}

/// `prepare` (a read), then the durable `action_started` record carrying
/// what it read, then `apply`: one fsync between the decision and the change.
async fn prepare_and_apply(
    engine: &Arc<Engine>,
    handler: &dyn ActionHandler,
    step: &Attempt<'_>,
    mut job: ActionJob,
    carry: &mut Carry,
) -> Result<Applied, crate::actions::ActionError> {
    let Attempt {
        plan_id,
        index,
        attempt,
    } = *step;
    let config = engine.config();
    let prepared = handler
        .prepare(&ctx(engine, &config, plan_id, index, &job))
        .await?;
    let started = Event::ActionStarted {
        index,
        attempt,
        prepared: prepared.clone(),
    };
    if handler.write_ahead(&job.params) {
        carry.record(engine, plan_id, started).await;
    } else {
        carry.0.push(started);
    }
    job.prepared = prepared;
    handler
        .apply(&ctx(engine, &config, plan_id, index, &job))
        .await
}

/// Records an applied action (with whatever was carried); when it was the
/// plan's last step, the plan's end goes in the same write.
async fn record_applied(
    engine: &Arc<Engine>,
    step: &Attempt<'_>,
    kind: &str,
    applied: Applied,
    carry: &mut Carry,
) {
    let Attempt {
        plan_id,
        index,
        attempt,
    } = *step;
    let revert_at_ms = applied
        .revert_after_secs
        .map(|secs| now_ms().saturating_add(secs.saturating_mul(1000)));
    let event = Event::ActionApplied {
        index,
        attempt,
        summary: applied.summary,
        changes: engine.changes_for_record(kind, applied.changes),
        revert_at_ms,
    };
    carry.0.push(event);
    let finished = match engine.plan_step(plan_id, &carry.0) {
        Some(Step::Finish(status)) => Some(status),
        _ => None,
    };
    let end = finished.map(|status| Event::PlanFinished { status });
    carry
        .record_all(engine, plan_id, end.into_iter().collect())
        .await;
    if let Some(at) = revert_at_ms {
        engine
            .lock()
            .state
            .defer_timer(at, plan_id.to_string(), index);
        engine.wake.notify_one();
    }
    engine.action_finished(plan_id, index, kind, "applied");
    if let Some(status) = finished {
        engine.plan_status_changed(plan_id, status.as_str());
    }
}

pub(super) async fn recover_action(engine: &Arc<Engine>, plan_id: &str, index: usize) {
    let Some(job) = engine.action_job(plan_id, index) else {
        return;
    };
    let config = engine.config();
    let Some(handler) = engine.registry.get(&job.kind).cloned() else {
        return;
    };
    let outcome = handler
        .recover(&ctx(engine, &config, plan_id, index, &job))
        .await;
    match outcome {
        Ok(Recovered::TookEffect(applied)) => {
            let detail = applied.summary.clone();
            engine
                .record(
                    plan_id,
                    Event::ActionRecovered {
                        index,
                        took_effect: true,
                        detail,
                    },
                )
                .await;
            let step = Attempt {
                plan_id,
                index,
                attempt: job.attempts,
            };
            record_applied(engine, &step, &job.kind, applied, &mut Carry::default()).await;
        }
        Ok(Recovered::DidNotTakeEffect(detail)) => {
            not_taken_effect(engine, plan_id, index, detail).await
        }
        Err(e) => {
            let detail = format!(
                "could not tell ({}); the action will be tried again",
                e.message
            );
            not_taken_effect(engine, plan_id, index, detail).await;
        }
    }
}

/// The interrupted attempt left nothing behind: the next step tries again.
async fn not_taken_effect(engine: &Engine, plan_id: &str, index: usize, detail: String) {
    engine
        .record(
            plan_id,
            Event::ActionRecovered {
                index,
                took_effect: false,
                detail,
            },
        )
        .await;
}

async fn revert_action(engine: &Arc<Engine>, plan_id: &str, index: usize, reason: RevertReason) {
    let Some(job) = engine.action_job(plan_id, index) else {
        return;
    };
    let config = engine.config();
    let Some(handler) = engine.registry.get(&job.kind).cloned() else {
        return;
    };
    let changes = job.changes.clone().unwrap_or(Value::Null);
    let changes = engine.changes_for_revert(plan_id, index, changes);
    let result = handler
        .revert(&ctx(engine, &config, plan_id, index, &job), &changes)
        .await;
    match result {
        Ok(summary) => {
            engine
                .record(
                    plan_id,
                    Event::ActionReverted {
                        index,
                        reason,
                        summary,
                    },
                )
                .await;
            engine.action_finished(plan_id, index, &job.kind, "reverted");
        }
        Err(e) => revert_failed(engine, plan_id, index, &job, reason, e).await,
    }
}

/// Records a failed revert and, when it may pass, when it is tried again:
/// a timed revert by its timer (so it never holds its plan), a rollback's
/// revert here, after the back-off. The operator is told once the revert
/// has failed `retry.max_attempts` times or for good.
async fn revert_failed(
    engine: &Arc<Engine>,
    plan_id: &str,
    index: usize,
    job: &ActionJob,
    reason: RevertReason,
    e: crate::actions::ActionError,
) {
    let retry = engine.config().retry.clone();
    let timed = reason == RevertReason::Expired;
    let failures = 1 + match timed {
        true => job.timed_revert_failures,
        false => job.revert_attempts,
    };
    let retry_in_ms = revert_retry_ms(&retry, e.transient, timed, failures, fastrand::f64());
    let event = Event::ActionRevertFailed {
        index,
        reason,
        error: e.message.clone(),
        retry_in_ms,
    };
    engine.record(plan_id, event).await;
    engine.emit(AgentEvent::CountersChanged);
    if retry_in_ms.is_none() || failures == retry.max_attempts.max(1) {
        let next = match retry_in_ms {
            Some(_) => "the agent keeps trying, with back-off up to about 5 minutes".to_string(),
            None => format!("it will not be tried again until `antibodyctl rollback {plan_id}`"),
        };
        let message = format!(
            "the change of action {index} ({}) is still in force: its revert failed {failures} time(s), last with: {}; {next}",
            job.kind, e.message
        );
        let alert = (job.source, job.severity);
        engine.tell_operator(plan_id, alert, "revert failed", message);
    }
    match retry_in_ms {
        Some(ms) if timed => {
            engine.lock().state.defer_timer(
                now_ms().saturating_add(ms),
                plan_id.to_string(),
                index,
            );
            engine.wake.notify_one();
        }
        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        None => {}
    }
}

/// A timed action's time ran out: put things back, once.
pub(super) async fn timed_revert(engine: &Arc<Engine>, plan_id: &str, index: usize) {
    {
        let mut inner = engine.lock();
        let busy = inner.state.busy_targets();
        let shared = inner
            .state
            .plans
            .get(plan_id)
            .is_some_and(|p| p.targets().any(|t| busy.contains(t)));
        if inner.state.running.contains(plan_id) || shared {
            // Its plan is still running (or rolling back), or another plan
            // on the same target is (two ends of one unit's throttles must
            // not cross): look again shortly.
            inner
                .state
                .defer_timer(now_ms() + 1000, plan_id.to_string(), index);
            return;
        }
        // Held like a running plan, so nothing else steps it meanwhile and
        // a stop waits for it.
        inner.state.running.insert(plan_id.to_string());
    }
    if let Some(job) = engine.action_job(plan_id, index) {
        if job.state == ActionState::Applied && job.revert_at_ms.is_some() {
            revert_action(engine, plan_id, index, RevertReason::Expired).await;
        }
    }
    engine.lock().state.finish_running(plan_id);
    engine.wake.notify_one();
}
