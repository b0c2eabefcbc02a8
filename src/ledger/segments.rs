//! Segment files: `ledger-00000001.jsonl`, `ledger-00000002.jsonl`, … The
//! chain runs on from one segment into the next.

use std::io;
use std::path::{Path, PathBuf};

pub fn segment_name(number: u64) -> String {
    format!("ledger-{number:08}.jsonl")
}

/// Only names this writer makes count: exactly eight digits, so a stray
/// `ledger-1.jsonl` is never read as a second segment 1.
fn segment_number(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_prefix("ledger-")?.strip_suffix(".jsonl")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segments of `dir` in chain order; a missing directory has none.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(segment_number) {
            segments.push((n, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Makes a new directory entry durable (fsync of the directory itself).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order() {
        assert_eq!(segment_name(7), "ledger-00000007.jsonl");
        assert_eq!(segment_number("ledger-00000007.jsonl"), Some(7));
        assert_eq!(segment_number("ledger-x.jsonl"), None);
        assert_eq!(segment_number("other.jsonl"), None);
        assert_eq!(segment_number("ledger-1.jsonl"), None);
        assert_eq!(segment_number("ledger-+0000001.jsonl"), None);
    }
}
