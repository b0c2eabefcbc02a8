//! `notify_operator {channel, message}`: tells a person. Built-in channels
//! `journal` and `dbus` (the `OperatorNotice` signal); `webhook` channels come
//! from `[notify.channels.NAME]` in config. Not reversible.
//!
//! After a crash mid-send there is no way to ask a channel whether the message
//! arrived, so `recover` answers "not taken effect" and the notice is sent
//! again: delivery is at least once, never silently lost.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{ActionCtx, ActionError, ActionHandler, Applied, Recovered, ValidateCtx, Validated};
use crate::config::{Config, BUILTIN_CHANNELS};
use crate::error::AgentError;
use crate::plan::fields::Fields;
use crate::sys::notifier::{Channel, Notice};

pub const MAX_MESSAGE_BYTES: usize = 4096;

pub struct NotifyOperator;

/// The channel named `name`, from the built-ins or the config.
pub fn resolve_channel(name: &str, config: &Config) -> Option<Channel> {
    match name {
        "journal" => Some(Channel::Journal),
        "dbus" => Some(Channel::Dbus),
        _ => config.notify.channels.get(name).map(|c| Channel::Webhook {
            name: name.to_string(),
            url: c.url.clone(),
            timeout_secs: c.timeout_secs,
        }),
    }
}

fn notice(ctx: &ActionCtx<'_>) -> Result<(Channel, Notice), ActionError> {
    let channel_name = ctx.params["channel"].as_str().unwrap_or_default();
    let channel = resolve_channel(channel_name, ctx.config).ok_or_else(|| {
        ActionError::permanent(format!(
            "channel {channel_name:?} is no longer configured (config reloaded?)"
        ))
    })?;
    let notice = Notice {
        plan_id: ctx.plan_id.to_string(),
        source: ctx.source,
        severity: ctx.severity,
        description: ctx.description.to_string(),
        channel: channel_name.to_string(),
        message: ctx.params["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    Ok((channel, notice))
}

#[async_trait]
impl ActionHandler for NotifyOperator {
    fn name(&self) -> &'static str {
        "notify_operator"
    }

    fn reversible(&self) -> bool {
        false
    }

    fn validate(
        &self,
        params: &Fields<'_>,
        ctx: &ValidateCtx<'_>,
    ) -> Result<Validated, AgentError> {
        params.deny_unknown(&["channel", "message"])?;
        let channel = params.string("channel")?;
        if resolve_channel(channel, ctx.config).is_none() {
            let mut known: Vec<&str> = BUILTIN_CHANNELS.to_vec();
            known.extend(ctx.config.notify.channels.keys().map(String::as_str));
            return Err(params.error(
                "channel",
                format!(
                    "{channel:?} is not a configured channel (known: {})",
                    known.join(", ")
                ),
            ));
        }
        let message = params.text("message", MAX_MESSAGE_BYTES)?;
        Ok(Validated {
            params: json!({"channel": channel, "message": message}),
            targets: Vec::new(),
        })
    }

    async fn dry_run(&self, ctx: &ActionCtx<'_>) -> Result<Value, ActionError> {
        let (channel, notice) = notice(ctx)?;
        Ok(json!({
            "channel": notice.channel,
            "delivery": channel.describe(),
            "body": notice.to_json(),
        }))
    }

    /// The built-in channels (journal, dbus) deliver at once and a crash
    /// re-sends anyway (`recover`), so their start needs no fsync of its
    /// own. A webhook can take seconds: its start is recorded first, so the
    /// ledger shows a delivery in flight.
    fn write_ahead(&self, params: &Value) -> bool {
        let channel = params["channel"].as_str().unwrap_or_default();
        !BUILTIN_CHANNELS.contains(&channel)
    }

    async fn apply(&self, ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        let (channel, notice) = notice(ctx)?;
        ctx.sys.notifier.notify(&channel, &notice).await?;
        Ok(Applied {
            summary: format!("notice sent on channel {}", notice.channel),
            changes: json!({"channel": notice.channel}),
            revert_after_secs: None,
        })
    }

    async fn revert(&self, _ctx: &ActionCtx<'_>, _changes: &Value) -> Result<String, ActionError> {
        Err(ActionError::permanent("a sent notice cannot be taken back"))
    }

    async fn recover(&self, _ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        Ok(Recovered::DidNotTakeEffect(
            "delivery cannot be confirmed after a restart; the notice is sent again".into(),
        ))
    }
}
