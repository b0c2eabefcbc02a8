//! The `antibody_event` stream's source: one subscription to the agent's
//! signals for the whole bridge, turned into JSON messages and handed to
//! the [`Hub`]. The subscription is made again whenever the bus connection
//! is lost; an agent restart on the same bus needs nothing (the signal
//! streams follow the name to its new owner).

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
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

/// What the pump receives: the agent's signals, and the moment it owns its
/// name again after it was away (a restart), when every client gets a
/// fresh Snapshot (what it had may be stale: plans recovered, counters
/// reset).
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    Signal(Signal),
    AgentReturned,
}

/// Makes the first subscription (so that signals are forwarded before the
/// bridge says it is ready), then runs the pump for the bridge's life.
/// An unreachable bus is no error here: the pump keeps trying.
pub async fn start_pump(link: Arc<AgentLink>, hub: Arc<Hub>, within: Duration) {
    let first = tokio::time::timeout(within, subscribe(&link, &hub))
        .await
        .ok()
        .and_then(Result::ok);
    tokio::spawn(pump(link, hub, first));
}

/// Publishes every signal; subscribes again whenever the stream ends.
async fn pump(link: Arc<AgentLink>, hub: Arc<Hub>, mut current: Option<BoxStream<'static, Feed>>) {
    loop {
        let mut signals = match current.take() {
            Some(signals) => signals,
            None => match subscribe(&link, &hub).await {
                Ok(signals) => signals,
                Err(e) => {
                    eprintln!("<4>antibody-web: cannot subscribe to the agent's signals: {e}");
                    link.reset().await;
                    tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                    continue;
                }
            },
        };
        while let Some(item) = signals.next().await {
            // With no client, no fresh snapshot is read either.
            if hub.clients() == 0 {
                continue;
            }
            let message = match item {
                Feed::Signal(signal) => {
                    let ts = crate::time::rfc3339(crate::time::now_ms());
                    signal.to_message(&ts)
                }
                Feed::AgentReturned => snapshot(&link).await,
            };
            hub.publish(Arc::from(message.to_string()));
        }
        // The stream ends with the connection: the bus went away.
        link.reset().await;
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// Signals queued between the bus and the pump (the pump never waits on
/// clients, so this only absorbs bursts).
const SIGNAL_QUEUE: usize = 1024;

/// The agent's signals on the current connection, in the order the bus
/// delivered them: one match rule for the whole interface (four proxy
/// streams merged would reorder a plan's PlanQueued after its end).
/// The rule's sender is the well-known name, which the bus daemon matches
/// against its current owner: only the agent's signals reach us, whichever
/// process owns the name after a restart.
async fn subscribe(link: &AgentLink, hub: &Arc<Hub>) -> Result<BoxStream<'static, Feed>, String> {
    let (conn, _) = link.proxy().await.map_err(|e| e.message)?;
    let signals_rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(crate::dbus::BUS_NAME)
        .interface(crate::dbus::INTERFACE)
        .path(crate::dbus::OBJECT_PATH)
        .build()
        .map_err(|e| e.to_string())?;
    // The bus daemon's own NameOwnerChanged for the agent's name only.
    let owner_rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .add_arg(crate::dbus::BUS_NAME)
        .build()
        .map_err(|e| e.to_string())?;
    let signals = zbus::MessageStream::for_match_rule(
        signals_rule,
        &conn,
        std::num::NonZeroUsize::new(SIGNAL_QUEUE),
    )
    .await
    .map_err(|e| e.to_string())?;
    let owners =
        zbus::MessageStream::for_match_rule(owner_rule, &conn, std::num::NonZeroUsize::new(8))
            .await
            .map_err(|e| e.to_string())?;
    // A connection error ends a stream (the pump subscribes again); a
    // message whose arguments do not decode is skipped, and so is every
    // signal while no client listens: a client that joins later reads its
    // snapshot after joining, and the snapshot holds what the signal said.
    let hub = hub.clone();
    let signals = signals
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(move |m| {
            let listened = hub.clients() > 0;
            std::future::ready(
                m.ok()
                    .filter(|_| listened)
                    .and_then(|m| decode(&m))
                    .map(Feed::Signal),
            )
        });
    let owners = owners
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| std::future::ready(m.ok().and_then(|m| agent_returned(&m))));
    // Both end with their connection, and so does the merged feed.
    Ok(futures_util::stream::select(signals.boxed(), owners.boxed()).boxed())
}

/// `Feed::AgentReturned` for a NameOwnerChanged that gives the agent's
/// name a new owner.
fn agent_returned(message: &zbus::Message) -> Option<Feed> {
    let (name, _old, new): (String, String, String) = message.body().deserialize().ok()?;
    (name == crate::dbus::BUS_NAME && !new.is_empty()).then_some(Feed::AgentReturned)
}

/// The [`Signal`] a bus message carries, if it is one of the agent's.
fn decode(message: &zbus::Message) -> Option<Signal> {
    let header = message.header();
    let body = message.body();
    Some(match header.member()?.as_str() {
        "PlanQueued" => {
            let (plan_id, source, severity): (String, String, String) = body.deserialize().ok()?;
            Signal::PlanQueued {
                plan_id,
                source,
                severity,
            }
        }
        "PlanStatusChanged" => {
            let (plan_id, status): (String, String) = body.deserialize().ok()?;
            Signal::PlanStatusChanged { plan_id, status }
        }
        "ActionFinished" => {
            let (plan_id, index, action_type, outcome): (String, u32, String, String) =
                body.deserialize().ok()?;
            Signal::ActionFinished {
                plan_id,
                index,
                action_type,
                outcome,
            }
        }
        "OperatorNotice" => {
            let (channel, severity, message): (String, String, String) = body.deserialize().ok()?;
            Signal::OperatorNotice {
                channel,
                severity,
                message,
            }
        }
        _ => return None,
    })
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
