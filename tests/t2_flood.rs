//! T2: a flood. For 30 s (`ANTIBODY_FLOOD_SECS`), 16 clients submit
//! distinct alerts as fast as the agent answers them, on a private
//! `dbus-daemon` with the shipped policy, while
//! - a subscriber to the agent's signals reads them slowly (one every
//!   20 ms, its queue 8 deep, so the bus must hold or drop the rest),
//! - a caller loops on `ListPlans` and `VerifyLedger`,
//! - a prober calls `Status` every 20 ms and times it,
//! - the notify socket records the watchdog pings, and `/proc` the RSS.
//!
//! The agent must keep answering `Status` within 100 ms at the 99th
//! percentile, ping the watchdog within every interval, keep its RSS
//! bounded, refuse only with its named errors, and afterwards run every
//! plan it accepted to its end with the chain intact.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::notify::NotifySocket;
use support::*;

const CLIENTS: usize = 16;
const WATCHDOG: Duration = Duration::from_secs(2);
/// Where the RSS counts as unbounded: the agent keeps at most `queue.max`
/// (1024) plans queued and `state.keep_finished_plans` (1000) finished.
const RSS_LIMIT_KIB: u64 = 256 * 1024;
/// What the RSS may grow per plan accepted in the last two thirds of the
/// flood, once what is bounded (the queue, the newest finished plans kept
/// whole) has filled. Plans held whole cost about 10 KiB each (the defect
/// this test found: 9.5-10.5 KiB a plan); what stays of an older finished
/// plan is its dedupe entry, a few hundred bytes. Measured after the fix:
/// 3.5 KiB a plan from the third to the end of a 30 s flood (the allocator
/// and the dedupe map still warming up), 0.3 KiB between 30 s and 90 s.
const RSS_GROWTH_PER_PLAN_LIMIT_KIB: f64 = 6.0;

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("{other}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Plan ids created and finished, from the ledger on disk.
fn ledger_plans(dir: &std::path::Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut created = BTreeSet::new();
    let mut finished = BTreeSet::new();
    for segment in ledger_segments(dir) {
        for line in std::fs::read_to_string(&segment).unwrap().lines() {
            let Ok(record) = serde_json::from_str::<Value>(line) else {
                continue; // the tail being written
            };
            let id = record["plan_id"].as_str().unwrap_or_default().to_string();
            match record["kind"].as_str() {
                Some("plan_created") => {
                    created.insert(id);
                }
                Some("plan_finished") => {
                    finished.insert(id);
                }
                _ => {}
            }
        }
    }
    (created, finished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_a_slow_subscriber_and_a_verifier_leave_status_and_the_watchdog_on_time() {
    require_root();
    let secs: u64 = std::env::var("ANTIBODY_FLOOD_SECS")
        .map(|v| v.parse().expect("ANTIBODY_FLOOD_SECS: a number"))
        .unwrap_or(30);
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path().join("notify.sock"));
    let home = dir.path().join("home");
    // Every client is root here, and the per-caller rate limit would
    // refuse most of a flood from one uid before it reached the queue:
    // the flood is of the agent's own limits (the queue, the bus).
    let agent = Agent::start_notified(
        &bus,
        &home,
        "[auth]\nsubmit_rate_per_sec = 1000000\nsubmit_burst = 1000000\n",
        &notify,
        WATCHDOG,
    );
    notify.wait_for_line("READY=1", Duration::from_secs(20));
    let pid = agent.pid();

    let stop = Arc::new(AtomicBool::new(false));
    // The watchdog pings and the RSS, on threads of their own.
    let pings = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut pings = vec![Instant::now()];
            while !stop.load(Ordering::Relaxed) {
                if let Some((at, msg)) = notify.recv(Instant::now() + Duration::from_millis(200)) {
                    if msg.lines().any(|l| l == "WATCHDOG=1") {
                        pings.push(at);
                    }
                }
            }
            pings.push(Instant::now());
            pings
        }
    });
    let rss = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                samples.push(rss_kib(pid).expect("the agent is alive"));
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        }
    });

    let deadline = Instant::now() + Duration::from_secs(secs);
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let conn = bus.connect().await;
        let (accepted, refused) = (accepted.clone(), refused.clone());
        clients.push(tokio::spawn(async move {
            let proxy = AntibodyProxy::new(&conn).await.unwrap();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let alert = json!({"source": "NEXUS", "severity": "low",
                    "description": format!("flood {client}/{n}"),
                    "actions": [{"type": "notify_operator", "channel": "dbus", "message": "flood"}]})
                .to_string();
                match proxy.submit_alert(&alert).await {
                    Ok((id, true)) => accepted.lock().unwrap().push(id),
                    Ok((id, false)) => panic!("a distinct alert was deduplicated into {id}"),
                    Err(e) => *refused.lock().unwrap().entry(error_name(&e)).or_default() += 1,
                }
            }
        }));
    }

    // The slow subscriber: a short queue, read one message every 20 ms.
    let slow_conn = bus.connect().await;
    let received = Arc::new(AtomicU64::new(0));
    let slow = tokio::spawn({
        let received = received.clone();
        async move {
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .interface("org.vael.Antibody")
                .build()
                .unwrap();
            let mut stream = zbus::MessageStream::for_match_rule(
                rule,
                &slow_conn,
                std::num::NonZeroUsize::new(8),
            )
            .await
            .unwrap();
            while Instant::now() < deadline {
                let next = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
                if let Ok(Some(Ok(_))) = next {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // The reader: ListPlans and VerifyLedger in a loop.
    let reader_conn = bus.connect().await;
    let reader = tokio::spawn(async move {
        let proxy = AntibodyProxy::new(&reader_conn).await.unwrap();
        let mut rounds = 0u64;
        while Instant::now() < deadline {
            let list = proxy.list_plans("", 100).await.expect("ListPlans");
            assert!(serde_json::from_str::<Value>(&list).unwrap().is_array());
            let (ok, report) = proxy.verify_ledger().await.expect("VerifyLedger");
            assert!(ok, "VerifyLedger during the flood: {report}");
            rounds += 1;
        }
        rounds
    });

    // The prober: Status every 20 ms, timed.
    let probe_conn = bus.connect().await;
    let probe = AntibodyProxy::new(&probe_conn).await.unwrap();
    let mut latencies = Vec::new();
    // (RSS, plans accepted) a third into the flood.
    let third = deadline - Duration::from_secs(secs * 2 / 3);
    let mut at_third = None;
    while Instant::now() < deadline {
        if at_third.is_none() && Instant::now() >= third {
            at_third = Some((rss_kib(pid).unwrap(), accepted.lock().unwrap().len()));
        }
        let asked = Instant::now();
        let status = probe.status().await.expect("Status during the flood");
        latencies.push(asked.elapsed());
        assert!(serde_json::from_str::<Value>(&status).is_ok(), "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for client in clients {
        client.await.expect("a client panicked");
    }
    let rounds = reader.await.expect("the reader panicked");
    slow.await.expect("the slow subscriber panicked");

    // Every plan accepted runs to its end, and the chain is intact.
    let accepted: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    let drained = Instant::now();
    let ledger_dir = home.join("ledger");
    loop {
        let (created, finished) = ledger_plans(&ledger_dir);
        let missing = accepted.difference(&created).count();
        let open = accepted.difference(&finished).count();
        assert_eq!(missing, 0, "{missing} accepted plans are not in the ledger");
        if open == 0 {
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(300),
            "{open} accepted plans still not finished 300 s after the flood"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_secs = drained.elapsed().as_secs_f64();
    let (ok, report) = probe.verify_ledger().await.expect("VerifyLedger");
    assert!(ok, "{report}");
    stop.store(true, Ordering::Relaxed);
    let pings = pings.join().unwrap();
    let rss = rss.join().unwrap();
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        "the agent died"
    );

    let refused = refused.lock().unwrap().clone();
    let named = |name: &str| name.starts_with("org.vael.Antibody.Error.");
    assert!(
        refused.keys().all(|n| named(n)),
        "refusals without the agent's error names: {refused:?}"
    );
    latencies.sort();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    let max_gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    let peak = rss.iter().max().copied().unwrap();
    let (rss_third, accepted_third) = at_third.expect("the flood lasted a third");
    let per_plan = peak.saturating_sub(rss_third) as f64
        / accepted.len().saturating_sub(accepted_third).max(1) as f64;
    let figures = [
        format!(
            "flood {secs} s, {CLIENTS} clients: {} plans accepted ({:.0}/s), refused {refused:?}; \
         drained {drain_secs:.1} s later",
            accepted.len(),
            accepted.len() as f64 / secs as f64
        ),
        format!(
            "  Status: {} calls, p50 {p50:?}, p99 {p99:?}, max {:?}; \
         ListPlans+VerifyLedger rounds {rounds}; slow subscriber read {} signals",
            latencies.len(),
            latencies.last().unwrap(),
            received.load(Ordering::Relaxed)
        ),
        format!(
            "  RSS: start {} KiB, a third in {rss_third} KiB, peak {peak} KiB \
         ({per_plan:.2} KiB per plan accepted since the third), end {} KiB; \
         watchdog: {} pings, largest gap {max_gap:?} (WATCHDOG_USEC {WATCHDOG:?})",
            rss[0],
            rss.last().unwrap(),
            pings.len() - 2
        ),
    ];
    record_figures("flood", &figures.join("\n"));
    assert!(
        p99 <= Duration::from_millis(100),
        "Status p99 {p99:?} during the flood"
    );
    assert!(
        max_gap < WATCHDOG,
        "the watchdog would have fired: pings {max_gap:?} apart"
    );
    assert!(peak < RSS_LIMIT_KIB, "RSS peaked at {peak} KiB");
    assert!(
        per_plan < RSS_GROWTH_PER_PLAN_LIMIT_KIB,
        "RSS grew {per_plan:.2} KiB per plan accepted after the first third: plans are held in memory"
    );
    assert!(!accepted.is_empty(), "the flood got nothing accepted");
}
