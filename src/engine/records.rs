//! How the engine writes to the ledger, by what each write promises:
//! - [`Engine::try_record`]: a plan's record, durable or an error, folded
//!   into the plan once durable (under the fold gate);
//! - [`Engine::record`]: a step already taken, retried until durable;
//! - [`Engine::record_all`]: several records of one plan in one write;
//! - [`Engine::record_agent_durably`]: an agent record that must be on
//!   disk before what it announces; [`Engine::record_agent`]: one whose
//!   failure is only logged.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{plan_journal_fields, Engine};
use crate::events::AgentEvent;
use crate::ledger::{self, Durable, Entry, JournalFields};
use crate::plan::Event;

impl Engine {
    /// Appends an event about a plan and folds it in once durable. Returns
    /// the ledger error if the write failed.
    /// The journal fields of a plan's record.
    pub(super) fn journal_fields(&self, plan_id: &str, event: &Event) -> JournalFields {
        let inner = self.lock();
        match inner.state.plans.get(plan_id) {
            Some(plan) => {
                let action = event
                    .action_index()
                    .and_then(|i| plan.actions.get(i))
                    .map(|a| a.seed.kind.clone());
                plan_journal_fields(plan.source.as_str(), plan.severity, action)
            }
            None => Vec::new(),
        }
    }

    pub(super) fn entry(&self, plan_id: &str, event: &Event) -> Entry {
        let (kind, payload) = event.to_parts();
        Entry::new(
            kind,
            Some(plan_id.to_string()),
            &payload,
            self.journal_fields(plan_id, event),
        )
    }

    pub(super) async fn write_one(&self, entry: Entry) -> ledger::writer::AppendResult {
        crate::sys::sdnotify::note_start_progress(1);
        let mut written = self.ledger.write_now(vec![entry]).await;
        written.pop().expect("one answer per entry")
    }

    /// Folds a durable event into its plan.
    pub(super) fn settled(
        &self,
        plan_id: &str,
        event: &Event,
        written: Result<Durable, String>,
    ) -> Result<Durable, String> {
        match written {
            Ok(durable) => {
                self.storage_ok.store(true, Ordering::Relaxed);
                let seq = durable.seq;
                self.lock().state.fold(plan_id, event, seq, durable.ts_ms);
                Ok(durable)
            }
            Err(e) => {
                self.storage_ok.store(false, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub(super) async fn try_record(&self, plan_id: &str, event: Event) -> Result<Durable, String> {
        let _folding = self.fold_gate.read().await;
        let written = self.write_one(self.entry(plan_id, &event)).await;
        self.settled(plan_id, &event, written)
    }

    /// Records several events of one plan in one write (one fdatasync). One
    /// that fails is recorded again, as [`Engine::record`] does.
    pub(super) async fn record_all(&self, plan_id: &str, events: Vec<Event>) {
        let entries = events.iter().map(|e| self.entry(plan_id, e)).collect();
        let folding = self.fold_gate.read().await;
        let written = self.ledger.write_now(entries).await;
        let failed: Vec<Event> = events
            .into_iter()
            .zip(written)
            .filter_map(|(event, written)| {
                self.settled(plan_id, &event, written)
                    .is_err()
                    .then_some(event)
            })
            .collect();
        drop(folding);
        for event in failed {
            self.record(plan_id, event).await;
        }
    }

    /// Like [`Engine::try_record`] for steps already taken: the ledger must
    /// hear of them, so a failed write is retried until it succeeds (the
    /// agent reports itself unhealthy meanwhile).
    pub(super) async fn record(&self, plan_id: &str, event: Event) -> Durable {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.try_record(plan_id, event.clone()).await {
                Ok(durable) => return durable,
                Err(e) => {
                    eprintln!(
                        "<2>antibody: cannot record {} of plan {plan_id}: {e}; retrying",
                        event.kind()
                    );
                    self.emit(AgentEvent::CountersChanged);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Appends an agent-level record (no plan) and says whether it is
    /// durable: for a record that must be on disk before what it announces.
    pub(super) async fn record_agent_durably(&self, event: Event) -> Result<Durable, String> {
        let (kind, payload) = event.to_parts();
        let fields = vec![("PRIORITY", "5".to_string())];
        let written = self
            .write_one(Entry::new(kind, None, &payload, fields))
            .await;
        if written.is_err() {
            self.storage_ok.store(false, Ordering::Relaxed);
        }
        written
    }

    /// Appends an agent-level record (no plan). Failures are logged only.
    pub async fn record_agent(&self, event: Event) {
        let (kind, payload) = event.to_parts();
        let priority = match event {
            Event::ChainBroken { .. } => 2,
            Event::NftDrift { .. } | Event::JournalDropped { .. } => 4,
            _ => 6,
        };
        let fields = vec![("PRIORITY", priority.to_string())];
        let written = self
            .write_one(Entry::new(kind, None, &payload, fields))
            .await;
        if let Err(e) = written {
            self.storage_ok.store(false, Ordering::Relaxed);
            eprintln!("<2>antibody: cannot record {}: {e}", event.kind());
        }
    }
}
