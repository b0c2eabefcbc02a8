//! Antibody's benchmark (issue 3's targets), each measured against a baseline
//! taken in the same run on the same machine, against the real release
//! `antibodyd` on a private `dbus-daemon` with the shipped policy.
//!
//!     cargo bench --bench antibody_bench          # prints a Markdown table
//!
//! Needs root (the shipped policy lets only root own the agent's name).

mod common;
mod echo;
#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;
use common::{
    alert, bench_home, cpu_secs, p50, timed_submit, user_and_system_secs, wait_all_idle,
    wait_drained,
};
use support::{Agent, PrivateBus};

const SAMPLES: usize = 2000;

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU seconds used by each of some groups of processes over one window
/// (a bus may be two processes: dbus-broker-launch and dbus-broker).
struct CpuWindow {
    groups: Vec<Vec<i32>>,
    start: Vec<f64>,
}

impl CpuWindow {
    fn open(groups: Vec<Vec<i32>>) -> CpuWindow {
        let start = groups.iter().map(|g| group_cpu_secs(g)).collect();
        CpuWindow { groups, start }
    }

    fn used(&self) -> Vec<f64> {
        self.groups
            .iter()
            .zip(&self.start)
            .map(|(g, s)| group_cpu_secs(g) - s)
            .collect()
    }
}

fn group_cpu_secs(pids: &[i32]) -> f64 {
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

/// How the latency samples are taken: back to back, or one every 10 ms so
/// that every process on the path has gone idle in between, as for a lone
/// alert. A measurement and its baseline are always taken the same way.
#[derive(Clone, Copy)]
enum Pace {
    BackToBack,
    Every10Ms,
}

impl Pace {
    fn samples(self) -> usize {
        match self {
            Pace::BackToBack => SAMPLES,
            Pace::Every10Ms => SAMPLES / 4,
        }
    }

    async fn wait(self) {
        if let Pace::Every10Ms = self {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A ~300-byte append with fdatasync, in the same directory as the ledger.
async fn fsync_baseline(dir: &Path, pace: Pace) -> Duration {
    let path = dir.join("fsync-baseline.bin");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let line = [b'x'; 300];
    let mut samples = Vec::new();
    for _ in 0..pace.samples() {
        pace.wait().await;
        let t = Instant::now();
        file.write_all(&line).unwrap();
        file.sync_data().unwrap();
        samples.push(t.elapsed());
    }
    std::fs::remove_file(path).unwrap();
    p50(samples)
}

async fn ping_baseline(conn: &zbus::Connection, pace: Pace) -> Duration {
    let peer = zbus::fdo::PeerProxy::builder(conn)
        .destination("org.vael.Antibody")
        .path("/org/vael/Antibody")
        .build()
        .await
        .unwrap();
    let mut samples = Vec::new();
    for _ in 0..pace.samples() {
        pace.wait().await;
        let t = Instant::now();
        peer.ping().await.unwrap();
        samples.push(t.elapsed());
    }
    p50(samples)
}

/// New alerts (numbered from `first`), each making a plan.
async fn submit_latency(proxy: &AntibodyProxy<'_>, pace: Pace, first: usize) -> Duration {
    let mut samples = Vec::new();
    for n in first..first + pace.samples() {
        pace.wait().await;
        samples.push(timed_submit(proxy, n).await);
    }
    p50(samples)
}

/// The same alert again inside the dedupe window: the agent's whole path
/// (parse, validate, hash, dedupe) without a ledger write.
async fn duplicate_latency(proxy: &AntibodyProxy<'_>) -> Duration {
    let text = alert(usize::MAX, "journal");
    proxy.submit_alert(&text).await.unwrap();
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let (_, created) = proxy.submit_alert(&text).await.unwrap();
        samples.push(t.elapsed());
        assert!(!created);
    }
    p50(samples)
}

async fn throughput(bus: &PrivateBus, clients: usize, per_client: usize, first: usize) -> f64 {
    let mut proxies = Vec::new();
    for _ in 0..clients {
        let conn = bus.connect().await;
        proxies.push(Arc::new(
            antibody::dbus::proxy::client(&conn).await.unwrap(),
        ));
        std::mem::forget(conn); // kept open by the proxy's clone
    }
    calls_per_second(proxies, per_client, move |proxy, n| async move {
        let (_, created) = proxy
            .submit_alert(&alert(first + n, "journal"))
            .await
            .unwrap();
        assert!(created);
    })
    .await
}

/// Calls per second that `callers` get through the bus together, each
/// making `per_client` calls one after the other; `call` gets its caller
/// and the call's number, unique across callers.
async fn calls_per_second<P, F, Fut>(callers: Vec<Arc<P>>, per_client: usize, call: F) -> f64
where
    P: Send + Sync + 'static,
    F: Fn(Arc<P>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let total = callers.len() * per_client;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, caller) in callers.into_iter().enumerate() {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_client {
                call(caller.clone(), c * per_client + n).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The bus's own ceiling: D-Bus round trips per second that 16 clients get
/// through the same dbus-daemon, calling the agent's `Ping` (no work, no
/// signals). A durable alert costs at least one such round trip, plus the
/// signals its plan sends.
async fn ping_throughput(bus: &PrivateBus, clients: usize, per_client: usize) -> f64 {
    let mut peers = Vec::new();
    for _ in 0..clients {
        let conn = bus.connect().await;
        let peer = zbus::fdo::PeerProxy::builder(&conn)
            .destination("org.vael.Antibody")
            .path("/org/vael/Antibody")
            .build()
            .await
            .unwrap();
        peers.push(Arc::new(peer));
        std::mem::forget(conn);
    }
    calls_per_second(peers, per_client, |peer, _| async move {
        peer.ping().await.unwrap();
    })
    .await
}

/// Plans per second an echo service gets through the same bus from
/// `clients` clients, the same way `sustained` measures the agent: from the first
/// `SubmitAlert` until every plan has sent its last signal. With
/// `durable`, the durable echo, writing in that directory.
async fn echo_throughput(
    bus: &PrivateBus,
    clients: usize,
    per_client: usize,
    durable: Option<&Path>,
) -> Row {
    let server = echo::EchoProcess::start(&bus.address(), durable);
    let groups = vec![vec![server.pid()], bus.daemon_pids()];
    counted(
        groups,
        clients * per_client,
        echo_load(bus, clients, per_client),
    )
    .await
}

/// `clients` × `per_client` distinct alerts to the echo service on `bus`,
/// until its last plan's last signal: plans per second.
async fn echo_load(bus: &PrivateBus, clients: usize, per_client: usize) -> f64 {
    // An echo service that lost a caller's answer or a plan would hold the
    // bench forever (zbus calls have no timeout): fail instead.
    tokio::time::timeout(
        Duration::from_secs(600),
        echo_calls(bus, clients, per_client),
    )
    .await
    .expect("the echo service's plans did not all finish within 10 minutes")
}

async fn echo_calls(bus: &PrivateBus, clients: usize, per_client: usize) -> f64 {
    let mut proxies = Vec::new();
    for _ in 0..clients {
        let conn = bus.connect().await;
        proxies.push(Arc::new(echo::proxy(&conn).await));
        std::mem::forget(conn);
    }
    let drain = proxies[0].clone();
    let start = Instant::now();
    calls_per_second(proxies, per_client, |proxy, n| async move {
        let (_, created): (String, bool) = proxy
            .call("SubmitAlert", &(alert(n, "journal"),))
            .await
            .unwrap();
        assert!(created);
    })
    .await;
    let () = drain.call("Drained", &()).await.unwrap();
    (clients * per_client) as f64 / start.elapsed().as_secs_f64()
}

/// One throughput row: the rate, and the CPU seconds the service (agent
/// or echo) and the bus daemon used during it.
struct Row {
    rate: f64,
    service_cpu: f64,
    bus_cpu: f64,
    count: usize,
}

impl Row {
    fn cpu_cells(&self) -> String {
        format!(
            "service {:.2} s ({:.0} µs per call), bus {:.2} s",
            self.service_cpu,
            1e6 * self.service_cpu / self.count as f64,
            self.bus_cpu
        )
    }
}

/// Runs `row` (its rate) with the CPU of each group of `groups` counted
/// over it: the service first, then the bus.
async fn counted<F: std::future::Future<Output = f64>>(
    groups: Vec<Vec<i32>>,
    count: usize,
    row: F,
) -> Row {
    let window = CpuWindow::open(groups);
    let rate = row.await;
    let used = window.used();
    Row {
        rate,
        service_cpu: used[0],
        bus_cpu: used[1],
        count,
    }
}

/// The sustained rate: from the first `SubmitAlert` of 16 clients until
/// every plan has finished (not only been answered), with the agent's and
/// the bus's CPU over that whole time.
async fn sustained(
    bus: &PrivateBus,
    proxy: &AntibodyProxy<'_>,
    pid: i32,
    clients: usize,
    per_client: usize,
) -> Row {
    let count = clients * per_client;
    counted(vec![vec![pid], bus.daemon_pids()], count, async {
        let start = Instant::now();
        throughput(bus, clients, per_client, 5_000_000).await;
        wait_drained(proxy).await;
        count as f64 / start.elapsed().as_secs_f64()
    })
    .await
}

async fn storm_rss(proxy: &AntibodyProxy<'_>, pid: i32) -> (u64, u64, usize) {
    let text = alert(42, "dbus");
    let before = rss_kib(pid);
    let mut ids = std::collections::HashSet::new();
    let mut pending = Vec::new();
    for _ in 0..100_000 {
        pending.push(proxy.submit_alert(&text));
        if pending.len() == 64 {
            for r in futures_util::future::join_all(pending.drain(..)).await {
                ids.insert(r.unwrap().0);
            }
        }
    }
    for r in futures_util::future::join_all(pending).await {
        ids.insert(r.unwrap().0);
    }
    (before, rss_kib(pid), ids.len())
}

/// Time from spawn to READY=1 for an agent on `home` (with its config).
fn time_to_ready(bus: &PrivateBus, home: &Path) -> Duration {
    let sock_path = home.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(600)))
        .unwrap();
    let start = Instant::now();
    let mut agent = Agent::start_with_config(
        bus,
        home,
        &home.join("antibody.toml"),
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 4096];
    let elapsed = loop {
        let n = sock.recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break start.elapsed();
        }
    };
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait();
    elapsed
}

async fn big_ledger(home: &Path, records: u64) {
    support::write_config(home, "");
    support::write_filler_ledger(&home.join("ledger"), records).await;
}

/// BENCH_CLIENTS: how many clients share a profile's load (16; 1 is how
/// issue 18 first measured a plan's CPU, no group commit shared).
fn profile_clients(plans: usize) -> usize {
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .map(|v| v.parse().expect("BENCH_CLIENTS: a number"))
        .unwrap_or(16);
    clients.clamp(1, plans.max(1))
}

/// BENCH_PROFILE=N with BENCH_SERVICE=durable-echo: the same load on the
/// durable echo instead of the agent, for the floor under a plan's CPU:
/// the bus messages and the two durable writes that any service keeping
/// the agent's promises must make.
async fn profile_durable_echo(plans: usize) {
    let bus = PrivateBus::start_with_extra(echo::ECHO_POLICY);
    let home = bench_home();
    let server = echo::EchoProcess::start(&bus.address(), Some(home.path()));
    let clients = profile_clients(plans);
    let start = Instant::now();
    echo_load(&bus, clients, plans / clients).await;
    let finished = clients * (plans / clients);
    print_cpu_per_plan("durable echo", server.pid(), finished, start.elapsed());
}

/// One profile line: the plans, how long they took, and the user and
/// system CPU `who` (process `pid`) has used since its start, per plan.
fn print_cpu_per_plan(who: &str, pid: i32, finished: usize, took: Duration) {
    let (user, system) = user_and_system_secs(pid);
    println!(
        "{finished} plans finished in {:.1} s; {who} CPU since its start: user {user:.2} s, system {system:.2} s ({:.0} + {:.0} µs per plan)",
        took.as_secs_f64(),
        1e6 * user / finished as f64,
        1e6 * system / finished as f64,
    );
}

/// BENCH_PROFILE=N: the sustained row's load alone, N distinct
/// one-action plans from 16 clients (BENCH_CLIENTS) on `dbus-daemon`,
/// with the agent run under BENCH_AGENT_WRAPPER (split at spaces, e.g. `valgrind
/// --tool=callgrind --callgrind-out-file=/tmp/cg.%p`), then stopped with
/// SIGTERM so that the wrapper writes its report; BENCH_STATE_KEYS adds
/// keys to its `[state]` table (`keep_finished_plans = 100000`: no plan is
/// archived during the run). Two runs with different
/// N give the instructions one plan costs (the difference over the
/// difference), start-up and shutdown cancelled out.
async fn profile(plans: usize) {
    let bus = PrivateBus::start();
    let home = bench_home();
    // Right after write_config's `[state]` table: keys of that table.
    let state_keys = std::env::var("BENCH_STATE_KEYS").unwrap_or_default();
    let config = support::write_config(
        home.path(),
        &format!("{state_keys}\n[queue]\nmax = 200000\n"),
    );
    let wrapper = std::env::var("BENCH_AGENT_WRAPPER").unwrap_or_default();
    let wrapper: Vec<&str> = wrapper.split_whitespace().collect();
    let mut agent = Agent::start_wrapped(&bus, home.path(), &config, &[], &wrapper);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(agent.pid());
    let conn = bus.connect().await;
    let proxy = antibody::dbus::proxy::client(&conn).await.unwrap();
    let clients = profile_clients(plans);
    let start = Instant::now();
    throughput(&bus, clients, plans / clients, 7_000_000).await;
    wait_drained(&proxy).await;
    let finished = clients * (plans / clients);
    println!(
        "agent RSS: {idle_rss} KiB idle after start, {} KiB after the plans",
        rss_kib(agent.pid())
    );
    print_cpu_per_plan("agent", agent.pid(), finished, start.elapsed());
    // Finished plans past `state.keep_finished_plans` are archived by the
    // upkeep (every 5 s), which a short run may end before: that work is
    // the plans' too. One round later (the idle agent costs next to
    // nothing meanwhile):
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (user, system) = user_and_system_secs(agent.pid());
    println!(
        "... with their archiving, one upkeep round later: user {user:.2} s, system {system:.2} s ({:.0} + {:.0} µs per plan); RSS {} KiB",
        1e6 * user / finished as f64,
        1e6 * system / finished as f64,
        rss_kib(agent.pid())
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    println!("agent exited: {}", agent.wait());
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--echo-server") {
        return echo::serve(echo::durable_arg()).await;
    }
    support::require_root();
    if let Ok(plans) = std::env::var("BENCH_PROFILE") {
        let plans = plans.parse().expect("BENCH_PROFILE: a number of plans");
        return match std::env::var("BENCH_SERVICE").as_deref() {
            Ok("durable-echo") => profile_durable_echo(plans).await,
            Ok(other) => panic!("BENCH_SERVICE: durable-echo or unset, not {other:?}"),
            Err(_) => profile(plans).await,
        };
    }
    let bus = PrivateBus::start_with_extra(echo::ECHO_POLICY);
    let home = bench_home();
    let agent = Agent::start(&bus, home.path(), "[queue]\nmax = 200000\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(agent.pid());

    let conn = bus.connect().await;
    let proxy = antibody::dbus::proxy::client(&conn).await.unwrap();
    let (rss_before, rss_after, storm_plans) = storm_rss(&proxy, agent.pid()).await;
    let ping = ping_baseline(&conn, Pace::BackToBack).await;
    let fsync = fsync_baseline(&agent.ledger_dir(), Pace::BackToBack).await;
    let submit = submit_latency(&proxy, Pace::BackToBack, 0).await;
    let duplicate = duplicate_latency(&proxy).await;
    let spaced = submit_latency(&proxy, Pace::Every10Ms, 2_000_000).await;
    let spaced_ping = ping_baseline(&conn, Pace::Every10Ms).await;
    let spaced_fsync = fsync_baseline(&agent.ledger_dir(), Pace::Every10Ms).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let latency_rows = [
        format!(
            "| SubmitAlert p50, back to back (1 client, {SAMPLES} alerts) | {:.3} ms | Ping p50 {:.3} ms + 300 B fdatasync p50 {:.3} ms = {:.3} ms | {:.2}× | ≤ 1.5× |",
            ms(submit), ms(ping), ms(fsync), ms(ping + fsync), submit.as_secs_f64() / (ping + fsync).as_secs_f64()
        ),
        format!(
            "| SubmitAlert p50, one every 10 ms ({} alerts) | {:.3} ms | Ping p50 {:.3} ms + fdatasync p50 {:.3} ms, each also one every 10 ms = {:.3} ms | {:.2}× | ≤ 1.5× |",
            SAMPLES / 4, ms(spaced), ms(spaced_ping), ms(spaced_fsync), ms(spaced_ping + spaced_fsync),
            spaced.as_secs_f64() / (spaced_ping + spaced_fsync).as_secs_f64()
        ),
        format!(
            "| … a duplicate alert (the same path without the ledger write) | {:.3} ms | Ping p50 {:.3} ms | {:.2}× | |",
            ms(duplicate), ms(ping), duplicate.as_secs_f64() / ping.as_secs_f64()
        ),
    ];
    // BENCH_LATENCY_ONLY=1: just these rows (a 20-second run while tuning).
    if std::env::var_os("BENCH_LATENCY_ONLY").is_some() {
        println!("| measure | result | baseline (same run) | ratio | target |");
        println!("|---|---|---|---|---|");
        latency_rows.iter().for_each(|row| println!("{row}"));
        return;
    }
    let single_rate = 1.0 / submit.as_secs_f64();
    // The throughput rows on each bus daemon, alternating row by row so
    // a drift of the machine falls on both alike; each row starts with
    // both agents idle, their archiving of earlier rows done (measured
    // right after the row before, a ceiling shares the cores with that
    // row's backlog).
    let broker_bus = PrivateBus::start_broker_with_extra(echo::ECHO_POLICY);
    let broker_home = tempfile::tempdir_in(home.path()).unwrap();
    let broker_agent = Agent::start(&broker_bus, broker_home.path(), "[queue]\nmax = 200000\n");
    let broker_conn = broker_bus.connect().await;
    let broker_proxy = antibody::dbus::proxy::client(&broker_conn).await.unwrap();
    let buses = [
        ("dbus-daemon", &bus, &proxy, agent.pid()),
        (
            "dbus-broker",
            &broker_bus,
            &broker_proxy,
            broker_agent.pid(),
        ),
    ];
    // BENCH_PER_CLIENT: calls per client in these rows (1250 = 20 000 in
    // all; fewer for a quick look).
    let per: usize = std::env::var("BENCH_PER_CLIENT")
        .map(|v| v.parse().expect("BENCH_PER_CLIENT: a number"))
        .unwrap_or(1250);
    let mut rows: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
    // The durable echo writes on the agents' disk.
    let echo_log = tempfile::tempdir_in(home.path()).unwrap();
    let agents: Vec<_> = buses
        .iter()
        .map(|(_, _, agent_proxy, agent_pid)| (*agent_proxy, *agent_pid))
        .collect();
    for kind in 0..5 {
        for (i, (_, bus, proxy, pid)) in buses.iter().enumerate() {
            wait_all_idle(&agents).await;
            let groups = vec![vec![*pid], bus.daemon_pids()];
            let row = match kind {
                0 => counted(groups, 16 * per, throughput(bus, 16, per, 1_000_000)).await,
                1 => counted(groups, 16 * per, ping_throughput(bus, 16, per)).await,
                2 => echo_throughput(bus, 16, per, None).await,
                3 => sustained(bus, proxy, *pid, 16, per).await,
                _ => echo_throughput(bus, 16, per, Some(echo_log.path())).await,
            };
            rows[i].push(row);
        }
    }
    drop(broker_agent);
    drop(agent);

    let empty_home = tempfile::tempdir_in(home.path()).unwrap();
    big_ledger(empty_home.path(), 0).await;
    let ready_empty = time_to_ready(&bus, empty_home.path());
    let big_home = tempfile::tempdir_in(home.path()).unwrap();
    big_ledger(big_home.path(), 1_000_000).await;
    // The first start replays every record and writes a checkpoint; the
    // second starts from it, as every later start does.
    let ready_replay = time_to_ready(&bus, big_home.path());
    let ready_big = time_to_ready(&bus, big_home.path());

    println!("| measure | result | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    latency_rows.iter().for_each(|row| println!("{row}"));
    for ((name, ..), row) in buses.iter().zip(&rows) {
        let [answered, ping, echo, steady, durable_echo] = &row[..] else {
            unreachable!("five rows per bus")
        };
        let (rate, ping_rate, echo_rate) = (answered.rate, ping.rate, echo.rate);
        println!(
            "| {name}: durable alerts/s answered, 16 clients × {per} (a burst the queue absorbs) | {rate:.0}/s; CPU: {} | 1 client {single_rate:.0}/s | {:.1}× | ≥ 20 000/s |",
            answered.cpu_cells(),
            rate / single_rate
        );
        println!(
            "| {name}: sustained plans/s, 16 clients × {per} distinct alerts, from the first `SubmitAlert` until every plan has finished | {:.0}/s; CPU: {} | echo ceiling {echo_rate:.0}/s | {:.2}× the echo | ≥ 0.8× |",
            steady.rate,
            steady.cpu_cells(),
            steady.rate / echo_rate
        );
        println!(
            "| {name}: … Ping round trips/s, 16 clients × {per} | {ping_rate:.0}/s; CPU: {} | | answered alerts reach {:.0} % of it | |",
            ping.cpu_cells(),
            100.0 * rate / ping_rate
        );
        println!(
            "| {name}: … the echo ceiling: a do-nothing service answering `SubmitAlert` and sending a plan's four signals, 16 clients × {per}, until its last signal | {echo_rate:.0}/s; CPU: {} | | answered alerts reach {:.0} % of it | |",
            echo.cpu_cells(),
            100.0 * rate / echo_rate
        );
        println!(
            "| {name}: … the durable floor: the echo writing the agent's bytes of a plan (its first record durable before the answer, the other four in one write durable before the last three signals), group commit, no hash or JSON, 16 clients × {per} | {:.0}/s; CPU: {} | echo ceiling {echo_rate:.0}/s | {:.2}× the echo; the agent's sustained rate {:.2}× this floor | |",
            durable_echo.rate,
            durable_echo.cpu_cells(),
            durable_echo.rate / echo_rate,
            steady.rate / durable_echo.rate
        );
    }
    println!(
        "| 100 000 identical alerts | {storm_plans} plan(s), RSS {} → {} KiB (+{} KiB) | | | 1 plan, < 5 MB growth |",
        rss_before, rss_after, rss_after.saturating_sub(rss_before)
    );
    println!("| idle RSS after start | {idle_rss} KiB | | | ≤ 10 MB |");
    println!(
        "| start → READY=1, 1 000 000-record ledger, from its checkpoint | {:.1} ms | empty ledger {:.1} ms | {:.1}× | ≤ 100 ms |",
        ms(ready_big), ms(ready_empty), ready_big.as_secs_f64() / ready_empty.as_secs_f64()
    );
    println!(
        "| first start on that ledger (no checkpoint yet: full replay, then writes one) | {:.1} ms | empty ledger {:.1} ms | {:.1}× | |",
        ms(ready_replay), ms(ready_empty), ready_replay.as_secs_f64() / ready_empty.as_secs_f64()
    );
}
