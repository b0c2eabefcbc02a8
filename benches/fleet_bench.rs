//! `cargo bench --bench fleet_bench` (as root; BENCHMARKS.md, "Fleet"):
//! - the walk `VerifyLedger` runs (`ledger::scan`) over a 1 000 000-record
//!   ledger, against `sha256sum` of the same segment files, same run (the
//!   files in the page cache for both), and `openssl dgst -sha256` for
//!   context;
//! - `antibodyctl verify --journal` over 1 000 000 records from three
//!   hosts, as the agent's journal mirror writes them (`record_entry`),
//!   imported by `systemd-journal-remote`: records per second.
//!
//! Each timing is the median of 3. The files go under BENCH_DIR (default
//! /var/tmp); about 3 GB at the peak.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use antibody::ledger;

const RECORDS: u64 = 1_000_000;
const RUNS: usize = 3;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(mut run: impl FnMut()) -> Duration {
    median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                run();
                start.elapsed()
            })
            .collect(),
    )
}

fn segments(dir: &Path) -> Vec<String> {
    ledger::segments::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p.display().to_string())
        .collect()
}

/// Writes the export-format entries of `ledger`'s records, as host `n`'s
/// journal would hold them, to `out`.
fn export_host(ledger: &Path, n: u32, out: &mut impl Write) {
    let machine = format!("{n:032x}");
    ledger::scan(ledger, |record| {
        let entry = support::journal_export_entry(&machine, &format!("host{n}"), record);
        out.write_all(entry.as_bytes()).unwrap();
    })
    .unwrap();
}

#[tokio::main]
async fn main() {
    support::require_root();
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let work = tempfile::tempdir_in(base).unwrap();

    // 1. VerifyLedger's walk against sha256sum of the same bytes.
    let big = work.path().join("ledger");
    support::write_filler_ledger(&big, RECORDS).await;
    let files = segments(&big);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let sha = || {
        let status = Command::new("sha256sum")
            .args(&files)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    sha(); // into the page cache
    let sha_time = time(sha);
    // For context, not the goal's baseline: OpenSSL's SHA-256 uses the
    // CPU's SHA extensions where there are some, coreutils' does not.
    let openssl_time = time(|| {
        let status = Command::new("openssl")
            .args(["dgst", "-sha256"])
            .args(&files)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    });
    let walk_time = time(|| {
        let scan = ledger::scan(&big, |_| {}).unwrap();
        assert!(scan.ok() && scan.records == RECORDS);
    });

    // 2. verify --journal over three hosts' records.
    let per_host = RECORDS / 3;
    let journal_dir = work.path().join("remote");
    std::fs::create_dir_all(&journal_dir).unwrap();
    let mut remote = Command::new("/lib/systemd/systemd-journal-remote")
        .arg("--split-mode=none")
        .arg(format!(
            "--output={}",
            journal_dir.join("remote.journal").display()
        ))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("systemd-journal-remote");
    {
        let mut pipe = BufWriter::with_capacity(1 << 20, remote.stdin.take().unwrap());
        for n in 1..=3u32 {
            let dir = work.path().join(format!("host{n}"));
            support::write_filler_ledger(&dir, per_host + u64::from(n == 3)).await;
            export_host(&dir, n, &mut pipe);
            std::fs::remove_dir_all(&dir).unwrap();
        }
        pipe.flush().unwrap();
    }
    assert!(remote.wait().unwrap().success());
    let verify = || {
        let out = Command::new(env!("CARGO_BIN_EXE_antibodyctl"))
            .args(["--json", "verify", "--journal"])
            .arg(&journal_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let verify_time = time(verify);

    let secs = |d: Duration| d.as_secs_f64();
    println!("| measure ({RECORDS} records, median of {RUNS}) | time | rate | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| `sha256sum` of the ledger's segments ({:.0} MB, baseline) | {:.2} s | {:.0} MB/s | 1.00× |",
        bytes as f64 / 1e6,
        secs(sha_time),
        bytes as f64 / 1e6 / secs(sha_time)
    );
    println!(
        "| `openssl dgst -sha256` of the same files (context) | {:.2} s | {:.0} MB/s | {:.2}× |",
        secs(openssl_time),
        bytes as f64 / 1e6 / secs(openssl_time),
        secs(sha_time) / secs(openssl_time)
    );
    println!(
        "| the walk `VerifyLedger` runs (`ledger::scan`) over the same files | {:.2} s | {:.0} records/s | {:.2}× sha256sum's speed (goal ≥ 0.7×) |",
        secs(walk_time),
        RECORDS as f64 / secs(walk_time),
        secs(sha_time) / secs(walk_time)
    );
    println!(
        "| `antibodyctl verify --journal`, three hosts' records in journal files | {:.2} s | {:.0} records/s | |",
        secs(verify_time),
        RECORDS as f64 / secs(verify_time)
    );
}
