//! T1: the engine's behaviour with a scripted action handler and a
//! recording notifier (DESIGN.md §7). Real ledger files in a temp dir; no bus.

mod rig;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use rig::*;

#[tokio::test]
async fn a_plan_runs_its_actions_in_order_and_succeeds() {
    let rig = start("").await;
    let actions = json!([step("a"), {"type": "notify_operator", "channel": "dbus", "message": "hi"}, step("b")]);
    let (id, created) = rig.engine.submit(&alert("ok", actions)).await.unwrap();
    assert!(created);
    assert!(uuid::Uuid::parse_str(&id).unwrap().get_version_num() == 4);
    let plan = wait_finished(&rig.engine, &id).await;
    assert_eq!(plan["status"], "success");
    assert_eq!(states(&plan), ["applied", "applied", "applied"]);
    let applies: Vec<String> = rig.step.calls().into_iter().map(|(_, k)| k).collect();
    assert_eq!(applies, ["a", "b"]);
    let notices = rig.notifier.0.lock().unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].0, Channel::Dbus);
    assert_eq!(notices[0].1.message, "hi");
    assert_eq!(plan["alert_sha256"].as_str().unwrap().len(), 64);
    assert!(antibody::time::parse_rfc3339(plan["timestamp"].as_str().unwrap()).is_some());
    let kinds = ledger_kinds(&rig);
    assert_eq!(kinds.iter().filter(|k| *k == "action_applied").count(), 3);
    assert_eq!(kinds.last().unwrap(), "plan_finished");
}

#[tokio::test]
async fn transient_failures_are_retried_then_succeed() {
    let rig = start("").await;
    rig.step.script(
        "flaky",
        vec![Outcome::Transient, Outcome::Transient, Outcome::Ok],
    );
    let (id, _) = rig
        .engine
        .submit(&alert("retry", json!([step("flaky")])))
        .await
        .unwrap();
    let plan = wait_finished(&rig.engine, &id).await;
    assert_eq!(plan["status"], "success");
    assert_eq!(plan["actions"][0]["attempts"], 3);
    assert_eq!(rig.step.count("apply", "flaky"), 3);
    let kinds = ledger_kinds(&rig);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "action_attempt_failed")
            .count(),
        2
    );
    let log = plan["log"].to_string();
    assert!(
        log.contains("attempt 1 failed: flaky: busy; retrying in"),
        "{log}"
    );
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_the_plan_fails() {
    let rig = start("").await;
    rig.step.script("down", vec![Outcome::Transient]);
    let (id, _) = rig
        .engine
        .submit(&alert("exhaust", json!([step("down")])))
        .await
        .unwrap();
    let plan = wait_finished(&rig.engine, &id).await;
    assert_eq!(plan["status"], "failed");
    assert_eq!(rig.step.count("apply", "down"), 4);
    assert_eq!(plan["actions"][0]["state"], "failed");
    assert!(plan["log"]
        .to_string()
        .contains("failed after 4 attempt(s)"));
}

#[tokio::test]
async fn a_failure_rolls_back_applied_actions_newest_first() {
    let rig = start("").await;
    rig.step.script("c", vec![Outcome::Permanent]);
    let actions = json!([
        step("a"),
        {"type": "notify_operator", "channel": "journal", "message": "not reversible"},
        step("b"),
        step("c"),
        step("d"),
    ]);
    let (id, _) = rig
        .engine
        .submit(&alert("rollback", actions))
        .await
        .unwrap();
    let plan = wait_finished(&rig.engine, &id).await;
    assert_eq!(plan["status"], "failed");
    assert_eq!(
        states(&plan),
        ["reverted", "applied", "reverted", "failed", "skipped"]
    );
    let calls = rig.step.calls();
    let reverts: Vec<&str> = calls
        .iter()
        .filter(|(c, _)| c == "revert")
        .map(|(_, k)| k.as_str())
        .collect();
    assert_eq!(reverts, ["b", "a"]);
    assert_eq!(rig.step.count("apply", "d"), 0);
    assert_eq!(
        rig.step.count("apply", "c"),
        1,
        "a permanent failure is not retried"
    );
    let log = plan["log"].to_string();
    assert!(
        log.contains("action 2 (step): rolled back after a later failure: b undone"),
        "{log}"
    );
    assert!(log.contains("action 4 (step): skipped"), "{log}");
}

#[tokio::test]
async fn rollback_plan_reverts_a_finished_plan_newest_first() {
    let rig = start("").await;
    let (id, _) = rig
        .engine
        .submit(&alert("to undo", json!([step("x"), step("y")])))
        .await
        .unwrap();
    wait_finished(&rig.engine, &id).await;
    rig.engine.rollback(&id, "uid 0 (test)").await.unwrap();
    wait_for(
        || rig.engine.get_plan(&id).unwrap()["rollback"]["finished_at"].is_string(),
        "rollback to finish",
    )
    .await;
    let plan = rig.engine.get_plan(&id).unwrap();
    assert_eq!(
        plan["status"], "success",
        "the plan keeps its outcome; its actions say reverted"
    );
    assert_eq!(states(&plan), ["reverted", "reverted"]);
    let reverts: Vec<String> = rig
        .step
        .calls()
        .into_iter()
        .filter(|(c, _)| c == "revert")
        .map(|(_, k)| k)
        .collect();
    assert_eq!(reverts, ["y", "x"]);
    assert_eq!(plan["rollback"]["by"], "uid 0 (test)");
    // A second rollback has nothing left to undo, and says so.
    let err = rig.engine.rollback(&id, "again").await.unwrap_err();
    assert_eq!(err.name, ErrorName::NothingToRevert);
    assert!(
        err.message.contains("[0] step reverted; [1] step reverted"),
        "{}",
        err.message
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.step.count("revert", "x"), 1);
}

#[tokio::test]
async fn rollback_refuses_unknown_and_unfinished_plans() {
    let rig = start("").await;
    let err = rig.engine.rollback("nope", "t").await.unwrap_err();
    assert_eq!(err.name, ErrorName::NotFound);
    let gate = Arc::new(Notify::new());
    rig.step.script("held", vec![Outcome::Gate(gate.clone())]);
    let (id, _) = rig
        .engine
        .submit(&alert("held", json!([step("held")])))
        .await
        .unwrap();
    wait_for(|| rig.step.count("apply", "held") == 1, "held to start").await;
    let err = rig.engine.rollback(&id, "t").await.unwrap_err();
    assert_eq!(err.name, ErrorName::PlanNotFinished);
    assert!(err.message.contains("in_progress"), "{}", err.message);
    gate.notify_one();
    wait_finished(&rig.engine, &id).await;

    // A failed plan whose one action never applied: nothing to revert,
    // said with each action's state; nothing is recorded for it.
    rig.step.script("broken", vec![Outcome::Permanent]);
    let (id, _) = rig
        .engine
        .submit(&alert("fails", json!([step("broken")])))
        .await
        .unwrap();
    assert_eq!(wait_finished(&rig.engine, &id).await["status"], "failed");
    let err = rig.engine.rollback(&id, "t").await.unwrap_err();
    assert_eq!(err.name, ErrorName::NothingToRevert);
    assert!(
        err.message
            .ends_with("no action of it is applied and reversible now ([0] step failed)"),
        "{}",
        err.message
    );
    assert!(rig.engine.get_plan(&id).unwrap()["rollback"].is_null());
}

#[tokio::test]
async fn ten_thousand_identical_alerts_make_one_plan() {
    let rig = start("").await;
    let text = alert("storm", json!([step("storm")]));
    let mut tasks = Vec::new();
    for _ in 0..10_000 {
        let engine = rig.engine.clone();
        let text = text.clone();
        tasks.push(tokio::spawn(
            async move { engine.submit(&text).await.unwrap() },
        ));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let (id, c) = t.await.unwrap();
        ids.insert(id);
        created += c as usize;
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    let id = ids.into_iter().next().unwrap();
    wait_finished(&rig.engine, &id).await;
    // Finished but within the window: still the same plan.
    let (again, c) = rig.engine.submit(&text).await.unwrap();
    assert_eq!((again.as_str(), c), (id.as_str(), false));
    assert_eq!(
        serde_json::from_str::<Value>(&rig.engine.list_plans(None, 100))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ledger_kinds(&rig)
            .iter()
            .filter(|k| *k == "plan_created")
            .count(),
        1
    );
}

#[tokio::test]
async fn after_the_dedupe_window_an_identical_alert_makes_a_new_plan() {
    let rig = start("[queue]\ndedupe_window_secs = 0\n").await;
    let text = alert("again", json!([step("k")]));
    let (first, _) = rig.engine.submit(&text).await.unwrap();
    wait_finished(&rig.engine, &first).await;
    let (second, created) = rig.engine.submit(&text).await.unwrap();
    assert!(created);
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_blocked_action_delays_neither_submit_nor_queries() {
    let rig = start("").await;
    let gate = Arc::new(Notify::new());
    rig.step.script("slow", vec![Outcome::Gate(gate.clone())]);
    let (slow, _) = rig
        .engine
        .submit(&alert("slow", json!([step("slow")])))
        .await
        .unwrap();
    wait_for(|| rig.step.count("apply", "slow") == 1, "slow to start").await;
    // While it blocks, everything else answers (a hang here fails via the timeout).
    let quick = tokio::time::timeout(Duration::from_secs(10), async {
        let (other, _) = rig
            .engine
            .submit(&alert("other", json!([step("quick")])))
            .await
            .unwrap();
        let plan = rig.engine.get_plan(&slow).unwrap();
        assert_eq!(plan["status"], "in_progress");
        assert_eq!(plan["actions"][0]["in_flight"], true);
        let status = rig.engine.status();
        assert!(status["in_flight"].as_u64().unwrap() >= 1);
        wait_finished(&rig.engine, &other).await
    })
    .await
    .expect("submit, get and status answered while an action blocked");
    assert_eq!(quick["status"], "success");
    assert_eq!(rig.engine.get_plan(&slow).unwrap()["status"], "in_progress");
    gate.notify_one();
    assert_eq!(wait_finished(&rig.engine, &slow).await["status"], "success");
}

#[tokio::test]
async fn plans_sharing_a_target_run_in_submission_order() {
    let rig = start("").await;
    let gate = Arc::new(Notify::new());
    rig.step.script("first", vec![Outcome::Gate(gate.clone())]);
    let (a, _) = rig
        .engine
        .submit(&alert("a", json!([step_on("first", "unit:x.service")])))
        .await
        .unwrap();
    wait_for(|| rig.step.count("apply", "first") == 1, "first to start").await;
    let (b, _) = rig
        .engine
        .submit(&alert("b", json!([step_on("second", "unit:x.service")])))
        .await
        .unwrap();
    let (c, _) = rig
        .engine
        .submit(&alert("c", json!([step_on("other", "unit:y.service")])))
        .await
        .unwrap();
    // The disjoint plan runs while the first still holds unit:x.
    wait_finished(&rig.engine, &c).await;
    assert_eq!(rig.step.count("apply", "second"), 0, "b must wait for a");
    assert_eq!(rig.engine.get_plan(&b).unwrap()["status"], "pending");
    gate.notify_one();
    wait_finished(&rig.engine, &a).await;
    wait_finished(&rig.engine, &b).await;
    let order: Vec<String> = rig.step.calls().into_iter().map(|(_, k)| k).collect();
    assert_eq!(order, ["first", "other", "second"]);
}

#[tokio::test]
async fn the_queue_is_bounded() {
    let rig = start("[queue]\nmax = 2\nmax_concurrent = 1\n").await;
    let gate = Arc::new(Notify::new());
    rig.step.script("hold", vec![Outcome::Gate(gate.clone())]);
    rig.engine
        .submit(&alert("1", json!([step("hold")])))
        .await
        .unwrap();
    rig.engine
        .submit(&alert("2", json!([step("two")])))
        .await
        .unwrap();
    let err = rig
        .engine
        .submit(&alert("3", json!([step("three")])))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::QueueFull);
    assert!(err.message.contains("queue.max = 2"), "{}", err.message);
    gate.notify_one();
}

#[tokio::test]
async fn bad_alerts_are_refused_and_nothing_is_recorded() {
    let rig = start("").await;
    let before = ledger_kinds(&rig).len();
    let err = rig
        .engine
        .submit(&alert("bad", json!([{"type": "step"}])))
        .await
        .unwrap_err();
    assert_eq!(
        (err.name, err.message.as_str()),
        (ErrorName::InvalidAlert, "actions[0].key: is required")
    );
    let err = rig
        .engine
        .submit(&alert("bad", json!([{"type": "nope"}])))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::UnknownAction);
    assert_eq!(ledger_kinds(&rig).len(), before);
    assert!(rig.step.calls().is_empty());
}

#[tokio::test]
async fn guards_are_checked_again_at_apply() {
    let rig = start("").await;
    let gate = Arc::new(Notify::new());
    rig.step.script("hold", vec![Outcome::Gate(gate.clone())]);
    rig.engine
        .submit(&alert(
            "hold",
            json!([step_on("hold", "unit:vael.service")]),
        ))
        .await
        .unwrap();
    wait_for(|| rig.step.count("apply", "hold") == 1, "hold to start").await;
    let (id, _) = rig
        .engine
        .submit(&alert(
            "restart",
            json!([{"type": "restart_service", "name": "vael"}]),
        ))
        .await
        .unwrap();
    let mut protected = (*rig.engine.config()).clone();
    protected.protect.units = vec!["vael".into()];
    rig.engine.reload(protected).await;
    gate.notify_one();
    let plan = wait_finished(&rig.engine, &id).await;
    assert_eq!(plan["status"], "failed");
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert_eq!(
        error,
        "refused at apply: actions[0].name: vael.service is listed in protect.units"
    );
}

#[tokio::test]
async fn events_are_announced() {
    let rig = start("").await;
    let mut rx = rig.engine.events().subscribe();
    let (id, _) = rig
        .engine
        .submit(&alert("events", json!([step("e")])))
        .await
        .unwrap();
    wait_finished(&rig.engine, &id).await;
    let mut seen = Vec::new();
    while let Ok(event) = rx.try_recv() {
        seen.push(event);
    }
    let queued = AgentEvent::PlanQueued {
        plan_id: id.clone(),
        source: "Watchdog".into(),
        severity: "high".into(),
    };
    assert!(seen.contains(&queued));
    assert!(seen.contains(&AgentEvent::ActionFinished {
        plan_id: id.clone(),
        index: 0,
        kind: "step".into(),
        outcome: "applied".into()
    }));
    let statuses: Vec<&AgentEvent> = seen
        .iter()
        .filter(|e| matches!(e, AgentEvent::PlanStatusChanged { .. }))
        .collect();
    assert_eq!(
        statuses,
        [
            &AgentEvent::PlanStatusChanged {
                plan_id: id.clone(),
                status: "in_progress".into()
            },
            &AgentEvent::PlanStatusChanged {
                plan_id: id.clone(),
                status: "success".into()
            },
        ]
    );
}

#[tokio::test]
async fn dry_run_has_no_side_effect() {
    let rig = start("").await;
    let before = ledger_kinds(&rig).len();
    let out = rig
        .engine
        .dry_run(&alert("dry", json!([step("d")])))
        .await
        .unwrap();
    assert_eq!(out["would_create"], true);
    assert_eq!(out["actions"][0]["change"], json!({"would": "d"}));
    assert!(rig.step.calls().is_empty());
    assert_eq!(ledger_kinds(&rig).len(), before);
    assert_eq!(
        serde_json::from_str::<Value>(&rig.engine.list_plans(None, 0))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn timed_actions_are_reverted_when_their_time_runs_out() {
    let rig = start("").await;
    let (id, _) = rig
        .engine
        .submit(&alert(
            "timed",
            json!([{"type": "step", "key": "t", "seconds": 1}]),
        ))
        .await
        .unwrap();
    wait_finished(&rig.engine, &id).await;
    assert_eq!(rig.engine.status()["active_mitigations"], 1);
    wait_for(|| rig.step.count("revert", "t") == 1, "the timed revert").await;
    wait_for(
        || rig.engine.get_plan(&id).unwrap()["actions"][0]["state"] == "reverted",
        "state reverted",
    )
    .await;
    assert!(rig.engine.get_plan(&id).unwrap()["log"]
        .to_string()
        .contains("reverted when its time ran out"));
    assert_eq!(rig.engine.status()["active_mitigations"], 0);
}

// ----------------------------------------------------------- recovery

fn seed(id: &str, keys: &[&str]) -> PlanSeed {
    PlanSeed {
        id: id.into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        source: antibody::plan::Source::Manual,
        severity: antibody::plan::Severity::High,
        description: "recovered".into(),
        alert_sha256: format!("hash-{id}"),
        context: None,
        playbook: None,
        callback: false,
        actions: keys
            .iter()
            .map(|k| antibody::plan::ActionSeed {
                kind: "step".into(),
                params: json!({"key": k}),
                targets: vec![],
                reversible: true,
            })
            .collect(),
    }
}

#[tokio::test]
async fn after_a_crash_the_interrupted_action_is_settled_and_the_plan_resumes() {
    for took_effect in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        write_ledger(
            dir.path(),
            vec![
                (
                    Some("p1"),
                    Event::PlanCreated {
                        plan: seed("p1", &["one", "two"]),
                    },
                ),
                (Some("p1"), Event::PlanStarted {}),
                (
                    Some("p1"),
                    Event::ActionStarted {
                        index: 0,
                        attempt: 1,
                        prepared: None,
                    },
                ),
                (
                    Some("p2"),
                    Event::PlanCreated {
                        plan: seed("p2", &["three"]),
                    },
                ),
            ],
        )
        .await;
        let step = Step::default();
        step.0.lock().unwrap().recover_answer = Some(took_effect);
        let rig = open(dir, step, "");
        rig.engine.settle_in_flight().await;
        assert_eq!(
            rig.step.calls(),
            [("recover".to_string(), "one".to_string())]
        );
        tokio::spawn(rig.engine.clone().run());
        let p1 = wait_finished(&rig.engine, "p1").await;
        let p2 = wait_finished(&rig.engine, "p2").await;
        assert_eq!(
            (p1["status"].as_str(), p2["status"].as_str()),
            (Some("success"), Some("success"))
        );
        // p1 and p2 share no target, so they may interleave; within p1 the order holds.
        let mut applies: Vec<String> = rig
            .step
            .calls()
            .into_iter()
            .filter(|(c, _)| c == "apply")
            .map(|(_, k)| k)
            .collect();
        let p1_order: Vec<&String> = applies.iter().filter(|k| *k != "three").collect();
        if took_effect {
            assert_eq!(
                p1_order,
                ["two"],
                "an action that took effect is not redone"
            );
        } else {
            assert_eq!(
                p1_order,
                ["one", "two"],
                "an action that did not take effect is tried again"
            );
            assert_eq!(p1["actions"][0]["attempts"], 2);
        }
        applies.sort();
        assert!(applies.contains(&"three".to_string()));
        assert!(p1["log"].to_string().contains("after an agent restart"));
    }
}

#[tokio::test]
async fn an_overdue_timed_revert_runs_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(
        dir.path(),
        vec![
            (
                Some("p"),
                Event::PlanCreated {
                    plan: seed("p", &["timed"]),
                },
            ),
            (Some("p"), Event::PlanStarted {}),
            (
                Some("p"),
                Event::ActionStarted {
                    index: 0,
                    attempt: 1,
                    prepared: None,
                },
            ),
            (
                Some("p"),
                Event::ActionApplied {
                    index: 0,
                    attempt: 1,
                    summary: "on".into(),
                    changes: json!({"key": "timed"}),
                    revert_at_ms: Some(1_000),
                },
            ),
            (
                Some("p"),
                Event::PlanFinished {
                    status: antibody::plan::PlanStatus::Success,
                },
            ),
        ],
    )
    .await;
    let rig = open(dir, Step::default(), "");
    // As the agent starts: the overdue revert is done before READY=1, that
    // is before the engine loop runs.
    rig.engine.run_overdue_reverts().await;
    assert_eq!(rig.step.count("revert", "timed"), 1);
    assert_eq!(
        rig.engine.get_plan("p").unwrap()["actions"][0]["state"],
        "reverted"
    );
    tokio::spawn(rig.engine.clone().run());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.step.count("revert", "timed"), 1);
    rig.engine.begin_stop();
    let Rig { dir, .. } = rig;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A second start finds it reverted and does nothing.
    let again = open(dir, Step::default(), "");
    tokio::spawn(again.engine.clone().run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(again.step.count("revert", "timed"), 0);
    assert_eq!(
        again.engine.get_plan("p").unwrap()["actions"][0]["state"],
        "reverted"
    );
}

// ----------------------------------------------------- checkpoint, archive

#[tokio::test]
async fn a_start_from_a_checkpoint_replays_only_the_tail_and_loses_nothing() {
    let rig = start("").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (id, _) = rig
            .engine
            .submit(&alert(&format!("before {n}"), json!([step("k")])))
            .await
            .unwrap();
        wait_finished(&rig.engine, &id).await;
        ids.push(id);
    }
    rig.engine.write_checkpoint().unwrap();
    let (tail, _) = rig
        .engine
        .submit(&alert("after the checkpoint", json!([step("t")])))
        .await
        .unwrap();
    wait_finished(&rig.engine, &tail).await;
    ids.push(tail);
    let before: Vec<Value> = ids
        .iter()
        .map(|id| rig.engine.get_plan(id).unwrap())
        .collect();
    let dir = stop(rig).await;

    let again = open(dir, Step::default(), "");
    assert!(again.engine.started_from_checkpoint());
    let after: Vec<Value> = ids
        .iter()
        .map(|id| again.engine.get_plan(id).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(again.engine.status()["ledger"]["ok"], true);
    // The agent goes on appending to the same chain.
    tokio::spawn(again.engine.clone().run());
    let (next, _) = again
        .engine
        .submit(&alert("next", json!([step("n")])))
        .await
        .unwrap();
    wait_finished(&again.engine, &next).await;
    assert!(again.engine.verify_ledger().await.0);
}

#[tokio::test]
async fn a_checkpoint_that_does_not_match_the_ledger_is_not_trusted() {
    let rig = start("").await;
    let (id, _) = rig
        .engine
        .submit(&alert("one", json!([step("k")])))
        .await
        .unwrap();
    wait_finished(&rig.engine, &id).await;
    rig.engine.write_checkpoint().unwrap();
    let dir = stop(rig).await;
    // Someone rewrites the checkpoint to claim a plan the ledger never had.
    let path = dir.path().join("state/checkpoint.json");
    let mut checkpoint: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    checkpoint["hash"] = json!("ff".repeat(32));
    checkpoint["plans"][0]["description"] = json!("forged");
    std::fs::write(&path, checkpoint.to_string()).unwrap();
    let again = open(dir, Step::default(), "");
    assert!(!again.engine.started_from_checkpoint());
    assert_eq!(again.engine.get_plan(&id).unwrap()["description"], "one");
}

#[tokio::test]
async fn finished_plans_are_archived_and_still_answer() {
    let rig = start("[state]\nkeep_finished_plans = 1\n[queue]\ndedupe_window_secs = 0\n").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (id, _) = rig
            .engine
            .submit(&alert(&format!("p{n}"), json!([step(&format!("k{n}"))])))
            .await
            .unwrap();
        wait_finished(&rig.engine, &id).await;
        ids.push(id);
    }
    let before: Vec<Value> = ids
        .iter()
        .map(|id| rig.engine.get_plan(id).unwrap())
        .collect();
    // p0 and p1 are reverted-able (applied, reversible): roll them back
    // first so nothing of theirs is in force and they may leave memory.
    for id in &ids[..2] {
        rig.engine.rollback(id, "test").await.unwrap();
        wait_for(
            || rig.engine.get_plan(id).unwrap()["rollback"]["finished_at"].is_string(),
            "rollback",
        )
        .await;
    }
    assert_eq!(rig.engine.evict_finished().unwrap(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(&rig.engine.list_plans(None, 0))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the newest stays listed"
    );
    for (id, old) in ids.iter().zip(&before).take(2) {
        let archived = rig.engine.get_plan(id).unwrap();
        assert_eq!(archived["id"], old["id"]);
        assert_eq!(archived["actions"][0]["state"], "reverted");
        let archive: String = std::fs::read_dir(rig.dir.path().join("state/plans"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert!(
            archive.contains(&format!("{id} {{")),
            "{id} is in the archive"
        );
    }
    // The newest plan keeps an applied reversible action, so it stayed.
    assert_eq!(rig.engine.get_plan(&ids[2]).unwrap(), before[2]);
}

/// The archive is appended to without an fsync and made durable before
/// the next checkpoint: a crash in between may lose the append (here: the
/// bucket files emptied), and the plan then comes back from the ledger,
/// which the older checkpoint still replays.
#[tokio::test]
async fn an_archived_plan_whose_append_a_crash_lost_comes_back_from_the_ledger() {
    let extra = "[state]\nkeep_finished_plans = 0\n";
    let rig = start(extra).await;
    rig.engine.checkpoint_now().await.unwrap();
    let notice = alert(
        "lost append",
        json!([{"type": "notify_operator", "channel": "journal", "message": "m"}]),
    );
    let (id, _) = rig.engine.submit(&notice).await.unwrap();
    let finished = wait_finished(&rig.engine, &id).await;
    assert_eq!(rig.engine.evict_finished().unwrap(), 1);
    assert!(!rig.engine.archive_synced(), "appended, not yet fsynced");
    let buckets = rig.dir.path().join("state/plans");
    for bucket in std::fs::read_dir(&buckets).unwrap() {
        std::fs::write(bucket.unwrap().path(), b"").unwrap();
    }
    assert_eq!(
        rig.engine.get_plan(&id).unwrap_err().name,
        antibody::error::ErrorName::NotFound,
        "the test emptied the only copy outside the ledger"
    );
    let dir = stop(rig).await;
    let again = open(dir, Step::default(), extra);
    assert_eq!(again.engine.get_plan(&id).unwrap(), finished);
    // Evicted again at this start's upkeep: each way of saving a
    // checkpoint makes the archive durable first.
    assert_eq!(again.engine.evict_finished().unwrap(), 1);
    again.engine.write_checkpoint().unwrap();
    assert!(again.engine.archive_synced(), "write_checkpoint syncs");
    let notice = alert(
        "second",
        json!([{"type": "notify_operator", "channel": "journal", "message": "m"}]),
    );
    tokio::spawn(again.engine.clone().run());
    let (second, _) = again.engine.submit(&notice).await.unwrap();
    wait_finished(&again.engine, &second).await;
    assert_eq!(again.engine.evict_finished().unwrap(), 1);
    assert!(!again.engine.archive_synced());
    again.engine.checkpoint_now().await.unwrap();
    assert!(again.engine.archive_synced(), "checkpoint_now syncs");
    assert_eq!(again.engine.get_plan(&id).unwrap(), finished);
}

/// A plan archived with a mitigation in force, taken back after the
/// checkpoint for a rollback and archived again, then a crash: the start
/// replays the rollback's records onto the newer archived copy, which
/// already holds them. It must neither fold them twice nor count the
/// mitigation as still in force in the archive.
#[tokio::test]
async fn a_rollback_of_an_archived_plan_after_the_checkpoint_replays_once() {
    let extra = "[state]\nkeep_finished_plans = 0\n[queue]\ndedupe_window_secs = 0\n";
    let rig = start(extra).await;
    let (id, _) = rig
        .engine
        .submit(&alert("untimed", json!([step("u")])))
        .await
        .unwrap();
    wait_finished(&rig.engine, &id).await;
    assert_eq!(rig.engine.evict_finished().unwrap(), 1);
    assert_eq!(rig.engine.active_mitigations(), 1, "in force, archived");
    rig.engine.checkpoint_now().await.unwrap();
    rig.engine.rollback(&id, "test").await.unwrap();
    wait_for(
        || rig.engine.get_plan(&id).unwrap()["rollback"]["finished_at"].is_string(),
        "rollback",
    )
    .await;
    assert_eq!(rig.engine.active_mitigations(), 0);
    assert_eq!(rig.engine.evict_finished().unwrap(), 1, "archived again");
    let rolled_back = rig.engine.get_plan(&id).unwrap();
    let dir = stop(rig).await;
    let again = open(dir, Step::default(), extra);
    assert!(again.engine.started_from_checkpoint());
    assert_eq!(again.engine.active_mitigations(), 0);
    assert_eq!(again.engine.get_plan(&id).unwrap(), rolled_back);
}

/// A finished plan leaves memory once `state.keep_finished_plans` newer
/// ones exist, even inside its dedupe window (holding every plan for the
/// window grew memory with the alert rate under a flood: t2_flood.rs). An
/// identical alert still returns it within the window, also after a
/// restart from the checkpoint.
#[tokio::test]
async fn an_archived_plan_still_answers_an_identical_alert_within_its_window_across_a_restart() {
    let extra = "[state]\nkeep_finished_plans = 0\n[queue]\ndedupe_window_secs = 600\n";
    let rig = start(extra).await;
    let notice = alert(
        "same",
        json!([{"type": "notify_operator", "channel": "journal", "message": "once"}]),
    );
    let (id, created) = rig.engine.submit(&notice).await.unwrap();
    assert!(created);
    wait_finished(&rig.engine, &id).await;
    assert_eq!(
        rig.engine.evict_finished().unwrap(),
        1,
        "archived in its window"
    );
    assert_eq!(
        rig.engine.submit(&notice).await.unwrap(),
        (id.clone(), false)
    );

    let dir = stop(rig).await;
    let rig = open(dir, Step::default(), extra);
    tokio::spawn(rig.engine.clone().run());
    assert_eq!(
        rig.engine.submit(&notice).await.unwrap(),
        (id.clone(), false)
    );
    assert_eq!(rig.engine.get_plan(&id).unwrap()["status"], "success");
}

/// An instant notice (journal, dbus) is not written ahead: a crash would
/// send it again either way, so its start rides in one write with its
/// outcome. A webhook, which can take seconds, is written ahead, as is every
/// action that changes the system.
#[tokio::test]
async fn only_actions_that_need_it_are_written_ahead() {
    let rig =
        start("[notify.channels.ops]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n")
            .await;
    rig.notifier.1.lock().unwrap().dir = Some(rig.dir.path().join("ledger"));
    let actions = json!([
        {"type": "notify_operator", "channel": "journal", "message": "instant"},
        {"type": "notify_operator", "channel": "ops", "message": "slow"},
        step("after")
    ]);
    let (id, _) = rig
        .engine
        .submit(&alert("write-ahead", actions))
        .await
        .unwrap();
    assert_eq!(wait_finished(&rig.engine, &id).await["status"], "success");

    let peek = rig.notifier.1.lock().unwrap();
    let [at_journal, at_webhook] = peek.kinds_at_notice.as_slice() else {
        panic!("two notices expected: {:?}", peek.kinds_at_notice);
    };
    assert_eq!(
        at_journal,
        &["plan_created"],
        "nothing of the journal notice is durable before it is sent"
    );
    assert_eq!(
        at_webhook,
        &[
            "plan_created",
            "plan_started",
            "action_started",
            "action_applied",
            "action_started"
        ],
        "the webhook's start is durable before it is sent"
    );
    assert_eq!(
        ledger_kinds(&rig),
        [
            "plan_created",
            "plan_started",
            "action_started",
            "action_applied",
            "action_started",
            "action_applied",
            "action_started",
            "action_applied",
            "plan_finished"
        ]
    );
}

#[tokio::test]
async fn callers_of_verify_ledger_that_come_together_share_one_walk_of_the_chain() {
    let rig = start("").await;
    let (id, _) = rig
        .engine
        .submit(&alert("something to verify", json!([step("a")])))
        .await
        .unwrap();
    wait_finished(&rig.engine, &id).await;
    let answers = futures_util::future::join_all((0..16).map(|_| rig.engine.verify_ledger())).await;
    assert!(answers.iter().all(|(ok, _)| *ok), "{answers:?}");
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "one answer for all"
    );
    assert_eq!(rig.engine.ledger_walks(), 1, "sixteen callers, one walk");
    // A caller after that walk ended starts the next one.
    assert!(rig.engine.verify_ledger().await.0);
    assert_eq!(rig.engine.ledger_walks(), 2);
}

#[tokio::test]
async fn checkpoints_taken_while_plans_run_replay_to_exactly_what_the_whole_ledger_says() {
    let rig = start("[queue]\nmax_concurrent = 8\n").await;
    let state = rig.dir.path().join("state");
    // One plan held mid-step through every checkpoint: its start is
    // durable, its outcome is not.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    rig.step.script("held", vec![Outcome::Gate(gate.clone())]);
    let (held, _) = rig
        .engine
        .submit(&alert("held", json!([step("held")])))
        .await
        .unwrap();
    wait_for(|| rig.step.count("apply", "held") == 1, "the held step").await;
    // Eight submitters, and checkpoints taken meanwhile (each kept).
    let submitters = (0..8).map(|t| {
        let engine = rig.engine.clone();
        async move {
            let mut ids = Vec::new();
            for n in 0..25 {
                let actions = json!([step(&format!("k{t}-{n}")), step("x")]);
                let (id, _) = engine
                    .submit(&alert(&format!("{t}/{n}"), actions))
                    .await
                    .unwrap();
                ids.push(id);
            }
            ids
        }
    });
    let checkpoints = {
        let (engine, state) = (rig.engine.clone(), state.clone());
        async move {
            let mut kept = Vec::new();
            for n in 0..30 {
                engine.checkpoint_now().await.unwrap();
                let copy = state.join(format!("checkpoint-{n}.json"));
                std::fs::copy(state.join("checkpoint.json"), &copy).unwrap();
                kept.push(copy);
                tokio::task::yield_now().await;
            }
            kept
        }
    };
    let (ids, kept) = tokio::join!(futures_util::future::join_all(submitters), checkpoints);
    let mut ids: Vec<String> = ids.into_iter().flatten().collect();
    for id in &ids {
        wait_finished(&rig.engine, id).await;
    }
    ids.push(held.clone());
    // A crash now, with the held plan still mid-step.
    let mut dir = {
        let Rig { engine, dir, .. } = rig;
        drop(engine);
        dir
    };
    let plans = |engine: &Engine| -> Vec<Value> {
        ids.iter().map(|id| engine.get_plan(id).unwrap()).collect()
    };
    std::fs::remove_file(state.join("checkpoint.json")).unwrap();
    let whole = open(dir, Step::default(), "");
    assert!(!whole.engine.started_from_checkpoint());
    let truth = plans(&whole.engine);
    assert_eq!(truth.last().unwrap()["actions"][0]["in_flight"], true);
    dir = whole.dir;
    drop(whole.engine);
    // Each checkpoint and the records after it say what the whole ledger says.
    for copy in &kept {
        std::fs::copy(copy, state.join("checkpoint.json")).unwrap();
        let again = open(dir, Step::default(), "");
        assert!(again.engine.started_from_checkpoint());
        assert_eq!(plans(&again.engine), truth, "from {}", copy.display());
        dir = again.dir;
        drop(again.engine);
    }
}

#[tokio::test]
async fn a_caller_other_than_root_creates_plans_at_its_rate_and_duplicates_are_free() {
    let rig = start("[auth]\nsubmit_rate_per_sec = 1\nsubmit_burst = 3\n").await;
    let alice = Some(1000);
    let mut first = None;
    for n in 0..3 {
        let (id, created) = rig
            .engine
            .submit_as(&alert(&format!("alice {n}"), json!([step("a")])), alice)
            .await
            .unwrap();
        assert!(created);
        first.get_or_insert(id);
    }
    let records = ledger_kinds(&rig).len();
    let err = rig
        .engine
        .submit_as(&alert("alice 3", json!([step("a")])), alice)
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::RateLimited, "{err}");
    assert!(
        err.message
            .starts_with("uid 1000 creates plans faster than auth.submit_rate_per_sec = 1"),
        "{err}"
    );
    assert_eq!(
        ledger_kinds(&rig).len(),
        records,
        "nothing was written for it"
    );
    // A duplicate of a live plan creates nothing and costs nothing.
    let (again, created) = rig
        .engine
        .submit_as(&alert("alice 0", json!([step("a")])), alice)
        .await
        .unwrap();
    assert_eq!((Some(again), created), (first, false));
    // A dry run costs a token too: none left.
    let err = rig
        .engine
        .dry_run_as(&alert("alice preview", json!([step("a")])), alice)
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::RateLimited, "{err}");
    assert!(rig
        .engine
        .dry_run(&alert("root preview", json!([step("a")])))
        .await
        .is_ok());
    // Another uid, and root, have buckets of their own (root: none).
    assert!(rig
        .engine
        .submit_as(&alert("bob", json!([step("a")])), Some(1001))
        .await
        .is_ok());
    for n in 0..5 {
        assert!(rig
            .engine
            .submit(&alert(&format!("root {n}"), json!([step("a")])))
            .await
            .is_ok());
    }
}
