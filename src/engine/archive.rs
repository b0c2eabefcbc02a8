//! Finished plans evicted from memory, under `state.dir/plans/`, so memory
//! stays bounded while `GetPlan` (and a rollback) still reach old plans.
//! The ledger stays the source of truth; the archive is what lets a start
//! from a checkpoint skip the records of plans it no longer holds.
//!
//! A plan goes to one of 256 bucket files, `bucket-XX.jsonl`, `XX` the
//! first byte of its id: a line `<id> <plan JSON>` appended to the file.
//! Earlier versions wrote a file per plan and fsynced it; creating a small
//! file cost 230–450 µs of system time on this machine's ext4 whatever its
//! fsync, about half of a plan's whole cost under a sustained load
//! (BENCHMARKS.md, "Where a plan's CPU goes"). An append costs a few µs.
//!
//! - **Newest wins.** A plan taken back into memory (a rollback) and
//!   evicted again is appended again to the same bucket. Of its copies,
//!   the one that folded the newest ledger record is the plan (the later
//!   line when two are level). No index is kept: a lookup reads one
//!   bucket, 1/256 of the archive.
//! - **Durable before the checkpoint that needs it.** Appends are not
//!   fsynced one by one. A plan leaves the engine's memory once appended,
//!   but until the next checkpoint a start still replays it from the
//!   ledger (it is in the older checkpoint, or its records follow it).
//!   [`Archive::sync`] fsyncs the buckets written since the last one and
//!   runs before every checkpoint is saved; the ledger's retention only
//!   follows a checkpoint.
//! - **A torn line is skipped.** A crash mid-append can leave a line
//!   without its end, which no checkpoint depended on: readers skip any
//!   line that is not a whole `<id> <JSON>` line of the id they look for,
//!   and an append to a file whose last byte is not a newline starts with
//!   one, so the torn line never swallows the next.
//! - **Retention rewrites a bucket** without the plans whose records are
//!   all gone (and without stale copies): to a temporary, fsynced, renamed
//!   over it. A plan's hot_patch backups go first: a crash between the two
//!   leaves an archived plan with nothing in force and no backup, which
//!   nothing reads; the other order would leave backups no plan names.
//! - Files `<id>.json`, one per plan, from earlier versions, are moved into
//!   the buckets once, at start, before the ledger is replayed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::plan::Plan;

const BUCKET_PREFIX: &str = "bucket-";
const BUCKET_SUFFIX: &str = ".jsonl";

fn plans_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("plans")
}

/// Ids are UUIDs as the uuid crate writes them (36 characters, lower-case
/// hex): anything else never names an archived plan.
fn canonical_id(id: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(id)
        .ok()
        .filter(|u| u.hyphenated().to_string() == id)
}

/// The bucket of a plan id: the first byte of the UUID.
fn bucket_of(id: &str) -> Option<u8> {
    canonical_id(id).map(|u| u.as_bytes()[0])
}

fn bucket_path(state_dir: &Path, bucket: u8) -> PathBuf {
    plans_dir(state_dir).join(format!("{BUCKET_PREFIX}{bucket:02x}{BUCKET_SUFFIX}"))
}

fn bucket_paths(state_dir: &Path) -> impl Iterator<Item = (u8, PathBuf)> + '_ {
    (0..=u8::MAX).map(move |b| (b, bucket_path(state_dir, b)))
}

/// The plan JSON of a whole line of plan `id`, if `line` is one.
fn line_plan<'a>(line: &'a [u8], id: &str) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(id.as_bytes())?.strip_prefix(b" ")?;
    rest.strip_suffix(b"\n")
}

/// The plan of a line, if it parses and is the plan the line names.
fn parse_plan(json: &[u8], id: &str) -> Option<Plan> {
    let mut plan: Plan = serde_json::from_slice(json).ok()?;
    if plan.id != id {
        return None;
    }
    plan.restore_derived();
    Some(plan)
}

/// Calls `each(line)` for every whole line of a bucket (newline included),
/// in order; a last line without its newline (a torn append) is skipped.
fn for_each_line(path: &Path, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let mut reader = match File::open(path) {
        Ok(file) => io::BufReader::with_capacity(1 << 16, file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.ends_with(b"\n") {
            each(&line);
        }
    }
}

/// The id a whole line starts with, if it is a canonical plan id.
fn line_id(line: &[u8]) -> Option<&str> {
    let id = std::str::from_utf8(line.get(..36)?).ok()?;
    (line.get(36) == Some(&b' ') && bucket_of(id).is_some()).then_some(id)
}

/// The newest archived copy of plan `id`. Other plans' lines cost a byte
/// comparison each; a damaged copy answers as the one before it would.
pub fn load(state_dir: &Path, id: &str) -> Option<Plan> {
    let bucket = bucket_of(id)?;
    let mut newest: Option<Plan> = None;
    let found = for_each_line(&bucket_path(state_dir, bucket), |line| {
        let Some(plan) = line_plan(line, id).and_then(|json| parse_plan(json, id)) else {
            return;
        };
        if newest.as_ref().is_none_or(|kept| supersedes(&plan, kept)) {
            newest = Some(plan);
        }
    });
    found.ok()?;
    newest
}

/// Whether copy `later` (read after `kept`) is the plan rather than
/// `kept`: its newest record is as new or newer. Position alone would do
/// as long as copies are appended in the order they were made; this holds
/// whatever order a crash or a migration left them in.
fn supersedes(later: &Plan, kept: &Plan) -> bool {
    later.last_seq >= kept.last_seq
}

/// Mitigations in force in the archived plans other than `in_memory`.
pub fn in_force(state_dir: &Path, in_memory: &HashSet<String>) -> usize {
    bucket_paths(state_dir)
        .filter_map(|(_, path)| read_bucket(&path).ok())
        .flat_map(|bucket| bucket.newest)
        .filter(|(id, _)| !in_memory.contains(id))
        .filter_map(|(_, (_, plan))| plan)
        .map(|plan| plan.in_force_count())
        .sum()
}

/// A bucket's newest line per plan, as retention sees it.
#[derive(Default)]
struct BucketLines {
    /// Each id's newest whole line, raw, and its plan if this build can
    /// read it.
    newest: HashMap<String, (Vec<u8>, Option<Plan>)>,
    /// Lines that name no plan: kept as they are, never judged.
    other: Vec<Vec<u8>>,
    /// Lines in all (more than `newest` and `other` means stale copies).
    lines: usize,
}

fn read_bucket(path: &Path) -> io::Result<BucketLines> {
    let mut bucket = BucketLines::default();
    for_each_line(path, |line| {
        bucket.lines += 1;
        let Some(id) = line_id(line) else {
            bucket.other.push(line.to_vec());
            return;
        };
        let plan = line_plan(line, id).and_then(|json| parse_plan(json, id));
        // A readable copy older than the one kept is stale; an unreadable
        // line is never judged older.
        let older = match (bucket.newest.get(id), &plan) {
            (Some((_, Some(kept))), Some(plan)) => !supersedes(plan, kept),
            _ => false,
        };
        if !older {
            bucket.newest.insert(id.to_string(), (line.to_vec(), plan));
        }
    })?;
    Ok(bucket)
}

/// Whether every record of an archived plan is before `first_kept_seq`,
/// so the ledger no longer holds it. Sequence numbers decide, never the
/// clock.
fn records_gone(plan: &Plan, first_kept_seq: u64) -> bool {
    if plan.last_seq > 0 {
        plan.last_seq < first_kept_seq
    } else {
        // Without `last_seq`: created before the cut, and nothing that
        // records later (no rollback, no timed end).
        plan.seq < first_kept_seq
            && plan.rollback.is_none()
            && plan.actions.iter().all(|a| a.revert_at_ms.is_none())
    }
}

/// What was written since the last [`Archive::sync`].
#[derive(Default)]
struct Unsynced {
    buckets: BTreeSet<u8>,
    /// A bucket file was created or renamed: the directory needs an fsync.
    directory: bool,
    /// An fsync failed: the kernel may have dropped those pages and says
    /// so once, so a later fsync's success would be a lie. No checkpoint
    /// is saved again in this process (the older one and the ledger still
    /// hold every plan); a restart replays from it.
    failed: Option<String>,
}

/// The archive's writer. Readers ([`load`]) take no lock: appends are
/// whole lines (a reader skips a last line without its newline) and a
/// rewrite is a rename.
pub struct Archive {
    state_dir: PathBuf,
    /// Held by appends, syncs and rewrites: a rewrite must not lose an
    /// append made between its read and its rename.
    unsynced: Mutex<Unsynced>,
    /// The ledger cut the last prune of this process finished at: a round
    /// with the same cut has nothing new to remove.
    pruned_at: Mutex<Option<u64>>,
}

impl Archive {
    /// The archive under `state_dir`, with an earlier version's files moved
    /// into it. Runs before the ledger is replayed, so replay reads one
    /// format.
    pub fn open(state_dir: &Path) -> io::Result<Archive> {
        let archive = Archive {
            state_dir: state_dir.to_path_buf(),
            unsynced: Mutex::default(),
            pruned_at: Mutex::default(),
        };
        archive.move_legacy_files()?;
        Ok(archive)
    }

    fn writer(&self) -> MutexGuard<'_, Unsynced> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `plans` to their buckets, one write per bucket. Not durable
    /// until the next [`Archive::sync`].
    pub fn append(&self, plans: &[Plan]) -> io::Result<()> {
        let mut by_bucket = Vec::with_capacity(plans.len());
        for plan in plans {
            let bucket = bucket_of(&plan.id).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "plan id is not a UUID")
            })?;
            by_bucket.push((bucket, plan));
        }
        // Stable: a plan twice in one call keeps its order.
        by_bucket.sort_by_key(|(bucket, _)| *bucket);
        let mut unsynced = self.writer();
        fs::create_dir_all(plans_dir(&self.state_dir))?;
        // One bucket's lines at a time: a round of many plans never holds
        // all of them serialized at once.
        let mut lines = Vec::new();
        for chunk in by_bucket.chunk_by(|a, b| a.0 == b.0) {
            lines.clear();
            for (_, plan) in chunk {
                lines.extend_from_slice(plan.id.as_bytes());
                lines.push(b' ');
                serde_json::to_writer(&mut lines, plan)?;
                lines.push(b'\n');
            }
            let bucket = chunk[0].0;
            let path = bucket_path(&self.state_dir, bucket);
            let created = !path.exists();
            append_whole_lines(&path, &lines)?;
            unsynced.buckets.insert(bucket);
            unsynced.directory |= created;
        }
        Ok(())
    }

    /// Makes every append so far durable: before a checkpoint that no
    /// longer holds those plans is saved.
    pub fn sync(&self) -> io::Result<()> {
        let mut unsynced = self.writer();
        if let Some(failed) = &unsynced.failed {
            return Err(io::Error::other(format!(
                "an earlier fsync of the archive failed ({failed}); no checkpoint until a restart"
            )));
        }
        let synced = (|| -> io::Result<()> {
            for bucket in unsynced.buckets.iter().copied() {
                File::open(bucket_path(&self.state_dir, bucket))?.sync_data()?;
            }
            if unsynced.directory {
                File::open(plans_dir(&self.state_dir))?.sync_all()?;
            }
            Ok(())
        })();
        match synced {
            Ok(()) => {
                *unsynced = Unsynced::default();
                Ok(())
            }
            Err(e) => {
                unsynced.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Whether every append so far is durable.
    pub fn all_synced(&self) -> bool {
        let unsynced = self.writer();
        unsynced.buckets.is_empty() && !unsynced.directory && unsynced.failed.is_none()
    }

    /// Removes the archived plans whose every record is gone from the
    /// ledger (the newest before `first_kept_seq`) and that hold no
    /// mitigation in force, with their hot_patch backups: (plans, backups)
    /// removed. A plan with a patch still in force keeps its archive and
    /// backup: a rollback needs them. Stale copies go with the rewrite.
    pub fn prune(&self, first_kept_seq: u64) -> io::Result<(u64, u64)> {
        let mut pruned_at = self.pruned_at.lock().unwrap_or_else(|p| p.into_inner());
        if *pruned_at == Some(first_kept_seq) {
            return Ok((0, 0));
        }
        let backups_dir = self.state_dir.join("backups");
        let backups: Vec<String> = fs::read_dir(&backups_dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        let (mut removed, mut failed) = ((0, 0), Vec::new());
        let mut unsynced = self.writer();
        // One bucket that cannot be pruned keeps its plans; the others are
        // still pruned, and the round reports it (and runs again).
        for (bucket, path) in bucket_paths(&self.state_dir) {
            match prune_bucket(&path, first_kept_seq, &backups_dir, &backups) {
                Ok(Some((plans, removed_backups))) => {
                    unsynced.buckets.remove(&bucket);
                    unsynced.directory = true;
                    removed.0 += plans;
                    removed.1 += removed_backups;
                }
                Ok(None) => {}
                Err(e) => failed.push(format!("{}: {e}", path.display())),
            }
        }
        if unsynced.directory {
            File::open(plans_dir(&self.state_dir))?.sync_all()?;
            unsynced.directory = false;
        }
        if !failed.is_empty() {
            return Err(io::Error::other(format!(
                "pruned {} plan(s), but not in: {}",
                removed.0,
                failed.join("; ")
            )));
        }
        *pruned_at = Some(first_kept_seq);
        Ok(removed)
    }

    /// Moves `<id>.json` files (one per plan, from earlier versions) into
    /// their buckets, durably, then removes them, a thousand at a time (an
    /// old archive may hold millions). A crash half-way moves the rest
    /// again at the next start: the same copy, appended twice. A file that
    /// is not the plan its name says stays where it is, with a warning.
    fn move_legacy_files(&self) -> io::Result<()> {
        let dir = plans_dir(&self.state_dir);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let (mut files, mut leftovers) = (Vec::new(), Vec::new());
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().to_string();
            match name.strip_suffix(".json") {
                Some(id) if bucket_of(id).is_some() => {
                    files.push((id.to_string(), dir.join(&name)))
                }
                _ if name.ends_with(".tmp") => leftovers.push(dir.join(&name)),
                _ => {}
            }
        }
        if files.is_empty() && leftovers.is_empty() {
            return Ok(());
        }
        let mut moved = 0;
        for batch in files.chunks(1000) {
            let mut plans = Vec::with_capacity(batch.len());
            let mut paths = Vec::with_capacity(batch.len());
            for (id, file) in batch {
                crate::sys::sdnotify::note_start_progress(1);
                match fs::read(file).ok().and_then(|b| parse_plan(&b, id)) {
                    Some(plan) => {
                        plans.push(plan);
                        paths.push(file);
                    }
                    None => eprintln!(
                        "<4>antibodyd: {} is not a readable plan {id}; left where it is",
                        file.display()
                    ),
                }
            }
            self.append(&plans)?;
            self.sync()?;
            for file in paths {
                fs::remove_file(file)?;
            }
            moved += plans.len();
        }
        for leftover in leftovers {
            fs::remove_file(leftover)?;
        }
        File::open(&dir)?.sync_all()?;
        eprintln!(
            "<6>antibodyd: moved {moved} archived plan file(s) into {}",
            dir.display()
        );
        Ok(())
    }
}

/// Rewrites one bucket without its gone plans and stale copies, their
/// backups removed first: (plans, backups) removed, or `None` when it
/// had nothing to drop. Lines this build cannot read are kept as they
/// are (a newer build's, a damaged one): never judged, never dropped.
fn prune_bucket(
    path: &Path,
    first_kept_seq: u64,
    backups_dir: &Path,
    backups: &[String],
) -> io::Result<Option<(u64, u64)>> {
    let bucket = read_bucket(path)?;
    let gone: HashSet<&String> = bucket
        .newest
        .iter()
        .filter(|(_, (_, plan))| {
            plan.as_ref()
                .is_some_and(|p| records_gone(p, first_kept_seq) && p.in_force_count() == 0)
        })
        .map(|(id, _)| id)
        .collect();
    if gone.is_empty() && bucket.lines == bucket.newest.len() + bucket.other.len() {
        return Ok(None);
    }
    let mut removed_backups = 0;
    for id in &gone {
        let prefix = format!("{id}.");
        for backup in backups.iter().filter(|b| b.starts_with(&prefix)) {
            match fs::remove_file(backups_dir.join(backup)) {
                Ok(()) => removed_backups += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if removed_backups > 0 {
        File::open(backups_dir)?.sync_all()?;
    }
    let mut kept = Vec::new();
    for line in &bucket.other {
        kept.extend_from_slice(line);
    }
    for (id, (line, _)) in &bucket.newest {
        if !gone.contains(id) {
            kept.extend_from_slice(line);
        }
    }
    rewrite(path, &kept)?;
    Ok(Some((gone.len() as u64, removed_backups)))
}

/// Options for the archive's own files: created 0600 whatever the umask,
/// and never through a symlink planted at the name.
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW);
    options
}

/// Appends `bytes` (whole lines) in one write; after a newline first if a
/// crash left the file's last line without one.
fn append_whole_lines(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = private_file().read(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    let mut torn = false;
    if len > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        torn = last[0] != b'\n';
    }
    if torn {
        let mut whole = Vec::with_capacity(bytes.len() + 1);
        whole.push(b'\n');
        whole.extend_from_slice(bytes);
        file.write_all(&whole)
    } else {
        file.write_all(bytes)
    }
}

/// Replaces `path` with `bytes`, durably: temporary, fsync, rename. The
/// caller fsyncs the directory.
fn rewrite(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = private_file().write(true).truncate(true).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, description: &str, seq: u64) -> Plan {
        use crate::plan::{PlanSeed, Severity, Source};
        let seed = PlanSeed {
            id: id.into(),
            timestamp: "2026-11-30T00:00:00Z".into(),
            source: Source::Manual,
            severity: Severity::Low,
            description: description.into(),
            alert_sha256: "h".into(),
            context: None,
            playbook: None,
            callback: false,
            actions: vec![],
        };
        let mut plan = Plan::from_seed(seed, seq, 1000);
        plan.last_seq = seq;
        plan
    }

    const ID: &str = "3f1c0c6e-8f0a-4c57-9d43-2a3c1c1f0a01";
    const OTHER: &str = "3fa4c0c6-8f0a-4c57-9d43-2a3c1c1f0a02";

    #[test]
    fn the_newest_copy_wins_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        archive.append(&[plan(ID, "first", 1)]).unwrap();
        archive.append(&[plan(OTHER, "other", 2)]).unwrap();
        archive.append(&[plan(ID, "second", 3)]).unwrap();
        assert_eq!(load(dir.path(), ID).unwrap().description, "second");
        // Both share a bucket (0x3f): one file.
        assert_eq!(fs::read_dir(plans_dir(dir.path())).unwrap().count(), 1);
        // A crash mid-append: half a line of a newer copy.
        let path = bucket_path(dir.path(), 0x3f);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(format!("{ID} {{\"id\":\"{ID}\",\"desc").as_bytes())
            .unwrap();
        assert_eq!(load(dir.path(), ID).unwrap().description, "second");
        archive.append(&[plan(OTHER, "other, later", 4)]).unwrap();
        assert_eq!(load(dir.path(), OTHER).unwrap().description, "other, later");
        assert_eq!(load(dir.path(), ID).unwrap().description, "second");
        archive.sync().unwrap();
        assert!(load(dir.path(), "3f1c0c6e-8f0a-4c57-9d43-2a3c1c1f0a03").is_none());
        assert!(load(dir.path(), &ID.to_uppercase()).is_none());
        assert!(load(dir.path(), "../x").is_none());
    }

    #[test]
    fn prune_drops_gone_plans_stale_copies_and_their_backups_first() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        archive
            .append(&[plan(ID, "old", 5), plan(OTHER, "kept", 50)])
            .unwrap();
        archive.append(&[plan(OTHER, "kept, newer", 60)]).unwrap();
        let backups = dir.path().join("backups");
        fs::create_dir_all(&backups).unwrap();
        fs::write(backups.join(format!("{ID}.0.bak")), "b").unwrap();
        fs::write(backups.join(format!("{OTHER}.0.bak")), "b").unwrap();
        assert_eq!(archive.prune(10).unwrap(), (1, 1));
        assert!(load(dir.path(), ID).is_none());
        assert_eq!(load(dir.path(), OTHER).unwrap().description, "kept, newer");
        let lines = fs::read_to_string(bucket_path(dir.path(), 0x3f)).unwrap();
        assert_eq!(lines.lines().count(), 1, "the stale copy went too");
        assert!(backups.join(format!("{OTHER}.0.bak")).exists());
        // The same cut again has nothing to do.
        assert_eq!(archive.prune(10).unwrap(), (0, 0));
    }

    #[test]
    fn prune_keeps_lines_it_cannot_read_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        archive.append(&[plan(ID, "old", 5)]).unwrap();
        let path = bucket_path(dir.path(), 0x3f);
        let newer_build = format!("{OTHER} {{\"id\":\"{OTHER}\",\"a_newer_format\":1}}\n");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(newer_build.as_bytes()).unwrap();
        file.write_all(b"not a plan line\n").unwrap();
        // A line whose JSON is another plan than its id says.
        let liar = serde_json::to_string(&plan(ID, "liar", 99)).unwrap();
        file.write_all(format!("{OTHER} {liar}\n").as_bytes())
            .unwrap();
        assert!(load(dir.path(), OTHER).is_none(), "the liar is not {OTHER}");
        assert_eq!(archive.prune(10).unwrap(), (1, 0));
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"old\""), "{text}");
        assert!(text.contains("not a plan line\n"), "{text}");
        // The newest line of OTHER (the liar) is kept: unreadable, unjudged.
        assert!(text.contains("liar"), "{text}");
    }

    #[test]
    fn the_copy_with_the_newest_record_wins_wherever_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        archive.append(&[plan(ID, "newer", 9)]).unwrap();
        archive
            .append(&[plan(ID, "older, appended later", 4)])
            .unwrap();
        assert_eq!(load(dir.path(), ID).unwrap().description, "newer");
        archive.append(&[plan(ID, "level, later", 9)]).unwrap();
        assert_eq!(load(dir.path(), ID).unwrap().description, "level, later");
        // Retention keeps that one copy.
        assert_eq!(archive.prune(2).unwrap(), (0, 0));
        let text = fs::read_to_string(bucket_path(dir.path(), 0x3f)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(load(dir.path(), ID).unwrap().description, "level, later");
    }

    #[test]
    fn sync_marks_everything_durable() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        assert!(archive.all_synced());
        archive.append(&[plan(ID, "a", 1)]).unwrap();
        assert!(!archive.all_synced());
        archive.sync().unwrap();
        assert!(archive.all_synced());
    }

    #[test]
    fn an_earlier_versions_files_move_into_the_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let plans = plans_dir(dir.path());
        fs::create_dir_all(&plans).unwrap();
        let old = serde_json::to_vec(&plan(ID, "from a file", 7)).unwrap();
        fs::write(plans.join(format!("{ID}.json")), old).unwrap();
        fs::write(plans.join(format!("{OTHER}.tmp")), "half").unwrap();
        // Named for one plan, holding another: left alone.
        let third = "3f000000-8f0a-4c57-9d43-2a3c1c1f0a03";
        let other = serde_json::to_vec(&plan(OTHER, "misnamed", 8)).unwrap();
        fs::write(plans.join(format!("{third}.json")), other).unwrap();
        fs::write(plans.join("notes.txt"), "an operator's").unwrap();
        Archive::open(dir.path()).unwrap();
        assert_eq!(load(dir.path(), ID).unwrap().description, "from a file");
        let mut names: Vec<_> = fs::read_dir(&plans)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "3f000000-8f0a-4c57-9d43-2a3c1c1f0a03.json",
                "bucket-3f.jsonl",
                "notes.txt"
            ]
        );
        assert!(load(dir.path(), OTHER).is_none());
    }
}
