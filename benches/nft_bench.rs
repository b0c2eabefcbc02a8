//! Issue 5's targets for the nftables backend, each against baselines taken
//! in the same run on the same machine: the release `antibodyd` runs in a
//! network namespace this bench creates (never the host's), on a private
//! `dbus-daemon` with the shipped policy.
//!
//!     cargo bench --bench nft_bench          # prints a Markdown table
//!
//! "Enforced" is measured up to the plan's `ActionFinished … applied`
//! signal, which the agent sends after the element is in the kernel and its
//! record is durable: an upper bound on the time to enforcement.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;
use antibody::sys::nft::batch::{add_elements, document, rebuild_table};
use antibody::sys::nft::Element;
use common::{p50, Netns};
use futures_util::StreamExt;
use support::{write_config, Agent, PrivateBus};

const LATENCY_SAMPLES: usize = 300;
const BULK: usize = 1000;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One `nft -j -f -` run of `batch`, from a thread inside the namespace
/// (a child inherits its thread's network namespace), as the agent runs it.
fn nft_apply(batch: &serde_json::Value) -> Duration {
    use std::io::Write;
    let t = Instant::now();
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.to_string().as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    t.elapsed()
}

fn addr(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::from([10, 77, (i / 256) as u8, (i % 256) as u8])
}

/// Baselines: one `nft` process for a 1-element batch, and for a
/// 1 000-element batch, in a scratch namespace with the agent's table.
fn nft_baselines() -> (Duration, Duration) {
    let ns = Netns::add("abnb");
    let path = format!("/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        use std::os::fd::AsFd;
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        nft_samples()
    })
    .join()
    .unwrap()
}

fn nft_samples() -> (Duration, Duration) {
    nft_apply(&document(rebuild_table()));
    let one: Vec<Duration> = (0..LATENCY_SAMPLES)
        .map(|i| {
            let e = Element::isolate(antibody::actions::net::Sid::Addr(addr(i)));
            nft_apply(&document(add_elements(&[(e, 3600)])))
        })
        .collect();
    let thousands: Vec<Duration> = (0..20)
        .map(|round| {
            let elements: Vec<(Element, u64)> = (0..BULK)
                .map(|i| {
                    let a = addr(10_000 + round * BULK + i);
                    (Element::isolate(antibody::actions::net::Sid::Addr(a)), 3600)
                })
                .collect();
            nft_apply(&document(add_elements(&elements)))
        })
        .collect();
    (p50(one), p50(thousands))
}

fn isolate_alert(i: usize, tag: &str) -> String {
    format!(
        r#"{{"source":"NEXUS","severity":"high","description":"bench {tag} {i}","actions":[{{"type":"isolate_socket","sid":"{}","seconds":3600}}]}}"#,
        addr(i)
    )
}

fn notify_alert(i: usize) -> String {
    format!(
        r#"{{"source":"NEXUS","severity":"low","description":"bench notify {i}","actions":[{{"type":"notify_operator","channel":"dbus","message":"bench {i}"}}]}}"#
    )
}

/// Idle time between two alerts of the spaced runs: an alert that finds
/// the agent (and the `nft` it started ahead) idle, as most alerts do.
const IDLE_GAP: Duration = Duration::from_millis(20);

/// SubmitAlert → its ActionFinished(applied) signal, one plan at a time,
/// `gap` apart.
async fn one_by_one(
    proxy: &AntibodyProxy<'_>,
    alerts: impl Iterator<Item = String>,
    gap: Duration,
) -> Vec<Duration> {
    let mut finished = proxy.receive_action_finished().await.unwrap();
    let mut samples = Vec::new();
    for text in alerts {
        tokio::time::sleep(gap).await;
        let t = Instant::now();
        let (id, created) = proxy.submit_alert(&text).await.unwrap();
        assert!(created);
        loop {
            let signal = finished.next().await.unwrap();
            let args = signal.args().unwrap();
            if args.plan_id == id {
                assert_eq!(args.outcome, "applied", "plan {id}");
                break;
            }
        }
        samples.push(t.elapsed());
    }
    samples
}

/// 1 000 alerts from 16 clients at once, each isolating its own address:
/// time from the first submit to the last ActionFinished(applied).
async fn bulk(bus: &PrivateBus, proxy: &AntibodyProxy<'static>) -> Duration {
    let mut finished = proxy.receive_action_finished().await.unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..16 {
        let conn = bus.connect().await;
        let client = Arc::new(antibody::dbus::proxy::client(&conn).await.unwrap());
        tasks.push(tokio::spawn(async move {
            let _conn = conn;
            for i in (c..BULK).step_by(16) {
                let (_, created) = client
                    .submit_alert(&isolate_alert(20_000 + i, "bulk"))
                    .await
                    .unwrap();
                assert!(created);
            }
        }));
    }
    let mut applied = HashSet::new();
    while applied.len() < BULK {
        let signal = finished.next().await.unwrap();
        let args = signal.args().unwrap();
        assert_eq!(args.outcome, "applied");
        applied.insert(args.plan_id.to_string());
    }
    let elapsed = start.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    elapsed
}

#[tokio::main]
async fn main() {
    support::require_root();
    let (nft_one, nft_thousand) = nft_baselines();

    let ns = Netns::add("abna");
    let bus = PrivateBus::start();
    let home =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let config = write_config(home.path(), "[queue]\nmax = 20000\nmax_concurrent = 256\n");
    let wrapper = ["ip", "netns", "exec", ns.0.as_str()];
    let _agent = Agent::start_wrapped(&bus, home.path(), &config, &[], &wrapper);
    let conn = bus.connect().await;
    let proxy = antibody::dbus::proxy::client(&conn).await.unwrap();

    // The first isolation builds the table: measured apart from the rest.
    let first = one_by_one(
        &proxy,
        std::iter::once(isolate_alert(0, "first")),
        Duration::ZERO,
    )
    .await[0];
    let isolations = |from: usize| (from..from + LATENCY_SAMPLES).map(|i| isolate_alert(i, "one"));
    let notify_spaced =
        p50(one_by_one(&proxy, (0..LATENCY_SAMPLES).map(notify_alert), IDLE_GAP).await);
    let isolate_spaced = p50(one_by_one(&proxy, isolations(1), IDLE_GAP).await);
    let notify = p50(one_by_one(
        &proxy,
        (LATENCY_SAMPLES..2 * LATENCY_SAMPLES).map(notify_alert),
        Duration::ZERO,
    )
    .await);
    let isolate = p50(one_by_one(&proxy, isolations(1 + LATENCY_SAMPLES), Duration::ZERO).await);
    let bulk_time = bulk(&bus, &proxy).await;

    println!("| measure | result | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    let row = |what: &str, isolate: Duration, notify: Duration| {
        println!(
            "| one isolation, SubmitAlert → applied, {what}, p50 of {LATENCY_SAMPLES} | {:.2} ms | one `nft` run of a 1-element batch p50 {:.2} ms; a `notify_operator` plan the same way p50 {:.2} ms | {:.2}× nft, {:.2}× plan | ≤ 5 ms |",
            ms(isolate), ms(nft_one), ms(notify),
            isolate.as_secs_f64() / nft_one.as_secs_f64(), isolate.as_secs_f64() / notify.as_secs_f64()
        );
    };
    row(
        &format!("alerts {} ms apart", IDLE_GAP.as_millis()),
        isolate_spaced,
        notify_spaced,
    );
    row("back to back", isolate, notify);
    println!(
        "| {BULK} alerts (16 clients) isolating {BULK} addresses, first submit → last applied | {:.1} ms | one `nft` run of a {BULK}-element batch p50 {:.2} ms | {:.1}× | ≤ 500 ms |",
        ms(bulk_time), ms(nft_thousand), bulk_time.as_secs_f64() / nft_thousand.as_secs_f64()
    );
    println!(
        "| the first isolation (builds the table: 100 rules, 81 sets) | {:.2} ms | | | |",
        ms(first)
    );
}
