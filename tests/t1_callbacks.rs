//! T1: call backs to alert sources (issue 15): a finished plan whose alert
//! carried `context.alert_id` tells its source, at least once, across
//! restarts; retried while the receiver is away or busy, given up when it
//! refuses for good; nothing sent without an `alert_id` or a
//! `[callbacks.SOURCE]`. On the engine with a recording HTTP client; the
//! real client against a real server is in t2_callbacks.rs.

mod rig;

use std::sync::Arc;
use std::time::Duration;

use rig::*;

const NEXUS_CALLBACK: &str = r#"
[callbacks.NEXUS]
url = "https://nexus.example/alert/{alert_id}"
"#;

fn started(dir: tempfile::TempDir, http: Arc<FakeHttp>, callback_loop: bool) -> Rig {
    let rig = open_with(
        dir,
        Step::default(),
        Arc::new(FakeSystemd::default()),
        http,
        NEXUS_CALLBACK,
    );
    tokio::spawn(rig.engine.clone().run());
    if callback_loop {
        tokio::spawn(rig.engine.clone().callback_loop());
    }
    rig
}

async fn stopped(rig: Rig) -> tempfile::TempDir {
    rig.engine.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    rig.dir
}

fn nexus_alert(description: &str, alert_id: Option<&str>, actions: Value) -> String {
    let mut alert = json!({"source": "NEXUS", "severity": "high",
                           "description": description, "actions": actions});
    if let Some(id) = alert_id {
        alert["context"] = json!({"alert_id": id});
    }
    alert.to_string()
}

async fn wait_callback_state(rig: &Rig, id: &str, state: &str) -> Value {
    let mut plan = Value::Null;
    for _ in 0..1000 {
        plan = rig.engine.get_plan(id).unwrap();
        if plan["callback"]["state"] == state {
            return plan;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the call back of plan {id} is not {state}: {plan:#}");
}

fn ledger_kinds(rig: &Rig, kind: &str) -> Vec<Value> {
    let mut found = Vec::new();
    ledger::scan(&rig.dir.path().join("ledger"), |r| {
        if r.kind == kind {
            found.push(r.payload.clone());
        }
    })
    .unwrap();
    found
}

#[tokio::test]
async fn a_finished_plan_tells_its_source_once_with_its_outcome() {
    let http = Arc::new(FakeHttp::default());
    let rig = started(tempfile::tempdir().unwrap(), http.clone(), true);
    let (id, _) = rig
        .engine
        .submit(&nexus_alert("ok", Some("NX-7:a.b"), json!([step("a")])))
        .await
        .unwrap();
    let plan = wait_callback_state(&rig, &id, "delivered").await;
    assert_eq!(plan["callback"]["attempts"], 1, "{plan}");
    assert_eq!(plan["callback"]["http_status"], 200, "{plan}");
    let requests = http.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.method, "PATCH");
    // The id is one path segment, whatever it holds.
    assert_eq!(request.url, "https://nexus.example/alert/NX-7%3Aa.b");
    assert_eq!(request.bearer, None);
    assert_eq!(request.timeout_secs, 5);
    assert_eq!(
        request.body,
        json!({"status": "resolved", "plan_id": id, "alert_sha256": plan["alert_sha256"],
               "finished_at": plan["finished_at"],
               "actions": [{"type": "step", "state": "applied"}]})
    );
    let delivered = ledger_kinds(&rig, "callback_delivered");
    assert_eq!(delivered, vec![json!({"attempt": 1, "http_status": 200})]);

    // A failed plan says so; each plan is called back once.
    rig.step.script("b", vec![Outcome::Permanent]);
    let (failed, _) = rig
        .engine
        .submit(&nexus_alert(
            "fails",
            Some("NX-8"),
            json!([step("a2"), step("b")]),
        ))
        .await
        .unwrap();
    wait_callback_state(&rig, &failed, "delivered").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = http.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].body["status"], "failed");
    assert_eq!(
        requests[1].body["actions"],
        json!([{"type": "step", "state": "reverted"}, {"type": "step", "state": "failed"}])
    );
}

#[tokio::test]
async fn an_away_or_busy_receiver_is_tried_again_until_it_takes_it() {
    let http = Arc::new(FakeHttp::default());
    http.script(vec![
        Ok(503),
        Err("PATCH https://nexus.example/…: connection refused".into()),
        Ok(429),
        Ok(408),
        Ok(204),
    ]);
    let rig = started(tempfile::tempdir().unwrap(), http.clone(), true);
    let (id, _) = rig
        .engine
        .submit(&nexus_alert("retry", Some("NX-1"), json!([step("a")])))
        .await
        .unwrap();
    let plan = wait_callback_state(&rig, &id, "delivered").await;
    assert_eq!(plan["callback"]["attempts"], 5, "{plan}");
    assert_eq!(plan["callback"]["http_status"], 204, "{plan}");
    assert_eq!(http.requests().len(), 5);
    let failed = ledger_kinds(&rig, "callback_failed");
    let statuses: Vec<Value> = failed.iter().map(|f| f["http_status"].clone()).collect();
    assert_eq!(
        statuses,
        vec![json!(503), Value::Null, json!(429), json!(408)]
    );
    for (n, f) in failed.iter().enumerate() {
        assert_eq!(f["attempt"], n as u64 + 1, "{f}");
        assert!(f["retry_in_ms"].as_u64().unwrap() >= 75, "{f}");
    }
    assert_eq!(
        failed[1]["error"],
        "PATCH https://nexus.example/…: connection refused"
    );
    assert_eq!(
        ledger_kinds(&rig, "callback_delivered"),
        vec![json!({"attempt": 5, "http_status": 204})]
    );
}

#[tokio::test]
async fn a_lasting_refusal_is_given_up_recorded_and_told_to_the_operator() {
    let http = Arc::new(FakeHttp::default());
    http.script(vec![Ok(404)]);
    let rig = started(tempfile::tempdir().unwrap(), http.clone(), true);
    let (id, _) = rig
        .engine
        .submit(&nexus_alert("refused", Some("NX-404"), json!([step("a")])))
        .await
        .unwrap();
    let plan = wait_callback_state(&rig, &id, "given_up").await;
    assert_eq!(plan["callback"]["http_status"], 404, "{plan}");
    assert_eq!(
        ledger_kinds(&rig, "callback_failed"),
        vec![json!({"attempt": 1, "http_status": 404, "error": "HTTP 404"})]
    );
    wait_for(
        || {
            rig.notifier
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|(_, n)| n.message.contains("given up") && n.message.contains("NX-404"))
        },
        "the operator notice",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http.requests().len(), 1, "a refusal is not tried again");
}

#[tokio::test]
async fn without_an_alert_id_or_a_callback_for_the_source_nothing_is_sent() {
    let http = Arc::new(FakeHttp::default());
    let rig = started(tempfile::tempdir().unwrap(), http.clone(), true);
    let (no_id, _) = rig
        .engine
        .submit(&nexus_alert("no id", None, json!([step("a")])))
        .await
        .unwrap();
    let watchdog = json!({"source": "Watchdog", "severity": "high", "description": "w",
                          "context": {"alert_id": "W-1"}, "actions": [step("b")]});
    let (other_source, _) = rig.engine.submit(&watchdog.to_string()).await.unwrap();
    for id in [&no_id, &other_source] {
        let plan = wait_finished(&rig.engine, id).await;
        assert!(plan.get("callback").is_none(), "{plan}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(http.requests().is_empty(), "{:?}", http.requests());

    // DryRun says whether a call back would be made, and where (the URL
    // as its scheme and host only: its path may carry a token).
    let would = rig
        .engine
        .dry_run(&nexus_alert("dry", Some("NX-3"), json!([step("c")])))
        .await
        .unwrap();
    assert_eq!(would["callback"]["method"], "PATCH", "{would}");
    assert_eq!(
        would["callback"]["url"], "https://nexus.example/…",
        "{would}"
    );
    assert_eq!(would["plan"]["callback"], true, "{would}");
    let would_not = rig
        .engine
        .dry_run(&nexus_alert("dry", None, json!([step("c")])))
        .await
        .unwrap();
    assert_eq!(would_not["callback"], Value::Null, "{would_not}");
}

#[tokio::test]
async fn a_call_back_owed_at_a_stop_is_sent_by_the_next_start() {
    // The plan finishes while nothing sends call backs (an agent killed
    // right after the plan's last record), then a start sends it.
    let http = Arc::new(FakeHttp::default());
    let rig = started(tempfile::tempdir().unwrap(), http.clone(), false);
    let (first, _) = rig
        .engine
        .submit(&nexus_alert("first", Some("NX-1"), json!([step("a")])))
        .await
        .unwrap();
    let plan = wait_finished(&rig.engine, &first).await;
    assert_eq!(plan["callback"]["state"], "pending", "{plan}");
    let dir = stopped(rig).await;

    // At this start the receiver is busy: attempts fail until the stop.
    let busy = Arc::new(FakeHttp::default());
    busy.script(vec![Ok(503); 1000]);
    let rig = started(dir, busy.clone(), true);
    wait_for(
        || rig.engine.get_plan(&first).unwrap()["callback"]["attempts"].as_u64() >= Some(1),
        "a failed attempt recorded",
    )
    .await;
    let dir = stopped(rig).await;

    // The next start tries again, and counts on from the attempts recorded.
    let http = Arc::new(FakeHttp::default());
    let rig = started(dir, http.clone(), true);
    let plan = wait_callback_state(&rig, &first, "delivered").await;
    let failed = ledger_kinds(&rig, "callback_failed").len() as u64;
    assert!(failed >= 1);
    assert_eq!(plan["callback"]["attempts"], failed + 1, "{plan}");
    assert_eq!(http.requests().len(), 1);
}

#[tokio::test]
async fn while_a_receiver_is_away_only_one_plan_tries_it_again() {
    let http = Arc::new(FakeHttp::default());
    let away: Vec<Result<u16, String>> = vec![Ok(503); 5];
    http.script(away);
    let rig = started(tempfile::tempdir().unwrap(), http.clone(), true);
    let (first, _) = rig
        .engine
        .submit(&nexus_alert("first", Some("NX-1"), json!([step("a")])))
        .await
        .unwrap();
    wait_for(
        || ledger_kinds(&rig, "callback_failed").len() == 1,
        "the first failure",
    )
    .await;
    // (The loop takes the attempt's outcome in just after its record.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut others = Vec::new();
    for n in 0..4 {
        let (id, _) = rig
            .engine
            .submit(&nexus_alert(
                "other",
                Some(&format!("NX-O{n}")),
                json!([step(&format!("o{n}"))]),
            ))
            .await
            .unwrap();
        others.push(id);
    }
    let plan = wait_callback_state(&rig, &first, "delivered").await;
    assert_eq!(plan["callback"]["attempts"], 6, "{plan}");
    for id in &others {
        let plan = wait_callback_state(&rig, id, "delivered").await;
        // They waited for the first plan's retries instead of making their own.
        assert_eq!(plan["callback"]["attempts"], 1, "{plan}");
    }
    assert_eq!(ledger_kinds(&rig, "callback_failed").len(), 5);
    assert_eq!(http.requests().len(), 10);
}

#[tokio::test]
async fn a_receiver_that_fails_one_request_keeps_taking_the_others() {
    // A 500 for one alert says the receiver is there: the source's other
    // plans are not held back by it.
    let http = Arc::new(FakeHttp::default());
    http.answer_by(|r| r.url.ends_with("/NX-BAD").then_some(Ok(500)));
    let rig = started(tempfile::tempdir().unwrap(), http.clone(), true);
    let (bad, _) = rig
        .engine
        .submit(&nexus_alert("bad", Some("NX-BAD"), json!([step("a")])))
        .await
        .unwrap();
    wait_for(
        || ledger_kinds(&rig, "callback_failed").len() == 1,
        "the failure",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (good, _) = rig
        .engine
        .submit(&nexus_alert("good", Some("NX-OK"), json!([step("b")])))
        .await
        .unwrap();
    let plan = wait_callback_state(&rig, &good, "delivered").await;
    assert_eq!(plan["callback"]["attempts"], 1, "{plan}");
    let still = rig.engine.get_plan(&bad).unwrap();
    assert_eq!(still["callback"]["state"], "pending", "{still}");
    assert_eq!(still["callback"]["http_status"], 500, "{still}");
}

#[tokio::test]
async fn only_root_and_the_named_submitters_make_plans_that_call_back() {
    let http = Arc::new(FakeHttp::default());
    let rig = open_with(
        tempfile::tempdir().unwrap(),
        Step::default(),
        Arc::new(FakeSystemd::default()),
        http.clone(),
        "[callbacks.NEXUS]\nurl = \"https://nexus.example/alert/{alert_id}\"\nsubmitters = [\"nobody\", \"4242\"]\n",
    );
    tokio::spawn(rig.engine.clone().run());
    // uid 1000 may submit, but not spend NEXUS's token on an alert id it
    // names: its plan is made, without a call back.
    let mut owed = Vec::new();
    for (n, uid) in [
        (0, Some(1000)),
        (1, Some(65534)),
        (2, Some(4242)),
        (3, None),
    ] {
        let alert = nexus_alert(
            &format!("a{n}"),
            Some(&format!("NX-{n}")),
            json!([step(&format!("s{n}"))]),
        );
        let (id, _) = rig.engine.submit_as(&alert, uid).await.unwrap();
        let plan = wait_finished(&rig.engine, &id).await;
        owed.push(plan.get("callback").is_some());
    }
    assert_eq!(
        owed,
        vec![false, true, true, true],
        "uid 1000, nobody, 4242, root"
    );

    // uid 1000 sending the IDS's alert first does not swallow the call
    // back: the trusted copy gets a plan of its own; an untrusted copy
    // after it is a duplicate as usual.
    let alert = nexus_alert("same", Some("NX-S"), json!([step("same")]));
    let (first, created) = rig.engine.submit_as(&alert, Some(1000)).await.unwrap();
    assert!(created);
    wait_finished(&rig.engine, &first).await;
    let (trusted, created) = rig.engine.submit(&alert).await.unwrap();
    assert!(created && trusted != first);
    let plan = wait_finished(&rig.engine, &trusted).await;
    assert!(plan.get("callback").is_some(), "{plan}");
    let (again, created) = rig.engine.submit_as(&alert, Some(1000)).await.unwrap();
    assert_eq!((again.as_str(), created), (trusted.as_str(), false));
}

#[tokio::test]
async fn a_call_back_is_given_up_once_it_is_older_than_give_up_after_secs() {
    let http = Arc::new(FakeHttp::default());
    http.script(vec![Ok(503); 1000]);
    let rig = open_with(
        tempfile::tempdir().unwrap(),
        Step::default(),
        Arc::new(FakeSystemd::default()),
        http.clone(),
        "[callbacks.NEXUS]\nurl = \"https://nexus.example/alert/{alert_id}\"\ngive_up_after_secs = 1\n",
    );
    tokio::spawn(rig.engine.clone().run());
    tokio::spawn(rig.engine.clone().callback_loop());
    let (id, _) = rig
        .engine
        .submit(&nexus_alert("old", Some("NX-OLD"), json!([step("a")])))
        .await
        .unwrap();
    let plan = wait_callback_state(&rig, &id, "given_up").await;
    let error = plan["callback"]["error"].as_str().unwrap();
    assert_eq!(
        error,
        "not delivered within give_up_after_secs = 1 of the plan's end"
    );
    let failed = ledger_kinds(&rig, "callback_failed");
    let last = failed.last().unwrap();
    assert!(
        last.get("retry_in_ms").is_none() && last.get("http_status").is_none(),
        "{last}"
    );
    // The give-up sent nothing: every request was an attempt that failed.
    assert_eq!(http.requests().len(), failed.len() - 1);
}
