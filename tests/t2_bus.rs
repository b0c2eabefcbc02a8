//! T2: a private `dbus-daemon` with Debian's default-deny system policy plus
//! the shipped `dbus/org.vael.Antibody.conf`, and the real `antibodyd` on it
//! (DESIGN.md §1, §7). Every test needs root and fails — never skips — when
//! something it needs cannot run.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use antibody::dbus::proxy::AntibodyProxy;
use futures_util::{Stream, StreamExt};
use support::*;
use zbus::proxy::CacheProperties;

const NAME: &str = "org.vael.Antibody";
const PATH: &str = "/org/vael/Antibody";
const IFACE: &str = "org.vael.Antibody";
const BUS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const AGENT_DENIED: &str = "org.vael.Antibody.Error.AccessDenied";
/// uid and gid 65534: `nobody` / `nogroup` on Debian.
const NOBODY: u32 = 65534;
/// A gid that is not `nogroup` (and names no group on Debian).
const OTHER_GID: u32 = 65533;
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(15);

/// A one-action alert whose plan finishes at once, without touching the host.
fn journal_alert(description: &str) -> String {
    format!(
        r#"{{"source":"Manual","severity":"high","description":"{description}","actions":[{{"type":"notify_operator","channel":"journal","message":"t2"}}]}}"#
    )
}

/// `dbus-send --system --print-reply` to the agent's object; `method` is
/// `INTERFACE.MEMBER`. On failure dbus-send prints `Error NAME: message` to
/// stderr, so the error name can be asserted on.
fn dbus_send(
    bus: &PrivateBus,
    as_user: Option<(u32, &[u32])>,
    method: &str,
    args: &[&str],
) -> (bool, String, String) {
    let dest = format!("--dest={NAME}");
    let mut argv = vec!["--system", "--print-reply", dest.as_str(), PATH, method];
    argv.extend_from_slice(args);
    run_on_bus(bus, "dbus-send", &argv, as_user)
}

fn assert_error(what: &str, (ok, out, err): &(bool, String, String), error_name: &str) {
    assert!(
        !ok,
        "{what}: expected the error {error_name}, but the call succeeded: {out}"
    );
    assert!(
        err.contains(&format!("Error {error_name}:")),
        "{what}: expected the error {error_name}, got stderr: {err}"
    );
}

fn assert_ok(what: &str, (ok, out, err): &(bool, String, String)) {
    assert!(
        ok,
        "{what}: expected success, got stderr: {err} (stdout: {out})"
    );
}

/// The first double-quoted string of dbus-send/busctl output (`string "…"` / `s "…"`).
fn first_quoted(text: &str) -> String {
    let start = text
        .find('"')
        .unwrap_or_else(|| panic!("no quoted string in {text:?}"))
        + 1;
    let len = text[start..]
        .find('"')
        .unwrap_or_else(|| panic!("unterminated string in {text:?}"));
    text[start..start + len].to_string()
}

/// Waits (as root) until the plan has finished; returns its final status.
/// Submits a journal-notice alert as root through busctl; returns the plan id.
fn submit_as_root(bus: &PrivateBus, description: &str) -> String {
    let (ok, out, err) = busctl(
        bus,
        &[
            "call",
            NAME,
            PATH,
            IFACE,
            "SubmitAlert",
            "s",
            &journal_alert(description),
        ],
    );
    assert!(ok, "SubmitAlert as root: {err}");
    first_quoted(&out)
}

fn wait_plan_finished(bus: &PrivateBus, plan_id: &str) -> String {
    let deadline = Instant::now() + SIGNAL_TIMEOUT;
    loop {
        let (ok, out, err) = busctl(
            bus,
            &[
                "--json=short",
                "call",
                NAME,
                PATH,
                IFACE,
                "GetPlan",
                "s",
                plan_id,
            ],
        );
        assert!(ok, "GetPlan {plan_id} as root: {err}");
        let reply: serde_json::Value = serde_json::from_str(&out).expect("busctl --json output");
        let plan: serde_json::Value =
            serde_json::from_str(reply["data"][0].as_str().expect("plan_json")).expect("plan JSON");
        let status = plan["status"].as_str().expect("plan status").to_string();
        if status == "success" || status == "failed" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "plan {plan_id} still {status} after {SIGNAL_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_status_answers(bus: &PrivateBus) {
    let (ok, out, err) = busctl(bus, &["call", NAME, PATH, IFACE, "Status"]);
    assert!(ok, "Status must still answer: {err}");
    assert!(out.contains("healthy"), "Status reply: {out}");
}

// ---------------------------------------------------------------- 1. XML

/// Drops `<!-- … -->` comments.
fn strip_comments(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("-->").expect("unterminated XML comment");
        rest = &rest[start + end + 3..];
    }
    out.push_str(rest);
    out
}

/// The `<interface name="org.vael.Antibody">…</interface>` element, comments
/// removed, runs of whitespace collapsed to one space and whitespace between
/// tags dropped.
fn antibody_interface(xml: &str) -> String {
    let xml = strip_comments(xml);
    let open = format!(r#"<interface name="{IFACE}">"#);
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no {open} element in:\n{xml}"));
    assert!(
        xml[start + open.len()..].find(&open).is_none(),
        "{open} appears twice"
    );
    let len = xml[start..]
        .find("</interface>")
        .expect("unterminated interface element")
        + "</interface>".len();
    let collapsed = xml[start..start + len]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    collapsed.replace("> <", "><")
}

/// `(kind, name)` of every method, signal and property of a normalized element.
fn members(element: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for kind in ["method", "signal", "property"] {
        let tag = format!("<{kind} name=\"");
        let mut rest = element;
        while let Some(at) = rest.find(&tag) {
            rest = &rest[at + tag.len()..];
            let name = &rest[..rest.find('"').expect("attribute end")];
            found.insert((kind.to_string(), name.to_string()));
        }
    }
    found
}

async fn live_introspection(bus: &PrivateBus) -> String {
    let conn = bus.connect().await;
    zbus::fdo::IntrospectableProxy::builder(&conn)
        .destination(NAME)
        .path(PATH)
        .build()
        .await
        .expect("introspectable proxy")
        .introspect()
        .await
        .expect("Introspect on /org/vael/Antibody")
}

#[tokio::test]
async fn introspection_equals_shipped_xml() {
    let (bus, _home, _agent) = bus_and_agent();

    let file_path = Path::new(ROOT).join("dbus/org.vael.Antibody.xml");
    let file = std::fs::read_to_string(&file_path).expect("dbus/org.vael.Antibody.xml must exist");
    assert!(
        file.trim_start().starts_with(
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\""
        ),
        "the interface file must be an introspection document"
    );
    let body = strip_comments(&file);
    assert!(
        body.contains("<node") && body.trim_end().ends_with("</node>"),
        "the interface file must be one <node>"
    );

    let live_xml = live_introspection(&bus).await;
    let live = antibody_interface(&live_xml);
    let shipped = antibody_interface(&file);
    assert_eq!(
        live, shipped,
        "dbus/org.vael.Antibody.xml differs from what the running agent introspects; the live element is:\n{live_xml}"
    );

    // The members are those of DESIGN.md §1, no more, no fewer.
    let expected: BTreeSet<(String, String)> = [
        ("method", "SubmitAlert"),
        ("method", "GetPlan"),
        ("method", "ListPlans"),
        ("method", "ListPlaybooks"),
        ("method", "DryRun"),
        ("method", "RollbackPlan"),
        ("method", "VerifyLedger"),
        ("method", "Status"),
        ("property", "QueueDepth"),
        ("property", "Healthy"),
        ("property", "ActiveMitigations"),
        ("property", "Version"),
        ("signal", "PlanQueued"),
        ("signal", "PlanStatusChanged"),
        ("signal", "ActionFinished"),
        ("signal", "OperatorNotice"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(members(&live), expected, "live members versus DESIGN.md §1");
    for (_, name) in &expected {
        assert!(live.contains(&format!("name=\"{name}\"")));
    }

    // The comparison is not blind: a renamed or an added member is caught.
    let renamed = antibody_interface(&live_xml.replace("name=\"GetPlan\"", "name=\"GetPlans\""));
    assert_ne!(
        renamed, shipped,
        "a renamed method must make the comparison fail"
    );
    let added = antibody_interface(&live_xml.replace(
        "<method name=\"Status\">",
        "<method name=\"Extra\"></method><method name=\"Status\">",
    ));
    assert_ne!(
        added, shipped,
        "an added method must make the comparison fail"
    );
    let retyped = antibody_interface(&live_xml.replace(
        "name=\"QueueDepth\" type=\"u\"",
        "name=\"QueueDepth\" type=\"t\"",
    ));
    assert_ne!(
        retyped, shipped,
        "a changed property type must make the comparison fail"
    );
}

// ---------------------------------------------------------------- 2. bus policy

#[tokio::test]
async fn bus_policy_for_an_unprivileged_uid() {
    let (bus, _home, _agent) = bus_and_agent();
    let nobody: Option<(u32, &[u32])> = Some((NOBODY, &[]));

    // A finished plan, so that the denied calls have a real id to name.
    let plan_id = submit_as_root(&bus, "policy");

    // Allowed to everyone.
    let status = run_on_bus(
        &bus,
        "busctl",
        &["--system", "call", NAME, PATH, IFACE, "Status"],
        nobody,
    );
    assert_ok("Status as uid 65534", &status);
    assert!(status.1.contains("healthy"), "{}", status.1);
    let version = run_on_bus(
        &bus,
        "busctl",
        &["--system", "get-property", NAME, PATH, IFACE, "Version"],
        nobody,
    );
    assert_ok("Get Version as uid 65534", &version);
    assert!(version.1.starts_with("s \""), "{}", version.1);
    let get = dbus_send(
        &bus,
        nobody,
        "org.freedesktop.DBus.Properties.Get",
        &["string:org.vael.Antibody", "string:QueueDepth"],
    );
    assert_ok("Properties.Get QueueDepth as uid 65534", &get);
    let get_all = dbus_send(
        &bus,
        nobody,
        "org.freedesktop.DBus.Properties.GetAll",
        &["string:org.vael.Antibody"],
    );
    assert_ok("Properties.GetAll as uid 65534", &get_all);
    assert!(get_all.1.contains("Healthy"), "{}", get_all.1);
    let introspect = dbus_send(
        &bus,
        nobody,
        "org.freedesktop.DBus.Introspectable.Introspect",
        &[],
    );
    assert_ok("Introspect as uid 65534", &introspect);
    assert!(
        introspect
            .1
            .contains("<interface name=\"org.vael.Antibody\">"),
        "{}",
        introspect.1
    );
    assert_ok(
        "Peer.Ping as uid 65534",
        &dbus_send(&bus, nobody, "org.freedesktop.DBus.Peer.Ping", &[]),
    );

    // Denied by the bus before the agent sees them.
    let plan_arg = format!("string:{plan_id}");
    let alert_arg = format!("string:{}", journal_alert("denied"));
    let denied: [(&str, Vec<&str>); 7] = [
        ("SubmitAlert", vec![alert_arg.as_str()]),
        ("GetPlan", vec![plan_arg.as_str()]),
        ("ListPlans", vec!["string:", "uint32:0"]),
        ("ListPlaybooks", vec![]),
        ("DryRun", vec![alert_arg.as_str()]),
        ("VerifyLedger", vec![]),
        ("RollbackPlan", vec![plan_arg.as_str()]),
    ];
    for (member, args) in &denied {
        let result = dbus_send(&bus, nobody, &format!("{IFACE}.{member}"), args);
        assert_error(&format!("{member} as uid 65534"), &result, BUS_DENIED);
    }
    // busctl says so too (it prints the message, not the name).
    let (ok, _, err) = run_on_bus(
        &bus,
        "busctl",
        &["--system", "call", NAME, PATH, IFACE, "VerifyLedger"],
        nobody,
    );
    assert!(
        !ok && err.contains("Access denied"),
        "busctl VerifyLedger as uid 65534: {err}"
    );
    // Setting a property is not allowed either (they are read-only anyway).
    let set = dbus_send(
        &bus,
        nobody,
        "org.freedesktop.DBus.Properties.Set",
        &[
            "string:org.vael.Antibody",
            "string:Version",
            "variant:string:x",
        ],
    );
    assert_error("Properties.Set as uid 65534", &set, BUS_DENIED);

    // Nor may it own the name (not even queue for it).
    let (ok, _, err) = run_on_bus(
        &bus,
        "busctl",
        &[
            "--system",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
            "su",
            NAME,
            "4",
        ],
        nobody,
    );
    assert!(
        !ok && err.contains("Access denied"),
        "busctl RequestName as uid 65534: {err}"
    );
    let request = run_on_bus(
        &bus,
        "dbus-send",
        &[
            "--system",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            "string:org.vael.Antibody",
            "uint32:0",
        ],
        nobody,
    );
    assert_error(
        "RequestName org.vael.Antibody as uid 65534",
        &request,
        BUS_DENIED,
    );

    // The plan is untouched and the agent still owns its name and answers.
    assert_eq!(wait_plan_finished(&bus, &plan_id), "success");
    assert_status_answers(&bus);
}

// ---------------------------------------------------------------- 3. agent's own check

#[tokio::test]
async fn agent_denies_callers_outside_its_groups() {
    require_root();
    let bus = PrivateBus::start_with_extra(support::LET_NOBODY_THROUGH);
    let home = tempfile::tempdir().unwrap();
    // Default auth: submit_groups = read_groups = ["antibody"].
    let _agent = Agent::start(&bus, home.path(), "");
    let nobody: Option<(u32, &[u32])> = Some((NOBODY, &[]));

    let plan_id = submit_as_root(&bus, "agent check");
    assert_eq!(wait_plan_finished(&bus, &plan_id), "success");

    // The bus lets uid 65534 through now ...
    assert_ok(
        "Status as uid 65534",
        &dbus_send(&bus, nobody, "org.vael.Antibody.Status", &[]),
    );
    // ... and the agent refuses by itself, with its own error name.
    let plan_arg = format!("string:{plan_id}");
    let alert_arg = format!("string:{}", journal_alert("from nobody"));
    let calls: [(&str, Vec<&str>, &str); 7] = [
        (
            "SubmitAlert",
            vec![alert_arg.as_str()],
            "may not submit alerts",
        ),
        ("DryRun", vec![alert_arg.as_str()], "may not submit alerts"),
        ("GetPlan", vec![plan_arg.as_str()], "may not read plans"),
        (
            "ListPlans",
            vec!["string:", "uint32:0"],
            "may not read plans",
        ),
        ("ListPlaybooks", vec![], "may not read plans"),
        ("VerifyLedger", vec![], "may not read plans"),
        (
            "RollbackPlan",
            vec![plan_arg.as_str()],
            "may not roll back plans",
        ),
    ];
    for (member, args, why) in &calls {
        let result = dbus_send(&bus, nobody, &format!("{IFACE}.{member}"), args);
        assert_error(&format!("{member} as uid 65534"), &result, AGENT_DENIED);
        assert!(
            result.2.contains("uid 65534") && result.2.contains(why),
            "{member}: {}",
            result.2
        );
    }
    // busctl --verbose shows the same refusal.
    let (ok, _, err) = run_on_bus(
        &bus,
        "busctl",
        &[
            "--system",
            "--verbose",
            "call",
            NAME,
            PATH,
            IFACE,
            "RollbackPlan",
            "s",
            &plan_id,
        ],
        nobody,
    );
    assert!(
        !ok && err.contains("may not roll back plans"),
        "busctl RollbackPlan as uid 65534: {err}"
    );
    assert_status_answers(&bus);
}

#[tokio::test]
async fn agent_grants_by_supplementary_group_and_rollback_only_to_rollback_groups() {
    require_root();
    let group = std::fs::read_to_string("/etc/group").expect("/etc/group");
    assert!(
        group.lines().any(|l| l.starts_with("nogroup:x:65534:")),
        "this test relies on gid 65534 being `nogroup` (Debian)"
    );
    let bus = PrivateBus::start_with_extra(support::LET_NOBODY_THROUGH);
    let home = tempfile::tempdir().unwrap();
    let _agent = Agent::start(
        &bus,
        home.path(),
        "[auth]\nsubmit_groups = [\"nogroup\"]\nread_groups = [\"nogroup\"]",
    );
    let member: Option<(u32, &[u32])> = Some((NOBODY, &[NOBODY]));
    let outsider: Option<(u32, &[u32])> = Some((NOBODY, &[OTHER_GID]));

    // The bus reports the caller's groups (UnixGroupIDs), so membership works.
    let alert_arg = format!("string:{}", journal_alert("from nogroup"));
    let submit = dbus_send(
        &bus,
        member,
        "org.vael.Antibody.SubmitAlert",
        &[alert_arg.as_str()],
    );
    assert_ok("SubmitAlert as uid 65534 in nogroup", &submit);
    assert!(submit.1.contains("boolean true"), "{}", submit.1);
    let plan_id = first_quoted(&submit.1);
    assert_eq!(wait_plan_finished(&bus, &plan_id), "success");
    let plan_arg = format!("string:{plan_id}");

    let get = dbus_send(
        &bus,
        member,
        "org.vael.Antibody.GetPlan",
        &[plan_arg.as_str()],
    );
    assert_ok("GetPlan as uid 65534 in nogroup", &get);
    assert!(get.1.contains(&plan_id), "{}", get.1);
    assert_ok(
        "ListPlans as uid 65534 in nogroup",
        &dbus_send(
            &bus,
            member,
            "org.vael.Antibody.ListPlans",
            &["string:", "uint32:0"],
        ),
    );
    assert_ok(
        "VerifyLedger as uid 65534 in nogroup",
        &dbus_send(&bus, member, "org.vael.Antibody.VerifyLedger", &[]),
    );
    assert_ok(
        "DryRun as uid 65534 in nogroup",
        &dbus_send(
            &bus,
            member,
            "org.vael.Antibody.DryRun",
            &[alert_arg.as_str()],
        ),
    );

    // Rollback needs auth.rollback_groups (empty by default), whatever the
    // other groups grant.
    let rollback = || {
        dbus_send(
            &bus,
            member,
            "org.vael.Antibody.RollbackPlan",
            &[plan_arg.as_str()],
        )
    };
    let refused = rollback();
    assert_error(
        "RollbackPlan as uid 65534 in nogroup",
        &refused,
        AGENT_DENIED,
    );
    assert!(
        refused.2.contains("(auth.rollback_groups)"),
        "{}",
        refused.2
    );
    // Named in auth.rollback_groups (a reload), the group may roll back.
    write_config(
        home.path(),
        "[auth]\nsubmit_groups = [\"nogroup\"]\nread_groups = [\"nogroup\"]\nrollback_groups = [\"nogroup\"]",
    );
    _agent.signal(nix::sys::signal::Signal::SIGHUP);
    // Granted: the agent then looks at the plan, a journal notice, which
    // has nothing to revert (a named error past the access check).
    wait_until(
        Duration::from_secs(10),
        || {
            rollback()
                .2
                .contains("org.vael.Antibody.Error.NothingToRevert")
        },
        "RollbackPlan to be granted to nogroup after the reload",
    );
    // (The id is real: root is not refused on it.)
    let (_, _, err) = dbus_send(
        &bus,
        None,
        "org.vael.Antibody.RollbackPlan",
        &[plan_arg.as_str()],
    );
    assert!(!err.contains("AccessDenied"), "RollbackPlan as root: {err}");

    // The same uid without the group is refused by the agent.
    let refused = dbus_send(
        &bus,
        outsider,
        "org.vael.Antibody.SubmitAlert",
        &[alert_arg.as_str()],
    );
    assert_error(
        "SubmitAlert as uid 65534 outside nogroup",
        &refused,
        AGENT_DENIED,
    );
    let refused = dbus_send(
        &bus,
        outsider,
        "org.vael.Antibody.GetPlan",
        &[plan_arg.as_str()],
    );
    assert_error(
        "GetPlan as uid 65534 outside nogroup",
        &refused,
        AGENT_DENIED,
    );
    assert_status_answers(&bus);
}

// ---------------------------------------------------------------- 4. README

/// The `busctl` lines of README.md's first ```sh block under "## `busctl`
/// examples", each with the failure text (`# fails: TEXT`) written under it.
fn readme_busctl_lines() -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let mut lines = readme.lines();
    lines
        .by_ref()
        .find(|l| l.trim_end() == "## `busctl` examples")
        .expect("README.md has a \"## `busctl` examples\" section");
    lines
        .by_ref()
        .find(|l| l.trim_end() == "```sh")
        .expect("a ```sh block under \"## `busctl` examples\"");
    let block: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
    let mut commands = Vec::new();
    for (i, line) in block.iter().enumerate() {
        if line.starts_with("busctl ") {
            let fails = block
                .get(i + 1)
                .and_then(|next| next.strip_prefix("# fails: "))
                .map(str::to_string);
            commands.push((line.to_string(), fails));
        }
    }
    commands
}

#[tokio::test]
async fn readme_busctl_examples_work_verbatim() {
    let (bus, _home, _agent) = bus_and_agent();

    let commands = readme_busctl_lines();
    let mut plan_id: Option<String> = None;
    let mut ran = 0;
    let mut failures_checked = 0;
    for (line, fails) in &commands {
        let command = if line.contains("PLAN_ID") {
            let id = plan_id.as_deref().unwrap_or_else(|| {
                panic!("README uses PLAN_ID before any SubmitAlert line printed one: {line}")
            });
            line.replace("PLAN_ID", id)
        } else {
            line.clone()
        };
        let (ok, out, err) = run_on_bus(&bus, "sh", &["-c", &command], None);
        ran += 1;
        match fails {
            Some(text) => {
                assert!(
                    !ok,
                    "README line should fail with {text:?} but succeeded:\n{command}\n{out}"
                );
                assert!(
                    err.contains(text.as_str()),
                    "README line failed, but not with {text:?}:\n{command}\nstderr: {err}"
                );
                failures_checked += 1;
            }
            None => {
                assert!(
                    ok,
                    "README line failed:\n{command}\nstderr: {err}\nstdout: {out}"
                );
                if line.contains(" SubmitAlert ") && plan_id.is_none() {
                    let reply = out.trim();
                    assert!(
                        reply.starts_with("sb \"") && reply.ends_with("\" true"),
                        "SubmitAlert printed {reply:?}, not sb \"<id>\" true"
                    );
                    plan_id = Some(first_quoted(reply));
                }
                if line.contains(" GetPlan ") {
                    assert!(
                        out.contains(plan_id.as_deref().unwrap()),
                        "GetPlan reply names the plan: {out}"
                    );
                }
            }
        }
    }
    assert!(ran >= 8, "only {ran} busctl line(s) in the README block");
    assert!(plan_id.is_some(), "no SubmitAlert line printed a plan id");
    assert!(failures_checked >= 1, "no `# fails:` line was checked");
    assert_status_answers(&bus);
}

// ---------------------------------------------------------------- 5. signals, properties

async fn next_of<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(SIGNAL_TIMEOUT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} signal within {SIGNAL_TIMEOUT:?}"))
        .unwrap_or_else(|| panic!("the {what} stream ended"))
}

async fn root_proxy(conn: &zbus::Connection) -> AntibodyProxy<'static> {
    AntibodyProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("AntibodyProxy")
}

/// `org.freedesktop.DBus.Properties` of the agent's object.
async fn properties_proxy(conn: &zbus::Connection) -> zbus::fdo::PropertiesProxy<'static> {
    zbus::fdo::PropertiesProxy::builder(conn)
        .destination(NAME)
        .path(PATH)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn signals_and_properties() {
    let (bus, _home, _agent) = bus_and_agent();
    let conn = bus.connect().await;
    let proxy = root_proxy(&conn).await;

    let mut queued = proxy.receive_plan_queued().await.unwrap();
    let mut status = proxy.receive_plan_status_changed().await.unwrap();
    let mut finished = proxy.receive_action_finished().await.unwrap();
    let mut notices = proxy.receive_operator_notice().await.unwrap();
    let props = properties_proxy(&conn).await;
    let mut changes = props.receive_properties_changed().await.unwrap();

    let message = "t2: signal check, db1 /var at 97%";
    let alert = format!(
        r#"{{"source":"Manual","severity":"high","description":"signals","actions":[{{"type":"notify_operator","channel":"dbus","message":"{message}"}},{{"type":"notify_operator","channel":"journal","message":"journal only"}}]}}"#
    );
    let (id, created) = proxy.submit_alert(&alert).await.expect("SubmitAlert");
    assert!(created);

    let q = next_of(&mut queued, "PlanQueued").await;
    let a = q.args().unwrap();
    assert_eq!(
        (a.plan_id(), a.source(), a.severity()),
        (&id.as_str(), &"Manual", &"high")
    );

    for index in 0..2u32 {
        let f = next_of(&mut finished, "ActionFinished").await;
        let a = f.args().unwrap();
        assert_eq!(
            (*a.plan_id(), *a.index(), *a.r#type(), *a.outcome()),
            (id.as_str(), index, "notify_operator", "applied")
        );
    }

    let n = next_of(&mut notices, "OperatorNotice").await;
    let a = n.args().unwrap();
    assert_eq!(
        (*a.channel(), *a.severity(), *a.message()),
        ("dbus", "high", message)
    );

    let mut statuses = Vec::new();
    while !matches!(
        statuses.last().map(String::as_str),
        Some("success" | "failed")
    ) {
        let s = next_of(&mut status, "PlanStatusChanged").await;
        let a = s.args().unwrap();
        assert_eq!(*a.plan_id(), id.as_str());
        statuses.push(a.status().to_string());
    }
    assert_eq!(
        statuses,
        ["in_progress", "success"],
        "PlanStatusChanged sequence"
    );

    // QueueDepth: the value ends at 0; every PropertiesChanged seen for it
    // must carry a u32, and the last one seen must be 0 as well.
    let deadline = Instant::now() + SIGNAL_TIMEOUT;
    while proxy.queue_depth().await.expect("QueueDepth") != 0 {
        assert!(Instant::now() < deadline, "QueueDepth never went back to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    while let Ok(Some(change)) =
        tokio::time::timeout(Duration::from_millis(300), changes.next()).await
    {
        let a = change.args().unwrap();
        assert_eq!(a.interface_name().as_str(), IFACE);
        if let Some(v) = a.changed_properties().get("QueueDepth") {
            seen.push(u32::try_from(v).expect("QueueDepth is a u32"));
        }
    }
    if let Some(last) = seen.last() {
        assert_eq!(*last, 0, "last QueueDepth PropertiesChanged: {seen:?}");
    }
    eprintln!("QueueDepth PropertiesChanged values observed: {seen:?}");
    assert!(proxy.healthy().await.unwrap());
    assert_eq!(proxy.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
}

/// `PropertiesChanged` goes out at most every 100 ms: a burst of plans,
/// each moving QueueDepth up and back down, gives a few signals rather
/// than hundreds, and the value the queue settles on is the last one sent.
#[tokio::test]
async fn property_changes_are_coalesced_under_a_burst() {
    const PLANS: usize = 300;
    let (bus, _home, _agent) = bus_and_agent();
    let conn = bus.connect().await;
    let proxy = root_proxy(&conn).await;
    let props = properties_proxy(&conn).await;
    let mut changes = props.receive_properties_changed().await.unwrap();
    // Drained as they come: a signal stream left unread fills the
    // connection's queue and stalls its method replies.
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(change)) =
            tokio::time::timeout(Duration::from_millis(1500), changes.next()).await
        {
            if let Some(v) = change
                .args()
                .unwrap()
                .changed_properties()
                .get("QueueDepth")
            {
                seen.push(u32::try_from(v).expect("QueueDepth is a u32"));
            }
        }
        seen
    });

    let start = Instant::now();
    let submits = (0..PLANS).map(|n| {
        let alert = format!(
            r#"{{"source":"Manual","severity":"low","description":"burst {n}","actions":[{{"type":"notify_operator","channel":"journal","message":"burst {n}"}}]}}"#
        );
        let proxy = proxy.clone();
        async move { proxy.submit_alert(&alert).await.expect("SubmitAlert") }
    });
    // 64 in flight: the bus allows a connection only so many pending replies.
    let answers: Vec<_> = futures_util::stream::iter(submits)
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(answers.iter().all(|(_, created)| *created));
    let deadline = Instant::now() + SIGNAL_TIMEOUT;
    while proxy.queue_depth().await.expect("QueueDepth") != 0 {
        assert!(Instant::now() < deadline, "QueueDepth never went back to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The collector stops 1.5 s after the last signal.
    let seen = collector.await.unwrap();
    let window_ms = start.elapsed().as_millis() as usize;
    eprintln!("{PLANS} plans in {window_ms} ms: QueueDepth PropertiesChanged {seen:?}");
    assert_eq!(
        seen.last(),
        Some(&0),
        "the settled value goes out last: {seen:?}"
    );
    assert!(
        seen.len() <= window_ms / 100 + 2,
        "{} QueueDepth changes in {window_ms} ms: more than one per 100 ms",
        seen.len()
    );
}

/// A webhook endpoint that holds its first request until `release` fires,
/// then answers 200 to it and to any later request.
fn gated_webhook() -> (
    String,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<usize>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local webhook");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut served = 0;
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut released = false;
        while Instant::now() < deadline && !(released && served > 0) {
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("webhook accept: {e}"),
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Read the whole request: headers, then Content-Length bytes.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            if !released {
                gate.recv_timeout(Duration::from_secs(20))
                    .expect("the test never released the webhook");
                released = true;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            served += 1;
        }
        served
    });
    (url, release, server)
}

/// Waits for a `PropertiesChanged` of `org.vael.Antibody` carrying `QueueDepth == want`.
async fn queue_depth_change<S>(changes: &mut S, want: u32)
where
    S: Stream<Item = zbus::fdo::PropertiesChanged> + Unpin,
{
    let mut seen = Vec::new();
    let found = tokio::time::timeout(SIGNAL_TIMEOUT, async {
        while let Some(change) = changes.next().await {
            let a = change.args().unwrap();
            assert_eq!(a.interface_name().as_str(), IFACE);
            if let Some(v) = a.changed_properties().get("QueueDepth") {
                let depth = u32::try_from(v).expect("QueueDepth is a u32");
                seen.push(depth);
                if depth == want {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no PropertiesChanged with QueueDepth = {want} within {SIGNAL_TIMEOUT:?} (QueueDepth values seen: {seen:?})"
    );
}

/// A plan waiting behind a running one shows in `QueueDepth` and its
/// `PropertiesChanged`, deterministically: one plan at a time, and the first
/// one's webhook answers only when the test says so.
#[tokio::test]
async fn queue_depth_changes_are_signalled() {
    require_root();
    let (url, release, server) = gated_webhook();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let _agent = Agent::start(
        &bus,
        home.path(),
        &format!("[queue]\nmax_concurrent = 1\n[notify.channels.gate]\nkind = \"webhook\"\nurl = \"{url}\"\ntimeout_secs = 25"),
    );
    let conn = bus.connect().await;
    let proxy = root_proxy(&conn).await;
    let mut status = proxy.receive_plan_status_changed().await.unwrap();
    let props = properties_proxy(&conn).await;
    let mut changes = props.receive_properties_changed().await.unwrap();
    assert_eq!(proxy.queue_depth().await.unwrap(), 0);

    let held = r#"{"source":"Manual","severity":"low","description":"held","actions":[{"type":"notify_operator","channel":"gate","message":"held"}]}"#;
    let (first, _) = proxy.submit_alert(held).await.expect("SubmitAlert (held)");
    loop {
        let s = next_of(&mut status, "PlanStatusChanged").await;
        let a = s.args().unwrap();
        if *a.plan_id() == first.as_str() && *a.status() == "in_progress" {
            break;
        }
    }
    let (second, _) = proxy
        .submit_alert(&journal_alert("waits"))
        .await
        .expect("SubmitAlert (waits)");
    queue_depth_change(&mut changes, 1).await;
    assert_eq!(
        proxy.queue_depth().await.unwrap(),
        1,
        "the second plan waits behind the first"
    );

    release.send(()).unwrap();
    queue_depth_change(&mut changes, 0).await;
    let mut done = BTreeSet::new();
    while done.len() < 2 {
        let s = next_of(&mut status, "PlanStatusChanged").await;
        let a = s.args().unwrap();
        match *a.status() {
            "success" => {
                done.insert(a.plan_id().to_string());
            }
            "failed" => panic!("plan {} failed", a.plan_id()),
            _ => {}
        }
    }
    assert_eq!(done, BTreeSet::from([first.clone(), second.clone()]));
    assert_eq!(proxy.queue_depth().await.unwrap(), 0);
    assert!(server.join().expect("webhook thread") >= 1);
}

// ---------------------------------------------------------------- 6. named errors

/// The error name and message of a failed proxy call.
fn method_error<T: std::fmt::Debug>(result: zbus::Result<T>, what: &str) -> (String, String) {
    match result {
        Err(zbus::Error::MethodError(name, message, _)) => {
            (name.to_string(), message.unwrap_or_default())
        }
        other => panic!("{what}: expected a D-Bus error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn named_errors_over_the_proxy() {
    let (bus, _home, _agent) = bus_and_agent();
    let conn = bus.connect().await;
    let proxy = root_proxy(&conn).await;

    let invalid: [(&str, &str); 5] = [
        (
            r#"{"source":"Manual","severity":"bogus","description":"d","actions":[{"type":"notify_operator","channel":"journal","message":"m"}]}"#,
            "severity: ",
        ),
        (
            r#"{"source":"Manual","severity":"high","description":"d","actions":[{"type":"notify_operator","channel":"journal","message":"m"},{"type":"notify_operator","channel":"nochan","message":"m"}]}"#,
            "actions[1].channel: ",
        ),
        (
            r#"{"source":"Manual","severity":"high","description":"d","actions":[{"type":"restart_service","name":"foo bar"}]}"#,
            "actions[0].name: ",
        ),
        (
            r#"{"source":"Manual","severity":"high","description":"d","actions":[{"type":"notify_operator","channel":"journal","message":"m","extra":1}]}"#,
            "actions[0].extra: ",
        ),
        (
            r#"{"source":"Manual","severity":"high","description":"d","actions":[]}"#,
            "actions: ",
        ),
    ];
    for (alert, path) in invalid {
        let (name, message) = method_error(proxy.submit_alert(alert).await, alert);
        assert_eq!(
            name, "org.vael.Antibody.Error.InvalidAlert",
            "{alert}: {message}"
        );
        assert!(
            message.starts_with(path),
            "{alert}: message {message:?} must start with {path:?}"
        );
        let (name, message) = method_error(proxy.dry_run(alert).await, alert);
        assert_eq!(
            name, "org.vael.Antibody.Error.InvalidAlert",
            "DryRun {alert}: {message}"
        );
        assert!(message.starts_with(path), "DryRun {alert}: {message:?}");
    }

    let unknown = r#"{"source":"Manual","severity":"high","description":"d","actions":[{"type":"format_disk"}]}"#;
    let (name, message) = method_error(proxy.submit_alert(unknown).await, unknown);
    assert_eq!(name, "org.vael.Antibody.Error.UnknownAction", "{message}");
    assert!(message.starts_with("actions[0].type: "), "{message:?}");

    let protected = r#"{"source":"Manual","severity":"high","description":"d","actions":[{"type":"restart_service","name":"dbus.service"}]}"#;
    let (name, message) = method_error(proxy.submit_alert(protected).await, protected);
    assert_eq!(name, "org.vael.Antibody.Error.ProtectedTarget", "{message}");
    assert!(message.starts_with("actions[0].name: "), "{message:?}");

    let (name, message) = method_error(proxy.list_plans("bogus", 0).await, "ListPlans bogus");
    assert_eq!(name, "org.vael.Antibody.Error.InvalidArgument", "{message}");
    assert!(message.starts_with("status: "), "{message:?}");

    let missing = "00000000-0000-4000-8000-000000000000";
    let (name, message) = method_error(proxy.get_plan(missing).await, "GetPlan unknown");
    assert_eq!(name, "org.vael.Antibody.Error.NotFound", "{message}");
    assert!(message.contains(missing), "{message:?}");

    // Nothing was accepted, and the agent is still up.
    let plans: serde_json::Value =
        serde_json::from_str(&proxy.list_plans("", 0).await.unwrap()).unwrap();
    assert_eq!(
        plans.as_array().map(Vec::len),
        Some(0),
        "no plan may come of a rejected alert: {plans}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&proxy.status().await.expect("Status")).unwrap();
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["queue_depth"], 0, "{status}");
}

// ---------------------------------------------------------------- 7. one owner

#[tokio::test]
async fn second_agent_cannot_take_the_name() {
    let (bus, _home, _agent) = bus_and_agent();
    let owner = |bus: &PrivateBus| {
        let (ok, out, err) = busctl(
            bus,
            &[
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetNameOwner",
                "s",
                NAME,
            ],
        );
        assert!(ok, "GetNameOwner: {err}");
        first_quoted(&out)
    };
    let first_owner = owner(&bus);

    let home2 = tempfile::tempdir().unwrap();
    let config = home2.path().join("antibody.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\ndir = \"{}\"\n[state]\ndir = \"{}\"\n",
            home2.path().join("ledger").display(),
            home2.path().join("state").display()
        ),
    )
    .unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_antibodyd"))
        .arg("--config")
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a second antibodyd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second antibodyd on the same bus was still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = second.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !status.success(),
        "the second agent must exit non-zero, got {status}: {text}"
    );
    assert!(
        text.contains(NAME),
        "the second agent must name {NAME} in its message: {text}"
    );

    assert_eq!(owner(&bus), first_owner, "the first agent keeps the name");
    assert_status_answers(&bus);
}
