//! sd_notify(3) messages to systemd. Outside systemd (no `NOTIFY_SOCKET`)
//! every call is a no-op.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    // Failure to reach the notify socket must never take the agent down.
    let _ = sd_notify::notify(states);
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}

/// Work a start has done: records replayed, plans archived, checkpoints
/// and records written. [`StartKeepalive`] tells systemd the start is
/// still moving while this grows.
static START_PROGRESS: AtomicU64 = AtomicU64::new(0);

/// Counts `n` units of start-up work done.
pub fn note_start_progress(n: u64) {
    START_PROGRESS.fetch_add(n, Ordering::Relaxed);
}

/// How often the keepalive looks at the progress.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// How far each `EXTEND_TIMEOUT_USEC` pushes the start's deadline: longer
/// than [`KEEPALIVE_EVERY`], so a start that keeps moving never times out,
/// and one that stops moving does, this long after its last progress (or
/// at `TimeoutStartSec=`, whichever is later).
pub const START_EXTENSION: Duration = Duration::from_secs(30);

/// While it lives (from before the replay until `READY=1`), a thread sends
/// `EXTEND_TIMEOUT_USEC` whenever the start made progress since it last
/// looked: a replay of a long ledger is not mistaken for a hang and killed
/// into a restart loop, and a start that is stuck still times out.
pub struct StartKeepalive {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StartKeepalive {
    pub fn start() -> StartKeepalive {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("start-keepalive".into())
                .spawn(move || {
                    let mut seen = None;
                    while !stop.load(Ordering::Relaxed) {
                        let now = START_PROGRESS.load(Ordering::Relaxed);
                        if seen != Some(now) {
                            extend_start(START_EXTENSION);
                            seen = Some(now);
                        }
                        std::thread::park_timeout(KEEPALIVE_EVERY);
                    }
                })
                .ok()
        };
        StartKeepalive { stop, thread }
    }
}

impl Drop for StartKeepalive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn extend_start(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}
