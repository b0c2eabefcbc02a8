//! Ledger retention (`ledger.max_bytes`, `ledger.retain_days`): the
//! oldest closed segments are removed, but never a record a start could
//! still need, never across a break, and never without a trace:
//! - only segments wholly before the newest checkpoint and before the
//!   oldest plan still in memory go (a start replays from the checkpoint,
//!   and without one, from the first kept record: every plan it must
//!   rebuild then begins in a kept segment);
//! - the chain must hold across the cut (the last removed record's hash is
//!   the first kept record's `prev`), and the engine prunes only while the
//!   whole chain last verified intact;
//! - the engine first appends a `ledger_pruned` record naming the cut
//!   (durable), then `anchor.json` records the first kept segment and the
//!   seq and hash its first record follows, then the segments go. The scan
//!   starts the chain at the anchor only when the kept chain holds that
//!   record, so deleting old segments and writing an anchor by hand shows
//!   as a break; segments left below the anchor by a removal cut short are
//!   skipped by the scan and removed by the next round.
//!
//! [`segments_to_remove`] is pure; [`plan`], [`execute`] and
//! [`remove_leftovers`] do the files (blocking).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::record::Record;
use super::segments::{list_segments, sync_dir};

const ANCHOR: &str = "anchor.json";

/// Where the kept chain begins after segments were removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The first kept segment's number.
    pub segment: u64,
    /// The seq and hash of the last removed record: the first kept
    /// record must be `seq + 1` with `prev == hash`.
    pub seq: u64,
    pub hash: String,
}

/// The ledger's anchor, if retention ever removed segments. One that
/// cannot be read is none: the scan then finds the chain broken where the
/// kept records begin, and says so, rather than failing to start.
pub fn read_anchor(dir: &Path) -> Option<Anchor> {
    serde_json::from_slice(&fs::read(dir.join(ANCHOR)).ok()?).ok()
}

fn write_anchor(dir: &Path, anchor: &Anchor) -> io::Result<()> {
    let tmp = dir.join(format!("{ANCHOR}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(anchor)?)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(ANCHOR))?;
    sync_dir(dir)
}

/// A closed segment as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInfo {
    pub number: u64,
    pub path: PathBuf,
    pub bytes: u64,
    pub first: Record,
    pub last_seq: u64,
    pub last_hash: String,
    pub last_ts_ms: u64,
}

/// What retention keeps and removes.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// 0: no size limit.
    pub max_bytes: u64,
    /// 0: no age limit.
    pub retain_days: u64,
}

/// How many of the oldest `closed` segments to remove (pure): while the
/// ledger (`total_bytes`, the open segment included) is over
/// `max_bytes`, or the segment's newest record is older than
/// `retain_days`, and only segments whose records all come before
/// `keep_from_seq` (the newest checkpoint's record and the oldest plan in
/// memory). At least one segment is always kept, for the anchor.
pub fn segments_to_remove(
    closed: &[SegmentInfo],
    total_bytes: u64,
    keep_from_seq: u64,
    policy: Policy,
    now_ms: u64,
) -> usize {
    let retain_ms = policy.retain_days.saturating_mul(86_400_000);
    let mut total = total_bytes;
    let mut removed = 0;
    for segment in closed {
        let too_big = policy.max_bytes > 0 && total > policy.max_bytes;
        let too_old = retain_ms > 0 && segment.last_ts_ms.saturating_add(retain_ms) < now_ms;
        if !(too_big || too_old) || segment.last_seq >= keep_from_seq {
            break;
        }
        total -= segment.bytes;
        removed += 1;
    }
    removed
}

/// The first and last records of a closed segment.
fn segment_info(number: u64, path: PathBuf) -> io::Result<Option<SegmentInfo>> {
    let mut file = File::open(&path)?;
    let bytes = file.metadata()?.len();
    let mut first_line = Vec::new();
    BufReader::new(&mut file).read_until(b'\n', &mut first_line)?;
    let Ok(first) = serde_json::from_slice::<Record>(&first_line) else {
        return Ok(None);
    };
    // A record is well under 128 KiB (alerts are capped at 64 KiB).
    let window = bytes.min(256 * 1024);
    file.seek(SeekFrom::Start(bytes - window))?;
    let mut tail = Vec::with_capacity(window as usize);
    file.take(window).read_to_end(&mut tail)?;
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let line = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    let Ok(last) = serde_json::from_slice::<Record>(line) else {
        return Ok(None);
    };
    Ok(Some(SegmentInfo {
        number,
        path,
        bytes,
        first,
        last_seq: last.seq,
        last_hash: last.hash,
        last_ts_ms: crate::time::parse_rfc3339(&last.ts).unwrap_or(u64::MAX),
    }))
}

/// A cut retention decided on: the segments to remove and the anchor.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub remove: Vec<SegmentInfo>,
    pub anchor: Anchor,
    /// When the first kept record was written.
    pub first_kept_ts_ms: u64,
}

impl Cut {
    pub fn bytes(&self) -> u64 {
        self.remove.iter().map(|s| s.bytes).sum()
    }

    pub fn first_kept_seq(&self) -> u64 {
        self.anchor.seq.saturating_add(1)
    }
}

/// Decides what `policy` removes now (see [`segments_to_remove`]), if
/// anything, checking that the chain holds across the cut. Reads only.
pub fn plan(
    dir: &Path,
    keep_from_seq: u64,
    policy: Policy,
    now_ms: u64,
) -> io::Result<Option<Cut>> {
    if policy.max_bytes == 0 && policy.retain_days == 0 {
        return Ok(None);
    }
    let segments = list_segments(dir)?;
    let mut total = 0;
    for (_, path) in &segments {
        total += fs::metadata(path)?.len();
    }
    // The newest segment is the one being written: never a candidate.
    let mut closed = Vec::new();
    for (number, path) in segments.iter().take(segments.len().saturating_sub(1)) {
        match segment_info(*number, path.clone())? {
            Some(info) => closed.push(info),
            // Unreadable ends: leave this and everything after alone.
            None => break,
        }
    }
    let count = segments_to_remove(&closed, total, keep_from_seq, policy, now_ms);
    if count == 0 {
        return Ok(None);
    }
    // The first kept segment: the next closed one, or the open one.
    let kept = match closed.get(count) {
        Some(info) => info.clone(),
        None => {
            let (number, path) = segments[count].clone();
            match segment_info(number, path)? {
                Some(info) => info,
                None => return Ok(None),
            }
        }
    };
    let last_removed = &closed[count - 1];
    if kept.first.prev != last_removed.last_hash
        || Some(kept.first.seq) != last_removed.last_seq.checked_add(1)
    {
        return Err(io::Error::other(format!(
            "the chain does not hold between segments {} and {}; nothing removed",
            last_removed.number, kept.number
        )));
    }
    Ok(Some(Cut {
        remove: closed[..count].to_vec(),
        anchor: Anchor {
            segment: kept.number,
            seq: last_removed.last_seq,
            hash: last_removed.last_hash.clone(),
        },
        first_kept_ts_ms: crate::time::parse_rfc3339(&kept.first.ts).unwrap_or(0),
    }))
}

/// Carries out a cut whose `ledger_pruned` record is durable: the anchor,
/// then the segments, then the directory's fsync.
pub fn execute(dir: &Path, cut: &Cut) -> io::Result<()> {
    write_anchor(dir, &cut.anchor)?;
    for segment in &cut.remove {
        fs::remove_file(&segment.path)?;
    }
    sync_dir(dir)
}

/// Removes segments a cut left below its anchor (a removal cut short):
/// how many. Only while the anchor's own segment is there.
pub fn remove_leftovers(dir: &Path) -> io::Result<usize> {
    let Some(anchor) = read_anchor(dir) else {
        return Ok(0);
    };
    let segments = list_segments(dir)?;
    if !segments.iter().any(|(n, _)| *n == anchor.segment) {
        return Ok(0);
    }
    let mut removed = 0;
    for (_, path) in segments.iter().filter(|(n, _)| *n < anchor.segment) {
        fs::remove_file(path)?;
        removed += 1;
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(number: u64, bytes: u64, last_seq: u64, last_ts_ms: u64) -> SegmentInfo {
        SegmentInfo {
            number,
            path: PathBuf::from(format!("ledger-{number:08}.jsonl")),
            bytes,
            first: Record::seal(
                1,
                "t".into(),
                "k".into(),
                None,
                serde_json::json!({}),
                "g".into(),
            ),
            last_seq,
            last_hash: String::new(),
            last_ts_ms,
        }
    }

    const DAY: u64 = 86_400_000;

    #[test]
    fn the_oldest_go_while_the_ledger_is_too_big_and_never_what_a_start_needs() {
        let closed = [
            info(1, 100, 10, 0),
            info(2, 100, 20, 0),
            info(3, 100, 30, 0),
        ];
        let size = |max_bytes| Policy {
            max_bytes,
            retain_days: 0,
        };
        // 400 bytes in all (the open segment has 100).
        assert_eq!(segments_to_remove(&closed, 400, 1_000, size(250), 0), 2);
        assert_eq!(segments_to_remove(&closed, 400, 1_000, size(400), 0), 0);
        assert_eq!(segments_to_remove(&closed, 400, 1_000, size(0), 0), 0);
        // The checkpoint (or the oldest plan in memory) is at seq 20: the
        // segment that holds it stays, and so do those after it.
        assert_eq!(segments_to_remove(&closed, 400, 20, size(1), 0), 1);
        assert_eq!(segments_to_remove(&closed, 400, 5, size(1), 0), 0);
    }

    #[test]
    fn segments_older_than_retain_days_go_in_order() {
        let closed = [
            info(1, 100, 10, 0),
            info(2, 100, 20, 5 * DAY),
            info(3, 100, 30, 9 * DAY),
        ];
        let days = |retain_days| Policy {
            max_bytes: 0,
            retain_days,
        };
        assert_eq!(
            segments_to_remove(&closed, 400, 1_000, days(3), 10 * DAY),
            2
        );
        assert_eq!(
            segments_to_remove(&closed, 400, 1_000, days(30), 10 * DAY),
            0
        );
        // A young segment stops the walk: nothing after it goes for age.
        let mixed = [info(1, 100, 10, 9 * DAY), info(2, 100, 20, 0)];
        assert_eq!(segments_to_remove(&mixed, 300, 1_000, days(3), 10 * DAY), 0);
    }
}
