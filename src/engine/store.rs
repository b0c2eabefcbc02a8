//! What the engine keeps under `state.dir` besides the ledger (which stays
//! the only source of truth; both are rebuilt from it when missing):
//! - `plans/<id>.json`: finished plans evicted from memory, so memory stays
//!   bounded while `GetPlan` still answers for old plans;
//! - `checkpoint.json`: the engine's live plans at a known ledger position,
//!   so a start replays only the records after it, not the whole ledger.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::Position;
use crate::plan::Plan;

const CHECKPOINT: &str = "checkpoint.json";
const CHECKPOINT_VERSION: u32 = 1;

fn archive_path(state_dir: &Path, id: &str) -> Option<PathBuf> {
    // Ids are UUIDs; anything else never names a file.
    uuid::Uuid::parse_str(id).ok()?;
    Some(state_dir.join("plans").join(format!("{id}.json")))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("a file in a directory");
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Threads that write and fsync archive files at once at start, before
/// `READY=1`: concurrent fsyncs share the file system's journal commits
/// (measured here: 1.18 ms a file one at a time, 0.33 ms with 16 threads).
pub const ARCHIVE_THREADS_AT_START: usize = 16;
/// ... and while the agent serves: under a flood of distinct alerts every
/// plan past `state.keep_finished_plans` is archived within seconds, and 16
/// writers on 2 cores doubled `Status`'s p99 (tests/t2_flood.rs); two
/// leave the cores to the bus interface and the plans.
pub const ARCHIVE_THREADS_SERVING: usize = 2;

/// Archives finished plans: each file is written, fsynced and renamed into
/// place, then the directory is fsynced once. Only the files written are
/// synced, never the whole file system (a `syncfs` waits for every other
/// writer's dirty data on a busy host).
pub fn archive_plans(state_dir: &Path, plans: &[Plan], writers: usize) -> io::Result<()> {
    let dir = state_dir.join("plans");
    fs::create_dir_all(&dir)?;
    let chunk = plans.len().div_ceil(writers.max(1)).max(1);
    std::thread::scope(|scope| {
        let writers: Vec<_> = plans
            .chunks(chunk)
            .map(|some| {
                scope.spawn(move || some.iter().try_for_each(|p| archive_one(state_dir, p)))
            })
            .collect();
        writers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("an archive writer panicked")))
        })
    })?;
    File::open(&dir)?.sync_all()
}

fn archive_one(state_dir: &Path, plan: &Plan) -> io::Result<()> {
    crate::sys::sdnotify::note_start_progress(1);
    let path = archive_path(state_dir, &plan.id)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "plan id is not a UUID"))?;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(plan)?)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)
}

/// Removes the archived plans whose every record is gone from the ledger
/// (the newest before `first_kept_seq`) and that hold no mitigation in
/// force, with their hot_patch backups: (plans, backups) removed. A plan
/// with a patch still in force keeps its archive and backup: a rollback
/// needs them. Sequence numbers decide, never the clock.
pub fn prune_archives(state_dir: &Path, first_kept_seq: u64) -> io::Result<(u64, u64)> {
    let (plans_dir, backups_dir) = (state_dir.join("plans"), state_dir.join("backups"));
    let entries = match fs::read_dir(&plans_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let backups: Vec<String> = fs::read_dir(&backups_dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let (mut plans, mut removed_backups) = (0, 0);
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(plan) = name
            .strip_suffix(".json")
            .and_then(|id| load_archived(state_dir, id))
        else {
            continue;
        };
        // Without `last_seq`: created before the cut, and nothing that
        // records later (no rollback, no timed end).
        let gone = if plan.last_seq > 0 {
            plan.last_seq < first_kept_seq
        } else {
            plan.seq < first_kept_seq
                && plan.rollback.is_none()
                && plan.actions.iter().all(|a| a.revert_at_ms.is_none())
        };
        if !gone || plan.in_force_count() > 0 {
            continue;
        }
        fs::remove_file(entry.path())?;
        plans += 1;
        let prefix = format!("{}.", plan.id);
        for backup in backups.iter().filter(|b| b.starts_with(&prefix)) {
            fs::remove_file(backups_dir.join(backup))?;
            removed_backups += 1;
        }
    }
    File::open(&plans_dir)?.sync_all()?;
    if removed_backups > 0 {
        File::open(&backups_dir)?.sync_all()?;
    }
    Ok((plans, removed_backups))
}

/// Mitigations in force in the archived plans other than `in_memory`
/// (a start without a usable checkpoint after retention: see
/// `Engine::open`).
pub fn archived_in_force(state_dir: &Path, in_memory: &std::collections::HashSet<String>) -> usize {
    let Ok(entries) = fs::read_dir(state_dir.join("plans")) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
        .filter(|id| !in_memory.contains(id))
        .filter_map(|id| load_archived(state_dir, &id))
        .map(|plan| plan.in_force_count())
        .sum()
}

pub fn load_archived(state_dir: &Path, id: &str) -> Option<Plan> {
    let bytes = fs::read(archive_path(state_dir, id)?).ok()?;
    let mut plan: Plan = serde_json::from_slice(&bytes).ok()?;
    plan.restore_derived();
    Some(plan)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub segment: u64,
    pub offset: u64,
    pub seq: u64,
    pub hash: String,
    /// The chain's state as last verified in full.
    pub chain_ok: bool,
    pub chain_broken_at: Option<u64>,
    pub chain_report: String,
    /// Mitigations in force in plans archived out of memory (a hot_patch
    /// not rolled back), so `ActiveMitigations` counts them after a start.
    #[serde(default)]
    pub archived_active: usize,
    /// Finished plans archived while their dedupe window runs: an
    /// identical alert after a restart still returns them.
    #[serde(default)]
    pub archived_dedupe: Vec<super::state::ArchivedDedupe>,
    /// Playbook offences of archived plans: repeat offenders stay repeat
    /// offenders after a restart.
    #[serde(default)]
    pub archived_offences: Vec<super::offences::ArchivedOffence>,
    pub plans: Vec<Plan>,
}

impl Checkpoint {
    pub fn position(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.offset,
            tip: crate::ledger::Tip {
                seq: self.seq,
                hash: self.hash.clone(),
            },
        }
    }
}

pub fn save_checkpoint(state_dir: &Path, checkpoint: &Checkpoint) -> io::Result<()> {
    write_atomic(
        &state_dir.join(CHECKPOINT),
        &serde_json::to_vec(checkpoint)?,
    )
}

/// The checkpoint, if there is a readable one of this version.
pub fn load_checkpoint(state_dir: &Path) -> Option<Checkpoint> {
    let bytes = fs::read(state_dir.join(CHECKPOINT)).ok()?;
    let mut checkpoint: Checkpoint = serde_json::from_slice(&bytes).ok()?;
    if checkpoint.version != CHECKPOINT_VERSION {
        return None;
    }
    for plan in &mut checkpoint.plans {
        plan.restore_derived();
    }
    Some(checkpoint)
}

pub fn new_checkpoint(
    position: &Position,
    chain: (bool, Option<u64>, String),
    archived_active: usize,
    archived_dedupe: Vec<super::state::ArchivedDedupe>,
    archived_offences: Vec<super::offences::ArchivedOffence>,
    plans: Vec<Plan>,
) -> Checkpoint {
    Checkpoint {
        version: CHECKPOINT_VERSION,
        segment: position.segment,
        offset: position.offset,
        seq: position.tip.seq,
        hash: position.tip.hash.clone(),
        chain_ok: chain.0,
        chain_broken_at: chain.1,
        chain_report: chain.2,
        archived_active,
        archived_dedupe,
        archived_offences,
        plans,
    }
}
