//! `isolate_socket {sid, seconds?}`: drop traffic of a socket id in the
//! agent's own nftables table, as a set element with a kernel timeout.
//! This build validates and describes it; the nftables backend comes with its
//! issue, and until then `apply` fails plainly.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::net::{protected_address, protected_port, Sid};
use super::throttle_entity::MAX_SECONDS;
use super::{
    not_available, ActionCtx, ActionError, ActionHandler, Applied, Recovered, ValidateCtx,
    Validated,
};
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;

pub struct IsolateSocket;

#[async_trait]
impl ActionHandler for IsolateSocket {
    fn name(&self) -> &'static str {
        "isolate_socket"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn validate(
        &self,
        params: &Fields<'_>,
        ctx: &ValidateCtx<'_>,
    ) -> Result<Validated, AgentError> {
        params.deny_unknown(&["sid", "seconds"])?;
        let text = params.string("sid")?;
        let sid: Sid = text.parse().map_err(|why| params.error("sid", why))?;
        let protect = &ctx.config.protect;
        let why = sid
            .address()
            .and_then(|a| protected_address(a, &protect.addresses))
            .or_else(|| sid.port().and_then(|p| protected_port(p, &protect.ports)));
        if let Some(why) = why {
            return Err(params.error_named(ErrorName::ProtectedTarget, "sid", why));
        }
        let seconds = params
            .opt_integer("seconds", 1, MAX_SECONDS)?
            .unwrap_or(ctx.config.isolate.default_seconds);
        Ok(Validated {
            targets: vec![sid.target()],
            params: json!({"sid": text, "seconds": seconds}),
        })
    }

    async fn dry_run(&self, ctx: &ActionCtx<'_>) -> Result<Value, ActionError> {
        Ok(
            json!({"sid": ctx.params["sid"], "seconds": ctx.params["seconds"], "table": "inet antibody", "available": false}),
        )
    }

    async fn apply(&self, _ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        Err(not_available("isolate_socket"))
    }

    async fn revert(&self, _ctx: &ActionCtx<'_>, _changes: &Value) -> Result<String, ActionError> {
        Err(not_available("isolate_socket"))
    }

    async fn recover(&self, _ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        Ok(Recovered::DidNotTakeEffect(
            "no backend on this build".into(),
        ))
    }
}
