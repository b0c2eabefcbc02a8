//! `restart_service {name}`: systemd `RestartUnit(name, "replace")` and wait
//! for its job. Not reversible: a restart cannot be undone.
//! This build validates and describes it; the systemd backend comes with the
//! systemd-actions issue, and until then `apply` fails plainly.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::unit_name::{normalize_unit_name, protected_reason};
use super::{
    not_available, ActionCtx, ActionError, ActionHandler, Applied, Recovered, ValidateCtx,
    Validated,
};
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;

pub struct RestartService;

/// Validates and normalizes a unit field, refusing protected units.
pub fn unit_param(
    params: &Fields<'_>,
    field: &str,
    given: &str,
    ctx: &ValidateCtx<'_>,
) -> Result<String, AgentError> {
    let unit = normalize_unit_name(given).map_err(|why| params.error(field, why))?;
    if let Some(why) = protected_reason(&unit, ctx.own_unit, &ctx.config.protect.units) {
        return Err(params.error_named(ErrorName::ProtectedTarget, field, why));
    }
    Ok(unit)
}

#[async_trait]
impl ActionHandler for RestartService {
    fn name(&self) -> &'static str {
        "restart_service"
    }

    fn reversible(&self) -> bool {
        false
    }

    fn validate(
        &self,
        params: &Fields<'_>,
        ctx: &ValidateCtx<'_>,
    ) -> Result<Validated, AgentError> {
        params.deny_unknown(&["name"])?;
        let unit = unit_param(params, "name", params.string("name")?, ctx)?;
        Ok(Validated {
            targets: vec![format!("unit:{unit}")],
            params: json!({"name": unit}),
        })
    }

    async fn dry_run(&self, ctx: &ActionCtx<'_>) -> Result<Value, ActionError> {
        Ok(json!({
            "unit": ctx.params["name"],
            "change": "RestartUnit(mode=replace), then wait for the job's JobRemoved result",
            "available": false,
        }))
    }

    async fn apply(&self, _ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        Err(not_available("restart_service"))
    }

    async fn revert(&self, _ctx: &ActionCtx<'_>, _changes: &Value) -> Result<String, ActionError> {
        Err(ActionError::permanent("a restart cannot be undone"))
    }

    async fn recover(&self, _ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        Ok(Recovered::DidNotTakeEffect(
            "no systemd backend on this build".into(),
        ))
    }
}
