//! The engine's upkeep, in a task of its own so the engine loop (whose
//! heartbeat the watchdog hears) never waits on the disk for it:
//! - finished plans memory need not hold are appended to the archive and
//!   forgotten (made durable before the next checkpoint, `archive.rs`);
//! - a checkpoint is written every [`CHECKPOINT_EVERY_RECORDS`] records or
//!   [`CHECKPOINT_EVERY`] (when anything was written), so a start replays
//!   a bounded tail. Plans may be mid-step: the checkpoint is taken at a
//!   cut where every durable plan record is folded into memory and none
//!   is half-way (the engine's fold gate, held exclusively for the
//!   instant of the copy).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{store, Engine};
use crate::ledger::retention;
use crate::plan::{Event, Plan};
use crate::time::now_ms;

/// How often the upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// A checkpoint after this many records since the last one...
const CHECKPOINT_EVERY_RECORDS: u64 = 10_000;
/// ... or after this long, if anything was written.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(600);

impl Engine {
    /// Archives finished plans memory need not hold, then forgets them.
    /// Blocking (file writes): async callers run it on a
    /// blocking thread.
    pub fn evict_finished(&self) -> std::io::Result<usize> {
        let config = self.config();
        let window_ms = config.queue.dedupe_window_secs.saturating_mul(1000);
        let plans: Vec<Plan> = {
            let mut inner = self.lock();
            // Restarts stay in memory while the flap limiter counts them.
            let flap_window_ms = config.restart.interval_secs.saturating_mul(1000);
            let now = now_ms();
            inner.state.prune_dedupe(now, window_ms);
            inner.state.offences.prune(now);
            inner
                .state
                .evictable(config.state.keep_finished_plans)
                .iter()
                .filter_map(|id| inner.state.plans.get(id))
                .filter(|p| {
                    let finished = p.finished_ms.unwrap_or(u64::MAX);
                    now >= finished.saturating_add(flap_window_ms) || !self.has_flap_limited(p)
                })
                .cloned()
                .collect()
        };
        if plans.is_empty() {
            return Ok(0);
        }
        self.archive.append(&plans)?;
        let mut inner = self.lock();
        for plan in &plans {
            // Only if nothing touched it meanwhile (e.g. a rollback request).
            if inner.state.plans.get(&plan.id) == Some(plan) {
                inner.state.evict(&plan.id);
            }
        }
        // Again: a plan archived just now may already be past its window
        // (a short one), and its entry would hold the ledger back a round.
        inner.state.prune_dedupe(now_ms(), window_ms);
        Ok(plans.len())
    }

    /// Whether every plan evicted so far is durable in the archive: each
    /// checkpoint makes it so before it is saved.
    pub fn archive_synced(&self) -> bool {
        self.archive.all_synced()
    }

    /// The live plans and the ledger position they reflect, as a
    /// checkpoint. Exact only at a cut: at start and stop (nothing runs),
    /// or under the fold gate ([`Engine::checkpoint_now`]).
    fn capture_checkpoint(&self) -> store::Checkpoint {
        let health = self.ledger_health();
        let inner = self.lock();
        store::new_checkpoint(
            &self.ledger.position(),
            (health.ok, health.broken_at, health.report),
            inner.state.archived_active(),
            inner.state.archived_dedupe(),
            inner.state.offences.to_vec(),
            inner.state.plans.values().cloned().collect(),
        )
    }

    /// Writes a checkpoint where nothing runs (at start, at a clean stop).
    pub fn write_checkpoint(&self) -> std::io::Result<()> {
        let checkpoint = self.capture_checkpoint();
        self.archive.sync()?;
        store::save_checkpoint(&self.config().state.dir, &checkpoint)?;
        self.checkpoint_seq.store(checkpoint.seq, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a checkpoint while plans may run: the copy is taken with
    /// the fold gate held exclusively (a write under way finishes and is
    /// folded first; new ones wait that instant), the file is written on a
    /// blocking thread after.
    pub async fn checkpoint_now(self: &Arc<Self>) -> std::io::Result<u64> {
        let checkpoint = {
            let _cut = self.fold_gate.write().await;
            self.capture_checkpoint()
        };
        let dir = self.config().state.dir.clone();
        let seq = checkpoint.seq;
        let archive = self.archive.clone();
        tokio::task::spawn_blocking(move || {
            // The plans it no longer holds are durable in the archive first.
            archive.sync()?;
            store::save_checkpoint(&dir, &checkpoint)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.checkpoint_seq.store(seq, Ordering::Relaxed);
        Ok(seq)
    }

    /// Whether a checkpoint is due: enough records since the last, or long
    /// enough with any.
    fn checkpoint_due(&self, since: Instant) -> bool {
        let written = self
            .ledger
            .records()
            .saturating_sub(self.checkpoint_seq.load(Ordering::Relaxed));
        written >= CHECKPOINT_EVERY_RECORDS || (written > 0 && since.elapsed() >= CHECKPOINT_EVERY)
    }

    /// Retention (`ledger.max_bytes`, `ledger.retain_days`), after a
    /// checkpoint and only while the chain last verified intact (a prune
    /// must never hide a break): removes the oldest segments no start can
    /// need (before the newest checkpoint and the oldest plan in memory),
    /// with the order `ledger::retention` describes (the `ledger_pruned`
    /// record durable first), then the archived plans and backups whose
    /// records are all gone. Walks of the chain wait meanwhile. Returns the
    /// record, when segments went.
    pub async fn prune_ledger(self: &Arc<Self>) -> std::io::Result<Option<Event>> {
        let config = self.config();
        let policy = retention::Policy {
            max_bytes: config.ledger.max_bytes,
            retain_days: config.ledger.retain_days,
        };
        let checkpoint_seq = self.checkpoint_seq.load(Ordering::Relaxed);
        if checkpoint_seq == 0 || (policy.max_bytes == 0 && policy.retain_days == 0) {
            return Ok(None);
        }
        if !self.ledger_health().ok {
            return Ok(None);
        }
        let oldest_plan = self.lock().state.oldest_seq().unwrap_or(u64::MAX);
        let keep_from = checkpoint_seq.min(oldest_plan);
        let ledger_dir = config.ledger.dir.clone();
        let _files = self.ledger_files.write().await;
        let cut = {
            let dir = ledger_dir.clone();
            tokio::task::spawn_blocking(move || {
                retention::remove_leftovers(&dir)?;
                retention::plan(&dir, keep_from, policy, now_ms())
            })
            .await
            .map_err(std::io::Error::other)??
        };
        let mut event = None;
        if let Some(cut) = cut {
            let record = Event::LedgerPruned {
                first_segment: cut.remove.first().map_or(0, |s| s.number),
                last_segment: cut.remove.last().map_or(0, |s| s.number),
                segments: cut.remove.len() as u64,
                bytes: cut.bytes(),
                first_kept_seq: cut.first_kept_seq(),
                prev_hash: cut.anchor.hash.clone(),
            };
            self.record_agent_durably(record.clone())
                .await
                .map_err(|e| std::io::Error::other(format!("the ledger_pruned record: {e}")))?;
            let dir = ledger_dir.clone();
            tokio::task::spawn_blocking(move || retention::execute(&dir, &cut))
                .await
                .map_err(std::io::Error::other)??;
            event = Some(record);
        }
        // Each round, not only when segments went: a round cut short by a
        // crash or an error is finished by the next.
        let archive = self.archive.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let Some(anchor) = retention::read_anchor(&ledger_dir) else {
                return Ok((0, 0));
            };
            archive.prune(anchor.seq.saturating_add(1))
        })
        .await
        .map_err(std::io::Error::other)??;
        if pruned != (0, 0) {
            eprintln!(
                "<6>antibodyd: ledger retention removed {} archived plan(s) and {} hot_patch backup(s) whose records are gone",
                pruned.0, pruned.1
            );
        }
        Ok(event)
    }

    /// Records what the journal mirror had to drop since the last round:
    /// the ledger holds those records; the journal (and any copy of it)
    /// has a gap there, now said in the journal too.
    async fn record_journal_drops(&self) {
        let Some(dropped) = self.mirror.as_ref().and_then(|m| m.take_dropped()) else {
            return;
        };
        // Recorded, and so mirrored too (not to stderr, which journald,
        // behind, may be slow to take).
        self.record_agent(Event::JournalDropped {
            count: dropped.count,
            first_seq: dropped.first_seq,
            last_seq: dropped.last_seq,
        })
        .await;
    }

    /// At stop: waits (at most `grace`) for the journal mirror to hand
    /// every record to journald, then records what it had to drop since
    /// the last upkeep round (the round that would have said it is not
    /// coming) and waits for that record too. False if time ran out: the
    /// ledger keeps every record all the same.
    pub async fn drain_journal_mirror(&self, grace: std::time::Duration) -> bool {
        let Some(mirror) = self.mirror.clone() else {
            return true;
        };
        let deadline = Instant::now() + grace;
        let flush = |mirror: crate::sys::journal::JournalMirror| async move {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::task::spawn_blocking(move || mirror.flush(left))
                .await
                .unwrap_or(false)
        };
        let drained = flush(mirror.clone()).await;
        self.record_journal_drops().await;
        flush(mirror).await && drained
    }

    /// Runs the upkeep every few seconds until the agent stops.
    pub async fn upkeep_loop(self: Arc<Self>) {
        let mut last_checkpoint = Instant::now();
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            if self.is_stopping() {
                return;
            }
            let engine = self.clone();
            match tokio::task::spawn_blocking(move || engine.evict_finished()).await {
                Ok(Err(e)) => eprintln!(
                    "<4>antibodyd: cannot archive finished plans (they stay in memory): {e}"
                ),
                Err(e) => eprintln!("<4>antibodyd: the archive task failed: {e}"),
                Ok(Ok(_)) => {}
            }
            self.record_journal_drops().await;
            if self.checkpoint_due(last_checkpoint) && !self.is_stopping() {
                match self.checkpoint_now().await {
                    Ok(_) => {
                        last_checkpoint = Instant::now();
                        if let Err(e) = self.prune_ledger().await {
                            eprintln!("<4>antibodyd: ledger retention failed (tried again after the next checkpoint): {e}");
                        }
                    }
                    Err(e) => eprintln!(
                        "<4>antibodyd: cannot write the checkpoint (tried again next round): {e}"
                    ),
                }
            }
        }
    }
}
