//! The append path. The open segment and the chain's tip are written by one
//! caller at a time: either the writer thread, which takes every append
//! queued since its last write, writes them with one `write`, makes them
//! durable with one `fdatasync` (group commit), and only then answers each
//! caller; or, when nothing is queued and no write is under way, the caller
//! of [`LedgerWriter::write_now`] itself, which saves the two thread
//! hand-offs (there and back) that cost as much as the fdatasync on an idle
//! machine. A failed write answers every caller in the batch with the
//! error, cuts the file back to where the batch began and leaves the tip
//! unchanged, so the chain on disk never contains an unacknowledged hole.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::oneshot;

use super::record::{Record, Unsealed};
use super::scan::{Position, Tip};
use super::segments::{segment_name, sync_dir};
use crate::time::{now_ms, rfc3339};

/// The most appends one write/fdatasync carries.
const MAX_BATCH: usize = 4096;

/// A durable record: its line as written, the fields its readers on the
/// append path use, and the wall-clock time it was sealed with. The
/// payload is only in the line (see [`Durable::record`]).
#[derive(Debug, Clone)]
pub struct Durable {
    pub seq: u64,
    pub kind: String,
    pub plan_id: Option<String>,
    pub prev: String,
    pub hash: String,
    /// The record's line as written to the segment (with its newline):
    /// what the journal mirror carries, byte for byte.
    pub line: String,
    /// Where the payload's JSON lies in `line`.
    payload_at: std::ops::Range<usize>,
    pub ts_ms: u64,
    /// Extra journald fields the appender attached (not part of the record).
    pub journal_fields: JournalFields,
}

impl Durable {
    /// The payload's canonical JSON, as the line has it.
    pub fn payload_json(&self) -> &str {
        &self.line[self.payload_at.clone()]
    }

    /// The whole record, parsed back from its line.
    pub fn record(&self) -> Record {
        serde_json::from_str(self.line.trim_end()).expect("the writer wrote a record's line")
    }

    /// A durable record as the writer would have made it from `record`
    /// (for tests of what reads durable records), its line and hash as
    /// `record` has them, an older line's too.
    pub fn from_record(record: &Record, ts_ms: u64, journal_fields: JournalFields) -> Durable {
        let line = record.to_line();
        let payload_json = crate::plan::canonical::canonical_json(&record.payload);
        // The payload is the line's fifth field, or its fourth on a line
        // without plan_id; it closes before `,"prev":`.
        let end = line.rfind(",\"prev\":").expect("a record's line has prev");
        let payload_at = end - payload_json.len()..end;
        assert_eq!(
            &line[payload_at.clone()],
            payload_json,
            "a line of sorted maps"
        );
        Durable {
            seq: record.seq,
            kind: record.kind.clone(),
            plan_id: record.plan_id.clone(),
            prev: record.prev.clone(),
            hash: record.hash.clone(),
            line,
            payload_at,
            ts_ms,
            journal_fields,
        }
    }
}

/// `(FIELD, value)` pairs for the journal mirror of a record.
pub type JournalFields = Vec<(&'static str, String)>;

pub type AppendResult = Result<Durable, String>;

const WRITER_STOPPED: &str = "the ledger writer has stopped";

/// Waits for an append's answer; a writer that went away is an error like
/// any other failed write, never a hang or a panic.
async fn settle(reply: oneshot::Receiver<AppendResult>) -> AppendResult {
    reply
        .await
        .unwrap_or_else(|_| Err(WRITER_STOPPED.to_string()))
}

/// Called by whoever wrote a batch, once it is durable, before the callers
/// are answered.
pub type DurableObserver = Box<dyn Fn(&[Durable]) + Send>;

/// A record to append, before it is sealed into the chain.
pub struct Entry {
    kind: String,
    plan_id: Option<String>,
    /// Written out by [`Entry::new`], on the caller's thread: the writer,
    /// which holds up every appender, only copies it into place.
    payload_json: String,
    journal_fields: JournalFields,
}

struct Append {
    entry: Entry,
    reply: oneshot::Sender<AppendResult>,
}

impl Entry {
    pub fn new(
        kind: String,
        plan_id: Option<String>,
        payload: &Value,
        journal_fields: JournalFields,
    ) -> Entry {
        Entry {
            kind,
            plan_id,
            payload_json: crate::plan::canonical::canonical_json(payload),
            journal_fields,
        }
    }

    fn queued(self) -> (Append, oneshot::Receiver<AppendResult>) {
        let (reply, rx) = oneshot::channel();
        (Append { entry: self, reply }, rx)
    }
}

/// Appends waiting for the writer, and whether a write is under way.
struct Queue {
    pending: Vec<Append>,
    writing: bool,
    /// Cleared when the last [`LedgerWriter`] handle is dropped.
    open: bool,
    /// Set if the writer thread died: appends are then answered at once
    /// with an error rather than left waiting.
    stopped: bool,
    /// The writer thread waits on `changed`: only then is a notify
    /// needed (each is a futex call, made with the queue locked).
    thread_waiting: bool,
}

impl Queue {
    /// The oldest appends, as many as one write carries.
    fn take_batch(&mut self) -> Vec<Append> {
        let take = self.pending.len().min(MAX_BATCH);
        self.pending.drain(..take).collect()
    }

    /// Takes `appends` for the writer thread, or refuses them when it died.
    fn push(&mut self, appends: impl IntoIterator<Item = Append>) {
        for append in appends {
            if self.stopped {
                let _ = append.reply.send(Err(WRITER_STOPPED.to_string()));
            } else {
                self.pending.push(append);
            }
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signals the writer thread that `queue` changed.
    changed: Condvar,
    /// Locked only by whoever set `queue.writing`.
    state: Mutex<(WriterState, DurableObserver)>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, batch: Vec<Append>) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (state, observer) = &mut *guard;
        state.commit(batch, observer);
    }

    /// Ends a write: the writer thread takes whatever queued up meanwhile.
    fn finish_write(&self) {
        let mut queue = self.queue();
        queue.writing = false;
        if !queue.pending.is_empty() && queue.thread_waiting {
            self.changed.notify_one();
        }
    }

    /// The writer thread: waits for appends while no one else writes, and
    /// writes each batch; ends when every handle is gone and all is written.
    fn run(&self) {
        // Should a write panic, everything queued and everything later is
        // answered with an error (dropping a reply sender answers it too).
        struct Stopped<'a>(&'a Shared);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                let mut queue = self.0.queue();
                queue.stopped = true;
                queue.pending.clear();
            }
        }
        let _stopped = Stopped(self);
        loop {
            let batch = {
                let mut queue = self.queue();
                loop {
                    if !queue.writing && !queue.pending.is_empty() {
                        break;
                    }
                    if !queue.open && queue.pending.is_empty() {
                        return;
                    }
                    queue.thread_waiting = true;
                    queue = self.changed.wait(queue).unwrap_or_else(|p| p.into_inner());
                    queue.thread_waiting = false;
                }
                queue.writing = true;
                queue.take_batch()
            };
            self.commit(batch);
            self.finish_write();
        }
    }
}

/// Closes the queue when the last handle goes, so the thread can end.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.queue().open = false;
        self.0.changed.notify_one();
    }
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
    handle: Arc<Handle>,
    records: Arc<AtomicU64>,
    position: Arc<Mutex<Position>>,
}

impl LedgerWriter {
    pub fn start(options: WriterOptions, observer: DurableObserver) -> io::Result<LedgerWriter> {
        std::fs::create_dir_all(&options.dir)?;
        let records = Arc::new(AtomicU64::new(options.tip.seq));
        let mut state = WriterState::open(options, records.clone())?;
        let position = Arc::new(Mutex::new(state.position()));
        state.shared_position = Some(position.clone());
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                writing: false,
                open: true,
                stopped: false,
                thread_waiting: false,
            }),
            changed: Condvar::new(),
            state: Mutex::new((state, observer)),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || thread_shared.run())?;
        Ok(LedgerWriter {
            handle: Arc::new(Handle(shared)),
            records,
            position,
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.0
    }

    /// Queues an append for the writer thread; the receiver answers once it
    /// is durable (or failed).
    pub fn append(
        &self,
        kind: String,
        plan_id: Option<String>,
        payload: Value,
        journal_fields: JournalFields,
    ) -> oneshot::Receiver<AppendResult> {
        let entry = Entry::new(kind, plan_id, &payload, journal_fields);
        let (append, rx) = entry.queued();
        let shared = self.shared();
        let mut queue = shared.queue();
        queue.push([append]);
        if queue.thread_waiting {
            shared.changed.notify_one();
        }
        rx
    }

    /// Appends `entries` in order, in one write, and answers once they are
    /// durable. When the writer is idle with nothing queued, the write and
    /// its fdatasync happen right here, on the caller's thread (for an
    /// async caller, one tokio worker is blocked for that long; only one
    /// caller at a time can be in this position); otherwise the entries
    /// join the queue behind what is already there and share its group
    /// commit.
    pub async fn write_now(&self, entries: Vec<Entry>) -> Vec<AppendResult> {
        let (appends, replies): (Vec<_>, Vec<_>) = entries.into_iter().map(Entry::queued).unzip();
        let shared = self.shared();
        let inline = {
            let mut queue = shared.queue();
            if queue.writing || queue.stopped || !queue.pending.is_empty() {
                queue.push(appends);
                if queue.thread_waiting {
                    shared.changed.notify_one();
                }
                None
            } else {
                queue.writing = true;
                Some(appends)
            }
        };
        if let Some(appends) = inline {
            // Answers the queue's waiters too if the write panics.
            struct Finish<'a>(&'a Shared);
            impl Drop for Finish<'_> {
                fn drop(&mut self) {
                    self.0.finish_write();
                }
            }
            let _finish = Finish(shared);
            shared.commit(appends);
            // What queued up meanwhile is written here too, once: waking the
            // writer thread for it would cost a hand-off on top of the wait.
            let queued = shared.queue().take_batch();
            if !queued.is_empty() {
                shared.commit(queued);
            }
        }
        let mut results = Vec::with_capacity(replies.len());
        for reply in replies {
            results.push(settle(reply).await);
        }
        results
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
    shared_position: Option<Arc<Mutex<Position>>>,
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
        let mut sealed_records = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut buf = Vec::with_capacity(batch.len() * 320);
        for append in batch {
            let ts_ms = now_ms();
            let entry = append.entry;
            let seq = self.tip.seq + 1;
            let sealed = Unsealed {
                seq,
                ts: &rfc3339(ts_ms),
                kind: &entry.kind,
                plan_id: entry.plan_id.as_deref(),
                payload_json: &entry.payload_json,
                prev: &self.tip.hash,
            }
            .seal();
            buf.extend_from_slice(sealed.line.as_bytes());
            let prev = std::mem::replace(&mut self.tip.hash, sealed.hash.clone());
            self.tip.seq = seq;
            sealed_records.push(Durable {
                seq,
                kind: entry.kind,
                plan_id: entry.plan_id,
                prev,
                hash: sealed.hash,
                line: sealed.line,
                payload_at: sealed.payload_at,
                ts_ms,
                journal_fields: entry.journal_fields,
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
                let observed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    observer(&sealed_records)
                }));
                if observed.is_err() {
                    eprintln!("antibody: ledger: a durable-record observer panicked");
                }
                for (reply, durable) in replies.into_iter().zip(sealed_records) {
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
