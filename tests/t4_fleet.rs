//! T4: the fleet (README.md, "Fleet"). A collector and three hosts, each a
//! booted Debian 12 (systemd-nspawn) on one private network the test makes
//! (an nspawn zone: a bridge only these machines are on), the agent running
//! on each host; the README's Fleet blocks run as written: certificates,
//! `systemd-journal-remote` over HTTPS on the collector,
//! `systemd-journal-upload` on the hosts. Then `antibodyctl verify
//! --journal` and `antibodyctl fleet` on the collector, the upload's lag,
//! the collector away for 10 s, and copies of the central journal with a
//! record removed or edited. Needs root; fails (never skips) without it.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::testbed::Testbed;
use support::ROOT;

const NET: &str = "10.213.0";
const REMOTE: &str = "/var/log/journal/remote";
const EXAMPLES: &str = "/usr/share/doc/antibody/examples/fleet";

/// The ```sh blocks of README.md's "## Fleet" section, in order:
/// certificates, collector, host, checks.
fn readme_fleet_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = readme
        .split("\n## Fleet\n")
        .nth(1)
        .expect("README.md has a \"## Fleet\" section");
    let section = section.split("\n## ").next().unwrap();
    let blocks: Vec<String> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect();
    assert_eq!(blocks.len(), 4, "certificates, collector, host, checks");
    blocks
}

fn host_sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Puts the machine at `NET.last` on the zone, named `name`, with the
/// fleet's example files where the package puts them, and `collector`
/// resolving to the collector.
fn join(tb: &Testbed, last: u8, name: &str) {
    tb.sh(&format!(
        "ip addr add {NET}.{last}/24 dev host0 && ip link set host0 up && \
         hostname {name} && echo {name} > /etc/hostname && \
         echo '{NET}.10 collector' >> /etc/hosts && mkdir -p {EXAMPLES} /var/tmp/fleet"
    ));
    let examples = tb.root().join(&EXAMPLES[1..]);
    for entry in std::fs::read_dir(Path::new(ROOT).join("packaging/examples/fleet")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), examples.join(entry.file_name())).unwrap();
    }
}

fn give(tb: &Testbed, certs: &Path, files: &[&str]) {
    let dir = tb.root().join("var/tmp/fleet");
    for file in files {
        std::fs::copy(certs.join(file), dir.join(file)).unwrap();
    }
}

fn notice(description: &str) -> Value {
    json!({"source": "Watchdog", "severity": "med", "description": description,
           "actions": [{"type": "notify_operator", "channel": "journal", "message": description}]})
}

/// The collector's `verify --journal --json`, whatever its exit status.
fn verify(collector: &Testbed, dir: &str) -> Value {
    let (_, out, err) = collector.try_sh(&format!("antibodyctl --json verify --journal {dir}"));
    serde_json::from_str(&out).unwrap_or_else(|_| json!({"ok": false, "error": err}))
}

/// The newest seq a host's agent has written.
fn tip(host: &Testbed) -> u64 {
    let status: Value = serde_json::from_str(&host.sh("antibodyctl --json status")).unwrap();
    status["ledger"]["records"].as_u64().unwrap()
}

/// Waits until the collector's copy holds every host's records up to
/// their tips now, all chains whole.
fn wait_caught_up(collector: &Testbed, hosts: &[(Testbed, String)]) {
    let tips: Vec<(String, u64)> = hosts
        .iter()
        .map(|(tb, name)| (name.clone(), tip(tb)))
        .collect();
    let caught_up = |report: &Value| {
        let reported = report["hosts"].as_array().cloned().unwrap_or_default();
        tips.iter().all(|(name, tip)| {
            reported.iter().any(|h| {
                h["hostname"] == name.as_str()
                    && h["ok"] == true
                    && h["last_seq"].as_u64() >= Some(*tip)
            })
        })
    };
    let start = Instant::now();
    let mut report = Value::Null;
    while start.elapsed() < Duration::from_secs(90) {
        report = verify(collector, REMOTE);
        if caught_up(&report) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let files = collector
        .try_sh(&format!(
            "ls -la {REMOTE}; journalctl -u systemd-journal-remote --no-pager -o cat | tail -n 20"
        ))
        .1;
    let uploads: Vec<String> = hosts
        .iter()
        .map(|(tb, name)| {
            format!(
                "{name}: {}",
                tb.try_sh("journalctl -u systemd-journal-upload --no-pager -o cat | tail -n 8")
                    .1
            )
        })
        .collect();
    panic!("the collector did not catch up with {tips:?} in 90 s; its last report:\n{report:#}\n{files}\n{}", uploads.join("\n"));
}

/// The collector's journal entries for ledger records, in export format,
/// one string per entry (text only: every field of these is text).
fn exported_records(collector: &Testbed) -> Vec<String> {
    let matches: Vec<String> = antibody::sys::journal::MESSAGE_IDS
        .iter()
        .filter(|(kind, _)| *kind != "operator_notice")
        .map(|(_, id)| format!("MESSAGE_ID={id}"))
        .collect();
    let text = collector.sh(&format!(
        "journalctl -D {REMOTE} -o export {}",
        matches.join(" ")
    ));
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| format!("{e}\n\n"))
        .collect()
}

/// A copy of the central journal made of `entries` (export, filter,
/// re-import with systemd-journal-remote), in `dir` on the collector.
fn reimport(collector: &Testbed, entries: &[String], dir: &str) {
    let root = collector.root();
    std::fs::write(root.join("var/tmp/copy.export"), entries.concat()).unwrap();
    collector.sh(&format!(
        "rm -rf {dir} && mkdir -p {dir} && \
         /lib/systemd/systemd-journal-remote --split-mode=none --output={dir}/copy.journal - < /var/tmp/copy.export"
    ));
}

#[test]
fn three_hosts_upload_to_a_collector_that_verifies_and_summarizes_every_chain() {
    let zone = format!("abf{}", std::process::id() % 100_000);
    let collector = Testbed::boot_with("fleet-collector", Some(&zone), false);
    let hosts: Vec<(Testbed, String)> = (1..=3)
        .map(|n| {
            let tb = Testbed::boot_with(&format!("fleet-host{n}"), Some(&zone), true);
            (tb, format!("host{n}"))
        })
        .collect();
    // nspawn makes the zone's bridge and leaves it down (systemd-networkd,
    // which would bring it up, does not run on the test host).
    host_sh("ip", &["link", "set", &format!("vz-{zone}"), "up"]);
    join(&collector, 10, "collector");
    for (n, (tb, name)) in hosts.iter().enumerate() {
        join(tb, 11 + n as u8, name);
    }
    std::fs::copy(
        env!("CARGO_BIN_EXE_antibodyctl"),
        collector.root().join("usr/bin/antibodyctl"),
    )
    .unwrap();

    // README: certificates (on this machine, the repository's copy of the
    // script), then the collector's block and each host's, as written.
    let blocks = readme_fleet_blocks();
    let certs = tempfile::tempdir().unwrap();
    let make = blocks[0].replace(EXAMPLES, &format!("{ROOT}/packaging/examples/fleet"));
    host_sh(
        "sh",
        &[
            "-c",
            &format!("cd {} && set -e; {make}", certs.path().display()),
        ],
    );
    give(
        &collector,
        certs.path(),
        &["ca.pem", "collector.key", "collector.pem"],
    );
    collector.sh(&format!("cd /var/tmp/fleet && set -e\n{}", blocks[1]));
    for (tb, name) in &hosts {
        give(
            tb,
            certs.path(),
            &["ca.pem", &format!("{name}.key"), &format!("{name}.pem")],
        );
        tb.sh(&format!("cd /var/tmp/fleet && set -e\n{}", blocks[2]));
    }

    // Plans on every host; host 3 isolates an address for ten minutes.
    for (tb, name) in &hosts {
        for n in 0..5 {
            let id = tb.submit(&notice(&format!("{name} notice {n}"))).unwrap();
            tb.finished_plan(&id);
        }
    }
    let isolation = json!({"source": "NEXUS", "severity": "high", "description": "scanner",
                           "actions": [{"type": "isolate_socket", "sid": "10.9.9.9", "seconds": 600}]});
    let isolated = hosts[2].0.submit(&isolation).unwrap();
    assert_eq!(hosts[2].0.finished_plan(&isolated)["status"], "success");
    wait_caught_up(&collector, &hosts);

    // README: the checks on the collector, as written (PLAN_ID: one of host 2's).
    let plan_id = hosts[1]
        .0
        .submit(&notice("host2 the plan the README looks up"))
        .unwrap();
    hosts[1].0.finished_plan(&plan_id);
    wait_caught_up(&collector, &hosts);
    let checks: Vec<String> = blocks[3]
        .lines()
        .map(|l| l.replace("=PLAN_ID", &format!("={plan_id}")))
        .collect();
    let verified = collector.sh(&checks[0]);
    for (_, name) in &hosts {
        let line = verified
            .lines()
            .find(|l| l.starts_with(&format!("{name} (")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{verified}"));
        assert!(line.contains(": chain whole; "), "{line}");
    }
    let fleet = collector.sh(&checks[1]);
    let host3 = fleet.lines().find(|l| l.starts_with("host3 (")).unwrap();
    assert!(
        host3.contains("1 in force (isolate_socket addr:10.9.9.9 until "),
        "{fleet}"
    );
    assert!(fleet
        .lines()
        .find(|l| l.starts_with("host1 ("))
        .unwrap()
        .contains("nothing in force"));
    let found = collector.sh(&checks[2]);
    assert!(
        found.contains(&format!("plan_created plan {plan_id}")),
        "{found}"
    );
    assert!(
        found.contains(&format!("plan_finished plan {plan_id}")),
        "{found}"
    );

    // The upload's lag: from SubmitAlert on host 2 to the plan_created
    // entry on the collector, p50 over 50 plans.
    let mut lags = Vec::new();
    for n in 0..50 {
        let start = Instant::now();
        let id = hosts[1]
            .0
            .submit(&notice(&format!("host2 lag {n}")))
            .unwrap();
        let query = format!(
            "journalctl -D {REMOTE} ANTIBODY_PLAN_ID={id} ANTIBODY_KIND=plan_created -o cat"
        );
        collector.wait_until("the plan on the collector", Duration::from_secs(30), || {
            !collector.sh(&query).trim().is_empty()
        });
        lags.push(start.elapsed());
    }
    lags.sort();
    println!(
        "upload lag, SubmitAlert on host2 to its plan_created on the collector, 50 plans: p50 {:?}, max {:?}",
        lags[25], lags[49]
    );

    // The collector away for 10 s while host 1 goes on: nothing is lost.
    collector.sh("systemctl stop systemd-journal-remote.socket systemd-journal-remote.service");
    let away = Instant::now();
    for n in 0..10 {
        let id = hosts[0]
            .0
            .submit(&notice(&format!("host1 while the collector is away {n}")))
            .unwrap();
        hosts[0].0.finished_plan(&id);
    }
    std::thread::sleep(Duration::from_secs(10).saturating_sub(away.elapsed()));
    collector.sh("systemctl start systemd-journal-remote.socket");
    wait_caught_up(&collector, &hosts);

    // README: each host's own `antibodyctl verify` ends with its tip, the
    // collector's copy's last record for that host.
    let report = verify(&collector, REMOTE);
    for (tb, name) in &hosts {
        let copy = report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["hostname"] == name.as_str())
            .unwrap();
        let tip = format!(
            "tip seq {} hash {}",
            copy["last_seq"],
            copy["last_hash"].as_str().unwrap()
        );
        let own = tb.sh("antibodyctl verify");
        assert!(own.contains(&tip), "{name}: {own} / the copy's {tip}");
    }

    // Copies of the central journal: one with a record of host 2 removed,
    // one with a record of host 1 edited.
    let entries = exported_records(&collector);
    let is = |entry: &str, host: &str, seq: u64| {
        entry.contains(&format!("\n_HOSTNAME={host}\n"))
            && entry.contains(&format!("\nANTIBODY_SEQ={seq}\n"))
    };
    let holed: Vec<String> = entries
        .iter()
        .filter(|e| !is(e, "host2", 5))
        .cloned()
        .collect();
    assert_eq!(holed.len(), entries.len() - 1, "one entry removed");
    reimport(&collector, &holed, "/var/tmp/holed");
    let report = verify(&collector, "/var/tmp/holed");
    assert_eq!(report["ok"], false, "{report}");
    let host2 = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hostname"] == "host2")
        .unwrap();
    assert_eq!(host2["holes"], json!([{"from": 5, "to": 5}]), "{host2}");
    let (_, text, _) = collector.try_sh("antibodyctl verify --journal /var/tmp/holed");
    assert!(text.contains("HOLE at seq 5"), "{text}");

    let edited: Vec<String> = entries
        .iter()
        .map(|e| match is(e, "host1", 7) {
            true => e.replacen(
                "ANTIBODY_RECORD={\"seq\":7,\"ts\":\"2",
                "ANTIBODY_RECORD={\"seq\":7,\"ts\":\"1",
                1,
            ),
            false => e.clone(),
        })
        .collect();
    assert_ne!(edited, entries, "the edit took");
    reimport(&collector, &edited, "/var/tmp/edited");
    let report = verify(&collector, "/var/tmp/edited");
    let host1 = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hostname"] == "host1")
        .unwrap();
    assert_eq!(host1["first_bad"]["seq"], 7, "{host1}");
    let (code_ok, text, _) = collector.try_sh("antibodyctl verify --journal /var/tmp/edited");
    assert!(
        !code_ok && text.contains("first BAD record at seq 7"),
        "{text}"
    );
}
