//! T2: `auth.polkit = true` against a fake polkit authority that owns
//! `org.freedesktop.PolicyKit1` on a private system bus (the real polkitd is
//! exercised in the booted testbed by `tests/t4_package.rs`). Proves what
//! the agent asks (subject `system-bus-name` = the caller's unique name, the
//! action of the method, no user interaction) and what it does with each
//! answer. Needs root; fails, never skips, without it.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use support::*;
use zbus::fdo::DBusProxy;
use zbus::zvariant::OwnedVariant;

const NAME: &str = "org.vael.Antibody";
const PATH: &str = "/org/vael/Antibody";
const AGENT_DENIED: &str = "org.vael.Antibody.Error.AccessDenied";
/// uid and gid 65534: `nobody` / `nogroup` on Debian.
const NOBODY: u32 = 65534;

/// The bus lets uid 65534 reach the agent (so the agent's own check
/// answers), root own the polkit name, and anyone call polkit.
const POLICY: &str = r#"
<policy user="nobody"><allow send_destination="org.vael.Antibody"/></policy>
<policy user="root"><allow own="org.freedesktop.PolicyKit1"/></policy>
<policy context="default"><allow send_destination="org.freedesktop.PolicyKit1"/></policy>
"#;

/// One CheckAuthorization as the fake saw it.
#[derive(Debug, Clone)]
struct Asked {
    subject_kind: String,
    /// The uid the bus reports for the subject's bus name.
    subject_uid: u32,
    action: String,
    flags: u32,
}

struct FakeAuthority {
    /// action → (is_authorized, is_challenge); other actions: not authorized.
    answers: HashMap<&'static str, (bool, bool)>,
    asked: Arc<Mutex<Vec<Asked>>>,
}

#[zbus::interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl FakeAuthority {
    async fn check_authorization(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        subject: (String, HashMap<String, OwnedVariant>),
        action_id: String,
        _details: HashMap<String, String>,
        flags: u32,
        _cancellation_id: String,
    ) -> (bool, bool, HashMap<String, String>) {
        // As polkitd does: who is behind the bus name, asked of the bus.
        let name: String = subject
            .1
            .get("name")
            .and_then(|v| String::try_from(v.clone()).ok())
            .unwrap_or_default();
        let subject_uid = match name.as_str().try_into() {
            Ok(bus_name) => DBusProxy::new(conn)
                .await
                .unwrap()
                .get_connection_unix_user(bus_name)
                .await
                .unwrap_or(u32::MAX),
            Err(_) => u32::MAX,
        };
        self.asked.lock().unwrap().push(Asked {
            subject_kind: subject.0,
            subject_uid,
            action: action_id.clone(),
            flags,
        });
        let (yes, challenge) = self
            .answers
            .get(action_id.as_str())
            .copied()
            .unwrap_or((false, false));
        (yes, challenge, HashMap::new())
    }
}

/// Served by the test's runtime: the tests are multi-threaded so the fake
/// answers while the test thread waits on a blocking `dbus-send`.
async fn start_fake(
    bus: &PrivateBus,
    answers: HashMap<&'static str, (bool, bool)>,
) -> (zbus::Connection, Arc<Mutex<Vec<Asked>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let conn = zbus::connection::Builder::address(bus.address().as_str())
        .serve_at(
            "/org/freedesktop/PolicyKit1/Authority",
            FakeAuthority {
                answers,
                asked: asked.clone(),
            },
        )
        .name("org.freedesktop.PolicyKit1")
        .build()
        .await
        .expect("the fake polkit authority owns org.freedesktop.PolicyKit1");
    (conn, asked)
}

fn journal_alert(description: &str) -> String {
    alert(&format!(
        r#"[{{"type":"notify_operator","channel":"journal","message":"{description}"}}]"#
    ))
}

/// `dbus-send` to the agent as uid 65534 with gid 65534 (`nogroup`).
fn as_nobody(bus: &PrivateBus, member: &str, args: &[&str]) -> (bool, String, String) {
    let method = format!("org.vael.Antibody.{member}");
    let dest = format!("--dest={NAME}");
    let mut argv = vec!["--system", "--print-reply", dest.as_str(), PATH, &method];
    argv.extend_from_slice(args);
    run_on_bus(bus, "dbus-send", &argv, Some((NOBODY, &[NOBODY])))
}

fn as_root(bus: &PrivateBus, member: &str, signature: &str, args: &[&str]) -> String {
    let mut argv = vec!["call", NAME, PATH, NAME, member, signature];
    argv.extend_from_slice(args);
    let (ok, out, err) = busctl(bus, &argv);
    assert!(ok, "{member} as root: {err}");
    out
}

fn assert_denied(what: &str, result: &(bool, String, String), why: &str) {
    let (ok, out, err) = result;
    assert!(!ok, "{what}: expected AccessDenied, got {out}");
    assert!(
        err.contains(AGENT_DENIED) && err.contains(why),
        "{what}: expected {AGENT_DENIED} saying {why:?}, got: {err}"
    );
}

/// Plan id of `sb "ID" true`.
fn plan_id(out: &str) -> String {
    out.split('"').nth(1).expect("a plan id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_decides_for_callers_other_than_root() {
    require_root();
    let bus = PrivateBus::start_with_extra(POLICY);
    let (_fake, asked) = start_fake(
        &bus,
        HashMap::from([
            ("org.vael.antibody.submit", (true, false)),
            ("org.vael.antibody.read", (false, false)),
            ("org.vael.antibody.rollback", (false, true)),
        ]),
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    // nogroup would pass the group rule: with polkit on, it must not count.
    let _agent = Agent::start(
        &bus,
        home.path(),
        "[auth]\npolkit = true\nsubmit_groups = [\"nogroup\"]\nread_groups = [\"nogroup\"]\n",
    );

    // Root: allowed without asking polkit.
    let root_plan = plan_id(&as_root(
        &bus,
        "SubmitAlert",
        "s",
        &[&journal_alert("root")],
    ));
    as_root(&bus, "GetPlan", "s", &[&root_plan]);
    assert!(
        asked.lock().unwrap().is_empty(),
        "root's calls must not reach polkit: {:?}",
        asked.lock().unwrap()
    );

    // polkit says yes to submit: uid 65534 may submit.
    let alert_arg = format!("string:{}", journal_alert("nobody"));
    let (ok, out, err) = as_nobody(&bus, "SubmitAlert", &[&alert_arg]);
    assert!(ok, "SubmitAlert authorized by polkit: {err}");
    assert!(out.contains("string \""), "{out}");
    {
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_eq!(asked[0].subject_kind, "system-bus-name");
        assert_eq!(
            asked[0].subject_uid, NOBODY,
            "the subject is the caller's own bus name"
        );
        assert_eq!(asked[0].action, "org.vael.antibody.submit");
        assert_eq!(asked[0].flags, 0, "no user interaction");
    }

    // polkit says no to read, although nogroup is in read_groups.
    let plan_arg = format!("string:{root_plan}");
    assert_denied(
        "GetPlan refused by polkit",
        &as_nobody(&bus, "GetPlan", &[&plan_arg]),
        "polkit does not authorize uid 65534",
    );
    // A challenge cannot be answered by a bus call: denied.
    assert_denied(
        "RollbackPlan that needs authentication",
        &as_nobody(&bus, "RollbackPlan", &[&plan_arg]),
        "only after authentication",
    );
    let actions: Vec<String> = asked
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.action.clone())
        .collect();
    assert_eq!(
        actions,
        [
            "org.vael.antibody.submit",
            "org.vael.antibody.read",
            "org.vael.antibody.rollback"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_polkit_denies_everyone_but_root() {
    require_root();
    // No authority on this bus.
    let bus = PrivateBus::start_with_extra(POLICY);
    let home = tempfile::tempdir().unwrap();
    let _agent = Agent::start(
        &bus,
        home.path(),
        "[auth]\npolkit = true\nsubmit_groups = [\"nogroup\"]\n",
    );
    let alert_arg = format!("string:{}", journal_alert("nobody"));
    assert_denied(
        "SubmitAlert without polkit",
        &as_nobody(&bus, "SubmitAlert", &[&alert_arg]),
        "polkit is unreachable",
    );
    as_root(&bus, "SubmitAlert", "s", &[&journal_alert("root")]);
}
