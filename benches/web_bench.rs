//! `cargo bench --bench web_bench` (as root; BENCHMARKS.md, "The web
//! bridge"): `POST /antibody/alert` through `antibody-web` against
//! `SubmitAlert` on D-Bus, in the same run, to the same release agent on
//! the same private `dbus-daemon` (shipped policy):
//!
//! - p50 of one client's distinct alerts, one after the other (the HTTP
//!   client keeps its connection open, as an IDS would);
//! - answers per second with 16 clients (16 bus connections; 16 HTTP
//!   connections, one per client thread).
//!
//! Three rounds; within a round the two sides alternate which goes first,
//! and every row starts with the agent idle (queue drained, CPU settled),
//! so the plans of the row before, and their archiving, do not share its
//! cores. The bridge runs as root here,
//! like the D-Bus caller, so the agent applies the same rules to both
//! (as `antibody-web` it would be under `auth.submit_*` rate limits).
//! BENCH_PER_CLIENT sets the alerts per client in the throughput rows
//! (default 250: 4 000 a row).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;
use common::{alert, bench_home, cpu_secs, p50, timed_submit, wait_idle};
use support::web::{RunAs, Web, SENTINEL};
use support::{Agent, PrivateBus};

const LATENCY_SAMPLES: usize = 1000;
const CLIENTS: usize = 16;
const ROUNDS: usize = 3;

/// Numbers alerts so that no two in the run are alike (each makes a plan).
struct AlertNumbers(usize);

impl AlertNumbers {
    fn take(&mut self, count: usize) -> usize {
        let first = self.0;
        self.0 += count;
        first
    }
}

fn http_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A client on one kept-alive connection that writes each request in
/// one piece and reads the answer by its Content-Length, as an IDS's
/// sender would: the bridge's cost, not a client library's.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn connect(addr: &str) -> KeepAlive {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        KeepAlive {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// POSTs alert `n`; panics unless the answer is 202 with a new plan.
    fn post_alert(&mut self, n: usize) {
        let body = alert(n, "journal");
        let request = format!(
            "POST /antibody/alert HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {SENTINEL}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = self.send(&request);
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        assert!(answer.contains("\"created\":true"), "{answer}");
    }

    /// Writes `request` in one piece; the whole answer, head and body.
    fn send(&mut self, request: &str) -> String {
        self.stream.write_all(request.as_bytes()).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let got = self.stream.read(&mut chunk).unwrap();
            assert!(got > 0, "the bridge closed the connection");
            self.buf.extend_from_slice(&chunk[..got]);
            let text = String::from_utf8_lossy(&self.buf);
            let Some(head_end) = text.find("\r\n\r\n") else {
                continue;
            };
            let length: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if self.buf.len() >= head_end + 4 + length {
                return text.into_owned();
            }
        }
    }
}

fn http_latency(addr: &str, first: usize) -> Duration {
    let mut client = KeepAlive::connect(addr);
    let samples = (first..first + LATENCY_SAMPLES)
        .map(|n| {
            let t = Instant::now();
            client.post_alert(n);
            t.elapsed()
        })
        .collect();
    p50(samples)
}

/// The same with ureq, a general-purpose client library, for comparison:
/// its own work per request is part of what it measures.
fn ureq_latency(url: &str, first: usize) -> Duration {
    let http = http_client();
    let samples = (first..first + LATENCY_SAMPLES)
        .map(|n| {
            let t = Instant::now();
            let mut response = http
                .post(url)
                .header("Authorization", format!("Bearer {SENTINEL}"))
                .header("Content-Type", "application/json")
                .send(alert(n, "journal").as_bytes())
                .expect("POST /antibody/alert");
            let body = response.body_mut().read_to_string().unwrap();
            let took = t.elapsed();
            assert_eq!(response.status().as_u16(), 202, "{body}");
            took
        })
        .collect();
    p50(samples)
}

/// `GET /antibody/status` p50, answered from the bridge's one-second
/// cache of the agent's `Status`: an HTTP round trip through the bridge
/// with no D-Bus call, the floor an HTTP request adds to a D-Bus call.
fn http_floor(addr: &str) -> Duration {
    let mut client = KeepAlive::connect(addr);
    let samples = (0..LATENCY_SAMPLES)
        .map(|_| {
            let t = Instant::now();
            let answer = client.send("GET /antibody/status HTTP/1.1\r\nHost: bench\r\n\r\n");
            let took = t.elapsed();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            took
        })
        .collect();
    p50(samples)
}

async fn dbus_latency(proxy: &AntibodyProxy<'_>, first: usize) -> Duration {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for n in first..first + LATENCY_SAMPLES {
        samples.push(timed_submit(proxy, n).await);
    }
    p50(samples)
}

/// Answers per second: CLIENTS threads, each with its own connection,
/// POSTing `per` alerts one after the other, timed from a common start.
fn http_rate(addr: &str, per: usize, first: usize) -> f64 {
    let start_line = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, start_line) = (addr.to_string(), start_line.clone());
            std::thread::spawn(move || {
                let mut client = KeepAlive::connect(&addr);
                start_line.wait();
                for i in 0..per {
                    client.post_alert(first + c * per + i);
                }
            })
        })
        .collect();
    start_line.wait();
    let t = Instant::now();
    clients.into_iter().for_each(|c| c.join().unwrap());
    (CLIENTS * per) as f64 / t.elapsed().as_secs_f64()
}

async fn dbus_rate(bus: &PrivateBus, per: usize, first: usize) -> f64 {
    let mut connections = Vec::new();
    for _ in 0..CLIENTS {
        connections.push(bus.connect().await);
    }
    let mut proxies = Vec::new();
    for conn in &connections {
        proxies.push(antibody::dbus::proxy::client(conn).await.unwrap());
    }
    let t = Instant::now();
    let calls = proxies.iter().enumerate().map(|(c, proxy)| async move {
        for i in 0..per {
            let text = alert(first + c * per + i, "journal");
            let (_, created) = proxy.submit_alert(&text).await.unwrap();
            assert!(created);
        }
    });
    futures_util::future::join_all(calls).await;
    (CLIENTS * per) as f64 / t.elapsed().as_secs_f64()
}

struct Round {
    dbus_p50: Duration,
    http_p50: Duration,
    floor_p50: Duration,
    ureq_p50: Duration,
    dbus_rate: f64,
    http_rate: f64,
    /// The bridge's CPU per answer in its throughput row (µs).
    bridge_cpu_us: f64,
}

#[tokio::main]
async fn main() {
    support::require_root();
    let per: usize = std::env::var("BENCH_PER_CLIENT")
        .map(|v| v.parse().expect("BENCH_PER_CLIENT: a number"))
        .unwrap_or(250);
    let bus = PrivateBus::start();
    let home = bench_home();
    let agent = Agent::start(&bus, home.path(), "[queue]\nmax = 200000\n");
    let web = Web::start(&bus, "", RunAs::Root);
    let url = format!("{}/antibody/alert", web.base);
    let conn = bus.connect().await;
    let proxy = antibody::dbus::proxy::client(&conn).await.unwrap();
    let mut numbers = AlertNumbers(0);
    // Warm both paths (connections, the bridge's link to the agent).
    dbus_latency(&proxy, numbers.take(LATENCY_SAMPLES)).await;
    http_latency(&web.addr, numbers.take(LATENCY_SAMPLES));

    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let http_first = round % 2 == 1;
        let mut dbus_p50 = Duration::ZERO;
        let mut http_p50 = Duration::ZERO;
        wait_idle(&proxy, agent.pid()).await;
        let floor_p50 = http_floor(&web.addr);
        wait_idle(&proxy, agent.pid()).await;
        let ureq_p50 = ureq_latency(&url, numbers.take(LATENCY_SAMPLES));
        for side in [http_first, !http_first] {
            wait_idle(&proxy, agent.pid()).await;
            if side {
                http_p50 = http_latency(&web.addr, numbers.take(LATENCY_SAMPLES));
            } else {
                dbus_p50 = dbus_latency(&proxy, numbers.take(LATENCY_SAMPLES)).await;
            }
        }
        let mut dbus = 0.0;
        let mut http = 0.0;
        let mut bridge_cpu_us = 0.0;
        for side in [http_first, !http_first] {
            wait_idle(&proxy, agent.pid()).await;
            if side {
                let before = cpu_secs(web.pid());
                http = http_rate(&web.addr, per, numbers.take(CLIENTS * per));
                bridge_cpu_us = (cpu_secs(web.pid()) - before) * 1e6 / (CLIENTS * per) as f64;
            } else {
                dbus = dbus_rate(&bus, per, numbers.take(CLIENTS * per)).await;
            }
        }
        rounds.push(Round {
            dbus_p50,
            http_p50,
            floor_p50,
            ureq_p50,
            dbus_rate: dbus,
            http_rate: http,
            bridge_cpu_us,
        });
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| measure | bridge (HTTP) | `SubmitAlert` (D-Bus), same run | ratio | target |");
    println!("|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "| round {}: p50, 1 client, {LATENCY_SAMPLES} distinct alerts | {:.3} ms | {:.3} ms | {:.2}× (the floor: {:.2}×) | ≤ 1.3× |",
            i + 1,
            ms(r.http_p50),
            ms(r.dbus_p50),
            r.http_p50.as_secs_f64() / r.dbus_p50.as_secs_f64(),
            (r.dbus_p50 + r.floor_p50).as_secs_f64() / r.dbus_p50.as_secs_f64()
        );
        println!(
            "| round {}: … the floor: `SubmitAlert` p50 + an HTTP round trip through the bridge without a D-Bus call (`GET /antibody/status` from its cache, p50 {:.3} ms) | | {:.3} ms | | |",
            i + 1,
            ms(r.floor_p50),
            ms(r.dbus_p50 + r.floor_p50)
        );
        println!(
            "| round {}: … the same alerts sent with ureq, a general-purpose client library (its own work included) | {:.3} ms | {:.3} ms | {:.2}× | |",
            i + 1,
            ms(r.ureq_p50),
            ms(r.dbus_p50),
            r.ureq_p50.as_secs_f64() / r.dbus_p50.as_secs_f64()
        );
        println!(
            "| round {}: answers/s, {CLIENTS} clients × {per} | {:.0}/s (the bridge's CPU: {:.0} µs an answer) | {:.0}/s | {:.2}× | ≥ 0.8× |",
            i + 1,
            r.http_rate,
            r.bridge_cpu_us,
            r.dbus_rate,
            r.http_rate / r.dbus_rate
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let latency = median(
        rounds
            .iter()
            .map(|r| r.http_p50.as_secs_f64() / r.dbus_p50.as_secs_f64())
            .collect(),
    );
    let rate = median(rounds.iter().map(|r| r.http_rate / r.dbus_rate).collect());
    println!("| median of the {ROUNDS} rounds: p50 | | | {latency:.2}× | ≤ 1.3× |");
    println!("| median of the {ROUNDS} rounds: answers/s | | | {rate:.2}× | ≥ 0.8× |");
}
