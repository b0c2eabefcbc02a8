//! `isolate_socket {sid, seconds?}`: drop traffic of a socket id in the
//! agent's own nftables table `inet antibody`, as one set element with a
//! kernel timeout, so the isolation ends on time even if the agent is dead.
//!
//! The element steps here (`hold`, `let_go`, `find`, `preview`) are shared
//! with the address half of `throttle_entity`, which differs only in the
//! element it holds.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::net::{protected_address, protected_port, Sid};
use super::throttle_entity::MAX_SECONDS;
use super::{ActionCtx, ActionError, ActionHandler, Applied, Recovered, ValidateCtx, Validated};
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;
use crate::sys::nft::{owner, Claim, Element, FirewallError};
use crate::time::now_ms;

pub struct IsolateSocket;

const TABLE: &str = "inet antibody";

fn sid(ctx: &ActionCtx<'_>) -> Result<Sid, ActionError> {
    ctx.params["sid"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(ActionError::permanent)
}

fn seconds(ctx: &ActionCtx<'_>) -> u64 {
    ctx.params["seconds"]
        .as_u64()
        .unwrap_or(ctx.config.isolate.default_seconds)
}

/// A failed nft call (a busy netlink, a racing flush) may pass: retried.
fn retried(e: FirewallError) -> ActionError {
    ActionError::transient(e.to_string())
}

/// Puts `element` in force for `seconds` on behalf of this action.
pub(super) async fn hold(
    ctx: &ActionCtx<'_>,
    element: Element,
    seconds: u64,
    what: &str,
) -> Result<Applied, ActionError> {
    let until_ms = now_ms().saturating_add(seconds.saturating_mul(1000));
    let claim = Claim {
        owner: owner(ctx.plan_id, ctx.index),
        element,
        until_ms,
    };
    let granted = ctx.sys.firewall.claim(claim).await.map_err(retried)?;
    let longer = if granted > seconds {
        format!(" (the element stays {granted} s: another plan holds it longer)")
    } else {
        String::new()
    };
    Ok(Applied {
        summary: format!(
            "{what} for {seconds} s in {TABLE} set {}{longer}",
            element.set_name()
        ),
        changes: json!({"table": TABLE, "element": element.to_record(), "seconds": seconds, "kernel_timeout": granted}),
        revert_after_secs: Some(seconds),
    })
}

/// Ends this action's hold; the element goes unless another plan holds it.
pub(super) async fn let_go(
    ctx: &ActionCtx<'_>,
    element: Element,
    what: &str,
) -> Result<String, ActionError> {
    let owner = owner(ctx.plan_id, ctx.index);
    let kept = ctx.sys.firewall.release(&owner, element).await;
    let kept = kept.map_err(retried)?;
    Ok(match kept {
        None => format!(
            "{what} ended: element removed from {TABLE} set {}",
            element.set_name()
        ),
        Some(secs) => {
            format!("{what} ended for this plan; another plan keeps the element {secs} s more")
        }
    })
}

/// After a crash mid-apply: the kernel's set says whether it took effect.
pub(super) async fn find(
    ctx: &ActionCtx<'_>,
    element: Element,
    what: &str,
) -> Result<Recovered, ActionError> {
    let left = ctx
        .sys
        .firewall
        .expires_in(element)
        .await
        .map_err(retried)?;
    Ok(match left {
        Some(secs) => Recovered::TookEffect(Applied {
            summary: format!("{what}: the element is in {TABLE} with {secs} s left"),
            changes: json!({"table": TABLE, "element": element.to_record(), "seconds": secs, "kernel_timeout": secs}),
            revert_after_secs: Some(secs),
        }),
        None => Recovered::DidNotTakeEffect(format!(
            "{element} is not in {TABLE} set {}",
            element.set_name()
        )),
    })
}

/// The element and the exact batch `hold` would send now.
pub(super) async fn preview(
    ctx: &ActionCtx<'_>,
    element: Element,
    seconds: u64,
) -> Result<Value, ActionError> {
    let batch = ctx
        .sys
        .firewall
        .preview_claim(element, seconds)
        .await
        .map_err(retried)?;
    Ok(
        json!({"table": TABLE, "element": element.to_record(), "seconds": seconds, "nft_batch": batch}),
    )
}

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
        let mut change = preview(ctx, Element::isolate(sid(ctx)?), seconds(ctx)).await?;
        change["sid"] = ctx.params["sid"].clone();
        Ok(change)
    }

    async fn apply(&self, ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        let sid = sid(ctx)?;
        hold(
            ctx,
            Element::isolate(sid),
            seconds(ctx),
            &format!(
                "isolated {}",
                ctx.params["sid"].as_str().unwrap_or_default()
            ),
        )
        .await
    }

    async fn revert(&self, ctx: &ActionCtx<'_>, _changes: &Value) -> Result<String, ActionError> {
        let what = format!(
            "isolation of {}",
            ctx.params["sid"].as_str().unwrap_or_default()
        );
        let_go(ctx, Element::isolate(sid(ctx)?), &what).await
    }

    async fn recover(&self, ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        let what = format!(
            "isolation of {}",
            ctx.params["sid"].as_str().unwrap_or_default()
        );
        find(ctx, Element::isolate(sid(ctx)?), &what).await
    }
}
