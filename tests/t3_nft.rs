//! T3: the real kernel. Each test makes two network namespaces joined by a
//! veth pair, runs a server in one and the real `antibodyd` in the same one
//! (`ip netns exec`), with a private system bus, and proves with real
//! connections from the other namespace that isolations and throttles hold,
//! end, and come back after an outside `nft flush ruleset`. Nothing here
//! touches the host's own network namespace or firewall. Root required;
//! the tests fail without it, never skip.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use antibody::dbus::proxy::AntibodyProxy;
use serde_json::{json, Value};
use support::*;

/// How long a bounded wait for the agent or the kernel may last.
const PATIENCE: Duration = Duration::from_secs(60);
const PORT: u16 = 8080;

// ---------------------------------------------------------------- namespaces

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out, err) = run(program, args);
    assert!(ok, "{program} {args:?} failed: {err}");
    out
}

/// A server namespace and a client namespace joined by a veth pair:
/// `server_ip` = 10.231.N.1, `client_ip` = 10.231.N.2. Removed on drop,
/// panic or not (deleting a namespace takes its veth end with it).
struct NetPair {
    server: String,
    client: String,
    server_ip: IpAddr,
    client_ip: IpAddr,
}

impl NetPair {
    fn new() -> NetPair {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let pair = NetPair {
            server: format!("abs{tag}"),
            client: format!("abc{tag}"),
            server_ip: format!("10.231.{n}.1").parse().unwrap(),
            client_ip: format!("10.231.{n}.2").parse().unwrap(),
        };
        let (veth_s, veth_c) = (format!("vs{tag}"), format!("vc{tag}"));
        must("ip", &["netns", "add", &pair.server]);
        must("ip", &["netns", "add", &pair.client]);
        // Created inside the server namespace, so no end ever sits in the host's.
        pair.exec_server(&[
            "ip",
            "link",
            "add",
            &veth_s,
            "type",
            "veth",
            "peer",
            "name",
            &veth_c,
            "netns",
            &pair.client,
        ]);
        for (ns, dev, ip) in [
            (&pair.server, &veth_s, pair.server_ip),
            (&pair.client, &veth_c, pair.client_ip),
        ] {
            let cidr = format!("{ip}/24");
            must("ip", &["-n", ns, "addr", "add", &cidr, "dev", dev]);
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    fn exec_server(&self, args: &[&str]) -> String {
        let full = [&["netns", "exec", &self.server], args].concat();
        must("ip", &full)
    }

    /// Like `exec_server`, for commands that may fail: (success, stdout, stderr).
    fn try_exec_server(&self, args: &[&str]) -> (bool, String, String) {
        let full = [&["netns", "exec", &self.server], args].concat();
        run("ip", &full)
    }

    /// Whether the agent's table exists in the server's namespace.
    fn has_table(&self) -> bool {
        self.try_exec_server(&["nft", "list", "table", "inet", "antibody"])
            .0
    }

    fn nft_json(&self, what: &[&str]) -> Value {
        let out = self.exec_server(&[&["nft", "-j", "list"], what].concat());
        serde_json::from_str(&out).expect("nft -j prints JSON")
    }

    /// Elements of one set of `inet antibody`.
    fn elements(&self, set: &str) -> Vec<Value> {
        let listing = self.nft_json(&["set", "inet", "antibody", set]);
        listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("set"))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn rule_count(&self) -> usize {
        let listing = self.nft_json(&["table", "inet", "antibody"]);
        listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.server]);
        let _ = run("ip", &["netns", "del", &self.client]);
    }
}

/// Runs `f` on a thread that joined namespace `ns`; sockets it makes stay
/// in that namespace wherever they are used afterwards.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in namespace")
}

/// A TCP server in the server namespace that answers "ok" to everyone.
fn start_tcp_server(pair: &NetPair) {
    let listener = in_netns(&pair.server, || {
        TcpListener::bind(("0.0.0.0", PORT)).expect("bind the test server")
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(b"ok\n");
        }
    });
}

/// Whether a TCP connection from the client namespace reaches the server
/// and hears its answer (a dropped SYN gives up after one second).
fn connects(pair: &NetPair) -> bool {
    let target = SocketAddr::new(pair.server_ip, PORT);
    in_netns(&pair.client, move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).is_ok() && answer == "ok\n"
    })
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    wait_until(PATIENCE, &mut done, what);
}

// ---------------------------------------------------------------- the agent

struct Setup {
    pair: NetPair,
    bus: PrivateBus,
    agent: Agent,
    _home: tempfile::TempDir,
}

fn start(extra_toml: &str) -> Setup {
    start_behind(extra_toml, &[])
}

/// `/etc/protocols` hidden (an empty file in its place), in a mount
/// namespace of the command's own: as on a system without `netbase`.
const WITHOUT_PROTOCOLS: [&str; 8] = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "mount --bind /dev/null /etc/protocols && exec \"$@\"",
    "sh",
];

/// The agent in the server namespace, its command run behind `outer`
/// (which must exec it in place).
fn start_behind(extra_toml: &str, outer: &[&str]) -> Setup {
    require_root();
    let pair = NetPair::new();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let config = write_config(
        home.path(),
        &format!("[nft]\nreconcile_interval_secs = 1\n{extra_toml}"),
    );
    let wrapper = [outer, &["ip", "netns", "exec", pair.server.as_str()]].concat();
    let agent = Agent::start_wrapped(&bus, home.path(), &config, &[], &wrapper);
    Setup {
        pair,
        bus,
        agent,
        _home: home,
    }
}

async fn proxy(conn: &zbus::Connection) -> AntibodyProxy<'static> {
    AntibodyProxy::new(conn).await.expect("Antibody proxy")
}

async fn submit(p: &AntibodyProxy<'_>, action: &str) -> String {
    let (id, created) = p
        .submit_alert(&alert(&format!("[{action}]")))
        .await
        .unwrap_or_else(|e| panic!("SubmitAlert {action}: {e}"));
    assert!(created, "a new plan for {action}");
    id
}

async fn plan(p: &AntibodyProxy<'_>, id: &str) -> Value {
    serde_json::from_str(&p.get_plan(id).await.expect("GetPlan")).unwrap()
}

/// Waits until the plan finished, and returns it.
async fn finished(p: &AntibodyProxy<'_>, id: &str) -> Value {
    for _ in 0..(PATIENCE.as_millis() / 20) {
        let plan = plan(p, id).await;
        if matches!(plan["status"].as_str(), Some("success" | "failed")) {
            return plan;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("plan {id} did not finish");
}

async fn applied(p: &AntibodyProxy<'_>, action: &str) -> String {
    let id = submit(p, action).await;
    let plan = finished(p, &id).await;
    assert_eq!(plan["status"], "success", "{action}: {plan:#}");
    assert_eq!(plan["actions"][0]["state"], "applied", "{plan:#}");
    id
}

fn refusal_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("{other:?}"),
    }
}

fn ledger_kinds(dir: &Path) -> Vec<String> {
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            if let Ok(record) = serde_json::from_str::<Value>(line) {
                kinds.push(record["kind"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    kinds
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread")]
async fn isolating_a_port_drops_connections_until_its_time_is_over() {
    let s = start("");
    start_tcp_server(&s.pair);
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;
    assert!(
        connects(&s.pair),
        "the connection works before any isolation"
    );

    let id = applied(
        &p,
        &format!(r#"{{"type":"isolate_socket","sid":"tcp:{PORT}","seconds":3}}"#),
    )
    .await;
    assert!(
        !connects(&s.pair),
        "tcp:{PORT} isolated: the connection fails"
    );
    assert_eq!(s.pair.elements("ports").len(), 1);

    // The kernel timeout ends it; the agent's timed revert records it.
    wait_for("the connection to work again after 3 s", || {
        connects(&s.pair)
    });
    for _ in 0..(PATIENCE.as_millis() / 50) {
        if plan(&p, &id).await["actions"][0]["state"] == "reverted" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(plan(&p, &id).await["actions"][0]["state"], "reverted");
    assert!(s.pair.elements("ports").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_ends_an_address_isolation_and_re_isolating_extends_it() {
    let s = start("");
    start_tcp_server(&s.pair);
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;
    let client = s.pair.client_ip;

    let first = applied(
        &p,
        &format!(r#"{{"type":"isolate_socket","sid":"{client}","seconds":600}}"#),
    )
    .await;
    assert!(!connects(&s.pair), "the client's address is isolated");
    // A second plan on the same address extends the element, it does not fail.
    let second = applied(
        &p,
        &format!(r#"{{"type":"isolate_socket","sid":"{client}","seconds":900}}"#),
    )
    .await;
    let timeout = s.pair.elements("addr4")[0]["elem"]["timeout"]
        .as_u64()
        .unwrap();
    assert!(timeout > 600, "the element's timeout grew to {timeout}");

    // Rolling back the longer one leaves the first plan's isolation in force.
    p.rollback_plan(&second).await.expect("RollbackPlan");
    // The element then keeps what is left of the first plan's 600 s.
    wait_for("the second plan's revert", || {
        let timeout = s
            .pair
            .elements("addr4")
            .first()
            .and_then(|e| e["elem"]["timeout"].as_u64());
        timeout.is_some_and(|t| (500..=600).contains(&t))
    });
    assert!(
        !connects(&s.pair),
        "the first plan still isolates the client"
    );
    p.rollback_plan(&first).await.expect("RollbackPlan");
    wait_for("the connection to work after both rollbacks", || {
        connects(&s.pair)
    });
    assert!(s.pair.elements("addr4").is_empty());
}

/// Issue 15: a bare NEXUS alert (no actions) isolates the offending
/// address through a playbook, in the real kernel's nft; the same offender
/// again within the window gets four times as long; loopback as the entity
/// is refused like an alert's own action.
#[tokio::test(flavor = "multi_thread")]
async fn a_playbook_isolates_a_bare_alerts_address_and_a_repeat_is_isolated_longer() {
    let books = tempfile::tempdir().unwrap();
    std::fs::write(
        books.path().join("10-ssh.toml"),
        r#"
[[playbook]]
name = "ssh-bruteforce"
[playbook.match]
source = ["NEXUS"]
kind = "ssh-bruteforce"
[[playbook.actions]]
type = "isolate_socket"
sid = "{entity}"
seconds = 600
[playbook.escalate]
factor = 4
window_secs = 86400
max_seconds = 86400
"#,
    )
    .unwrap();
    let s = start(&format!(
        "[playbooks]\ndir = \"{}\"\n",
        books.path().display()
    ));
    start_tcp_server(&s.pair);
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;
    let client = s.pair.client_ip;
    let bare = |description: &str, entity: &str| {
        json!({"source": "NEXUS", "severity": "high", "kind": "ssh-bruteforce",
               "description": description, "context": {"entity": entity}})
        .to_string()
    };

    let (first, _) = p
        .submit_alert(&bare("one", &client.to_string()))
        .await
        .unwrap();
    let plan1 = finished(&p, &first).await;
    assert_eq!(plan1["status"], "success", "{plan1}");
    assert_eq!(plan1["playbook"]["repeat"], 0);
    assert!(!connects(&s.pair), "the offender is isolated");
    let timeout = |pair: &NetPair| {
        pair.elements("addr4")[0]["elem"]["timeout"]
            .as_u64()
            .unwrap()
    };
    assert!(
        (500..=600).contains(&timeout(&s.pair)),
        "{}",
        timeout(&s.pair)
    );

    let (second, _) = p
        .submit_alert(&bare("two", &client.to_string()))
        .await
        .unwrap();
    let plan2 = finished(&p, &second).await;
    assert_eq!(plan2["playbook"]["repeat"], 1, "{plan2}");
    assert_eq!(plan2["actions"][0]["params"]["seconds"], 2400);
    assert!(
        timeout(&s.pair) > 2000,
        "the element's timeout grew to {}",
        timeout(&s.pair)
    );

    let err = p.submit_alert(&bare("lo", "127.0.0.1")).await.unwrap_err();
    assert_eq!(
        refusal_name(&err),
        "org.vael.Antibody.Error.ProtectedTarget",
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outside_flush_is_undone_by_reconcile() {
    let s = start("");
    start_tcp_server(&s.pair);
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;
    let peer = format!("{}:{PORT}", s.pair.server_ip);

    applied(
        &p,
        &format!(r#"{{"type":"isolate_socket","sid":"{peer}","seconds":600}}"#),
    )
    .await;
    assert!(!connects(&s.pair), "{peer} isolated");
    s.pair.exec_server(&["nft", "flush", "ruleset"]);
    wait_for("reconcile to restore the isolation", || {
        s.pair
            .try_exec_server(&["nft", "list", "set", "inet", "antibody", "peer4"])
            .1
            .contains(&peer.replace(':', " . "))
    });
    assert!(!connects(&s.pair), "the isolation is back after the flush");
    wait_for("an nft_drift record in the ledger", || {
        ledger_kinds(&s.agent.ledger_dir())
            .iter()
            .any(|k| k == "nft_drift")
    });
    assert!(
        s.agent.log_text().contains("nft_drift"),
        "the drift is logged to the journal (stderr here): {}",
        s.agent.log_text()
    );
}

/// Where `/etc/protocols` is missing, nft lists a port isolation's
/// protocol as a number; reconcile must still see its own element, not
/// re-add it and record a drift every round.
#[tokio::test(flavor = "multi_thread")]
async fn a_port_isolation_is_no_drift_on_a_system_without_etc_protocols() {
    let s = start_behind("", &WITHOUT_PROTOCOLS);
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;
    applied(
        &p,
        &format!(r#"{{"type":"isolate_socket","sid":"tcp:{PORT}","seconds":600}}"#),
    )
    .await;
    let listing = must(
        WITHOUT_PROTOCOLS[0],
        &[
            &WITHOUT_PROTOCOLS[1..],
            &["ip", "netns", "exec", s.pair.server.as_str()],
            &["nft", "-j", "list", "set", "inet", "antibody", "ports"],
        ]
        .concat(),
    );
    assert!(
        listing.contains(&format!(r#"{{"concat": [6, {PORT}]}}"#)),
        "nft writes the protocol as a number here: {listing}"
    );
    // Several reconcile rounds (one a second).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kinds = ledger_kinds(&s.agent.ledger_dir());
    assert!(
        !kinds.iter().any(|k| k == "nft_drift"),
        "no drift recorded: {kinds:?}\n{}",
        s.agent.log_text()
    );
    assert_eq!(s.pair.elements("ports").len(), 1);
}

/// Counts UDP datagrams the server namespace receives on `port`, apart
/// from "end" markers, which it counts on their own.
struct UdpCounter {
    data: Arc<AtomicUsize>,
    markers: Arc<AtomicUsize>,
}

fn start_udp_counter(pair: &NetPair, port: u16) -> UdpCounter {
    let socket = in_netns(&pair.server, move || {
        UdpSocket::bind(("0.0.0.0", port)).expect("bind the UDP counter")
    });
    let counter = UdpCounter {
        data: Arc::new(AtomicUsize::new(0)),
        markers: Arc::new(AtomicUsize::new(0)),
    };
    let (data, markers) = (counter.data.clone(), counter.markers.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n) = socket.recv(&mut buf) {
            let counter = if &buf[..n] == b"end" { &markers } else { &data };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    counter
}

/// Sends `n` datagrams from the client namespace, `gap` apart.
fn send_udp(pair: &NetPair, port: u16, n: usize, gap: Duration) {
    send_payloads(pair, port, (0..n).map(|i| i.to_string()).collect(), gap);
}

fn send_payloads(pair: &NetPair, port: u16, payloads: Vec<String>, gap: Duration) {
    let target = SocketAddr::new(pair.server_ip, port);
    in_netns(&pair.client, move || {
        let socket = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        for payload in payloads {
            socket.send_to(payload.as_bytes(), target).unwrap();
            std::thread::sleep(gap);
        }
    });
}

/// Everything sent before has been counted once an "end" marker sent after
/// it arrives (datagrams on one veth arrive in order). A throttled marker
/// may be dropped itself, so it is sent again until one gets through.
fn settled(pair: &NetPair, port: u16, counter: &UdpCounter) -> usize {
    let seen = counter.markers.load(Ordering::Relaxed);
    wait_for("an end marker", || {
        send_payloads(pair, port, vec!["end".into()], Duration::from_millis(500));
        counter.markers.load(Ordering::Relaxed) > seen
    });
    counter.data.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_address_gets_through_slowly_and_is_dropped_fast() {
    let s = start("");
    let port = 5353;
    let counter = start_udp_counter(&s.pair, port);
    let count = &counter.data;
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;

    // Unthrottled, a fast burst of 100 all arrives.
    send_udp(&s.pair, port, 100, Duration::ZERO);
    wait_for("100 datagrams before the throttle", || {
        count.load(Ordering::Relaxed) == 100
    });

    let client = s.pair.client_ip;
    applied(
        &p,
        &format!(
            r#"{{"type":"throttle_entity","entity":"ip:{client}","seconds":600,"rate_per_sec":5}}"#
        ),
    )
    .await;
    assert_eq!(
        s.pair.elements("thr4_5").len(),
        1,
        "the client sits in the 5/s class"
    );

    // Slowly (2.5/s, under 5/s): all 8 arrive.
    count.store(0, Ordering::Relaxed);
    send_udp(&s.pair, port, 8, Duration::from_millis(400));
    wait_for("8 slow datagrams", || count.load(Ordering::Relaxed) == 8);

    // A fast burst of 100: only about the burst allowance (5) gets through.
    std::thread::sleep(Duration::from_secs(2)); // let the token bucket refill
    count.store(0, Ordering::Relaxed);
    send_udp(&s.pair, port, 100, Duration::ZERO);
    let received = settled(&s.pair, port, &counter);
    assert!(received >= 1, "some of the burst passes the limit");
    assert!(
        received < 50,
        "the burst is cut to the rate: {received} of 100 arrived"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_port_22_and_the_default_gateway_are_refused() {
    require_root();
    let pair = NetPair::new();
    // The client is the server namespace's default gateway.
    pair.exec_server(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &pair.client_ip.to_string(),
    ]);
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let config = write_config(home.path(), "");
    let wrapper = ["ip", "netns", "exec", pair.server.as_str()];
    let _agent = Agent::start_wrapped(&bus, home.path(), &config, &[], &wrapper);
    let conn = bus.connect().await;
    let p = proxy(&conn).await;
    let gateway = pair.client_ip;
    for (action, why) in [
        (
            r#"{"type":"isolate_socket","sid":"127.0.0.1"}"#.to_string(),
            "loopback",
        ),
        (
            r#"{"type":"isolate_socket","sid":"[::1]:80"}"#.to_string(),
            "loopback",
        ),
        (
            r#"{"type":"isolate_socket","sid":"tcp:22"}"#.to_string(),
            "protect.ports",
        ),
        (
            r#"{"type":"isolate_socket","sid":"10.9.9.9:22"}"#.to_string(),
            "protect.ports",
        ),
        (
            format!(r#"{{"type":"isolate_socket","sid":"{gateway}"}}"#),
            "default gateway",
        ),
        (
            format!(r#"{{"type":"throttle_entity","entity":"ip:{gateway}","seconds":5}}"#),
            "default gateway",
        ),
    ] {
        let err = p
            .submit_alert(&alert(&format!("[{action}]")))
            .await
            .expect_err(&action);
        assert_eq!(
            refusal_name(&err),
            "org.vael.Antibody.Error.ProtectedTarget",
            "{action}"
        );
        assert!(err.to_string().contains(why), "{action}: {err}");
    }
    // Nothing was applied, so the agent never built its table.
    let exists = pair.has_table();
    assert!(!exists, "no table without a mitigation");
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_isolations_are_elements_not_rules() {
    let s = start("[queue]\nmax = 20000\nmax_concurrent = 256\n");
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;
    applied(
        &p,
        r#"{"type":"isolate_socket","sid":"10.100.255.255","seconds":3600}"#,
    )
    .await;
    let rules_for_one = s.pair.rule_count();

    const N: usize = 10_000;
    let submitted = Arc::new(AtomicUsize::new(1));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let p = p.clone();
            let submitted = submitted.clone();
            tokio::spawn(async move {
                for i in (w..N - 1).step_by(16) {
                    let sid = format!("10.100.{}.{}", i / 256, i % 256);
                    let action =
                        format!(r#"{{"type":"isolate_socket","sid":"{sid}","seconds":3600}}"#);
                    p.submit_alert(&alert(&format!("[{action}]")))
                        .await
                        .expect("SubmitAlert");
                    submitted.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(submitted.load(Ordering::Relaxed), N);
    for _ in 0..(300_000 / 200) {
        let status: Value = serde_json::from_str(&p.status().await.unwrap()).unwrap();
        if status["active_mitigations"] == N && status["queue_depth"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status: Value = serde_json::from_str(&p.status().await.unwrap()).unwrap();
    assert_eq!(status["active_mitigations"], N, "{status}");
    assert_eq!(s.pair.elements("addr4").len(), N);
    assert_eq!(
        s.pair.rule_count(),
        rules_for_one,
        "the rule count does not grow"
    );
}

/// README.md's "Isolating a port" block: its `busctl` line runs verbatim,
/// and its `nft` line (inside the agent's namespace) shows the element.
#[tokio::test(flavor = "multi_thread")]
async fn readme_isolation_example_works_verbatim() {
    let s = start("");
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let mut lines = readme.lines();
    lines
        .by_ref()
        .find(|l| l.trim_end() == "## Isolating a port with `busctl`")
        .expect("README.md has the section");
    lines
        .by_ref()
        .find(|l| l.trim_end() == "```sh")
        .expect("a sh block");
    let block: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
    let submit = block
        .iter()
        .find(|l| l.starts_with("busctl "))
        .expect("a busctl line");
    let show = block
        .iter()
        .find(|l| l.starts_with("nft "))
        .expect("an nft line");
    let (ok, out, err) = run_on_bus(&s.bus, "sh", &["-c", submit], None);
    assert!(ok, "{submit}\n{err}");
    assert!(out.trim().ends_with("true"), "{out}");
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;
    let id = first_quoted(&out);
    assert_eq!(finished(&p, &id).await["status"], "success");
    let shown = s
        .pair
        .exec_server(&show.split_whitespace().collect::<Vec<_>>());
    assert!(
        shown.contains("tcp . 8080"),
        "{show} shows the isolated port:\n{shown}"
    );
}

fn first_quoted(text: &str) -> String {
    text.split('"').nth(1).expect("a quoted id").to_string()
}

/// DryRun shows the exact batch: the table build the first time, then a
/// single `add element`; nothing reaches the kernel.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_shows_the_exact_nft_batch() {
    let s = start("");
    let conn = s.bus.connect().await;
    let p = proxy(&conn).await;
    let isolate = |port: u16| {
        alert(&format!(
            r#"[{{"type":"isolate_socket","sid":"udp:{port}","seconds":60}}]"#
        ))
    };
    let batch_of = |dry: String| -> Vec<Value> {
        let dry: Value = serde_json::from_str(&dry).unwrap();
        dry["actions"][0]["change"]["nft_batch"]["nftables"]
            .as_array()
            .cloned()
            .unwrap()
    };
    let element = |port: u16| {
        serde_json::json!({"add": {"element": {"family": "inet", "table": "antibody", "name": "ports",
            "elem": [{"elem": {"val": {"concat": ["udp", port]}, "timeout": 60}}]}}})
    };
    let first = batch_of(p.dry_run(&isolate(5000)).await.unwrap());
    assert_eq!(
        first[0],
        serde_json::json!({"add": {"table": {"family": "inet", "name": "antibody"}}})
    );
    assert_eq!(first.last(), Some(&element(5000)));
    let exists = s.pair.has_table();
    assert!(!exists, "a dry run builds nothing");

    applied(
        &p,
        r#"{"type":"isolate_socket","sid":"udp:5001","seconds":60}"#,
    )
    .await;
    assert_eq!(
        batch_of(p.dry_run(&isolate(5002)).await.unwrap()),
        [element(5002)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_stays_on_stop_unless_remove_on_stop() {
    for (remove, stays) in [("false", true), ("true", false)] {
        let mut s = start(&format!("remove_on_stop = {remove}\n"));
        let conn = s.bus.connect().await;
        let p = proxy(&conn).await;
        applied(
            &p,
            r#"{"type":"isolate_socket","sid":"udp:5003","seconds":60}"#,
        )
        .await;
        // After a batch the agent keeps one `nft -j -f -` waiting for the
        // next (src/sys/nft/cli.rs); it must end with the agent.
        let spare = waiting_nft_children(s.agent.pid());
        assert_eq!(spare.len(), 1, "one nft started ahead: {spare:?}");
        s.agent.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(s.agent.wait().success());
        let exists = s.pair.has_table();
        assert_eq!(exists, stays, "nft.remove_on_stop = {remove}");
        wait_until(
            Duration::from_secs(5),
            || !Path::new(&format!("/proc/{}", spare[0])).exists(),
            "the waiting nft to end with the agent",
        );
    }
}

/// Pids of the `nft` processes whose parent is `pid`, once one is there.
fn waiting_nft_children(pid: i32) -> Vec<String> {
    let list = || {
        let out = Command::new("pgrep")
            .args(["-P", &pid.to_string(), "-x", "nft"])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_until(
        Duration::from_secs(5),
        || !list().is_empty(),
        "a waiting nft",
    );
    list()
}
