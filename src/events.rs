//! What the engine announces. The D-Bus layer turns these into signals and
//! `PropertiesChanged`; nothing here knows about D-Bus.

use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    PlanQueued {
        plan_id: String,
        source: String,
        severity: String,
    },
    PlanStatusChanged {
        plan_id: String,
        status: String,
    },
    ActionFinished {
        plan_id: String,
        index: u32,
        kind: String,
        /// applied, failed, reverted, skipped
        outcome: String,
    },
    /// Queue depth, health or active mitigations may have changed.
    CountersChanged,
}

pub type EventSender = broadcast::Sender<AgentEvent>;

pub fn channel() -> EventSender {
    broadcast::channel(4096).0
}
