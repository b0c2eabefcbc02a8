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
}

impl ScanReport {
    pub fn ok(&self) -> bool {
        self.broken_at.is_none()
    }
}

pub fn scan(dir: &Path, mut visit: impl FnMut(&Record)) -> io::Result<ScanReport> {
    let segments = list_segments(dir)?;
    let mut out = ScanReport::default();
    let last_index = segments.len().saturating_sub(1);
    for (i, (number, path)) in segments.iter().enumerate() {
        let mut reader = BufReader::new(File::open(path)?);
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        let mut offset = 0u64;
        let mut line_no = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if line.last() != Some(&b'\n') {
                if i == last_index {
                    out.torn_tail = Some(TornTail {
                        path: path.clone(),
                        valid_len: offset,
                    });
                    break;
                }
                // A short line inside the chain is damage like any other.
            }
            offset += n as u64;
            check_line(&mut out, &name, line_no, &line, &mut visit);
        }
        out.last_segment = Some((*number, path.clone(), offset));
    }
    if out.ok() {
        out.report = format!("chain intact: {} record(s)", out.records);
    }
    Ok(out)
}

fn check_line(
    out: &mut ScanReport,
    segment: &str,
    line_no: u64,
    line: &[u8],
    visit: &mut impl FnMut(&Record),
) {
    let expected_seq = out.tip.seq + 1;
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
    let place = format!("record seq {} ({segment} line {line_no})", record.seq);
    if record.hash != record.expected_hash() {
        note_break(out, record.seq, format!("{place}: hash does not match its content (the record was altered)"));
    } else if record.seq != expected_seq {
        note_break(
            out,
            record.seq,
            format!("{place}: expected seq {expected_seq} (a record was removed or moved)"),
        );
    } else if record.prev != out.tip.hash {
        note_break(
            out,
            record.seq,
            format!("{place}: prev does not match the hash of record seq {}", out.tip.seq),
        );
    }
    out.records += 1;
    out.tip = Tip {
        seq: record.seq,
        hash: record.hash.clone(),
    };
    visit(&record);
}

fn note_break(out: &mut ScanReport, seq: u64, report: String) {
    if out.broken_at.is_none() {
        out.broken_at = Some(seq);
        out.report = format!("chain broken at {report}");
    }
}
