//! The unit half of `throttle_entity`: runtime resource limits through
//! systemd's `SetUnitProperties(runtime=true)`. `prepare` reads the current
//! `CPUQuotaPerSecUSec`, `MemoryHigh` and `IOWeight` and the engine makes them
//! durable before the change; the timed revert (or a rollback) puts exactly
//! those back. A runtime property also ends with a reboot, the backstop.

use serde_json::{json, Value};

use super::restart_service::{action_error, refuse_at_apply};
use super::{ActionCtx, ActionError, Applied, Recovered};
use crate::sys::systemd::ResourceLimits;

/// IOWeight while throttled (systemd's default is 100, its range 1..=10000).
pub const THROTTLED_IO_WEIGHT: u64 = 10;

/// The limits a throttle sets, from the validated parameters and what the
/// unit had: CPU and IO are lowered; memory only when `memory_high` is given.
pub fn throttled_limits(params: &Value, before: &ResourceLimits) -> ResourceLimits {
    let cpu_percent = params["cpu_percent"].as_u64().unwrap_or(20);
    ResourceLimits {
        // systemd counts CPUQuota in µs of CPU time per second: 1 % = 10 000.
        cpu_quota_per_sec_usec: cpu_percent.saturating_mul(10_000),
        memory_high: params["memory_high"].as_u64().unwrap_or(before.memory_high),
        io_weight: THROTTLED_IO_WEIGHT,
    }
}

/// A limit as `systemctl show` writes it: no limit is `infinity`, an
/// unset weight `[not set]` (both are u64::MAX on the bus).
pub fn show_limit(property: &str, value: u64) -> String {
    match (value, property) {
        (u64::MAX, "IOWeight") => "[not set]".into(),
        (u64::MAX, _) => "infinity".into(),
        _ => value.to_string(),
    }
}

/// Each property with its value in `a` and in `b`.
fn properties(a: &ResourceLimits, b: &ResourceLimits) -> [(&'static str, u64, u64); 3] {
    [
        (
            "CPUQuotaPerSecUSec",
            a.cpu_quota_per_sec_usec,
            b.cpu_quota_per_sec_usec,
        ),
        ("MemoryHigh", a.memory_high, b.memory_high),
        ("IOWeight", a.io_weight, b.io_weight),
    ]
}

/// `CPUQuotaPerSecUSec: infinity -> 200000` for each property that changes.
pub fn describe_change(before: &ResourceLimits, after: &ResourceLimits) -> Vec<String> {
    properties(before, after)
        .into_iter()
        .filter(|(_, b, a)| b != a)
        .map(|(name, b, a)| format!("{name}: {} -> {}", show_limit(name, b), show_limit(name, a)))
        .collect()
}

/// The properties systemd did not take: `IOWeight asked 10, holds [not
/// set]` for each where what it holds is not what was asked.
pub fn not_taken(asked: &ResourceLimits, held: &ResourceLimits) -> Vec<String> {
    properties(asked, held)
        .into_iter()
        .filter(|(_, a, h)| a != h)
        .map(|(name, a, h)| {
            format!(
                "{name} asked {}, holds {}",
                show_limit(name, a),
                show_limit(name, h)
            )
        })
        .collect()
}

/// Whether any change the throttle asks for shows in `now`.
fn any_taken(before: &ResourceLimits, after: &ResourceLimits, now: &ResourceLimits) -> bool {
    properties(before, after)
        .into_iter()
        .zip(properties(after, now))
        .any(|((_, b, a), (_, _, n))| a != b && n == a)
}

fn seconds(ctx: &ActionCtx<'_>) -> u64 {
    ctx.params["seconds"].as_u64().unwrap_or(0)
}

pub async fn dry_run(ctx: &ActionCtx<'_>, unit: &str) -> Result<Value, ActionError> {
    let systemd = &ctx.sys.systemd;
    refuse_at_apply(ctx, unit).await?;
    let status = systemd.unit_status(unit).await.map_err(action_error)?;
    let before = systemd.resource_limits(unit).await.map_err(action_error)?;
    let after = throttled_limits(ctx.params, &before);
    Ok(json!({
        "unit": unit,
        "current": status,
        "call": "SetUnitProperties(runtime=true)",
        "before": before,
        "after": after,
        "changes": describe_change(&before, &after),
        "restore_after_secs": seconds(ctx),
    }))
}

pub async fn prepare(ctx: &ActionCtx<'_>, unit: &str) -> Result<Value, ActionError> {
    let limits = async {
        ctx.sys
            .systemd
            .resource_limits(unit)
            .await
            .map_err(action_error)
    };
    let (before, ()) = tokio::try_join!(limits, refuse_at_apply(ctx, unit))?;
    Ok(json!(before))
}

pub async fn apply(ctx: &ActionCtx<'_>, unit: &str) -> Result<Applied, ActionError> {
    let before = ctx
        .prepared_as::<ResourceLimits>()
        .ok_or_else(|| ActionError::permanent("the unit's previous limits were not recorded"))?;
    let after = throttled_limits(ctx.params, &before);
    let systemd = &ctx.sys.systemd;
    systemd
        .set_resource_limits(unit, &after)
        .await
        .map_err(action_error)?;
    // What systemd holds now, not what was asked: a property the unit
    // cannot take is said, and drift is judged against what is in force.
    let held = systemd.resource_limits(unit).await.map_err(action_error)?;
    let secs = seconds(ctx);
    let mut summary = format!(
        "throttled {unit} for {secs} s ({})",
        describe_change(&before, &held).join(", ")
    );
    let refused = not_taken(&after, &held);
    if !refused.is_empty() {
        summary.push_str(&format!("; systemd did not take: {}", refused.join(", ")));
    }
    Ok(Applied {
        summary,
        changes: json!({"unit": unit, "before": before, "after": held}),
        revert_after_secs: Some(secs),
    })
}

pub async fn revert(
    ctx: &ActionCtx<'_>,
    unit: &str,
    changes: &Value,
) -> Result<String, ActionError> {
    let before: ResourceLimits =
        serde_json::from_value(changes["before"].clone()).map_err(|e| {
            ActionError::permanent(format!("the recorded previous limits are unreadable: {e}"))
        })?;
    let systemd = &ctx.sys.systemd;
    let now = systemd.resource_limits(unit).await.map_err(action_error)?;
    systemd
        .set_resource_limits(unit, &before)
        .await
        .map_err(action_error)?;
    let restored = describe_change(&now, &before);
    let mut summary = if restored.is_empty() {
        format!("{unit} already had its previous limits")
    } else {
        format!("restored {unit} ({})", restored.join(", "))
    };
    // Set by the engine when throttles of the unit overlapped.
    if let Some(note) = changes["restore_note"].as_str() {
        summary.push_str(&format!("; {note}"));
    }
    Ok(summary)
}

/// After a crash mid-apply: the limits are in force when the unit shows
/// exactly the throttle's values.
pub async fn recover(ctx: &ActionCtx<'_>, unit: &str) -> Result<Recovered, ActionError> {
    let Some(before) = ctx.prepared_as::<ResourceLimits>() else {
        return Ok(Recovered::DidNotTakeEffect(format!(
            "the agent stopped before changing {unit}"
        )));
    };
    let after = throttled_limits(ctx.params, &before);
    let now = ctx
        .sys
        .systemd
        .resource_limits(unit)
        .await
        .map_err(action_error)?;
    if any_taken(&before, &after, &now) {
        Ok(Recovered::TookEffect(Applied {
            summary: format!(
                "{unit} was throttled before the agent stopped ({})",
                describe_change(&before, &now).join(", ")
            ),
            changes: json!({"unit": unit, "before": before, "after": now}),
            revert_after_secs: Some(seconds(ctx)),
        }))
    } else {
        Ok(Recovered::DidNotTakeEffect(format!(
            "{unit} does not show the throttle's limits: it was not applied"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNLIMITED: ResourceLimits = ResourceLimits {
        cpu_quota_per_sec_usec: u64::MAX,
        memory_high: u64::MAX,
        io_weight: u64::MAX,
    };

    #[test]
    fn default_throttle_is_twenty_percent_cpu_and_low_io() {
        let after = throttled_limits(&json!({"cpu_percent": 20}), &UNLIMITED);
        assert_eq!(after.cpu_quota_per_sec_usec, 200_000);
        assert_eq!(after.memory_high, u64::MAX);
        assert_eq!(after.io_weight, THROTTLED_IO_WEIGHT);
    }

    #[test]
    fn memory_high_only_when_given() {
        let after = throttled_limits(
            &json!({"cpu_percent": 150, "memory_high": 536870912u64}),
            &UNLIMITED,
        );
        assert_eq!(after.cpu_quota_per_sec_usec, 1_500_000);
        assert_eq!(after.memory_high, 512 << 20);
    }

    #[test]
    fn change_lines_name_each_property_before_and_after() {
        let after = throttled_limits(&json!({"cpu_percent": 20}), &UNLIMITED);
        assert_eq!(
            describe_change(&UNLIMITED, &after),
            [
                "CPUQuotaPerSecUSec: infinity -> 200000",
                "IOWeight: [not set] -> 10"
            ]
        );
        assert!(describe_change(&after, &after).is_empty());
    }

    #[test]
    fn a_property_systemd_did_not_take_is_named_and_a_partial_throttle_took_effect() {
        let after = throttled_limits(&json!({"cpu_percent": 20}), &UNLIMITED);
        let held = ResourceLimits {
            io_weight: u64::MAX,
            ..after
        };
        assert_eq!(
            not_taken(&after, &held),
            ["IOWeight asked 10, holds [not set]"]
        );
        assert!(not_taken(&after, &after).is_empty());
        assert!(any_taken(&UNLIMITED, &after, &held));
        assert!(!any_taken(&UNLIMITED, &after, &UNLIMITED));
    }
}
