//! `restart_service {name}`: systemd `RestartUnit(name, "replace")` and wait
//! for its job. Not reversible: a restart cannot be undone.
//! The unit's InvocationID and MainPID are recorded before (`prepare`) and
//! after; after a crash, a changed InvocationID tells that the restart
//! happened.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::unit_guard::{
    alias_refusal, protected_by_another_name, refusal, refusal_at_apply, UnitPolicy, UnitUse,
};
use super::unit_name::normalize_unit_name;
use super::{ActionCtx, ActionError, ActionHandler, Applied, Recovered, ValidateCtx, Validated};
use crate::config::Config;
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;
use crate::sys::systemd::{job_result_is_transient, SystemdError, UnitStatus};

pub struct RestartService;

/// The unit guards as the config and the agent's own unit set them.
fn unit_policy<'a>(config: &'a Config, own_unit: Option<&'a str>) -> UnitPolicy<'a> {
    UnitPolicy::new(
        own_unit,
        &config.protect.units,
        &config.restart.allowed_units,
    )
}

/// Validates and normalizes a unit field for `use_`, refusing what the
/// unit guards refuse, under its own name or an alias its unit files give
/// it.
pub fn unit_param(
    params: &Fields<'_>,
    field: &str,
    given: &str,
    use_: UnitUse,
    ctx: &ValidateCtx<'_>,
) -> Result<String, AgentError> {
    let unit = normalize_unit_name(given).map_err(|why| params.error(field, why))?;
    let policy = unit_policy(ctx.config, ctx.own_unit);
    let names = crate::sys::unit_files::names_on_disk(&unit);
    let why =
        refusal(&unit, use_, &policy).or_else(|| protected_by_another_name(&unit, &names, &policy));
    if let Some(why) = why {
        return Err(params.error_named(ErrorName::ProtectedTarget, field, why));
    }
    if let Some(own) = names.last().filter(|own| **own != unit) {
        return Err(params.error(field, alias_refusal(&unit, own)));
    }
    Ok(unit)
}

/// The guards again, at apply, on what systemd itself reports about the
/// unit (its names, file, `RefuseManual*`, slice): an alias made after
/// validation, or one no unit file shows, is caught here before anything
/// is changed.
pub async fn refuse_at_apply(ctx: &ActionCtx<'_>, unit: &str) -> Result<(), ActionError> {
    let facts = ctx
        .sys
        .systemd
        .unit_facts(unit)
        .await
        .map_err(action_error)?;
    let policy = unit_policy(ctx.config, ctx.own_unit);
    match refusal_at_apply(unit, &facts, &policy) {
        Some(why) => Err(ActionError::permanent(format!("refused at apply: {why}"))),
        None => Ok(()),
    }
}

#[async_trait]
impl ActionHandler for RestartService {
    fn name(&self) -> &'static str {
        "restart_service"
    }

    fn reversible(&self) -> bool {
        false
    }

    fn flap_limited(&self) -> bool {
        true
    }

    /// The unit's alias links are read from the unit directories.
    fn validates_on_disk(&self) -> bool {
        true
    }

    fn validate(
        &self,
        params: &Fields<'_>,
        ctx: &ValidateCtx<'_>,
    ) -> Result<Validated, AgentError> {
        params.deny_unknown(&["name"])?;
        let unit = unit_param(
            params,
            "name",
            params.string("name")?,
            UnitUse::Restart,
            ctx,
        )?;
        Ok(Validated {
            targets: vec![format!("unit:{unit}")],
            params: json!({"name": unit}),
        })
    }

    async fn dry_run(&self, ctx: &ActionCtx<'_>) -> Result<Value, ActionError> {
        let unit = unit_of(ctx);
        let (current, ()) = tokio::try_join!(unit_now(ctx, unit), refuse_at_apply(ctx, unit))?;
        Ok(json!({
            "unit": unit,
            "current": current,
            "change": "RestartUnit(mode=replace), then wait for that job's JobRemoved; success only if its result is \"done\" (if the bus loses the answer: only if the unit has a new invocation that did not fail)",
            "timeout_secs": ctx.config.restart.timeout_secs,
        }))
    }

    async fn prepare(&self, ctx: &ActionCtx<'_>) -> Result<Option<Value>, ActionError> {
        let unit = unit_of(ctx);
        let (before, ()) = tokio::try_join!(unit_now(ctx, unit), refuse_at_apply(ctx, unit))?;
        Ok(Some(json!(before)))
    }

    async fn apply(&self, ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        let unit = unit_of(ctx);
        let timeout = std::time::Duration::from_secs(ctx.config.restart.timeout_secs);
        let job = match ctx.sys.systemd.restart_unit(unit, timeout).await {
            Err(SystemdError::JobLost(why)) => return settle_unheard_job(ctx, unit, why).await,
            other => other.map_err(action_error)?,
        };
        if job.result != "done" {
            let message = format!(
                "systemd job {} restarting {unit} ended with result \"{}\"",
                job.job_id, job.result
            );
            return Err(if job_result_is_transient(&job.result) {
                ActionError::transient(message)
            } else {
                ActionError::permanent(message)
            });
        }
        let before = ctx.prepared_as::<UnitStatus>();
        let after = unit_now(ctx, unit).await?;
        Ok(Applied {
            summary: format!(
                "restarted {unit}: job {} done; {}",
                job.job_id,
                describe_change(before.as_ref(), &after)
            ),
            changes: json!({"unit": unit, "job_id": job.job_id, "result": job.result,
                            "before": before, "after": after}),
            revert_after_secs: None,
        })
    }

    async fn revert(&self, _ctx: &ActionCtx<'_>, _changes: &Value) -> Result<String, ActionError> {
        Err(ActionError::permanent("a restart cannot be undone"))
    }

    async fn recover(&self, ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        let unit = unit_of(ctx);
        let Some(before) = ctx.prepared_as::<UnitStatus>() else {
            return Ok(Recovered::DidNotTakeEffect(format!(
                "the agent stopped before asking systemd to restart {unit}"
            )));
        };
        let now = unit_now(ctx, unit).await?;
        if was_restarted(&before, &now) {
            Ok(Recovered::TookEffect(Applied {
                summary: format!(
                    "{unit} was restarted before the agent stopped: {}",
                    describe_change(Some(&before), &now)
                ),
                changes: json!({"unit": unit, "before": before, "after": now}),
                revert_after_secs: None,
            }))
        } else {
            Ok(Recovered::DidNotTakeEffect(format!(
                "{unit} still has InvocationID {}: the restart did not happen",
                before.invocation_id
            )))
        }
    }
}

/// A new invocation since `before`: systemd started the unit again.
fn was_restarted(before: &UnitStatus, now: &UnitStatus) -> bool {
    now.invocation_id != before.invocation_id && !now.invocation_id.is_empty()
}

/// The restart's answer was lost with the bus: as in `recover`, the unit's
/// InvocationID tells whether it was restarted. A new invocation that did
/// not fail is success; otherwise the attempt failed and may be retried.
async fn settle_unheard_job(
    ctx: &ActionCtx<'_>,
    unit: &str,
    why: String,
) -> Result<Applied, ActionError> {
    let before = ctx.prepared_as::<UnitStatus>();
    let now = unit_now(ctx, unit).await?;
    let change = describe_change(before.as_ref(), &now);
    let restarted = before.as_ref().is_some_and(|b| was_restarted(b, &now));
    // As for a heard `done`, the restart is what counts, not whether the
    // unit is still running (a oneshot unit has already ended).
    if restarted && now.active_state != "failed" {
        return Ok(Applied {
            summary: format!("restarted {unit} ({why}); {change}"),
            changes: json!({"unit": unit, "result": "unheard", "before": before, "after": now}),
            revert_after_secs: None,
        });
    }
    Err(ActionError::transient(format!(
        "{why}, and {unit} has no new invocation that did not fail: {change}"
    )))
}

async fn unit_now(ctx: &ActionCtx<'_>, unit: &str) -> Result<UnitStatus, ActionError> {
    ctx.sys
        .systemd
        .unit_status(unit)
        .await
        .map_err(action_error)
}

fn unit_of<'a>(ctx: &ActionCtx<'a>) -> &'a str {
    ctx.params["name"].as_str().unwrap_or_default()
}

fn describe_change(before: Option<&UnitStatus>, after: &UnitStatus) -> String {
    let pid = |s: &UnitStatus| s.main_pid.map(|p| p.to_string()).unwrap_or("-".into());
    match before {
        Some(b) => format!(
            "InvocationID {} -> {}, MainPID {} -> {}, now {}/{}",
            b.invocation_id,
            after.invocation_id,
            pid(b),
            pid(after),
            after.active_state,
            after.sub_state
        ),
        None => format!(
            "InvocationID {}, MainPID {}, now {}/{}",
            after.invocation_id,
            pid(after),
            after.active_state,
            after.sub_state
        ),
    }
}

/// systemd errors as action failures: an unreachable bus may come back;
/// a missing unit, a refusal or a job that outlived its timeout will not be
/// mended by asking again.
pub fn action_error(e: SystemdError) -> ActionError {
    match e {
        SystemdError::Unreachable(m) | SystemdError::JobLost(m) => ActionError::transient(m),
        SystemdError::NoSuchUnit(m) | SystemdError::Refused(m) | SystemdError::Timeout(m) => {
            ActionError::permanent(m)
        }
    }
}
