//! The unit half of reconcile (DESIGN.md §4): the limits of each unit a
//! throttle holds are read back and compared with what the ledger says the
//! throttle set. A difference is recorded once (`unit_drift`, on the
//! throttle's plan) and left alone: unlike an `nft flush`, a changed unit
//! property is most likely an operator's deliberate choice, and an agent
//! that set it back every few seconds would fight them at the worst time.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::Engine;
use crate::plan::{actions_of, ActionState, Event};
use crate::time::now_ms;

/// A unit throttle in force, as the ledger has it.
struct UnitHold {
    plan_id: String,
    index: usize,
    /// The limits the throttle set (`changes.after`).
    expected: Value,
    last_drift: Option<Value>,
    /// When it was applied: the latest hold on a unit decides its limits.
    applied_at: String,
}

impl Engine {
    /// The latest throttle in force on each unit, leaving out units a
    /// running plan may be changing right now (a throttle being applied or
    /// reverted is not drift).
    fn unit_holds(&self) -> BTreeMap<String, UnitHold> {
        let now = now_ms();
        let inner = self.lock();
        let busy: Vec<&str> = inner
            .state
            .running
            .iter()
            .filter_map(|id| inner.state.plans.get(id))
            .flat_map(|plan| plan.targets())
            .collect();
        let mut holds: BTreeMap<String, UnitHold> = BTreeMap::new();
        for (plan, index, action) in actions_of(inner.state.plans.values()) {
            let in_force = action.state == ActionState::Applied
                && action.seed.kind == "throttle_entity"
                && action.revert_at_ms.is_some_and(|at| at > now);
            let Some(changes) = action.changes.as_ref().filter(|_| in_force) else {
                continue;
            };
            let (Some(unit), Some(expected)) = (changes["unit"].as_str(), changes.get("after"))
            else {
                continue;
            };
            if busy.contains(&format!("unit:{unit}").as_str()) {
                continue;
            }
            let hold = UnitHold {
                plan_id: plan.id.clone(),
                index,
                expected: expected.clone(),
                last_drift: action.last_drift.clone(),
                applied_at: action.finished_at.clone().unwrap_or_default(),
            };
            match holds.get(unit) {
                Some(held) if held.applied_at > hold.applied_at => {}
                _ => {
                    holds.insert(unit.to_string(), hold);
                }
            }
        }
        holds
    }

    /// One round: reads each held unit's limits and records what drifted
    /// since the last round. A unit that cannot be read is skipped (it may
    /// be gone; its throttle's end reports that).
    pub async fn reconcile_units(&self) {
        for (unit, hold) in self.unit_holds() {
            let Ok(found) = self.sys.systemd.resource_limits(&unit).await else {
                continue;
            };
            let found = json!(found);
            if found == hold.expected || hold.last_drift.as_ref() == Some(&found) {
                continue;
            }
            let event = Event::UnitDrift {
                index: hold.index,
                unit,
                expected: hold.expected,
                found,
            };
            self.record(&hold.plan_id, event).await;
        }
    }
}
