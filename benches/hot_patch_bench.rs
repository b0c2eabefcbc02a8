//! `cargo bench --bench hot_patch_bench`: what one hostile `hot_patch`
//! costs a `DryRun` (BENCHMARKS.md, "hot_patch worst case"). In process,
//! on real files; no bus, no root needed.
//!
//! The file is 16 MiB of identical lines (the largest target allowed); the
//! hostile diff is one hunk of as many identical context lines as 60 KiB
//! holds, then a line the file lacks, so it nearly matches at every
//! position (as many as one 64 KiB alert holds). Rows, each the median of several runs, against the baseline
//! measured in the same run: reading the file and hashing it (work any
//! `DryRun` of a 16 MiB target must do):
//! - `DryRun` of that diff through the engine (refused once the search
//!   passes its budget), and of an alert with four of them (the most one
//!   alert may carry);
//! - `DryRun` of a benign one-line diff at the file's end;
//! - `diffy::apply_bytes` (what the agent used before) on the hostile diff
//!   against 256 KiB and 1 MiB prefixes of the file: its search has no
//!   bound, and grows with the file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use antibody::actions::Registry;
use antibody::config::Config;
use antibody::engine::{Engine, EngineParts};
use antibody::sys::nft::backend::NftFirewall;
use antibody::sys::nft::fake::FakeDriver;
use antibody::sys::notifier::{NoticeSignal, SystemNotifier};
use antibody::sys::systemd::SystemdManager;
use antibody::sys::Sys;
use serde_json::json;

const FILE_BYTES: usize = 16 << 20;
const RUNS: usize = 5;

struct Nowhere;

#[async_trait::async_trait]
impl NoticeSignal for Nowhere {
    async fn operator_notice(&self, _: &str, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// The hostile diff for `copies` of it in one alert: as many context lines
/// as the 64 KiB alert holds (each is 4 bytes in the alert's JSON, " a\n").
fn hostile_diff(copies: usize) -> String {
    let mut diff = String::from("--- a/big.conf\n+++ b/big.conf\n");
    let context = (64 * 1024 - 400 * copies) / 4 / copies;
    diff.push_str(&format!("@@ -1,{} +1,{} @@\n", context + 1, context + 1));
    diff.push_str(&" a\n".repeat(context));
    diff.push_str("-b\n+c\n");
    diff
}

fn benign_diff() -> String {
    let lines = FILE_BYTES / 2;
    format!("--- a/big.conf\n+++ b/big.conf\n@@ -{lines} +{lines} @@\n-a\n+z\n")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn time<F: std::future::Future>(mut run: impl FnMut() -> F) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        run().await;
        samples.push(start.elapsed());
    }
    median(samples)
}

fn engine(home: &Path, root: &Path) -> Arc<Engine> {
    let mut config =
        Config::from_toml(&format!("[hot_patch]\nallowed_paths = [{root:?}]\n")).unwrap();
    config.ledger.dir = home.join("ledger");
    config.state.dir = home.join("state");
    Engine::open(
        config,
        EngineParts {
            registry: Registry::builtin(),
            sys: Sys {
                notifier: Arc::new(SystemNotifier {
                    journal: antibody::sys::journal::Journal::detect(),
                    signals: Arc::new(Nowhere),
                }),
                systemd: Arc::new(SystemdManager::new()),
                firewall: Arc::new(NftFirewall::start(FakeDriver::default())),
                http: Arc::new(antibody::sys::http::UreqClient),
            },
            events: antibody::events::channel(),
            mirror: None,
            own_unit: None,
        },
    )
    .unwrap()
}

fn alert(file: &Path, diff: &str, copies: usize) -> String {
    let action = json!({"type": "hot_patch", "file": file, "diff": diff});
    json!({"source": "Manual", "severity": "low", "description": "bench",
           "actions": vec![action; copies]})
    .to_string()
}

#[tokio::main]
async fn main() {
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = home.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let file = root.join("big.conf");
    let content = "a\n".repeat(FILE_BYTES / 2);
    std::fs::write(&file, &content).unwrap();
    let engine = engine(home.path(), &root);
    let (hostile, benign) = (hostile_diff(1), benign_diff());
    let hostile4 = hostile_diff(4);

    let baseline = time(|| async {
        let bytes = std::fs::read(&file).unwrap();
        std::hint::black_box(antibody::sys::files::sha256_hex(&bytes));
    })
    .await;
    let check = |answer: serde_json::Value, expect: &str| {
        let text = answer["actions"][0]["change"].to_string();
        assert!(text.contains(expect), "{text}");
    };
    let hostile_one = time(|| async {
        check(
            engine.dry_run(&alert(&file, &hostile, 1)).await.unwrap(),
            "gave up after comparing",
        );
    })
    .await;
    let hostile_four = time(|| async {
        check(
            engine.dry_run(&alert(&file, &hostile4, 4)).await.unwrap(),
            "gave up after comparing",
        );
    })
    .await;
    let benign_one = time(|| async {
        check(
            engine.dry_run(&alert(&file, &benign, 1)).await.unwrap(),
            "after_sha256",
        );
    })
    .await;
    let patch = diffy::Patch::from_bytes(hostile.as_bytes()).unwrap();
    let mut diffy_rows = Vec::new();
    for prefix in [256 << 10, 1 << 20] {
        let base = &content.as_bytes()[..prefix];
        let start = Instant::now();
        assert!(diffy::apply_bytes(base, &patch).is_err());
        diffy_rows.push((prefix, start.elapsed()));
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = |d: Duration| d.as_secs_f64() / baseline.as_secs_f64();
    println!("| measure (16 MiB target, median of {RUNS}) | time | ratio to the baseline |");
    println!("|---|---|---|");
    println!(
        "| baseline: read and SHA-256 the 16 MiB file | {:.1} ms | 1.0× |",
        ms(baseline)
    );
    println!(
        "| DryRun, one hostile diff ({} KiB, refused at the search budget) | {:.1} ms | {:.1}× |",
        hostile.len() / 1024,
        ms(hostile_one),
        ratio(hostile_one)
    );
    println!(
        "| DryRun, four hostile diffs (the most one alert may carry) | {:.1} ms | {:.1}× |",
        ms(hostile_four),
        ratio(hostile_four)
    );
    println!(
        "| DryRun, a benign one-line diff at the file's end | {:.1} ms | {:.1}× |",
        ms(benign_one),
        ratio(benign_one)
    );
    for (prefix, took) in diffy_rows {
        println!(
            "| before: diffy::apply_bytes, the hostile diff on the first {} KiB only (no bound; linear in the file) | {:.1} ms | {:.1}× |",
            prefix >> 10,
            ms(took),
            ratio(took)
        );
    }
}
