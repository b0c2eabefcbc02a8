//! Delivering operator notices: journald, the `OperatorNotice` D-Bus signal,
//! and webhook channels (HTTP POST of JSON with a timeout).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::http::{HttpClient, JsonRequest, UreqClient};
use super::journal::{message_id, priority_for, Journal, JournalEntry};
use crate::actions::ActionError;
use crate::plan::{Severity, Source};

#[derive(Debug, Clone, PartialEq)]
pub enum Channel {
    Journal,
    Dbus,
    Webhook {
        name: String,
        url: String,
        timeout_secs: u64,
    },
}

impl Channel {
    /// How a notice is delivered, for `DryRun`: a webhook's URL only as
    /// its scheme and host (see [`redact_url`]).
    pub fn describe(&self) -> String {
        match self {
            Channel::Journal => "journald entry (MESSAGE_ID operator_notice)".into(),
            Channel::Dbus => "D-Bus signal org.vael.Antibody.OperatorNotice".into(),
            Channel::Webhook {
                url, timeout_secs, ..
            } => {
                format!(
                    "HTTP POST of JSON to {} (timeout {timeout_secs} s)",
                    redact_url(url)
                )
            }
        }
    }
}

/// A webhook URL as submitters and readers of plans may see it: scheme and
/// host (and port) only, `https://hooks.example/…`. Its path, query and
/// user info often carry a token, and the config that holds them is
/// readable by root alone.
pub fn redact_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => match uri.port_u16() {
                Some(port) => format!("{scheme}://{host}:{port}/…"),
                None => format!("{scheme}://{host}/…"),
            },
            _ => "(a webhook URL)".into(),
        },
        Err(_) => "(a webhook URL)".into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub plan_id: String,
    pub source: Source,
    pub severity: Severity,
    pub description: String,
    pub channel: String,
    pub message: String,
}

impl Notice {
    /// The webhook body (and the dry run's preview of it).
    pub fn to_json(&self) -> Value {
        json!({
            "event": "operator_notice",
            "plan_id": self.plan_id,
            "source": self.source.as_str(),
            "severity": self.severity.as_str(),
            "description": self.description,
            "channel": self.channel,
            "message": self.message,
        })
    }
}

#[async_trait]
pub trait Notifier: Send + Sync {
    async fn notify(&self, channel: &Channel, notice: &Notice) -> Result<(), ActionError>;
}

/// Where the `OperatorNotice` signal goes out: the bus connection the
/// agent serves on now (see `dbus::NoticeSignals`).
#[async_trait]
pub trait NoticeSignal: Send + Sync {
    /// Sends the signal; an error when it could not be handed to the bus.
    async fn operator_notice(
        &self,
        channel: &str,
        severity: &str,
        message: &str,
    ) -> Result<(), String>;
}

/// The real thing.
pub struct SystemNotifier {
    pub journal: Journal,
    pub signals: Arc<dyn NoticeSignal>,
}

#[async_trait]
impl Notifier for SystemNotifier {
    async fn notify(&self, channel: &Channel, notice: &Notice) -> Result<(), ActionError> {
        match channel {
            Channel::Journal => {
                self.journal.send(&JournalEntry {
                    priority: priority_for(Some(notice.severity)),
                    message: format!("antibody: operator notice: {}", notice.message),
                    fields: vec![
                        (
                            "MESSAGE_ID",
                            message_id("operator_notice").unwrap_or_default().into(),
                        ),
                        ("ANTIBODY_PLAN_ID", notice.plan_id.clone()),
                        ("ANTIBODY_ACTION", "notify_operator".into()),
                        ("ANTIBODY_SOURCE", notice.source.as_str().into()),
                    ],
                });
                Ok(())
            }
            // Sent on the bus connection itself, and only counted as sent
            // once the bus has it (no subscriber is no failure: the signal
            // went out). Not being on the bus (a restarted bus daemon) is a
            // failure that may pass: retried, then recorded as failed,
            // never as sent.
            Channel::Dbus => self
                .signals
                .operator_notice(&notice.channel, notice.severity.as_str(), &notice.message)
                .await
                .map_err(|e| {
                    ActionError::transient(format!("the OperatorNotice signal was not sent: {e}"))
                }),
            Channel::Webhook {
                url, timeout_secs, ..
            } => post_json(url, *timeout_secs, notice.to_json()).await,
        }
    }
}

/// POSTs `body`; a 2xx answer is success, 5xx, 429 and network errors
/// are transient (retried), other statuses permanent.
pub async fn post_json(url: &str, timeout_secs: u64, body: Value) -> Result<(), ActionError> {
    let request = JsonRequest {
        method: "POST".into(),
        url: url.to_string(),
        bearer: None,
        timeout_secs,
        body,
    };
    match UreqClient.send_json(request).await {
        Ok(status) if (200..300).contains(&status) => Ok(()),
        Ok(status) if status >= 500 || status == 429 => Err(ActionError::transient(format!(
            "webhook answered HTTP {status}"
        ))),
        Ok(status) => Err(ActionError::permanent(format!(
            "webhook answered HTTP {status}"
        ))),
        Err(e) => Err(ActionError::transient(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OffTheBus;

    #[async_trait]
    impl NoticeSignal for OffTheBus {
        async fn operator_notice(&self, _: &str, _: &str, _: &str) -> Result<(), String> {
            Err("the agent is not on the bus".into())
        }
    }

    #[tokio::test]
    async fn a_dbus_notice_the_bus_did_not_take_is_a_failure_not_a_delivery() {
        let notifier = SystemNotifier {
            journal: Journal::detect(),
            signals: Arc::new(OffTheBus),
        };
        let notice = Notice {
            plan_id: "p".into(),
            source: Source::Manual,
            severity: Severity::High,
            description: "d".into(),
            channel: "dbus".into(),
            message: "m".into(),
        };
        let err = notifier.notify(&Channel::Dbus, &notice).await.unwrap_err();
        assert!(err.transient);
        assert_eq!(
            err.message,
            "the OperatorNotice signal was not sent: the agent is not on the bus"
        );
    }

    #[test]
    fn a_webhook_url_is_shown_as_its_scheme_and_host_only() {
        assert_eq!(
            redact_url("https://hooks.example/T000/B000/XXXXSECRET?token=abc"),
            "https://hooks.example/…"
        );
        assert_eq!(
            redact_url("http://user:pass@127.0.0.1:9000/hook"),
            "http://127.0.0.1:9000/…"
        );
        assert_eq!(redact_url("not a url at all"), "(a webhook URL)");
        let channel = Channel::Webhook {
            name: "ops".into(),
            url: "https://hooks.example/s3cr3t".into(),
            timeout_secs: 5,
        };
        assert!(!channel.describe().contains("s3cr3t"));
    }
}
