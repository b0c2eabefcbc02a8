//! The engine: accepts validated alerts as durable plans, runs them in the
//! background (bounded, ordered per target), reverts timed actions, and
//! answers queries. It owns the plans; the D-Bus layer only calls in.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Shared};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::actions::{ActionCtx, Registry, ValidateCtx};
use crate::config::Config;
use crate::error::{AgentError, ErrorName};
use crate::events::{AgentEvent, EventSender};
use crate::ledger::{self, Durable, Entry, JournalFields, LedgerWriter, ScanReport, WriterOptions};
use crate::plan::{parse_alert, Event, Plan, PlanSeed};
use crate::sys::journal::{priority_for, JournalMirror};
use crate::sys::nft::FirewallError;
use crate::sys::Sys;
use crate::time::{now_ms, rfc3339};

mod archive;
pub mod backoff;
mod callbacks;
mod counters;
pub mod flap;
mod flap_guard;
mod maps;
mod mitigations;
mod notices;
pub mod offences;
mod playbooks;
mod queries;
mod rate_limit;
mod records;
pub mod replay;
mod runner;
pub mod state;
pub mod store;
mod unit_holds;
mod upkeep;
mod verify;

use state::EngineState;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Answer to a creation still waiting for its fsync, shared with identical
/// alerts that arrive meanwhile.
type Creation = watch::Receiver<Option<Result<String, AgentError>>>;

struct Inner {
    state: EngineState,
    creating: maps::FastMap<String, Creation>,
    /// Plans each calling uid other than root may still create now.
    submit_buckets: rate_limit::SubmitBuckets,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LedgerHealth {
    pub ok: bool,
    pub broken_at: Option<u64>,
    pub report: String,
}

pub struct Engine {
    config: RwLock<Arc<Config>>,
    inner: Mutex<Inner>,
    ledger: LedgerWriter,
    registry: Registry,
    sys: Sys,
    events: EventSender,
    wake: Notify,
    /// Wakes the call-back loop: a plan that owes one finished.
    callback_wake: Notify,
    heartbeat_ms: AtomicU64,
    started: Instant,
    ledger_health: Mutex<LedgerHealth>,
    storage_ok: AtomicBool,
    stopping: AtomicBool,
    own_unit: Option<String>,
    from_checkpoint: bool,
    /// The longest the idle engine loop sleeps between heartbeats (ms).
    beat_ms: AtomicU64,
    /// Held (shared) by every write of a plan's record until the record is
    /// folded into the plan in memory; a checkpoint taken while plans run
    /// holds it exclusively for an instant, so what it saves is exactly
    /// the ledger up to its position (see `upkeep.rs`).
    fold_gate: tokio::sync::RwLock<()>,
    /// Sequence number of the newest checkpoint's record.
    checkpoint_seq: AtomicU64,
    /// The walk of the chain `VerifyLedger` runs now, shared by its callers.
    verifying: Mutex<Option<LedgerWalk>>,
    ledger_walks: AtomicU64,
    /// The journal mirror, asked by the upkeep what it had to drop.
    mirror: Option<JournalMirror>,
    /// Walks of the ledger's files (VerifyLedger) hold it shared; retention
    /// holds it exclusively while it removes segments.
    ledger_files: Arc<tokio::sync::RwLock<()>>,
    /// Plans and actions counted since the start, for `Status`.
    counters: counters::Counters,
    /// Finished plans evicted from memory (`state.dir/plans/`).
    archive: Arc<archive::Archive>,
}

/// A running walk of the chain: (ok, broken at, report).
type LedgerWalk = Shared<BoxFuture<'static, (bool, Option<u64>, String)>>;

/// A firewall busy with one batch for longer is reported unhealthy: three
/// times the longest one `nft` run may take.
const FIREWALL_STALL_MS: u64 = 3 * crate::sys::nft::cli::NFT_TIMEOUT.as_millis() as u64;

/// The start's reconcile of the firewall gives up after this long.
const START_RECONCILE_LIMIT: Duration = Duration::from_secs(20);

/// `ListPlans` answers with at most this many plans, whatever its `limit`,
/// and at most this many bytes (the newest plans that fit).
pub const MAX_LIST_PLANS: usize = 1000;
pub const MAX_LIST_BYTES: usize = 16 << 20;

/// A start that read at least this many records writes a checkpoint.
const CHECKPOINT_AFTER_RECORDS: u64 = 10_000;

/// What [`Engine::open`] needs besides the config.
pub struct EngineParts {
    pub registry: Registry,
    pub sys: Sys,
    pub events: EventSender,
    pub mirror: Option<JournalMirror>,
    pub own_unit: Option<String>,
}

impl Engine {
    /// Replays the ledger and opens it for appending. Recovery of in-flight
    /// actions is a separate step ([`Engine::settle_in_flight`]).
    pub fn open(config: Config, parts: EngineParts) -> std::io::Result<Arc<Engine>> {
        let archive = Arc::new(archive::Archive::open(&config.state.dir)?);
        let replayed = replay::replay(&config.ledger.dir, &config.state.dir)?;
        if let Some(note) = &replayed.note {
            eprintln!("<4>antibodyd: {note}");
        }
        let tail_records = replayed.scan.records;
        let from_checkpoint = replayed.from_checkpoint;
        let checkpoint_seq = replayed.checkpoint_seq;
        let (chain_ok, broken_at, report) = replayed.chain;
        let ScanReport {
            tip, last_segment, ..
        } = replayed.scan;
        let mirror = parts.mirror.clone();
        let ledger = LedgerWriter::start(
            WriterOptions {
                dir: config.ledger.dir.clone(),
                segment_bytes: config.ledger.segment_bytes,
                tip,
                last_segment,
            },
            Box::new(move |batch: &[Durable]| {
                if let Some(mirror) = &mirror {
                    mirror.mirror(batch);
                }
            }),
        )?;
        let engine = Arc::new(Engine {
            config: RwLock::new(Arc::new(config)),
            inner: Mutex::new(Inner {
                state: EngineState::from_plans(
                    replayed.plans,
                    replayed.archived_active,
                    replayed.archived_dedupe,
                    replayed.archived_offences,
                ),
                creating: maps::FastMap::default(),
                submit_buckets: Default::default(),
            }),
            ledger,
            registry: parts.registry,
            sys: parts.sys,
            events: parts.events,
            wake: Notify::new(),
            callback_wake: Notify::new(),
            heartbeat_ms: AtomicU64::new(now_ms()),
            started: Instant::now(),
            ledger_health: Mutex::new(LedgerHealth {
                ok: chain_ok,
                broken_at,
                report,
            }),
            storage_ok: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            own_unit: parts.own_unit,
            from_checkpoint,
            beat_ms: AtomicU64::new(1000),
            fold_gate: tokio::sync::RwLock::new(()),
            checkpoint_seq: AtomicU64::new(checkpoint_seq),
            verifying: Mutex::new(None),
            ledger_walks: AtomicU64::new(0),
            counters: counters::Counters::since(crate::time::now_ms()),
            mirror: parts.mirror,
            ledger_files: Arc::default(),
            archive,
        });
        // Without the checkpoint (and its count) after retention removed
        // segments, plans archived with a patch in force whose first
        // records are gone are counted from the archive itself.
        if !from_checkpoint && ledger::retention::read_anchor(&engine.config().ledger.dir).is_some()
        {
            let mut inner = engine.lock();
            let in_memory = inner.state.plans.keys().cloned().collect();
            // A start without a usable checkpoint after retention.
            let archived = archive::in_force(&engine.config().state.dir, &in_memory);
            inner.state.set_archived_active(archived);
        }
        // A long replay is not repeated at the next start: archive what
        // memory need not hold and checkpoint the rest, before any append.
        if tail_records >= CHECKPOINT_AFTER_RECORDS {
            engine.evict_finished()?;
            engine.write_checkpoint()?;
        }
        Ok(engine)
    }

    /// Whether the start used a checkpoint (the head of the chain was then
    /// not re-read; [`Engine::verify_ledger`] re-walks it in the background).
    pub fn started_from_checkpoint(&self) -> bool {
        self.from_checkpoint
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps in a reloaded config. The ledger directory is read at start only.
    pub async fn reload(&self, config: Config) {
        let note = if config.ledger.dir != self.config().ledger.dir {
            " (ledger.dir changes take effect at the next start)"
        } else {
            ""
        };
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.record_agent(Event::ConfigReloaded {
            ok: true,
            detail: format!("configuration reloaded{note}"),
        })
        .await;
        self.wake.notify_one();
    }

    pub fn events(&self) -> &EventSender {
        &self.events
    }

    fn emit(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }

    fn validate_ctx<'a>(&'a self, config: &'a Config) -> ValidateCtx<'a> {
        ValidateCtx {
            config,
            own_unit: self.own_unit.as_deref(),
        }
    }

    /// Parses and validates an alert into the plan it would make. An alert
    /// without actions gets those of the first playbook that matches
    /// (`playbooks.rs`), validated exactly as if it had carried them.
    /// `uid`: the caller, when not root.
    async fn seed_from_alert(
        &self,
        alert_json: &str,
        config: &Arc<Config>,
        uid: Option<u32>,
    ) -> Result<PlanSeed, AgentError> {
        let mut alert = parse_alert(alert_json)?;
        let owes = Self::owes_callback(config, alert.source, alert.context.as_ref(), uid);
        let (actions, playbook) = if alert.actions.is_empty() {
            let (actions, used) = self.actions_from_playbook(&mut alert, config).await?;
            (actions, Some(used))
        } else {
            (self.validate_actions(&alert, config).await?, None)
        };
        // A simulated plan changes nothing: the IDS is not told it resolved.
        let callback = owes && !playbook.as_ref().is_some_and(|p| p.simulate);
        Ok(PlanSeed {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: rfc3339(now_ms()),
            source: alert.source,
            severity: alert.severity,
            description: alert.description,
            alert_sha256: alert.sha256,
            context: alert.context,
            actions,
            playbook,
            callback,
        })
    }

    /// The alert's actions checked by their handlers. Guards that look at
    /// files run on a blocking thread.
    async fn validate_actions(
        &self,
        alert: &crate::plan::alert::Alert,
        config: &Arc<Config>,
    ) -> Result<Vec<crate::plan::ActionSeed>, AgentError> {
        if !self.registry.validates_on_disk(alert) {
            return self
                .registry
                .validate_alert(alert, &self.validate_ctx(config));
        }
        let (registry, config) = (self.registry.clone(), config.clone());
        let own_unit = self.own_unit.clone();
        let alert = alert.clone();
        tokio::task::spawn_blocking(move || {
            let ctx = ValidateCtx {
                config: &config,
                own_unit: own_unit.as_deref(),
            };
            registry.validate_alert(&alert, &ctx)
        })
        .await
        .map_err(|e| {
            AgentError::new(
                ErrorName::InvalidAlert,
                format!("alert: the validation task failed: {e}"),
            )
        })?
    }

    /// `SubmitAlert` by root (or the agent itself): see [`Engine::submit_as`].
    pub async fn submit(&self, alert_json: &str) -> Result<(String, bool), AgentError> {
        self.submit_as(alert_json, None).await
    }

    /// `SubmitAlert`: validate, dedupe, persist and queue. Answers once the
    /// plan record is durable, before any action runs. A `uid` (a caller
    /// other than root) that would create a plan takes a token of its
    /// bucket first (`auth.submit_rate_per_sec`): none left is
    /// `RateLimited`, before anything is written. A duplicate costs nothing.
    pub async fn submit_as(
        &self,
        alert_json: &str,
        uid: Option<u32>,
    ) -> Result<(String, bool), AgentError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(AgentError::new(
                ErrorName::QueueFull,
                "the agent is stopping and accepts no new plans",
            ));
        }
        let config = self.config();
        let seed = self.seed_from_alert(alert_json, &config, uid).await?;
        let hash = seed.alert_sha256.clone();
        // Decide under the lock, await outside it.
        enum Admission {
            Existing(String),
            Joining(Creation),
            New(watch::Sender<Option<Result<String, AgentError>>>),
        }
        let admission = {
            let mut inner = self.lock();
            let window_ms = config.queue.dedupe_window_secs.saturating_mul(1000);
            let open = inner.state.open_plans() + inner.creating.len();
            if let Some(creation) = inner.creating.get(&hash) {
                Admission::Joining(creation.clone())
            } else if let Some(id) = inner
                .state
                .dedupe_hit(&hash, now_ms(), window_ms)
                // An identical alert from a submitter the source's call
                // back does not trust made a plan that owes none: the
                // trusted one's gets a plan of its own, or the IDS would
                // never hear back.
                .filter(|id| {
                    !seed.callback
                        || inner
                            .state
                            .plans
                            .get(*id)
                            .is_none_or(|p| p.callback.is_some())
                })
            {
                Admission::Existing(id.to_string())
            } else if open >= config.queue.max {
                return Err(AgentError::new(
                    ErrorName::QueueFull,
                    format!(
                        "{open} plans are queued or running (queue.max = {})",
                        config.queue.max
                    ),
                ));
            } else if let Err(refusal) = take_token(&mut inner, uid, &config) {
                // Before the flap limiter, whose refusals notify the operator:
                // a caller past its rate cannot make notices either.
                return Err(refusal);
            } else if let Err(refusal) = match seed.playbook.as_ref().is_some_and(|p| p.simulate) {
                // A simulated restart restarts nothing: no limit to keep.
                true => Ok(()),
                false => self.flap_check_seed(&inner.state, &seed, &config),
            } {
                drop(inner);
                self.notify_rate_limited("", (seed.source, seed.severity), &refusal.message);
                return Err(refusal);
            } else {
                let (tx, rx) = watch::channel(None);
                inner.creating.insert(hash.clone(), rx);
                Admission::New(tx)
            }
        };
        let tx = match admission {
            Admission::Existing(id) => return Ok((id, false)),
            Admission::Joining(mut creation) => {
                let outcome = creation
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| {
                        AgentError::new(ErrorName::StorageFailure, "plan creation was abandoned")
                    })?
                    .clone();
                return outcome.expect("waited for Some").map(|id| (id, false));
            }
            Admission::New(tx) => tx,
        };
        // Written out with the engine unlocked: a plan's record holds its
        // whole alert (up to 64 KiB).
        let (kind, payload) = Event::PlanCreated { plan: seed.clone() }.to_parts();
        let journal_fields = plan_journal_fields(seed.source.as_str(), seed.severity, None);
        let entry = Entry::new(kind, Some(seed.id.clone()), &payload, journal_fields);
        let folding = self.fold_gate.read().await;
        let written = self.write_one(entry).await;
        let mut inner = self.lock();
        inner.creating.remove(&hash);
        match written {
            Ok(d) => {
                self.storage_ok.store(true, Ordering::Relaxed);
                let plan = Plan::from_seed(seed, d.seq, d.ts_ms);
                self.counters.plan(plan.source.as_str(), "pending");
                let queued = AgentEvent::PlanQueued {
                    plan_id: plan.id.clone(),
                    source: plan.source.as_str().into(),
                    severity: plan.severity.as_str().into(),
                };
                let id = plan.id.clone();
                inner.state.accept(plan);
                drop(inner);
                drop(folding);
                let _ = tx.send(Some(Ok(id.clone())));
                self.emit(queued);
                self.emit(AgentEvent::CountersChanged);
                self.wake.notify_one();
                Ok((id, true))
            }
            Err(e) => {
                // Nothing was created: the token goes back.
                if let Some(uid) = uid {
                    inner.submit_buckets.refund(uid, config.auth.submit_burst);
                }
                drop(inner);
                self.storage_ok.store(false, Ordering::Relaxed);
                self.emit(AgentEvent::CountersChanged);
                let err = AgentError::new(
                    ErrorName::StorageFailure,
                    format!("the plan could not be recorded, so nothing will run: {e}"),
                );
                let _ = tx.send(Some(Err(err.clone())));
                Err(err)
            }
        }
    }

    /// `DryRun` by root: see [`Engine::dry_run_as`].
    pub async fn dry_run(&self, alert_json: &str) -> Result<Value, AgentError> {
        self.dry_run_as(alert_json, None).await
    }

    /// `DryRun`: the plan that would be made and each action's exact change.
    /// It reads the system (and files, for hot_patch) without creating
    /// anything, so a caller other than root pays for it with a token of
    /// its bucket, as for a plan.
    pub async fn dry_run_as(
        &self,
        alert_json: &str,
        uid: Option<u32>,
    ) -> Result<Value, AgentError> {
        let config = self.config();
        let seed = self.seed_from_alert(alert_json, &config, uid).await?;
        take_token(&mut self.lock(), uid, &config)?;
        let existing = {
            let inner = self.lock();
            let window_ms = config.queue.dedupe_window_secs.saturating_mul(1000);
            inner
                .state
                .dedupe_hit(&seed.alert_sha256, now_ms(), window_ms)
                .map(str::to_string)
        };
        let mut changes = Vec::new();
        for (index, action) in seed.actions.iter().enumerate() {
            let handler = self.registry.get(&action.kind).expect("validated");
            let ctx = ActionCtx {
                plan_id: &seed.id,
                source: seed.source,
                severity: seed.severity,
                description: &seed.description,
                index,
                params: &action.params,
                config: &config,
                sys: &self.sys,
                own_unit: self.own_unit.as_deref(),
                prepared: None,
            };
            let change = match handler.dry_run(&ctx).await {
                Ok(change) => change,
                Err(e) => json!({"error": e.message}),
            };
            changes.push(json!({"index": index, "type": action.kind, "change": change}));
        }
        Ok(json!({
            "would_create": existing.is_none(),
            "existing_plan": existing,
            "callback": Self::callback_preview(&config, &seed),
            "plan": seed,
            "actions": changes,
        }))
    }

    /// `RollbackPlan`: revert a finished plan's reversible actions, newest
    /// first. Answers once the request is durable; the reverts follow.
    pub async fn rollback(&self, id: &str, by: &str) -> Result<(), AgentError> {
        let in_memory = self.lock().state.plans.contains_key(id);
        if !in_memory {
            if let Some(plan) = self.load_archived(id).await {
                self.lock().state.readmit(plan);
            }
        }
        {
            let inner = self.lock();
            let plan = inner.state.plans.get(id).ok_or_else(|| {
                AgentError::new(ErrorName::NotFound, format!("no plan with id {id:?}"))
            })?;
            if !plan.status.is_finished() {
                return Err(AgentError::new(
                    ErrorName::PlanNotFinished,
                    format!(
                        "plan {id} is {}; only a finished plan can be rolled back",
                        plan.status.as_str()
                    ),
                ));
            }
            if plan.rolling_back() {
                return Ok(());
            }
            if let Some(why) = plan.nothing_to_revert() {
                return Err(AgentError::new(ErrorName::NothingToRevert, why));
            }
        }
        self.try_record(id, Event::RollbackRequested { by: by.to_string() })
            .await
            .map_err(|e| AgentError::new(ErrorName::StorageFailure, e))?;
        self.lock().state.requeue(id);
        self.wake.notify_one();
        Ok(())
    }

    /// Beat at least this often, so a watchdog shorter than the loop's
    /// default one second still hears a healthy idle engine in time.
    pub fn set_heartbeat_interval(&self, every: Duration) {
        let ms = every.as_millis().clamp(10, 1000) as u64;
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Milliseconds since the engine loop last proved itself alive.
    pub fn heartbeat_age_ms(&self) -> u64 {
        now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    /// Stop starting new work; steps under way finish (see main's grace).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        // Deliveries in flight are dropped with the loop: unrecorded, they
        // are sent again by the next start (at least once).
        self.callback_wake.notify_one();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn running_plans(&self) -> usize {
        self.lock().state.running.len()
    }

    /// Before `READY=1`: every action a crash interrupted is settled
    /// through its handler's `recover`.
    pub async fn settle_in_flight(self: &Arc<Self>) {
        let interrupted: Vec<(String, usize)> = {
            let inner = self.lock();
            inner
                .state
                .plans
                .values()
                .filter_map(|p| {
                    p.actions
                        .iter()
                        .position(|a| a.in_flight)
                        .map(|i| (p.id.clone(), i))
                })
                .collect()
        };
        for (plan_id, index) in interrupted {
            runner::recover_action(self, &plan_id, index).await;
        }
    }

    /// What the agent's start does after the replay and before `READY=1`
    /// (DESIGN.md §4), in this order: settle the action in flight; put back
    /// isolations an outside flush (or a reboot of the network namespace)
    /// removed while the agent was down, which also tells the firewall
    /// every plan's hold; then the overdue timed reverts, which must know
    /// those holds so as not to drop an element another plan still holds.
    /// A failed reconcile is returned (it is retried every round).
    pub async fn recover_before_ready(self: &Arc<Self>) -> Result<(), FirewallError> {
        self.settle_in_flight().await;
        // Bounded: a firewall that does not answer (each nft run is) must
        // not hold the start; the reconcile loop tries again every round,
        // and the holds were taken before the first nft run.
        let reconciled = tokio::time::timeout(START_RECONCILE_LIMIT, self.reconcile_firewall())
            .await
            .unwrap_or_else(|_| {
                Err(FirewallError(format!(
                    "the reconcile did not finish within {} s of the start; it is tried again every round",
                    START_RECONCILE_LIMIT.as_secs()
                )))
            })
            .map(|_| ());
        self.run_overdue_reverts().await;
        reconciled
    }

    /// Timed reverts whose time passed while the agent was down, each run
    /// once, now: the agent's start awaits them before `READY=1`
    /// (DESIGN.md §4). A revert that fails in a way that may pass is
    /// rescheduled rather than awaited, so this ends in bounded time.
    pub async fn run_overdue_reverts(self: &Arc<Self>) {
        let due = self.lock().state.take_due_timers(now_ms());
        // One plan's reverts one after another (each holds its plan while
        // it runs), plans side by side.
        let mut by_plan: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (plan_id, index) in due {
            by_plan.entry(plan_id).or_default().push(index);
        }
        let reverts = by_plan.into_iter().map(|(plan_id, indexes)| {
            let engine = self.clone();
            async move {
                for index in indexes {
                    runner::timed_revert(&engine, &plan_id, index).await;
                }
            }
        });
        futures_util::future::join_all(reverts).await;
    }

    /// The engine loop: starts runnable plans, fires due timed reverts and
    /// beats the heart the watchdog listens to. Returns once stopping.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
            if self.is_stopping() {
                return;
            }
            let max_concurrent = self.config().queue.max_concurrent;
            let (runnable, due, next_timer) = {
                let mut inner = self.lock();
                let runnable = inner.state.take_runnable(max_concurrent);
                let due = inner.state.take_due_timers(now_ms());
                (runnable, due, inner.state.next_timer())
            };
            for plan_id in runnable {
                let engine = self.clone();
                tokio::spawn(async move {
                    runner::run_plan(&engine, &plan_id).await;
                    engine.lock().state.finish_running(&plan_id);
                    engine.emit(AgentEvent::CountersChanged);
                    engine.wake.notify_one();
                });
            }
            for (plan_id, index) in due {
                let engine = self.clone();
                tokio::spawn(async move { runner::timed_revert(&engine, &plan_id, index).await });
            }
            let mut sleep = Duration::from_millis(self.beat_ms.load(Ordering::Relaxed));
            if let Some(at) = next_timer {
                sleep = sleep.min(Duration::from_millis(at.saturating_sub(now_ms())));
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

/// Takes one of `uid`'s tokens (none for root, `None`): `RateLimited`
/// when its bucket is empty.
fn take_token(inner: &mut Inner, uid: Option<u32>, config: &Config) -> Result<(), AgentError> {
    let Some(uid) = uid else {
        return Ok(());
    };
    let (rate, burst) = (config.auth.submit_rate_per_sec, config.auth.submit_burst);
    inner
        .submit_buckets
        .take(uid, now_ms(), rate, burst)
        .map_err(|wait_ms| {
            AgentError::new(
                ErrorName::RateLimited,
                format!(
                    "uid {uid} creates plans faster than auth.submit_rate_per_sec = {rate} (auth.submit_burst = {burst}); the next may come in {wait_ms} ms"
                ),
            )
        })
}

fn plan_journal_fields(
    source: &str,
    severity: crate::plan::Severity,
    action: Option<String>,
) -> JournalFields {
    let mut fields = vec![
        ("PRIORITY", priority_for(Some(severity)).to_string()),
        ("ANTIBODY_SOURCE", source.to_string()),
        ("ANTIBODY_SEVERITY", severity.as_str().to_string()),
    ];
    if let Some(action) = action {
        fields.push(("ANTIBODY_ACTION", action));
    }
    fields
}
