//! What callers ask the engine without changing anything: a plan, a list
//! of plans, the counters and health behind `Status` and the properties.
//! Plans are copied under the engine's lock and serialized after it; an
//! archived plan is read on a blocking thread.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::{archive, Engine, FIREWALL_STALL_MS, MAX_LIST_BYTES, MAX_LIST_PLANS, VERSION};
use crate::error::{AgentError, ErrorName};
use crate::plan::{Plan, PlanStatus};
use crate::time::now_ms;

impl Engine {
    /// A plan from memory, or taken back from the archive.
    pub(super) fn plan_value(&self, id: &str) -> Option<Value> {
        if let Some(plan) = self.lock().state.plans.get(id) {
            return Some(serde_json::to_value(plan).expect("plans serialize"));
        }
        archive::load(&self.config().state.dir, id)
            .map(|p| serde_json::to_value(p).expect("plans serialize"))
    }

    /// An archived plan, read on a blocking thread.
    pub(super) async fn load_archived(&self, id: &str) -> Option<Plan> {
        let (dir, id) = (self.config().state.dir.clone(), id.to_string());
        tokio::task::spawn_blocking(move || archive::load(&dir, &id))
            .await
            .ok()
            .flatten()
    }

    /// `GetPlan`, as D-Bus answers it: copied from memory (serialized
    /// after the lock), or read from the archive on a blocking thread.
    pub async fn fetch_plan(&self, id: &str) -> Result<String, AgentError> {
        let in_memory = self.lock().state.plans.get(id).cloned();
        let plan = match in_memory {
            Some(plan) => Some(plan),
            None => self.load_archived(id).await,
        };
        plan.map(|p| {
            serde_json::to_value(p)
                .expect("plans serialize")
                .to_string()
        })
        .ok_or_else(|| AgentError::new(ErrorName::NotFound, format!("no plan with id {id:?}")))
    }

    pub fn get_plan(&self, id: &str) -> Result<Value, AgentError> {
        self.plan_value(id)
            .ok_or_else(|| AgentError::new(ErrorName::NotFound, format!("no plan with id {id:?}")))
    }

    /// `ListPlans`: newest first; `limit` 0 means 100, and at most
    /// [`MAX_LIST_PLANS`]. The plans are copied under the engine's lock and
    /// serialized after it is released, so a big answer never holds up
    /// the plans that run.
    /// `ListPlaybooks`: the playbooks in force, in the order they are
    /// tried, and the directory they were read from.
    pub fn list_playbooks(&self) -> String {
        let config = self.config();
        let playbooks: Vec<Value> = config
            .loaded_playbooks
            .iter()
            .map(|p| p.to_json())
            .collect();
        json!({"dir": config.playbooks.dir, "playbooks": playbooks}).to_string()
    }

    pub fn list_plans(&self, status: Option<PlanStatus>, limit: u32) -> String {
        let plans: Vec<Plan> = self
            .lock()
            .state
            .list(status, list_limit(limit))
            .into_iter()
            .cloned()
            .collect();
        json_array_within(
            plans
                .iter()
                .map(|p| serde_json::to_string(p).expect("plans serialize")),
            MAX_LIST_BYTES,
        )
    }

    pub fn queue_depth(&self) -> u32 {
        self.lock().state.queue_depth() as u32
    }

    pub fn active_mitigations(&self) -> u32 {
        self.lock().state.active_mitigations() as u32
    }

    /// Healthy: the chain is intact, the last write succeeded, the engine
    /// loop ticked recently and the firewall is not stuck on a batch.
    pub fn healthy(&self) -> bool {
        let beat_age = now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        self.ledger_health().ok
            && self.storage_ok.load(Ordering::Relaxed)
            && beat_age < 10_000
            && self.sys.firewall.stalled_for_ms() < FIREWALL_STALL_MS
    }

    /// `Status`: the seed's `GET /status`.
    pub fn status(&self) -> Value {
        let (queue_depth, in_flight, active) = {
            let inner = self.lock();
            (
                inner.state.queue_depth(),
                inner.state.running.len(),
                inner.state.active_mitigations(),
            )
        };
        let health = self.ledger_health();
        json!({
            "healthy": self.healthy(),
            "queue_depth": queue_depth,
            "in_flight": in_flight,
            "active_mitigations": active,
            "ledger": {"ok": health.ok, "records": self.ledger.records(), "broken_at": health.broken_at},
            "version": VERSION,
            "uptime_secs": self.started.elapsed().as_secs(),
            "counters": self.counters.to_json(),
        })
    }

    /// A one-line summary for systemd's `STATUS=`.
    pub fn status_line(&self) -> String {
        let inner = self.lock();
        format!(
            "{} queued, {} running, {} active mitigation(s)",
            inner.state.queue_depth(),
            inner.state.running.len(),
            inner.state.active_mitigations()
        )
    }
}

/// `ListPlans`' `limit`: 0 means 100; never more than [`MAX_LIST_PLANS`].
fn list_limit(limit: u32) -> usize {
    match limit {
        0 => 100,
        n => (n as usize).min(MAX_LIST_PLANS),
    }
}

/// A JSON array of `items`, in order, as many as fit in `max_bytes` (at
/// least one): a bus message has a size limit, and a plan may carry a
/// 64 KiB alert.
fn json_array_within(items: impl Iterator<Item = String>, max_bytes: usize) -> String {
    let mut answer = String::from("[");
    for item in items {
        let first = answer.len() == 1;
        if !first && answer.len() + item.len() + 2 > max_bytes {
            break;
        }
        if !first {
            answer.push(',');
        }
        answer.push_str(&item);
    }
    answer.push(']');
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn list_plans_answers_are_bounded_in_count_and_bytes() {
        assert_eq!(list_limit(0), 100);
        assert_eq!(list_limit(7), 7);
        assert_eq!(list_limit(u32::MAX), MAX_LIST_PLANS);
        let items = || {
            ["\"aaaa\"", "\"bbbb\"", "\"cccc\""]
                .map(String::from)
                .into_iter()
        };
        assert_eq!(
            json_array_within(items(), 1000),
            r#"["aaaa","bbbb","cccc"]"#
        );
        assert_eq!(json_array_within(items(), 16), r#"["aaaa","bbbb"]"#);
        assert_eq!(json_array_within(items(), 3), r#"["aaaa"]"#, "at least one");
        let empty: [String; 0] = [];
        assert_eq!(json_array_within(empty.into_iter(), 10), "[]");
        let parsed: Value = serde_json::from_str(&json_array_within(items(), 16)).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
    }
}
