//! The bench's echo services: a do-nothing service with the agent's
//! message pattern on the bus, for the ceilings the agent's throughput is
//! compared with, and its durable twin, for the floor that the agent's
//! durability contract puts under any implementation on this disk.
//!
//! Each runs in a process of its own (`antibody_bench --echo-server`,
//! `--echo-server --durable DIR`), as the agent does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::{oneshot, Notify};

pub const ECHO_NAME: &str = "org.vael.BenchEcho";
const ECHO_PATH: &str = "/org/vael/BenchEcho";
/// Lets root own the echo's name and call it on the private bus.
pub const ECHO_POLICY: &str = r#"<policy user="root"><allow own="org.vael.BenchEcho"/><allow send_destination="org.vael.BenchEcho"/></policy>"#;

/// The bytes of a one-action `notify_operator` plan's records as the agent
/// writes them for the bench's alerts (averages read off its ledger,
/// 2026-12-01): `plan_created`, which is durable before the answer, then
/// `plan_started`, `action_started`, `action_applied` and `plan_finished`
/// in one write, durable before the plan's last three signals.
const CREATED_RECORD_BYTES: usize = 647;
const REST_RECORD_BYTES: [usize; 4] = [276, 299, 374, 295];
/// What a line is made of, so that making one costs a copy, as the
/// agent's lines (already serialized when written) do.
static FILLER: [u8; 1024] = [b'x'; 1024];
const _: () = {
    assert!(CREATED_RECORD_BYTES <= FILLER.len() + 1);
    let mut i = 0;
    while i < REST_RECORD_BYTES.len() {
        assert!(REST_RECORD_BYTES[i] >= 1 && REST_RECORD_BYTES[i] <= FILLER.len() + 1);
        i += 1;
    }
};

/// A group commit on one append-only file: what a caller appends is
/// durable (written, then `fdatasync`) when its `append` returns, and the
/// callers waiting at once share one write and one `fdatasync`, as the
/// agent's ledger writer shares them. No hash chain, no journal mirror,
/// no JSON: the least any writer keeping the agent's promises must do.
struct GroupCommit {
    queue: Mutex<Vec<(Vec<u8>, oneshot::Sender<()>)>>,
    wake: Condvar,
}

impl GroupCommit {
    fn start(path: PathBuf) -> Arc<GroupCommit> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let log = Arc::new(GroupCommit {
            queue: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        });
        let writer = log.clone();
        std::thread::spawn(move || loop {
            let batch = {
                let mut queue = writer.queue.lock().unwrap();
                while queue.is_empty() {
                    queue = writer.wake.wait(queue).unwrap();
                }
                std::mem::take(&mut *queue)
            };
            let bytes = batch
                .iter()
                .map(|(b, _)| b.as_slice())
                .collect::<Vec<_>>()
                .concat();
            // A failed write would leave its callers unanswered and the
            // bench waiting on them: end the service, which fails the bench.
            if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
                eprintln!("the durable echo could not write {}: {e}", path.display());
                std::process::exit(1);
            }
            for (_, done) in batch {
                let _ = done.send(());
            }
        });
        log
    }

    /// `lines` lines of these lengths, durable when this returns.
    async fn append(&self, lengths: &[usize]) {
        let mut bytes = Vec::with_capacity(lengths.iter().sum());
        for &len in lengths {
            bytes.extend_from_slice(&FILLER[..len - 1]);
            bytes.push(b'\n');
        }
        let (done, durable) = oneshot::channel();
        {
            let mut queue = self.queue.lock().unwrap();
            queue.push((bytes, done));
            if queue.len() == 1 {
                self.wake.notify_one();
            }
        }
        durable.await.unwrap();
    }
}

/// Plans whose signals (and, for the durable echo, records) are not all
/// out yet, so that a row can wait until every plan has finished, as the
/// agent's sustained row does.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Counts a plan in until the guard is dropped (even by a panic, so
    /// that `Drained` cannot wait for a plan that is gone).
    fn start(self: &Arc<Self>) -> PlanGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        PlanGuard(self.clone())
    }

    async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

struct PlanGuard(Arc<InFlight>);

impl Drop for PlanGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

struct Echo {
    log: Option<Arc<GroupCommit>>,
    in_flight: Arc<InFlight>,
}

#[zbus::interface(name = "org.vael.BenchEcho")]
impl Echo {
    /// Answered at once (the durable echo: once its `plan_created` bytes
    /// are durable), then the four signals a one-action plan sends
    /// (`PlanQueued`, `PlanStatusChanged` twice, `ActionFinished`); the
    /// durable echo writes the plan's other records after `PlanQueued`,
    /// before the other three, as the agent does.
    async fn submit_alert(
        &self,
        _alert_json: &str,
        #[zbus(signal_emitter)] emitter: zbus::object_server::SignalEmitter<'_>,
    ) -> (String, bool) {
        if let Some(log) = &self.log {
            log.append(&[CREATED_RECORD_BYTES]).await;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let emitter = emitter.to_owned();
        let plan = id.clone();
        let log = self.log.clone();
        let guard = self.in_flight.start();
        // After the answer, as the agent's signal pump sends them.
        tokio::spawn(async move {
            let _guard = guard;
            let _ = Echo::plan_queued(&emitter, &plan, "NEXUS", "low").await;
            if let Some(log) = log {
                log.append(&REST_RECORD_BYTES).await;
            }
            let _ = Echo::plan_status_changed(&emitter, &plan, "in_progress").await;
            let _ = Echo::action_finished(&emitter, &plan, 0, "notify_operator", "applied").await;
            let _ = Echo::plan_status_changed(&emitter, &plan, "success").await;
        });
        (id, true)
    }

    /// Returns when every plan answered so far has sent its last signal.
    async fn drained(&self) {
        self.in_flight.drained().await;
    }

    #[zbus(signal)]
    async fn plan_queued(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        plan_id: &str,
        source: &str,
        severity: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn plan_status_changed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        plan_id: &str,
        status: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn action_finished(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        plan_id: &str,
        index: u32,
        kind: &str,
        outcome: &str,
    ) -> zbus::Result<()>;
}

/// The echo service's process: `--durable DIR` appends to `DIR/echo.log`.
pub async fn serve(durable: Option<PathBuf>) {
    let echo = Echo {
        log: durable.map(|dir| GroupCommit::start(dir.join("echo.log"))),
        in_flight: Arc::default(),
    };
    let conn = zbus::connection::Builder::system()
        .serve_at(ECHO_PATH, echo)
        .name(ECHO_NAME)
        .build()
        .await
        .unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    let _conn = conn;
    std::future::pending::<()>().await;
}

/// A started echo service, killed on drop.
pub struct EchoProcess(std::process::Child);

impl EchoProcess {
    /// Started on the bus at `address`; durable when given a directory.
    pub fn start(address: &str, durable: Option<&Path>) -> EchoProcess {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.arg("--echo-server")
            .env("DBUS_SYSTEM_BUS_ADDRESS", address)
            .stdout(std::process::Stdio::piped());
        if let Some(dir) = durable {
            cmd.arg("--durable").arg(dir);
        }
        let mut child = cmd.spawn().unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the echo service did not start");
        EchoProcess(child)
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client's proxy for the echo service.
pub async fn proxy(conn: &zbus::Connection) -> zbus::Proxy<'static> {
    zbus::proxy::Builder::new(conn)
        .destination(ECHO_NAME)
        .path(ECHO_PATH)
        .interface(ECHO_NAME)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

/// Whether `--durable DIR` was given: DIR.
pub fn durable_arg() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--durable")?;
    args.get(at + 1).map(PathBuf::from)
}
