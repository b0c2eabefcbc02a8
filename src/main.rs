//! antibodyd: wiring only — config, ledger and engine, the bus, signals and
//! systemd notifications. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::stream::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use antibody::actions::Registry;
use antibody::config::{Config, DEFAULT_CONFIG_PATH};
use antibody::engine::{Engine, EngineParts, VERSION};
use antibody::plan::Event;
use antibody::sys::journal::{Journal, JournalMirror};
use antibody::sys::nft::backend::NftFirewall;
use antibody::sys::nft::cli::NftCli;
use antibody::sys::notifier::SystemNotifier;
use antibody::sys::systemd::SystemdManager;
use antibody::sys::{sdnotify, Sys};
use antibody::{dbus, events};

/// mimalloc rather than glibc's malloc: a plan's path allocates and frees
/// thousands of small strings and JSON values on several threads, and
/// under callgrind glibc's malloc/free took about 30 % of the agent's
/// instructions per plan (BENCHMARKS.md, "Where a plan's CPU goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a stop waits for steps under way before leaving them to recovery.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a stop waits for the journal mirror to drain: with STOP_GRACE,
/// inside the unit's TimeoutStopSec=30s.
const MIRROR_FLUSH_GRACE: Duration = Duration::from_secs(5);
/// The longest wait between two tries to reach a restarted system bus.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// How long one try may take.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "antibodyd",
    version,
    about = "Antibody agent: turns alerts into audited, reversible mitigations"
)]
struct Args {
    /// Configuration file; drop-ins are read from FILE.d/*.toml.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Check the configuration, print it with every default filled in, and exit.
    #[arg(long)]
    check_config: bool,
}

fn load_config(args: &Args) -> Result<Config, String> {
    let missing_ok = args.config == std::path::Path::new(DEFAULT_CONFIG_PATH);
    Config::load(&args.config, missing_ok).map_err(|e| format!("configuration: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("<3>antibodyd: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    if args.check_config {
        print!("{}", toml::to_string(&config).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if !config.notify.channels.is_empty() || !config.callbacks.is_empty() {
        for file in antibody::config::world_readable_files(&args.config) {
            eprintln!(
                "<4>antibodyd: {} is readable by every user, and webhook and callback URLs often carry tokens: chmod 0640 it",
                file.display()
            );
        }
    }
    // At least two workers: a ledger write (and its fdatasync) can run on
    // the worker of the task that asked for it (ledger::writer), and the
    // bus must still be served meanwhile, even on a one-CPU machine.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("<3>antibodyd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(args, config));
    // A call back's HTTP exchange may still be running on a blocking
    // thread (up to its timeout): unrecorded, it is made again by the next
    // start, so the process need not wait for it past systemd's stop timeout.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("<3>antibodyd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The systemd unit this process runs in, from its cgroup path.
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup
        .lines()
        .filter_map(|line| line.rsplit('/').next())
        .find(|name| {
            antibody::actions::unit_name::has_unit_suffix(name) && !name.ends_with(".slice")
        })
        .map(str::to_string)
}

async fn run(args: Args, config: Config) -> Result<(), String> {
    let journal = Journal::detect();
    let events = events::channel();
    let notices = Arc::new(dbus::NoticeSignals::default());
    if config.auth.polkit {
        eprintln!("<6>antibodyd: auth.polkit = true: polkit decides for every caller but root");
    }
    let firewall: Arc<dyn antibody::sys::nft::Firewall> =
        Arc::new(NftFirewall::start(NftCli::new()));
    let sys = Sys {
        notifier: Arc::new(SystemNotifier {
            journal,
            signals: notices.clone(),
        }),
        systemd: Arc::new(SystemdManager::new()),
        firewall: firewall.clone(),
        http: Arc::new(antibody::sys::http::UreqClient),
    };
    // Until READY=1: a long replay keeps pushing the start's deadline
    // (EXTEND_TIMEOUT_USEC) while it makes progress.
    let keepalive = sdnotify::StartKeepalive::start();
    let engine = Engine::open(
        config,
        EngineParts {
            registry: Registry::builtin(),
            sys,
            events,
            mirror: Some(JournalMirror::start(journal)),
            own_unit: own_unit(),
        },
    )
    .map_err(|e| format!("cannot open the ledger: {e}"))?;

    engine
        .record_agent(Event::AgentStarted {
            version: VERSION.into(),
            pid: std::process::id(),
        })
        .await;
    let health = engine.ledger_health();
    if !health.ok {
        eprintln!(
            "<2>antibodyd: ledger {}; the agent keeps appending",
            health.report
        );
        engine.note_chain_broken().await;
    }
    if let Err(e) = engine.recover_before_ready().await {
        eprintln!("<3>antibodyd: reconcile of inet antibody at start failed: {e}");
    }

    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| format!("signals: {e}"))?;
    let connection = dbus::serve(engine.clone(), &notices)
        .await
        .map_err(|e| format!("cannot serve {} on the system bus: {e}", dbus::BUS_NAME))?;
    let watchdog_interval = sdnotify::watchdog_interval();
    if let Some(interval) = watchdog_interval {
        // Before the loop starts, so its very first sleep is short enough.
        engine.set_heartbeat_interval(interval / 3);
    }
    let engine_loop = tokio::spawn(engine.clone().run());
    tokio::spawn(engine.clone().reconcile_loop());
    tokio::spawn(engine.clone().reconcile_units_loop());
    tokio::spawn(engine.clone().upkeep_loop());
    tokio::spawn(engine.clone().callback_loop());
    drop(keepalive);
    sdnotify::ready(&engine.status_line());
    tokio::spawn(watchdog(engine.clone(), watchdog_interval));
    if engine.started_from_checkpoint() {
        // The start read only the tail; the whole chain is re-walked here,
        // after READY=1, and a break is reported as at any other time.
        let engine = engine.clone();
        tokio::spawn(async move {
            engine.verify_ledger().await;
        });
    }

    let mut bus = Some(connection);
    let reason = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Some(SIGHUP) => {
                    sdnotify::reloading();
                    match load_config(&args) {
                        Ok(config) => engine.reload(config).await,
                        Err(e) => {
                            eprintln!("<3>antibodyd: reload refused, the running configuration stays: {e}");
                            engine.record_agent(Event::ConfigReloaded { ok: false, detail: e }).await;
                        }
                    }
                    sdnotify::ready(&engine.status_line());
                }
                Some(SIGINT) => break "SIGINT".to_string(),
                _ => break "SIGTERM".to_string(),
            },
            // A restarted dbus-daemon: the agent stays up (timed reverts and
            // reconcile go on without the bus) and serves the new bus as
            // soon as it accepts connections.
            _ = closed(&bus) => {
                notices.detach();
                eprintln!("<4>antibodyd: lost the system bus connection; serving {} again once the bus is back", dbus::BUS_NAME);
                bus = None;
            }
            served = reconnect(engine.clone(), &notices), if bus.is_none() => {
                eprintln!("<5>antibodyd: serving {} on the system bus again", dbus::BUS_NAME);
                bus = Some(served);
            }
        }
    };

    sdnotify::stopping();
    engine.begin_stop();
    engine.record_agent(Event::AgentStopping { reason }).await;
    let deadline = Instant::now() + STOP_GRACE;
    while engine.running_plans() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = engine_loop.await;
    // The last records (agent_stopping among them) reach the journal, and
    // so a fleet's collector, before the process ends; what could not is
    // recorded as dropped.
    if !engine.drain_journal_mirror(MIRROR_FLUSH_GRACE).await {
        eprintln!(
            "<4>antibodyd: the journal mirror did not drain at stop; the ledger keeps every record"
        );
    }
    if engine.running_plans() == 0 {
        // Through the fold gate: a call still being answered (a submit
        // that passed its check before the stop) is either in it or after.
        if let Err(e) = engine.checkpoint_now().await {
            eprintln!(
                "<4>antibodyd: cannot write the checkpoint; the next start replays the ledger: {e}"
            );
        }
    } else {
        eprintln!("<4>antibodyd: steps still under way at stop; the next start recovers them from the ledger");
    }
    // The table normally stays: its elements' kernel timeouts keep the
    // isolations honest while the agent is down.
    if engine.config().nft.remove_on_stop {
        if let Err(e) = firewall.remove_table().await {
            eprintln!("<4>antibodyd: nft.remove_on_stop: cannot remove inet antibody: {e}");
        }
    }
    if let Some(connection) = bus.filter(|c| !c.is_closed()) {
        let _ = connection.release_name(dbus::BUS_NAME).await;
    }
    Ok(())
}

/// Ends when the connection does; never while there is none.
async fn closed(bus: &Option<zbus::Connection>) {
    match bus {
        Some(connection) => connection.closed().await,
        None => std::future::pending().await,
    }
}

/// Serves the agent on the system bus again, trying until it works: a bus
/// daemon being restarted takes a moment to accept connections.
async fn reconnect(engine: Arc<Engine>, notices: &dbus::NoticeSignals) -> zbus::Connection {
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(delay).await;
        // Bounded: a connection can wait in the backlog of a bus socket
        // whose daemon is not back.
        let served =
            tokio::time::timeout(RECONNECT_TIMEOUT, dbus::serve(engine.clone(), notices)).await;
        match served.unwrap_or_else(|_| Err(zbus::Error::Failure("no answer from the bus".into())))
        {
            Ok(connection) => return connection,
            Err(e) => {
                if delay >= RECONNECT_MAX_DELAY {
                    eprintln!("<4>antibodyd: the system bus is still unavailable: {e}");
                }
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
            }
        }
    }
}

/// `WATCHDOG=1` only while the engine loop proves itself alive: a stalled
/// engine stops the pings and systemd restarts the agent.
async fn watchdog(engine: Arc<Engine>, interval: Option<Duration>) {
    let tick = interval.map(|i| i / 3).unwrap_or(Duration::from_secs(5));
    let max_age_ms = interval
        .map(|i| i.as_millis() as u64)
        .unwrap_or(u64::MAX)
        .min(10_000);
    loop {
        tokio::time::sleep(tick).await;
        if engine.is_stopping() {
            return;
        }
        if interval.is_some() && engine.heartbeat_age_ms() < max_age_ms {
            sdnotify::watchdog();
        }
        sdnotify::status(&engine.status_line());
    }
}
