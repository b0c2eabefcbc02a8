//! `nft` itself, as the firewall's driver: every batch goes through
//! `nft -j -f -` (the command the `nftables` crate runs), the table is read
//! back with the crate's `nft -j list table inet antibody`.
//!
//! Batches are not sent with the crate's helper, for two reasons:
//! - Start-up. One `nft` run costs ≈ 2.5 ms here, and about half of it is
//!   spent before nft reads its input (exec, dynamic linking, library
//!   set-up). The driver keeps one `nft -j -f -` started ahead (2 ms after
//!   the previous batch), blocked on its standard input, so a batch pays
//!   only for nft's parsing and the
//!   kernel's commit. Nothing reaches the kernel before the whole batch is
//!   written and standard input closed, so the order of record and change
//!   is unchanged: the write-ahead record is durable before the batch is
//!   even written.
//! - Errors. The helper does not capture nft's standard error, where nft
//!   says what it refused; this driver puts it in the error.
//!
//! The process started ahead exists only once the agent has sent a batch
//! (an agent that never isolates runs no `nft`), and it ends with the
//! agent however the agent ends: its standard input reaches end of file
//! and it exits having applied nothing (it is also killed when dropped).

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use super::backend::Driver;
use super::batch;
use crate::sync::lock;

/// How nft is run: the program and the arguments that make it read one
/// JSON batch from standard input.
const NFT_BATCH: [&str; 4] = ["nft", "-j", "-f", "-"];

/// The next batch's process is started this long after a batch ends. Its
/// start-up costs ≈ 1.2 ms of CPU, and started at once it competed, on two
/// cores, with what the batch's plans do next (their `action_applied`
/// fsync and signals, ≈ 0.5 ms): in-agent timestamps showed those steps'
/// means double. 2 ms later it does not, and is still ready for an alert
/// that follows closely (BENCHMARKS.md, "nftables isolation").
const SPARE_AFTER: Duration = Duration::from_millis(2);

/// How long one `nft` run may take (a batch is a few milliseconds; a
/// listing of 10 000 elements well under a second). Past it the process is
/// killed: a batch is tried once more in a fresh process, then reported.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NftCli {
    /// The command a batch is written to (`nft -j -f -`; tests use others).
    argv: Vec<OsString>,
    /// A process started ahead, waiting for the next batch on its stdin.
    spare: Arc<Mutex<Spare>>,
    /// How long one run may take before it is killed.
    timeout: Duration,
}

/// The process started ahead, or the one being started.
#[derive(Default)]
struct Spare {
    waiting: Option<Child>,
    /// A start is under way: in a burst, batches that end before it lands
    /// do not start more (each would be killed unused when the next lands).
    starting: bool,
}

impl Default for NftCli {
    fn default() -> NftCli {
        NftCli::with_command(NFT_BATCH)
    }
}

impl NftCli {
    pub fn new() -> NftCli {
        NftCli::default()
    }

    /// A driver that writes batches to `argv` instead of `nft -j -f -`.
    pub fn with_command<S: Into<OsString>>(argv: impl IntoIterator<Item = S>) -> NftCli {
        NftCli {
            argv: argv.into_iter().map(Into::into).collect(),
            spare: Arc::default(),
            timeout: NFT_TIMEOUT,
        }
    }

    /// The same driver with another limit on one run.
    pub fn with_timeout(mut self, timeout: Duration) -> NftCli {
        self.timeout = timeout;
        self
    }

    fn spawn(&self) -> Result<Child, String> {
        spawn_batch_process(&self.argv)
    }

    /// The process started ahead, if it is still waiting.
    fn take_spare(&self) -> Option<Child> {
        let mut child = lock(&self.spare).waiting.take()?;
        // One that ended meanwhile (killed by someone) is of no use.
        matches!(child.try_wait(), Ok(None)).then_some(child)
    }

    /// Starts the next batch's process off the caller's path, shortly
    /// after this batch (see [`SPARE_AFTER`]).
    fn start_spare(&self) {
        {
            let mut spare = lock(&self.spare);
            if spare.starting || spare.waiting.is_some() {
                return;
            }
            spare.starting = true;
        }
        let spare = self.spare.clone();
        let argv = self.argv.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_AFTER).await;
            let child = spawn_batch_process(&argv).ok();
            let mut spare = lock(&spare);
            spare.waiting = child;
            spare.starting = false;
        });
    }
}

fn spawn_batch_process(argv: &[OsString]) -> Result<Child, String> {
    let (program, args) = argv.split_first().expect("a command");
    Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))
}

/// Why a batch did not go through.
enum BatchError {
    /// The process was gone before it had the whole batch: nothing was
    /// applied, and a fresh process may be tried.
    NotDelivered(String),
    /// nft did not finish in time and was killed. nft commits a batch as
    /// one transaction at its very end, and the batches add elements (which
    /// adding again does not change) or delete them (which the retry
    /// reports if already done): a fresh process may be tried.
    TimedOut(String),
    /// nft read the batch and refused it (or could not be waited for).
    Failed(String),
}

impl BatchError {
    fn message(self) -> String {
        match self {
            BatchError::NotDelivered(m) | BatchError::TimedOut(m) | BatchError::Failed(m) => m,
        }
    }
}

/// Writes `payload` to a waiting `nft -j -f -` and waits for its verdict,
/// at most `timeout` (the process is killed when it is dropped).
async fn run_batch(mut child: Child, payload: &[u8], timeout: Duration) -> Result<(), BatchError> {
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let run = async {
        stdin
            .write_all(payload)
            .await
            .map_err(|e| BatchError::NotDelivered(format!("nft stopped reading its batch: {e}")))?;
        // End of input: nft parses the batch and commits it as one transaction.
        drop(stdin);
        child
            .wait_with_output()
            .await
            .map_err(|e| BatchError::Failed(format!("cannot wait for nft: {e}")))
    };
    let output = tokio::time::timeout(timeout, run).await;
    // A start that waits on nft is still moving while each run ends.
    crate::sys::sdnotify::note_start_progress(1);
    let output = output.map_err(|_| {
        BatchError::TimedOut(format!(
            "nft did not finish a batch within {} s and was killed",
            timeout.as_secs_f64()
        ))
    })??;
    if output.status.success() {
        return Ok(());
    }
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    let (stderr, stdout) = (said(&output.stderr), said(&output.stdout));
    Err(BatchError::Failed(format!(
        "nft failed ({}) applying the batch: {}",
        output.status,
        [stderr, stdout]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

#[async_trait]
impl Driver for NftCli {
    async fn apply(&self, batch: &Value) -> Result<(), String> {
        let payload = serde_json::to_vec(batch).expect("JSON values serialize");
        let first = match self.take_spare() {
            Some(spare) => spare,
            None => self.spawn()?,
        };
        let result = match run_batch(first, &payload, self.timeout).await {
            // It died before reading the batch (the batch never reached the
            // kernel), or hung and was killed: once more, in a fresh process.
            Err(BatchError::NotDelivered(_) | BatchError::TimedOut(_)) => {
                run_batch(self.spawn()?, &payload, self.timeout).await
            }
            other => other,
        };
        self.start_spare();
        result.map_err(BatchError::message)
    }

    async fn list(&self) -> Result<Option<Value>, String> {
        // Run here rather than through the crate's helper, which waits on
        // nft without a bound; the JSON is the crate's `nft -j` schema.
        let program = self.argv.first().expect("a command");
        let listing = Command::new(program)
            .args(["-j", "list", "table", batch::FAMILY, batch::TABLE])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(self.timeout, listing).await;
        crate::sys::sdnotify::note_start_progress(1);
        let output = output
            .map_err(|_| {
                format!(
                    "nft did not list the table within {} s and was killed",
                    self.timeout.as_secs_f64()
                )
            })?
            .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(format!(
                "nft failed ({}) listing the table: {}",
                output.status,
                stderr.trim()
            ));
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|e| format!("nft printed invalid JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A stand-in for nft that appends each batch it reads, one per line.
    fn recorder(file: &std::path::Path) -> NftCli {
        let script = format!("cat >> '{}'; echo >> '{}'", file.display(), file.display());
        NftCli::with_command(["sh", "-c", script.as_str()])
    }

    fn batches(file: &std::path::Path) -> Vec<Value> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn wait_for_spare(driver: &NftCli) {
        for _ in 0..500 {
            if lock(&driver.spare).waiting.is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no process was started ahead");
    }

    #[tokio::test]
    async fn each_batch_reaches_the_process_once_and_the_next_one_waits_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("batches");
        let driver = recorder(&file);
        assert!(
            lock(&driver.spare).waiting.is_none(),
            "nothing runs before the first batch"
        );
        for n in 0..3 {
            driver.apply(&json!({"nftables": [n]})).await.unwrap();
            wait_for_spare(&driver).await;
        }
        assert_eq!(
            batches(&file),
            [
                json!({"nftables": [0]}),
                json!({"nftables": [1]}),
                json!({"nftables": [2]})
            ]
        );
    }

    #[tokio::test]
    async fn a_process_killed_while_waiting_is_replaced_and_the_batch_still_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("batches");
        let driver = recorder(&file);
        driver.apply(&json!({"nftables": ["first"]})).await.unwrap();
        wait_for_spare(&driver).await;
        {
            let mut spare = lock(&driver.spare);
            spare.waiting.as_mut().unwrap().start_kill().unwrap();
        }
        // Let the kill land, so the batch meets a dead process.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        driver
            .apply(&json!({"nftables": ["second"]}))
            .await
            .unwrap();
        assert_eq!(
            batches(&file),
            [
                json!({"nftables": ["first"]}),
                json!({"nftables": ["second"]})
            ]
        );
    }

    #[tokio::test]
    async fn a_burst_starts_no_process_that_goes_unused() {
        let dir = tempfile::tempdir().unwrap();
        let (starts, file) = (dir.path().join("starts"), dir.path().join("batches"));
        let script = format!(
            "echo >> '{}'; cat >> '{}'; echo >> '{}'",
            starts.display(),
            file.display(),
            file.display()
        );
        let driver = NftCli::with_command(["sh", "-c", script.as_str()]);
        const BURST: usize = 20;
        for n in 0..BURST {
            driver.apply(&json!({"nftables": [n]})).await.unwrap();
        }
        wait_for_spare(&driver).await;
        assert_eq!(batches(&file).len(), BURST);
        // Every process but the one now waiting ran a batch. The waiting
        // one may not have written its line yet: give it a moment.
        let started = || std::fs::read_to_string(&starts).unwrap().lines().count();
        for _ in 0..100 {
            if started() > BURST {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            started(),
            BURST + 1,
            "processes started for {BURST} batches"
        );
    }

    #[tokio::test]
    async fn what_nft_says_on_stderr_is_in_the_error() {
        let driver = NftCli::with_command([
            "sh",
            "-c",
            "cat > /dev/null; echo 'Error: Could not process rule: No such file or directory' >&2; exit 1",
        ]);
        let error = driver.apply(&json!({"nftables": []})).await.unwrap_err();
        assert!(
            error.contains("Could not process rule: No such file or directory"),
            "{error}"
        );
        assert!(error.contains("exit status: 1"), "{error}");
    }

    #[tokio::test]
    async fn a_hung_nft_is_killed_and_the_batch_tried_once_more_in_a_fresh_process() {
        let dir = tempfile::tempdir().unwrap();
        let starts = dir.path().join("starts");
        // Reads its batch, notes it, then never ends. (The spare started
        // after the batch waits in `cat`, and notes nothing.)
        let script = format!(
            "cat > /dev/null; echo >> '{}'; exec sleep 1000",
            starts.display()
        );
        let driver = NftCli::with_command(["sh", "-c", script.as_str()])
            .with_timeout(Duration::from_millis(300));
        let error = driver.apply(&json!({"nftables": []})).await.unwrap_err();
        assert!(
            error.contains("did not finish a batch within 0.3 s and was killed"),
            "{error}"
        );
        let runs = std::fs::read_to_string(&starts).unwrap().lines().count();
        assert_eq!(runs, 2, "the batch and its one retry");
        // Both were killed: no sleeping child of this process is left.
        let sleeping = || {
            let found = std::process::Command::new("pgrep")
                .args(["-P", &std::process::id().to_string(), "-x", "sleep"])
                .output()
                .unwrap();
            !found.stdout.is_empty()
        };
        for _ in 0..100 {
            if !sleeping() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("a killed nft is still running");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_plain_error() {
        let driver = NftCli::with_command(["/nonexistent/nft", "-j", "-f", "-"]);
        let error = driver.apply(&json!({"nftables": []})).await.unwrap_err();
        assert!(error.starts_with("cannot run /nonexistent/nft"), "{error}");
    }
}
