//! T1: the logic of the systemd actions (restart_service, unit throttling)
//! and the flap limiter, with a fake systemd (DESIGN.md §7). That the real
//! Manager does what these assume is proven in the T4 testbed (t4_systemd).

mod rig;

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::Notify;

use rig::fake_systemd::{self, UNLIMITED};
use rig::*;

fn restart(unit: &str) -> Value {
    json!({"type": "restart_service", "name": unit})
}

fn throttle(unit: &str, seconds: u64) -> Value {
    json!({"type": "throttle_entity", "entity": unit, "seconds": seconds})
}

async fn start_with(units: &[&str], extra: &str) -> Rig {
    let systemd = Arc::new(FakeSystemd::with_units(units));
    let rig = open_with_systemd(
        tempfile::tempdir().unwrap(),
        Step::default(),
        systemd,
        extra,
    );
    tokio::spawn(rig.engine.clone().run());
    rig
}

/// Submits an alert and waits for its plan to end.
async fn run_to_end(rig: &Rig, description: &str, actions: Value) -> (String, Value) {
    let (id, _) = rig
        .engine
        .submit(&alert(description, actions))
        .await
        .unwrap();
    let plan = wait_finished(&rig.engine, &id).await;
    (id, plan)
}

/// Waits until the plan's first action is reverted.
async fn wait_reverted(rig: &Rig, id: &str, what: &str) {
    wait_for(
        || rig.engine.get_plan(id).unwrap()["actions"][0]["state"] == "reverted",
        what,
    )
    .await;
}

fn kinds_in_order(rig: &Rig) -> Vec<String> {
    ledger_kinds(rig)
        .into_iter()
        .filter(|k| k.starts_with("action_"))
        .collect()
}

#[tokio::test]
async fn a_restart_records_the_invocation_before_and_after() {
    let rig = start_with(&["web.service"], "").await;
    let (_, plan) = run_to_end(&rig, "stalled", json!([restart("web")])).await;
    assert_eq!(plan["status"], "success", "{plan}");
    let changes = &plan["actions"][0]["changes"];
    assert_eq!(changes["before"]["invocation_id"], format!("{:032x}", 1));
    assert_eq!(changes["after"]["invocation_id"], format!("{:032x}", 2));
    assert_eq!(changes["result"], "done");
    assert!(
        changes.get("base").is_none(),
        "a restart's record is its own: {changes}"
    );
    assert_eq!(rig.systemd.calls(), ["restart web.service"]);
    // The state before is durable, in action_started, before systemd is asked.
    assert_eq!(kinds_in_order(&rig), ["action_started", "action_applied"]);
    let started = ledger_payloads(&rig, "action_started");
    assert_eq!(
        started[0]["prepared"]["invocation_id"],
        format!("{:032x}", 1)
    );
    let log = plan["log"].to_string();
    assert!(log.contains("InvocationID 000"), "{log}");
}

#[tokio::test]
async fn a_failing_job_is_retried_then_fails_with_systemds_result() {
    let rig = start_with(&["broken.service"], "").await;
    rig.systemd
        .script_results("broken.service", &["failed", "failed", "failed", "failed"]);
    let (_, plan) = run_to_end(&rig, "broken", json!([restart("broken.service")])).await;
    assert_eq!(plan["status"], "failed");
    assert_eq!(plan["actions"][0]["attempts"], 4);
    assert_eq!(rig.systemd.count("restart broken.service"), 4);
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("restarting broken.service ended with result \"failed\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_restart_whose_job_result_went_unheard_is_judged_by_the_units_invocation() {
    let rig = start_with(&["web.service"], "").await;
    // The job restarted the unit but its JobRemoved was lost with the bus:
    // success, and no second restart.
    rig.systemd
        .script_results("web.service", &[fake_systemd::UNHEARD_RESTARTED]);
    let (_, plan) = run_to_end(&rig, "unheard", json!([restart("web")])).await;
    assert_eq!(plan["status"], "success", "{plan:#}");
    assert_eq!(plan["actions"][0]["attempts"], 1);
    assert_eq!(plan["actions"][0]["changes"]["result"], "unheard");
    assert_eq!(rig.systemd.count("restart web.service"), 1);
    // The job ended without restarting it: that attempt failed and the
    // next one restarts it.
    rig.systemd
        .script_results("web.service", &[fake_systemd::UNHEARD_NOT_RESTARTED]);
    let (_, plan) = run_to_end(&rig, "unheard again", json!([restart("web")])).await;
    assert_eq!(plan["status"], "success", "{plan:#}");
    assert_eq!(plan["actions"][0]["attempts"], 2);
    assert_eq!(plan["actions"][0]["changes"]["result"], "done");
    assert_eq!(rig.systemd.count("restart web.service"), 3);
    let log = plan["log"].to_string();
    assert!(
        log.contains("has no new invocation that did not fail"),
        "{log}"
    );
}

#[tokio::test]
async fn a_unit_that_does_not_exist_fails_at_once() {
    let rig = start_with(&[], "").await;
    let (_, plan) = run_to_end(&rig, "ghost", json!([restart("ghost")])).await;
    assert_eq!(plan["status"], "failed");
    assert_eq!(plan["actions"][0]["attempts"], 1);
    assert!(plan["actions"][0]["error"]
        .as_str()
        .unwrap()
        .contains("ghost.service does not exist"));
    assert!(rig.systemd.calls().is_empty(), "prepare found no unit");
}

#[tokio::test]
async fn the_fourth_restart_in_the_window_is_refused_and_the_operator_told() {
    let rig = start_with(&["web.service", "db.service"], "").await;
    for n in 0..3 {
        run_to_end(&rig, &format!("r{n}"), json!([restart("web")])).await;
    }
    let err = rig
        .engine
        .submit(&alert("r3", json!([restart("web")])))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::RateLimited);
    assert!(
        err.message
            .starts_with("actions[0].name: unit:web.service already has 3 restart(s)"),
        "{}",
        err.message
    );
    // Another unit is not affected.
    let (other, _) = rig
        .engine
        .submit(&alert("db", json!([restart("db")])))
        .await
        .unwrap();
    assert_eq!(
        wait_finished(&rig.engine, &other).await["status"],
        "success"
    );
    assert_eq!(rig.systemd.count("restart web.service"), 3);
    wait_for(
        || rig.notifier.0.lock().unwrap().len() == 2,
        "journal and dbus notices",
    )
    .await;
    let notices = rig.notifier.0.lock().unwrap();
    assert!(notices
        .iter()
        .all(|(_, n)| n.message.contains("flap limit reached")));
}

#[tokio::test]
async fn one_plan_cannot_pass_the_limit_by_itself_and_queued_restarts_count() {
    let rig = start_with(&["web.service"], "[restart]\nburst = 2\n").await;
    let err = rig
        .engine
        .submit(&alert(
            "three",
            json!([restart("web"), restart("web"), restart("web")]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::RateLimited);
    assert!(
        err.message.starts_with("actions[2].name:"),
        "{}",
        err.message
    );
    // Two queued behind a held plan on the same unit count before they run.
    let gate = Arc::new(Notify::new());
    rig.step.script("hold", vec![Outcome::Gate(gate.clone())]);
    rig.engine
        .submit(&alert("hold", json!([step_on("hold", "unit:web.service")])))
        .await
        .unwrap();
    for n in 0..2 {
        rig.engine
            .submit(&alert(&format!("q{n}"), json!([restart("web")])))
            .await
            .unwrap();
    }
    let err = rig
        .engine
        .submit(&alert("q2", json!([restart("web")])))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::RateLimited);
    gate.notify_one();
}

#[tokio::test]
async fn the_limit_is_counted_from_the_ledger_across_an_agent_restart() {
    let systemd = Arc::new(FakeSystemd::with_units(&["web.service"]));
    let rig = open_with_systemd(
        tempfile::tempdir().unwrap(),
        Step::default(),
        systemd.clone(),
        "",
    );
    tokio::spawn(rig.engine.clone().run());
    for n in 0..3 {
        run_to_end(&rig, &format!("r{n}"), json!([restart("web")])).await;
    }
    let dir = stop(rig).await;
    let again = open_with_systemd(dir, Step::default(), systemd.clone(), "");
    tokio::spawn(again.engine.clone().run());
    let err = again
        .engine
        .submit(&alert("r3", json!([restart("web")])))
        .await
        .unwrap_err();
    assert_eq!(err.name, ErrorName::RateLimited);
    assert_eq!(systemd.count("restart web.service"), 3);
}

#[tokio::test]
async fn the_limit_is_checked_again_just_before_a_restart() {
    // Two restarts accepted under burst 3, then the limit drops to 1: the
    // second finds one restart already made and is refused at apply.
    let rig = start_with(&["web.service"], "").await;
    let gate = Arc::new(Notify::new());
    rig.step.script("hold", vec![Outcome::Gate(gate.clone())]);
    rig.engine
        .submit(&alert("hold", json!([step_on("hold", "unit:web.service")])))
        .await
        .unwrap();
    let (first, _) = rig
        .engine
        .submit(&alert("a", json!([restart("web")])))
        .await
        .unwrap();
    let (second, _) = rig
        .engine
        .submit(&alert("b", json!([restart("web")])))
        .await
        .unwrap();
    let mut lower = (*rig.engine.config()).clone();
    lower.restart.burst = 1;
    rig.engine.reload(lower).await;
    gate.notify_one();
    assert_eq!(
        wait_finished(&rig.engine, &first).await["status"],
        "success"
    );
    let plan = wait_finished(&rig.engine, &second).await;
    assert_eq!(plan["status"], "failed");
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("RateLimited: unit:web.service already has 1 restart(s)"),
        "{error}"
    );
    assert_eq!(rig.systemd.count("restart web.service"), 1);
}

#[tokio::test]
async fn a_throttle_is_undone_to_the_exact_previous_values_when_its_time_is_up() {
    let rig = start_with(&["web.service"], "").await;
    let before = antibody::sys::systemd::ResourceLimits {
        cpu_quota_per_sec_usec: 500_000,
        memory_high: 1 << 30,
        io_weight: 50,
    };
    rig.systemd
        .units
        .lock()
        .unwrap()
        .get_mut("web.service")
        .unwrap()
        .limits = before;
    let (id, plan) = run_to_end(&rig, "hog", json!([throttle("web.service", 1)])).await;
    assert_eq!(plan["status"], "success");
    assert_eq!(
        rig.systemd
            .unit("web.service")
            .limits
            .cpu_quota_per_sec_usec,
        200_000
    );
    let summary = plan["log"].to_string();
    assert!(
        summary.contains("CPUQuotaPerSecUSec: 500000 -> 200000"),
        "{summary}"
    );
    wait_reverted(&rig, &id, "the timed revert").await;
    assert_eq!(rig.systemd.unit("web.service").limits, before);
    assert_eq!(
        rig.systemd.calls(),
        [
            "set web.service 200000/1073741824/10",
            "set web.service 500000/1073741824/50"
        ]
    );
}

#[tokio::test]
async fn a_rollback_restores_a_throttle_early() {
    let rig = start_with(&["web.service"], "").await;
    let (id, _) = rig
        .engine
        .submit(&alert(
            "hog",
            json!([{"type": "throttle_entity", "entity": "unit:web.service", "seconds": 3600,
                    "cpu_percent": 5, "memory_high": "256M"}]),
        ))
        .await
        .unwrap();
    wait_finished(&rig.engine, &id).await;
    let throttled = rig.systemd.unit("web.service").limits;
    assert_eq!(
        (throttled.cpu_quota_per_sec_usec, throttled.memory_high),
        (50_000, 256 << 20)
    );
    rig.engine.rollback(&id, "test").await.unwrap();
    wait_reverted(&rig, &id, "the rollback").await;
    assert_eq!(rig.systemd.unit("web.service").limits, UNLIMITED);
}

/// A ledger as an agent leaves it when SIGKILLed after recording that a
/// throttle starts (with the limits it found) and before recording its
/// outcome; `changed` says whether the limits had been set by then.
async fn crashed_mid_throttle(changed: bool) -> (tempfile::TempDir, Arc<FakeSystemd>) {
    let dir = tempfile::tempdir().unwrap();
    let before = json!({"CPUQuotaPerSecUSec": 700_000u64, "MemoryHigh": u64::MAX, "IOWeight": 100});
    let seed = PlanSeed {
        id: "p".into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        source: antibody::plan::Source::Manual,
        severity: antibody::plan::Severity::High,
        description: "crash".into(),
        alert_sha256: "hash-p".into(),
        context: None,
        playbook: None,
        callback: false,
        actions: vec![antibody::plan::ActionSeed {
            kind: "throttle_entity".into(),
            params: json!({"entity": "unit:web.service", "seconds": 1, "cpu_percent": 20}),
            targets: vec!["unit:web.service".into()],
            reversible: true,
        }],
    };
    let events = vec![
        (Some("p"), Event::PlanCreated { plan: seed }),
        (Some("p"), Event::PlanStarted {}),
        (
            Some("p"),
            Event::ActionStarted {
                index: 0,
                attempt: 1,
                prepared: Some(before),
            },
        ),
    ];
    write_ledger(dir.path(), events).await;
    let systemd = Arc::new(FakeSystemd::with_units(&["web.service"]));
    systemd
        .units
        .lock()
        .unwrap()
        .get_mut("web.service")
        .unwrap()
        .limits = antibody::sys::systemd::ResourceLimits {
        cpu_quota_per_sec_usec: if changed { 200_000 } else { 700_000 },
        memory_high: u64::MAX,
        io_weight: if changed { 10 } else { 100 },
    };
    (dir, systemd)
}

/// Starts the agent again on [`crashed_mid_throttle`]'s ledger and waits
/// until the throttle has been put back.
async fn restart_and_wait_for_the_revert(changed: bool) -> (Rig, Arc<FakeSystemd>) {
    let (dir, systemd) = crashed_mid_throttle(changed).await;
    let rig = open_with_systemd(dir, Step::default(), systemd.clone(), "");
    rig.engine.settle_in_flight().await;
    tokio::spawn(rig.engine.clone().run());
    wait_for(
        || rig.engine.get_plan("p").unwrap()["actions"][0]["state"] == "reverted",
        "the throttle's revert after the restart",
    )
    .await;
    (rig, systemd)
}

#[tokio::test]
async fn after_a_crash_a_throttle_in_force_is_still_undone_to_the_recorded_values() {
    let (rig, systemd) = restart_and_wait_for_the_revert(true).await;
    let limits = systemd.unit("web.service").limits;
    assert_eq!(
        (limits.cpu_quota_per_sec_usec, limits.io_weight),
        (700_000, 100)
    );
    // Recovered, not applied a second time.
    assert_eq!(
        systemd.calls(),
        ["set web.service 700000/18446744073709551615/100"]
    );
    let kinds = ledger_kinds(&rig);
    assert_eq!(kinds.iter().filter(|k| *k == "action_recovered").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "action_reverted").count(), 1);
}

#[tokio::test]
async fn after_a_crash_before_the_change_the_throttle_is_applied_afresh() {
    let (_rig, systemd) = restart_and_wait_for_the_revert(false).await;
    assert_eq!(
        systemd.calls(),
        [
            "set web.service 200000/18446744073709551615/10",
            "set web.service 700000/18446744073709551615/100"
        ]
    );
}

#[tokio::test]
async fn dry_run_shows_the_unit_and_each_property_before_and_after() {
    let rig = start_with(&["web.service"], "").await;
    let preview = rig
        .engine
        .dry_run(&alert(
            "preview",
            json!([restart("web"), throttle("web.service", 60)]),
        ))
        .await
        .unwrap();
    let restart = &preview["actions"][0]["change"];
    assert_eq!(restart["current"]["active_state"], "active");
    assert_eq!(restart["current"]["invocation_id"], format!("{:032x}", 1));
    let throttle = &preview["actions"][1]["change"];
    assert_eq!(
        throttle["changes"],
        json!([
            "CPUQuotaPerSecUSec: infinity -> 200000",
            "IOWeight: [not set] -> 10"
        ])
    );
    assert!(rig.systemd.calls().is_empty(), "a dry run changes nothing");
}

/// The log says what systemd holds after the change, and names what it
/// did not take; that is not drift afterwards.
#[tokio::test]
async fn a_property_the_unit_does_not_take_is_said_and_is_not_drift() {
    let rig = start_with(&["web.service"], "").await;
    rig.systemd
        .keeps_io_weight
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (_, plan) = run_to_end(&rig, "hog", json!([throttle("web.service", 60)])).await;
    assert_eq!(plan["status"], "success");
    let log = plan["log"].to_string();
    assert!(
        log.contains("throttled web.service for 60 s (CPUQuotaPerSecUSec: infinity -> 200000); systemd did not take: IOWeight asked 10, holds [not set]"),
        "{log}"
    );
    rig.engine.reconcile_units().await;
    assert!(ledger_payloads(&rig, "unit_drift").is_empty());
}

#[tokio::test]
async fn an_alias_of_a_protected_unit_is_refused_at_apply_and_nothing_is_changed() {
    // No unit file on this machine makes `web-alias` an alias: only systemd
    // (here its fake) knows, so validation lets it through and apply must not.
    let rig = start_with(&["web-alias.service"], "").await;
    rig.systemd.names.lock().unwrap().insert(
        "web-alias.service".into(),
        vec!["ssh.service".into(), "web-alias.service".into()],
    );
    for action in [restart("web-alias"), throttle("web-alias.service", 30)] {
        let (_, plan) = run_to_end(&rig, &action.to_string(), json!([action])).await;
        assert_eq!(plan["status"], "failed", "{plan}");
        let error = plan["actions"][0]["error"].as_str().unwrap();
        assert_eq!(
            error,
            "refused at apply: web-alias.service is another name of ssh.service: \
             ssh.service keeps the host reachable or running and is always protected"
        );
        assert_eq!(plan["actions"][0]["attempts"], 1);
    }
    assert!(rig.systemd.calls().is_empty(), "{:?}", rig.systemd.calls());
}

#[tokio::test]
async fn what_systemd_reports_about_a_unit_is_guarded_again_at_apply() {
    // Each unit passes validation by its name; what systemd says about it
    // just before the change must stop the plan with nothing changed.
    let rig = start_with(
        &[
            "refusing.service",
            "fileless.service",
            "in-session.service",
            "alias.service",
        ],
        "[restart]\nallowed_units = [\"*i*.service\"]\n",
    )
    .await;
    let facts = |unit: &str| antibody::sys::systemd::UnitFacts {
        id: unit.into(),
        names: vec![unit.into()],
        load_state: "loaded".into(),
        fragment_path: format!("/etc/systemd/system/{unit}"),
        refuse_manual_start: false,
        refuse_manual_stop: false,
        slice: "system.slice".into(),
    };
    let mut refusing = facts("refusing.service");
    refusing.refuse_manual_stop = true;
    let mut fileless = facts("fileless.service");
    fileless.fragment_path.clear();
    let mut in_session = facts("in-session.service");
    in_session.slice = "user-1000.slice".into();
    // An alias whose unit allowed_units does not allow.
    let mut alias = facts("alias.service");
    alias.id = "vael.service".into();
    alias.names = vec!["vael.service".into(), "alias.service".into()];
    let expected = [
        (
            refusing,
            "refuses manual start or stop (RefuseManualStart=no, RefuseManualStop=yes)",
        ),
        (fileless, "is not loaded from a unit file (no FragmentPath)"),
        (in_session, "runs in user-1000.slice, under user.slice"),
        (
            alias,
            "alias.service is an alias of vael.service: name the unit itself",
        ),
    ];
    for (facts, why) in expected {
        let unit = facts.names.last().unwrap().clone();
        rig.systemd
            .facts
            .lock()
            .unwrap()
            .insert(unit.clone(), facts);
        for action in [restart(&unit), throttle(&unit, 30)] {
            let (_, plan) = run_to_end(&rig, &action.to_string(), json!([action])).await;
            assert_eq!(plan["status"], "failed", "{plan}");
            let error = plan["actions"][0]["error"].as_str().unwrap();
            assert!(error.starts_with("refused at apply: "), "{error}");
            assert!(error.contains(why), "{error}");
        }
    }
    assert!(rig.systemd.calls().is_empty(), "{:?}", rig.systemd.calls());
}

#[tokio::test]
async fn a_throttle_over_one_whose_end_is_still_being_retried_restores_the_units_own_limits() {
    let rig = start_with(&["web.service"], "").await;
    let (a, _) = run_to_end(&rig, "a", json!([throttle("web.service", 1)])).await;
    // A's end fails once (systemd out of reach) and is retried; B comes
    // meanwhile, finds A's limits on the unit, and must not take them for
    // the unit's own. (B's own first set fails too and is retried.)
    *rig.systemd.failing_sets.lock().unwrap() = 2;
    wait_for(
        || !ledger_payloads(&rig, "action_revert_failed").is_empty(),
        "A's end to fail once",
    )
    .await;
    let b_throttle = json!({"type": "throttle_entity", "entity": "web.service", "seconds": 2, "cpu_percent": 50});
    let (b, plan) = run_to_end(&rig, "b", json!([b_throttle])).await;
    assert_eq!(plan["status"], "success", "{plan}");
    wait_reverted(&rig, &a, "A's end, retried").await;
    wait_reverted(&rig, &b, "B's end").await;
    assert_eq!(rig.systemd.unit("web.service").limits, UNLIMITED);
}

fn notices_containing(rig: &Rig, text: &str) -> usize {
    let sent = rig.notifier.0.lock().unwrap();
    sent.iter()
        .filter(|(_, n)| n.message.contains(text))
        .count()
}

#[tokio::test]
async fn a_timed_revert_that_cannot_reach_systemd_is_tried_until_it_can() {
    let rig = start_with(&["web.service"], "").await;
    let (id, _) = run_to_end(&rig, "hog", json!([throttle("web.service", 1)])).await;
    // More failures than retry.max_attempts (4): the end of a throttle is
    // never given up while the agent runs (back-off 0.1, 0.2, … 1.6 s).
    *rig.systemd.failing_sets.lock().unwrap() = 5;
    wait_reverted(&rig, &id, "the timed revert, past six failures").await;
    assert_eq!(rig.systemd.unit("web.service").limits, UNLIMITED);
    assert_eq!(rig.systemd.count("set web.service unreachable"), 5);
    let failures = ledger_payloads(&rig, "action_revert_failed");
    assert_eq!(failures.len(), 5);
    assert!(failures.iter().all(|f| f["retry_in_ms"].as_u64().is_some()));
    assert_eq!(ledger_payloads(&rig, "action_reverted").len(), 1);
    // Told once, when the revert had failed retry.max_attempts times (both
    // built-in channels).
    let told = "its revert failed 4 time(s), last with: systemd is out of reach (fake); the agent keeps trying";
    wait_for(
        || notices_containing(&rig, told) == 2,
        "the operator notices",
    )
    .await;
    assert_eq!(notices_containing(&rig, "its revert failed"), 2);
}

#[tokio::test]
async fn a_rollback_revert_is_retried_then_left_to_the_next_rollback() {
    let rig = start_with(&["web.service"], "").await;
    let (id, _) = run_to_end(&rig, "hog", json!([throttle("web.service", 3600)])).await;
    // One failure passes; then more than the attempts a rollback gets.
    *rig.systemd.failing_sets.lock().unwrap() = 1;
    rig.engine.rollback(&id, "test").await.unwrap();
    wait_reverted(&rig, &id, "the rollback after one failure").await;
    assert_eq!(rig.systemd.unit("web.service").limits, UNLIMITED);

    let (id, _) = run_to_end(&rig, "hog again", json!([throttle("web.service", 3600)])).await;
    *rig.systemd.failing_sets.lock().unwrap() = 5;
    rig.engine.rollback(&id, "test").await.unwrap();
    wait_for(
        || rig.engine.get_plan(&id).unwrap()["actions"][0]["revert_failed"] == true,
        "the rollback to give up",
    )
    .await;
    let plan = rig.engine.get_plan(&id).unwrap();
    assert_eq!(plan["actions"][0]["state"], "applied");
    assert_eq!(plan["actions"][0]["revert_attempts"], 4);
    assert_ne!(rig.systemd.unit("web.service").limits, UNLIMITED);
    let told = format!("it will not be tried again until `antibodyctl rollback {id}`");
    wait_for(
        || notices_containing(&rig, &told) == 2,
        "the operator notices",
    )
    .await;
    // The next rollback starts afresh (one failure is left, then it works).
    rig.engine.rollback(&id, "test").await.unwrap();
    wait_reverted(&rig, &id, "the second rollback").await;
    assert_eq!(rig.systemd.unit("web.service").limits, UNLIMITED);
}

#[tokio::test]
async fn a_unit_throttle_changed_from_outside_is_recorded_once_and_left_as_found() {
    let rig = start_with(&["web.service"], "").await;
    let (id, _) = run_to_end(&rig, "hog", json!([throttle("web.service", 3600)])).await;
    rig.engine.reconcile_units().await;
    assert!(
        ledger_payloads(&rig, "unit_drift").is_empty(),
        "no drift yet"
    );
    // An operator lifts the CPU quota by hand.
    let set_by_hand = |cpu: u64| {
        let mut units = rig.systemd.units.lock().unwrap();
        units
            .get_mut("web.service")
            .unwrap()
            .limits
            .cpu_quota_per_sec_usec = cpu;
    };
    set_by_hand(800_000);
    rig.engine.reconcile_units().await;
    rig.engine.reconcile_units().await;
    let drifts = ledger_payloads(&rig, "unit_drift");
    assert_eq!(drifts.len(), 1, "recorded once: {drifts:?}");
    assert_eq!(drifts[0]["unit"], "web.service");
    assert_eq!(drifts[0]["expected"]["CPUQuotaPerSecUSec"], 200_000);
    assert_eq!(drifts[0]["found"]["CPUQuotaPerSecUSec"], 800_000);
    // Left as found: nothing was set again.
    assert_eq!(rig.systemd.count("set "), 1);
    assert_eq!(
        rig.systemd
            .unit("web.service")
            .limits
            .cpu_quota_per_sec_usec,
        800_000
    );
    // A further change is a further record; the plan's log tells it.
    set_by_hand(900_000);
    rig.engine.reconcile_units().await;
    assert_eq!(ledger_payloads(&rig, "unit_drift").len(), 2);
    let log = rig.engine.get_plan(&id).unwrap()["log"].to_string();
    assert!(
        log.contains("web.service's limits were changed from outside the agent"),
        "{log}"
    );
    // The rollback still restores the values from before the throttle.
    rig.engine.rollback(&id, "test").await.unwrap();
    wait_reverted(&rig, &id, "the rollback").await;
    assert_eq!(rig.systemd.unit("web.service").limits, UNLIMITED);
    rig.engine.reconcile_units().await;
    assert_eq!(
        ledger_payloads(&rig, "unit_drift").len(),
        2,
        "no hold, no drift"
    );
}

#[tokio::test]
async fn overlapping_throttles_of_one_unit_end_with_the_limits_from_before_the_first() {
    let rig = start_with(&["web.service"], "").await;
    let cpu = |rig: &Rig| {
        rig.systemd
            .unit("web.service")
            .limits
            .cpu_quota_per_sec_usec
    };
    let gentle = json!({"type": "throttle_entity", "entity": "web.service", "seconds": 3600});
    let harsh = json!({"type": "throttle_entity", "entity": "web.service", "seconds": 3600, "cpu_percent": 5});
    for first_to_end in ["first", "second"] {
        let (a, _) = run_to_end(&rig, &format!("a {first_to_end}"), json!([gentle])).await;
        let (b, plan_b) = run_to_end(&rig, &format!("b {first_to_end}"), json!([harsh])).await;
        assert_eq!(cpu(&rig), 50_000);
        // B found A's limits; its record also says what was there before A.
        let changes = &plan_b["actions"][0]["changes"];
        assert_eq!(changes["before"]["CPUQuotaPerSecUSec"], 200_000);
        assert_eq!(changes["base"]["CPUQuotaPerSecUSec"], u64::MAX);
        let (early, late) = if first_to_end == "first" {
            (a, b)
        } else {
            (b, a)
        };
        rig.engine.rollback(&early, "test").await.unwrap();
        wait_reverted(&rig, &early, "the first end").await;
        // The other throttle still holds: its limits are what the unit has.
        let held = if first_to_end == "first" {
            50_000
        } else {
            200_000
        };
        assert_eq!(cpu(&rig), held, "{first_to_end} ended first");
        rig.engine.rollback(&late, "test").await.unwrap();
        wait_reverted(&rig, &late, "the last end").await;
        assert_eq!(
            rig.systemd.unit("web.service").limits,
            UNLIMITED,
            "{first_to_end}"
        );
        let log = rig.engine.get_plan(&early).unwrap()["log"].to_string();
        if first_to_end == "first" {
            assert!(
                log.contains("still throttles web.service: its limits stay"),
                "{log}"
            );
        }
    }
}

#[tokio::test]
async fn two_throttles_of_one_unit_ending_together_leave_it_unthrottled() {
    let rig = start_with(&["web.service"], "").await;
    let a = json!({"type": "throttle_entity", "entity": "web.service", "seconds": 1});
    let b =
        json!({"type": "throttle_entity", "entity": "web.service", "seconds": 1, "cpu_percent": 5});
    let (a, _) = run_to_end(&rig, "a", json!([a])).await;
    let (b, _) = run_to_end(&rig, "b", json!([b])).await;
    wait_reverted(&rig, &a, "a's end").await;
    wait_reverted(&rig, &b, "b's end").await;
    assert_eq!(rig.systemd.unit("web.service").limits, UNLIMITED);
}

/// A feedback loop: the watchdog sees the restart it asked for and raises
/// its alert again, at once, every time a plan ends. The same alert is the
/// same plan (dedupe): one restart however often it comes back. A watchdog
/// that stamps each alert (a counter in the description) makes new plans,
/// and the flap limit ends the loop at three restarts in the window.
#[tokio::test]
async fn a_restart_that_raises_its_own_alert_again_does_not_loop() {
    let rig = start_with(&["web.service", "db.service"], "").await;
    let same = alert("web stalled", json!([restart("web")]));
    let (first, created) = rig.engine.submit(&same).await.unwrap();
    assert!(created);
    for _ in 0..50 {
        wait_finished(&rig.engine, &first).await;
        let (again, created) = rig.engine.submit(&same).await.unwrap();
        assert_eq!((again.as_str(), created), (first.as_str(), false));
    }
    assert_eq!(rig.systemd.count("restart db.service"), 0);

    let mut refused = None;
    for n in 0..50 {
        match rig
            .engine
            .submit(&alert(&format!("db stalled #{n}"), json!([restart("db")])))
            .await
        {
            Ok((id, _)) => {
                wait_finished(&rig.engine, &id).await;
            }
            Err(e) => {
                refused = Some((n, e));
                break;
            }
        }
    }
    let (n, err) = refused.expect("the flap limit ends the loop");
    assert_eq!(
        (n, err.name),
        (3, ErrorName::RateLimited),
        "{}",
        err.message
    );
    assert_eq!(rig.systemd.count("restart db.service"), 3);
    assert_eq!(rig.systemd.count("restart web.service"), 1);
}
