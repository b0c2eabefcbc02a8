//! `throttle_entity {entity, seconds, cpu_percent?, memory_high?, rate_per_sec?}`:
//! a unit (`NAME.service`, any unit suffix, or `unit:NAME`) gets runtime
//! resource limits through systemd; an address (`ip:ADDR` or a bare address)
//! gets an nftables rate limit. Both are put back after `seconds`.
//! This file validates and dispatches; the unit half lives in
//! `throttle_unit.rs` (systemd) and the address half in `throttle_address.rs`
//! (nftables).

use async_trait::async_trait;
use serde_json::{json, Value};

use super::net::{parse_address_entity, protected_address};
use super::restart_service::unit_param;
use super::unit_guard::UnitUse;
use super::unit_name::has_unit_suffix;
use super::{
    throttle_address, throttle_unit, ActionCtx, ActionError, ActionHandler, Applied, Recovered,
    ValidateCtx, Validated,
};
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;

pub const MAX_SECONDS: u64 = 86_400;
pub const DEFAULT_CPU_PERCENT: u64 = 20;

pub struct ThrottleEntity;

/// `512M`, `2G`, `1048576`: bytes, with binary suffixes as systemd reads them.
pub fn parse_bytes(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let text = value.as_str()?;
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[async_trait]
impl ActionHandler for ThrottleEntity {
    fn name(&self) -> &'static str {
        "throttle_entity"
    }

    fn reversible(&self) -> bool {
        true
    }

    /// A unit's alias links are read from the unit directories (and an
    /// address's guard reads the routing table).
    fn validates_on_disk(&self) -> bool {
        true
    }

    fn validate(
        &self,
        params: &Fields<'_>,
        ctx: &ValidateCtx<'_>,
    ) -> Result<Validated, AgentError> {
        params.deny_unknown(&[
            "entity",
            "seconds",
            "cpu_percent",
            "memory_high",
            "rate_per_sec",
        ])?;
        let entity = params.string("entity")?;
        let seconds = params.integer("seconds", 1, MAX_SECONDS)?;
        let is_unit = entity.starts_with("unit:")
            || (has_unit_suffix(entity) && parse_address_entity(entity).is_none());
        if is_unit {
            let unit = unit_param(
                params,
                "entity",
                entity.strip_prefix("unit:").unwrap_or(entity),
                UnitUse::Throttle,
                ctx,
            )?;
            if params.get("rate_per_sec").is_some() {
                return Err(params.error("rate_per_sec", "applies to address entities only"));
            }
            let cpu = params
                .opt_integer("cpu_percent", 1, 10_000)?
                .unwrap_or(DEFAULT_CPU_PERCENT);
            let memory_high = match params.get("memory_high") {
                None => None,
                Some(v) => Some(parse_bytes(v).filter(|n| *n >= 1 << 20).ok_or_else(|| {
                    params.error(
                        "memory_high",
                        "must be bytes (at least 1048576) or a size such as \"512M\"",
                    )
                })?),
            };
            return Ok(Validated {
                targets: vec![format!("unit:{unit}")],
                params: json!({"entity": format!("unit:{unit}"), "seconds": seconds,
                               "cpu_percent": cpu, "memory_high": memory_high}),
            });
        }
        let Some(addr) = parse_address_entity(entity) else {
            return Err(params.error(
                "entity",
                format!("{entity:?} is neither a unit (NAME.service or unit:NAME) nor an address (ip:ADDR)"),
            ));
        };
        if let Some(why) = protected_address(addr, &ctx.config.protect.addresses) {
            return Err(params.error_named(ErrorName::ProtectedTarget, "entity", why));
        }
        for unit_only in ["cpu_percent", "memory_high"] {
            if params.get(unit_only).is_some() {
                return Err(params.error(unit_only, "applies to unit entities only"));
            }
        }
        let rate = params.opt_integer("rate_per_sec", 1, 1_000_000)?;
        Ok(Validated {
            targets: vec![format!("addr:{addr}")],
            params: json!({"entity": format!("ip:{addr}"), "seconds": seconds, "rate_per_sec": rate}),
        })
    }

    async fn dry_run(&self, ctx: &ActionCtx<'_>) -> Result<Value, ActionError> {
        match Kind::of(ctx.params) {
            Kind::Unit(unit) => throttle_unit::dry_run(ctx, unit).await,
            Kind::Address(addr) => throttle_address::dry_run(ctx, addr).await,
        }
    }

    async fn prepare(&self, ctx: &ActionCtx<'_>) -> Result<Option<Value>, ActionError> {
        match Kind::of(ctx.params) {
            Kind::Unit(unit) => throttle_unit::prepare(ctx, unit).await.map(Some),
            Kind::Address(_) => Ok(None),
        }
    }

    async fn apply(&self, ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        match Kind::of(ctx.params) {
            Kind::Unit(unit) => throttle_unit::apply(ctx, unit).await,
            Kind::Address(addr) => throttle_address::apply(ctx, addr).await,
        }
    }

    async fn revert(&self, ctx: &ActionCtx<'_>, changes: &Value) -> Result<String, ActionError> {
        match Kind::of(ctx.params) {
            Kind::Unit(unit) => throttle_unit::revert(ctx, unit, changes).await,
            Kind::Address(addr) => throttle_address::revert(ctx, addr, changes).await,
        }
    }

    async fn recover(&self, ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        match Kind::of(ctx.params) {
            Kind::Unit(unit) => throttle_unit::recover(ctx, unit).await,
            Kind::Address(addr) => throttle_address::recover(ctx, addr).await,
        }
    }
}

/// Validated parameters name their entity as `unit:NAME` or `ip:ADDR`.
enum Kind<'a> {
    Unit(&'a str),
    Address(&'a str),
}

impl<'a> Kind<'a> {
    fn of(params: &'a Value) -> Kind<'a> {
        let entity = params["entity"].as_str().unwrap_or_default();
        match entity.strip_prefix("unit:") {
            Some(unit) => Kind::Unit(unit),
            None => Kind::Address(entity.strip_prefix("ip:").unwrap_or(entity)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes(&json!(1048576)), Some(1048576));
        assert_eq!(parse_bytes(&json!("512M")), Some(512 << 20));
        assert_eq!(parse_bytes(&json!("2G")), Some(2 << 30));
        assert_eq!(parse_bytes(&json!("2X")), None);
        assert_eq!(parse_bytes(&json!("M")), None);
        assert_eq!(parse_bytes(&json!(-1)), None);
    }
}
