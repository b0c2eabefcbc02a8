//! `state.dir/checkpoint.json`: the engine's live plans at a known ledger
//! position, so a start replays only the records after it, not the whole
//! ledger (which stays the only source of truth; the checkpoint is rebuilt
//! from it when missing). The plans it no longer holds are in the archive
//! (`archive.rs`), made durable before it is saved.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ledger::Position;
use crate::plan::Plan;

const CHECKPOINT: &str = "checkpoint.json";
const CHECKPOINT_VERSION: u32 = 1;

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
