//! Ledger retention (`ledger.max_bytes`, `ledger.retain_days`): the
//! oldest closed segments are removed, but never a record a start could
//! still need, and never without an anchor:
//! - only segments wholly before the newest checkpoint and before the
//!   oldest plan still in memory go (a start replays from the checkpoint,
//!   and without one, from the first kept record: every plan it must
//!   rebuild then begins in a kept segment);
//! - before any is removed, `anchor.json` in the ledger directory records
//!   the first kept segment, and the seq and hash the first kept record
//!   follows (its `prev`), durably; the scan then starts its chain there,
//!   so `VerifyLedger` verifies "from seq N".
//!
//! [`segments_to_remove`] is pure; [`prune`] does the files.

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
        last_ts_ms: crate::time::parse_rfc3339(&last.ts).unwrap_or(u64::MAX),
    }))
}

/// What [`prune`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub segments: Vec<String>,
    pub bytes: u64,
    pub first_kept_seq: u64,
    /// When the first kept record was written: plans archived before it
    /// have all their records in the removed segments.
    pub first_kept_ts_ms: u64,
}

/// Removes the oldest segments `policy` asks for (see
/// [`segments_to_remove`]), after writing the anchor. Blocking.
pub fn prune(
    dir: &Path,
    keep_from_seq: u64,
    policy: Policy,
    now_ms: u64,
) -> io::Result<Option<Pruned>> {
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
    let remove = segments_to_remove(&closed, total, keep_from_seq, policy, now_ms);
    if remove == 0 {
        return Ok(None);
    }
    // The first kept segment: the next closed one, or the open one.
    let kept = match closed.get(remove) {
        Some(info) => info.clone(),
        None => {
            let (number, path) = segments[remove].clone();
            match segment_info(number, path)? {
                Some(info) => info,
                None => return Ok(None),
            }
        }
    };
    write_anchor(
        dir,
        &Anchor {
            segment: kept.number,
            seq: kept.first.seq - 1,
            hash: kept.first.prev.clone(),
        },
    )?;
    let mut pruned = Pruned {
        segments: Vec::new(),
        bytes: 0,
        first_kept_seq: kept.first.seq,
        first_kept_ts_ms: crate::time::parse_rfc3339(&kept.first.ts).unwrap_or(0),
    };
    for segment in &closed[..remove] {
        fs::remove_file(&segment.path)?;
        pruned.bytes += segment.bytes;
        pruned.segments.push(
            segment
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into(),
        );
    }
    sync_dir(dir)?;
    Ok(Some(pruned))
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
