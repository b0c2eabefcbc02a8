//! The network mitigations in force, as the ledger has them, and the
//! reconcile that keeps the kernel's table `inet antibody` in line with
//! them (DESIGN.md §4): at start, and every `nft.reconcile_interval_secs`
//! (throttled units are checked by `unit_holds`, in a task of their own).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Engine;
use crate::plan::{actions_of, ActionState, Event};
use crate::sys::nft::{owner, Claim, Drift, Element, FirewallError};
use crate::time::now_ms;

/// Action types whose applied changes are firewall elements.
const NETWORK_ACTIONS: [&str; 2] = ["isolate_socket", "throttle_entity"];

impl Engine {
    /// Applied, not reverted, not yet expired isolations and address
    /// throttles, each with the element its `changes` recorded and the
    /// deadline of its timed revert.
    pub fn active_network_claims(&self) -> Vec<Claim> {
        let now = now_ms();
        let inner = self.lock();
        actions_of(inner.state.plans.values())
            .filter(|(_, _, a)| {
                a.state == ActionState::Applied && NETWORK_ACTIONS.contains(&a.seed.kind.as_str())
            })
            .filter_map(|(plan, index, action)| {
                let element = Element::from_record(&action.changes.as_ref()?["element"])?;
                let until_ms = action.revert_at_ms.filter(|until| *until > now)?;
                Some(Claim {
                    owner: owner(&plan.id, index),
                    element,
                    until_ms,
                })
            })
            .collect()
    }

    /// One reconcile: puts back what the kernel lost and records the drift.
    pub async fn reconcile_firewall(&self) -> Result<Drift, FirewallError> {
        let drift = self
            .sys
            .firewall
            .reconcile(self.active_network_claims())
            .await?;
        if !drift.is_empty() {
            let restored = drift
                .restored
                .iter()
                .map(|(e, secs)| json!({"element": e.to_record(), "seconds": secs}))
                .collect();
            let what = if drift.table_rebuilt {
                "the table inet antibody was missing or damaged and was rebuilt"
            } else {
                "elements were missing from inet antibody"
            };
            self.record_agent(Event::NftDrift {
                table_rebuilt: drift.table_rebuilt,
                restored,
                detail: format!(
                    "{what}; {} isolation(s)/throttle(s) restored with their remaining time",
                    drift.restored.len()
                ),
            })
            .await;
        }
        Ok(drift)
    }

    /// Waits one `nft.reconcile_interval_secs` (read each round, so a
    /// reload takes effect); false once the agent is stopping.
    pub(super) async fn next_reconcile_round(&self) -> bool {
        let every = Duration::from_secs(self.config().nft.reconcile_interval_secs.max(1));
        tokio::time::sleep(every).await;
        !self.is_stopping()
    }

    /// Reconciles every `nft.reconcile_interval_secs` (read each round, so a
    /// reload takes effect) until the agent stops.
    pub async fn reconcile_loop(self: Arc<Self>) {
        let mut last_error: Option<String> = None;
        while self.next_reconcile_round().await {
            match self.reconcile_firewall().await {
                Ok(_) => last_error = None,
                Err(e) => {
                    // Once per distinct failure, not every few seconds.
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        eprintln!("<3>antibodyd: reconcile of inet antibody failed: {text}");
                        last_error = Some(text);
                    }
                }
            }
        }
    }
}
