//! T4: the crash loop. A seeded stream of plans mixing every action type
//! (restarts, unit and address throttles, isolations of addresses, ports and
//! peers, hot patches, notices, and restarts that fail so plans roll back)
//! runs in a booted Debian 12 (its own network namespace) while the agent is
//! SIGKILLed at random points and started again by systemd, at least 50
//! times. At the end the system must be what the ledger says:
//!
//! - every plan accepted is final in the ledger;
//! - every applied reversible action was reverted exactly once, or is in
//!   force with its own time left;
//! - the nft table holds exactly the elements in force, each with the time
//!   its longest claim has left; the units' limits are those of the
//!   throttle in force, or the originals;
//! - every patched file is its old or its new content, never torn, and no
//!   temporary file is left beside it;
//! - `VerifyLedger` is ok.
//!
//! `ANTIBODY_CRASH_KILLS` (default 50) sets the number of kills,
//! `ANTIBODY_CRASH_SEED` replays a run's stream of plans and kill delays
//! (the seed is printed first). The kill points themselves depend on timing.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use antibody::time::{now_ms, parse_rfc3339};
use support::testbed::Testbed;
use support::{ledger_records_in, record_figures};

/// The stream's generator. Not the `rand` crate: a run must replay from its
/// seed in any later build, and `rand` does not promise its generators'
/// sequences across versions. SplitMix64 is ten lines and fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const UNITS: [&str; 3] = ["crash-a.service", "crash-b.service", "crash-c.service"];
const ADDRESSES: [&str; 4] = [
    "198.51.100.1",
    "198.51.100.2",
    "198.51.100.3",
    "198.51.100.4",
];
const PORTS: [&str; 4] = ["tcp:8081", "tcp:8082", "udp:5301", "udp:5302"];
const PEERS: [&str; 3] = ["198.51.100.1:443", "198.51.100.2:8443", "198.51.100.3:443"];
const THROTTLED: [&str; 3] = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];
/// Rates on the nft rate ladder, so the element's set is `thr4_<rate>`.
const RATES: [u64; 3] = [10, 100, 1000];
const CPU_PERCENT: [u64; 3] = [10, 20, 50];
const MEMORY_HIGH: [&str; 2] = ["128M", "256M"];

const PATCH_DIR: &str = "/srv/crash";
const FILES: [&str; 2] = ["a.conf", "b.conf"];
const OLD: &str = "mode = calm\nlimit = 10\nowner = ops\n";
const NEW: &str = "mode = alert\nlimit = 10\nowner = ops\n";
const TO_NEW: &str =
    "--- a\n+++ b\n@@ -1,3 +1,3 @@\n-mode = calm\n+mode = alert\n limit = 10\n owner = ops\n";
const TO_OLD: &str =
    "--- a\n+++ b\n@@ -1,3 +1,3 @@\n-mode = alert\n+mode = calm\n limit = 10\n owner = ops\n";

/// Most timed mitigations end during the run (their reverts race the
/// kills); one in ten is long and must still be in force at the end.
fn seconds(rng: &mut SplitMix64) -> u64 {
    if rng.chance(10) {
        3600
    } else {
        2 + rng.below(8)
    }
}

fn random_action(rng: &mut SplitMix64) -> Value {
    match rng.below(9) {
        0 => json!({"type": "restart_service", "name": rng.pick(&UNITS)}),
        // A restart that fails for good: the plan rolls back what it applied.
        1 => json!({"type": "restart_service", "name": "failing.service"}),
        2 => {
            let memory = rng.pick(&MEMORY_HIGH);
            json!({"type": "throttle_entity", "entity": rng.pick(&UNITS), "seconds": seconds(rng),
                   "cpu_percent": rng.pick(&CPU_PERCENT), "memory_high": memory})
        }
        3 => json!({"type": "throttle_entity", "entity": format!("ip:{}", rng.pick(&THROTTLED)),
                    "seconds": seconds(rng), "rate_per_sec": rng.pick(&RATES)}),
        4 => {
            json!({"type": "isolate_socket", "sid": rng.pick(&ADDRESSES), "seconds": seconds(rng)})
        }
        5 => json!({"type": "isolate_socket", "sid": rng.pick(&PORTS), "seconds": seconds(rng)}),
        6 => json!({"type": "isolate_socket", "sid": rng.pick(&PEERS), "seconds": seconds(rng)}),
        7 => {
            // Either direction: the one that does not match the file's
            // content fails its plan, which rolls back.
            let diff = if rng.chance(50) { TO_NEW } else { TO_OLD };
            json!({"type": "hot_patch", "file": format!("{PATCH_DIR}/{}", rng.pick(&FILES)), "diff": diff})
        }
        _ => {
            json!({"type": "notify_operator", "channel": "journal", "message": "crash loop notice"})
        }
    }
}

fn random_alert(rng: &mut SplitMix64, n: usize) -> Value {
    let count = 1 + rng.below(3) as usize;
    let actions: Vec<Value> = (0..count).map(|_| random_action(rng)).collect();
    json!({"source": "Watchdog", "severity": "high",
           "description": format!("crash loop plan {n}"), "actions": actions})
}

const CONFIG: &str = r#"# The crash loop's agent: quick retries, restarts not flap-limited (the
# loop restarts the same units many times on purpose), hot patches in /srv/crash.
[retry]
base_ms = 50
factor = 2
max_attempts = 3

[restart]
burst = 100000
interval_secs = 1

[nft]
reconcile_interval_secs = 2

[hot_patch]
allowed_paths = ["/srv/crash"]

# Finished plans past the newest 25 leave memory for the archive, whose
# appends a kill may cut off (made durable only before a checkpoint): the
# loop's GetPlan of every plan at the end reads them back.
[state]
keep_finished_plans = 25
"#;

/// Units the loop restarts and throttles, a start limit the loop may trip
/// (systemd's default, 5 starts in 10 s, exists to stop a crash loop: this
/// one is on purpose), the patched files (writable to the agent as the
/// README tells operators: `ReadWritePaths=`), and the config.
fn prepare(tb: &Testbed) {
    let root = tb.root();
    for unit in UNITS {
        std::fs::write(
            root.join("etc/systemd/system").join(unit),
            "[Service]\nType=simple\nExecStart=/bin/sleep infinity\n",
        )
        .unwrap();
    }
    let dropin = root.join("etc/systemd/system/antibody.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("crash-loop.conf"),
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nReadWritePaths=/srv/crash\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("srv/crash")).unwrap();
    for file in FILES {
        std::fs::write(root.join("srv/crash").join(file), OLD).unwrap();
    }
    std::fs::write(root.join("etc/antibody/antibody.toml"), CONFIG).unwrap();
    tb.sh(&format!(
        "ip link set lo up && systemctl daemon-reload && systemctl start {} && systemctl restart antibody.service",
        UNITS.join(" ")
    ));
    tb.wait_active("antibody.service");
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

/// The ledger as the agent wrote it, read from the machine's disk.
fn ledger_records(tb: &Testbed) -> Vec<Value> {
    ledger_records_in(&tb.root().join("var/log/antibody"))
}

/// Milliseconds since the epoch of an RFC 3339 time the agent wrote.
fn parse_ms(rfc3339: &str) -> u64 {
    parse_rfc3339(rfc3339).unwrap_or_else(|| panic!("not RFC 3339: {rfc3339}"))
}

/// An nft element as a comparable key: `addr:A`, `port:tcp:P`,
/// `peer:A:P`, `thr:A:RATE`.
fn nft_key(set: &str, value: &Value) -> Option<String> {
    let proto = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.as_u64() == Some(6) => "tcp".into(),
        Value::Number(n) if n.as_u64() == Some(17) => "udp".into(),
        other => panic!("protocol {other}"),
    };
    let concat = || value["concat"].as_array().unwrap().clone();
    match set {
        "addr4" => Some(format!("addr:{}", value.as_str()?)),
        "ports" => {
            let c = concat();
            Some(format!("port:{}:{}", proto(&c[0]), c[1]))
        }
        "peer4" => {
            let c = concat();
            Some(format!("peer:{}:{}", c[0].as_str()?, c[1]))
        }
        s if s.starts_with("thr4_") => Some(format!("thr:{}:{}", value.as_str()?, &s[5..])),
        _ => None,
    }
}

/// The elements in the agent's table: key → milliseconds until it
/// expires (nft counts whole seconds).
fn nft_elements(tb: &Testbed) -> BTreeMap<String, u64> {
    let listing: Value =
        serde_json::from_str(&tb.sh("nft -j list table inet antibody")).expect("nft JSON");
    let mut found = BTreeMap::new();
    for item in listing["nftables"].as_array().unwrap() {
        let Some(set) = item.get("set") else { continue };
        let name = set["name"].as_str().unwrap();
        for elem in set["elem"].as_array().into_iter().flatten() {
            let (value, expires) = match elem.get("elem") {
                Some(e) => (e["val"].clone(), e["expires"].as_u64().unwrap_or(0) * 1000),
                None => (elem.clone(), 0),
            };
            if let Some(key) = nft_key(name, &value) {
                found.insert(key, expires);
            }
        }
    }
    found
}

/// The nft key an action's mitigation has, if it is one.
fn action_key(action: &Value) -> Option<String> {
    let params = &action["params"];
    match action["type"].as_str().unwrap() {
        "isolate_socket" => {
            let sid = params["sid"].as_str().unwrap();
            Some(if let Some(port) = sid.strip_prefix("tcp:") {
                format!("port:tcp:{port}")
            } else if let Some(port) = sid.strip_prefix("udp:") {
                format!("port:udp:{port}")
            } else if sid.contains(':') {
                format!("peer:{sid}")
            } else {
                format!("addr:{sid}")
            })
        }
        "throttle_entity" => {
            let entity = params["entity"].as_str().unwrap();
            entity
                .strip_prefix("ip:")
                .map(|addr| format!("thr:{addr}:{}", params["rate_per_sec"]))
        }
        _ => None,
    }
}

/// The limits a unit throttle sets, as `systemctl show` prints them.
fn unit_limits(action: &Value) -> [String; 3] {
    let params = &action["params"];
    let cpu = params["cpu_percent"].as_u64().unwrap();
    let memory = params["memory_high"].as_u64().unwrap();
    [
        format!("{}ms", cpu * 10),
        memory.to_string(),
        "10".to_string(),
    ]
}

fn unit_now(tb: &Testbed, unit: &str) -> [String; 3] {
    ["CPUQuotaPerSecUSec", "MemoryHigh", "IOWeight"].map(|p| tb.show(unit, p))
}

#[derive(Default)]
struct Submissions {
    accepted: Vec<String>,
    refused: BTreeMap<String, usize>,
}

fn refusal_class(error: &str) -> String {
    error
        .split(':')
        .take(2)
        .collect::<Vec<_>>()
        .join(":")
        .chars()
        .take(80)
        .collect()
}

#[test]
fn plans_of_every_action_survive_sigkills_at_random_points() {
    let kills_wanted = env_number("ANTIBODY_CRASH_KILLS").unwrap_or(50);
    let seed = env_number("ANTIBODY_CRASH_SEED").unwrap_or_else(|| now_ms() ^ 0x5EED);
    println!(
        "crash loop: seed {seed} (ANTIBODY_CRASH_SEED={seed} replays it), {kills_wanted} kills"
    );
    let tb = Testbed::boot("crash-loop");
    prepare(&tb);

    let submissions = Mutex::new(Submissions::default());
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut kills = 0;
    std::thread::scope(|scope| {
        // The callers: a plan at a time, with short random pauses, while
        // the agent is up or down; each either accepted (an id) or refused.
        scope.spawn(|| {
            let mut rng = SplitMix64(seed);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let alert = random_alert(&mut rng, n);
                let answer = tb.submit(&alert);
                let mut s = submissions.lock().unwrap();
                match answer {
                    Ok(id) => s.accepted.push(id),
                    Err(e) => *s.refused.entry(refusal_class(&e)).or_default() += 1,
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(rng.below(120)));
            }
        });
        let mut rng = SplitMix64(seed.rotate_left(32));
        while kills < kills_wanted {
            std::thread::sleep(Duration::from_millis(100 + rng.below(1400)));
            let pid = tb.show("antibody.service", "MainPID");
            // --kill-who=main: the cgroup v1 hierarchy the container sees
            // can refuse to signal the whole cgroup.
            tb.sh("systemctl kill --kill-who=main -s SIGKILL antibody.service");
            kills += 1;
            tb.wait_for_new_agent(&format!("the agent after kill {kills}"), &pid);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let loop_secs = started.elapsed().as_secs();
    let submissions = submissions.into_inner().unwrap();
    assert!(
        submissions.accepted.len() >= kills_wanted as usize,
        "only {} plans accepted in {kills} kills; refused: {:?}",
        submissions.accepted.len(),
        submissions.refused
    );

    // Every plan accepted ends.
    // Every plan in the ledger ends: those accepted, and those whose answer
    // a kill cut off (durable before the answer, so they run too).
    let created_ids = |records: &[Value]| -> BTreeSet<String> {
        records
            .iter()
            .filter(|r| r["kind"] == "plan_created")
            .map(|r| r["plan_id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut plans: HashMap<String, Value> = HashMap::new();
    for id in created_ids(&ledger_records(&tb)) {
        let plan = tb.finished_plan(&id);
        plans.insert(id, plan);
    }
    // Let every short mitigation run out and be reverted, and a reconcile
    // round pass after the last.
    let last_short_end = plans
        .values()
        .flat_map(|p| p["actions"].as_array().unwrap().clone())
        .filter_map(|a| a["revert_at"].as_str().map(parse_ms))
        .filter(|end| *end < now_ms() + 600_000)
        .max()
        .unwrap_or(0);
    let wait_ms = last_short_end.saturating_sub(now_ms()) + 6_000;
    std::thread::sleep(Duration::from_millis(wait_ms));
    for (id, plan) in plans.iter_mut() {
        *plan = tb.plan(id);
    }

    let records = ledger_records(&tb);
    let created = created_ids(&records);
    assert_eq!(
        created.len(),
        plans.len(),
        "plans were created after the loop ended"
    );
    let finished: BTreeSet<String> = records
        .iter()
        .filter(|r| r["kind"] == "plan_finished")
        .map(|r| r["plan_id"].as_str().unwrap().to_string())
        .collect();
    for id in &submissions.accepted {
        assert!(
            created.contains(id),
            "accepted plan {id} is not in the ledger"
        );
    }
    let unfinished: Vec<_> = created.difference(&finished).collect();
    assert!(
        unfinished.is_empty(),
        "plans not final in the ledger: {unfinished:?}"
    );
    let mut reverts: HashMap<(String, u64), usize> = HashMap::new();
    for r in records.iter().filter(|r| r["kind"] == "action_reverted") {
        *reverts
            .entry((
                r["plan_id"].as_str().unwrap().to_string(),
                r["payload"]["index"].as_u64().unwrap(),
            ))
            .or_default() += 1;
    }
    let count_kind = |kind: &str| records.iter().filter(|r| r["kind"] == kind).count();

    // Each applied reversible action: reverted once, or in force with its
    // own time left; what is in force is what the table and units hold.
    let now = now_ms();
    let mut in_force_nft: BTreeMap<String, u64> = BTreeMap::new();
    let mut in_force_units: BTreeMap<&str, (u64, [String; 3])> = BTreeMap::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for (id, plan) in &plans {
        *statuses
            .entry(plan["status"].as_str().unwrap().to_string())
            .or_default() += 1;
        for (index, action) in plan["actions"].as_array().unwrap().iter().enumerate() {
            let state = action["state"].as_str().unwrap();
            let kind = action["type"].as_str().unwrap();
            *states.entry(format!("{kind} {state}")).or_default() += 1;
            if state == "failed" {
                let target = action["targets"][0].as_str().unwrap_or_default();
                // Job numbers and hashes differ in each: counted as one.
                let error: String = action["error"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .take(70)
                    .collect();
                *failures
                    .entry(format!("{kind} {target}: {error}"))
                    .or_default() += 1;
            }
            let reverted = reverts
                .get(&(id.clone(), index as u64))
                .copied()
                .unwrap_or(0);
            match state {
                "reverted" => assert_eq!(
                    reverted, 1,
                    "plan {id} action {index} reverted {reverted} times: {plan}"
                ),
                _ => assert_eq!(
                    reverted, 0,
                    "plan {id} action {index} is {state} yet reverted {reverted} times: {plan}"
                ),
            }
            if state != "applied" || action["reversible"] != true {
                continue;
            }
            // A patch has no time of its own: reversible by a rollback only.
            let Some(end) = action["revert_at"].as_str().map(parse_ms) else {
                assert_eq!(
                    kind, "hot_patch",
                    "plan {id} action {index} has no end: {plan}"
                );
                continue;
            };
            assert!(
                end > now,
                "plan {id} action {index} ended {} ms ago and is not reverted: {plan}",
                now - end
            );
            if let Some(key) = action_key(action) {
                let left = in_force_nft.entry(key).or_default();
                *left = (*left).max(end - now);
            } else if kind == "throttle_entity" {
                let applied = parse_ms(action["finished_at"].as_str().unwrap());
                let entity = action["params"]["entity"].as_str().unwrap();
                let unit = entity.strip_prefix("unit:").unwrap_or(entity);
                let latest = in_force_units
                    .entry(unit)
                    .or_insert((applied, unit_limits(action)));
                if applied >= latest.0 {
                    *latest = (applied, unit_limits(action));
                }
            }
        }
    }

    let in_table = nft_elements(&tb);
    let table_keys: BTreeSet<&String> = in_table.keys().collect();
    let ledger_keys: BTreeSet<&String> = in_force_nft.keys().collect();
    if table_keys != ledger_keys {
        // Every action on the keys that differ, to tell why.
        let differ: BTreeSet<&String> = table_keys
            .symmetric_difference(&ledger_keys)
            .copied()
            .collect();
        let mut story = String::new();
        for (id, plan) in &plans {
            for (index, action) in plan["actions"].as_array().unwrap().iter().enumerate() {
                if let Some(key) = action_key(action).filter(|k| differ.contains(k)) {
                    story += &format!(
                        "\n  {id} #{index} {key} {} revert_at {} log {}",
                        action["state"], action["revert_at"], plan["log"]
                    );
                }
            }
        }
        panic!("the nft table holds {table_keys:?}\nthe ledger has in force {ledger_keys:?}\nactions on the keys that differ:{story}");
    }
    for (key, left_ms) in &in_force_nft {
        let expires = in_table[key];
        let left = *left_ms as i64;
        assert!(
            (expires as i64 - left).abs() < 15_000,
            "{key}: expires in {expires} ms, the ledger says {left} ms"
        );
    }
    let untouched = [
        "infinity".to_string(),
        "infinity".into(),
        "[not set]".into(),
    ];
    for unit in UNITS {
        let want = in_force_units
            .get(unit)
            .map(|(_, limits)| limits.clone())
            .unwrap_or_else(|| untouched.clone());
        assert_eq!(unit_now(&tb, unit), want, "{unit}'s limits");
    }

    // Patched files: old or new, never torn, nothing left beside them.
    let patch_dir = tb.root().join("srv/crash");
    let mut contents = BTreeMap::new();
    for entry in std::fs::read_dir(&patch_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            FILES.contains(&name.as_str()),
            "left in {PATCH_DIR}: {name}"
        );
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(text == OLD || text == NEW, "{name} is torn:\n{text}");
        contents.insert(name, if text == OLD { "old" } else { "new" });
    }

    let verify = tb.sh("antibodyctl verify");
    assert_eq!(count_kind("unit_drift"), 0, "unit drift recorded");

    let figures = [
        format!(
            "crash loop: seed {seed}: {kills} kills in {loop_secs} s; plans accepted {}, refused {:?}",
            submissions.accepted.len(),
            submissions.refused
        ),
        format!(
            "  plans: {statuses:?}; in the ledger: {} plans, {} records",
            created.len(),
            records.len()
        ),
        format!("  actions: {states:?}"),
        format!("  failed actions: {failures:?}"),
        format!(
            "  recoveries after a kill: {}; reverts: {}; starts: {}; nft drift rounds: {}",
            count_kind("action_recovered"),
            count_kind("action_reverted"),
            count_kind("agent_started"),
            count_kind("nft_drift")
        ),
        // What a reconcile found missing from the table and put back, if
        // anything: the kernel's timeouts and the ledger's ends should
        // agree, so each is worth a look.
        format!(
            "  nft drift: {:?}",
            records
                .iter()
                .filter(|r| r["kind"] == "nft_drift")
                .map(|r| r["payload"]["detail"].to_string())
                .collect::<Vec<_>>()
        ),
        format!(
            "  in force at the end: {} nft elements, {} throttled units; files {contents:?}",
            in_force_nft.len(),
            in_force_units.len()
        ),
        format!("  {}", verify.trim().replace('\n', "\n  ")),
    ];
    record_figures("crash_loop", &figures.join("\n"));
}
