//! Walks the ledger from its first record, checking the chain, and hands
//! every readable record to a visitor. Used at start (replay) and by
//! `VerifyLedger`. A break is reported, never fatal: the walk goes on from
//! what is on disk, so one bad record cannot hide the ones after it.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::record::{Record, GENESIS};
use super::segments::list_segments;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    pub seq: u64,
    pub hash: String,
}

impl Default for Tip {
    fn default() -> Self {
        Tip {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// An unterminated last line: a write cut short by a crash, never acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub valid_len: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    pub records: u64,
    pub tip: Tip,
    /// Sequence number of the first record that breaks the chain.
    pub broken_at: Option<u64>,
    /// Says where and how the chain first breaks, or that it is intact.
    pub report: String,
    pub torn_tail: Option<TornTail>,
    /// Number, path and length of the newest segment.
    pub last_segment: Option<(u64, PathBuf, u64)>,
    /// Records before the first kept one, removed by retention (their
    /// last hash is the anchor's).
    pub removed_before: u64,
}

impl ScanReport {
    pub fn ok(&self) -> bool {
        self.broken_at.is_none()
    }
}

/// Where a scan starts: just past a record already known (a checkpoint's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub segment: u64,
    /// Byte offset just past the record `tip` names.
    pub offset: u64,
    pub tip: Tip,
}

pub fn scan(dir: &Path, visit: impl FnMut(&Record)) -> io::Result<ScanReport> {
    scan_from(dir, None, visit)
}

/// Scans from `start` (or the beginning): records before it are neither
/// read nor checked, so the report speaks of the tail only.
pub fn scan_from(
    dir: &Path,
    start: Option<&Position>,
    mut visit: impl FnMut(&Record),
) -> io::Result<ScanReport> {
    let mut segments = list_segments(dir)?;
    let mut out = ScanReport::default();
    let mut anchored: Option<super::retention::Anchor> = None;
    let mut confirmed = false;
    if let Some(start) = start {
        out.tip = start.tip.clone();
    } else if let Some(anchor) = super::retention::read_anchor(dir) {
        // Retention removed the segments before the anchor's: the chain
        // starts from the record the anchor names, and segments still
        // below it (a removal cut short) are not part of it.
        if segments.iter().any(|(n, _)| *n >= anchor.segment) {
            segments.retain(|(n, _)| *n >= anchor.segment);
            out.tip = Tip {
                seq: anchor.seq,
                hash: anchor.hash.clone(),
            };
            out.removed_before = anchor.seq;
            anchored = Some(anchor);
        }
    }
    let last_index = segments.len().saturating_sub(1);
    for (i, (number, path)) in segments.iter().enumerate() {
        let skip_to = match start {
            Some(start) if *number < start.segment => continue,
            Some(start) if *number == start.segment => start.offset,
            _ => 0,
        };
        let mut file = File::open(path)?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(skip_to))?;
        // Segments are read straight through: large reads, few syscalls.
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let mut offset = skip_to;
        let mut line_no = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            // A short last line is a torn write; anywhere else it is damage
            // like any other, and the check below reports it.
            if line.last() != Some(&b'\n') && i == last_index {
                out.torn_tail = Some(TornTail {
                    path: path.clone(),
                    valid_len: offset,
                });
                break;
            }
            offset += n as u64;
            check_line(&mut out, &name, line_no, &line, &mut |record| {
                confirmed |= anchored.as_ref().is_some_and(|a| confirms(record, a));
                visit(record)
            });
        }
        out.last_segment = Some((*number, path.clone(), offset));
    }
    if let Some(anchor) = anchored.filter(|_| !confirmed) {
        note_break(
            &mut out,
            anchor.seq.saturating_add(1),
            format!(
                "anchor.json: the chain is said to start after seq {}, but no ledger_pruned record in it says so (records were removed outside retention)",
                anchor.seq
            ),
        );
    }
    if out.ok() {
        out.report = match out.removed_before {
            0 => format!("chain intact: {} record(s)", out.tip.seq),
            removed => format!(
                "chain intact from seq {}: {} record(s) (the {removed} before were removed by ledger retention)",
                removed + 1,
                out.tip.seq.saturating_sub(removed)
            ),
        };
        // The tip, for comparing a copy (a fleet collector's) with the
        // ledger itself: a copy cut or resealed at its end shows another.
        if out.tip.seq > 0 {
            out.report += &format!("; tip seq {} hash {}", out.tip.seq, out.tip.hash);
        }
    }
    Ok(out)
}

/// Reads the record that ends at `position.offset` and checks it is the one
/// `position.tip` names (and that its hash matches its content).
pub fn record_at(dir: &Path, position: &Position) -> io::Result<bool> {
    let path = dir.join(super::segments::segment_name(position.segment));
    let mut file = File::open(path)?;
    // A record is well under 128 KiB (alerts are capped at 64 KiB).
    let window = position.offset.min(256 * 1024);
    std::io::Seek::seek(
        &mut file,
        std::io::SeekFrom::Start(position.offset - window),
    )?;
    let mut buf = vec![0u8; window as usize];
    std::io::Read::read_exact(&mut file, &mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Ok(false);
    }
    let body = &buf[..buf.len() - 1];
    let line = match body.iter().rposition(|b| *b == b'\n') {
        Some(i) => &body[i + 1..],
        None if window == position.offset => body,
        None => return Ok(false),
    };
    let Ok(record) = serde_json::from_slice::<Record>(line) else {
        return Ok(false);
    };
    Ok(record.seq == position.tip.seq && record.hash == position.tip.hash && record.hash_holds())
}

fn check_line(
    out: &mut ScanReport,
    segment: &str,
    line_no: u64,
    line: &[u8],
    visit: &mut impl FnMut(&Record),
) {
    let expected_seq = out.tip.seq.saturating_add(1);
    let record: Record = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            note_break(
                out,
                expected_seq,
                format!("{segment} line {line_no}: not a ledger record ({e}); expected seq {expected_seq} here"),
            );
            return;
        }
    };
    // The place is only spelled out when there is a break to report.
    let place = || format!("record seq {} ({segment} line {line_no})", record.seq);
    if !record.hash_holds() {
        note_break(
            out,
            record.seq,
            format!(
                "{}: hash does not match its content (the record was altered)",
                place()
            ),
        );
    } else if record.seq != expected_seq {
        note_break(
            out,
            record.seq,
            format!(
                "{}: expected seq {expected_seq} (a record was removed or moved)",
                place()
            ),
        );
    } else if record.prev != out.tip.hash {
        note_break(
            out,
            record.seq,
            format!(
                "{}: prev does not match the hash of record seq {}",
                place(),
                out.tip.seq
            ),
        );
    }
    out.records += 1;
    visit(&record);
    out.tip = Tip {
        seq: record.seq,
        hash: record.hash,
    };
}

/// Whether `record` is the `ledger_pruned` record that made `anchor`.
fn confirms(record: &Record, anchor: &super::retention::Anchor) -> bool {
    record.kind == "ledger_pruned"
        && record.payload["first_kept_seq"].as_u64() == anchor.seq.checked_add(1)
        && record.payload["prev_hash"].as_str() == Some(anchor.hash.as_str())
        && record.payload["first_segment"].as_u64().is_some()
        && record.payload["last_segment"].as_u64() == anchor.segment.checked_sub(1)
}

fn note_break(out: &mut ScanReport, seq: u64, report: String) {
    if out.broken_at.is_none() {
        out.broken_at = Some(seq);
        out.report = format!("chain broken at {report}");
    }
}
