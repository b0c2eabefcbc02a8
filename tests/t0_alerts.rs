//! T0 tests of alert validation (DESIGN.md §2 alert format, §3 actions and
//! guards): the envelope (`parse_alert`) and every action's parameters
//! (`Registry::validate_alert`), driven by tables of bad alerts (each with the
//! named error and the field path its message must start with) and good
//! alerts (each with the normalized parameters and targets it must yield).
//! Pure: nothing here touches the system.

use antibody::actions::{Registry, ValidateCtx};
use antibody::config::Config;
use antibody::error::{AgentError, ErrorName};
use antibody::plan::{parse_alert, ActionSeed, Severity, Source};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------- helpers

/// The unit the agent runs in for these tests (`ValidateCtx::own_unit`).
const OWN_UNIT: &str = "antibody-test.service";

/// Envelope parsing, then action validation with `OWN_UNIT` as the agent's unit.
fn check(alert_json: &str, config: &Config) -> Result<Vec<ActionSeed>, AgentError> {
    check_as(alert_json, config, Some(OWN_UNIT))
}

fn check_as(
    alert_json: &str,
    config: &Config,
    own_unit: Option<&str>,
) -> Result<Vec<ActionSeed>, AgentError> {
    let alert = parse_alert(alert_json)?;
    Registry::builtin().validate_alert(&alert, &ValidateCtx { config, own_unit })
}

/// A config with every guard populated.
fn test_config() -> Config {
    Config::from_toml(
        r#"
[isolate]
default_seconds = 600
[hot_patch]
allowed_paths = ["/srv/app", "/etc/vael"]
[protect]
units = ["db", "payments.service", "batch-*.service"]
addresses = ["10.9.9.9", "fd00::99"]
ports = [22, 2222]
[notify.channels.ops]
kind = "webhook"
url = "http://127.0.0.1:9000/hook"
"#,
    )
    .expect("the test config is valid")
}

/// Which config a row is checked against.
#[derive(Clone, Copy, Debug)]
enum Cfg {
    /// `test_config()`.
    Test,
    /// `Config::default()`: hot_patch off, no configured protections but port 22.
    Default,
}

impl Cfg {
    fn config(self) -> Config {
        match self {
            Cfg::Test => test_config(),
            Cfg::Default => Config::default(),
        }
    }
}

/// A well-formed envelope around `actions` (the inside of the array).
fn alert(actions: &str) -> String {
    format!(
        r#"{{"source":"Watchdog","severity":"high","description":"test alert","actions":[{actions}]}}"#
    )
}

/// A good alert's envelope with `fields` replacing source/severity/description/actions.
fn envelope(fields: &str) -> String {
    format!("{{{fields}}}")
}

const NOTIFY: &str = r#"{"type":"notify_operator","channel":"journal","message":"m"}"#;
const RESTART: &str = r#"{"type":"restart_service","name":"vael"}"#;
const GOOD_DIFF: &str = r#"--- a/app.conf\n+++ b/app.conf\n@@ -1 +1 @@\n-old\n+new\n"#;

fn n_actions(n: usize) -> String {
    alert(&vec![NOTIFY; n].join(","))
}

/// `alert(...)` padded with leading white space to exactly `len` bytes.
fn padded_alert(len: usize) -> String {
    let base = alert(RESTART);
    assert!(base.len() <= len);
    format!("{}{base}", " ".repeat(len - base.len()))
}

fn hot_patch(file: &str, diff: &str, sha: Option<&str>) -> String {
    let sha = sha
        .map(|s| format!(r#","sha256":"{s}""#))
        .unwrap_or_default();
    alert(&format!(
        r#"{{"type":"hot_patch","file":"{file}","diff":"{diff}"{sha}}}"#
    ))
}

// ---------------------------------------------------------------- bad rows

struct Bad {
    what: &'static str,
    json: String,
    cfg: Cfg,
    name: ErrorName,
    /// The field path plus ':' the message must start with.
    prefix: &'static str,
    /// A phrase the message must contain, where the row names one.
    phrase: Option<&'static str>,
}

fn bad(
    what: &'static str,
    json: impl Into<String>,
    name: ErrorName,
    prefix: &'static str,
    phrase: &'static str,
) -> Bad {
    Bad {
        what,
        json: json.into(),
        cfg: Cfg::Test,
        name,
        prefix,
        phrase: (!phrase.is_empty()).then_some(phrase),
    }
}

/// `bad` against `Config::default()`.
fn bad_default(
    what: &'static str,
    json: impl Into<String>,
    name: ErrorName,
    prefix: &'static str,
    phrase: &'static str,
) -> Bad {
    Bad {
        cfg: Cfg::Default,
        ..bad(what, json, name, prefix, phrase)
    }
}

use ErrorName::{InvalidAlert as Inv, ProtectedTarget as Prot, UnknownAction as Unk};

fn envelope_rows() -> Vec<Bad> {
    vec![
        bad("not JSON", "not json", Inv, "alert:", "is not valid JSON"),
        bad("empty input", "", Inv, "alert:", "is not valid JSON"),
        bad(
            "truncated object",
            r#"{"source":"NEXUS""#,
            Inv,
            "alert:",
            "is not valid JSON",
        ),
        bad(
            "an array, not an object",
            "[1,2]",
            Inv,
            "alert:",
            "must be a JSON object, not an array",
        ),
        bad(
            "a string, not an object",
            r#""restart vael""#,
            Inv,
            "alert:",
            "not a string",
        ),
        bad("null, not an object", "null", Inv, "alert:", "not null"),
        bad(
            "a number, not an object",
            "42",
            Inv,
            "alert:",
            "not a number",
        ),
        bad(
            "trailing garbage",
            format!("{} x", alert(RESTART)),
            Inv,
            "alert:",
            "is not valid JSON",
        ),
        bad(
            "two objects back to back",
            format!("{0}{0}", alert(RESTART)),
            Inv,
            "alert:",
            "is not valid JSON",
        ),
        bad(
            "duplicate top-level key",
            r#"{"source":"NEXUS","severity":"high","severity":"low","description":"d","actions":[{"type":"restart_service","name":"vael"}]}"#,
            Inv,
            "alert:",
            "duplicate key \"severity\"",
        ),
        bad(
            "duplicate top-level key spelled with an escape",
            r#"{"source":"NEXUS","\u0073ource":"Manual","severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}]}"#,
            Inv,
            "alert:",
            "duplicate key \"source\"",
        ),
        bad(
            "duplicate key inside an action",
            alert(r#"{"type":"restart_service","name":"vael","name":"dbus"}"#),
            Inv,
            "alert:",
            "duplicate key \"name\"",
        ),
        bad(
            "duplicate key deep inside context.payload",
            r#"{"source":"NEXUS","severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}],"context":{"payload":{"a":[{"rss":1,"rss":2}]}}}"#,
            Inv,
            "alert:",
            "duplicate key \"rss\"",
        ),
        bad(
            "one byte over 64 KiB",
            padded_alert(64 * 1024 + 1),
            Inv,
            "alert:",
            "is 65537 bytes; at most 65536",
        ),
        bad(
            "unknown top-level field",
            r#"{"source":"NEXUS","severity":"high","description":"d","priority":1,"actions":[{"type":"restart_service","name":"vael"}]}"#,
            Inv,
            "priority:",
            "unknown field",
        ),
        bad(
            "top-level field in the wrong case",
            r#"{"Source":"NEXUS","severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}]}"#,
            Inv,
            "Source:",
            "unknown field",
        ),
        bad(
            "source missing",
            envelope(
                r#""severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "source:",
            "is required",
        ),
        bad(
            "source a number",
            envelope(
                r#""source":1,"severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "source:",
            "must be a string, not a number",
        ),
        bad(
            "source null",
            envelope(
                r#""source":null,"severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "source:",
            "must be a string, not null",
        ),
        bad(
            "source \"nexus\" (case matters)",
            envelope(
                r#""source":"nexus","severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "source:",
            "\"nexus\" is not one of NEXUS, Watchdog, Manual",
        ),
        bad(
            "source \"watchdog\" (case matters)",
            envelope(
                r#""source":"watchdog","severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "source:",
            "is not one of",
        ),
        bad(
            "source with a leading space",
            envelope(
                r#""source":" NEXUS","severity":"high","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "source:",
            "is not one of",
        ),
        bad(
            "severity missing",
            envelope(
                r#""source":"NEXUS","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "severity:",
            "is required",
        ),
        bad(
            "severity a boolean",
            envelope(
                r#""source":"NEXUS","severity":true,"description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "severity:",
            "must be a string, not a boolean",
        ),
        bad(
            "severity \"High\" (case matters)",
            envelope(
                r#""source":"NEXUS","severity":"High","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "severity:",
            "\"High\" is not one of low, med, high, critical",
        ),
        bad(
            "severity \"medium\"",
            envelope(
                r#""source":"NEXUS","severity":"medium","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "severity:",
            "is not one of",
        ),
        bad(
            "description missing",
            envelope(
                r#""source":"NEXUS","severity":"low","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "description:",
            "is required",
        ),
        bad(
            "description empty",
            envelope(
                r#""source":"NEXUS","severity":"low","description":"","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "description:",
            "must not be empty",
        ),
        bad(
            "description only white space",
            envelope(
                r#""source":"NEXUS","severity":"low","description":" \t\n ","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "description:",
            "must not be empty",
        ),
        bad(
            "description 4097 bytes",
            envelope(&format!(
                r#""source":"NEXUS","severity":"low","description":"{}","actions":[{RESTART}]"#,
                "d".repeat(4097)
            )),
            Inv,
            "description:",
            "is 4097 bytes; at most 4096",
        ),
        bad(
            "description with a NUL",
            envelope(
                r#""source":"NEXUS","severity":"low","description":"a\u0000b","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "description:",
            "NUL",
        ),
        bad(
            "description an array",
            envelope(
                r#""source":"NEXUS","severity":"low","description":["d"],"actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "description:",
            "must be a string, not an array",
        ),
        bad(
            "kind not a word",
            envelope(
                r#""source":"NEXUS","severity":"low","kind":"SSH brute","description":"d","actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "kind:",
            "is not 1-64 of [a-z0-9._-]",
        ),
        bad(
            "context.alert_id with a slash",
            envelope(
                r#""source":"NEXUS","severity":"low","description":"d","context":{"alert_id":"a/b"},"actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "context.alert_id:",
            "is not 1-128 of [A-Za-z0-9._:-]",
        ),
        bad(
            "context.alert_id only dots",
            envelope(
                r#""source":"NEXUS","severity":"low","description":"d","context":{"alert_id":".."},"actions":[{"type":"restart_service","name":"vael"}]"#,
            ),
            Inv,
            "context.alert_id:",
            "\"..\" may not be only dots",
        ),
        bad(
            "actions an object",
            envelope(
                r#""source":"NEXUS","severity":"low","description":"d","actions":{"type":"restart_service","name":"vael"}"#,
            ),
            Inv,
            "actions:",
            "must be an array, not an object",
        ),
        bad(
            "actions a string",
            envelope(
                r#""source":"NEXUS","severity":"low","description":"d","actions":"restart vael""#,
            ),
            Inv,
            "actions:",
            "must be an array, not a string",
        ),
        bad(
            "actions empty",
            alert(""),
            Inv,
            "actions:",
            "must hold 1..=32 actions, not 0",
        ),
        bad(
            "33 actions",
            n_actions(33),
            Inv,
            "actions:",
            "must hold 1..=32 actions, not 33",
        ),
        bad(
            "an action that is a string",
            alert(r#""restart vael""#),
            Inv,
            "actions[0]:",
            "must be a JSON object, not a string",
        ),
        bad(
            "the second action null",
            alert(&format!("{RESTART},null")),
            Inv,
            "actions[1]:",
            "must be a JSON object, not null",
        ),
        bad(
            "action without type",
            alert(r#"{"name":"vael"}"#),
            Inv,
            "actions[0].type:",
            "is required",
        ),
        bad(
            "action type a number",
            alert(r#"{"type":3,"name":"vael"}"#),
            Inv,
            "actions[0].type:",
            "must be a string, not a number",
        ),
        bad(
            "unknown action type",
            alert(r#"{"type":"reboot_host"}"#),
            Unk,
            "actions[0].type:",
            "\"reboot_host\" is not a known action",
        ),
        bad(
            "action type in the wrong case",
            alert(r#"{"type":"Restart_Service","name":"vael"}"#),
            Unk,
            "actions[0].type:",
            "is not a known action",
        ),
        bad(
            "unknown action type third in line",
            alert(&format!(
                r#"{RESTART},{NOTIFY},{{"type":"freeze_unit","name":"vael"}}"#
            )),
            Unk,
            "actions[2].type:",
            "",
        ),
        bad(
            "unknown parameter field",
            alert(r#"{"type":"restart_service","name":"vael","unit":"vael"}"#),
            Inv,
            "actions[0].unit:",
            "unknown field",
        ),
        bad(
            "context an array",
            format!(
                r#"{{"source":"NEXUS","severity":"low","description":"d","actions":[{RESTART}],"context":[]}}"#
            ),
            Inv,
            "context:",
            "must be a JSON object, not an array",
        ),
        bad(
            "unknown context field",
            format!(
                r#"{{"source":"NEXUS","severity":"low","description":"d","actions":[{RESTART}],"context":{{"host":"a"}}}}"#
            ),
            Inv,
            "context.host:",
            "unknown field",
        ),
        bad(
            "context.entity a number",
            format!(
                r#"{{"source":"NEXUS","severity":"low","description":"d","actions":[{RESTART}],"context":{{"entity":7}}}}"#
            ),
            Inv,
            "context.entity:",
            "must be a string, not a number",
        ),
        bad(
            "context.entity empty",
            format!(
                r#"{{"source":"NEXUS","severity":"low","description":"d","actions":[{RESTART}],"context":{{"entity":""}}}}"#
            ),
            Inv,
            "context.entity:",
            "must not be empty",
        ),
        bad(
            "context.entity 513 bytes",
            format!(
                r#"{{"source":"NEXUS","severity":"low","description":"d","actions":[{RESTART}],"context":{{"entity":"{}"}}}}"#,
                "e".repeat(513)
            ),
            Inv,
            "context.entity:",
            "is 513 bytes",
        ),
        bad(
            "context.stack_trace an object",
            format!(
                r#"{{"source":"NEXUS","severity":"low","description":"d","actions":[{RESTART}],"context":{{"stack_trace":{{}}}}}}"#
            ),
            Inv,
            "context.stack_trace:",
            "must be a string, not an object",
        ),
    ]
}

fn restart(name: &str) -> String {
    alert(&format!(r#"{{"type":"restart_service","name":"{name}"}}"#))
}

fn restart_service_rows() -> Vec<Bad> {
    vec![
        bad(
            "restart without name",
            alert(r#"{"type":"restart_service"}"#),
            Inv,
            "actions[0].name:",
            "is required",
        ),
        bad(
            "restart name a number",
            alert(r#"{"type":"restart_service","name":5}"#),
            Inv,
            "actions[0].name:",
            "must be a string, not a number",
        ),
        bad(
            "unit name with a space",
            restart("vael service"),
            Inv,
            "actions[0].name:",
            "is not a valid unit name",
        ),
        bad(
            "template unit getty@.service",
            restart("getty@.service"),
            Inv,
            "actions[0].name:",
            "is not a valid unit name",
        ),
        bad(
            "unit name with a slash",
            restart("a/b.service"),
            Inv,
            "actions[0].name:",
            "is not a valid unit name",
        ),
        bad(
            "empty unit name",
            restart(""),
            Inv,
            "actions[0].name:",
            "is not a valid unit name",
        ),
        bad(
            "bare suffix .service",
            restart(".service"),
            Inv,
            "actions[0].name:",
            "is not a valid unit name",
        ),
        bad(
            "unit name 256 bytes",
            restart(&format!("{}.service", "a".repeat(248))),
            Inv,
            "actions[0].name:",
            "is not a valid unit name",
        ),
        bad(
            "dbus.service",
            restart("dbus.service"),
            Prot,
            "actions[0].name:",
            "dbus.service keeps the host reachable",
        ),
        bad(
            "dbus (bare)",
            restart("dbus"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "dbus-broker",
            restart("dbus-broker"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "ssh",
            restart("ssh"),
            Prot,
            "actions[0].name:",
            "ssh.service",
        ),
        bad(
            "sshd.service",
            restart("sshd.service"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "systemd-journald",
            restart("systemd-journald"),
            Prot,
            "actions[0].name:",
            "systemd-journald.service",
        ),
        bad(
            "systemd-logind.service",
            restart("systemd-logind.service"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "polkit",
            restart("polkit"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "the agent's own unit",
            restart(OWN_UNIT),
            Prot,
            "actions[0].name:",
            "is the agent's own unit",
        ),
        bad(
            "the agent's own unit, bare",
            restart("antibody-test"),
            Prot,
            "actions[0].name:",
            "is the agent's own unit",
        ),
        bad(
            "antibody.service, always",
            restart("antibody"),
            Prot,
            "actions[0].name:",
            "is the agent's own unit",
        ),
        bad(
            "protect.units \"db\" given bare",
            restart("db"),
            Prot,
            "actions[0].name:",
            "db.service is listed in protect.units",
        ),
        bad(
            "protect.units \"payments.service\" given bare",
            restart("payments"),
            Prot,
            "actions[0].name:",
            "is listed in protect.units",
        ),
        bad(
            "reboot.target (starting it reboots the host)",
            restart("reboot.target"),
            Prot,
            "actions[0].name:",
            "reboot.target is a target unit; restart_service restarts .service units only",
        ),
        bad(
            "poweroff.target",
            restart("poweroff.target"),
            Prot,
            "actions[0].name:",
            "restarts .service units only",
        ),
        bad(
            "user.slice (ends every session)",
            restart("user.slice"),
            Prot,
            "actions[0].name:",
            "user.slice is a slice unit",
        ),
        bad(
            "a timer",
            restart("vael-worker.timer"),
            Prot,
            "actions[0].name:",
            "restarts .service units only",
        ),
        bad(
            "a socket",
            restart("vael.socket"),
            Prot,
            "actions[0].name:",
            "restarts .service units only",
        ),
        bad(
            "a getty",
            restart("getty@tty1"),
            Prot,
            "actions[0].name:",
            "getty@tty1.service keeps the host reachable or running",
        ),
        bad(
            "the console getty",
            restart("console-getty"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "a user's manager",
            restart("user@1000.service"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "a per-connection sshd",
            restart("sshd@3-10.0.0.1:22-10.0.0.9:5123"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "rescue",
            restart("rescue"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "emergency",
            restart("emergency.service"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "debug-shell",
            restart("debug-shell"),
            Prot,
            "actions[0].name:",
            "always protected",
        ),
        bad(
            "protect.units glob \"batch-*.service\"",
            restart("batch-nightly"),
            Prot,
            "actions[0].name:",
            "batch-nightly.service is listed in protect.units",
        ),
        bad(
            "protected unit third in line",
            alert(&format!(
                r#"{RESTART},{NOTIFY},{{"type":"restart_service","name":"sshd"}}"#
            )),
            Prot,
            "actions[2].name:",
            "",
        ),
    ]
}

fn throttle(params: &str) -> String {
    alert(&format!(r#"{{"type":"throttle_entity",{params}}}"#))
}

fn throttle_entity_rows() -> Vec<Bad> {
    vec![
        bad(
            "throttle without entity",
            throttle(r#""seconds":60"#),
            Inv,
            "actions[0].entity:",
            "is required",
        ),
        bad(
            "throttle without seconds",
            throttle(r#""entity":"vael.service""#),
            Inv,
            "actions[0].seconds:",
            "is required",
        ),
        bad(
            "throttle seconds 0",
            throttle(r#""entity":"vael.service","seconds":0"#),
            Inv,
            "actions[0].seconds:",
            "must be 1..=86400",
        ),
        bad(
            "throttle seconds 86401",
            throttle(r#""entity":"vael.service","seconds":86401"#),
            Inv,
            "actions[0].seconds:",
            "must be 1..=86400",
        ),
        bad(
            "throttle seconds \"10\" (a string)",
            throttle(r#""entity":"vael.service","seconds":"10""#),
            Inv,
            "actions[0].seconds:",
            "must be an integer 1..=86400, not a string",
        ),
        bad(
            "throttle seconds 1.5",
            throttle(r#""entity":"vael.service","seconds":1.5"#),
            Inv,
            "actions[0].seconds:",
            "must be 1..=86400",
        ),
        bad(
            "throttle seconds -5",
            throttle(r#""entity":"vael.service","seconds":-5"#),
            Inv,
            "actions[0].seconds:",
            "must be 1..=86400",
        ),
        bad(
            "throttle seconds 10.0",
            throttle(r#""entity":"vael.service","seconds":10.0"#),
            Inv,
            "actions[0].seconds:",
            "",
        ),
        bad(
            "cpu_percent on an address entity",
            throttle(r#""entity":"ip:10.0.0.7","seconds":60,"cpu_percent":50"#),
            Inv,
            "actions[0].cpu_percent:",
            "applies to unit entities only",
        ),
        bad(
            "memory_high on an address entity",
            throttle(r#""entity":"10.0.0.7","seconds":60,"memory_high":"512M""#),
            Inv,
            "actions[0].memory_high:",
            "applies to unit entities only",
        ),
        bad(
            "rate_per_sec on a unit",
            throttle(r#""entity":"vael.service","seconds":60,"rate_per_sec":100"#),
            Inv,
            "actions[0].rate_per_sec:",
            "applies to address entities only",
        ),
        bad(
            "memory_high \"12Q\"",
            throttle(r#""entity":"vael.service","seconds":60,"memory_high":"12Q""#),
            Inv,
            "actions[0].memory_high:",
            "must be bytes",
        ),
        bad(
            "memory_high under 1 MiB",
            throttle(r#""entity":"vael.service","seconds":60,"memory_high":1000"#),
            Inv,
            "actions[0].memory_high:",
            "at least 1048576",
        ),
        bad(
            "memory_high overflowing u64",
            throttle(r#""entity":"vael.service","seconds":60,"memory_high":"99999999999T""#),
            Inv,
            "actions[0].memory_high:",
            "",
        ),
        bad(
            "cpu_percent 0",
            throttle(r#""entity":"vael.service","seconds":60,"cpu_percent":0"#),
            Inv,
            "actions[0].cpu_percent:",
            "must be 1..=10000",
        ),
        bad(
            "rate_per_sec 0",
            throttle(r#""entity":"10.0.0.7","seconds":60,"rate_per_sec":0"#),
            Inv,
            "actions[0].rate_per_sec:",
            "must be 1..=1000000",
        ),
        bad(
            "entity neither unit nor address",
            throttle(r#""entity":"vael","seconds":60"#),
            Inv,
            "actions[0].entity:",
            "is neither a unit",
        ),
        bad(
            "entity an invalid address",
            throttle(r#""entity":"ip:10.0.0.256","seconds":60"#),
            Inv,
            "actions[0].entity:",
            "is neither a unit",
        ),
        bad(
            "entity unit:NAME with a bad name",
            throttle(r#""entity":"unit:va el","seconds":60"#),
            Inv,
            "actions[0].entity:",
            "is not a valid unit name",
        ),
        bad(
            "entity unit:dbus",
            throttle(r#""entity":"unit:dbus","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity user.slice (starves every session)",
            throttle(r#""entity":"user.slice","seconds":60,"memory_high":"1M""#),
            Prot,
            "actions[0].entity:",
            "user.slice keeps the host reachable or running",
        ),
        bad(
            "entity the root slice",
            throttle(r#""entity":"unit:-.slice","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity system.slice",
            throttle(r#""entity":"system.slice","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity machine.slice",
            throttle(r#""entity":"machine.slice","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity a user's slice",
            throttle(r#""entity":"user-1000.slice","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity a login session",
            throttle(r#""entity":"session-4.scope","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity init.scope",
            throttle(r#""entity":"init.scope","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity a target",
            throttle(r#""entity":"unit:multi-user.target","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "a unit throttle acts on .service, .scope and .slice units only",
        ),
        bad(
            "entity a socket",
            throttle(r#""entity":"vael.socket","seconds":60"#),
            Prot,
            "actions[0].entity:",
            ".service, .scope and .slice units only",
        ),
        bad(
            "entity a getty",
            throttle(r#""entity":"serial-getty@ttyS0.service","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity systemd-journald.service",
            throttle(r#""entity":"systemd-journald.service","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "always protected",
        ),
        bad(
            "entity the agent's own unit",
            throttle(r#""entity":"unit:antibody-test","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "own unit",
        ),
        bad(
            "entity in protect.units",
            throttle(r#""entity":"payments.service","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "protect.units",
        ),
        bad(
            "entity ip:127.0.0.1",
            throttle(r#""entity":"ip:127.0.0.1","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "loopback",
        ),
        bad(
            "entity ::1",
            throttle(r#""entity":"::1","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "loopback",
        ),
        bad(
            "entity 0.0.0.0",
            throttle(r#""entity":"0.0.0.0","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "unspecified",
        ),
        bad(
            "entity in protect.addresses",
            throttle(r#""entity":"10.9.9.9","seconds":60"#),
            Prot,
            "actions[0].entity:",
            "10.9.9.9 is listed in protect.addresses",
        ),
        bad(
            "unknown throttle field",
            throttle(r#""entity":"vael.service","seconds":60,"cpu":5"#),
            Inv,
            "actions[0].cpu:",
            "unknown field",
        ),
    ]
}

fn isolate(sid: &str) -> String {
    alert(&format!(r#"{{"type":"isolate_socket","sid":"{sid}"}}"#))
}

fn isolate_socket_rows() -> Vec<Bad> {
    vec![
        bad(
            "sid missing",
            alert(r#"{"type":"isolate_socket"}"#),
            Inv,
            "actions[0].sid:",
            "is required",
        ),
        bad(
            "sid a number",
            alert(r#"{"type":"isolate_socket","sid":8080}"#),
            Inv,
            "actions[0].sid:",
            "must be a string",
        ),
        bad(
            "sid tcp:0",
            isolate("tcp:0"),
            Inv,
            "actions[0].sid:",
            "\"tcp:0\" is not a socket id",
        ),
        bad(
            "sid tcp:65536",
            isolate("tcp:65536"),
            Inv,
            "actions[0].sid:",
            "is not a socket id",
        ),
        bad(
            "sid tcp:080",
            isolate("tcp:080"),
            Inv,
            "actions[0].sid:",
            "is not a socket id",
        ),
        bad(
            "sid [::1] without port",
            isolate("[::1]"),
            Inv,
            "actions[0].sid:",
            "is not a socket id",
        ),
        bad(
            "sid 10.0.0.1: (empty port)",
            isolate("10.0.0.1:"),
            Inv,
            "actions[0].sid:",
            "is not a socket id",
        ),
        bad(
            "sid sctp:80",
            isolate("sctp:80"),
            Inv,
            "actions[0].sid:",
            "is not a socket id",
        ),
        bad(
            "sid host name",
            isolate("example.com:80"),
            Inv,
            "actions[0].sid:",
            "is not a socket id",
        ),
        bad(
            "sid empty",
            isolate(""),
            Inv,
            "actions[0].sid:",
            "is not a socket id",
        ),
        bad(
            "sid loopback 127.0.0.1",
            isolate("127.0.0.1"),
            Prot,
            "actions[0].sid:",
            "127.0.0.1 is a loopback address",
        ),
        bad(
            "sid loopback 127.0.0.1:8080",
            isolate("127.0.0.1:8080"),
            Prot,
            "actions[0].sid:",
            "loopback",
        ),
        bad(
            "sid loopback ::1",
            isolate("::1"),
            Prot,
            "actions[0].sid:",
            "loopback",
        ),
        bad(
            "sid loopback [::1]:8080",
            isolate("[::1]:8080"),
            Prot,
            "actions[0].sid:",
            "loopback",
        ),
        bad(
            "sid v4-mapped loopback",
            isolate("::ffff:127.0.0.1"),
            Prot,
            "actions[0].sid:",
            "loopback",
        ),
        bad(
            "sid tcp:22",
            isolate("tcp:22"),
            Prot,
            "actions[0].sid:",
            "port 22 is listed in protect.ports",
        ),
        bad(
            "sid udp:2222 (configured port)",
            isolate("udp:2222"),
            Prot,
            "actions[0].sid:",
            "port 2222",
        ),
        bad(
            "sid 10.0.0.1:22",
            isolate("10.0.0.1:22"),
            Prot,
            "actions[0].sid:",
            "port 22",
        ),
        bad(
            "sid in protect.addresses",
            isolate("10.9.9.9"),
            Prot,
            "actions[0].sid:",
            "is listed in protect.addresses",
        ),
        bad(
            "sid v6 in protect.addresses",
            isolate("[fd00::99]:443"),
            Prot,
            "actions[0].sid:",
            "protect.addresses",
        ),
        bad_default(
            "sid tcp:22 by default",
            isolate("tcp:22"),
            Prot,
            "actions[0].sid:",
            "port 22",
        ),
        bad(
            "isolate seconds 0",
            alert(r#"{"type":"isolate_socket","sid":"tcp:8080","seconds":0}"#),
            Inv,
            "actions[0].seconds:",
            "must be 1..=86400",
        ),
        bad(
            "isolate seconds 86401",
            alert(r#"{"type":"isolate_socket","sid":"tcp:8080","seconds":86401}"#),
            Inv,
            "actions[0].seconds:",
            "must be 1..=86400",
        ),
        bad(
            "isolate seconds a string",
            alert(r#"{"type":"isolate_socket","sid":"tcp:8080","seconds":"60"}"#),
            Inv,
            "actions[0].seconds:",
            "not a string",
        ),
        bad(
            "unknown isolate field",
            alert(r#"{"type":"isolate_socket","sid":"tcp:8080","port":8080}"#),
            Inv,
            "actions[0].port:",
            "unknown field",
        ),
    ]
}

fn hot_patch_rows() -> Vec<Bad> {
    let one_patch =
        format!(r#"{{"type":"hot_patch","file":"/srv/app/a.conf","diff":"{GOOD_DIFF}"}}"#);
    vec![
        bad(
            "five hot_patch actions in one alert",
            alert(&[one_patch.as_str(); 5].join(",")),
            Inv,
            "actions[4].type:",
            "an alert may carry at most 4 hot_patch action(s)",
        ),
        bad(
            "a diff that changes nothing",
            hot_patch(
                "/srv/app/app.conf",
                r#"--- a/app.conf\n+++ b/app.conf\n@@ -1 +1 @@\n-same\n+same\n"#,
                None,
            ),
            Inv,
            "actions[0].diff:",
            "changes nothing",
        ),
        bad_default(
            "hot_patch while allowed_paths is empty",
            hot_patch("/srv/app/app.conf", GOOD_DIFF, None),
            Prot,
            "actions[0].file:",
            "hot_patch is off",
        ),
        bad(
            "hot_patch without file",
            alert(&format!(r#"{{"type":"hot_patch","diff":"{GOOD_DIFF}"}}"#)),
            Inv,
            "actions[0].file:",
            "is required",
        ),
        bad(
            "hot_patch relative path",
            hot_patch("srv/app/app.conf", GOOD_DIFF, None),
            Inv,
            "actions[0].file:",
            "must be an absolute path",
        ),
        bad(
            "hot_patch path with ..",
            hot_patch("/srv/app/../../etc/shadow", GOOD_DIFF, None),
            Inv,
            "actions[0].file:",
            "without \".\", \"..\" or control characters",
        ),
        bad(
            "hot_patch path with a NUL",
            hot_patch("/srv/app/app.conf\\u0000", GOOD_DIFF, None),
            Inv,
            "actions[0].file:",
            "or control characters",
        ),
        bad(
            "hot_patch path with a newline",
            hot_patch("/srv/app/app\\n.conf", GOOD_DIFF, None),
            Inv,
            "actions[0].file:",
            "or control characters",
        ),
        bad(
            "hot_patch path ending in ..",
            hot_patch("/srv/app/conf/..", GOOD_DIFF, None),
            Inv,
            "actions[0].file:",
            "must be an absolute path",
        ),
        bad(
            "hot_patch outside every root",
            hot_patch("/etc/shadow", GOOD_DIFF, None),
            Prot,
            "actions[0].file:",
            "is not under any of hot_patch.allowed_paths",
        ),
        bad(
            "hot_patch the root itself",
            hot_patch("/srv/app", GOOD_DIFF, None),
            Prot,
            "actions[0].file:",
            "is not under any",
        ),
        bad(
            "hot_patch a sibling sharing the root's prefix",
            hot_patch("/srv/application/app.conf", GOOD_DIFF, None),
            Prot,
            "actions[0].file:",
            "is not under any",
        ),
        bad(
            "hot_patch without diff",
            alert(r#"{"type":"hot_patch","file":"/srv/app/app.conf"}"#),
            Inv,
            "actions[0].diff:",
            "is required",
        ),
        bad(
            "hot_patch empty diff",
            hot_patch("/srv/app/app.conf", "", None),
            Inv,
            "actions[0].diff:",
            "must not be empty",
        ),
        bad(
            "hot_patch hunk shorter than its header says",
            hot_patch(
                "/srv/app/app.conf",
                r#"--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n-old\n+new\n"#,
                None,
            ),
            Inv,
            "actions[0].diff:",
            "is not a unified diff",
        ),
        bad(
            "hot_patch hunk header garbled",
            hot_patch(
                "/srv/app/app.conf",
                r#"--- a/x\n+++ b/x\n@@ -one +two @@\n-old\n+new\n"#,
                None,
            ),
            Inv,
            "actions[0].diff:",
            "is not a unified diff",
        ),
        bad(
            "hot_patch sha256 too short",
            hot_patch("/srv/app/app.conf", GOOD_DIFF, Some("abc123")),
            Inv,
            "actions[0].sha256:",
            "must be 64 lowercase hexadecimal digits",
        ),
        bad(
            "hot_patch sha256 upper case",
            hot_patch("/srv/app/app.conf", GOOD_DIFF, Some(&"AB".repeat(32))),
            Inv,
            "actions[0].sha256:",
            "lowercase",
        ),
        bad(
            "hot_patch sha256 not hex",
            hot_patch("/srv/app/app.conf", GOOD_DIFF, Some(&"g".repeat(64))),
            Inv,
            "actions[0].sha256:",
            "hexadecimal",
        ),
        bad(
            "hot_patch sha256 a number",
            alert(&format!(
                r#"{{"type":"hot_patch","file":"/srv/app/app.conf","diff":"{GOOD_DIFF}","sha256":1}}"#
            )),
            Inv,
            "actions[0].sha256:",
            "must be a string",
        ),
        bad(
            "unknown hot_patch field",
            alert(&format!(
                r#"{{"type":"hot_patch","file":"/srv/app/app.conf","diff":"{GOOD_DIFF}","mode":"0644"}}"#
            )),
            Inv,
            "actions[0].mode:",
            "unknown field",
        ),
    ]
}

fn notify(channel: &str, message: &str) -> String {
    alert(&format!(
        r#"{{"type":"notify_operator","channel":"{channel}","message":"{message}"}}"#
    ))
}

fn notify_operator_rows() -> Vec<Bad> {
    vec![
        bad(
            "unknown channel",
            notify("pager", "m"),
            Inv,
            "actions[0].channel:",
            "\"pager\" is not a configured channel",
        ),
        bad(
            "channel in the wrong case",
            notify("Journal", "m"),
            Inv,
            "actions[0].channel:",
            "is not a configured channel",
        ),
        bad_default(
            "webhook channel not configured",
            notify("ops", "m"),
            Inv,
            "actions[0].channel:",
            "is not a configured channel",
        ),
        bad(
            "channel missing",
            alert(r#"{"type":"notify_operator","message":"m"}"#),
            Inv,
            "actions[0].channel:",
            "is required",
        ),
        bad(
            "empty message",
            notify("journal", ""),
            Inv,
            "actions[0].message:",
            "must not be empty",
        ),
        bad(
            "white-space message",
            notify("journal", "  "),
            Inv,
            "actions[0].message:",
            "must not be empty",
        ),
        bad(
            "message 4097 bytes",
            notify("journal", &"m".repeat(4097)),
            Inv,
            "actions[0].message:",
            "is 4097 bytes",
        ),
        bad(
            "message missing",
            alert(r#"{"type":"notify_operator","channel":"dbus"}"#),
            Inv,
            "actions[0].message:",
            "is required",
        ),
        bad(
            "unknown notify field",
            alert(r#"{"type":"notify_operator","channel":"dbus","message":"m","urgent":true}"#),
            Inv,
            "actions[0].urgent:",
            "unknown field",
        ),
    ]
}

fn all_bad_rows() -> Vec<Bad> {
    let mut rows = envelope_rows();
    rows.extend(restart_service_rows());
    rows.extend(throttle_entity_rows());
    rows.extend(isolate_socket_rows());
    rows.extend(hot_patch_rows());
    rows.extend(notify_operator_rows());
    rows
}

/// Checks one row; `Err` says how it went wrong.
fn run_bad(row: &Bad) -> Result<(), String> {
    let config = row.cfg.config();
    let err = match check(&row.json, &config) {
        Ok(seeds) => return Err(format!("was accepted: {seeds:?}")),
        Err(e) => e,
    };
    let mut problems = Vec::new();
    if err.name != row.name {
        problems.push(format!("name {:?}, expected {:?}", err.name, row.name));
    }
    if !err.message.starts_with(row.prefix) {
        problems.push(format!("message does not start with {:?}", row.prefix));
    }
    if let Some(phrase) = row.phrase {
        if !err.message.contains(phrase) {
            problems.push(format!("message does not contain {phrase:?}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{} (got {err})", problems.join("; ")))
    }
}

fn run_bad_rows(rows: &[Bad]) {
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            run_bad(row)
                .err()
                .map(|why| format!("  {}: {why}", row.what))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- bad tests

#[test]
fn table_is_well_formed() {
    let rows = all_bad_rows();
    assert!(rows.len() >= 40, "only {} bad rows", rows.len());
    let with_phrase = rows.iter().filter(|r| r.phrase.is_some()).count();
    assert!(
        with_phrase * 2 > rows.len(),
        "only {with_phrase} rows check a phrase"
    );
    let mut names = std::collections::BTreeSet::new();
    for row in &rows {
        assert!(
            row.prefix.ends_with(':'),
            "{}: prefix {:?} must end in ':'",
            row.what,
            row.prefix
        );
        assert!(
            names.insert(row.what),
            "duplicate row description {:?}",
            row.what
        );
    }
}

#[test]
fn bad_envelopes_are_refused_by_field() {
    run_bad_rows(&envelope_rows());
}

#[test]
fn bad_restart_service_is_refused_by_field() {
    run_bad_rows(&restart_service_rows());
}

#[test]
fn bad_throttle_entity_is_refused_by_field() {
    run_bad_rows(&throttle_entity_rows());
}

#[test]
fn bad_isolate_socket_is_refused_by_field() {
    run_bad_rows(&isolate_socket_rows());
}

#[test]
fn bad_hot_patch_is_refused_by_field() {
    run_bad_rows(&hot_patch_rows());
}

#[test]
fn bad_notify_operator_is_refused_by_field() {
    run_bad_rows(&notify_operator_rows());
}

#[test]
fn own_unit_default_name_is_protected_without_a_ctx_unit() {
    let err = check_as(&restart("antibody.service"), &test_config(), None).unwrap_err();
    assert_eq!(err.name, ErrorName::ProtectedTarget, "{err}");
    assert!(err.message.starts_with("actions[0].name:"), "{err}");
    // With no own unit, the test unit is an ordinary service.
    assert!(check_as(&restart(OWN_UNIT), &test_config(), None).is_ok());
}

#[test]
fn with_allowed_units_set_only_matching_units_may_be_restarted_or_throttled() {
    let config = Config::from_toml(
        "[restart]\nallowed_units = [\"web-*.service\", \"batch.slice\"]\n[protect]\nunits = [\"web-db.service\"]\n",
    )
    .unwrap();
    assert!(check(&restart("web-1"), &config).is_ok());
    assert!(check(&throttle(r#""entity":"batch.slice","seconds":60"#), &config).is_ok());
    for refused in [
        restart("vael"),
        throttle(r#""entity":"vael.service","seconds":60"#),
        throttle(r#""entity":"run-u3.scope","seconds":60"#),
    ] {
        let err = check(&refused, &config).unwrap_err();
        assert_eq!(err.name, ErrorName::ProtectedTarget, "{err}");
        assert!(
            err.message
                .contains("matches none of restart.allowed_units"),
            "{err}"
        );
    }
    // The list allows nothing the other guards forbid.
    let err = check(&restart("web-db"), &config).unwrap_err();
    assert!(err.message.contains("listed in protect.units"), "{err}");
    let err = check(&restart("systemd-web-x"), &config).unwrap_err();
    assert!(err.message.contains("always protected"), "{err}");
}

#[test]
fn protect_addresses_take_cidr_prefixes_at_validation() {
    let config =
        Config::from_toml("[protect]\naddresses = [\"10.0.0.0/8\", \"fd00::/16\"]\n").unwrap();
    for sid in [
        "10.20.30.40",
        "10.0.0.1:443",
        "[fd00::7]:53",
        "::ffff:10.1.1.1",
    ] {
        let err = check(&isolate(sid), &config).unwrap_err();
        assert_eq!(err.name, ErrorName::ProtectedTarget, "{sid}: {err}");
        assert!(err.message.contains("listed in protect.addresses"), "{err}");
    }
    let err = check(&throttle(r#""entity":"ip:10.9.8.7","seconds":60"#), &config).unwrap_err();
    assert!(err.message.contains("(10.0.0.0/8)"), "{err}");
    assert!(check(&isolate("192.0.2.10"), &config).is_ok());
}

#[test]
fn unknown_action_names_the_known_ones() {
    let err = check(&alert(r#"{"type":"reboot_host"}"#), &test_config()).unwrap_err();
    for known in Registry::builtin().names() {
        assert!(err.message.contains(known), "{known} missing from {err}");
    }
    assert_eq!(
        Registry::builtin().names(),
        [
            "hot_patch",
            "isolate_socket",
            "notify_operator",
            "restart_service",
            "throttle_entity"
        ]
    );
}

// ---------------------------------------------------------------- first error wins

#[test]
fn first_error_wins_across_actions() {
    let config = test_config();
    // actions[0] and actions[3] both have bad parameters.
    let two_bad = alert(&format!(
        r#"{{"type":"throttle_entity","entity":"vael.service","seconds":0}},{NOTIFY},{RESTART},{{"type":"notify_operator","channel":"pager","message":"m"}}"#
    ));
    let err = check(&two_bad, &config).unwrap_err();
    assert_eq!(err.name, ErrorName::InvalidAlert, "{err}");
    assert!(err.message.starts_with("actions[0].seconds:"), "{err}");

    // actions[0] has an unknown type, actions[3] a protected target.
    let mixed = alert(&format!(
        r#"{{"type":"reboot_host"}},{NOTIFY},{RESTART},{{"type":"restart_service","name":"dbus"}}"#
    ));
    let err = check(&mixed, &config).unwrap_err();
    assert_eq!(err.name, ErrorName::UnknownAction, "{err}");
    assert!(err.message.starts_with("actions[0].type:"), "{err}");

    // actions[0] protected, actions[3] an unknown type.
    let mixed = alert(&format!(
        r#"{{"type":"restart_service","name":"dbus"}},{NOTIFY},{RESTART},{{"type":"reboot_host"}}"#
    ));
    let err = check(&mixed, &config).unwrap_err();
    assert_eq!(err.name, ErrorName::ProtectedTarget, "{err}");
    assert!(err.message.starts_with("actions[0].name:"), "{err}");

    // actions[0] fine, actions[1] and actions[3] bad: actions[1].
    let later = alert(&format!(
        r#"{NOTIFY},{{"type":"isolate_socket","sid":"tcp:22"}},{RESTART},{{"type":"isolate_socket","sid":"tcp:0"}}"#
    ));
    let err = check(&later, &config).unwrap_err();
    assert_eq!(err.name, ErrorName::ProtectedTarget, "{err}");
    assert!(err.message.starts_with("actions[1].sid:"), "{err}");
}

#[test]
fn first_error_wins_within_an_action() {
    // An unknown field is reported before bad values of known ones.
    let err = check(
        &throttle(r#""entity":"dbus","seconds":0,"zzz":1"#),
        &test_config(),
    )
    .unwrap_err();
    assert!(err.message.starts_with("actions[0].zzz:"), "{err}");
    // Of two unknown fields, the first by name.
    let err = check(
        &alert(r#"{"type":"restart_service","name":"vael","b":1,"a":2}"#),
        &test_config(),
    )
    .unwrap_err();
    assert!(err.message.starts_with("actions[0].a:"), "{err}");
}

#[test]
fn first_error_wins_even_when_a_later_action_is_malformed() {
    let alert_json = alert(&format!(
        r#"{{"type":"throttle_entity","entity":"vael.service","seconds":0}},{NOTIFY},{RESTART},{{"name":"vael"}}"#
    ));
    let err = check(&alert_json, &test_config()).unwrap_err();
    assert!(err.message.starts_with("actions[0].seconds:"), "{err}");
}

// ---------------------------------------------------------------- good rows

struct Good {
    what: &'static str,
    json: String,
    cfg: Cfg,
    /// Each seed as JSON: `{"type", "params", "targets", "reversible"}`.
    seeds: Vec<Value>,
}

fn good(what: &'static str, json: impl Into<String>, seeds: Vec<Value>) -> Good {
    Good {
        what,
        json: json.into(),
        cfg: Cfg::Test,
        seeds,
    }
}

fn seed(kind: &str, params: Value, targets: &[&str], reversible: bool) -> Value {
    json!({"type": kind, "params": params, "targets": targets, "reversible": reversible})
}

fn good_rows() -> Vec<Good> {
    let sha = "0123456789abcdef".repeat(4);
    let diff_text = "--- a/app.conf\n+++ b/app.conf\n@@ -1 +1 @@\n-old\n+new\n";
    vec![
        good(
            "restart a bare name",
            restart("vael"),
            vec![seed(
                "restart_service",
                json!({"name": "vael.service"}),
                &["unit:vael.service"],
                false,
            )],
        ),
        good(
            "restart a template instance",
            restart("vael-worker@2"),
            vec![seed(
                "restart_service",
                json!({"name": "vael-worker@2.service"}),
                &["unit:vael-worker@2.service"],
                false,
            )],
        ),
        good(
            "throttle a scope",
            throttle(r#""entity":"run-u7.scope","seconds":60"#),
            vec![seed(
                "throttle_entity",
                json!({"entity": "unit:run-u7.scope", "seconds": 60, "cpu_percent": 20}),
                &["unit:run-u7.scope"],
                true,
            )],
        ),
        good(
            "throttle a slice of the operator's own",
            throttle(r#""entity":"unit:batch.slice","seconds":60"#),
            vec![seed(
                "throttle_entity",
                json!({"entity": "unit:batch.slice", "seconds": 60, "cpu_percent": 20}),
                &["unit:batch.slice"],
                true,
            )],
        ),
        good(
            "throttle a unit with the default cpu_percent",
            throttle(r#""entity":"vael.service","seconds":60"#),
            vec![seed(
                "throttle_entity",
                json!({"entity": "unit:vael.service", "seconds": 60, "cpu_percent": 20}),
                &["unit:vael.service"],
                true,
            )],
        ),
        good(
            "throttle unit:NAME with every unit limit",
            throttle(
                r#""entity":"unit:vael","seconds":86400,"cpu_percent":150,"memory_high":"512M""#,
            ),
            vec![seed(
                "throttle_entity",
                json!({"entity": "unit:vael.service", "seconds": 86400, "cpu_percent": 150, "memory_high": 536870912u64}),
                &["unit:vael.service"],
                true,
            )],
        ),
        good(
            "throttle with memory_high in plain bytes",
            throttle(r#""entity":"vael.service","seconds":1,"memory_high":1048576"#),
            vec![seed(
                "throttle_entity",
                json!({"entity": "unit:vael.service", "seconds": 1, "cpu_percent": 20, "memory_high": 1048576}),
                &["unit:vael.service"],
                true,
            )],
        ),
        good(
            "throttle ip:ADDR with a rate",
            throttle(r#""entity":"ip:10.0.0.7","seconds":300,"rate_per_sec":100"#),
            vec![seed(
                "throttle_entity",
                json!({"entity": "ip:10.0.0.7", "seconds": 300, "rate_per_sec": 100}),
                &["addr:10.0.0.7"],
                true,
            )],
        ),
        good(
            "throttle a bare v6 address",
            throttle(r#""entity":"fd00::7","seconds":300"#),
            vec![seed(
                "throttle_entity",
                json!({"entity": "ip:fd00::7", "seconds": 300}),
                &["addr:fd00::7"],
                true,
            )],
        ),
        good(
            "isolate tcp:PORT with the config's default seconds",
            isolate("tcp:8080"),
            vec![seed(
                "isolate_socket",
                json!({"sid": "tcp:8080", "seconds": 600}),
                &["port:tcp/8080"],
                true,
            )],
        ),
        Good {
            cfg: Cfg::Default,
            ..good(
                "isolate ADDR with the built-in default seconds",
                isolate("203.0.113.5"),
                vec![seed(
                    "isolate_socket",
                    json!({"sid": "203.0.113.5", "seconds": 3600}),
                    &["addr:203.0.113.5"],
                    true,
                )],
            )
        },
        good(
            "isolate udp:PORT with seconds",
            alert(r#"{"type":"isolate_socket","sid":"udp:53","seconds":30}"#),
            vec![seed(
                "isolate_socket",
                json!({"sid": "udp:53", "seconds": 30}),
                &["port:udp/53"],
                true,
            )],
        ),
        good(
            "isolate ADDR:PORT",
            isolate("10.0.0.1:443"),
            vec![seed(
                "isolate_socket",
                json!({"sid": "10.0.0.1:443", "seconds": 600}),
                &["addr:10.0.0.1:443"],
                true,
            )],
        ),
        // Not fd00::1: validation refuses the host's default gateway, and
        // some build machines route IPv6 through fd00::1.
        good(
            "isolate [V6]:PORT",
            alert(r#"{"type":"isolate_socket","sid":"[2001:db8::7]:443","seconds":86400}"#),
            vec![seed(
                "isolate_socket",
                json!({"sid": "[2001:db8::7]:443", "seconds": 86400}),
                &["addr:2001:db8::7:443"],
                true,
            )],
        ),
        good(
            "hot_patch under a root, no sha256",
            hot_patch("/srv/app/app.conf", GOOD_DIFF, None),
            vec![seed(
                "hot_patch",
                json!({"file": "/srv/app/app.conf", "diff": diff_text}),
                &["file:/srv/app/app.conf"],
                true,
            )],
        ),
        good(
            "hot_patch under the second root with sha256",
            hot_patch("/etc/vael/deep/x.conf", GOOD_DIFF, Some(&sha)),
            vec![seed(
                "hot_patch",
                json!({"file": "/etc/vael/deep/x.conf", "diff": diff_text, "sha256": sha}),
                &["file:/etc/vael/deep/x.conf"],
                true,
            )],
        ),
        good(
            "notify on each kind of channel",
            alert(
                r#"{"type":"notify_operator","channel":"journal","message":"a"},
                   {"type":"notify_operator","channel":"dbus","message":"b"},
                   {"type":"notify_operator","channel":"ops","message":"c"}"#,
            ),
            vec![
                seed(
                    "notify_operator",
                    json!({"channel": "journal", "message": "a"}),
                    &[],
                    false,
                ),
                seed(
                    "notify_operator",
                    json!({"channel": "dbus", "message": "b"}),
                    &[],
                    false,
                ),
                seed(
                    "notify_operator",
                    json!({"channel": "ops", "message": "c"}),
                    &[],
                    false,
                ),
            ],
        ),
        good(
            "NEXUS source, critical, full context, several actions in order",
            r#"{"source":"NEXUS","severity":"critical","description":"vael leaking",
                "context":{"entity":"vael","stack_trace":"at main()","payload":{"rss":[1,2,{"x":null}]}},
                "actions":[{"type":"throttle_entity","entity":"vael.service","seconds":120},
                           {"type":"restart_service","name":"vael"},
                           {"type":"notify_operator","channel":"journal","message":"vael restarted"}]}"#,
            vec![
                seed(
                    "throttle_entity",
                    json!({"entity": "unit:vael.service", "seconds": 120, "cpu_percent": 20}),
                    &["unit:vael.service"],
                    true,
                ),
                seed(
                    "restart_service",
                    json!({"name": "vael.service"}),
                    &["unit:vael.service"],
                    false,
                ),
                seed(
                    "notify_operator",
                    json!({"channel": "journal", "message": "vael restarted"}),
                    &[],
                    false,
                ),
            ],
        ),
        good(
            "32 actions",
            n_actions(32),
            vec![
                seed(
                    "notify_operator",
                    json!({"channel": "journal", "message": "m"}),
                    &[],
                    false
                );
                32
            ],
        ),
        good(
            "exactly 64 KiB",
            padded_alert(64 * 1024),
            vec![seed(
                "restart_service",
                json!({"name": "vael.service"}),
                &["unit:vael.service"],
                false,
            )],
        ),
        good(
            "description of exactly 4096 bytes",
            envelope(&format!(
                r#""source":"Manual","severity":"low","description":"{}","actions":[{RESTART}]"#,
                "d".repeat(4096)
            )),
            vec![seed(
                "restart_service",
                json!({"name": "vael.service"}),
                &["unit:vael.service"],
                false,
            )],
        ),
    ]
}

#[test]
fn good_alerts_validate_to_normalized_params() {
    let rows = good_rows();
    assert!(rows.len() >= 10, "only {} good rows", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        match check(&row.json, &row.cfg.config()) {
            Err(e) => failures.push(format!("  {}: refused: {e}", row.what)),
            Ok(seeds) => {
                let got: Vec<Value> = seeds
                    .iter()
                    .map(|s| serde_json::to_value(s).unwrap())
                    .collect();
                if got != row.seeds {
                    failures.push(format!(
                        "  {}:\n    got      {}\n    expected {}",
                        row.what,
                        Value::Array(got),
                        Value::Array(row.seeds.clone())
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} good rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// The normalized parameters, submitted again as an action, validate to
/// themselves (the guards are re-checked at apply with exactly these).
fn revalidates_unchanged(seed: &ActionSeed, config: &Config) -> Result<(), String> {
    let mut action = seed.params.as_object().cloned().unwrap_or_default();
    action.insert("type".into(), json!(seed.kind));
    let again = check(&alert(&Value::Object(action).to_string()), config).map_err(|e| {
        format!(
            "{} {}: refused on re-validation: {e}",
            seed.kind, seed.params
        )
    })?;
    if again.len() != 1 || again[0] != *seed {
        return Err(format!(
            "{} {}: re-validated to {again:?}",
            seed.kind, seed.params
        ));
    }
    Ok(())
}

#[test]
fn normalized_params_validate_again_unchanged() {
    let mut failures = Vec::new();
    for row in good_rows() {
        let config = row.cfg.config();
        for seed in check(&row.json, &config).unwrap() {
            if let Err(why) = revalidates_unchanged(&seed, &config) {
                failures.push(format!("  {}: {why}", row.what));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_source_and_severity_is_accepted_exactly() {
    for (label, source) in [
        ("NEXUS", Source::Nexus),
        ("Watchdog", Source::Watchdog),
        ("Manual", Source::Manual),
    ] {
        for (sev_label, severity) in [
            ("low", Severity::Low),
            ("med", Severity::Med),
            ("high", Severity::High),
            ("critical", Severity::Critical),
        ] {
            let text = envelope(&format!(
                r#""source":"{label}","severity":"{sev_label}","description":"d","actions":[{RESTART}]"#
            ));
            let parsed = parse_alert(&text).unwrap_or_else(|e| panic!("{label}/{sev_label}: {e}"));
            assert_eq!((parsed.source, parsed.severity), (source, severity));
            assert!(check(&text, &test_config()).is_ok());
        }
    }
}

// ---------------------------------------------------------------- bugs found

#[test]
fn hot_patch_refuses_text_that_is_not_a_diff() {
    run_bad_rows(&[
        bad(
            "hot_patch diff that is prose",
            hot_patch("/srv/app/app.conf", "this is not a diff", None),
            Inv,
            "actions[0].diff:",
            "is not a unified diff",
        ),
        bad(
            "hot_patch diff with headers but no hunk",
            hot_patch("/srv/app/app.conf", r#"--- a/x\n+++ b/x\n"#, None),
            Inv,
            "actions[0].diff:",
            "is not a unified diff",
        ),
    ]);
}

#[test]
fn hot_patch_refuses_a_dot_component() {
    run_bad_rows(&[bad(
        "hot_patch path with .",
        hot_patch("/srv/app/./app.conf", GOOD_DIFF, None),
        Inv,
        "actions[0].file:",
        "must be an absolute path without",
    )]);
}

#[test]
fn isolate_default_seconds_stays_in_range() {
    for default_seconds in [0u64, 86_401, 1_000_000] {
        let toml = format!("[isolate]\ndefault_seconds = {default_seconds}\n");
        let Ok(config) = Config::from_toml(&toml) else {
            continue; // refusing the config is a fine answer
        };
        match check(&isolate("tcp:8080"), &config) {
            Err(e) => assert_eq!(e.name, ErrorName::InvalidAlert, "{e}"),
            Ok(seeds) => {
                let seconds = seeds[0].params["seconds"].as_u64().unwrap();
                assert!(
                    (1..=86_400).contains(&seconds),
                    "default_seconds = {default_seconds} gave an isolation of {seconds} s"
                );
                revalidates_unchanged(&seeds[0], &config).unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------- hashing

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[test]
fn alert_hash_is_of_the_canonical_json() {
    let text = r#"{ "source": "Manual", "severity": "low", "description": "x",
                    "actions": [ { "type": "restart_service", "name": "vael" } ] }"#;
    let canonical = r#"{"actions":[{"name":"vael","type":"restart_service"}],"description":"x","severity":"low","source":"Manual"}"#;
    let alert = parse_alert(text).unwrap();
    assert_eq!(alert.sha256, sha256_hex(canonical));
    assert_eq!(alert.sha256.len(), 64);
    assert!(alert
        .sha256
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
}

#[test]
fn alert_hash_ignores_key_order_and_whitespace_only() {
    let a = r#"{"source":"Watchdog","severity":"high","description":"vael stalled",
        "actions":[{"type":"throttle_entity","entity":"vael.service","seconds":60,"cpu_percent":10},
                   {"type":"notify_operator","channel":"journal","message":"m"}],
        "context":{"entity":"vael","payload":{"rss":1,"threads":[3,{"b":2,"a":1}]}}}"#;
    let reordered = "{\"context\":{\"payload\":{\"threads\":[3,{\"a\":1,\"b\":2}],\"rss\":1},\"entity\":\"vael\"},\n\
        \t\"actions\" : [ {\"seconds\":60,\"cpu_percent\":10,\"entity\":\"vael.service\",\"type\":\"throttle_entity\"} ,\r\n\
        {\"message\":\"m\",\"type\":\"notify_operator\",\"channel\":\"journal\"} ],\
        \"description\":\"vael stalled\",\"severity\":\"high\",\"source\":\"Watchdog\"}";
    let escaped = a.replace(
        r#""description":"vael stalled""#,
        r#""description":"v\u0061el stalled""#,
    );
    let hash = |t: &str| parse_alert(t).unwrap_or_else(|e| panic!("{e}: {t}")).sha256;
    let base = hash(a);
    assert_eq!(
        hash(reordered),
        base,
        "key order and whitespace changed the hash"
    );
    assert_eq!(
        hash(&escaped),
        base,
        "a \\u escape of the same text changed the hash"
    );

    for (what, changed) in [
        ("severity", a.replace(r#""severity":"high""#, r#""severity":"critical""#)),
        ("a parameter", a.replace(r#""seconds":60"#, r#""seconds":61"#)),
        ("the description", a.replace("vael stalled", "vael stalled!")),
        ("a payload value", a.replace(r#""rss":1"#, r#""rss":2"#)),
        ("an array's order", a.replace("[3,{", "[{").replace("}]}}", "},3]}}")),
        (
            "the order of actions",
            a.replace(
                r#"[{"type":"throttle_entity","entity":"vael.service","seconds":60,"cpu_percent":10},
                   {"type":"notify_operator","channel":"journal","message":"m"}]"#,
                r#"[{"type":"notify_operator","channel":"journal","message":"m"},
                   {"type":"throttle_entity","entity":"vael.service","seconds":60,"cpu_percent":10}]"#,
            ),
        ),
        ("context.entity", a.replace(r#""entity":"vael","payload""#, r#""entity":"vael2","payload""#)),
    ] {
        assert_ne!(changed, a, "{what}: the replacement did not apply");
        assert_ne!(hash(&changed), base, "changing {what} kept the hash");
    }
}
