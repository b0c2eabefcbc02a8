//! Plans and actions counted since the agent started, for `Status`: the
//! bridge's `/metrics` reads them there, so a restart of the bridge loses
//! nothing (a restart of the agent starts them at zero again, which
//! Prometheus' `rate()` and `increase()` read as a counter reset).
//! Pure bookkeeping: the engine tells it what happened.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

/// outer label → inner label → count, e.g. source → status → plans, or
/// action type → outcome → actions. Both label sets are closed (three sources, the
/// plan statuses, the registry's action types, four outcomes), so the maps
/// stay small whatever the alerts say.
type Tally = BTreeMap<String, BTreeMap<String, u64>>;

pub struct Counters {
    /// When this agent started (ms since the epoch): a reader that sees it
    /// change knows the counts started again (and was not handed an older
    /// reply than its last one).
    since_ms: u64,
    tallies: Mutex<Tallies>,
}

#[derive(Default)]
struct Tallies {
    plans: Tally,
    actions: Tally,
}

impl Counters {
    pub fn since(since_ms: u64) -> Counters {
        Counters {
            since_ms,
            tallies: Mutex::default(),
        }
    }

    /// A plan accepted (`PlanQueued`, status `pending`), or a plan's status
    /// changed to `status`.
    pub fn plan(&self, source: &str, status: &str) {
        bump(&mut self.lock().plans, source, status);
    }

    /// An action finished with `outcome` (applied, failed, reverted, skipped).
    pub fn action(&self, kind: &str, outcome: &str) {
        bump(&mut self.lock().actions, kind, outcome);
    }

    /// `{"since_ms": start, "plans": {source: {status: n}}, "actions":
    /// {type: {outcome: n}}}`.
    pub fn to_json(&self) -> Value {
        let tallies = self.lock();
        json!({
            "since_ms": self.since_ms,
            "plans": tallies.plans,
            "actions": tallies.actions,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tallies> {
        // Counts stay meaningful after a panic elsewhere: take them as they are.
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn bump(tally: &mut Tally, outer: &str, inner: &str) {
    // Looked up by reference: the labels are allocated once per label set,
    // not once per event.
    if !tally.contains_key(outer) {
        tally.insert(outer.to_string(), BTreeMap::new());
    }
    let Some(inner_map) = tally.get_mut(outer) else {
        return; // inserted just above
    };
    match inner_map.get_mut(inner) {
        Some(n) => *n += 1,
        None => {
            inner_map.insert(inner.to_string(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nest_by_their_two_labels() {
        let counters = Counters::since(1234);
        assert_eq!(
            counters.to_json(),
            json!({"since_ms": 1234, "plans": {}, "actions": {}}),
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
                "since_ms": 1234,
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
