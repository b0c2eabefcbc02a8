//! The bridge's journal lines: every accepted request with its principal,
//! peer and plan, and every peer that starts being slowed down. Under
//! systemd (`JOURNAL_STREAM` set) they go to journald with fields
//! (`journalctl -u antibody-web ANTIBODY_WEB_PRINCIPAL=alice`); otherwise
//! to stderr, one line each.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::journal::{Journal, JournalEntry};

/// Entries waiting for the writer thread; past this, new ones are dropped
/// (and counted, and the count journaled once the journal takes entries
/// again) rather than stalling the bridge's one runtime thread.
const QUEUE: usize = 4096;

/// The writer's pause after each batch of lines.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// Writes the journal lines on a thread of its own: a send to a stalled
/// journald (or a blocked stderr) blocks, and must never hold the HTTP
/// requests, the metrics and the event streams that share the runtime.
pub struct Audit {
    queue: SyncSender<JournalEntry>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Queued and not yet written.
    pending: AtomicU64,
    /// Dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
}

impl Audit {
    pub fn from_env() -> Audit {
        let journal = if std::env::var_os("JOURNAL_STREAM").is_some() {
            Journal::detect()
        } else {
            Journal::stderr()
        };
        Audit::start(journal)
    }

    fn start(journal: Journal) -> Audit {
        let (queue, entries) = sync_channel::<JournalEntry>(QUEUE);
        let counts = Arc::new(Counts::default());
        let writer_counts = counts.clone();
        let spawned = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                while let Ok(first) = entries.recv() {
                    // Whatever queued meanwhile, then a pause: under load the
                    // requests' sends then find the writer awake and cost no
                    // wake-up each (a futex call and a thread switch per
                    // request before; the lines are 2 ms later at most).
                    for entry in std::iter::once(first).chain(entries.try_iter()) {
                        journal.send(&entry);
                        writer_counts.pending.fetch_sub(1, Ordering::Relaxed);
                    }
                    let dropped = writer_counts.dropped.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        journal.send(&JournalEntry {
                            priority: 4,
                            message: format!(
                                "antibody-web: {dropped} audit entries dropped: the journal did not keep up"
                            ),
                            fields: vec![],
                        });
                    }
                    std::thread::sleep(BATCH_PAUSE);
                }
            });
        if let Err(e) = spawned {
            // The entries then go nowhere; say so where it can still be seen.
            eprintln!("<3>antibody-web: cannot start the audit writer: {e}");
        }
        Audit { queue, counts }
    }

    fn write(&self, entry: JournalEntry) {
        self.counts.pending.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counts.pending.fetch_sub(1, Ordering::Relaxed);
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counts.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most `grace`) until every queued entry is written: at stop.
    pub fn drain(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.counts.pending.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// An accepted request: `principal` did `what` from `peer`.
    pub fn accepted(&self, principal: &str, peer: IpAddr, what: &str, plan_id: Option<&str>) {
        let mut fields = vec![
            ("ANTIBODY_WEB_PRINCIPAL", principal.to_string()),
            ("ANTIBODY_WEB_PEER", peer.to_string()),
            ("ANTIBODY_WEB_REQUEST", what.to_string()),
        ];
        let plan = match plan_id {
            Some(id) => {
                fields.push(("ANTIBODY_PLAN_ID", id.to_string()));
                format!(" plan {id}")
            }
            None => String::new(),
        };
        self.write(JournalEntry {
            priority: 6,
            message: format!("antibody-web: {principal} from {peer}: {what}{plan}"),
            fields,
        });
    }

    /// A peer refused for its credentials (401); logged at notice level so
    /// a guesser shows in the journal.
    pub fn refused(&self, peer: IpAddr, why: &str) {
        self.write(JournalEntry {
            priority: 5,
            message: format!("antibody-web: refused credentials from {peer}: {why}"),
            fields: vec![("ANTIBODY_WEB_PEER", peer.to_string())],
        });
    }

    /// `peer` failed too often and is now answered 429 for `secs`.
    pub fn slowed(&self, peer: IpAddr, secs: u64) {
        self.write(JournalEntry {
            priority: 4,
            message: format!(
                "antibody-web: {peer} failed authentication too often; refused for {secs} s"
            ),
            fields: vec![("ANTIBODY_WEB_PEER", peer.to_string())],
        });
    }

    pub fn info(&self, message: &str) {
        self.write(JournalEntry {
            priority: 6,
            message: format!("antibody-web: {message}"),
            fields: vec![],
        });
    }
}
