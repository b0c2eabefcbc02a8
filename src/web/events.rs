//! The `antibody_event` stream's source: one subscription to the agent's
//! signals for the whole bridge, turned into JSON messages and handed to
//! the [`Hub`]. The subscription is made again whenever the bus connection
//! is lost; an agent restart on the same bus needs nothing (the signal
//! streams follow the name to its new owner).

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{select_all, BoxStream, StreamExt};
use serde_json::{json, Value};

use super::agent::AgentLink;
use super::errors::ApiError;
use super::hub::Hub;

/// Plans a snapshot carries.
pub const SNAPSHOT_PLANS: u32 = 50;
/// Pause before subscribing again after the bus connection went away.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

/// One of the agent's signals, as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
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
        action_type: String,
        outcome: String,
    },
    OperatorNotice {
        channel: String,
        severity: String,
        message: String,
    },
}

impl Signal {
    /// The WebSocket message: `{"event": "antibody_event", "type", "plan_id",
    /// …the signal's fields, "ts"}`. ActionFinished's own `type` argument
    /// travels as `action_type`; OperatorNotice has no plan (`plan_id` null).
    pub fn to_message(&self, ts: &str) -> Value {
        let (kind, mut fields) = match self {
            Signal::PlanQueued {
                plan_id,
                source,
                severity,
            } => (
                "PlanQueued",
                json!({"plan_id": plan_id, "source": source, "severity": severity}),
            ),
            Signal::PlanStatusChanged { plan_id, status } => (
                "PlanStatusChanged",
                json!({"plan_id": plan_id, "status": status}),
            ),
            Signal::ActionFinished {
                plan_id,
                index,
                action_type,
                outcome,
            } => (
                "ActionFinished",
                json!({"plan_id": plan_id, "index": index, "action_type": action_type, "outcome": outcome}),
            ),
            Signal::OperatorNotice {
                channel,
                severity,
                message,
            } => (
                "OperatorNotice",
                json!({"plan_id": null, "channel": channel, "severity": severity, "message": message}),
            ),
        };
        let object = fields.as_object_mut().expect("built as an object above");
        object.insert("event".into(), json!("antibody_event"));
        object.insert("type".into(), json!(kind));
        object.insert("ts".into(), json!(ts));
        fields
    }
}

/// The first message every client gets: the agent's status and its newest
/// plans. While the agent is away, `status` is null and `agent_error` says why.
pub fn snapshot_message(status: Result<Value, ApiError>, plans: Result<Value, ApiError>) -> Value {
    let mut message = json!({
        "event": "antibody_event",
        "type": "Snapshot",
        "ts": crate::time::rfc3339(crate::time::now_ms()),
    });
    match (status, plans) {
        (Ok(status), Ok(plans)) => {
            message["status"] = status;
            message["plans"] = plans;
        }
        (Err(e), _) | (_, Err(e)) => {
            message["status"] = Value::Null;
            message["plans"] = json!([]);
            message["agent_error"] = json!({"error": e.name, "message": e.message});
        }
    }
    message
}

/// Reads the snapshot's parts from the agent.
pub async fn snapshot(link: &AgentLink) -> Value {
    let status = link
        .call(|p| async move { p.status().await })
        .await
        .and_then(|s| agent_json(&s));
    let plans = match status {
        Ok(_) => link
            .call(|p| async move { p.list_plans("", SNAPSHOT_PLANS).await })
            .await
            .and_then(|s| agent_json(&s)),
        Err(ref e) => Err(e.clone()),
    };
    snapshot_message(status, plans)
}

/// The agent's JSON text as a value (a reply that is not JSON is the
/// agent's fault: 502).
pub fn agent_json(text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "BadAgentReply",
            format!("the agent's reply is not JSON: {e}"),
        )
    })
}

/// Runs for the bridge's life: subscribes once, publishes every signal.
pub async fn pump(link: Arc<AgentLink>, hub: Arc<Hub>, on_signal: impl Fn(&Signal) + Send) {
    loop {
        match subscribe(&link).await {
            Ok(mut signals) => {
                while let Some(signal) = signals.next().await {
                    on_signal(&signal);
                    let ts = crate::time::rfc3339(crate::time::now_ms());
                    hub.publish(Arc::from(signal.to_message(&ts).to_string()));
                }
                // The streams end with the connection: the bus went away.
                link.reset().await;
            }
            Err(e) => {
                eprintln!("<4>antibody-web: cannot subscribe to the agent's signals: {e}");
                link.reset().await;
            }
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// The four signal streams of the current connection, merged.
async fn subscribe(link: &AgentLink) -> Result<BoxStream<'static, Signal>, String> {
    let (_, proxy) = link.proxy().await.map_err(|e| e.message)?;
    let queued = proxy.receive_plan_queued().await.map_err(|e| e.to_string())?;
    let status = proxy
        .receive_plan_status_changed()
        .await
        .map_err(|e| e.to_string())?;
    let finished = proxy
        .receive_action_finished()
        .await
        .map_err(|e| e.to_string())?;
    let notices = proxy
        .receive_operator_notice()
        .await
        .map_err(|e| e.to_string())?;
    // A signal whose arguments do not decode is skipped, not fatal.
    let streams: Vec<BoxStream<'static, Signal>> = vec![
        queued
            .filter_map(|s| async move {
                let a = s.args().ok()?;
                Some(Signal::PlanQueued {
                    plan_id: a.plan_id.to_string(),
                    source: a.source.to_string(),
                    severity: a.severity.to_string(),
                })
            })
            .boxed(),
        status
            .filter_map(|s| async move {
                let a = s.args().ok()?;
                Some(Signal::PlanStatusChanged {
                    plan_id: a.plan_id.to_string(),
                    status: a.status.to_string(),
                })
            })
            .boxed(),
        finished
            .filter_map(|s| async move {
                let a = s.args().ok()?;
                Some(Signal::ActionFinished {
                    plan_id: a.plan_id.to_string(),
                    index: a.index,
                    action_type: a.r#type.to_string(),
                    outcome: a.outcome.to_string(),
                })
            })
            .boxed(),
        notices
            .filter_map(|s| async move {
                let a = s.args().ok()?;
                Some(Signal::OperatorNotice {
                    channel: a.channel.to_string(),
                    severity: a.severity.to_string(),
                    message: a.message.to_string(),
                })
            })
            .boxed(),
    ];
    Ok(select_all(streams).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_signal_fields() {
        let m = Signal::ActionFinished {
            plan_id: "p".into(),
            index: 2,
            action_type: "restart_service".into(),
            outcome: "applied".into(),
        }
        .to_message("2026-01-01T00:00:00Z");
        assert_eq!(
            m,
            json!({"event": "antibody_event", "type": "ActionFinished", "plan_id": "p",
                   "index": 2, "action_type": "restart_service", "outcome": "applied",
                   "ts": "2026-01-01T00:00:00Z"})
        );
        let n = Signal::OperatorNotice {
            channel: "dbus".into(),
            severity: "high".into(),
            message: "hi".into(),
        }
        .to_message("t");
        assert_eq!(n["plan_id"], Value::Null);
        assert_eq!(n["type"], "OperatorNotice");
    }

    #[test]
    fn snapshot_without_the_agent_says_why() {
        let m = snapshot_message(Err(ApiError::agent_unavailable("gone")), Ok(json!([])));
        assert_eq!(m["type"], "Snapshot");
        assert_eq!(m["status"], Value::Null);
        assert_eq!(m["agent_error"]["error"], "AgentUnavailable");
        let m = snapshot_message(Ok(json!({"healthy": true})), Ok(json!([{"id": "a"}])));
        assert_eq!(m["plans"][0]["id"], "a");
        assert!(m.get("agent_error").is_none());
    }
}
