//! Unit throttles as the ledger has them: what each unit's limits should
//! be, so that
//! - a throttle's end restores the right values when throttles of one unit
//!   overlap: while another still holds, that one's limits; after the last,
//!   the limits from before the first. A throttle records what it found
//!   (`before`), which may be another throttle's values, so the engine adds
//!   `base` to its `changes` when it is applied: the limits from before the
//!   first throttle of the overlap, carried from one to the next;
//! - reconcile (DESIGN.md §4) can read each held unit's limits back and
//!   record a difference once (`unit_drift`, on the throttle's plan),
//!   leaving it alone: unlike an `nft flush`, a changed unit property is
//!   most likely an operator's deliberate choice, and an agent that set it
//!   back every few seconds would fight them at the worst time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::Engine;
use crate::plan::{actions_of, ActionState, Event};
use crate::time::now_ms;

/// The action type whose unit changes these are.
const THROTTLE: &str = "throttle_entity";

/// A unit's limits are read back within this long, or not this round.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One unit throttle, applied (in force or ended).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitThrottle {
    pub plan_id: String,
    pub index: usize,
    pub unit: String,
    /// When it was applied (RFC 3339, so it sorts by time).
    pub applied_at: String,
    pub before: Value,
    pub after: Value,
    /// The limits from before the first throttle of its overlap (`before`
    /// in records from before `base` existed).
    pub base: Value,
    /// Applied and not reverted (it may be past its end, its revert due).
    pub applied: bool,
    pub in_force: bool,
}

/// The latest throttle in force on `unit` other than `except`, if any.
fn latest_other_in_force<'a>(
    unit: &str,
    except: (&str, usize),
    all: &'a [UnitThrottle],
) -> Option<&'a UnitThrottle> {
    all.iter()
        .filter(|t| t.unit == unit && t.in_force && (t.plan_id.as_str(), t.index) != except)
        .max_by(|a, b| a.applied_at.cmp(&b.applied_at))
}

/// The limits `unit` should have while its throttles stand as `all` says:
/// the latest one's in force, or `None` when none is in force.
pub fn held_limits<'a>(unit: &str, all: &'a [UnitThrottle]) -> Option<&'a UnitThrottle> {
    latest_other_in_force(unit, ("", usize::MAX), all)
}

/// The limits to restore when `ending` ends (pure): those of the latest
/// other throttle of its unit still in force; with none, its `base`.
pub fn limits_after_end(ending: &UnitThrottle, all: &[UnitThrottle]) -> Value {
    let key = (ending.plan_id.as_str(), ending.index);
    match latest_other_in_force(&ending.unit, key, all) {
        Some(other) => other.after.clone(),
        None => ending.base.clone(),
    }
}

/// The `base` of a throttle of `unit` applied now that found `before`
/// (pure): the base of the latest throttle not yet reverted, or `before`.
/// A throttle past its end counts while its revert is still to come (it
/// waits behind another plan on the unit, or is retried after a systemd
/// error): its limits are still on the unit, so `before` is not the
/// unit's own.
pub fn base_for(unit: &str, before: &Value, all: &[UnitThrottle]) -> Value {
    all.iter()
        .filter(|t| t.unit == unit && t.applied)
        .max_by(|a, b| a.applied_at.cmp(&b.applied_at))
        .map_or_else(|| before.clone(), |t| t.base.clone())
}

impl Engine {
    /// Every applied unit throttle the engine has in memory.
    fn unit_throttles(&self) -> Vec<UnitThrottle> {
        let now = now_ms();
        let inner = self.lock();
        actions_of(inner.state.plans.values())
            .filter(|(_, _, a)| a.seed.kind == THROTTLE)
            .filter(|(_, _, a)| matches!(a.state, ActionState::Applied | ActionState::Reverted))
            .filter_map(|(plan, index, action)| {
                let changes = action.changes.as_ref()?;
                let before = changes.get("before")?.clone();
                let applied = action.state == ActionState::Applied;
                Some(UnitThrottle {
                    plan_id: plan.id.clone(),
                    index,
                    unit: changes["unit"].as_str()?.to_string(),
                    applied_at: action.finished_at.clone().unwrap_or_default(),
                    base: changes
                        .get("base")
                        .cloned()
                        .unwrap_or_else(|| before.clone()),
                    before,
                    after: changes.get("after")?.clone(),
                    applied,
                    in_force: applied && action.revert_at_ms.is_some_and(|at| at > now),
                })
            })
            .collect()
    }

    /// `changes` as an `action_applied` record keeps them: a unit
    /// throttle's get its `base` ([`base_for`]).
    pub(super) fn changes_for_record(&self, kind: &str, changes: Value) -> Value {
        let (Some(unit), Some(before)) = (changes["unit"].as_str(), changes.get("before")) else {
            return changes;
        };
        // A restart's changes also name a unit and its state before.
        if kind != THROTTLE || changes.get("after").is_none() {
            return changes;
        }
        let base = base_for(unit, before, &self.unit_throttles());
        let mut changes = changes;
        changes["base"] = base;
        changes
    }

    /// `changes` as a revert of action `index` of `plan_id` must use them:
    /// for a unit throttle that overlaps others, `before` becomes what
    /// [`limits_after_end`] says, with a `restore_note` saying why.
    pub(super) fn changes_for_revert(&self, plan_id: &str, index: usize, changes: Value) -> Value {
        let all = self.unit_throttles();
        let Some(ending) = all
            .iter()
            .find(|t| t.plan_id == plan_id && t.index == index)
        else {
            return changes;
        };
        let restore = limits_after_end(ending, &all);
        if restore == ending.before {
            return changes;
        }
        let key = (plan_id, index);
        let note = match latest_other_in_force(&ending.unit, key, &all) {
            Some(other) => format!(
                "plan {} still throttles {}: its limits stay",
                other.plan_id, ending.unit
            ),
            None => format!(
                "the limits from before the first of the overlapping throttles of {}",
                ending.unit
            ),
        };
        let mut changes = changes;
        changes["before"] = restore;
        changes["restore_note"] = json!(note);
        changes
    }

    /// The unit throttles whose unit should show their limits now, leaving
    /// out units a running plan may be changing (a throttle being applied
    /// or reverted is not drift).
    fn holds_to_check(&self) -> Vec<(UnitThrottle, Option<Value>)> {
        let all = self.unit_throttles();
        let inner = self.lock();
        let busy = inner.state.busy_targets();
        let mut units: Vec<&str> = all.iter().map(|t| t.unit.as_str()).collect();
        units.sort();
        units.dedup();
        // A throttle past its end whose revert is still to come (or being
        // retried) still has its limits on the unit: not drift either.
        let ending = |unit: &str| {
            all.iter()
                .any(|t| t.unit == unit && t.applied && !t.in_force)
        };
        units
            .into_iter()
            .filter(|unit| !busy.contains(&format!("unit:{unit}")))
            .filter(|unit| !ending(unit))
            .filter_map(|unit| held_limits(unit, &all))
            .map(|hold| {
                let last = inner
                    .state
                    .plans
                    .get(&hold.plan_id)
                    .and_then(|p| p.actions.get(hold.index))
                    .and_then(|a| a.last_drift.clone());
                (hold.clone(), last)
            })
            .collect()
    }

    /// One round: reads each held unit's limits and records what drifted
    /// since the last round. A unit that cannot be read in time is skipped
    /// (it may be gone; its throttle's end reports that).
    pub async fn reconcile_units(&self) {
        for (hold, last_drift) in self.holds_to_check() {
            let read = self.sys.systemd.resource_limits(&hold.unit);
            let Ok(Ok(found)) = tokio::time::timeout(READ_TIMEOUT, read).await else {
                continue;
            };
            let found = json!(found);
            // Whatever changed while the read was out (a revert, a new
            // throttle) is not drift: the hold must still be the same.
            let still = self.holds_to_check().into_iter().any(|(h, _)| h == hold);
            if !still {
                continue;
            }
            if found == hold.after {
                self.forget_drift(&hold);
                continue;
            }
            if last_drift.as_ref() == Some(&found) {
                continue;
            }
            let event = Event::UnitDrift {
                index: hold.index,
                unit: hold.unit.clone(),
                expected: hold.after.clone(),
                found,
            };
            // An observation, not a step taken: not retried if the ledger
            // cannot take it now (the next round sees the drift again).
            if let Err(e) = self.try_record(&hold.plan_id, event).await {
                eprintln!(
                    "<3>antibodyd: cannot record the drift of {}: {e}",
                    hold.unit
                );
            }
        }
    }

    /// The unit is back to the throttle's limits: a later drift to the same
    /// values as before is news again.
    fn forget_drift(&self, hold: &UnitThrottle) {
        let mut inner = self.lock();
        let action = inner
            .state
            .plans
            .get_mut(&hold.plan_id)
            .and_then(|p| p.actions.get_mut(hold.index));
        if let Some(action) = action {
            action.last_drift = None;
        }
    }

    /// Checks the held units every `nft.reconcile_interval_secs` until the
    /// agent stops: a task of its own, so a slow systemd never holds up the
    /// nft reconcile.
    pub async fn reconcile_units_loop(self: Arc<Self>) {
        while self.next_reconcile_round().await {
            self.reconcile_units().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(plan: &str, at: &str, before: u64, after: u64, base: u64) -> UnitThrottle {
        UnitThrottle {
            plan_id: plan.into(),
            index: 0,
            unit: "web.service".into(),
            applied_at: at.into(),
            before: json!(before),
            after: json!(after),
            base: json!(base),
            applied: true,
            in_force: true,
        }
    }

    fn ended(mut t: UnitThrottle) -> UnitThrottle {
        t.applied = false;
        t.in_force = false;
        t
    }

    #[test]
    fn the_base_is_carried_from_one_overlapping_throttle_to_the_next() {
        let a = throttle("a", "2026-01-01T00:00:01Z", 100, 20, 100);
        assert_eq!(base_for("web.service", &json!(100), &[]), json!(100));
        assert_eq!(
            base_for("web.service", &json!(20), std::slice::from_ref(&a)),
            json!(100)
        );
        assert_eq!(
            base_for("web.service", &json!(20), &[ended(a.clone())]),
            json!(20)
        );
        // Past its end but not reverted yet: its base still counts.
        let mut due = a;
        due.in_force = false;
        assert_eq!(base_for("web.service", &json!(20), &[due]), json!(100));
    }

    #[test]
    fn an_end_while_another_holds_keeps_the_others_limits() {
        // A (orig 100 -> 20), then B on top (20 -> 5).
        let a = throttle("a", "2026-01-01T00:00:01Z", 100, 20, 100);
        let b = throttle("b", "2026-01-01T00:00:02Z", 20, 5, 100);
        let all = [a.clone(), b.clone()];
        assert_eq!(
            limits_after_end(&a, &all),
            json!(5),
            "A ends first: B's stay"
        );
        assert_eq!(
            limits_after_end(&b, &all),
            json!(20),
            "B ends first: A's again"
        );
        assert_eq!(held_limits("web.service", &all), Some(&b));
    }

    #[test]
    fn the_last_end_restores_the_base_even_with_the_first_forgotten() {
        let b = throttle("b", "2026-01-01T00:00:02Z", 20, 5, 100);
        // A's plan was archived long ago: B's own record says where to go back.
        assert_eq!(limits_after_end(&b, std::slice::from_ref(&b)), json!(100));
        assert_eq!(held_limits("web.service", &[ended(b)]), None);
    }
}
