//! T4: the systemd actions against a real systemd — a Debian 12 booted with
//! systemd-nspawn (tests/testbed/), the agent running there as a
//! `Type=notify` service on the machine's own system bus. Needs root; fails
//! (never skips) without it or without the testbed.

mod support;

use std::time::Duration;

use serde_json::{json, Value};

use support::testbed::Testbed;

fn alert(description: &str, actions: Value) -> Value {
    json!({"source": "Watchdog", "severity": "high", "description": description, "actions": actions})
}

/// The README's command that restarts a unit through Antibody, run verbatim.
const README_RESTART: &str = r#"busctl call org.vael.Antibody /org/vael/Antibody org.vael.Antibody SubmitAlert s '{"source":"Watchdog","severity":"high","description":"sleeper stalled","actions":[{"type":"restart_service","name":"sleeper"}]}'"#;

#[test]
fn the_readme_shows_this_restart_command() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(README_RESTART),
        "README.md lacks:\n{README_RESTART}"
    );
}

/// Submits a Watchdog alert restarting `unit`: the plan id, or the refusal.
fn submit_restart(tb: &Testbed, description: &str, unit: &str) -> Result<String, String> {
    tb.submit(&alert(
        description,
        json!([{"type": "restart_service", "name": unit}]),
    ))
}

/// Submits a restart of `unit` and waits for the plan to end.
fn restart_through_antibody(tb: &Testbed, description: &str, unit: &str) -> Value {
    let id = submit_restart(tb, description, unit).unwrap();
    tb.finished_plan(&id)
}

fn log_text(plan: &Value) -> String {
    plan["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn restart_service_restarts_the_sleeper_and_the_journal_has_the_audit_trail() {
    let tb = Testbed::boot("restart");
    let invocation = tb.show("sleeper.service", "InvocationID");
    let pid = tb.show("sleeper.service", "MainPID");
    // As an IDS or the README does it: busctl on the system bus.
    let reply = tb.sh(&format!(
        "busctl --json=short {}",
        README_RESTART.trim_start_matches("busctl ")
    ));
    let reply: Value = serde_json::from_str(reply.trim()).unwrap();
    let id = reply["data"][0].as_str().unwrap().to_string();
    assert_eq!(reply["data"][1], true);
    let plan = tb.finished_plan(&id);
    assert_eq!(plan["status"], "success", "{plan}");
    let new_invocation = tb.show("sleeper.service", "InvocationID");
    let new_pid = tb.show("sleeper.service", "MainPID");
    assert_ne!(new_invocation, invocation);
    assert_ne!(new_pid, pid);
    assert_eq!(tb.show("sleeper.service", "ActiveState"), "active");
    let changes = &plan["actions"][0]["changes"];
    assert_eq!(changes["before"]["invocation_id"], invocation);
    assert_eq!(changes["after"]["invocation_id"], new_invocation);
    assert_eq!(changes["result"], "done");
    // The operator's audit trail: journalctl by plan id, in ledger order.
    assert_eq!(
        tb.journal_kinds(&id),
        [
            "plan_created",
            "plan_started",
            "action_started",
            "action_applied",
            "plan_finished"
        ]
    );
}

#[test]
fn a_restart_waits_for_a_slow_stop_and_a_missing_unit_fails_plainly() {
    let tb = Testbed::boot("slow");
    let before = tb.show("slow-stop.service", "InvocationID");
    let plan = restart_through_antibody(&tb, "slow", "slow-stop");
    assert_eq!(plan["status"], "success", "{plan}");
    // Success means the job ended: the new invocation is already running.
    assert_ne!(
        plan["actions"][0]["changes"]["after"]["invocation_id"],
        before
    );
    assert_eq!(
        plan["actions"][0]["changes"]["after"]["active_state"],
        "active"
    );

    let plan = restart_through_antibody(&tb, "ghost", "no-such-unit");
    assert_eq!(plan["status"], "failed");
    assert_eq!(plan["actions"][0]["attempts"], 1);
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("no-such-unit.service does not exist"),
        "{error}"
    );
}

#[test]
fn a_unit_that_fails_to_start_fails_the_plan_with_systemds_job_result_after_the_retries() {
    let tb = Testbed::boot("failing");
    let plan = restart_through_antibody(&tb, "failing", "failing");
    assert_eq!(plan["status"], "failed", "{plan}");
    // tests/testbed/antibody.toml: retry.max_attempts = 3.
    assert_eq!(plan["actions"][0]["attempts"], 3);
    let log = log_text(&plan);
    assert_eq!(
        log.matches("ended with result \"failed\"").count(),
        3,
        "{log}"
    );
    assert_eq!(tb.show("failing.service", "Result"), "exit-code");
}

/// Waits for the plan's first action (a throttle) to be reverted, then
/// gives a wrongly repeated revert the time to show, and counts.
fn undone_exactly_once(tb: &Testbed, id: &str) {
    tb.wait_until("the throttle to be undone", Duration::from_secs(30), || {
        tb.plan(id)["actions"][0]["state"] == "reverted"
    });
    std::thread::sleep(Duration::from_secs(2));
    let kinds = tb.journal_kinds(id);
    assert_eq!(
        kinds.iter().filter(|k| *k == "action_reverted").count(),
        1,
        "{kinds:?}"
    );
}

#[test]
fn a_throttle_shows_in_systemd_and_is_undone_exactly_once_across_a_sigkill() {
    let tb = Testbed::boot("throttle");
    let original = tb.show("sleeper.service", "CPUQuotaPerSecUSec");
    assert_eq!(original, "infinity");
    let id = tb
        .submit(&alert(
            "hog",
            json!([{"type": "throttle_entity", "entity": "sleeper.service", "seconds": 4, "memory_high": "256M"}]),
        ))
        .unwrap();
    let plan = tb.finished_plan(&id);
    assert_eq!(plan["status"], "success", "{plan}");
    assert_eq!(tb.show("sleeper.service", "CPUQuotaPerSecUSec"), "200ms");
    assert_eq!(tb.show("sleeper.service", "MemoryHigh"), "268435456");
    assert_eq!(tb.show("sleeper.service", "IOWeight"), "10");

    // SIGKILL the agent while the throttle holds; systemd starts it again
    // (Restart=on-failure) and the revert still happens, once.
    let agent_pid = tb.show("antibody.service", "MainPID");
    // --kill-who=main: signalling the unit's whole cgroup can fail with EIO
    // on the cgroup v1 hierarchy the container sees.
    tb.sh("systemctl kill --kill-who=main -s SIGKILL antibody.service");
    tb.wait_for_new_agent("the agent to come back", &agent_pid);
    undone_exactly_once(&tb, &id);
    assert_eq!(tb.show("sleeper.service", "CPUQuotaPerSecUSec"), original);
    assert_eq!(tb.show("sleeper.service", "MemoryHigh"), "infinity");
    assert_eq!(tb.show("sleeper.service", "IOWeight"), "[not set]");
    tb.sh("antibodyctl verify");
}

#[test]
fn a_throttle_changed_with_systemctl_is_recorded_as_drift_and_left_alone() {
    let tb = Testbed::boot("unitdrift");
    let id = tb
        .submit(&alert(
            "hog",
            json!([{"type": "throttle_entity", "entity": "sleeper.service", "seconds": 600}]),
        ))
        .unwrap();
    assert_eq!(tb.finished_plan(&id)["status"], "success");
    assert_eq!(tb.show("sleeper.service", "CPUQuotaPerSecUSec"), "200ms");
    // The operator lifts the quota by hand; reconcile (every 5 s) notices.
    tb.sh("systemctl set-property --runtime sleeper.service CPUQuota=80%");
    tb.wait_until("a unit_drift record", Duration::from_secs(20), || {
        tb.journal_kinds(&id).iter().any(|k| k == "unit_drift")
    });
    let record = tb.sh(&format!(
        "journalctl -u antibody ANTIBODY_PLAN_ID={id} MESSAGE_ID=c3a1f5e07b9d4e2a8f61d0b4e9a7c258 -o cat --no-pager"
    ));
    assert!(
        record.contains(r#""found":{"CPUQuotaPerSecUSec":800000"#),
        "{record}"
    );
    let log = log_text(&tb.plan(&id));
    assert!(
        log.contains("limits were changed from outside the agent"),
        "{log}"
    );
    // Left as the operator set it, and recorded once over further rounds.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(tb.show("sleeper.service", "CPUQuotaPerSecUSec"), "800ms");
    let kinds = tb.journal_kinds(&id);
    assert_eq!(
        kinds.iter().filter(|k| *k == "unit_drift").count(),
        1,
        "{kinds:?}"
    );
    tb.sh(&format!("antibodyctl rollback {id}"));
    tb.wait_until("the rollback", Duration::from_secs(20), || {
        tb.plan(&id)["actions"][0]["state"] == "reverted"
    });
    assert_eq!(tb.show("sleeper.service", "CPUQuotaPerSecUSec"), "infinity");
}

#[test]
fn protected_units_and_the_flap_limit_are_refused_with_named_errors() {
    let tb = Testbed::boot("guards");
    for unit in [
        "dbus.service",
        "antibody.service",
        "systemd-journald",
        "ssh",
    ] {
        let err = submit_restart(&tb, "never", unit).unwrap_err();
        assert!(
            err.starts_with("antibodyctl: ProtectedTarget: "),
            "{unit}: {err}"
        );
    }
    let err = tb
        .submit(&alert(
            "never",
            json!([{"type": "throttle_entity", "entity": "unit:antibody.service", "seconds": 5}]),
        ))
        .unwrap_err();
    assert!(
        err.starts_with("antibodyctl: ProtectedTarget: ") && err.contains("the agent's own unit"),
        "{err}"
    );
    // An alias of a protected unit: refused at submit when its unit file
    // says so, and at apply by the names systemd itself knows.
    let err = submit_restart(&tb, "never", "dbus-org.freedesktop.login1").unwrap_err();
    assert!(
        err.starts_with("antibodyctl: ProtectedTarget: ")
            && err.contains("is another name of systemd-logind.service"),
        "{err}"
    );
    // system.control is on systemd's search path but not among the unit
    // directories validation reads: only systemd knows this alias.
    tb.sh("mkdir -p /etc/systemd/system.control && \
           ln -s /lib/systemd/system/dbus.service /etc/systemd/system.control/message-bus.service && \
           systemctl daemon-reload");
    let names = tb.show("message-bus.service", "Names");
    assert!(names.contains("dbus.service"), "the alias took: {names}");
    let bus_pid = tb.show("dbus.service", "MainPID");
    let plan = restart_through_antibody(&tb, "alias", "message-bus");
    assert_eq!(plan["status"], "failed", "{plan}");
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused at apply: message-bus.service is another name of dbus.service"),
        "{error}"
    );
    assert_eq!(tb.show("dbus.service", "MainPID"), bus_pid);
    // Three restarts of one unit in the window are fine; the fourth is not.
    for n in 0..3 {
        let id = submit_restart(&tb, &format!("flap {n}"), "sleeper").unwrap();
        assert_eq!(tb.finished_plan(&id)["status"], "success");
    }
    let invocation = tb.show("sleeper.service", "InvocationID");
    let err = submit_restart(&tb, "flap 3", "sleeper").unwrap_err();
    assert!(
        err.starts_with("antibodyctl: RateLimited: actions[0].name: unit:sleeper.service already has 3 restart(s)"),
        "{err}"
    );
    assert_eq!(tb.show("sleeper.service", "InvocationID"), invocation);
    // The operator was told, in the journal.
    let notices = tb
        .sh("journalctl -u antibody MESSAGE_ID=32269a156c5b4cb899fa933daa2dcd78 -o cat --no-pager");
    assert!(notices.contains("flap limit reached"), "{notices}");
}

#[test]
fn targets_sessions_and_units_systemd_guards_are_never_touched() {
    let tb = Testbed::boot("unit-guards");
    // Starting reboot.target or poweroff.target would take the host down;
    // restarting or starving user.slice would end every login session.
    for unit in [
        "reboot.target",
        "poweroff.target",
        "user.slice",
        "getty@tty1",
    ] {
        let err = submit_restart(&tb, "never", unit).unwrap_err();
        assert!(
            err.starts_with("antibodyctl: ProtectedTarget: "),
            "{unit}: {err}"
        );
    }
    let memory_high = tb.show("user.slice", "MemoryHigh");
    let err = tb
        .submit(&alert(
            "never",
            json!([{"type": "throttle_entity", "entity": "user.slice", "seconds": 60, "memory_high": "1M"}]),
        ))
        .unwrap_err();
    assert!(err.starts_with("antibodyctl: ProtectedTarget: "), "{err}");
    assert_eq!(tb.show("user.slice", "MemoryHigh"), memory_high);
    assert_eq!(tb.sh("systemctl is-system-running").trim(), "running");

    // What only systemd knows about a unit is checked just before the change.
    tb.sh(
        "printf '[Unit]\\nRefuseManualStart=yes\\n[Service]\\nExecStart=/bin/sleep infinity\\n' \
             > /etc/systemd/system/refuser.service && systemctl daemon-reload",
    );
    assert_eq!(tb.show("refuser.service", "RefuseManualStart"), "yes");
    let plan = restart_through_antibody(&tb, "refuser", "refuser");
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused at apply: refuser.service refuses manual start or stop"),
        "{error}"
    );
    assert_eq!(tb.show("refuser.service", "ActiveState"), "inactive");
    // A service started into user.slice (systemd-run, a transient unit).
    tb.sh("systemd-run --quiet --unit=sneaky --slice=user.slice /bin/sleep infinity");
    let sneaky = tb.show("sneaky.service", "InvocationID");
    let plan = restart_through_antibody(&tb, "sneaky", "sneaky");
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused at apply: sneaky.service runs in user.slice, under user.slice"),
        "{error}"
    );
    assert_eq!(tb.show("sneaky.service", "InvocationID"), sneaky);

    // restart.allowed_units, set by a drop-in and a reload, is the only
    // list of units that may be touched.
    tb.sh("mkdir -p /etc/antibody/antibody.toml.d && \
           printf '[restart]\\nallowed_units = [\"sleep*.service\"]\\n' \
             > /etc/antibody/antibody.toml.d/50-allowed.toml && systemctl reload antibody");
    tb.wait_until("the reload", Duration::from_secs(10), || {
        tb.sh(
            "journalctl -u antibody -o cat --no-pager MESSAGE_ID=03a7e18b53d84f5e91acd0b0855bd43d",
        )
        .contains("configuration reloaded")
    });
    let err = submit_restart(&tb, "not allowed", "slow-stop").unwrap_err();
    assert!(
        err.contains("slow-stop.service matches none of restart.allowed_units"),
        "{err}"
    );
    let plan = restart_through_antibody(&tb, "allowed", "sleeper");
    assert_eq!(plan["status"], "success", "{plan}");
}

#[test]
fn a_guard_entry_that_does_not_parse_stops_the_agent_once_not_in_a_loop() {
    let tb = Testbed::boot("bad-config");
    // A hostname is not an address: protect.addresses would protect nothing.
    tb.sh("mkdir -p /etc/antibody/antibody.toml.d && \
           printf '[protect]\\naddresses = [\"10.0.0.0/8\", \"db.example\"]\\n' \
             > /etc/antibody/antibody.toml.d/50-bad.toml");
    // A reload refuses it and keeps the running configuration.
    tb.sh("systemctl reload antibody");
    tb.wait_until("the refused reload", Duration::from_secs(10), || {
        tb.sh(
            "journalctl -u antibody -o cat --no-pager MESSAGE_ID=03a7e18b53d84f5e91acd0b0855bd43d",
        )
        .contains("protect.addresses[1]")
    });
    assert_eq!(tb.show("antibody.service", "ActiveState"), "active");
    // A start with it fails with EX_CONFIG, and systemd does not retry.
    let (ok, _, _) = tb.try_sh("systemctl restart antibody");
    assert!(!ok, "the start with a bad config must fail");
    std::thread::sleep(Duration::from_secs(3)); // RestartSec=1s, three times over
    assert_eq!(tb.show("antibody.service", "ActiveState"), "failed");
    assert_eq!(tb.show("antibody.service", "ExecMainStatus"), "78");
    // Once the agent exited 78, systemd scheduled no restart. (Not
    // NRestarts == 0: in the booted container systemd itself sometimes
    // fails the first start right after the stop, before the agent runs,
    // with status=219/CGROUP, and restarts that once; CI saw it twice.)
    let log = tb.sh("journalctl -u antibody -o short-monotonic --no-pager");
    let (_, after_config_exit) = log
        .split_once("status=78/CONFIG")
        .unwrap_or_else(|| panic!("no exit with status 78 in the journal:\n{log}"));
    assert!(
        !after_config_exit.contains("Scheduled restart job"),
        "systemd restarted the agent after it exited 78; its journal:\n{log}"
    );
    assert_eq!(
        log.matches("status=78/CONFIG").count(),
        1,
        "the agent exited 78 more than once; its journal:\n{log}"
    );
    assert!(
        log.contains(
            "protect.addresses[1]: \"db.example\" is neither an address nor a CIDR prefix"
        ),
        "{log}"
    );
}

#[test]
fn a_replay_longer_than_the_start_timeout_ends_in_ready_not_a_restart_loop() {
    let tb = Testbed::boot("long-replay");
    tb.sh("systemctl stop antibody");
    // A ledger whose replay (no checkpoint) takes this debug build several
    // seconds, against a start timeout of 1 s.
    let root = tb.root();
    let ledger = root.join("var/log/antibody");
    std::fs::remove_dir_all(&ledger).unwrap();
    std::fs::remove_dir_all(root.join("var/lib/antibody")).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(support::write_filler_ledger(&ledger, 250_000));
    tb.sh("mkdir -p /run/systemd/system/antibody.service.d && \
           printf '[Service]\\nTimeoutStartSec=1s\\n' > /run/systemd/system/antibody.service.d/short.conf && \
           systemctl daemon-reload && systemctl start antibody");
    assert_eq!(tb.show("antibody.service", "ActiveState"), "active");
    assert_eq!(tb.show("antibody.service", "NRestarts"), "0");
    let usec = |property: &str| -> u64 { tb.show("antibody.service", property).parse().unwrap() };
    let start_ms =
        (usec("ActiveEnterTimestampMonotonic") - usec("ExecMainStartTimestampMonotonic")) / 1000;
    assert!(
        start_ms > 3000,
        "the start took {start_ms} ms, not long enough past TimeoutStartSec=1s to prove anything: write a longer ledger"
    );
    println!("a start of {start_ms} ms against TimeoutStartSec=1s ended in READY=1");
    let log = tb.sh("journalctl -u antibody -o cat --no-pager");
    assert!(!log.contains("timed out"), "{log}");
    // The replay wrote a checkpoint: the next start is short.
    tb.sh("systemctl restart antibody");
    assert_eq!(tb.show("antibody.service", "NRestarts"), "0");
}

#[test]
fn a_stalled_agent_is_restarted_by_systemds_watchdog() {
    let tb = Testbed::boot("watchdog");
    tb.sh(
        "mkdir -p /run/systemd/system/antibody.service.d && \
         printf '[Service]\\nWatchdogSec=1s\\nTimeoutAbortSec=2s\\n' > /run/systemd/system/antibody.service.d/watchdog.conf && \
         systemctl daemon-reload && systemctl restart antibody.service",
    );
    tb.wait_active("antibody.service");
    let pid = tb.show("antibody.service", "MainPID");
    // Alive and pinging: a few watchdog periods pass without a restart.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(tb.show("antibody.service", "MainPID"), pid);
    tb.sh("systemctl kill --kill-who=main -s SIGSTOP antibody.service");
    tb.wait_for_new_agent("systemd to restart the stalled agent", &pid);
    let log = tb.sh("journalctl -u antibody.service -o cat --no-pager");
    assert!(log.contains("Watchdog timeout"), "{log}");
    // The restarted agent answers.
    tb.sh("antibodyctl status");
}

#[test]
fn a_restart_job_past_its_timeout_fails_and_never_blocks_the_bus_interface() {
    let tb = Testbed::boot("timeout");
    // A reload (SIGHUP through systemctl) brings in a 1 s restart timeout.
    tb.sh("mkdir -p /etc/antibody/antibody.toml.d && \
         printf '[restart]\\ntimeout_secs = 1\\n' > /etc/antibody/antibody.toml.d/timeout.toml && \
         systemctl reload antibody.service");
    tb.wait_until("the reload to be recorded", Duration::from_secs(30), || {
        tb.sh("journalctl -u antibody -o cat --no-pager")
            .contains("config_reloaded")
    });
    let id = submit_restart(&tb, "slow", "slow-stop").unwrap();
    // While the job waits on the unit's 3 s stop, the agent answers: the
    // plan is seen mid-flight through Status and GetPlan.
    tb.wait_until("the restart to start", Duration::from_secs(30), || {
        tb.plan(&id)["status"] == "in_progress"
    });
    let status: Value = serde_json::from_str(&tb.sh("antibodyctl --json status")).unwrap();
    assert_eq!(status["in_flight"], 1, "{status}");
    let plan = tb.plan(&id);
    assert_eq!(
        plan["status"], "in_progress",
        "answered while the job waits: {plan}"
    );
    let plan = tb.finished_plan(&id);
    assert_eq!(plan["status"], "failed");
    assert_eq!(
        plan["actions"][0]["attempts"], 1,
        "a timeout is not retried"
    );
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("did not finish within 1 s (restart.timeout_secs)"),
        "{error}"
    );
}

#[test]
fn after_a_bus_restart_or_a_systemd_reexec_the_agent_still_drives_systemd() {
    let tb = Testbed::boot("busrestart");
    // A throttle in force across the bus restart: its timed revert must
    // still happen, once, over whatever connection the agent has then.
    let throttle = tb
        .submit(&alert(
            "hog before the bus restart",
            json!([{"type": "throttle_entity", "entity": "sleeper.service", "seconds": 8}]),
        ))
        .unwrap();
    assert_eq!(tb.finished_plan(&throttle)["status"], "success");
    assert_eq!(tb.show("sleeper.service", "CPUQuotaPerSecUSec"), "200ms");
    // A restart job under way while the bus goes: slow-stop takes 3 s to stop.
    let slow_invocation = tb.show("slow-stop.service", "InvocationID");
    let slow = submit_restart(&tb, "restart across the bus restart", "slow-stop").unwrap();
    tb.wait_until("the slow stop to begin", Duration::from_secs(30), || {
        tb.show("slow-stop.service", "ActiveState") == "deactivating"
    });

    let agent_pid = tb.show("antibody.service", "MainPID");
    tb.sh("systemctl restart dbus.service");
    tb.wait_until(
        "the agent to answer on the new bus",
        Duration::from_secs(30),
        || tb.try_sh("antibodyctl status").0,
    );
    // Served again by the same process: no failure, no restart by systemd.
    assert_eq!(tb.show("antibody.service", "MainPID"), agent_pid);
    assert_eq!(tb.show("antibody.service", "NRestarts"), "0");
    // The job's JobRemoved went with the old bus: the agent followed the job
    // to its end and judged it by the new invocation, without a second restart.
    let plan = tb.finished_plan(&slow);
    assert_eq!(plan["status"], "success", "{plan}");
    assert_eq!(plan["actions"][0]["attempts"], 1, "{plan}");
    assert_eq!(plan["actions"][0]["changes"]["result"], "unheard", "{plan}");
    assert_ne!(
        tb.show("slow-stop.service", "InvocationID"),
        slow_invocation
    );
    let stops =
        tb.sh("journalctl -u slow-stop.service -o cat --no-pager | grep -c '^Stopping' || true");
    assert_eq!(stops.trim(), "1", "slow-stop was stopped {stops} times");
    // A restart through the agent needs its Manager connection to work on
    // the new bus: RestartUnit and the JobRemoved of exactly that job.
    let invocation = tb.show("sleeper.service", "InvocationID");
    let plan = restart_through_antibody(&tb, "after the bus restart", "sleeper");
    assert_eq!(plan["status"], "success", "{plan}");
    assert_ne!(tb.show("sleeper.service", "InvocationID"), invocation);

    undone_exactly_once(&tb, &throttle);
    assert_eq!(tb.show("sleeper.service", "CPUQuotaPerSecUSec"), "infinity");

    // systemd re-executed keeps the agent's subscription, and the agent's
    // one JobRemoved listener follows it to its new bus name.
    tb.sh("systemctl daemon-reexec");
    let plan = restart_through_antibody(&tb, "after daemon-reexec", "sleeper");
    assert_eq!(plan["status"], "success", "{plan}");
    assert_eq!(plan["actions"][0]["changes"]["result"], "done", "{plan}");
    tb.sh("antibodyctl verify");
}

/// Under the shipped unit's sandbox (`ProcSubset=pid` hides `/proc/net`,
/// the capability set is only `CAP_NET_ADMIN`): the gateway guard still
/// sees the routing table, and an isolation reaches the kernel through nft.
#[test]
fn under_its_unit_the_agent_isolates_through_nft_but_never_the_gateway() {
    let tb = Testbed::boot("gateway");
    // The testbed's private network has only lo: a default route on it.
    tb.sh("ip link set lo up && ip route add default via 10.20.30.1 dev lo onlink");
    for action in [
        json!({"type": "isolate_socket", "sid": "10.20.30.1", "seconds": 30}),
        json!({"type": "isolate_socket", "sid": "10.20.30.1:443", "seconds": 30}),
        json!({"type": "throttle_entity", "entity": "ip:10.20.30.1", "seconds": 30}),
    ] {
        let err = tb.submit(&alert("gateway", json!([action]))).unwrap_err();
        assert!(
            err.starts_with("antibodyctl: ProtectedTarget: ")
                && err.contains("10.20.30.1 is the host's default gateway"),
            "{action}: {err}"
        );
    }
    let id = tb
        .submit(&alert(
            "scanner",
            json!([{"type": "isolate_socket", "sid": "10.20.30.9", "seconds": 30}]),
        ))
        .unwrap();
    let plan = tb.finished_plan(&id);
    assert_eq!(plan["status"], "success", "{plan}");
    let set = tb.sh("nft -j list set inet antibody addr4");
    assert!(set.contains("\"10.20.30.9\""), "{set}");
    assert!(!set.contains("\"10.20.30.1\""), "{set}");
}
