//! The append path. One thread owns the open segment and the chain's tip; it
//! takes every append queued since its last write, writes them with one
//! `write`, makes them durable with one `fdatasync` (group commit), and only
//! then answers each caller. A failed write answers every caller in the batch
//! with the error, cuts the file back to where the batch began and leaves the
//! tip unchanged, so the chain on disk never contains an unacknowledged hole.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use serde_json::Value;
use tokio::sync::oneshot;

use super::record::Record;
use super::scan::{Position, Tip};
use super::segments::{segment_name, sync_dir};
use crate::time::{now_ms, rfc3339};

/// The most appends one write/fdatasync carries.
const MAX_BATCH: usize = 4096;

/// A durable record and the wall-clock time it was sealed with.
#[derive(Debug, Clone)]
pub struct Durable {
    pub record: Record,
    pub ts_ms: u64,
    /// Extra journald fields the appender attached (not part of the record).
    pub journal_fields: JournalFields,
}

/// `(FIELD, value)` pairs for the journal mirror of a record.
pub type JournalFields = Vec<(&'static str, String)>;

pub type AppendResult = Result<Durable, String>;

const WRITER_STOPPED: &str = "the ledger writer has stopped";

/// Waits for an append's answer; a writer that went away is an error like
/// any other failed write, never a hang or a panic.
pub async fn settle(reply: oneshot::Receiver<AppendResult>) -> AppendResult {
    reply
        .await
        .unwrap_or_else(|_| Err(WRITER_STOPPED.to_string()))
}

/// Called on the writer thread with every batch once it is durable.
pub type DurableObserver = Box<dyn Fn(&[Durable]) + Send>;

struct Append {
    kind: String,
    plan_id: Option<String>,
    payload: Value,
    journal_fields: JournalFields,
    reply: oneshot::Sender<AppendResult>,
}

pub struct WriterOptions {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    /// Where the chain continues: the scan's tip.
    pub tip: Tip,
    /// The newest segment and its valid length, if any.
    pub last_segment: Option<(u64, PathBuf, u64)>,
}

#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::Sender<Append>,
    records: Arc<AtomicU64>,
    position: Arc<std::sync::Mutex<Position>>,
}

impl LedgerWriter {
    pub fn start(options: WriterOptions, observer: DurableObserver) -> io::Result<LedgerWriter> {
        std::fs::create_dir_all(&options.dir)?;
        let records = Arc::new(AtomicU64::new(options.tip.seq));
        let mut state = WriterState::open(options, records.clone())?;
        let position = Arc::new(std::sync::Mutex::new(state.position()));
        state.shared_position = Some(position.clone());
        let (tx, rx) = mpsc::channel::<Append>();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || state.run(rx, observer))?;
        Ok(LedgerWriter {
            tx,
            records,
            position,
        })
    }

    /// Queues an append; the receiver answers once it is durable (or failed).
    pub fn append(
        &self,
        kind: String,
        plan_id: Option<String>,
        payload: Value,
        journal_fields: JournalFields,
    ) -> oneshot::Receiver<AppendResult> {
        let (reply, rx) = oneshot::channel();
        let request = Append {
            kind,
            plan_id,
            payload,
            journal_fields,
            reply,
        };
        if let Err(mpsc::SendError(request)) = self.tx.send(request) {
            let _ = request.reply.send(Err(WRITER_STOPPED.to_string()));
        }
        rx
    }

    /// Sequence number of the newest durable record.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Where the newest durable record ends (for checkpoints).
    pub fn position(&self) -> Position {
        self.position
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct WriterState {
    dir: PathBuf,
    segment_bytes: u64,
    segment_number: u64,
    file: File,
    file_len: u64,
    tip: Tip,
    records: Arc<AtomicU64>,
    /// Set when a failed batch could not be cut back off the file: its
    /// length is unknown until a later `set_len` succeeds, and nothing may
    /// be appended after bytes no one acknowledged.
    needs_truncate: bool,
    shared_position: Option<Arc<std::sync::Mutex<Position>>>,
}

impl WriterState {
    fn position(&self) -> Position {
        Position {
            segment: self.segment_number,
            offset: self.file_len,
            tip: self.tip.clone(),
        }
    }

    fn open(options: WriterOptions, records: Arc<AtomicU64>) -> io::Result<WriterState> {
        let (number, path, len) = match options.last_segment {
            Some(last) => last,
            None => (1, options.dir.join(segment_name(1)), 0),
        };
        let file = open_segment(&options.dir, &path)?;
        // A torn tail beyond `len` was never acknowledged: cut it off.
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        Ok(WriterState {
            dir: options.dir,
            segment_bytes: options.segment_bytes,
            segment_number: number,
            file,
            file_len: len,
            tip: options.tip,
            records,
            needs_truncate: false,
            shared_position: None,
        })
    }

    fn run(&mut self, rx: mpsc::Receiver<Append>, observer: DurableObserver) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.commit(batch, &observer);
        }
    }

    fn commit(&mut self, batch: Vec<Append>, observer: &DurableObserver) {
        if self.needs_truncate {
            match self.file.set_len(self.file_len) {
                Ok(()) => self.needs_truncate = false,
                Err(e) => {
                    let message =
                        format!("ledger write failed: cannot cut back a failed write: {e}");
                    for append in batch {
                        let _ = append.reply.send(Err(message.clone()));
                    }
                    return;
                }
            }
        }
        // A segment reopened already full is closed before anything is added.
        if self.file_len >= self.segment_bytes {
            if let Err(e) = self.rotate() {
                eprintln!("antibody: ledger: cannot start a new segment: {e}");
            }
        }
        let tip_before = self.tip.clone();
        let mut sealed = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut buf = Vec::with_capacity(batch.len() * 320);
        for append in batch {
            let ts_ms = now_ms();
            let record = Record::seal(
                self.tip.seq + 1,
                rfc3339(ts_ms),
                append.kind,
                append.plan_id,
                append.payload,
                self.tip.hash.clone(),
            );
            buf.extend_from_slice(record.to_line().as_bytes());
            self.tip = Tip {
                seq: record.seq,
                hash: record.hash.clone(),
            };
            sealed.push(Durable {
                record,
                ts_ms,
                journal_fields: append.journal_fields,
            });
            replies.push(append.reply);
        }
        match self.write_durably(&buf) {
            Ok(()) => {
                self.records.store(self.tip.seq, Ordering::Relaxed);
                if let Some(shared) = &self.shared_position {
                    *shared.lock().unwrap_or_else(|p| p.into_inner()) = self.position();
                }
                // The records are durable whatever an observer does: a panic
                // there must not cost the callers their answers or the writer.
                let observed =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| observer(&sealed)));
                if observed.is_err() {
                    eprintln!("antibody: ledger: a durable-record observer panicked");
                }
                for (reply, durable) in replies.into_iter().zip(sealed) {
                    let _ = reply.send(Ok(durable));
                }
            }
            Err(e) => {
                // Cut back to the last acknowledged byte so a retry continues
                // the chain from the same tip.
                self.needs_truncate = self.file.set_len(self.file_len).is_err();
                self.tip = tip_before;
                let message = format!("ledger write failed: {e}");
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }

    fn write_durably(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.file_len += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let number = self.segment_number + 1;
        let path = self.dir.join(segment_name(number));
        self.file = open_segment(&self.dir, &path)?;
        self.segment_number = number;
        self.file_len = 0;
        Ok(())
    }
}

fn open_segment(dir: &Path, path: &Path) -> io::Result<File> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    if !existed {
        file.sync_all()?;
        sync_dir(dir)?;
    }
    Ok(file)
}
