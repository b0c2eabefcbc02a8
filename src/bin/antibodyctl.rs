//! `antibodyctl`: the operator CLI, a thin client of `org.vael.Antibody` on
//! the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set). Every decision is the
//! agent's: this program only builds the alert JSON, calls the methods, prints
//! the answers and maps them to exit codes (see `LONG_ABOUT`).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use antibody::dbus::proxy::AntibodyProxy;

#[path = "antibodyctl/fleet.rs"]
mod fleet;
#[path = "antibodyctl/playbooks.rs"]
mod playbooks;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use zbus::DBusError;

const LONG_ABOUT: &str = "\
Operator CLI for the Antibody agent (org.vael.Antibody on the system D-Bus).

The bus is the system bus, or the one DBUS_SYSTEM_BUS_ADDRESS names. The agent
decides everything (validation, authorization, deduplication); antibodyctl only
builds the alert, calls the agent and prints its answers. With --json every
command prints the JSON the agent returned; where the agent returns plain
values they are wrapped: submit {\"plan_id\",\"created\"} (with --wait also
\"plan\": the finished plan), verify {\"ok\",\"report\"}, rollback
{\"plan_id\",\"rollback\":\"requested\"}; watch prints one object per signal,
{\"event\":\"antibody_event\",\"signal\":NAME,...the signal's arguments,\"ts\"}.

Exit codes:
  0  success
  1  the agent (or the bus policy) refused with a named error; printed as
     'antibodyctl: <Name>: <message>', e.g.
     'antibodyctl: InvalidAlert: actions[0].name: \"foo bar\" is not a valid unit name'
  2  usage error (bad flags or arguments, unreadable alert FILE)
  3  cannot reach the bus or the agent (not running, no answer in time,
     connection lost)
  4  submit --wait: the plan ended 'failed'
  5  verify: the ledger's hash chain is broken (verify --journal, fleet: a
     host's chain in the journal copy has a hole or a bad record, or the
     copy holds no record at all)";

const ALERT_HELP: &str = "\
The alert is read from FILE ('-' for stdin) as is, or built from the flags:
  --source, --severity, --description, --entity, --alert-id, --kind, and one or
  more actions, which run in the order they are given on the command line (with
  --kind and no action, the agent's playbooks choose them):
    --restart UNIT               restart_service {name: UNIT}
    --notify CHANNEL:MESSAGE     notify_operator {channel, message}; split at the
                                 first ':' (channels: journal, dbus, configured webhooks)
    --isolate SID[@SECONDS]      isolate_socket {sid, seconds}; SID is tcp:PORT,
                                 udp:PORT, ADDR, ADDR:PORT or [V6]:PORT
    --throttle ENTITY:SECONDS    throttle_entity {entity, seconds}; split at the
                                 last ':'; ENTITY is NAME.service, unit:NAME or ip:ADDR

Example:
  antibodyctl submit --source Manual --severity high --restart vael.service
  antibodyctl submit --notify 'journal:db1 /var at 97%' --isolate 203.0.113.7@600 --wait
  antibodyctl submit alert.json
  antibodyctl submit --source NEXUS --kind ssh-bruteforce --entity 203.0.113.7
  echo '{\"source\":\"Manual\",...}' | antibodyctl submit -";

#[derive(Parser, Debug)]
#[command(
    name = "antibodyctl",
    version,
    about = "Operator CLI for the Antibody agent (org.vael.Antibody on the system bus)",
    long_about = LONG_ABOUT
)]
struct Cli {
    /// Print the agent's raw JSON (watch: one JSON object per line).
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for the agent to answer one call.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit an alert; prints the plan id (SubmitAlert).
    #[command(after_long_help = ALERT_HELP)]
    Submit {
        #[command(flatten)]
        alert: AlertInput,
        /// Wait until the plan is finished (signals, and GetPlan every 500 ms);
        /// exit 0 on success, 4 on failed.
        #[arg(long)]
        wait: bool,
    },
    /// Show one plan: status, actions and log (GetPlan).
    Plan {
        /// The plan id (a UUID).
        id: String,
    },
    /// List plans, newest first (ListPlans).
    List {
        /// Only plans with this status.
        #[arg(long, value_name = "S",
              value_parser = ["pending", "in_progress", "success", "failed"])]
        status: Option<String>,
        /// At most N plans (0: the agent's default, 100).
        #[arg(long, value_name = "N", default_value_t = 0)]
        limit: u32,
    },
    /// Show the agent's health, queue, mitigations and ledger state (Status).
    Status,
    /// Print the agent's signals as they come, until Ctrl-C.
    Watch,
    /// Re-walk the ledger's hash chain; exit 5 if it is broken (VerifyLedger).
    /// With --journal, re-walk every host's chain from journal files instead
    /// (a fleet collector's copy; needs no agent).
    Verify {
        /// Journal files or directories (as systemd-journal-remote writes
        /// them, e.g. /var/log/journal/remote); per host: records, seq
        /// range, holes, the first bad record, agent versions.
        #[arg(long, value_name = "PATH", num_args = 1..)]
        journal: Vec<std::path::PathBuf>,
    },
    /// One line per host from journal files: last record, plans of the last
    /// 24 h by status, mitigations in force now, the chain's verdict (needs
    /// no agent); exit 5 if a chain is broken.
    Fleet {
        /// Journal files or directories, as for verify --journal.
        #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
        journal: Vec<std::path::PathBuf>,
    },
    /// Show the plan an alert would make and each action's exact change (DryRun).
    #[command(after_long_help = ALERT_HELP)]
    DryRun {
        #[command(flatten)]
        alert: AlertInput,
    },
    /// List the playbooks in force, in the order they are tried
    /// (ListPlaybooks); `playbooks test` shows the plan an alert would get.
    Playbooks {
        #[command(subcommand)]
        test: Option<PlaybooksCommand>,
    },
    /// Revert the reversible actions of a finished plan (RollbackPlan).
    Rollback {
        /// The plan id (a UUID).
        id: String,
    },
    /// Print a shell completion script (needs no agent), e.g.
    /// `antibodyctl completions bash > /etc/bash_completion.d/antibodyctl`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the man pages antibodyctl.1 and antibodyctl-COMMAND.1 into DIR
    /// (the packages' build step; needs no agent).
    #[command(hide = true)]
    Man {
        /// An existing directory.
        dir: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PlaybooksCommand {
    /// Show the playbook an alert would match (or why none does) and the
    /// plan it would get, with the escalated values (DryRun; no side effect).
    #[command(after_long_help = ALERT_HELP)]
    Test {
        #[command(flatten)]
        alert: AlertInput,
    },
}

/// Commands answered from the CLI's own definition, without the bus.
fn offline_command(command: &Command, json_out: bool) -> Option<Outcome> {
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "antibodyctl",
                &mut std::io::stdout(),
            );
            Some(Ok(()))
        }
        Command::Man { dir } => Some(
            clap_mangen::generate_to(Cli::command(), dir)
                .map_err(|e| Failure::Usage(format!("man pages into {}: {e}", dir.display()))),
        ),
        Command::Verify { journal } if !journal.is_empty() => {
            Some(fleet::verify_journal(journal, json_out))
        }
        Command::Fleet { journal } => Some(fleet::summarize(journal, json_out)),
        _ => None,
    }
}

const ACTION_FLAGS: [&str; 4] = ["restart", "notify", "isolate", "throttle"];

#[derive(Args, Debug)]
struct AlertInput {
    /// Alert JSON file; '-' reads stdin. Excludes the flags below.
    #[arg(value_name = "FILE",
          conflicts_with_all = ["source", "severity", "description", "entity",
                                "alert_id", "kind", "restart", "notify", "isolate",
                                "throttle"])]
    file: Option<String>,
    /// Alert source.
    #[arg(long, default_value = "Manual", value_parser = ["Manual", "NEXUS", "Watchdog"])]
    source: String,
    /// Alert severity.
    #[arg(long, default_value = "high", value_parser = ["low", "med", "high", "critical"])]
    severity: String,
    /// Alert description.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "submitted with antibodyctl"
    )]
    description: String,
    /// context.entity of the alert (optional).
    #[arg(long, value_name = "TEXT")]
    entity: Option<String>,
    /// context.alert_id: the IDS's own id for the alert (optional).
    #[arg(long, value_name = "ID")]
    alert_id: Option<String>,
    /// The alert's kind (e.g. ssh-bruteforce); with no action flag, the
    /// agent's playbooks choose the actions.
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Action restart_service {name: UNIT}.
    #[arg(long, value_name = "UNIT", value_parser = parse_restart)]
    restart: Vec<Value>,
    /// Action notify_operator; CHANNEL:MESSAGE, split at the first ':'.
    #[arg(long, value_name = "CHANNEL:MESSAGE", value_parser = parse_notify)]
    notify: Vec<Value>,
    /// Action isolate_socket; SID[@SECONDS], SID as tcp:PORT, udp:PORT, ADDR, ADDR:PORT, [V6]:PORT.
    #[arg(long, value_name = "SID[@SECONDS]", value_parser = parse_isolate)]
    isolate: Vec<Value>,
    /// Action throttle_entity; ENTITY:SECONDS, split at the last ':'.
    #[arg(long, value_name = "ENTITY:SECONDS", value_parser = parse_throttle)]
    throttle: Vec<Value>,
}

fn parse_restart(text: &str) -> Result<Value, String> {
    if text.is_empty() {
        return Err("UNIT must not be empty".into());
    }
    Ok(json!({"type": "restart_service", "name": text}))
}

fn parse_notify(text: &str) -> Result<Value, String> {
    match text.split_once(':') {
        Some((channel, message)) if !channel.is_empty() => {
            Ok(json!({"type": "notify_operator", "channel": channel, "message": message}))
        }
        _ => Err("expected CHANNEL:MESSAGE, e.g. journal:db1 is almost full".into()),
    }
}

fn parse_seconds(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("{text:?} is not a whole number of seconds"))
}

fn parse_isolate(text: &str) -> Result<Value, String> {
    let (sid, seconds) = match text.rsplit_once('@') {
        Some((sid, seconds)) => (sid, Some(parse_seconds(seconds)?)),
        None => (text, None),
    };
    if sid.is_empty() {
        return Err("expected SID[@SECONDS], e.g. tcp:8080@600".into());
    }
    let mut action = json!({"type": "isolate_socket", "sid": sid});
    if let Some(seconds) = seconds {
        action["seconds"] = json!(seconds);
    }
    Ok(action)
}

fn parse_throttle(text: &str) -> Result<Value, String> {
    match text.rsplit_once(':') {
        Some((entity, seconds)) if !entity.is_empty() => Ok(json!({
            "type": "throttle_entity",
            "entity": entity,
            "seconds": parse_seconds(seconds)?,
        })),
        _ => Err("expected ENTITY:SECONDS, e.g. vael.service:300".into()),
    }
}

/// Why antibodyctl stops short of success; each maps to one exit code.
#[derive(Debug)]
enum Failure {
    /// The agent or the bus refused with a named error (exit 1).
    Refused { name: String, message: String },
    /// Bad input the parser could not catch (exit 2).
    Usage(String),
    /// No bus, no agent, no answer (exit 3).
    Unreachable(String),
    /// `submit --wait`: the plan failed (exit 4); already reported.
    PlanFailed,
    /// `verify`: the chain is broken (exit 5); already reported.
    LedgerBroken,
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused { .. } => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
            Failure::PlanFailed => 4,
            Failure::LedgerBroken => 5,
        }
    }

    fn report(&self) {
        match self {
            Failure::Refused { name, message } => eprintln!("antibodyctl: {name}: {message}"),
            Failure::Usage(m) | Failure::Unreachable(m) => eprintln!("antibodyctl: {m}"),
            Failure::PlanFailed | Failure::LedgerBroken => {}
        }
    }
}

type Outcome<T = ()> = Result<T, Failure>;

/// The last segment of a D-Bus error name: `org.vael.Antibody.Error.NotFound` → `NotFound`.
fn short_name(name: &str) -> String {
    name.rsplit('.').next().unwrap_or(name).to_string()
}

/// Sorts a failed call into "refused" (a named error: exit 1) and
/// "unreachable" (exit 3).
fn call_failure(e: zbus::Error) -> Failure {
    use zbus::fdo::Error as Fdo;
    match e {
        zbus::Error::MethodError(name, message, _) => Failure::Refused {
            name: short_name(name.as_str()),
            message: message.unwrap_or_default(),
        },
        zbus::Error::FDO(fdo) => match *fdo {
            Fdo::ZBus(inner) => call_failure(inner),
            Fdo::ServiceUnknown(m) | Fdo::NameHasNoOwner(m) => Failure::Unreachable(format!(
                "the agent (org.vael.Antibody) is not on the bus: {m}"
            )),
            Fdo::NoReply(m)
            | Fdo::Timeout(m)
            | Fdo::TimedOut(m)
            | Fdo::Disconnected(m)
            | Fdo::NoServer(m)
            | Fdo::IOError(m)
            | Fdo::NoNetwork(m)
            | Fdo::BadAddress(m) => Failure::Unreachable(format!("no answer from the agent: {m}")),
            other => Failure::Refused {
                name: short_name(other.name().as_str()),
                message: other.description().unwrap_or_default().to_string(),
            },
        },
        zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            Failure::Unreachable("the agent did not answer in time (see --timeout)".into())
        }
        other => Failure::Unreachable(format!("talking to the agent failed: {other}")),
    }
}

fn bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".into())
}

async fn connect(timeout: Duration) -> Outcome<(zbus::Connection, AntibodyProxy<'static>)> {
    let unreachable = |e: zbus::Error| {
        Failure::Unreachable(format!(
            "cannot connect to the system bus at {}: {e}",
            bus_address()
        ))
    };
    let conn = tokio::time::timeout(
        timeout,
        zbus::connection::Builder::system()
            .method_timeout(timeout)
            .build(),
    )
    .await
    .map_err(|_| {
        Failure::Unreachable(format!(
            "the system bus at {} did not answer in time",
            bus_address()
        ))
    })?
    .map_err(unreachable)?;
    let proxy = antibody::dbus::proxy::client(&conn)
        .await
        .map_err(call_failure)?;
    Ok((conn, proxy))
}

/// Parses JSON the agent returned; a reply that is not JSON is a protocol problem.
fn parse_reply(text: &str) -> Outcome<Value> {
    serde_json::from_str(text).map_err(|e| {
        Failure::Unreachable(format!(
            "the agent answered with invalid JSON ({e}): {text}"
        ))
    })
}

/// Control characters from the agent's data must not reach the terminal raw.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn truncate(text: &str, max: usize) -> String {
    let text = clean(text);
    if text.chars().count() <= max {
        text
    } else {
        let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

fn now_rfc3339() -> String {
    antibody::time::rfc3339(antibody::time::now_ms())
}

/// The alert text: the file (or stdin) as is, or JSON built from the flags,
/// actions in the order they appear on the command line.
fn alert_text(input: &AlertInput, sub: &str, matches: &ArgMatches) -> Outcome<String> {
    if let Some(file) = &input.file {
        let mut text = String::new();
        let read = if file == "-" {
            std::io::stdin().read_to_string(&mut text).map(|_| ())
        } else {
            std::fs::read_to_string(file).map(|t| text = t)
        };
        read.map_err(|e| {
            let name = if file == "-" { "stdin" } else { file.as_str() };
            Failure::Usage(format!("cannot read the alert from {name}: {e}"))
        })?;
        return Ok(text);
    }
    let mut ordered: Vec<(usize, Value)> = Vec::new();
    for (id, values) in ACTION_FLAGS.iter().zip([
        &input.restart,
        &input.notify,
        &input.isolate,
        &input.throttle,
    ]) {
        let indices = matches.indices_of(id).into_iter().flatten();
        ordered.extend(indices.zip(values.iter().cloned()));
    }
    if ordered.is_empty() && input.kind.is_none() {
        let mut cmd = Cli::command();
        cmd.build();
        // `sub` is a top-level command, or `test` under `playbooks`.
        let found = match cmd.find_subcommand(sub).is_some() {
            true => cmd.find_subcommand_mut(sub),
            false => cmd
                .find_subcommand_mut("playbooks")
                .and_then(|p| p.find_subcommand_mut(sub)),
        };
        let err = found.map(|c| {
            c.error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "give an alert FILE ('-' for stdin), at least one action flag \
                 (--restart, --notify, --isolate, --throttle), or --kind for the \
                 playbooks to choose them",
            )
        });
        if let Some(err) = err {
            err.exit();
        }
        return Err(Failure::Usage("no alert given".into()));
    }
    ordered.sort_by_key(|(i, _)| *i);
    let mut alert = Map::new();
    alert.insert("source".into(), json!(input.source));
    alert.insert("severity".into(), json!(input.severity));
    alert.insert("description".into(), json!(input.description));
    if !ordered.is_empty() {
        alert.insert(
            "actions".into(),
            Value::Array(ordered.into_iter().map(|(_, a)| a).collect()),
        );
    }
    if let Some(kind) = &input.kind {
        alert.insert("kind".into(), json!(kind));
    }
    let mut context = Map::new();
    if let Some(entity) = &input.entity {
        context.insert("entity".into(), json!(entity));
    }
    if let Some(id) = &input.alert_id {
        context.insert("alert_id".into(), json!(id));
    }
    if !context.is_empty() {
        alert.insert("context".into(), Value::Object(context));
    }
    Ok(Value::Object(alert).to_string())
}

/// Prints an agent's answer: as it came with `--json`, else as `human`
/// shows it.
fn show(reply: String, json_out: bool, human: impl FnOnce(&Value)) -> Outcome {
    if json_out {
        println!("{reply}");
    } else {
        human(&parse_reply(&reply)?);
    }
    Ok(())
}

fn print_json(v: &Value) {
    println!("{v}");
}

fn print_plan(plan: &Value) {
    println!("plan {}", s(plan, "id"));
    println!("  status:      {}", s(plan, "status"));
    println!(
        "  source:      {} (severity {})",
        s(plan, "source"),
        s(plan, "severity")
    );
    println!("  created:     {}", s(plan, "timestamp"));
    if let Some(finished) = plan.get("finished_at").and_then(Value::as_str) {
        println!("  finished:    {finished}");
    }
    println!("  description: {}", clean(s(plan, "description")));
    if let Some(entity) = plan.pointer("/context/entity").and_then(Value::as_str) {
        println!("  entity:      {}", clean(entity));
    }
    println!("  alert:       sha256 {}", s(plan, "alert_sha256"));
    if let Some(id) = plan.pointer("/context/alert_id").and_then(Value::as_str) {
        println!("  alert id:    {}", clean(id));
    }
    if let Some(pb) = plan.get("playbook").filter(|p| p.is_object()) {
        let repeat = pb.get("repeat").and_then(Value::as_u64).unwrap_or(0);
        let simulated = match pb.get("simulate").and_then(Value::as_bool) {
            Some(true) => ", simulated: nothing was changed",
            _ => "",
        };
        println!(
            "  playbook:    {} ({}), repeat {repeat}{simulated}",
            clean(s(pb, "name")),
            clean(s(pb, "file"))
        );
    }
    if let Some(cb) = plan.get("callback").filter(|c| c.is_object()) {
        let attempts = cb.get("attempts").and_then(Value::as_u64).unwrap_or(0);
        let mut line = format!("{}, {attempts} attempt(s)", s(cb, "state"));
        if let Some(status) = cb.get("http_status").and_then(Value::as_u64) {
            line.push_str(&format!(", last answer HTTP {status}"));
        }
        if let Some(at) = cb.get("next_attempt_at").and_then(Value::as_str) {
            line.push_str(&format!(", next attempt {at}"));
        }
        if let Some(err) = cb.get("error").and_then(Value::as_str) {
            line.push_str(&format!(": {}", clean(err)));
        }
        println!("  call back:   {line}");
    }
    if let Some(rb) = plan.get("rollback").filter(|r| r.is_object()) {
        let state = match rb.get("finished_at").and_then(Value::as_str) {
            Some(at) => format!("finished {at}"),
            None => "in progress".into(),
        };
        println!(
            "  rollback:    requested {} by {}, {state}",
            s(rb, "requested_at"),
            clean(s(rb, "by"))
        );
    }
    let actions = plan.get("actions").and_then(Value::as_array);
    println!("actions:");
    for (i, a) in actions.into_iter().flatten().enumerate() {
        let attempts = a.get("attempts").and_then(Value::as_u64).unwrap_or(0);
        println!(
            "  [{i}] {:<16} {:<9} attempts={attempts}",
            s(a, "type"),
            s(a, "state")
        );
        if let Some(params) = a.get("params") {
            println!("      params: {}", clean(&params.to_string()));
        }
        if let Some(at) = a.get("revert_at").and_then(Value::as_str) {
            println!("      reverts at: {at}");
        }
        if let Some(would) = a.get("would") {
            println!("      would: {}", clean(&would.to_string()));
        }
        if a.get("revert_failed").and_then(Value::as_bool) == Some(true) {
            println!("      revert failed: the change is still in force");
        }
        if let Some(err) = a.get("error").and_then(Value::as_str) {
            println!("      error: {}", clean(err));
        }
    }
    println!("log:");
    for line in plan
        .get("log")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!("  {} {}", s(line, "ts"), clean(s(line, "message")));
    }
}

fn print_list(plans: &[Value]) {
    if plans.is_empty() {
        println!("no plans");
        return;
    }
    println!(
        "{:<36}  {:<11}  {:<8}  {:<8}  {:>7}  {:<24}  DESCRIPTION",
        "ID", "STATUS", "SEVERITY", "SOURCE", "ACTIONS", "CREATED"
    );
    for p in plans {
        let n = p
            .get("actions")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        println!(
            "{:<36}  {:<11}  {:<8}  {:<8}  {:>7}  {:<24}  {}",
            s(p, "id"),
            s(p, "status"),
            s(p, "severity"),
            s(p, "source"),
            n,
            s(p, "timestamp"),
            truncate(s(p, "description"), 48)
        );
    }
}

fn print_status(st: &Value) {
    let yes_no = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    };
    let num = |key: &str| {
        st.get(key)
            .and_then(Value::as_u64)
            .map_or("-".to_string(), |n| n.to_string())
    };
    println!(
        "healthy:            {}",
        yes_no(st.get("healthy").and_then(Value::as_bool))
    );
    println!("version:            {}", s(st, "version"));
    if let Some(up) = st.get("uptime_secs").and_then(Value::as_u64) {
        println!(
            "uptime:             {}",
            humantime::format_duration(Duration::from_secs(up))
        );
    }
    println!("queue depth:        {}", num("queue_depth"));
    println!("in flight:          {}", num("in_flight"));
    println!("active mitigations: {}", num("active_mitigations"));
    let ledger = st.get("ledger").cloned().unwrap_or(Value::Null);
    let records = ledger
        .get("records")
        .and_then(Value::as_u64)
        .map_or("?".to_string(), |n| n.to_string());
    match ledger.get("ok").and_then(Value::as_bool) {
        Some(true) => println!("ledger:             ok, {records} records"),
        Some(false) => {
            let at = ledger
                .get("broken_at")
                .and_then(Value::as_u64)
                .map_or("an unknown record".to_string(), |n| format!("seq {n}"));
            println!(
                "ledger:             BROKEN at {at}, {records} records (run: antibodyctl verify)"
            );
        }
        None => println!("ledger:             -"),
    }
}

async fn cmd_submit(
    proxy: &AntibodyProxy<'_>,
    alert: String,
    wait: bool,
    json_out: bool,
) -> Outcome {
    // Subscribe before submitting, so no status change can slip between the
    // answer and the subscription.
    let streams = if wait {
        let status = proxy
            .receive_plan_status_changed()
            .await
            .map_err(call_failure)?;
        let actions = proxy
            .receive_action_finished()
            .await
            .map_err(call_failure)?;
        Some((status, actions))
    } else {
        None
    };
    let (id, created) = proxy.submit_alert(&alert).await.map_err(call_failure)?;
    let Some((mut status_changes, mut action_finished)) = streams else {
        if json_out {
            print_json(&json!({"plan_id": id, "created": created}));
        } else if created {
            println!("plan {id} created");
        } else {
            println!("plan {id} already exists (identical alert)");
        }
        return Ok(());
    };
    if !json_out {
        if created {
            println!("plan {id} created; waiting for it to finish");
        } else {
            println!("plan {id} already exists (identical alert); waiting for it to finish");
        }
    }
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let plan = loop {
        tokio::select! {
            _ = poll.tick() => {
                let plan = parse_reply(&proxy.get_plan(&id).await.map_err(call_failure)?)?;
                if matches!(s(&plan, "status"), "success" | "failed") {
                    break plan;
                }
            }
            Some(signal) = status_changes.next() => {
                let Ok(args) = signal.args() else { continue };
                if args.plan_id() == &id && matches!(*args.status(), "success" | "failed") {
                    break parse_reply(&proxy.get_plan(&id).await.map_err(call_failure)?)?;
                }
            }
            Some(signal) = action_finished.next() => {
                let Ok(args) = signal.args() else { continue };
                if !json_out && args.plan_id() == &id {
                    println!("  action {} {}: {}", args.index(), args.r#type(), args.outcome());
                }
            }
        }
    };
    let status = s(&plan, "status").to_string();
    if json_out {
        print_json(&json!({"plan_id": id, "created": created, "plan": plan}));
    } else {
        println!("plan {id} {status}");
        if status != "success" {
            for (i, a) in plan
                .get("actions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(err) = a.get("error").and_then(Value::as_str) {
                    println!("  [{i}] {} {}: {}", s(a, "type"), s(a, "state"), clean(err));
                }
            }
        }
    }
    if status == "success" {
        Ok(())
    } else {
        Err(Failure::PlanFailed)
    }
}

/// One signal, as a line of text or a JSON object whose first keys are
/// `event` and `signal`.
fn emit_event(json_out: bool, signal: &str, fields: Value, human: String) {
    if json_out {
        let body = fields.to_string();
        let inner = body
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .unwrap_or_default();
        let sep = if inner.is_empty() { "" } else { "," };
        println!(
            "{{\"event\":\"antibody_event\",\"signal\":{}{sep}{inner},\"ts\":{}}}",
            json!(signal),
            json!(now_rfc3339())
        );
    } else {
        println!("{signal} {human}");
    }
}

async fn cmd_watch(conn: &zbus::Connection, json_out: bool) -> Outcome {
    use antibody::dbus::proxy::{ActionFinished, OperatorNotice, PlanQueued, PlanStatusChanged};
    // One stream for every signal of the interface, so lines come out in the
    // order the agent sent them (separate per-signal streams may interleave).
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(antibody::dbus::INTERFACE)
        .path(antibody::dbus::OBJECT_PATH)
        .build()
        .map_err(call_failure)?;
    let mut signals = zbus::MessageStream::for_match_rule(rule, conn, None)
        .await
        .map_err(call_failure)?;
    eprintln!(
        "antibodyctl: watching org.vael.Antibody signals on {}; Ctrl-C to stop",
        bus_address()
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let msg = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = signals.next() => match next {
                Some(Ok(msg)) => msg,
                Some(Err(_)) => continue,
                None => return Err(Failure::Unreachable("lost the connection to the bus".into())),
            },
        };
        let member = msg
            .header()
            .member()
            .map(|m| m.to_string())
            .unwrap_or_default();
        match member.as_str() {
            "PlanQueued" => {
                let Some(sig) = PlanQueued::from_message(msg) else {
                    continue;
                };
                let Ok(a) = sig.args() else { continue };
                emit_event(
                    json_out,
                    "PlanQueued",
                    json!({"plan_id": a.plan_id(), "source": a.source(), "severity": a.severity()}),
                    format!(
                        "{} source={} severity={}",
                        a.plan_id(),
                        clean(a.source()),
                        clean(a.severity())
                    ),
                );
            }
            "PlanStatusChanged" => {
                let Some(sig) = PlanStatusChanged::from_message(msg) else {
                    continue;
                };
                let Ok(a) = sig.args() else { continue };
                emit_event(
                    json_out,
                    "PlanStatusChanged",
                    json!({"plan_id": a.plan_id(), "status": a.status()}),
                    format!("{} status={}", a.plan_id(), clean(a.status())),
                );
            }
            "ActionFinished" => {
                let Some(sig) = ActionFinished::from_message(msg) else {
                    continue;
                };
                let Ok(a) = sig.args() else { continue };
                emit_event(
                    json_out,
                    "ActionFinished",
                    json!({"plan_id": a.plan_id(), "index": a.index(), "type": a.r#type(), "outcome": a.outcome()}),
                    format!(
                        "{} index={} type={} outcome={}",
                        a.plan_id(),
                        a.index(),
                        clean(a.r#type()),
                        clean(a.outcome())
                    ),
                );
            }
            "OperatorNotice" => {
                let Some(sig) = OperatorNotice::from_message(msg) else {
                    continue;
                };
                let Ok(a) = sig.args() else { continue };
                emit_event(
                    json_out,
                    "OperatorNotice",
                    json!({"channel": a.channel(), "severity": a.severity(), "message": a.message()}),
                    format!(
                        "channel={} severity={} message={:?}",
                        clean(a.channel()),
                        clean(a.severity()),
                        a.message()
                    ),
                );
            }
            _ => {}
        }
    }
}

async fn run(cli: Cli, matches: &ArgMatches) -> Outcome {
    let json_out = cli.json;
    let timeout = Duration::from_secs(cli.timeout);
    // Read the alert before connecting: a usage problem is reported as one.
    let alert = match (&cli.command, matches.subcommand()) {
        (Command::Submit { alert, .. } | Command::DryRun { alert }, Some((name, sub))) => {
            Some(alert_text(alert, name, sub)?)
        }
        (
            Command::Playbooks {
                test: Some(PlaybooksCommand::Test { alert }),
            },
            Some((_, sub)),
        ) => match sub.subcommand() {
            Some((name, test)) => Some(alert_text(alert, name, test)?),
            None => None,
        },
        _ => None,
    };
    if let Some(outcome) = offline_command(&cli.command, json_out) {
        return outcome;
    }
    let (conn, proxy) = connect(timeout).await?;
    match cli.command {
        // Answered by offline_command above.
        Command::Completions { .. } | Command::Man { .. } | Command::Fleet { .. } => Ok(()),
        Command::Submit { wait, .. } => {
            cmd_submit(&proxy, alert.unwrap_or_default(), wait, json_out).await
        }
        Command::DryRun { .. } | Command::Playbooks { test: Some(_) } => {
            let reply = proxy
                .dry_run(&alert.unwrap_or_default())
                .await
                .map_err(call_failure)?;
            if matches!(cli.command, Command::Playbooks { .. }) {
                return show(reply, json_out, playbooks::print_test);
            }
            show(reply, json_out, |v| {
                println!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
            })
        }
        Command::Playbooks { test: None } => {
            let reply = proxy.list_playbooks().await.map_err(call_failure)?;
            show(reply, json_out, playbooks::print_list)
        }
        Command::Plan { id } => {
            let reply = proxy.get_plan(&id).await.map_err(call_failure)?;
            show(reply, json_out, print_plan)
        }
        Command::List { status, limit } => {
            let reply = proxy
                .list_plans(status.as_deref().unwrap_or(""), limit)
                .await
                .map_err(call_failure)?;
            if json_out {
                println!("{reply}");
            } else {
                match parse_reply(&reply)? {
                    Value::Array(plans) => print_list(&plans),
                    other => {
                        return Err(Failure::Unreachable(format!(
                            "the agent answered ListPlans with a non-array: {other}"
                        )))
                    }
                }
            }
            Ok(())
        }
        Command::Status => {
            let reply = proxy.status().await.map_err(call_failure)?;
            if json_out {
                println!("{reply}");
            } else {
                print_status(&parse_reply(&reply)?);
            }
            Ok(())
        }
        Command::Watch => cmd_watch(&conn, json_out).await,
        Command::Verify { .. } => {
            let (ok, report) = proxy.verify_ledger().await.map_err(call_failure)?;
            if json_out {
                print_json(&json!({"ok": ok, "report": report}));
            } else if ok {
                println!("ledger ok: {}", clean(&report));
            } else {
                println!("ledger BROKEN: {}", clean(&report));
            }
            if ok {
                Ok(())
            } else {
                Err(Failure::LedgerBroken)
            }
        }
        Command::Rollback { id } => {
            proxy.rollback_plan(&id).await.map_err(call_failure)?;
            if json_out {
                print_json(&json!({"plan_id": id, "rollback": "requested"}));
            } else {
                println!("rollback of plan {id} requested");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`antibodyctl watch | head -1`), as Unix
    // tools do, instead of panicking on the failed write.
    // SAFETY: restores the default disposition before any thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("antibodyctl: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli, &matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.report();
            ExitCode::from(failure.exit_code())
        }
    }
}
