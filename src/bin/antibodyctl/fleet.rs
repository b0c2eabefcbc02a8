//! `verify --journal` and `fleet`: a fleet collector's journal copy,
//! checked and summarized without any agent (the work is the library's
//! `antibody::fleet`; this prints it and maps it to exit codes).

use std::path::PathBuf;

use antibody::fleet::chain::{Chains, HostReport};
use antibody::fleet::journal::read_mirrored;
use antibody::fleet::summary::Histories;
use serde_json::json;

use super::{print_json, Failure, Outcome};

/// Reads `paths` into each host's chain (and, with `histories`, its records).
fn read(paths: &[PathBuf], mut histories: Option<&mut Histories>) -> Outcome<Vec<HostReport>> {
    let mut chains = Chains::default();
    read_mirrored(paths, |entry| {
        let machine_id = entry.machine_id.clone();
        if let (Some(record), Some(h)) = (chains.add(entry), histories.as_deref_mut()) {
            h.add(&machine_id, record);
        }
    })
    .map_err(|e| Failure::Usage(format!("cannot read the journal: {e}")))?;
    let reports = chains.reports();
    if reports.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "antibodyctl: no Antibody ledger records in {}",
            shown.join(", ")
        );
        return Err(Failure::LedgerBroken);
    }
    Ok(reports)
}

/// `verify --journal PATH…`: exit 5 unless every host's chain is whole.
pub fn verify_journal(paths: &[PathBuf], json_out: bool) -> Outcome {
    let reports = read(paths, None)?;
    let ok = reports.iter().all(|r| r.ok);
    if json_out {
        print_json(&json!({"ok": ok, "hosts": reports}));
    } else {
        for report in &reports {
            println!("{}", report.describe());
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::LedgerBroken)
    }
}

/// `fleet --journal PATH…`: one line per host; exit 5 if a chain is broken.
pub fn summarize(paths: &[PathBuf], json_out: bool) -> Outcome {
    let mut histories = Histories::default();
    let reports = read(paths, Some(&mut histories))?;
    let summaries = histories.summarize(&reports, antibody::time::now_ms());
    if json_out {
        print_json(&json!(summaries));
    } else {
        for summary in &summaries {
            println!("{}", summary.describe());
        }
    }
    if summaries.iter().all(|s| s.chain_ok) {
        Ok(())
    } else {
        Err(Failure::LedgerBroken)
    }
}
