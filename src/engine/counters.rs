//! Plans and actions counted since the agent started, for `Status`: the
//! bridge's `/metrics` reads them there, so a restart of the bridge loses
//! nothing (a restart of the agent starts them at zero again, which
//! Prometheus' `rate()` and `increase()` read as a counter reset).
//! Pure bookkeeping: the engine tells it what happened.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// (outer label, inner label) → count, e.g. (source, status) or
/// (action type, outcome). Both label sets are closed (three sources, the
/// plan statuses, the registry's action types, four outcomes), so the maps
/// stay small whatever the alerts say.
type Tally = BTreeMap<(String, String), u64>;

#[derive(Default)]
pub struct Counters {
    tallies: Mutex<Tallies>,
}

#[derive(Default)]
struct Tallies {
    plans: Tally,
    actions: Tally,
}

impl Counters {
    /// A plan accepted (`PlanQueued`, status `pending`), or a plan's status
    /// changed to `status`.
    pub fn plan(&self, source: &str, status: &str) {
        bump(&mut self.lock().plans, source, status);
    }

    /// An action finished with `outcome` (applied, failed, reverted, skipped).
    pub fn action(&self, kind: &str, outcome: &str) {
        bump(&mut self.lock().actions, kind, outcome);
    }

    /// `{"plans": {source: {status: n}}, "actions": {type: {outcome: n}}}`.
    pub fn to_json(&self) -> Value {
        let tallies = self.lock();
        json!({
            "plans": nested(&tallies.plans),
            "actions": nested(&tallies.actions),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tallies> {
        // Counts stay meaningful after a panic elsewhere: take them as they are.
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn bump(tally: &mut Tally, outer: &str, inner: &str) {
    *tally
        .entry((outer.to_string(), inner.to_string()))
        .or_insert(0) += 1;
}

fn nested(tally: &Tally) -> Value {
    let mut outer = Map::new();
    for ((a, b), n) in tally {
        let inner = outer
            .entry(a.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(inner) = inner {
            inner.insert(b.clone(), json!(n));
        }
    }
    Value::Object(outer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nest_by_their_two_labels() {
        let counters = Counters::default();
        assert_eq!(
            counters.to_json(),
            json!({"plans": {}, "actions": {}}),
            "nothing counted yet is an empty map, not a missing key"
        );
        counters.plan("NEXUS", "pending");
        counters.plan("NEXUS", "in_progress");
        counters.plan("NEXUS", "pending");
        counters.plan("Watchdog", "success");
        counters.action("restart_service", "applied");
        counters.action("restart_service", "applied");
        counters.action("notify_operator", "failed");
        assert_eq!(
            counters.to_json(),
            json!({
                "plans": {
                    "NEXUS": {"pending": 2, "in_progress": 1},
                    "Watchdog": {"success": 1},
                },
                "actions": {
                    "restart_service": {"applied": 2},
                    "notify_operator": {"failed": 1},
                },
            })
        );
    }
}
