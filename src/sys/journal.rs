//! The journal mirror: every ledger record also goes to journald with
//! structured fields, so `journalctl -u antibody ANTIBODY_PLAN_ID=…` and
//! `journalctl -x` (with the shipped catalog) explain what happened. Where no
//! journal socket exists (a container without journald, a developer's shell)
//! the same lines go to stderr with an sd-daemon `<N>` priority prefix.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use libsystemd::logging::{journal_send, Priority};

use crate::ledger::Durable;
use crate::plan::Severity;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The journal field that carries a ledger record's exact line.
pub const RECORD_FIELD: &str = "ANTIBODY_RECORD";

/// One `MESSAGE_ID` per record kind (and for operator notices); the catalog
/// in `systemd/antibody.catalog` explains each.
pub const MESSAGE_IDS: [(&str, &str); 25] = [
    ("agent_started", "0bc59538a1434a7c9b4908db0a54d81b"),
    ("agent_stopping", "957285b515b74df4aa921e19261a0e43"),
    ("config_reloaded", "03a7e18b53d84f5e91acd0b0855bd43d"),
    ("chain_broken", "7cfd29cdd02541aebad88a023e7eeaf6"),
    ("plan_created", "7c182583cdd54425bc46e824de0464fe"),
    ("plan_started", "7d647cf8ccab4d33812039ff0ac21963"),
    ("action_started", "67d2c12ad10f4981b99b29cbb683cf72"),
    ("action_applied", "8f1e34c795154eea8331928df49988cc"),
    ("action_attempt_failed", "f7352179c99d44ea9639948567824e1c"),
    ("action_failed", "8de57278c6a24a41988470b8904e8c9e"),
    ("action_recovered", "be9f73c529e140c793f26438bf6b3b48"),
    ("action_reverted", "575cc5aac9e84c559fb26f400819bb94"),
    ("action_revert_failed", "8979457335114bf1a11aa92ed1ae60d8"),
    ("action_skipped", "f1e5ae89236c4394a0f8d3f2b916a6b1"),
    ("plan_finished", "9acb700b0ff944c1b2eaf23d649764c7"),
    ("rollback_requested", "03182c2a8b5f4140855a92eb691799a9"),
    ("rollback_finished", "4ce41db967ba4f4b916b310a858d7724"),
    ("operator_notice", "32269a156c5b4cb899fa933daa2dcd78"),
    ("nft_drift", "5d0f3b8e2a6c4f41b7e9c1d24a8f6e03"),
    ("unit_drift", "c3a1f5e07b9d4e2a8f61d0b4e9a7c258"),
    ("journal_dropped", "4f2d9b7c1e8a4b06a3c5d7e9f1b2c4a6"),
    ("ledger_pruned", "a7e3c1f9d5b24e8c9f0a6b3d2e1c7f48"),
    ("callback_delivered", "2765507136a34c65bff119e0eb37661c"),
    ("callback_failed", "367637d85cd9440fa9b3a2bb6d6f8efd"),
    ("action_simulated", "57f0fbd42a124ab7987b4e2bdaf037e4"),
];

pub fn message_id(kind: &str) -> Option<&'static str> {
    MESSAGE_IDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, id)| *id)
}

/// syslog priority for a plan's records: the alert's severity decides.
pub fn priority_for(severity: Option<Severity>) -> u8 {
    match severity {
        Some(Severity::Critical) => 2,
        Some(Severity::High) => 3,
        Some(Severity::Med) => 4,
        Some(Severity::Low) => 5,
        None => 6,
    }
}

fn to_priority(level: u8) -> Priority {
    match level {
        0 => Priority::Emergency,
        1 => Priority::Alert,
        2 => Priority::Critical,
        3 => Priority::Error,
        4 => Priority::Warning,
        5 => Priority::Notice,
        6 => Priority::Info,
        _ => Priority::Debug,
    }
}

/// A line for the journal (or stderr).
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub priority: u8,
    pub message: String,
    pub fields: Vec<(&'static str, String)>,
}

#[derive(Clone, Copy, Debug)]
pub struct Journal {
    to_journald: bool,
}

impl Journal {
    pub fn detect() -> Journal {
        Journal {
            to_journald: Path::new(JOURNAL_SOCKET).exists(),
        }
    }

    /// Lines to stderr only, journald or not (a process whose stderr
    /// is not the journal's, e.g. under a test harness).
    pub fn stderr() -> Journal {
        Journal { to_journald: false }
    }

    pub fn to_journald(&self) -> bool {
        self.to_journald
    }

    /// Sends `entry` to journald, or where there is none to stderr. False
    /// when journald is there and would not take it (the line then goes
    /// to stderr, without its fields): the entry is lost to the journal.
    pub fn send(&self, entry: &JournalEntry) -> bool {
        if self.to_journald {
            let fields = entry.fields.iter().map(|(k, v)| (*k, v.as_str()));
            if journal_send(to_priority(entry.priority), &entry.message, fields).is_ok() {
                return true;
            }
        }
        let _ = std::io::stderr()
            .lock()
            .write_all(stderr_line(entry).as_bytes());
        !self.to_journald
    }

    /// Sends each of `entries` as [`Journal::send`] does, and says which
    /// journald took. Without journald, the lines go to stderr in one
    /// write(2): under load the mirror hands over dozens at a time, and a
    /// write each was most of its system time. The stderr lock is held
    /// across it, so no other line of this process lands inside a batch; a
    /// batch is larger than PIPE_BUF, so another process writing to the
    /// same pipe could (none inherits the agent's stderr).
    pub fn send_all(&self, entries: &[&JournalEntry]) -> Vec<bool> {
        if self.to_journald {
            return entries.iter().map(|entry| self.send(entry)).collect();
        }
        let mut lines = String::new();
        for entry in entries {
            lines.push_str(&stderr_line(entry));
        }
        let _ = std::io::stderr().lock().write_all(lines.as_bytes());
        vec![true; entries.len()]
    }
}

/// `entry` as one stderr line: `<priority>message FIELD=value …`, with the
/// ANTIBODY_ fields but the record itself and the previous hash (the
/// message says the one, the line before the other). Written into one
/// buffer, for one write(2): `eprintln!` would issue one per formatted
/// piece on the unbuffered stderr.
fn stderr_line(entry: &JournalEntry) -> String {
    let shown = entry
        .fields
        .iter()
        .filter(|(k, _)| k.starts_with("ANTIBODY_") && *k != RECORD_FIELD && *k != "ANTIBODY_PREV");
    let mut line = String::with_capacity(entry.message.len() + 256);
    line.push('<');
    line.push_str(&entry.priority.to_string());
    line.push('>');
    line.push_str(&entry.message);
    line.push(' ');
    for (i, (key, value)) in shown.enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(key);
        line.push('=');
        line.push_str(value);
    }
    line.push('\n');
    line
}

/// The first `max` bytes of a record's payload JSON (cut at a
/// character), with `…` when there was more: a plan's payload may be
/// hundreds of KiB, and the message shows 400 bytes of it.
fn excerpt(json: &str, max: usize) -> &str {
    if json.len() <= max {
        return json;
    }
    let mut cut = max;
    while !json.is_char_boundary(cut) {
        cut -= 1;
    }
    &json[..cut]
}

/// The journal entry mirroring one durable ledger record.
pub fn record_entry(durable: &Durable) -> JournalEntry {
    let mut fields: Vec<(&'static str, String)> =
        Vec::with_capacity(7 + durable.journal_fields.len());
    fields.extend([
        ("ANTIBODY_SEQ", durable.seq.to_string()),
        ("ANTIBODY_KIND", durable.kind.clone()),
        ("ANTIBODY_HASH", durable.hash.clone()),
        ("ANTIBODY_PREV", durable.prev.clone()),
        // The exact line the ledger holds: any copy of the journal (a
        // fleet's collector) can check each record's hash and re-walk the
        // chain (`antibodyctl verify --journal`).
        (
            RECORD_FIELD,
            durable.line.trim_end_matches('\n').to_string(),
        ),
    ]);
    if let Some(id) = message_id(&durable.kind) {
        fields.push(("MESSAGE_ID", id.to_string()));
    }
    if let Some(plan) = &durable.plan_id {
        fields.push(("ANTIBODY_PLAN_ID", plan.clone()));
    }
    let mut priority = 6;
    for (k, v) in &durable.journal_fields {
        if *k == "PRIORITY" {
            priority = v.parse().unwrap_or(6);
        } else {
            fields.push((k, v.clone()));
        }
    }
    let payload = durable.payload_json();
    let shown = excerpt(payload, 400);
    let mut message = String::with_capacity(64 + shown.len());
    message.push_str("antibody: ");
    message.push_str(&durable.kind);
    if let Some(plan) = &durable.plan_id {
        message.push_str(" plan ");
        message.push_str(plan);
    }
    message.push_str(" #");
    message.push_str(&durable.seq.to_string());
    message.push_str(": ");
    message.push_str(shown);
    if shown.len() < payload.len() {
        message.push('…');
    }
    JournalEntry {
        priority,
        message,
        fields,
    }
}

/// Entries the mirror's queue holds at most: journald slower than the
/// ledger for longer drops what does not fit (counted, see
/// [`JournalMirror::take_dropped`]) rather than grow without bound or
/// hold up the ledger's writer.
pub const MIRROR_QUEUE: usize = 16_384;

/// Bytes the queued entries hold at most: each carries its whole record,
/// and a plan's record can be hundreds of KiB (a 64 KiB alert, escaped).
pub const MIRROR_QUEUE_BYTES: usize = 64 << 20;

/// What the mirror could not hand to journald since it was last asked:
/// entries the queue had no room for, and entries journald refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

struct Queued {
    seq: u64,
    bytes: usize,
    entry: JournalEntry,
}

#[derive(Default)]
struct MirrorQueue {
    entries: std::collections::VecDeque<Queued>,
    bytes: usize,
    /// The thread has taken entries and not finished sending them.
    in_flight: bool,
    /// The thread waits on `ready`: only then does a new entry need to
    /// wake it (each notify is a futex call, and the writer, which calls
    /// [`JournalMirror::mirror`], holds up every appender meanwhile).
    waiting: bool,
    dropped: Option<Dropped>,
}

impl MirrorQueue {
    fn note_dropped(&mut self, seq: u64) {
        let dropped = self.dropped.get_or_insert(Dropped {
            count: 0,
            first_seq: seq,
            last_seq: seq,
        });
        dropped.count += 1;
        dropped.first_seq = dropped.first_seq.min(seq);
        dropped.last_seq = dropped.last_seq.max(seq);
    }

    /// The oldest entries, at least one, as many as [`MIRROR_BATCH`] and
    /// [`MIRROR_BATCH_BYTES`] allow; their bytes leave the queue's count.
    fn take_batch(&mut self) -> Vec<Queued> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.entries.front() {
            if !batch.is_empty()
                && (batch.len() == MIRROR_BATCH || bytes + next.bytes > MIRROR_BATCH_BYTES)
            {
                break;
            }
            let queued = self.entries.pop_front().expect("looked at it");
            bytes += queued.bytes;
            self.bytes -= queued.bytes;
            batch.push(queued);
        }
        batch
    }
}

/// Entries the thread takes at once at most, and their bytes (beyond the
/// first entry's): what it holds outside the queue's caps.
const MIRROR_BATCH: usize = 256;
const MIRROR_BATCH_BYTES: usize = 1 << 20;

/// After each batch the thread lets entries gather this long: under load,
/// one wake-up and one write carry many records instead of one each. The
/// journal lags the ledger by this much more; nothing waits on it but
/// [`JournalMirror::flush`].
const MIRROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Default)]
struct Shared {
    queue: Mutex<MirrorQueue>,
    /// Entries are waiting.
    ready: Condvar,
    /// The queue is empty and nothing is being sent.
    idle: Condvar,
}

/// A thread that mirrors durable records to the journal, off the commit
/// path, from a bounded queue.
#[derive(Clone)]
pub struct JournalMirror {
    shared: Arc<Shared>,
}

impl JournalMirror {
    pub fn start(journal: Journal) -> JournalMirror {
        JournalMirror::start_batched(move |entries| journal.send_all(entries))
    }

    /// A mirror whose thread hands each entry to `send`, which says
    /// whether journald took it.
    pub fn start_with(send: impl Fn(&JournalEntry) -> bool + Send + 'static) -> JournalMirror {
        JournalMirror::start_batched(move |entries| entries.iter().map(|e| send(e)).collect())
    }

    /// A mirror whose thread hands entries to `send` a batch at a time;
    /// it says, entry by entry, whether journald took it.
    fn start_batched(
        send: impl Fn(&[&JournalEntry]) -> Vec<bool> + Send + 'static,
    ) -> JournalMirror {
        let shared: Arc<Shared> = Arc::default();
        let thread_side = shared.clone();
        std::thread::Builder::new()
            .name("journal-mirror".into())
            .spawn(move || loop {
                let batch = {
                    let mut q = crate::sync::lock(&thread_side.queue);
                    while q.entries.is_empty() {
                        q.waiting = true;
                        q = thread_side.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                        q.waiting = false;
                    }
                    q.in_flight = true;
                    q.take_batch()
                };
                let entries: Vec<&JournalEntry> = batch.iter().map(|q| &q.entry).collect();
                let taken = send(&entries);
                let mut q = crate::sync::lock(&thread_side.queue);
                for (queued, taken) in batch.iter().zip(taken) {
                    if !taken {
                        q.note_dropped(queued.seq);
                    }
                }
                q.in_flight = false;
                if q.entries.is_empty() {
                    thread_side.idle.notify_all();
                }
                drop(q);
                drop(batch);
                std::thread::sleep(MIRROR_PAUSE);
            })
            .expect("spawn journal mirror thread");
        JournalMirror { shared }
    }

    /// Queues the batch's entries; those that do not fit are counted.
    pub fn mirror(&self, batch: &[Durable]) {
        let mut q = crate::sync::lock(&self.shared.queue);
        for durable in batch {
            let entry = record_entry(durable);
            let bytes = entry.message.len()
                + entry
                    .fields
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            if q.entries.len() < MIRROR_QUEUE && q.bytes + bytes <= MIRROR_QUEUE_BYTES {
                q.bytes += bytes;
                q.entries.push_back(Queued {
                    seq: durable.seq,
                    bytes,
                    entry,
                });
            } else {
                q.note_dropped(durable.seq);
            }
        }
        if q.waiting {
            self.shared.ready.notify_one();
        }
    }

    /// What was dropped since the last call, if anything (the engine
    /// records it in the ledger, and so, in time, in the journal).
    pub fn take_dropped(&self) -> Option<Dropped> {
        crate::sync::lock(&self.shared.queue).dropped.take()
    }

    /// Waits, at most `timeout`, until every queued entry has been handed
    /// to journald (at stop: the last records reach the journal, and so
    /// a fleet's collector). False if time ran out first.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let q = crate::sync::lock(&self.shared.queue);
        let (_q, waited) = self
            .shared
            .idle
            .wait_timeout_while(q, timeout, |q| !q.entries.is_empty() || q.in_flight)
            .unwrap_or_else(|p| p.into_inner());
        !waited.timed_out()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `excerpt` replaced: the payload's JSON written again, then
    /// cut (with the `…` record_entry adds).
    fn excerpt_of_whole(value: &serde_json::Value, max: usize) -> String {
        let mut text = value.to_string();
        if text.len() > max {
            let cut = (0..=max).rev().find(|i| text.is_char_boundary(*i)).unwrap();
            text.truncate(cut);
            text.push('…');
        }
        text
    }

    #[test]
    fn an_excerpt_is_the_whole_json_cut_at_a_character() {
        for len in [0, 1, 380, 397, 398, 399, 400, 401, 5000] {
            for filler in ["a", "é", "€", "😀", "\"\n"] {
                let value = serde_json::json!({"text": filler.repeat(len)});
                let json = crate::plan::canonical::canonical_json(&value);
                for max in [0, 1, 2, 400] {
                    let mut shown = excerpt(&json, max).to_string();
                    if shown.len() < json.len() {
                        shown.push('…');
                    }
                    assert_eq!(
                        shown,
                        excerpt_of_whole(&value, max),
                        "{len} × {filler:?}, max {max}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_records_message_and_stderr_line_say_what_the_earlier_format_said() {
        let record = crate::ledger::Record::seal(
            9,
            "2026-01-01T00:00:00.000Z".into(),
            "action_applied".into(),
            Some("p-1".into()),
            serde_json::json!({"index": 0, "summary": "é".repeat(300)}),
            "cd".repeat(32),
        );
        let durable = Durable::from_record(
            &record,
            0,
            vec![
                ("PRIORITY", "3".to_string()),
                ("ANTIBODY_SOURCE", "ids".to_string()),
            ],
        );
        let entry = record_entry(&durable);
        assert_eq!(entry.priority, 3);
        assert_eq!(
            entry.message,
            format!(
                "antibody: action_applied plan p-1 #9: {}",
                excerpt_of_whole(&record.payload, 400)
            )
        );
        let extra: Vec<String> = entry
            .fields
            .iter()
            .filter(|(k, _)| {
                k.starts_with("ANTIBODY_") && *k != RECORD_FIELD && *k != "ANTIBODY_PREV"
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            stderr_line(&entry),
            format!("<3>{} {}\n", entry.message, extra.join(" "))
        );
        assert!(stderr_line(&entry).contains(&format!("ANTIBODY_HASH={} ", record.hash)));
        assert!(!stderr_line(&entry).contains("ANTIBODY_PREV"));
    }

    #[test]
    fn every_message_id_has_a_catalog_entry() {
        let catalog = include_str!("../../systemd/antibody.catalog");
        for (kind, id) in MESSAGE_IDS {
            assert!(
                catalog.contains(&format!("-- {id}\n")),
                "no catalog entry for {kind} ({id})"
            );
            assert!(
                catalog.contains(&format!("kind: {kind}.")),
                "catalog entry for {id} does not name {kind}"
            );
        }
        let entries = catalog.lines().filter(|l| l.starts_with("-- ")).count();
        assert_eq!(
            entries,
            MESSAGE_IDS.len(),
            "catalog entries without a MESSAGE_ID in the code"
        );
    }

    #[test]
    fn every_ledger_kind_has_a_message_id() {
        use crate::plan::Event;
        let samples = [
            Event::AgentStarted {
                version: String::new(),
                pid: 0,
            },
            Event::PlanStarted {},
            Event::RollbackFinished {},
            Event::ChainBroken {
                broken_at: 1,
                report: String::new(),
            },
        ];
        for event in samples {
            assert!(message_id(event.kind()).is_some(), "{}", event.kind());
        }
        assert_eq!(priority_for(Some(Severity::Critical)), 2);
        assert_eq!(priority_for(None), 6);
    }

    #[test]
    fn a_mirrored_entry_carries_the_exact_line_and_the_previous_hash() {
        let record = crate::ledger::Record::seal(
            7,
            "2026-01-01T00:00:00.000Z".into(),
            "plan_created".into(),
            Some("p".into()),
            serde_json::json!({"a": "ü \"q\""}),
            "ab".repeat(32),
        );
        let line = record.to_line();
        let entry = record_entry(&Durable::from_record(&record, 0, Vec::new()));
        let field = |name: &str| {
            entry
                .fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(field(RECORD_FIELD) + "\n", line);
        assert_eq!(field("ANTIBODY_PREV"), "ab".repeat(32));
        let back: crate::ledger::Record = serde_json::from_str(&field(RECORD_FIELD)).unwrap();
        assert_eq!(back.expected_hash(), record.hash);
    }

    /// A durable record `seq` whose payload is a string of `payload_bytes`.
    fn durable_of(seq: u64, payload_bytes: usize) -> Durable {
        let record = crate::ledger::Record::seal(
            seq,
            "2026-01-01T00:00:00Z".into(),
            "agent_started".into(),
            None,
            serde_json::json!("x".repeat(payload_bytes)),
            crate::ledger::GENESIS.into(),
        );
        Durable::from_record(&record, 0, Vec::new())
    }

    fn durable(seq: u64) -> Durable {
        durable_of(seq, 0)
    }

    #[test]
    fn large_records_are_dropped_by_bytes_before_the_count_is_reached() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        let mirror = JournalMirror::start_with(move |_| {
            let _ = crate::sync::lock(&held).recv();
            true
        });
        mirror.mirror(&[durable(1)]);
        while !crate::sync::lock(&mirror.shared.queue).entries.is_empty() {
            std::thread::yield_now();
        }
        // 1 MiB records: 63 fit beside their other fields, not 64.
        let batch: Vec<Durable> = (2..=101).map(|seq| durable_of(seq, 1 << 20)).collect();
        mirror.mirror(&batch);
        let dropped = mirror.take_dropped().expect("some dropped");
        assert_eq!((dropped.first_seq, dropped.last_seq), (65, 101));
        assert_eq!(dropped.count, 37);
        assert!(crate::sync::lock(&mirror.shared.queue).bytes <= MIRROR_QUEUE_BYTES);
        for _ in 0..=64 {
            release.send(()).unwrap();
        }
        assert!(mirror.flush(std::time::Duration::from_secs(10)));
    }

    #[test]
    fn entries_journald_refuses_are_counted_as_dropped_and_flush_waits_for_the_rest() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let seen = sent.clone();
        let mirror = JournalMirror::start_with(move |entry| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let seq = entry
                .fields
                .iter()
                .find(|(k, _)| *k == "ANTIBODY_SEQ")
                .map(|(_, v)| v.clone())
                .unwrap();
            crate::sync::lock(&seen).push(seq.clone());
            seq != "3" && seq != "7"
        });
        let batch: Vec<Durable> = (1..=50).map(durable).collect();
        mirror.mirror(&batch);
        assert!(mirror.flush(std::time::Duration::from_secs(10)));
        assert_eq!(
            crate::sync::lock(&sent).len(),
            50,
            "flush returned before the last"
        );
        assert_eq!(
            mirror.take_dropped(),
            Some(Dropped {
                count: 2,
                first_seq: 3,
                last_seq: 7
            })
        );
    }

    #[test]
    fn flush_gives_up_at_its_timeout() {
        let mirror = JournalMirror::start_with(|_| {
            std::thread::sleep(std::time::Duration::from_secs(2));
            true
        });
        mirror.mirror(&[durable(1)]);
        assert!(!mirror.flush(std::time::Duration::from_millis(50)));
    }

    #[test]
    fn a_mirror_that_falls_behind_drops_and_counts_rather_than_grow() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = sent.clone();
        // journald stuck on the first entry until the test lets it go.
        let mirror = JournalMirror::start_with(move |_| {
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                let _ = crate::sync::lock(&held).recv();
            }
            true
        });
        mirror.mirror(&[durable(1)]);
        while sent.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let batch: Vec<Durable> = (2..=(MIRROR_QUEUE as u64 + 11)).map(durable).collect();
        mirror.mirror(&batch);
        assert_eq!(
            mirror.take_dropped(),
            Some(Dropped {
                count: 10,
                first_seq: MIRROR_QUEUE as u64 + 2,
                last_seq: MIRROR_QUEUE as u64 + 11
            })
        );
        assert_eq!(mirror.take_dropped(), None, "told once");
        release.send(()).unwrap();
        while sent.load(std::sync::atomic::Ordering::SeqCst) < 1 + MIRROR_QUEUE as u64 {
            std::thread::yield_now();
        }
    }
}
