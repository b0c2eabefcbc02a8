//! Notices the engine itself sends the operator (not a plan's
//! `notify_operator` action): on the journal and the `OperatorNotice`
//! signal, after whatever caused them has been answered or recorded.

use super::Engine;
use crate::plan::{Severity, Source};
use crate::sys::notifier::{Channel, Notice};

impl Engine {
    /// Sends `message` on the built-in channels, without waiting for them.
    pub(super) fn tell_operator(
        &self,
        plan_id: &str,
        (source, severity): (Source, Severity),
        description: &str,
        message: String,
    ) {
        let notice = |channel: &str| Notice {
            plan_id: plan_id.to_string(),
            source,
            severity,
            description: description.into(),
            channel: channel.into(),
            message: message.clone(),
        };
        let deliveries = [
            (Channel::Journal, notice("journal")),
            (Channel::Dbus, notice("dbus")),
        ];
        let notifier = self.sys.notifier.clone();
        tokio::spawn(async move {
            for (channel, notice) in deliveries {
                let _ = notifier.notify(&channel, &notice).await;
            }
        });
    }
}
