//! T1: bare alerts (no `actions`) get the actions of the first playbook
//! that matches, validated like an alert's own, with repeat offenders
//! escalated (issue 15), on the engine with fake system interfaces.

mod rig;

use std::sync::Arc;
use std::time::Duration;

use rig::*;

/// The shipped example playbook.
const SSH: &str = include_str!("../packaging/examples/playbook-ssh-bruteforce.toml");

fn rig_dir(playbooks: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("playbooks")).unwrap();
    if !playbooks.is_empty() {
        std::fs::write(dir.path().join("playbooks/10-ssh.toml"), playbooks).unwrap();
    }
    dir
}

fn started(dir: tempfile::TempDir) -> Rig {
    let rig = open(dir, Step::default(), "");
    tokio::spawn(rig.engine.clone().run());
    rig
}

fn bare(description: &str, kind: &str, entity: &str) -> String {
    json!({"source": "NEXUS", "severity": "high", "kind": kind, "description": description,
           "context": {"entity": entity}})
    .to_string()
}

#[tokio::test]
async fn a_bare_alert_no_playbook_matches_is_refused_saying_why() {
    let rig = started(rig_dir(""));
    let err = rig
        .engine
        .submit(&bare("a", "ssh-bruteforce", "203.0.113.9"))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::InvalidAlert);
    assert_eq!(
        err.message,
        "actions: no actions and no playbook matches source=NEXUS kind=ssh-bruteforce (no playbook is loaded)"
    );

    let rig = started(rig_dir(SSH));
    let err = rig
        .engine
        .submit(&bare("b", "port-scan", "203.0.113.9"))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "actions: no actions and no playbook matches source=NEXUS kind=port-scan (ssh-bruteforce: kind is port-scan, not ssh-bruteforce)"
    );
}

#[tokio::test]
async fn a_playbook_fills_in_the_entity_and_repeats_escalate_even_across_a_restart() {
    let rig = started(rig_dir(SSH));
    let (first, created) = rig
        .engine
        .submit(&bare("one", "ssh-bruteforce", "203.0.113.9"))
        .await
        .unwrap();
    assert!(created);
    let plan = wait_finished(&rig.engine, &first).await;
    assert_eq!(plan["status"], "success", "{plan}");
    assert_eq!(plan["playbook"]["name"], "ssh-bruteforce");
    assert_eq!(plan["playbook"]["repeat"], 0);
    assert!(plan["playbook"]["file"]
        .as_str()
        .unwrap()
        .ends_with("playbooks/10-ssh.toml"));
    assert_eq!(plan["actions"][0]["params"]["sid"], "203.0.113.9");
    assert_eq!(plan["actions"][0]["params"]["seconds"], 600);
    assert_eq!(
        plan["actions"][1]["params"]["message"],
        "ssh-bruteforce: isolated 203.0.113.9 for 600s"
    );

    // DryRun shows the playbook and the escalated values, creating nothing.
    let dry = rig
        .engine
        .dry_run(&bare("dry", "ssh-bruteforce", "203.0.113.9"))
        .await
        .unwrap();
    assert_eq!(dry["would_create"], true);
    assert_eq!(dry["plan"]["playbook"]["name"], "ssh-bruteforce", "{dry}");
    assert_eq!(dry["plan"]["playbook"]["repeat"], 1);
    assert_eq!(dry["plan"]["actions"][0]["params"]["seconds"], 2400);

    // The same offender again: a repeat, four times as long.
    let (second, _) = rig
        .engine
        .submit(&bare("two", "ssh-bruteforce", "203.0.113.9"))
        .await
        .unwrap();
    let plan = wait_finished(&rig.engine, &second).await;
    assert_eq!(plan["playbook"]["repeat"], 1, "{plan}");
    assert_eq!(plan["actions"][0]["params"]["seconds"], 2400);
    assert_eq!(
        plan["actions"][1]["params"]["message"],
        "ssh-bruteforce: isolated 203.0.113.9 for 2400s"
    );

    // Each repeat four times as long, up to the day the action accepts:
    // the fifth offence is still isolated, for 86400 s.
    for (n, want) in [(3, 9_600), (4, 38_400), (5, 86_400)] {
        let (id, _) = rig
            .engine
            .submit(&bare(
                &format!("repeat {n}"),
                "ssh-bruteforce",
                "203.0.113.9",
            ))
            .await
            .unwrap();
        let plan = wait_finished(&rig.engine, &id).await;
        assert_eq!(plan["status"], "success", "{plan}");
        assert_eq!(plan["playbook"]["repeat"], n - 1, "{plan}");
        assert_eq!(plan["actions"][0]["params"]["seconds"], want, "{plan}");
    }

    // Another address is a first offence.
    let (other, _) = rig
        .engine
        .submit(&bare("three", "ssh-bruteforce", "203.0.113.10"))
        .await
        .unwrap();
    let plan = wait_finished(&rig.engine, &other).await;
    assert_eq!(plan["playbook"]["repeat"], 0, "{plan}");

    // After a restart the offender is remembered (from the ledger).
    rig.engine.begin_stop();
    let Rig { dir, .. } = rig;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = started(dir);
    let (third, _) = again
        .engine
        .submit(&bare("four", "ssh-bruteforce", "203.0.113.9"))
        .await
        .unwrap();
    let plan = wait_finished(&again.engine, &third).await;
    assert_eq!(plan["playbook"]["repeat"], 5, "{plan}");
    assert_eq!(plan["actions"][0]["params"]["seconds"], 86_400);
}

#[tokio::test]
async fn a_playbook_never_reaches_past_the_guards_whatever_the_entity() {
    let rig = started(rig_dir(SSH));
    // Loopback is protected: the filled-in action is refused as if the
    // alert had carried it, and says which playbook made it.
    let err = rig
        .engine
        .submit(&bare("lo", "ssh-bruteforce", "127.0.0.1"))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::ProtectedTarget, "{err}");
    assert!(
        err.message.starts_with("playbook ssh-bruteforce ("),
        "{err}"
    );
    // An entity that tries to smuggle a parameter stays one string, and
    // that string is not an address.
    let err = rig
        .engine
        .submit(&bare(
            "smuggle",
            "ssh-bruteforce",
            r#"1.2.3.4", "seconds": 1, "x": ""#,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::InvalidAlert, "{err}");
    assert!(err.message.contains("actions[0].sid"), "{err}");
    // No entity at all: the placeholder has no value.
    let alert = json!({"source": "NEXUS", "severity": "high", "kind": "ssh-bruteforce",
                       "description": "none"})
    .to_string();
    let err = rig.engine.submit(&alert).await.unwrap_err();
    assert!(
        err.message
            .contains("uses {entity}, and the alert gives no context.entity"),
        "{err}"
    );
    assert_eq!(
        rig.engine.list_plans(None, 0),
        "[]",
        "nothing refused was created"
    );
}

#[tokio::test]
async fn a_simulate_playbook_records_what_it_would_do_and_changes_nothing() {
    let heartbeat = include_str!("../packaging/examples/playbook-stale-heartbeat.toml").replace(
        "name = \"stale-heartbeat\"",
        "name = \"stale-heartbeat\"\nsimulate = true",
    );
    let dir = rig_dir(&heartbeat);
    let systemd = Arc::new(FakeSystemd::with_units(&["web.service"]));
    let http = Arc::new(FakeHttp::default());
    let rig = open_with(
        dir,
        Step::default(),
        systemd.clone(),
        http.clone(),
        "[callbacks.Watchdog]\nurl = \"https://ids.example/{alert_id}\"\n",
    );
    tokio::spawn(rig.engine.clone().run());
    tokio::spawn(rig.engine.clone().callback_loop());
    let alert = json!({"source": "Watchdog", "severity": "high", "kind": "stale-heartbeat",
        "description": "web stale", "context": {"entity": "web", "alert_id": "W-1"}});
    // DryRun already says it would be simulated.
    let would = rig.engine.dry_run(&alert.to_string()).await.unwrap();
    assert_eq!(would["plan"]["playbook"]["simulate"], true, "{would}");
    let (id, _) = rig.engine.submit(&alert.to_string()).await.unwrap();
    let plan = wait_finished(&rig.engine, &id).await;
    assert_eq!(plan["status"], "success", "{plan}");
    assert_eq!(plan["playbook"]["simulate"], true, "{plan}");
    assert_eq!(states(&plan), vec!["simulated", "simulated"], "{plan}");
    // What it would have done: restart_service's dry run, the notice's.
    assert_eq!(plan["actions"][0]["would"]["unit"], "web.service", "{plan}");
    assert!(plan["actions"][1]["would"].is_object(), "{plan}");
    // Nothing was done: no restart, no notice, no call back to the IDS,
    // nothing in force, nothing to roll back.
    assert_eq!(systemd.count("restart web.service"), 0);
    assert!(rig.notifier.0.lock().unwrap().is_empty());
    assert!(plan.get("callback").is_none(), "{plan}");
    assert_eq!(rig.engine.status()["active_mitigations"], 0);
    let err = rig.engine.rollback(&id, "root").await.unwrap_err();
    assert_eq!(err.name, ErrorName::NothingToRevert, "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(http.requests().is_empty());

    // A unit the real run could not restart: the simulated plan fails as
    // the real one would, and says why.
    let ghost = json!({"source": "Watchdog", "severity": "high", "kind": "stale-heartbeat",
        "description": "ghost stale", "context": {"entity": "ghost"}});
    let (id, _) = rig.engine.submit(&ghost.to_string()).await.unwrap();
    let plan = wait_finished(&rig.engine, &id).await;
    assert_eq!(plan["status"], "failed", "{plan}");
    assert_eq!(states(&plan), vec!["failed", "skipped"], "{plan}");
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("simulated: it would fail: "), "{error}");
    assert_eq!(systemd.count("restart ghost.service"), 0);
}

#[tokio::test]
async fn offences_archived_out_of_memory_still_count_even_across_a_restart() {
    // A 1 s step per offence: once its timed revert is done the plan may
    // leave memory (keep_finished_plans = 0).
    let playbook = r#"
[[playbook]]
name = "short"
[playbook.match]
kind = "short"
[[playbook.actions]]
type = "step"
key = "s"
target = "{entity}"
seconds = 1
[playbook.escalate]
factor = 2
window_secs = 3600
max_seconds = 100
"#;
    let extra = "[state]\nkeep_finished_plans = 0\n";
    let rig = open(rig_dir(playbook), Step::default(), extra);
    tokio::spawn(rig.engine.clone().run());
    let offence = |n: u32| {
        json!({"source": "NEXUS", "severity": "high", "kind": "short",
               "description": format!("offence {n}"), "context": {"entity": "host-a"}})
        .to_string()
    };
    for n in 0..2 {
        let (id, _) = rig.engine.submit(&offence(n)).await.unwrap();
        let plan = wait_finished(&rig.engine, &id).await;
        assert_eq!(plan["playbook"]["repeat"], n, "{plan}");
        assert_eq!(plan["actions"][0]["params"]["seconds"], 1 << n, "{plan}");
        archive_all(&rig.engine).await;
        let in_memory = rig.engine.list_plans(None, 0);
        assert!(
            !in_memory.contains(&id),
            "plan {id} left memory: {in_memory}"
        );
    }
    // Both earlier plans are archived: still two offences.
    let (third, _) = rig.engine.submit(&offence(2)).await.unwrap();
    let plan = wait_finished(&rig.engine, &third).await;
    assert_eq!(plan["playbook"]["repeat"], 2, "{plan}");
    archive_all(&rig.engine).await;

    // The checkpoint carries them to the next start.
    rig.engine.write_checkpoint().unwrap();
    rig.engine.begin_stop();
    let Rig { dir, .. } = rig;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = open(dir, Step::default(), extra);
    tokio::spawn(again.engine.clone().run());
    let (fourth, _) = again.engine.submit(&offence(3)).await.unwrap();
    let plan = wait_finished(&again.engine, &fourth).await;
    assert_eq!(plan["playbook"]["repeat"], 3, "{plan}");
    assert_eq!(plan["actions"][0]["params"]["seconds"], 8, "{plan}");
}

/// Waits for every timed step to be reverted, then archives every finished
/// plan memory need not hold.
async fn archive_all(engine: &Arc<Engine>) {
    wait_for(
        || engine.status()["active_mitigations"] == 0,
        "the timed reverts",
    )
    .await;
    engine.evict_finished().unwrap();
}
