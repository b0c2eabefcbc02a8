//! The ledger scanner over a segment holding any bytes (torn, hostile,
//! not UTF-8): never a panic, always a report; a damaged chain is named,
//! never called intact.
#![no_main]

use std::sync::OnceLock;

use antibody::ledger::scan;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let segment = dir().join("ledger-00000001.jsonl");
    std::fs::write(&segment, data).expect("write the segment");
    let mut seqs = Vec::new();
    let Ok(report) = scan(dir(), |r| seqs.push(r.seq)) else {
        return;
    };
    if report.ok() {
        // An intact chain is 1, 2, 3, … with no gap.
        for (i, seq) in seqs.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "{}", report.report);
        }
        assert_eq!(report.tip.seq, seqs.len() as u64, "{}", report.report);
    }
});
