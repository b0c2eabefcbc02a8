//! The T1 rig shared by the engine tests: an engine on real ledger files in
//! a temp dir, a scripted `step` action, a recording notifier and a fake
//! systemd. Logic tests only; real systemd is proven in the T4 testbed.
#![allow(dead_code, unused_imports)]

pub use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use async_trait::async_trait;
pub use serde_json::{json, Value};
use tokio::sync::Notify;

pub use antibody::actions::{
    ActionCtx, ActionError, ActionHandler, Applied, Recovered, Registry, ValidateCtx, Validated,
};
pub use antibody::config::Config;
pub use antibody::engine::{Engine, EngineParts};
pub use antibody::error::{AgentError, ErrorName};
pub use antibody::events::{self, AgentEvent};
pub use antibody::ledger::{self, LedgerWriter, Tip, WriterOptions};
pub use antibody::plan::fields::Fields;
pub use antibody::plan::{Event, PlanSeed};
pub use antibody::sys::nft::backend::NftFirewall;
pub use antibody::sys::nft::fake::FakeDriver;
pub use antibody::sys::notifier::{Channel, Notice, Notifier};
pub use antibody::sys::Sys;

pub mod fake_http;
pub mod fake_systemd;
pub use fake_http::FakeHttp;
pub use fake_systemd::FakeSystemd;

/// What one apply of a `step` action does.
#[derive(Clone)]
pub enum Outcome {
    Ok,
    Transient,
    Permanent,
    /// Waits until the script's gate is opened, then succeeds.
    Gate(Arc<Notify>),
}

#[derive(Default)]
pub struct Script {
    pub outcomes: HashMap<String, VecDeque<Outcome>>,
    /// (call, key) in call order: "apply", "revert", "recover".
    pub calls: Vec<(String, String)>,
    pub recover_answer: Option<bool>,
}

/// `{"type": "step", "key": K, "target"?: T, "seconds"?: N}`: does what the
/// script says for K; reversible; timed when `seconds` is given.
#[derive(Clone, Default)]
pub struct Step(pub Arc<Mutex<Script>>);

impl Step {
    pub fn script(&self, key: &str, outcomes: Vec<Outcome>) {
        self.0
            .lock()
            .unwrap()
            .outcomes
            .insert(key.into(), outcomes.into());
    }
    pub fn calls(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().calls.clone()
    }
    pub fn count(&self, call: &str, key: &str) -> usize {
        self.calls()
            .iter()
            .filter(|(c, k)| c == call && k == key)
            .count()
    }
}

pub fn key_of(params: &Value) -> String {
    params["key"].as_str().unwrap_or_default().to_string()
}

#[async_trait]
impl ActionHandler for Step {
    fn name(&self) -> &'static str {
        "step"
    }
    fn reversible(&self) -> bool {
        true
    }
    fn validate(
        &self,
        params: &Fields<'_>,
        _ctx: &ValidateCtx<'_>,
    ) -> Result<Validated, AgentError> {
        params.deny_unknown(&["key", "target", "seconds"])?;
        let key = params.string("key")?;
        let targets = params
            .opt_string("target")?
            .map(|t| vec![t.to_string()])
            .unwrap_or_default();
        let mut out = json!({"key": key});
        if let Some(t) = params.opt_string("target")? {
            out["target"] = json!(t);
        }
        if let Some(s) = params.opt_integer("seconds", 1, 100)? {
            out["seconds"] = json!(s);
        }
        Ok(Validated {
            params: out,
            targets,
        })
    }
    async fn dry_run(&self, ctx: &ActionCtx<'_>) -> Result<Value, ActionError> {
        Ok(json!({"would": key_of(ctx.params)}))
    }
    async fn apply(&self, ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        let key = key_of(ctx.params);
        let outcome = {
            let mut s = self.0.lock().unwrap();
            s.calls.push(("apply".into(), key.clone()));
            s.outcomes.get_mut(&key).and_then(|q| {
                if q.len() > 1 {
                    q.pop_front()
                } else {
                    q.front().cloned()
                }
            })
        };
        match outcome.unwrap_or(Outcome::Ok) {
            Outcome::Ok => {}
            Outcome::Transient => return Err(ActionError::transient(format!("{key}: busy"))),
            Outcome::Permanent => return Err(ActionError::permanent(format!("{key}: broken"))),
            Outcome::Gate(gate) => gate.notified().await,
        }
        Ok(Applied {
            summary: format!("{key} done"),
            changes: json!({"key": key}),
            revert_after_secs: ctx.params["seconds"].as_u64(),
        })
    }
    async fn revert(&self, _ctx: &ActionCtx<'_>, changes: &Value) -> Result<String, ActionError> {
        let key = key_of(changes);
        self.0
            .lock()
            .unwrap()
            .calls
            .push(("revert".into(), key.clone()));
        Ok(format!("{key} undone"))
    }
    async fn recover(&self, ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        let key = key_of(ctx.params);
        let answer = {
            let mut s = self.0.lock().unwrap();
            s.calls.push(("recover".into(), key.clone()));
            s.recover_answer
        };
        Ok(match answer {
            Some(true) => Recovered::TookEffect(Applied {
                summary: format!("{key} found in place"),
                changes: json!({"key": key}),
                revert_after_secs: None,
            }),
            _ => Recovered::DidNotTakeEffect(format!("{key} not in place")),
        })
    }
}

#[derive(Default)]
pub struct RecordingNotifier(pub Mutex<Vec<(Channel, Notice)>>, pub Mutex<LedgerPeek>);

/// What was durable in the ledger at the moment of each notice, when
/// `dir` is set: shows whether an action's start was written ahead of it.
#[derive(Default)]
pub struct LedgerPeek {
    pub dir: Option<std::path::PathBuf>,
    pub kinds_at_notice: Vec<Vec<String>>,
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, channel: &Channel, notice: &Notice) -> Result<(), ActionError> {
        let mut peek = self.1.lock().unwrap();
        if let Some(dir) = peek.dir.clone() {
            let mut kinds = Vec::new();
            ledger::scan(&dir, |r| kinds.push(r.kind.clone())).unwrap();
            peek.kinds_at_notice.push(kinds);
        }
        self.0
            .lock()
            .unwrap()
            .push((channel.clone(), notice.clone()));
        Ok(())
    }
}

pub struct Rig {
    pub engine: Arc<Engine>,
    pub step: Step,
    pub notifier: Arc<RecordingNotifier>,
    pub systemd: Arc<FakeSystemd>,
    pub http: Arc<FakeHttp>,
    pub dir: tempfile::TempDir,
}

pub fn config_in(dir: &std::path::Path, extra: &str) -> Config {
    let mut c = Config::from_toml(&format!(
        "[retry]\nbase_ms = 5\nfactor = 2\nmax_attempts = 4\n{extra}"
    ))
    .unwrap();
    c.ledger.dir = dir.join("ledger");
    c.state.dir = dir.join("state");
    // The rig's own playbooks (none unless a test writes some), never the
    // host's /etc/antibody/playbooks.d.
    c.playbooks.dir = dir.join("playbooks");
    c.loaded_playbooks = Arc::new(antibody::playbooks::load_dir(&c.playbooks.dir).unwrap());
    c
}

pub fn open(dir: tempfile::TempDir, step: Step, extra: &str) -> Rig {
    open_with_systemd(dir, step, Arc::new(FakeSystemd::default()), extra)
}

/// An engine on `dir` whose systemd is `systemd`: reopening a directory with
/// the same fake is an agent restart on the same host.
pub fn open_with_systemd(
    dir: tempfile::TempDir,
    step: Step,
    systemd: Arc<FakeSystemd>,
    extra: &str,
) -> Rig {
    open_with(dir, step, systemd, Arc::new(FakeHttp::default()), extra)
}

/// An engine on `dir` with these fakes: reopening a directory with the
/// same ones is an agent restart on the same host.
pub fn open_with(
    dir: tempfile::TempDir,
    step: Step,
    systemd: Arc<FakeSystemd>,
    http: Arc<FakeHttp>,
    extra: &str,
) -> Rig {
    let notifier = Arc::new(RecordingNotifier::default());
    let mut registry = Registry::builtin();
    registry.register(Arc::new(step.clone()));
    let engine = Engine::open(
        config_in(dir.path(), extra),
        EngineParts {
            registry,
            sys: Sys {
                notifier: notifier.clone(),
                systemd: systemd.clone(),
                firewall: Arc::new(NftFirewall::start(FakeDriver::default())),
                http: http.clone(),
            },
            events: events::channel(),
            mirror: None,
            own_unit: None,
        },
    )
    .unwrap();
    Rig {
        engine,
        step,
        notifier,
        systemd,
        http,
        dir,
    }
}

pub async fn start(extra: &str) -> Rig {
    let rig = open(tempfile::tempdir().unwrap(), Step::default(), extra);
    tokio::spawn(rig.engine.clone().run());
    rig
}

pub fn alert(description: &str, actions: Value) -> String {
    json!({"source": "Watchdog", "severity": "high", "description": description, "actions": actions}).to_string()
}

pub fn step(key: &str) -> Value {
    json!({"type": "step", "key": key})
}

pub fn step_on(key: &str, target: &str) -> Value {
    json!({"type": "step", "key": key, "target": target})
}

pub async fn wait_finished(engine: &Engine, id: &str) -> Value {
    for _ in 0..2000 {
        let plan = engine.get_plan(id).unwrap();
        if plan["status"] == "success" || plan["status"] == "failed" {
            return plan;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("plan {id} did not finish: {}", engine.get_plan(id).unwrap());
}

pub async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn states(plan: &Value) -> Vec<String> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap().to_string())
        .collect()
}

pub fn ledger_kinds(rig: &Rig) -> Vec<String> {
    let mut kinds = Vec::new();
    let report = ledger::scan(&rig.dir.path().join("ledger"), |r| {
        kinds.push(r.kind.clone())
    })
    .unwrap();
    assert!(report.ok(), "{}", report.report);
    kinds
}

/// Writes `events` to a fresh ledger, as an agent that then died would have.
pub async fn write_ledger(dir: &std::path::Path, events: Vec<(Option<&str>, Event)>) {
    let writer = LedgerWriter::start(
        WriterOptions {
            dir: dir.join("ledger"),
            segment_bytes: 1 << 20,
            tip: Tip::default(),
            last_segment: None,
        },
        Box::new(|_| {}),
    )
    .unwrap();
    for (plan, event) in events {
        let (kind, payload) = event.to_parts();
        writer
            .append(kind, plan.map(str::to_string), payload, vec![])
            .await
            .unwrap()
            .unwrap();
    }
}

/// Stops the engine as a clean stop would and gives its directory back.
pub async fn stop(rig: Rig) -> tempfile::TempDir {
    rig.engine.begin_stop();
    let Rig { engine, dir, .. } = rig;
    for _ in 0..200 {
        if Arc::strong_count(&engine) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(engine);
    tokio::time::sleep(Duration::from_millis(50)).await;
    dir
}

/// The payloads of one kind of record, in ledger order.
pub fn ledger_payloads(rig: &Rig, kind: &str) -> Vec<Value> {
    let mut payloads = Vec::new();
    ledger::scan(&rig.dir.path().join("ledger"), |r| {
        if r.kind == kind {
            payloads.push(r.payload.clone());
        }
    })
    .unwrap();
    payloads
}
