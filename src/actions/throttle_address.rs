//! The address half of `throttle_entity`: packets from the address above
//! `rate_per_sec` (default `throttle.default_rate_per_sec`) are dropped for
//! `seconds`, through one element with a kernel timeout in the rate-class
//! set of `inet antibody` (see `sys::nft::element::RATE_CLASSES`: the rate
//! enforced is the largest class not above the one asked for).

use std::net::IpAddr;

use serde_json::Value;

use super::isolate_socket::{find, hold, let_go, preview};
use super::{ActionCtx, ActionError, Applied, Recovered};
use crate::sys::nft::Element;

fn address(addr: &str) -> Result<IpAddr, ActionError> {
    addr.parse()
        .map_err(|_| ActionError::permanent(format!("{addr:?} is not an address")))
}

fn requested_rate(ctx: &ActionCtx<'_>) -> u64 {
    ctx.params["rate_per_sec"]
        .as_u64()
        .unwrap_or(ctx.config.throttle.default_rate_per_sec)
}

/// The element for this action now. After apply, the recorded one wins: a
/// reload may have changed the default rate since.
fn element(
    ctx: &ActionCtx<'_>,
    addr: &str,
    changes: Option<&Value>,
) -> Result<Element, ActionError> {
    if let Some(recorded) = changes.and_then(|c| Element::from_record(&c["element"])) {
        return Ok(recorded);
    }
    Ok(Element::throttle(address(addr)?, requested_rate(ctx)))
}

fn describe(element: &Element) -> String {
    match element {
        Element::Throttle { addr, rate } => format!("throttled {addr} to {rate} packets/s"),
        other => format!("throttled {other}"),
    }
}

fn seconds(ctx: &ActionCtx<'_>) -> u64 {
    ctx.params["seconds"].as_u64().unwrap_or(1)
}

pub async fn dry_run(ctx: &ActionCtx<'_>, addr: &str) -> Result<Value, ActionError> {
    let element = element(ctx, addr, None)?;
    let mut change = preview(ctx, element, seconds(ctx)).await?;
    change["entity"] = ctx.params["entity"].clone();
    change["rate_per_sec_requested"] = requested_rate(ctx).into();
    if let Element::Throttle { rate, .. } = element {
        change["rate_per_sec_enforced"] = rate.into();
    }
    Ok(change)
}

pub async fn apply(ctx: &ActionCtx<'_>, addr: &str) -> Result<Applied, ActionError> {
    let element = element(ctx, addr, None)?;
    let mut applied = hold(ctx, element, seconds(ctx), &describe(&element)).await?;
    applied.changes["rate_per_sec_requested"] = requested_rate(ctx).into();
    Ok(applied)
}

pub async fn revert(
    ctx: &ActionCtx<'_>,
    addr: &str,
    changes: &Value,
) -> Result<String, ActionError> {
    let element = element(ctx, addr, Some(changes))?;
    let_go(ctx, element, &describe(&element)).await
}

pub async fn recover(ctx: &ActionCtx<'_>, addr: &str) -> Result<Recovered, ActionError> {
    let element = element(ctx, addr, None)?;
    find(ctx, element, &describe(&element)).await
}
