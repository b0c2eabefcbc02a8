//! `antibodyctl` against the real agent on a private system bus: flags and
//! stdin/file input, `--wait`, human and `--json` output, and the exit codes
//! of its `--help` (0 ok, 1 named refusal, 2 usage, 3 unreachable, 4 plan
//! failed, 5 ledger broken).

mod support;
use support::*;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CTL: &str = env!("CARGO_BIN_EXE_antibodyctl");

/// A bus with the agent on it. Fields drop in order: agent, home, bus.
struct Fixture {
    agent: Agent,
    _home: tempfile::TempDir,
    bus: PrivateBus,
}

fn up() -> Fixture {
    let (bus, home, agent) = bus_and_agent();
    Fixture {
        agent,
        _home: home,
        bus,
    }
}

/// Runs antibodyctl with `DBUS_SYSTEM_BUS_ADDRESS=address`, feeding `stdin`;
/// returns (exit code, stdout, stderr).
fn ctl_at(address: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(CTL)
        .args(["--timeout", "30"])
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn antibodyctl");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("antibodyctl exited by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ctl(bus: &PrivateBus, args: &[&str]) -> (i32, String, String) {
    ctl_at(&bus.address(), args, None)
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Submits `--notify journal:MESSAGE --wait --json`; returns the plan id.
fn submit_notice(bus: &PrivateBus, message: &str) -> String {
    let note = format!("journal:{message}");
    let (code, out, err) = ctl(bus, &["--json", "submit", "--notify", &note, "--wait"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let v = json_of(&out);
    assert_eq!(v["plan"]["status"], "success", "{out}");
    v["plan_id"].as_str().unwrap().to_string()
}

#[test]
fn submit_from_flags_waits_for_success() {
    let f = up();
    let (code, out, err) = ctl(
        &f.bus,
        &[
            "submit",
            "--source",
            "Manual",
            "--severity",
            "high",
            "--notify",
            "journal:hello",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(" created"), "{out}");
    assert!(out.lines().last().unwrap().ends_with(" success"), "{out}");

    // The identical alert again: the same plan, already finished.
    let (code, again, err) = ctl(
        &f.bus,
        &[
            "submit",
            "--source",
            "Manual",
            "--severity",
            "high",
            "--notify",
            "journal:hello",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{again}\n{err}");
    assert!(
        again.contains("already exists (identical alert)"),
        "{again}"
    );
    let id = |s: &str| s.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(id(&out), id(&again));
}

#[test]
fn submit_without_wait_prints_the_plan_id() {
    let f = up();
    let (code, out, err) = ctl(&f.bus, &["submit", "--notify", "dbus:no wait"]);
    assert_eq!(code, 0, "{err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{out}");
    assert_eq!((words[0], words[2]), ("plan", "created"), "{out}");
    assert_eq!(words[1].len(), 36, "a UUID: {out}");
}

#[test]
fn submit_wait_exits_4_when_the_plan_fails() {
    let f = up();
    let (code, out, err) = ctl(
        &f.bus,
        &[
            "submit",
            "--restart",
            "antibodyctl-test-missing.service",
            "--notify",
            "journal:after",
            "--wait",
        ],
    );
    assert_eq!(code, 4, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(" failed"), "{out}");
    assert!(out.contains("restart_service"), "{out}");
}

#[test]
fn invalid_alert_from_stdin_exits_1_naming_the_field() {
    let f = up();
    let bad = alert(r#"[{"type":"restart_service","name":"foo bar"}]"#);
    let (code, out, err) = ctl_at(&f.bus.address(), &["submit", "-"], Some(&bad));
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.starts_with("antibodyctl: InvalidAlert: actions[0].name"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

#[test]
fn invalid_alert_from_a_file_exits_1_naming_the_field() {
    let f = up();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alert.json");
    std::fs::write(
        &file,
        r#"{"source":"Manual","severity":"urgent","description":"x","actions":[{"type":"notify_operator","channel":"journal","message":"m"}]}"#,
    )
    .unwrap();
    let (code, _, err) = ctl(&f.bus, &["submit", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("InvalidAlert: severity"), "{err}");

    // Same through dry-run; and an unknown action type has its own name.
    let (code, _, err) = ctl(&f.bus, &["dry-run", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("InvalidAlert: severity"), "{err}");
    let unknown = alert(r#"[{"type":"reboot_host"}]"#);
    let (code, _, err) = ctl_at(&f.bus.address(), &["submit", "-"], Some(&unknown));
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("antibodyctl: UnknownAction: "), "{err}");
}

#[test]
fn plan_shows_actions_and_log() {
    let f = up();
    let id = submit_notice(&f.bus, "plan view");
    let (code, out, err) = ctl(&f.bus, &["plan", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("plan {id}\n")), "{out}");
    assert!(out.contains("status:      success"), "{out}");
    assert!(out.contains("Manual (severity high)"), "{out}");
    assert!(out.contains("[0] notify_operator"), "{out}");
    assert!(out.contains("applied"), "{out}");
    assert!(out.contains("plan finished: success"), "{out}");

    let (code, out, _) = ctl(&f.bus, &["plan", &id, "--json"]);
    assert_eq!(code, 0);
    let plan = json_of(&out);
    assert_eq!(plan["id"], id.as_str());
    assert_eq!(plan["actions"][0]["state"], "applied");

    let (code, _, err) = ctl(&f.bus, &["plan", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("antibodyctl: NotFound: "), "{err}");
}

#[test]
fn list_json_is_an_array_newest_first() {
    let f = up();
    let first = submit_notice(&f.bus, "one");
    let second = submit_notice(&f.bus, "two");
    let (code, out, err) = ctl(&f.bus, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let plans = json_of(&out);
    let ids: Vec<&str> = plans
        .as_array()
        .expect("an array")
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);

    let (code, out, _) = ctl(&f.bus, &["list", "--limit", "1", "--status", "success"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.contains(&second) && !out.contains(&first), "{out}");

    let (code, out, _) = ctl(&f.bus, &["list", "--status", "failed", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out), serde_json::json!([]));
}

#[test]
fn status_prints_a_summary() {
    let f = up();
    let (code, out, err) = ctl(&f.bus, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("healthy:            yes"), "{out}");
    assert!(out.contains("queue depth:"), "{out}");
    assert!(out.contains("ledger:             ok"), "{out}");

    let (code, out, _) = ctl(&f.bus, &["status", "--json"]);
    assert_eq!(code, 0);
    let st = json_of(&out);
    assert_eq!(st["healthy"], true);
    assert!(st["queue_depth"].is_u64(), "{out}");
}

#[test]
fn verify_exits_0_on_an_intact_chain() {
    let f = up();
    submit_notice(&f.bus, "verify");
    let (code, out, err) = ctl(&f.bus, &["verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("ledger ok"), "{out}");
    let (code, out, _) = ctl(&f.bus, &["--json", "verify"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["ok"], true);
}

#[test]
fn dry_run_keeps_flag_order_and_changes_nothing() {
    let f = up();
    let (code, out, err) = ctl(
        &f.bus,
        &[
            "dry-run",
            "--notify",
            "dbus:b:c",
            "--restart",
            "vael",
            "--notify",
            "journal:a",
            "--isolate",
            "tcp:8080@600",
            "--throttle",
            "vael.service:300",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v = json_of(&out);
    assert_eq!(v["would_create"], true);
    let actions = v["plan"]["actions"].as_array().unwrap();
    let kinds: Vec<&str> = actions
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "notify_operator",
            "restart_service",
            "notify_operator",
            "isolate_socket",
            "throttle_entity"
        ]
    );
    assert_eq!(actions[0]["params"]["message"], "b:c");
    assert_eq!(actions[1]["params"]["name"], "vael.service");
    assert_eq!(actions[2]["params"]["message"], "a");
    assert_eq!(actions[3]["params"]["seconds"], 600);
    assert_eq!(actions[4]["params"]["seconds"], 300);

    let (_, out, _) = ctl(&f.bus, &["list", "--json"]);
    assert_eq!(json_of(&out), serde_json::json!([]), "dry-run made a plan");
}

#[test]
fn rollback_of_a_plan_with_nothing_to_revert_and_of_an_unknown_one() {
    let f = up();
    // A journal notice is not reversible: said, not "requested".
    let id = submit_notice(&f.bus, "rollback");
    let (code, out, err) = ctl(&f.bus, &["rollback", &id]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with(&format!(
            "antibodyctl: NothingToRevert: plan {id} has nothing to revert: no action of it is applied and reversible now ([0] notify_operator applied, not reversible)"
        )),
        "{err}"
    );
    let (code, _, err) = ctl(
        &f.bus,
        &["rollback", "00000000-0000-4000-8000-000000000000"],
    );
    assert_eq!(code, 1);
    assert!(err.starts_with("antibodyctl: NotFound: "), "{err}");
}

#[test]
fn watch_prints_one_json_object_per_signal() {
    let f = up();
    let mut watch = Command::new(CTL)
        .args(["watch", "--json"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", f.bus.address())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Subscribed once it says so on stderr.
    let mut stderr = BufReader::new(watch.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("watching"), "{line}");

    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let id = submit_notice(&f.bus, "watched");
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no PlanStatusChanged success; saw {seen:?}"));
        let v = json_of(&line);
        assert_eq!(v["event"], "antibody_event", "{line}");
        let done = v["signal"] == "PlanStatusChanged"
            && v["plan_id"] == id.as_str()
            && v["status"] == "success";
        seen.push(v);
        if done {
            break;
        }
    }
    let signals: Vec<&str> = seen.iter().map(|v| v["signal"].as_str().unwrap()).collect();
    assert!(signals.contains(&"PlanQueued"), "{signals:?}");
    assert!(signals.contains(&"ActionFinished"), "{signals:?}");
    let queued = seen.iter().find(|v| v["signal"] == "PlanQueued").unwrap();
    assert_eq!(queued["plan_id"], id.as_str());
    assert_eq!(queued["source"], "Manual");
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn unreachable_bus_exits_3() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix:path={}", dir.path().join("no-such-socket").display());
    for args in [
        &["status"][..],
        &["submit", "--notify", "journal:x"],
        &["watch"],
    ] {
        let (code, _, err) = ctl_at(&address, args, None);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(
            err.starts_with("antibodyctl: cannot connect to the system bus"),
            "{err}"
        );
    }
}

#[test]
fn bus_without_the_agent_exits_3() {
    require_root();
    let bus = PrivateBus::start();
    let (code, _, err) = ctl(&bus, &["status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not on the bus"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    require_root();
    let f = up();
    for args in [
        &["submit"][..],
        &["submit", "--isolate", "tcp:80@soon"],
        &["submit", "--notify", "no-colon"],
        &["submit", "--throttle", "vael.service"],
        &["submit", "alert.json", "--restart", "vael"],
        &["submit", "/nonexistent/alert.json"],
        &["list", "--status", "done"],
        &["frobnicate"],
    ] {
        let (code, _, err) = ctl(&f.bus, args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

#[test]
fn bus_policy_refusal_is_a_named_error() {
    let f = up();
    // Let an unprivileged uid reach the socket; the shipped policy then refuses it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.bus.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, out, err) = run_on_bus(&f.bus, CTL, &["list"], Some((65534, &[])));
    assert!(!ok, "{out}");
    assert!(err.starts_with("antibodyctl: AccessDenied: "), "{err}");
    // Status is open to anyone.
    let (ok, out, err) = run_on_bus(&f.bus, CTL, &["status"], Some((65534, &[])));
    assert!(ok, "{err}");
    assert!(out.contains("healthy:"), "{out}");
}

#[test]
fn verify_exits_5_when_the_chain_is_broken() {
    let f = up();
    submit_notice(&f.bus, "tamper-me");
    // Rewrite the notice's text in place (same length): the chain breaks there.
    let mut touched = false;
    for entry in std::fs::read_dir(f.agent.ledger_dir()).unwrap() {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text.contains("tamper-me") {
            std::fs::write(&path, text.replace("tamper-me", "TAMPERED!")).unwrap();
            touched = true;
        }
    }
    assert!(touched, "no ledger file holds the notice");
    let (code, out, err) = ctl(&f.bus, &["verify"]);
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(out.starts_with("ledger BROKEN: "), "{out}");
    let (code, out, _) = ctl(&f.bus, &["verify", "--json"]);
    assert_eq!(code, 5);
    assert_eq!(json_of(&out)["ok"], false);
    // The agent keeps answering, and says so in Status.
    let (code, out, _) = ctl(&f.bus, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("BROKEN at seq"), "{out}");
}

#[test]
fn playbooks_lists_the_set_in_force_and_test_shows_the_plan_an_alert_would_get() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("playbooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        format!("{}/packaging/examples/playbook-ssh-bruteforce.toml", ROOT),
        dir.join("10-ssh.toml"),
    )
    .unwrap();
    let _agent = Agent::start(&bus, home.path(), "");

    let (code, out, err) = ctl(&bus, &["playbooks"]);
    assert_eq!(code, 0, "{out}{err}");
    let want = format!(
        "1 playbook(s) from {}, tried in this order:\n",
        dir.display()
    );
    assert!(out.starts_with(&want), "{out}");
    let file = dir.join("10-ssh.toml");
    let lines = [
        format!("ssh-bruteforce ({})", file.display()),
        "  match:    kind=ssh-bruteforce min_severity=med source=[\"NEXUS\"]".into(),
        "  [0] isolate_socket   seconds=600 sid={entity}".into(),
        "  escalate: factor=4 jitter_secs=0 max_seconds=86400 window_secs=86400".into(),
    ];
    for line in lines {
        assert!(out.contains(&format!("{line}\n")), "{line:?} in:\n{out}");
    }
    let (code, out, _) = ctl(&bus, &["--json", "playbooks"]);
    assert_eq!(code, 0);
    let listed = json_of(&out);
    assert_eq!(listed["playbooks"][0]["name"], "ssh-bruteforce", "{listed}");
    assert_eq!(listed["playbooks"][0]["escalate"]["factor"], 4, "{listed}");

    let test = [
        "playbooks",
        "test",
        "--source",
        "NEXUS",
        "--kind",
        "ssh-bruteforce",
        "--entity",
        "203.0.113.9",
    ];
    let (code, out, err) = ctl(&bus, &test);
    assert_eq!(code, 0, "{out}{err}");
    let head = format!("playbook ssh-bruteforce ({}), repeat 0\n", file.display());
    assert!(out.starts_with(&head), "{out}");
    assert!(
        out.contains("  [0] isolate_socket   seconds=600 sid=203.0.113.9\n"),
        "{out}"
    );
    assert!(out.contains("      would: "), "{out}");
    // A test makes no plan.
    let (_, out, _) = ctl(&bus, &["--json", "list"]);
    assert_eq!(json_of(&out), serde_json::json!([]));

    // No playbook matches: the agent's refusal says why, exit 1.
    let (code, _, err) = ctl(
        &bus,
        &[
            "playbooks",
            "test",
            "--source",
            "NEXUS",
            "--kind",
            "port-scan",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim(),
        "antibodyctl: InvalidAlert: actions: no actions and no playbook matches source=NEXUS kind=port-scan (ssh-bruteforce: kind is port-scan, not ssh-bruteforce)"
    );
    // Neither actions nor a kind: a usage error, before the bus.
    let (code, _, err) = ctl(&bus, &["playbooks", "test", "--source", "NEXUS"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("or --kind for the playbooks to choose them"),
        "{err}"
    );
    assert!(err.contains("Usage: antibodyctl playbooks test"), "{err}");

    // submit --kind: a bare alert, whose plan the playbook makes.
    let (code, out, err) = ctl(
        &bus,
        &[
            "--json",
            "submit",
            "--source",
            "NEXUS",
            "--kind",
            "ssh-bruteforce",
            "--entity",
            "203.0.113.9",
            "--alert-id",
            "NX-1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = json_of(&out)["plan_id"].as_str().unwrap().to_string();
    let (_, out, _) = ctl(&bus, &["--json", "plan", &id]);
    let plan = json_of(&out);
    assert_eq!(plan["playbook"]["name"], "ssh-bruteforce", "{plan}");
    assert_eq!(plan["context"]["alert_id"], "NX-1", "{plan}");
}
