//! T2: what the hardening of issue 13 changed that a caller on the bus
//! sees, against a private `dbus-daemon` with the shipped policy and the
//! real `antibodyd`: the per-uid rate limit's named error, webhook URLs
//! kept to their scheme and host, and a configuration whose guard does not
//! parse stopping the agent with EX_CONFIG. Needs root; fails without it.

mod support;

use std::process::Command;

use support::*;

const NOBODY: u32 = 65534;
const NAME: &str = "org.vael.Antibody";
const PATH: &str = "/org/vael/Antibody";
const IFACE: &str = "org.vael.Antibody";

// The policy admits members of `antibody` only; this test's caller is
// uid 65534 in `nogroup`, so the bus is told to let it through
// (support::LET_NOBODY_THROUGH) and the agent's own check
// (submit_groups = nogroup) decides.

fn busctl_as(
    bus: &PrivateBus,
    as_user: Option<(u32, &[u32])>,
    args: &[&str],
) -> (bool, String, String) {
    let argv = [&["--system", "call", NAME, PATH, IFACE], args].concat();
    run_on_bus(bus, "busctl", &argv, as_user)
}

fn journal_alert(description: &str) -> String {
    alert(&format!(
        r#"[{{"type":"notify_operator","channel":"journal","message":"{description}"}}]"#
    ))
}

#[test]
fn a_caller_past_its_rate_gets_rate_limited_and_root_does_not() {
    require_root();
    let bus = PrivateBus::start_with_extra(support::LET_NOBODY_THROUGH);
    let home = tempfile::tempdir().unwrap();
    let _agent = Agent::start(
        &bus,
        home.path(),
        "[auth]\nsubmit_groups = [\"nogroup\"]\nread_groups = [\"nogroup\"]\nsubmit_rate_per_sec = 1\nsubmit_burst = 2\n",
    );
    let member: Option<(u32, &[u32])> = Some((NOBODY, &[NOBODY]));
    for n in 0..2 {
        let (ok, _, err) = busctl_as(
            &bus,
            member,
            &["SubmitAlert", "s", &journal_alert(&format!("ok {n}"))],
        );
        assert!(ok, "{err}");
    }
    let (ok, _, err) = busctl_as(
        &bus,
        member,
        &["SubmitAlert", "s", &journal_alert("one too many")],
    );
    assert!(!ok);
    assert!(
        err.contains("uid 65534 creates plans faster than auth.submit_rate_per_sec = 1"),
        "{err}"
    );
    // dbus-send names the error.
    let (ok, _, err) = run_on_bus(
        &bus,
        "dbus-send",
        &[
            "--system",
            "--print-reply",
            &format!("--dest={NAME}"),
            PATH,
            &format!("{IFACE}.SubmitAlert"),
            &format!("string:{}", journal_alert("and another")),
        ],
        member,
    );
    assert!(
        !ok && err.contains("Error org.vael.Antibody.Error.RateLimited:"),
        "{err}"
    );
    // A duplicate of a live plan creates nothing and is not refused.
    let (ok, _, err) = busctl_as(&bus, member, &["SubmitAlert", "s", &journal_alert("ok 0")]);
    assert!(ok, "{err}");
    // Root has no bucket.
    for n in 0..5 {
        let (ok, _, err) = busctl_as(
            &bus,
            None,
            &["SubmitAlert", "s", &journal_alert(&format!("root {n}"))],
        );
        assert!(ok, "{err}");
    }
}

#[test]
fn a_webhook_url_shows_only_its_scheme_and_host_in_dry_runs_plans_and_logs() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    // Port 9 on loopback: nothing listens, every POST fails at once.
    let secret = "T0KEN-s3cr3t";
    let agent = Agent::start(
        &bus,
        home.path(),
        &format!(
            "[retry]\nbase_ms = 10\nmax_attempts = 2\n[notify.channels.ops]\nkind = \"webhook\"\nurl = \"http://user:{secret}@127.0.0.1:9/hooks/{secret}?token={secret}\"\ntimeout_secs = 2\n"
        ),
    );
    let webhook = alert(r#"[{"type":"notify_operator","channel":"ops","message":"disk"}]"#);
    let (ok, preview, err) = busctl(&bus, &["call", NAME, PATH, IFACE, "DryRun", "s", &webhook]);
    assert!(ok, "{err}");
    // (busctl prints the "…" after it as octal escapes.)
    assert!(
        preview.contains("HTTP POST of JSON to http://127.0.0.1:9/"),
        "{preview}"
    );
    assert!(!preview.contains(secret), "{preview}");

    let (ok, out, err) = busctl(
        &bus,
        &["call", NAME, PATH, IFACE, "SubmitAlert", "s", &webhook],
    );
    assert!(ok, "{err}");
    let id = out.split('"').nth(1).unwrap().to_string();
    let plan = || busctl(&bus, &["call", NAME, PATH, IFACE, "GetPlan", "s", &id]).1;
    wait_until(
        std::time::Duration::from_secs(20),
        || plan().contains(r#"\"status\":\"failed\""#),
        "the webhook plan to fail",
    );
    let plan = plan();
    assert!(plan.contains("POST http://127.0.0.1:9/"), "{plan}");
    assert!(!plan.contains(secret), "{plan}");
    // Nor in what the agent logged (its journal lines go to stderr here).
    assert!(!agent.log_text().contains(secret), "{}", agent.log_text());
}

#[test]
fn a_world_readable_config_with_webhooks_is_warned_about() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let config = write_config(
        home.path(),
        "[notify.channels.ops]\nkind = \"webhook\"\nurl = \"https://hooks.example/x\"\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = Agent::start_with_config(&bus, home.path(), &config, &[]);
    wait_until(
        std::time::Duration::from_secs(5),
        || agent.log_text().contains("is readable by every user"),
        "the warning",
    );
    assert!(agent
        .log_text()
        .contains(&format!("{} is readable by every user", config.display())));
}

#[test]
fn a_guard_that_does_not_parse_stops_the_agent_with_ex_config_naming_key_and_entry() {
    let home = tempfile::tempdir().unwrap();
    for (toml, says) in [
        (
            "[protect]\naddresses = [\"10.0.0.0/8\", \"db.internal\"]\n",
            "protect.addresses[1]: \"db.internal\" is neither an address nor a CIDR prefix",
        ),
        (
            "[protect]\nunits = [\"web-?\"]\n",
            "protect.units[0]: \"web-?\" matches no unit",
        ),
        (
            "[restart]\nallowed_units = [\"unit:web\"]\n",
            "restart.allowed_units[0]: \"unit:web\": name the unit without \"unit:\"",
        ),
        (
            // The test's ledger and state are under its home directory.
            "[hot_patch]\nallowed_paths = [\"HOME\"]\n",
            "hot_patch.allowed_paths[0]: HOME holds or lies in ledger.dir",
        ),
    ] {
        let home_text = home.path().display().to_string();
        let (toml, says) = (
            toml.replace("HOME", &home_text),
            says.replace("HOME", &home_text),
        );
        let config = write_config(home.path(), &toml);
        for args in [vec!["--check-config"], vec![]] {
            let out = Command::new(env!("CARGO_BIN_EXE_antibodyd"))
                .arg("--config")
                .arg(&config)
                .args(&args)
                .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(78), "{args:?} {toml}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(&says), "{stderr}");
        }
    }
}
