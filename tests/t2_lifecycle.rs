//! T2 lifecycle: the real `antibodyd` on a private system bus, as systemd and
//! an operator live with it — sd_notify, SIGHUP reloads, SIGKILL mid-plan,
//! a full disk, a storm of identical alerts, a tampered ledger and config
//! errors (DESIGN.md §4, §5). Every test needs root and fails without it.
//! Nothing here touches anything outside its own temporary directories, and
//! all network traffic stays on 127.0.0.1.

mod support;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;
use nix::sys::signal::Signal;
use serde_json::Value;
use support::hooks::HookServer;
use support::notify::NotifySocket;
use support::*;

/// The longest any single D-Bus call may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a plan may take to finish.
const PLAN_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {CALL_TIMEOUT:?}: {what}"))
}

async fn proxy(conn: &zbus::Connection) -> AntibodyProxy<'static> {
    within("AntibodyProxy::new", AntibodyProxy::new(conn))
        .await
        .expect("build the Antibody proxy")
}

async fn submit(p: &AntibodyProxy<'_>, alert_json: &str) -> zbus::Result<(String, bool)> {
    within("SubmitAlert", p.submit_alert(alert_json)).await
}

async fn status(p: &AntibodyProxy<'_>) -> Value {
    let text = within("Status", p.status()).await.expect("Status");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("Status is not JSON ({e}): {text}"))
}

async fn get_plan(p: &AntibodyProxy<'_>, id: &str) -> Value {
    let text = within("GetPlan", p.get_plan(id)).await.expect("GetPlan");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GetPlan is not JSON ({e}): {text}"))
}

async fn list_plans(p: &AntibodyProxy<'_>) -> Vec<Value> {
    let text = within("ListPlans", p.list_plans("", 0))
        .await
        .expect("ListPlans");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("ListPlans is not a JSON array ({e}): {text}"))
}

async fn verify_ledger(p: &AntibodyProxy<'_>) -> (bool, String) {
    within("VerifyLedger", p.verify_ledger())
        .await
        .expect("VerifyLedger")
}

/// The D-Bus error name of a failed call (or the whole error if it has none).
fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("{other:?}"),
    }
}

fn error_message(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(_, Some(text), _) => text.clone(),
        other => other.to_string(),
    }
}

/// Polls `GetPlan` until the plan reaches `want`; fails at once if it
/// finishes otherwise.
async fn wait_plan(p: &AntibodyProxy<'_>, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + PLAN_TIMEOUT;
    loop {
        let plan = get_plan(p, id).await;
        let status = plan["status"].as_str().unwrap_or_default().to_string();
        if status == want {
            return plan;
        }
        assert!(
            status != "success" && status != "failed",
            "plan {id} finished {status}, expected {want}: {plan:#}"
        );
        assert!(
            Instant::now() < deadline,
            "plan {id} still {status} after {PLAN_TIMEOUT:?}: {plan:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn notify_alert(channel: &str, message: &str) -> String {
    alert(&format!(
        r#"[{{"type":"notify_operator","channel":"{channel}","message":"{message}"}}]"#
    ))
}

fn webhook_channel(name: &str, url: &str, timeout_secs: u64) -> String {
    format!("[notify.channels.{name}]\nkind = \"webhook\"\nurl = \"{url}\"\ntimeout_secs = {timeout_secs}\n")
}

/// Every record of every segment under `home/ledger`, in chain order.
fn ledger_records(home: &Path) -> Vec<Value> {
    ledger_records_in(&home.join("ledger"))
}

fn records_of_kind(home: &Path, kind: &str) -> Vec<Value> {
    ledger_records(home)
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

/// Waits until the ledger holds at least `count` records of `kind`.
fn wait_ledger_kind(home: &Path, kind: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = records_of_kind(home, kind);
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger holds {} {kind} record(s), expected {count}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The single-letter state of a process from /proc, `None` once it is reaped.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ..." — comm may contain spaces and parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits (bounded) for the agent to exit on its own and returns its status.
fn wait_exit(agent: &mut Agent, timeout: Duration) -> ExitStatus {
    let pid = agent.pid();
    let deadline = Instant::now() + timeout;
    while !matches!(proc_state(pid), None | Some('Z') | Some('X')) {
        assert!(
            Instant::now() < deadline,
            "antibodyd (pid {pid}) did not exit within {timeout:?}; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.wait()
}

fn assert_alive(agent: &Agent) {
    let state = proc_state(agent.pid());
    assert!(
        !matches!(state, None | Some('Z') | Some('X')),
        "antibodyd exited (state {state:?}); log:\n{}",
        agent.log_text()
    );
}

// ------------------------------------------------------------ a small tmpfs

/// A tmpfs mounted at a directory inside a test's temporary directory,
/// unmounted on drop (also while a failed test unwinds).
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn mount(path: &Path, size: &str) -> TmpfsMount {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        TmpfsMount {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            // Something still holds a file there: detach it anyway so the
            // temporary directory can go.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

// ------------------------------------------------------------------ tests

/// DESIGN.md §5: READY=1 with STATUS=, WATCHDOG=1 while alive, RELOADING=1 …
/// READY=1 on SIGHUP, STOPPING=1 and exit 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_watchdog_reload_stop() {
    require_root();
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path().join("notify.sock"));
    let home = dir.path().join("home");
    let mut agent = Agent::start_notified(&bus, &home, "", &notify, Duration::from_millis(600));

    let (ready, before) = notify.wait_for_line("READY=1", Duration::from_secs(20));
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.len() > "STATUS=".len()),
        "READY=1 came without a STATUS= line: {ready:?}"
    );
    assert!(
        before.iter().all(|m| !m.contains("WATCHDOG=1")),
        "WATCHDOG=1 before READY=1: {before:?}"
    );

    // WATCHDOG=1 keeps coming while the engine is alive.
    let window = Instant::now() + Duration::from_secs(3);
    let mut pings = Vec::new();
    while let Some((at, msg)) = notify.recv(window) {
        if msg.lines().any(|l| l == "WATCHDOG=1") {
            pings.push(at);
        }
    }
    let max_gap = pings.windows(2).map(|w| w[1] - w[0]).max();
    eprintln!(
        "sd_notify: {} WATCHDOG=1 in 3 s with WATCHDOG_USEC=600000; largest gap {max_gap:?}",
        pings.len()
    );
    assert!(
        pings.len() >= 3,
        "only {} WATCHDOG=1 within 3 s",
        pings.len()
    );

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC=), then READY=1 again.
    agent.signal(Signal::SIGHUP);
    let (reloading, _) = notify.wait_for_line("RELOADING=1", Duration::from_secs(20));
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 without MONOTONIC_USEC= (systemd needs it for Type=notify-reload): {reloading:?}"
    );
    let (ready_again, _) = notify.wait_for_line("READY=1", Duration::from_secs(20));
    assert!(
        ready_again.lines().any(|l| l.starts_with("STATUS=")),
        "{ready_again:?}"
    );
    let reloads = wait_ledger_kind(&home, "config_reloaded", 1);
    assert_eq!(reloads[0]["payload"]["ok"], true, "{reloads:?}");

    // SIGTERM: STOPPING=1, exit 0, and the stop is in the ledger.
    agent.signal(Signal::SIGTERM);
    notify.wait_for_line("STOPPING=1", Duration::from_secs(20));
    let exit = wait_exit(&mut agent, Duration::from_secs(40));
    assert_eq!(
        exit.code(),
        Some(0),
        "exit status {exit:?}; log:\n{}",
        agent.log_text()
    );
    let stopping = records_of_kind(&home, "agent_stopping");
    assert_eq!(stopping.len(), 1, "agent_stopping records: {stopping:?}");
    let records = ledger_records(&home);
    assert_eq!(
        records.last().map(|r| r["kind"].clone()),
        Some(Value::from("agent_stopping")),
        "agent_stopping should be the last record"
    );
}

/// systemd kills a `Type=notify` service whose `WATCHDOG=1` pings are
/// further apart than `WatchdogSec` (`WATCHDOG_USEC`). A healthy, idle agent
/// must ping within every interval, from `READY=1` on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_within_every_interval() {
    require_root();
    const WATCHDOG: Duration = Duration::from_millis(300);
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path().join("notify.sock"));
    let home = dir.path().join("home");
    let _agent = Agent::start_notified(&bus, &home, "", &notify, WATCHDOG);
    let until = Instant::now() + Duration::from_secs(20);
    let ready_at = loop {
        match notify.recv(until) {
            Some((at, msg)) if msg.lines().any(|l| l == "READY=1") => break at,
            Some(_) => {}
            None => panic!("no READY=1 within 20 s"),
        }
    };
    let window = ready_at + Duration::from_secs(3);
    let mut pings = vec![ready_at];
    while let Some((at, msg)) = notify.recv(window) {
        if msg.lines().any(|l| l == "WATCHDOG=1") {
            pings.push(at);
        }
    }
    pings.push(window);
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let max_gap = gaps.iter().max().copied().unwrap_or_default();
    assert!(
        max_gap <= WATCHDOG,
        "WATCHDOG=1 pings {max_gap:?} apart with WATCHDOG_USEC={}; gaps: {gaps:?}",
        WATCHDOG.as_micros()
    );
}

/// SIGHUP reloads the config: a channel added takes effect; a broken file is
/// refused and the running config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_takes_effect_and_bad_config_is_refused() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = HookServer::start(false);
    let agent = Agent::start(&bus, home, "");
    let conn = bus.connect().await;
    let p = proxy(&conn).await;

    let ops_alert = notify_alert("ops", "reload works");
    let err = submit(&p, &ops_alert)
        .await
        .expect_err("channel ops is not configured yet");
    assert_eq!(
        error_name(&err),
        "org.vael.Antibody.Error.InvalidAlert",
        "{err:?}"
    );
    assert!(
        error_message(&err).contains("actions[0].channel"),
        "{err:?}"
    );

    // Add the channel and reload.
    write_config(home, &webhook_channel("ops", &server.url(), 10));
    agent.signal(Signal::SIGHUP);
    let reloads = wait_ledger_kind(home, "config_reloaded", 1);
    assert_eq!(reloads[0]["payload"]["ok"], true, "{reloads:?}");

    let (id, created) = submit(&p, &ops_alert)
        .await
        .expect("accepted after the reload");
    assert!(created);
    wait_plan(&p, &id, "success").await;
    let hooks = server.wait_hooks_for(&id, 1);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let hook = &hooks[0];
    assert!(hook.request_line.starts_with("POST /hook "), "{hook:?}");
    assert_eq!(hook.body["event"], "operator_notice", "{hook:?}");
    assert_eq!(hook.body["plan_id"], id.as_str(), "{hook:?}");
    assert_eq!(hook.body["message"], "reload works", "{hook:?}");
    assert_eq!(hook.body["channel"], "ops", "{hook:?}");

    // A config with an unknown key is refused; the old one stays in force.
    write_config(
        home,
        &format!(
            "{}[queue]\nbogus_key = 1\n",
            webhook_channel("ops", &server.url(), 10)
        ),
    );
    agent.signal(Signal::SIGHUP);
    let reloads = wait_ledger_kind(home, "config_reloaded", 2);
    let refused = &reloads[1]["payload"];
    assert_eq!(refused["ok"], false, "{reloads:?}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("bogus_key"),
        "the refusal should name the key: {refused}"
    );
    assert_alive(&agent);
    let st = status(&p).await;
    assert_eq!(st["healthy"], true, "{st}");
    // The running config (with channel ops) still works.
    let still = notify_alert("ops", "old config kept");
    let (id2, created) = submit(&p, &still).await.expect("old config stays in force");
    assert!(created);
    wait_plan(&p, &id2, "success").await;
    let hooks = server.wait_hooks_for(&id2, 1);
    assert_eq!(hooks[0].body["message"], "old config kept");
    assert_alive(&agent);
}

/// DESIGN.md §4: a SIGKILL while a plan's action is in flight and another
/// plan waits loses nothing; the interrupted notice is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_plan_loses_nothing() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = HookServer::start(true);
    let mut agent = Agent::start(
        &bus,
        home,
        &format!(
            "[queue]\nmax_concurrent = 1\n{}",
            webhook_channel("ops", &server.url(), 60)
        ),
    );
    let conn = bus.connect().await;
    let p = proxy(&conn).await;

    let (a, created) = submit(&p, &notify_alert("ops", "first"))
        .await
        .expect("submit A");
    assert!(created);
    // A's webhook request is in flight: the server holds it unanswered.
    server.wait_hooks_for(&a, 1);
    let (b, created) = submit(&p, &notify_alert("dbus", "second"))
        .await
        .expect("submit B");
    assert!(created);
    let plan_a = get_plan(&p, &a).await;
    assert_eq!(plan_a["status"], "in_progress", "{plan_a:#}");
    assert_eq!(plan_a["actions"][0]["in_flight"], true, "{plan_a:#}");
    let plan_b = get_plan(&p, &b).await;
    assert_eq!(
        plan_b["status"], "pending",
        "B waits behind A (max_concurrent = 1): {plan_b:#}"
    );

    assert_eq!(
        server.hooks_for(&a).len(),
        1,
        "A's first delivery is still held"
    );
    agent.kill9();
    drop(p);
    let mut agent = Agent::start_with_config(&bus, home, &home.join("antibody.toml"), &[]);
    let p = proxy(&conn).await;

    let plan_a = wait_plan(&p, &a, "success").await;
    let plan_b = wait_plan(&p, &b, "success").await;
    assert_eq!(plan_b["actions"][0]["state"], "applied", "{plan_b:#}");
    assert_eq!(plan_a["actions"][0]["state"], "applied", "{plan_a:#}");
    assert_eq!(plan_a["actions"][0]["attempts"], 2, "{plan_a:#}");

    // At least once: the interrupted notice was delivered again.
    let hooks = server.wait_hooks_for(&a, 2);
    assert_eq!(
        hooks.len(),
        2,
        "A's notice should arrive exactly twice: {hooks:?}"
    );
    for hook in &hooks {
        assert_eq!(hook.body["message"], "first");
        assert_eq!(hook.body["event"], "operator_notice");
    }
    let log = plan_a["log"].to_string();
    assert!(log.contains("after an agent restart"), "A's log: {log}");

    let recovered = records_of_kind(home, "action_recovered");
    assert!(
        recovered.iter().any(|r| r["plan_id"] == a.as_str()),
        "no action_recovered record for A: {recovered:?}"
    );
    let (ok, report) = verify_ledger(&p).await;
    assert!(ok, "VerifyLedger: {report}");
    assert_alive(&agent);
    agent.signal(Signal::SIGTERM);
    let exit = wait_exit(&mut agent, Duration::from_secs(40));
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

/// A full disk: SubmitAlert answers StorageFailure, nothing is queued, the
/// agent says it is unhealthy and stays up; once there is room it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failure_is_reported_and_survived() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _tmpfs = TmpfsMount::mount(&home.join("ledger"), "512k");
    let agent = Agent::start(&bus, home, "");
    let conn = bus.connect().await;
    let p = proxy(&conn).await;
    let st = status(&p).await;
    assert_eq!(st["healthy"], true, "{st}");

    // Fill the tmpfs to the last byte.
    let filler_path = home.join("ledger").join("filler.bin");
    {
        let mut filler = std::fs::File::create(&filler_path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0usize;
        let full = loop {
            match filler.write(&chunk) {
                Ok(0) => panic!("write returned 0 before ENOSPC"),
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(
                written < 64 * 1024 * 1024,
                "the 512k tmpfs took 64 MiB: is it mounted?"
            );
        };
        assert_eq!(
            full.raw_os_error(),
            Some(nix::errno::Errno::ENOSPC as i32),
            "filling the tmpfs: {full}"
        );
        let _ = filler.sync_all();
    }

    // A plan record bigger than a page, so it cannot fit in the slack of the
    // segment's last page.
    let big = format!(
        r#"{{"source":"Manual","severity":"high","description":"disk full test","actions":[{{"type":"notify_operator","channel":"dbus","message":"after the disk was full"}}],"context":{{"stack_trace":"{}"}}}}"#,
        "s".repeat(16 * 1024)
    );
    let err = submit(&p, &big).await.expect_err("the ledger is full");
    assert_eq!(
        error_name(&err),
        "org.vael.Antibody.Error.StorageFailure",
        "{err:?}"
    );
    let st = status(&p).await;
    assert_eq!(st["healthy"], false, "{st}");
    assert!(
        list_plans(&p).await.is_empty(),
        "no plan may exist without its record"
    );
    assert_alive(&agent);

    // Room again: the same alert now makes a plan that runs.
    std::fs::remove_file(&filler_path).unwrap();
    let (id, created) = submit(&p, &big).await.expect("accepted once there is room");
    assert!(created);
    wait_plan(&p, &id, "success").await;
    let plans = list_plans(&p).await;
    assert_eq!(plans.len(), 1, "{plans:?}");
    let (ok, report) = verify_ledger(&p).await;
    assert!(ok, "VerifyLedger: {report}");
    let st = status(&p).await;
    assert_eq!(
        st["healthy"], true,
        "healthy again after a successful write: {st}"
    );
    assert_alive(&agent);
    drop(agent); // before the tmpfs goes
}

/// DESIGN.md §2: a storm of identical alerts makes one plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_of_identical_alerts_makes_one_plan() {
    require_root();
    const CALLS: usize = 10_000;
    const TASKS: usize = 16;
    const CONNECTIONS: usize = 4;
    const _: () = assert!(
        CALLS % TASKS == 0,
        "every task makes the same number of calls"
    );
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let _agent = Agent::start(&bus, home.path(), "");
    let mut proxies = Vec::new();
    for _ in 0..CONNECTIONS {
        let conn = bus.connect().await;
        proxies.push(proxy(&conn).await);
    }
    let storm_alert = Arc::new(notify_alert("dbus", "storm"));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let p = proxies[t % CONNECTIONS].clone();
        let storm_alert = storm_alert.clone();
        let calls = CALLS / TASKS;
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::with_capacity(calls);
            for _ in 0..calls {
                answers.push(
                    submit(&p, &storm_alert)
                        .await
                        .expect("SubmitAlert in the storm"),
                );
            }
            answers
        }));
    }
    let answers: Vec<(String, bool)> = tokio::time::timeout(Duration::from_secs(600), async {
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("storm task"));
        }
        all
    })
    .await
    .expect("the storm did not finish within 600 s");

    assert_eq!(answers.len(), CALLS);
    let created = answers.iter().filter(|(_, c)| *c).count();
    assert_eq!(created, 1, "exactly one reply may say created=true");
    let id = &answers[0].0;
    assert!(
        answers.iter().all(|(i, _)| i == id),
        "all replies must name the same plan"
    );
    let p = &proxies[0];
    let plans = list_plans(p).await;
    assert_eq!(
        plans.len(),
        1,
        "one plan for {CALLS} identical alerts: {plans:?}"
    );
    assert_eq!(plans[0]["id"], id.as_str());
    wait_plan(p, id, "success").await;
}

/// DESIGN.md §5: a broken chain never stops the agent; it reports where the
/// chain breaks, is unhealthy, and keeps appending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_ledger_is_reported_not_fatal() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let mut agent = Agent::start(&bus, home, "");
    let conn = bus.connect().await;
    let p = proxy(&conn).await;
    for n in 1..=3 {
        let (id, created) = submit(&p, &notify_alert("dbus", &format!("plan {n}")))
            .await
            .expect("submit");
        assert!(created);
        wait_plan(&p, &id, "success").await;
    }
    agent.signal(Signal::SIGTERM);
    let exit = wait_exit(&mut agent, Duration::from_secs(40));
    assert_eq!(exit.code(), Some(0), "{exit:?}");

    // Alter the payload of the second action_applied record (a middle one).
    let segment = home.join("ledger").join("ledger-00000001.jsonl");
    let text = std::fs::read_to_string(&segment).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let applied: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| serde_json::from_str::<Value>(l).unwrap()["kind"] == "action_applied")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(applied.len(), 3, "{text}");
    let target = applied[1];
    assert!(target > 0 && target + 1 < lines.len());
    let mut record: Value = serde_json::from_str(&lines[target]).unwrap();
    let seq = record["seq"].as_u64().expect("seq");
    let summary = record["payload"]["summary"]
        .as_str()
        .expect("summary")
        .to_string();
    record["payload"]["summary"] = Value::from(format!("{summary} (nothing to see here)"));
    lines[target] = serde_json::to_string(&record).unwrap();
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();

    // It starts, and says where the chain breaks.
    let config = home.join("antibody.toml");
    let _agent = Agent::start_with_config(&bus, home, &config, &[]);
    let st = status(&p).await;
    assert_eq!(st["ledger"]["ok"], false, "{st}");
    assert_eq!(st["ledger"]["broken_at"], seq, "{st}");
    assert_eq!(st["healthy"], false, "{st}");
    let (ok, report) = verify_ledger(&p).await;
    assert!(!ok, "VerifyLedger says ok on a tampered ledger: {report}");
    assert!(
        report.contains(&format!("seq {seq} ")),
        "the report should name seq {seq}: {report}"
    );

    // It keeps appending.
    let (id, created) = submit(&p, &notify_alert("dbus", "after tampering"))
        .await
        .expect("submit after tampering");
    assert!(created);
    wait_plan(&p, &id, "success").await;
    let broken = records_of_kind(home, "chain_broken");
    assert!(
        broken.iter().any(|r| r["payload"]["broken_at"] == seq),
        "no chain_broken record naming seq {seq}: {broken:?}"
    );
    let st = status(&p).await;
    assert_eq!(st["ledger"]["broken_at"], seq, "{st}");
    assert_eq!(st["healthy"], false, "{st}");
}

/// Runs `antibodyd ARGS…` to completion (bounded), off every real bus.
fn run_antibodyd(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_antibodyd"))
        .args(args)
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", dir.path().join("no-bus").display()),
        )
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn antibodyd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("antibodyd {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        std::fs::read_to_string(&stdout_path).unwrap(),
        std::fs::read_to_string(&stderr_path).unwrap(),
    )
}

/// Config errors exit 78 (EX_CONFIG) and say what is wrong; `--check-config`
/// prints the effective config with defaults filled in.
#[test]
fn config_errors_exit_78_and_check_config_prints_defaults() {
    require_root();
    let dir = tempfile::tempdir().unwrap();

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[queue]\nmax = 10\nmaxx_typo = 3\n").unwrap();
    let (code, _, stderr) = run_antibodyd(&["--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(78), "unknown key: stderr {stderr}");
    assert!(
        stderr.contains("maxx_typo"),
        "stderr should name the key: {stderr}"
    );

    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) = run_antibodyd(&["--config", missing.to_str().unwrap()]);
    assert_eq!(code, Some(78), "missing file: stderr {stderr}");
    assert!(
        stderr.contains(missing.to_str().unwrap()),
        "stderr should name the path: {stderr}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[queue]\nmax = 10\n").unwrap();
    let (code, stdout, stderr) =
        run_antibodyd(&["--check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "--check-config: stderr {stderr}");
    assert!(stdout.contains("dedupe_window_secs = 60"), "{stdout}");
    assert!(stdout.contains("max = 10"), "{stdout}");
    // What it prints is itself a valid config, equal to what it read.
    let printed = antibody::config::Config::from_toml(&stdout).expect("the printed config parses");
    let read = antibody::config::Config::load(&good, false).unwrap();
    assert_eq!(printed, read);
}

/// A restarted bus daemon (`systemctl restart dbus`) drops every
/// connection. The agent stays up, serves the new bus as soon as it is
/// there, and the plan that was under way meanwhile still finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_bus_restarts_the_agent_serves_it_again_and_loses_nothing() {
    require_root();
    let mut bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    // The first webhook request is held unanswered: that plan is mid-step
    // (waiting on its 2 s timeout, then retrying) while the bus goes away.
    let hooks = HookServer::start(true);
    let agent = Agent::start(&bus, home.path(), &webhook_channel("ops", &hooks.url(), 2));
    let id = {
        let conn = bus.connect().await;
        let p = proxy(&conn).await;
        let (id, created) = submit(&p, &notify_alert("ops", "held across the restart"))
            .await
            .expect("SubmitAlert");
        assert!(created);
        id
    };
    hooks.wait_hooks_for(&id, 1);

    bus.restart();
    agent.wait_for_name(&bus);
    assert_alive(&agent);
    let conn = bus.connect().await;
    let p = proxy(&conn).await;
    let plan = wait_plan(&p, &id, "success").await;
    assert_eq!(plan["actions"][0]["attempts"], 2, "{plan:#}");
    let (new_id, created) = submit(&p, &notify_alert("journal", "after the restart"))
        .await
        .expect("SubmitAlert on the new bus");
    assert!(created);
    wait_plan(&p, &new_id, "success").await;
    assert!(verify_ledger(&p).await.0);

    let log = agent.log_text();
    assert!(log.contains("lost the system bus connection"), "{log}");
    assert!(
        log.contains("serving org.vael.Antibody on the system bus again"),
        "{log}"
    );
    assert!(
        records_of_kind(home.path(), "agent_stopping").is_empty(),
        "the agent did not stop"
    );
}
