//! Rebuilding the engine's state at start (DESIGN.md §4): from the
//! checkpoint plus the records after it when the checkpoint matches the
//! ledger, else from every record. Either way each record is folded exactly
//! as the running engine folded it.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::archive;
use super::store::load_checkpoint;
use crate::ledger::{record_at, scan_from, Position, Record, ScanReport};
use crate::plan::{Event, Plan};
use crate::time::parse_rfc3339;

pub struct Replayed {
    pub plans: Vec<Plan>,
    /// The report of what was read: the tail after the checkpoint, or all.
    pub scan: ScanReport,
    /// The chain's health: the tail's if it is broken, else the checkpoint's
    /// last full verification (or this full scan's).
    pub chain: (bool, Option<u64>, String),
    pub from_checkpoint: bool,
    /// The checkpoint's record (0 without one).
    pub checkpoint_seq: u64,
    /// Mitigations in force in archived plans, as the checkpoint counted.
    pub archived_active: usize,
    /// Archived plans' dedupe entries, as the checkpoint kept them.
    pub archived_dedupe: Vec<super::state::ArchivedDedupe>,
    /// Archived plans' playbook offences, as the checkpoint kept them.
    pub archived_offences: Vec<super::offences::ArchivedOffence>,
    /// Records whose kind this build does not know (written by a newer one).
    pub unknown_records: u64,
    pub note: Option<String>,
}

pub fn replay(ledger_dir: &Path, state_dir: &Path) -> io::Result<Replayed> {
    let mut note = None;
    if let Some(checkpoint) = load_checkpoint(state_dir) {
        let position = checkpoint.position();
        if record_at(ledger_dir, &position).unwrap_or(false) {
            let plans = checkpoint
                .plans
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect();
            let archived_active = checkpoint.archived_active;
            let archived_dedupe = checkpoint.archived_dedupe;
            let archived_offences = checkpoint.archived_offences;
            let stored = (
                checkpoint.chain_ok,
                checkpoint.chain_broken_at,
                checkpoint.chain_report,
            );
            let mut replayed = fold(
                ledger_dir,
                state_dir,
                Some(&position),
                plans,
                archived_active,
            )?;
            if replayed.scan.ok() {
                replayed.chain = stored;
            }
            replayed.archived_dedupe = archived_dedupe;
            replayed.archived_offences = archived_offences;
            replayed.from_checkpoint = true;
            replayed.checkpoint_seq = position.tip.seq;
            return Ok(replayed);
        }
        note = Some(format!(
            "the checkpoint (seq {}) does not match the ledger; replaying the whole ledger",
            checkpoint.seq
        ));
    }
    let mut replayed = fold(ledger_dir, state_dir, None, HashMap::new(), 0)?;
    replayed.note = note;
    Ok(replayed)
}

/// Folds one record into `plans`, as the running engine folded it: a
/// `plan_created` makes the plan, any other plan record updates it (taken
/// from `elsewhere` first when it is not in `plans`, such as an archived
/// plan). False when the record's kind is unknown to this build.
pub fn fold_record(
    plans: &mut HashMap<String, Plan>,
    record: &Record,
    mut elsewhere: impl FnMut(&str) -> Option<Plan>,
) -> bool {
    let Ok(event) = Event::from_parts(&record.kind, &record.payload) else {
        return false;
    };
    let ts_ms = parse_rfc3339(&record.ts).unwrap_or(0);
    match (event, &record.plan_id) {
        (Event::PlanCreated { plan }, _) => {
            plans.insert(plan.id.clone(), Plan::from_seed(plan, record.seq, ts_ms));
        }
        (event, Some(id)) => {
            if !plans.contains_key(id) {
                if let Some(plan) = elsewhere(id) {
                    plans.insert(id.clone(), plan);
                }
            }
            // A copy from elsewhere may already hold this record: an
            // archived plan taken back after the checkpoint (a rollback)
            // and archived again before a crash.
            if let Some(plan) = plans.get_mut(id).filter(|p| record.seq > p.last_seq) {
                plan.apply_event(&event, ts_ms);
                plan.last_seq = record.seq;
            }
        }
        (_, None) => {}
    }
    true
}

fn fold(
    ledger_dir: &Path,
    state_dir: &Path,
    start: Option<&Position>,
    mut plans: HashMap<String, Plan>,
    mut archived_active: usize,
) -> io::Result<Replayed> {
    let mut unknown_records = 0;
    let checkpoint_seq = start.map_or(0, |p| p.tip.seq);
    // Whether a plan came back from the archive in a state newer than the
    // checkpoint counted it in (see below).
    let mut recount = false;
    let scan = scan_from(ledger_dir, start, |record| {
        crate::sys::sdnotify::note_start_progress(1);
        let folded = fold_record(&mut plans, record, |id| {
            // A plan archived before the checkpoint may have been taken
            // back into memory (for a rollback) after it: counted among
            // the archived plans' mitigations until now; from here, among
            // those in memory.
            let plan = archive::load(state_dir, id)?;
            if plan.last_seq > checkpoint_seq {
                // Archived again after the checkpoint: what it had in
                // force then is not what it has now.
                recount = true;
            }
            archived_active = archived_active.saturating_sub(plan.in_force_count());
            Some(plan)
        });
        if !folded {
            unknown_records += 1;
        }
    })?;
    if recount {
        let in_memory = plans.keys().cloned().collect();
        archived_active = archive::in_force(state_dir, &in_memory);
    }
    let chain = (scan.ok(), scan.broken_at, scan.report.clone());
    Ok(Replayed {
        plans: plans.into_values().collect(),
        scan,
        chain,
        from_checkpoint: false,
        checkpoint_seq: 0,
        archived_active,
        archived_dedupe: Vec::new(),
        archived_offences: Vec::new(),
        unknown_records,
        note: None,
    })
}
