//! The address half of `throttle_entity`: an nftables rate-limit set element
//! with a kernel timeout. Until the nftables backend lands it fails plainly.

use serde_json::{json, Value};

use super::{not_available, ActionCtx, ActionError, Applied, Recovered};

pub async fn dry_run(ctx: &ActionCtx<'_>, _addr: &str) -> Result<Value, ActionError> {
    Ok(json!({"entity": ctx.params["entity"], "would_apply": ctx.params, "available": false}))
}

pub async fn apply(_ctx: &ActionCtx<'_>, _addr: &str) -> Result<Applied, ActionError> {
    Err(not_available("throttle_entity (address)"))
}

pub async fn revert(
    _ctx: &ActionCtx<'_>,
    _addr: &str,
    _changes: &Value,
) -> Result<String, ActionError> {
    Err(not_available("throttle_entity (address)"))
}

pub async fn recover(_ctx: &ActionCtx<'_>, _addr: &str) -> Result<Recovered, ActionError> {
    Ok(Recovered::DidNotTakeEffect(
        "no nftables backend on this build".into(),
    ))
}
