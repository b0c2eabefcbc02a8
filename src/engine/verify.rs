//! `VerifyLedger`: walks of the whole chain, one at a time, and the
//! chain's health that `Status` and `Healthy` report. A break is recorded
//! at critical priority and never stops the agent.

use std::sync::atomic::Ordering;

use futures_util::future::FutureExt;

use super::{Engine, LedgerHealth};
use crate::events::AgentEvent;
use crate::ledger;
use crate::plan::Event;

impl Engine {
    /// Re-walks the whole chain (off the async threads) and remembers the
    /// result. One walk at a time: callers that come while one runs share
    /// its result rather than start another (a loop of callers cannot
    /// keep the disk busy with as many walks).
    pub async fn verify_ledger(&self) -> (bool, String) {
        let walk = {
            let mut slot = crate::sync::lock(&self.verifying);
            match slot.as_ref() {
                Some(walk) => walk.clone(),
                None => {
                    let dir = self.config().ledger.dir.clone();
                    self.ledger_walks.fetch_add(1, Ordering::Relaxed);
                    let files = self.ledger_files.clone();
                    let walk = async move {
                        let reading = files.read_owned().await;
                        let scan = move || {
                            let _reading = reading;
                            ledger::scan(&dir, |_| {})
                        };
                        match tokio::task::spawn_blocking(scan).await {
                            Ok(Ok(scan)) => (scan.ok(), scan.broken_at, scan.report),
                            Ok(Err(e)) => {
                                (false, None, format!("the ledger could not be read: {e}"))
                            }
                            Err(e) => (false, None, format!("verification task failed: {e}")),
                        }
                    }
                    .boxed()
                    .shared();
                    *slot = Some(walk.clone());
                    walk
                }
            }
        };
        let (ok, broken_at, report) = walk.clone().await;
        {
            let mut slot = crate::sync::lock(&self.verifying);
            if slot.as_ref().is_some_and(|w| w.ptr_eq(&walk)) {
                *slot = None;
            }
        }
        let newly_broken = {
            let mut health = self.ledger_health.lock().unwrap_or_else(|p| p.into_inner());
            let newly = !ok && health.ok;
            *health = LedgerHealth {
                ok,
                broken_at,
                report: report.clone(),
            };
            newly
        };
        if newly_broken {
            self.note_chain_broken().await;
        }
        self.emit(AgentEvent::CountersChanged);
        (ok, report)
    }

    /// How many walks of the chain `VerifyLedger` has started (callers
    /// that shared a running walk do not count).
    pub fn ledger_walks(&self) -> u64 {
        self.ledger_walks.load(Ordering::Relaxed)
    }

    /// Records that the chain is broken, at critical priority. The agent
    /// keeps working: stopping would hand an attacker an off switch.
    pub async fn note_chain_broken(&self) {
        let health = self.ledger_health();
        if let Some(broken_at) = health.broken_at {
            self.record_agent(Event::ChainBroken {
                broken_at,
                report: health.report,
            })
            .await;
        }
    }

    pub fn ledger_health(&self) -> LedgerHealth {
        self.ledger_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
