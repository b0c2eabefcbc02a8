//! Issue 4's speed target: from `SubmitAlert` to the restart job's
//! `JobRemoved(done)`, against calling `RestartUnit` directly on the same
//! unit, both in the same booted systemd (the T4 testbed) in the same run.
//!
//!     cargo bench --bench restart_bench
//!
//! On the host it boots a testbed machine with the release agent, copies
//! itself in and runs again there with `--inside`, where it measures with a
//! system-bus connection of its own. Samples of the two kinds alternate, so
//! drift of the machine affects both alike.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus_systemd::systemd1::ManagerProxy;

const SAMPLES: usize = 200;
const UNIT: &str = "sleeper.service";

fn main() {
    if std::env::args().any(|a| a == "--inside") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(inside());
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is expected.
    let tb = support::testbed::Testbed::boot("restart-bench");
    let host_root = std::process::Command::new(
        std::path::Path::new(support::ROOT).join("tests/testbed/testbed.sh"),
    )
    .args(["root", &tb.name])
    .output()
    .unwrap();
    let host_root = String::from_utf8(host_root.stdout).unwrap();
    let host_root = std::path::Path::new(host_root.trim());
    std::fs::copy(
        std::env::current_exe().unwrap(),
        host_root.join("usr/local/bin/restart-bench"),
    )
    .unwrap();
    // The flap limiter would stop a benchmark at the third restart.
    std::fs::create_dir_all(host_root.join("etc/antibody/antibody.toml.d")).unwrap();
    std::fs::write(
        host_root.join("etc/antibody/antibody.toml.d/bench.toml"),
        "[restart]\nburst = 1000000\n",
    )
    .unwrap();
    // systemd's own start limit (5 starts in 10 s) would fail the unit.
    std::fs::create_dir_all(host_root.join("etc/systemd/system/sleeper.service.d")).unwrap();
    std::fs::write(
        host_root.join("etc/systemd/system/sleeper.service.d/bench.conf"),
        "[Unit]\nStartLimitIntervalSec=0\n",
    )
    .unwrap();
    tb.sh("systemctl daemon-reload && systemctl restart antibody.service sleeper.service");
    print!("{}", tb.sh("/usr/local/bin/restart-bench --inside"));
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn inside() {
    let conn = zbus::Connection::system().await.unwrap();
    let manager = ManagerProxy::new(&conn).await.unwrap();
    manager.subscribe().await.unwrap();
    let agent = antibody::dbus::proxy::client(&conn).await.unwrap();
    let mut direct = Vec::new();
    let mut through_agent = Vec::new();
    let mut submit_answered = Vec::new();
    // Unique alerts per run: identical ones would be deduplicated.
    let run = std::process::id();
    for n in 0..SAMPLES {
        // Baseline: RestartUnit and wait for that job.
        let mut removed = manager.receive_job_removed().await.unwrap();
        let start = Instant::now();
        let job = manager
            .restart_unit(UNIT.into(), "replace".into())
            .await
            .unwrap();
        loop {
            let signal = removed.next().await.unwrap();
            let args = signal.args().unwrap();
            if args.job.as_str() == job.as_str() {
                assert_eq!(args.result, "done");
                break;
            }
        }
        direct.push(start.elapsed());
        drop(removed);

        // Antibody: SubmitAlert until the restart job of the unit is removed.
        let mut removed = manager.receive_job_removed().await.unwrap();
        let alert = format!(
            r#"{{"source":"Watchdog","severity":"high","description":"bench {run} {n}","actions":[{{"type":"restart_service","name":"sleeper"}}]}}"#
        );
        let start = Instant::now();
        let (plan_id, created) = agent.submit_alert(&alert).await.unwrap();
        submit_answered.push(start.elapsed());
        assert!(created);
        loop {
            let signal = removed.next().await.unwrap();
            let args = signal.args().unwrap();
            if args.unit == UNIT {
                assert_eq!(args.result, "done");
                break;
            }
        }
        through_agent.push(start.elapsed());
        drop(removed);
        // The plan finishes before the next sample, so samples do not overlap.
        loop {
            let plan: serde_json::Value =
                serde_json::from_str(&agent.get_plan(&plan_id).await.unwrap()).unwrap();
            if plan["status"] == "success" {
                break;
            }
            assert_ne!(plan["status"], "failed", "{plan}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let (d, a) = (p50(direct), p50(through_agent));
    println!("| measure ({SAMPLES} samples each, p50) | time |");
    println!("|---|---|");
    println!(
        "| `RestartUnit` + its `JobRemoved`, called directly (baseline) | {:.2} ms |",
        ms(d)
    );
    println!(
        "| `SubmitAlert` → `JobRemoved(done)` through Antibody | {:.2} ms |",
        ms(a)
    );
    println!(
        "| … of which `SubmitAlert` answered (plan durable) | {:.2} ms |",
        ms(p50(submit_answered))
    );
    println!(
        "| ratio (target ≤ 1.2×) | {:.2}× |",
        a.as_secs_f64() / d.as_secs_f64()
    );
}
