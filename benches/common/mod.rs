//! What the agent's benchmarks share: the scratch directory, the alert
//! they submit, the median, CPU time, and waiting for the agent to drain.
// Each bench compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;

/// A network namespace of the bench's own (never the host's), deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn add(prefix: &str) -> Netns {
        let ns = Netns(format!("{prefix}{}", std::process::id()));
        let added = std::process::Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status();
        assert!(added.unwrap().success(), "ip netns add {}", ns.0);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

pub fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The bench's scratch directory: under BENCH_DIR, by default /var/tmp
/// (the machine's disk, not a tmpfs: the ledger's fsyncs are measured).
pub fn bench_home() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap()
}

/// Alert number `n`: distinct for each `n`, so each makes a plan of one
/// `notify_operator` action on `channel`.
pub fn alert(n: usize, channel: &str) -> String {
    format!(
        r#"{{"source":"NEXUS","severity":"low","description":"bench alert {n}","actions":[{{"type":"notify_operator","channel":"{channel}","message":"bench {n}"}}]}}"#
    )
}

/// CPU time a process has used so far (all its threads, user and
/// system), from `/proc/PID/stat`.
pub fn cpu_secs(pid: i32) -> f64 {
    let (user, system) = user_and_system_secs(pid);
    user + system
}

/// The user and the system CPU seconds a process has used so far.
pub fn user_and_system_secs(pid: i32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may hold spaces: state is the
    // 3rd field of the whole line, utime the 14th and stime the 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as f64;
    let secs = |field: &str| field.parse::<u64>().unwrap() as f64 / per_sec;
    (secs(fields[11]), secs(fields[12]))
}

/// How long `SubmitAlert` of alert `n` takes to answer; panics unless it
/// made a new plan.
pub async fn timed_submit(proxy: &AntibodyProxy<'_>, n: usize) -> Duration {
    let text = alert(n, "journal");
    let t = Instant::now();
    let (_, created) = proxy.submit_alert(&text).await.unwrap();
    let took = t.elapsed();
    assert!(created, "alert {n} did not make a new plan");
    took
}

/// Whether the agent has nothing queued and nothing running (`Status`).
pub async fn is_drained(proxy: &AntibodyProxy<'_>) -> bool {
    let status: serde_json::Value = serde_json::from_str(&proxy.status().await.unwrap()).unwrap();
    status["queue_depth"] == 0 && status["in_flight"] == 0
}

/// Waits until the agent has nothing queued or running and its CPU has
/// settled (under 2 % of a core over half a second), so that a row
/// measures itself and not the backlog of the row before it (the plans
/// it archives after they finish, too).
pub async fn wait_idle(proxy: &AntibodyProxy<'_>, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the agent never went idle");
        if !is_drained(proxy).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let before = cpu_secs(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if cpu_secs(pid) - before < 0.01 {
            return;
        }
    }
}

/// Waits until every one of `agents` has nothing queued or running and
/// all of them together used under 0.03 CPU-seconds over a window longer
/// than the agent's upkeep period (5 s): the plans a row leaves past
/// `state.keep_finished_plans` are archived by the next upkeep round,
/// which a shorter window could end before.
pub async fn wait_all_idle(agents: &[(&AntibodyProxy<'_>, i32)]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the agents never went idle");
        let mut drained = true;
        for (proxy, _) in agents {
            drained &= is_drained(proxy).await;
        }
        if !drained {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let cpu = || agents.iter().map(|(_, pid)| cpu_secs(*pid)).sum::<f64>();
        let before = cpu();
        tokio::time::sleep(Duration::from_millis(5500)).await;
        if cpu() - before < 0.03 {
            return;
        }
    }
}

/// Polls until every plan has finished, closely enough to time a row by it.
pub async fn wait_drained(proxy: &AntibodyProxy<'_>) {
    while !is_drained(proxy).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
