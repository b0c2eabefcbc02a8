//! T2: call backs (issue 15) from the real `antibodyd` on a private bus to
//! a real HTTP server on 127.0.0.1: delivered with the token, a 503 tried
//! again until delivered, one pending across a SIGKILL delivered by the
//! next start, none without `alert_id` or a `[callbacks.SOURCE]`. Needs
//! root (the agent's private bus); fails without it.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;
use serde_json::{json, Value};
use support::hooks::{HookServer, Reply};
use support::*;

const TOKEN: &str = "nexus-s3cret";

/// The agent's config: NEXUS is called back at `server`, with a token;
/// failed attempts are tried again quickly.
fn callback_config(home: &Path, server: &HookServer) -> String {
    let token_file = home.join("nexus.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    format!(
        "[retry]\nbase_ms = 50\n[callbacks.NEXUS]\nurl = \"http://127.0.0.1:{}/alert/{{alert_id}}\"\ntoken_file = \"{}\"\ntimeout_secs = 2\n",
        server.port,
        token_file.display()
    )
}

fn notice_alert(source: &str, alert_id: Option<&str>, message: &str) -> String {
    let mut alert = json!({"source": source, "severity": "high", "description": message,
        "actions": [{"type": "notify_operator", "channel": "journal", "message": message}]});
    if let Some(id) = alert_id {
        alert["context"] = json!({"alert_id": id});
    }
    alert.to_string()
}

async fn submit(p: &AntibodyProxy<'_>, alert: &str) -> String {
    let (id, created) = p.submit_alert(alert).await.expect("SubmitAlert");
    assert!(created);
    id
}

async fn plan(p: &AntibodyProxy<'_>, id: &str) -> Value {
    serde_json::from_str(&p.get_plan(id).await.expect("GetPlan")).unwrap()
}

async fn wait_plan(p: &AntibodyProxy<'_>, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let plan = plan(p, id).await;
        if done(&plan) {
            return plan;
        }
        assert!(Instant::now() < deadline, "plan {id}: {plan:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn records(home: &Path, kind: &str, plan_id: &str) -> Vec<Value> {
    ledger_records_in(&home.join("ledger"))
        .into_iter()
        .filter(|r| r["kind"] == kind && r["plan_id"] == plan_id)
        .map(|r| r["payload"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_plan_is_called_back_and_a_503_is_tried_again_until_delivered() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let server = HookServer::scripted(vec![Reply::Status(503), Reply::Status(503)]);
    let agent = Agent::start(&bus, home.path(), &callback_config(home.path(), &server));
    let conn = bus.connect().await;
    let p = AntibodyProxy::new(&conn).await.unwrap();

    let id = submit(&p, &notice_alert("NEXUS", Some("NX-1:x"), "called back")).await;
    let hooks = server.wait_hooks_for(&id, 3);
    let done = wait_plan(&p, &id, |plan| plan["callback"]["state"] == "delivered").await;
    assert_eq!(done["callback"]["attempts"], 3, "{done:#}");
    assert_eq!(done["callback"]["http_status"], 200, "{done:#}");
    for hook in &hooks {
        assert!(
            hook.request_line
                .starts_with("PATCH /alert/NX-1%3Ax HTTP/1.1"),
            "{hook:?}"
        );
        assert_eq!(
            hook.header("authorization").as_deref(),
            Some("Bearer nexus-s3cret")
        );
        assert_eq!(
            hook.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            hook.body,
            json!({"status": "resolved", "plan_id": id, "alert_sha256": done["alert_sha256"],
                   "finished_at": done["finished_at"],
                   "actions": [{"type": "notify_operator", "state": "applied"}]}),
        );
    }
    let failed = records(home.path(), "callback_failed", &id);
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (n, f) in failed.iter().enumerate() {
        assert_eq!(f["attempt"], n as u64 + 1, "{f}");
        assert_eq!(f["http_status"], 503, "{f}");
        assert!(f["retry_in_ms"].as_u64().is_some(), "{f}");
    }
    assert_eq!(
        records(home.path(), "callback_delivered", &id),
        vec![json!({"attempt": 3, "http_status": 200})]
    );
    // The operator's view of it.
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_antibodyctl"))
        .args(["plan", &id])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("  alert id:    NX-1:x\n"), "{shown}");
    assert!(
        shown.contains("  call back:   delivered, 3 attempt(s), last answer HTTP 200\n"),
        "{shown}"
    );

    // No alert_id, or a source without [callbacks.…]: nothing is sent.
    let no_id = submit(&p, &notice_alert("NEXUS", None, "no alert id")).await;
    let watchdog = submit(&p, &notice_alert("Watchdog", Some("W-1"), "no callback")).await;
    for quiet in [&no_id, &watchdog] {
        let plan = wait_plan(&p, quiet, |plan| plan["status"] == "success").await;
        assert!(plan.get("callback").is_none(), "{plan:#}");
    }
    // A later plan's call back arrives, and nothing came for those two.
    let last = submit(&p, &notice_alert("NEXUS", Some("NX-2"), "last")).await;
    server.wait_hooks_for(&last, 1);
    assert_eq!(server.hooks().len(), 4, "{:?}", server.hooks());
    let (ok, report) = p.verify_ledger().await.unwrap();
    assert!(ok, "{report}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_back_pending_at_a_sigkill_is_delivered_after_the_restart() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let busy = HookServer::scripted(vec![Reply::Status(503); 10_000]);
    let port = busy.port;
    let config = callback_config(home.path(), &busy);
    let mut agent = Agent::start(&bus, home.path(), &config);
    let id = {
        let conn = bus.connect().await;
        let p = AntibodyProxy::new(&conn).await.unwrap();
        let id = submit(&p, &notice_alert("NEXUS", Some("NX-9"), "pending")).await;
        wait_plan(&p, &id, |plan| {
            plan["callback"]["attempts"].as_u64() >= Some(1)
        })
        .await;
        id
    };
    agent.kill9();
    drop(busy);

    // The receiver is back, on the same port, and takes it.
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the same port again");
    let back = HookServer::scripted_on(listener, Vec::new());
    let agent = Agent::start(&bus, home.path(), &config);
    let conn = bus.connect().await;
    let p = AntibodyProxy::new(&conn).await.unwrap();
    let done = wait_plan(&p, &id, |plan| plan["callback"]["state"] == "delivered").await;
    let failed = records(home.path(), "callback_failed", &id).len() as u64;
    assert!(failed >= 1);
    assert_eq!(done["callback"]["attempts"], failed + 1, "{done:#}");
    let hooks = back.hooks_for(&id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].body["status"], "resolved");
    assert_eq!(
        records(home.path(), "callback_delivered", &id),
        vec![json!({"attempt": failed + 1, "http_status": 200})]
    );
    drop(agent);
}
