//! The unit half of `throttle_entity`: runtime resource limits set
//! through systemd. Until the systemd backend lands it fails plainly.

use serde_json::{json, Value};

use super::{not_available, ActionCtx, ActionError, Applied, Recovered};

pub async fn dry_run(ctx: &ActionCtx<'_>, _unit: &str) -> Result<Value, ActionError> {
    Ok(json!({"entity": ctx.params["entity"], "would_apply": ctx.params, "available": false}))
}

pub async fn apply(_ctx: &ActionCtx<'_>, _unit: &str) -> Result<Applied, ActionError> {
    Err(not_available("throttle_entity (unit)"))
}

pub async fn revert(
    _ctx: &ActionCtx<'_>,
    _unit: &str,
    _changes: &Value,
) -> Result<String, ActionError> {
    Err(not_available("throttle_entity (unit)"))
}

pub async fn recover(_ctx: &ActionCtx<'_>, _unit: &str) -> Result<Recovered, ActionError> {
    Ok(Recovered::DidNotTakeEffect(
        "no systemd backend on this build".into(),
    ))
}

pub async fn prepare(_ctx: &ActionCtx<'_>, _unit: &str) -> Result<Value, ActionError> {
    Err(not_available("throttle_entity (unit)"))
}
