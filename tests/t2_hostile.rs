//! T2: hostile callers over D-Bus. A real `antibodyd` on a private bus with
//! the shipped policy gets several hundred malformed or hostile calls:
//! wrong signatures, text that is not JSON, deep nesting, huge strings and
//! numbers, NULs, broken escapes, every field's edge values, path
//! traversal, protected targets in every spelling. (A raw NUL cannot be
//! sent at all: D-Bus strings exclude it, and the bus daemon drops a
//! client that tries; NULs reach the agent as JSON's `\u0000`.) Each must get a named
//! D-Bus error whose message says where; afterwards the agent is up and
//! healthy, no plan exists, nothing was applied and the ledger holds no
//! record for any of them.

mod support;

use serde_json::{json, Value};
use support::*;

const NAME: &str = "org.vael.Antibody";
const PATH: &str = "/org/vael/Antibody";

/// A valid alert with `field` set to `value` (or removed, for `None`).
fn with(field: &str, value: Option<Value>) -> String {
    let mut alert = base();
    match value {
        Some(v) => alert[field] = v,
        None => {
            alert.as_object_mut().unwrap().remove(field);
        }
    }
    alert.to_string()
}

fn base() -> Value {
    json!({"source": "Manual", "severity": "high", "description": "d",
           "actions": [{"type": "notify_operator", "channel": "journal", "message": "m"}]})
}

/// A valid alert whose one action is `action`.
fn action(action: Value) -> String {
    let mut alert = base();
    alert["actions"] = json!([action]);
    alert.to_string()
}

/// Each hostile alert text, with the D-Bus error it must get (a name of
/// `org.vael.Antibody.Error`, or two split by `|`) and the start of the
/// message (the field's path), where one is named. `root` is the one
/// directory `hot_patch` may touch; `root/app.conf` exists.
fn hostile_alerts(root: &str) -> Vec<(String, &'static str, &'static str)> {
    const INVALID: &str = "InvalidAlert";
    const UNKNOWN: &str = "UnknownAction";
    const PROTECTED: &str = "ProtectedTarget";
    // A path outside the allowed roots is protected; one that is no
    // absolute, plain path is invalid. Either is a refusal.
    const REFUSED_PATH: &str = "InvalidAlert|ProtectedTarget";
    let mut cases: Vec<(String, &str, &str)> = Vec::new();
    let mut add = |text: String, error: &'static str, path: &'static str| {
        cases.push((text, error, path));
    };

    // Not JSON, or not an object.
    for text in [
        "",
        " ",
        "{",
        "}",
        "[]",
        "null",
        "true",
        "1",
        "\"alert\"",
        "{'source':'Manual'}",
        "{\"source\":}",
        "{\"source\":\"Manual\",}",
        "\u{feff}{}",
        "{}{}",
        "{} trailing",
        "{\"a\":1",
        "\\u0000",
        "{\"source\":\"Manual\\u0000\"}",
        "NaN",
        "{\"x\":Infinity}",
        "{\"s\":\"\\x41\"}",
        "{\"s\":\"\\u12\"}",
        "{\"s\":\"\\ud800\"}",
        "{\"s\":\"\\udc00x\"}",
        "{\"s\":\"\\uD83D\\u0041\"}",
    ] {
        add(text.to_string(), INVALID, "");
    }
    // Deep nesting, in the context and in an action's parameters.
    for depth in [200, 5_000, 60_000 / 2] {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let text = format!(
            r#"{{"source":"Manual","severity":"high","description":"d","context":{{"payload":{nested}}},"actions":[{{"type":"notify_operator","channel":"journal","message":"m"}}]}}"#
        );
        add(text, INVALID, "");
        let obj = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        add(
            format!(
                r#"{{"source":"Manual","severity":"high","description":"d","actions":[{{"type":"notify_operator","channel":"journal","message":{obj}}}]}}"#
            ),
            INVALID,
            "",
        );
    }
    // Too large as a whole.
    add(
        with("description", Some(json!("x".repeat(70_000)))),
        INVALID,
        "",
    );

    // Each top-level field: wrong type, wrong value, missing.
    let wrong_types = [
        json!(null),
        json!(1),
        json!(1.5),
        json!(true),
        json!([]),
        json!({}),
    ];
    for field in ["source", "severity", "description"] {
        for v in &wrong_types {
            add(with(field, Some(v.clone())), INVALID, "");
        }
        add(with(field, None), INVALID, "");
    }
    for v in [
        "",
        "manual",
        "MANUAL",
        "Manual ",
        " Manual",
        "NEXUS\u{0}",
        "Nexus",
        "root",
        "../Manual",
    ] {
        add(with("source", Some(json!(v))), INVALID, "source: ");
    }
    for v in ["", "HIGH", "medium", "urgent", "high\n", "0", "high\u{0}"] {
        add(with("severity", Some(json!(v))), INVALID, "severity: ");
    }
    add(
        with("description", Some(json!("x".repeat(4097)))),
        INVALID,
        "description: ",
    );
    for v in [
        json!(null),
        json!(1),
        json!("x"),
        json!({}),
        json!([[]]),
        json!([1]),
        json!([null]),
    ] {
        add(with("actions", Some(v)), INVALID, "actions");
    }
    add(with("actions", Some(json!([]))), INVALID, "actions: ");
    add(with("actions", None), INVALID, "");
    let notice = json!({"type": "notify_operator", "channel": "journal", "message": "m"});
    add(
        with("actions", Some(json!(vec![notice.clone(); 33]))),
        INVALID,
        "actions: ",
    );
    for extra in ["Source", "actions ", "id", "plan_id", "__proto__", ""] {
        let mut alert = base();
        alert[extra] = json!(1);
        add(alert.to_string(), INVALID, "");
    }
    for v in [
        json!(1),
        json!("x"),
        json!([]),
        json!({"entity": 1}),
        json!({"entity": "x".repeat(513)}),
        json!({"unknown": 1}),
    ] {
        add(with("context", Some(v)), INVALID, "context");
    }

    // Actions: unknown types, then each action's parameters at their edges.
    for kind in [
        "",
        "format_disk",
        "Restart_service",
        "restart_service ",
        "shell",
        "exec",
        "../restart_service",
    ] {
        add(action(json!({"type": kind})), UNKNOWN, "actions[0].type: ");
    }
    for v in [json!(null), json!(1), json!([]), json!({})] {
        add(action(json!({"type": v})), INVALID, "actions[0].type");
    }
    add(
        action(json!({"channel": "journal", "message": "m"})),
        INVALID,
        "actions[0]",
    );
    add(action(json!("notify_operator")), INVALID, "actions[0]");

    // notify_operator
    for (channel, message) in [
        (json!("nochan"), json!("m")),
        (json!(""), json!("m")),
        (json!(1), json!("m")),
        (json!("journal"), json!("")),
        (json!("journal"), json!(1)),
        (json!("journal"), json!("x".repeat(4097))),
        (json!("webhook:../../etc"), json!("m")),
        (json!("journal"), json!(null)),
    ] {
        add(
            action(json!({"type": "notify_operator", "channel": channel, "message": message})),
            INVALID,
            "actions[0].",
        );
    }
    add(
        action(
            json!({"type": "notify_operator", "channel": "journal", "message": "m", "extra": 1}),
        ),
        INVALID,
        "actions[0].extra: ",
    );

    // restart_service: bad names and path traversal.
    for name in [
        json!(""),
        json!(1),
        json!(null),
        json!("foo bar"),
        json!("../../etc/passwd"),
        json!("foo/bar.service"),
        json!("/usr/lib/systemd/system/vael.service"),
        json!("vael.service\u{0}"),
        json!("vael.service\n"),
        json!("x".repeat(300)),
        json!("vael.service;reboot"),
        json!("$(reboot)"),
        json!(".service"),
        json!("vael@.service"),
        json!("vael.service/"),
    ] {
        add(
            action(json!({"type": "restart_service", "name": name})),
            INVALID,
            "actions[0].name",
        );
    }
    // Protected units, in every spelling.
    for name in [
        "dbus",
        "dbus.service",
        "dbus-broker.service",
        "systemd-journald",
        "systemd-journald.service",
        "systemd-logind.service",
        "dbus-org.freedesktop.login1.service",
        "ssh",
        "ssh.service",
        "sshd",
        "sshd.service",
        "polkit",
        "polkit.service",
        "antibody",
        "antibody.service",
        "init.scope",
        "-.slice",
        "system.slice",
        "user.slice",
        "reboot.target",
        "poweroff.target",
        "halt.target",
        "shutdown.target",
        "emergency.target",
        "rescue.target",
        "multi-user.target",
        "default.target",
        "ctrl-alt-del.target",
        "systemd-udevd",
        "getty@tty1.service",
        "user@0.service",
        "session-1.scope",
    ] {
        add(
            action(json!({"type": "restart_service", "name": name})),
            PROTECTED,
            "actions[0].name: ",
        );
    }

    // isolate_socket: malformed sids, bad seconds, protected addresses and ports.
    for sid in [
        json!(""),
        json!(1),
        json!(null),
        json!("tcp:"),
        json!("tcp:0"),
        json!("tcp:65536"),
        json!("tcp:-1"),
        json!("sctp:80"),
        json!("TCP:80"),
        json!("10.0.0.256"),
        json!("10.0.0"),
        json!("127.1"),
        json!("0x7f000001"),
        json!("10.0.0.1/8"),
        json!("10.0.0.1:"),
        json!("10.0.0.1:99999"),
        json!("[fd00::1]"),
        json!("fd00::1:80:"),
        json!("host.example"),
        json!("10.0.0.1 "),
        json!(" 10.0.0.1"),
        json!("10.0.0.1\u{0}"),
        json!("localhost"),
    ] {
        add(
            action(json!({"type": "isolate_socket", "sid": sid, "seconds": 60})),
            INVALID,
            "actions[0].sid",
        );
    }
    for seconds in [
        json!(-1),
        json!(0),
        json!(1.5),
        json!("60"),
        json!(null),
        json!(18_446_744_073_709_551_615u64),
        json!(86_401),
        json!(true),
    ] {
        add(
            action(json!({"type": "isolate_socket", "sid": "10.9.9.9", "seconds": seconds})),
            INVALID,
            "actions[0].seconds",
        );
    }
    for sid in [
        "127.0.0.1",
        "127.0.0.2",
        "127.255.255.254",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
        "tcp:22",
        "127.0.0.1:8080",
        "[::1]:80",
        "10.9.9.9:22",
        "[fd00::1]:22",
    ] {
        add(
            action(json!({"type": "isolate_socket", "sid": sid, "seconds": 60})),
            PROTECTED,
            "actions[0].sid: ",
        );
    }

    // Numbers JSON can write and no parameter can hold.
    for number in [
        "1e400",
        "-1e400",
        "18446744073709551616",
        "1e309",
        "-0",
        "0.0",
        "6e1",
        "0x3c",
    ] {
        add(
            action(json!({"type": "isolate_socket", "sid": "10.9.9.9", "seconds": 60}))
                .replace("\"seconds\":60", &format!("\"seconds\":{number}")),
            INVALID,
            "",
        );
    }

    // throttle_entity
    for (entity, extra) in [
        (json!("unit:dbus.service"), json!({})),
        (json!("unit:sshd.service"), json!({})),
        (json!("unit:init.scope"), json!({})),
        (json!("unit:-.slice"), json!({})),
        (json!("ip:127.0.0.1"), json!({"rate_per_sec": 10})),
        (json!("ip:::1"), json!({"rate_per_sec": 10})),
    ] {
        let mut a = json!({"type": "throttle_entity", "entity": entity, "seconds": 60});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        add(action(a), PROTECTED, "actions[0].entity: ");
    }
    for (entity, extra) in [
        (json!(""), json!({})),
        (json!(1), json!({})),
        (json!("addr:10.9.9.9"), json!({"rate_per_sec": 10})),
        (json!("unit:"), json!({})),
        (json!("unit:../x.service"), json!({})),
        (json!("ip:10.0.0.256"), json!({"rate_per_sec": 10})),
        (json!("unit:vael.service"), json!({"cpu_percent": 0})),
        (json!("unit:vael.service"), json!({"cpu_percent": -5})),
        (json!("unit:vael.service"), json!({"cpu_percent": "20"})),
        (json!("unit:vael.service"), json!({"memory_high": "1"})),
        (json!("unit:vael.service"), json!({"memory_high": 1})),
        (json!("unit:vael.service"), json!({"rate_per_sec": 10})),
        (json!("ip:10.9.9.9"), json!({"rate_per_sec": 0})),
        (json!("ip:10.9.9.9"), json!({"cpu_percent": 20})),
    ] {
        let mut a = json!({"type": "throttle_entity", "entity": entity, "seconds": 60});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        add(action(a), INVALID, "actions[0].");
    }

    // hot_patch: path traversal, relative and special paths, bad diffs.
    let diff = "--- a\n+++ b\n@@ -1 +1 @@\n-a\n+b\n";
    for file in [
        json!(""),
        json!(1),
        json!("etc/app.conf"),
        json!("app.conf"),
        json!("../etc/passwd"),
        json!("/etc/../etc/shadow"),
        json!(format!("{root}/../../etc/shadow")),
        json!(format!("{root}/../app.conf")),
        json!(format!("{root}/./app.conf")),
        json!(format!("{root}/app.conf\u{0}")),
        json!(format!("{root}/")),
        json!(root),
        json!(format!("{root}//app.conf")),
        json!(format!("{root}x/app.conf")),
        json!("/"),
        json!("//etc/passwd"),
        json!("/proc/self/mem"),
        json!("/dev/sda"),
        json!("/etc/shadow"),
        json!("/etc/passwd"),
        json!("/etc/sudoers"),
        json!("/root/.ssh/authorized_keys"),
        json!("/boot/grub/grub.cfg"),
    ] {
        add(
            action(json!({"type": "hot_patch", "file": file, "diff": diff})),
            REFUSED_PATH,
            "actions[0].file",
        );
    }
    for d in [
        json!(""),
        json!(1),
        json!("not a diff"),
        json!("--- a\n+++ b\n@@ garbage @@\n"),
        json!("x".repeat(61 * 1024)),
        json!("--- a\n+++ b\n@@ -1 +1 @@\n-a\n+b\u{0}\n"),
    ] {
        add(
            action(json!({"type": "hot_patch", "file": format!("{root}/app.conf"), "diff": d})),
            INVALID,
            "actions[0].",
        );
    }
    for sha in [
        json!("xyz"),
        json!(1),
        json!("A".repeat(64)),
        json!("a".repeat(63)),
    ] {
        add(
            action(
                json!({"type": "hot_patch", "file": format!("{root}/app.conf"), "diff": diff, "sha256": sha}),
            ),
            INVALID,
            "actions[0].sha256",
        );
    }
    cases
}

/// Calls `member` on the agent with `body`: the error's name and message
/// (`(accepted)` and the plan id when it answered without one).
async fn refused<B>(conn: &zbus::Connection, member: &str, body: &B) -> (String, String)
where
    B: serde::ser::Serialize + zbus::zvariant::DynamicType,
{
    match conn
        .call_method(Some(NAME), PATH, Some(NAME), member, body)
        .await
    {
        Err(zbus::Error::MethodError(name, message, _)) => {
            (name.to_string(), message.unwrap_or_default())
        }
        Err(zbus::Error::FDO(e)) => {
            use zbus::DBusError;
            (
                e.name().to_string(),
                e.description().unwrap_or_default().to_string(),
            )
        }
        Ok(reply) => (
            "(accepted)".into(),
            reply
                .body()
                .deserialize::<(String, bool)>()
                .map(|(id, _)| id)
                .unwrap_or_default(),
        ),
        Err(other) => panic!("{member}: expected an error reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_calls_get_named_errors_and_leave_nothing_behind() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("srv");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("app.conf"), "a\n").unwrap();
    let root = root.to_str().unwrap().to_string();
    let agent = Agent::start(
        &bus,
        home.path(),
        &format!("[hot_patch]\nallowed_paths = [\"{root}\"]"),
    );
    let conn = bus.connect().await;
    let cases = hostile_alerts(&root);
    let mut failures = Vec::new();
    let mut count = 0;
    for (text, error, path) in &cases {
        for member in ["SubmitAlert", "DryRun"] {
            count += 1;
            let (name, message) = refused(&conn, member, &(text.as_str(),)).await;
            let shown: String = text.chars().take(160).collect();
            let named = error
                .split('|')
                .any(|e| name == format!("org.vael.Antibody.Error.{e}"));
            if !named || !message.starts_with(path) || message.is_empty() {
                failures.push(format!(
                    "{member} {shown:?}\n    got {name}: {message}\n    want {error}: {path}…"
                ));
            }
        }
    }

    // Wrong signatures and arguments the interface does not take.
    const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
    let mut signature_cases = 0;
    for member in ["SubmitAlert", "DryRun", "GetPlan", "RollbackPlan"] {
        for (name, message) in [
            refused(&conn, member, &()).await,
            refused(&conn, member, &(5i32,)).await,
            refused(&conn, member, &("a", "b")).await,
            refused(&conn, member, &(vec!["a"],)).await,
            refused(&conn, member, &((7u32, "x"),)).await,
            refused(&conn, member, &(true,)).await,
        ] {
            signature_cases += 1;
            if name != INVALID_ARGS {
                failures.push(format!(
                    "{member} with a wrong signature: {name}: {message}"
                ));
            }
        }
    }
    for (name, message) in [
        refused(&conn, "ListPlans", &("",)).await,
        refused(&conn, "ListPlans", &(0u32, "")).await,
        refused(&conn, "ListPlans", &("", -1i32)).await,
    ] {
        signature_cases += 1;
        if name != INVALID_ARGS {
            failures.push(format!(
                "ListPlans with a wrong signature: {name}: {message}"
            ));
        }
    }
    // Well-typed but bad plan ids and status filters.
    for id in [
        "",
        "x",
        "../../etc/passwd",
        "00000000-0000-4000-8000-00000000000",
        "\\u0000",
        &"a".repeat(10_000),
    ] {
        for member in ["GetPlan", "RollbackPlan"] {
            signature_cases += 1;
            let (name, message) = refused(&conn, member, &(id,)).await;
            if !name.starts_with("org.vael.Antibody.Error.") {
                failures.push(format!("{member} {id:.40?}: {name}: {message}"));
            }
        }
    }
    for status in ["bogus", "SUCCESS", "success ", "\\u0000"] {
        signature_cases += 1;
        let (name, message) = refused(&conn, "ListPlans", &(status, 0u32)).await;
        if name != "org.vael.Antibody.Error.InvalidArgument" || !message.starts_with("status: ") {
            failures.push(format!("ListPlans {status:?}: {name}: {message}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls were not answered as they must be:\n{}",
        failures.len(),
        count + signature_cases,
        failures.join("\n")
    );
    println!(
        "{} hostile alerts (SubmitAlert and DryRun each: {count} calls) and {signature_cases} calls with wrong signatures or bad arguments: every one a named error",
        cases.len()
    );
    assert!(
        cases.len() >= 200,
        "at least 200 hostile alerts: {}",
        cases.len()
    );

    // The agent is up and healthy, holds no plan, and its ledger no record
    // of any of it.
    let proxy = antibody::dbus::proxy::AntibodyProxy::new(&conn)
        .await
        .unwrap();
    let status: Value = serde_json::from_str(&proxy.status().await.unwrap()).unwrap();
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["queue_depth"], 0, "{status}");
    assert_eq!(status["active_mitigations"], 0, "{status}");
    let plans: Value = serde_json::from_str(&proxy.list_plans("", 0).await.unwrap()).unwrap();
    assert_eq!(plans, json!([]), "no plan may come of a refused call");
    let (ok, report) = proxy.verify_ledger().await.unwrap();
    assert!(ok, "{report}");
    let mut kinds = Vec::new();
    antibody::ledger::scan(&agent.ledger_dir(), |r| kinds.push(r.kind.clone())).unwrap();
    assert!(
        kinds.iter().all(|k| k == "agent_started"),
        "the ledger holds only the agent's start: {kinds:?}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{root}/app.conf")).unwrap(),
        "a\n"
    );
    drop(home);
}
