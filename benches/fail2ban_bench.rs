//! Issue 15's benchmark: 1 000 bare NEXUS alerts for 1 000 addresses
//! through a playbook until every address is enforced, against fail2ban
//! banning the same number of addresses with `fail2ban-client set JAIL
//! banip`, side by side in one run and one network namespace the bench
//! creates (never the host's firewall).
//!
//!     cargo bench --bench fail2ban_bench     # prints a Markdown table
//!
//! Antibody: the release `antibodyd` in the namespace on a private
//! `dbus-daemon` with the shipped policy, one playbook (`isolate_socket
//! {entity}`); 16 clients submit the alerts; done at the last
//! `ActionFinished … applied` signal (sent once the element is in the
//! kernel and its record is durable).
//!
//! fail2ban: Debian's package (`apt-get install fail2ban`; the bench
//! installs it when missing, without starting the host's service), its own
//! action definitions (`nftables-allports`), a config directory and socket
//! of the bench's own, started in the namespace and stopped by the bench;
//! done when its nft set holds every address (polled every 10 ms). Two
//! ways: one `fail2ban-client` call per address (16 at a time, as an IDS
//! reporting addresses one by one would), and one call naming all of them
//! (fail2ban's best case).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;
use common::{bench_home, Netns};
use futures_util::StreamExt;
use support::{write_config, Agent, PrivateBus};

const ADDRESSES: usize = 1000;
const CLIENTS: usize = 16;

const PLAYBOOK: &str = r#"
[[playbook]]
name = "bench-ban"

[playbook.match]
source = ["NEXUS"]
kind = "bench-ban"

[[playbook.actions]]
type = "isolate_socket"
sid = "{entity}"
seconds = 3600
"#;

fn addr(round: usize, i: usize) -> String {
    format!("10.{}.{}.{}", 100 + round, i / 256, i % 256)
}

fn bare_alert(round: usize, i: usize) -> String {
    format!(
        r#"{{"source":"NEXUS","severity":"high","kind":"bench-ban","description":"bench {round} {i}","context":{{"entity":"{}"}}}}"#,
        addr(round, i)
    )
}

/// Antibody: first submit → last applied, for `ADDRESSES` bare alerts.
async fn antibody_round(
    bus: &PrivateBus,
    proxy: &AntibodyProxy<'static>,
    round: usize,
) -> Duration {
    let mut finished = proxy.receive_action_finished().await.unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let conn = bus.connect().await;
        let client = Arc::new(antibody::dbus::proxy::client(&conn).await.unwrap());
        tasks.push(tokio::spawn(async move {
            let _conn = conn;
            for i in (c..ADDRESSES).step_by(CLIENTS) {
                let (_, created) = client.submit_alert(&bare_alert(round, i)).await.unwrap();
                assert!(created);
            }
        }));
    }
    let mut applied = HashSet::new();
    while applied.len() < ADDRESSES {
        let signal = finished.next().await.unwrap();
        let args = signal.args().unwrap();
        assert_eq!(args.outcome, "applied", "plan {}", args.plan_id);
        applied.insert(args.plan_id.to_string());
    }
    let elapsed = start.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    elapsed
}

/// Installs Debian's fail2ban when missing, without starting the host's
/// own service (a policy-rc.d that refuses, unless one is there already).
fn ensure_fail2ban() {
    if Command::new("fail2ban-client")
        .arg("--version")
        .output()
        .is_ok()
    {
        return;
    }
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "fail2ban"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    assert!(installed.unwrap().success(), "apt-get install fail2ban");
}

/// fail2ban with a config directory of the bench's own: Debian's action
/// and filter definitions, one jail `bench` whose filter never matches
/// (bans come only from `banip`), its socket and pid file in `dir`.
struct Fail2ban {
    dir: tempfile::TempDir,
}

impl Fail2ban {
    fn start(ns: &Netns) -> Fail2ban {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for part in ["action.d", "filter.d"] {
            let copied = Command::new("cp")
                .args(["-r", &format!("/etc/fail2ban/{part}")])
                .arg(d)
                .status();
            assert!(copied.unwrap().success());
        }
        for file in ["paths-common.conf", "paths-debian.conf"] {
            std::fs::copy(format!("/etc/fail2ban/{file}"), d.join(file)).unwrap();
        }
        std::fs::write(d.join("empty.log"), "").unwrap();
        std::fs::write(
            d.join("filter.d/bench.conf"),
            "[Definition]\nfailregex = ^never-matches <HOST>$\n",
        )
        .unwrap();
        std::fs::write(
            d.join("fail2ban.conf"),
            format!(
                "[Definition]\nloglevel = NOTICE\nlogtarget = {0}/fail2ban.log\nsyslogsocket = auto\nsocket = {0}/f2b.sock\npidfile = {0}/f2b.pid\ndbfile = :memory:\ndbpurgeage = 1d\nallowipv6 = auto\n",
                d.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("jail.conf"),
            format!(
                "[INCLUDES]\nbefore = paths-debian.conf\n[DEFAULT]\nbantime = 3600\n[bench]\nenabled = true\nfilter = bench\nlogpath = {}/empty.log\nbackend = polling\naction = nftables-allports[name=bench]\n",
                d.display()
            ),
        )
        .unwrap();
        let started = Command::new("ip")
            .args(["netns", "exec", &ns.0, "fail2ban-server", "-c"])
            .arg(d)
            .arg("-b")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(started.unwrap().success(), "fail2ban-server");
        let f2b = Fail2ban { dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f2b.client(&["ping"]).contains("pong") {
            assert!(Instant::now() < deadline, "fail2ban-server did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        f2b
    }

    fn client(&self, args: &[&str]) -> String {
        let out = Command::new("fail2ban-client")
            .arg("-c")
            .arg(self.dir.path())
            .args(args)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Addresses in the jail's nft set now.
    fn enforced(ns: &Netns) -> usize {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "nft",
                "-j",
                "list",
                "set",
                "inet",
                "f2b-table",
                "addr-set-bench",
            ])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|item| item["set"]["elem"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    fn wait_enforced(ns: &Netns, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(900);
        while Fail2ban::enforced(ns) < want {
            assert!(
                Instant::now() < deadline,
                "fail2ban enforced only {}",
                Fail2ban::enforced(ns)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One client call per address, `CLIENTS` at a time.
    fn ban_one_by_one(&self, ns: &Netns, round: usize) -> Duration {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for c in 0..CLIENTS {
                scope.spawn(move || {
                    for i in (c..ADDRESSES).step_by(CLIENTS) {
                        let out = self.client(&["set", "bench", "banip", &addr(round, i)]);
                        assert_eq!(out.trim(), "1", "banip {}", addr(round, i));
                    }
                });
            }
        });
        Fail2ban::wait_enforced(ns, ADDRESSES);
        start.elapsed()
    }

    /// One client call naming every address.
    fn ban_in_one_call(&self, ns: &Netns, round: usize) -> Duration {
        let addresses: Vec<String> = (0..ADDRESSES).map(|i| addr(round, i)).collect();
        let start = Instant::now();
        let mut args = vec!["set", "bench", "banip"];
        args.extend(addresses.iter().map(String::as_str));
        self.client(&args);
        Fail2ban::wait_enforced(ns, ADDRESSES);
        start.elapsed()
    }

    fn unban_all(&self, ns: &Netns) {
        self.client(&["unban", "--all"]);
        let deadline = Instant::now() + Duration::from_secs(300);
        while Fail2ban::enforced(ns) > 0 {
            assert!(Instant::now() < deadline, "fail2ban did not unban");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        self.client(&["stop"]);
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    support::require_root();
    ensure_fail2ban();
    let ns = Netns::add("abf2b");

    let bus = PrivateBus::start();
    let home = bench_home();
    std::fs::create_dir_all(home.path().join("playbooks")).unwrap();
    std::fs::write(home.path().join("playbooks/10-bench.toml"), PLAYBOOK).unwrap();
    let config = write_config(home.path(), "[queue]\nmax = 20000\nmax_concurrent = 256\n");
    let wrapper = ["ip", "netns", "exec", ns.0.as_str()];
    let agent = Agent::start_wrapped(&bus, home.path(), &config, &[], &wrapper);
    let conn = bus.connect().await;
    let proxy = antibody::dbus::proxy::client(&conn).await.unwrap();
    let f2b = Fail2ban::start(&ns);

    // Alternating, each on addresses of its own: Antibody, fail2ban one
    // call per address, fail2ban one call for all, and Antibody again.
    let antibody_first = antibody_round(&bus, &proxy, 0).await;
    let f2b_each = f2b.ban_one_by_one(&ns, 1);
    f2b.unban_all(&ns);
    let f2b_all = f2b.ban_in_one_call(&ns, 2);
    let antibody_second = antibody_round(&bus, &proxy, 3).await;
    drop(f2b);
    drop(agent);

    let antibody = antibody_first.max(antibody_second);
    println!("| {ADDRESSES} addresses banned, first request → all enforced | time | fail2ban ÷ Antibody (slower Antibody round) | target |");
    println!("|---|---|---|---|");
    println!(
        "| Antibody: {ADDRESSES} bare NEXUS alerts through a playbook, {CLIENTS} D-Bus clients | {:.2} s and {:.2} s (two rounds) | | |",
        secs(antibody_first),
        secs(antibody_second)
    );
    println!(
        "| fail2ban 1.0.2: one `fail2ban-client set bench banip ADDR` per address, {CLIENTS} at a time | {:.2} s | {:.1}× | ≥ 10× |",
        secs(f2b_each),
        secs(f2b_each) / secs(antibody)
    );
    println!(
        "| fail2ban 1.0.2: one `fail2ban-client set bench banip` naming all {ADDRESSES} | {:.2} s | {:.1}× | |",
        secs(f2b_all),
        secs(f2b_all) / secs(antibody)
    );
}
