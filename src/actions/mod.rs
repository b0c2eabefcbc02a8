//! Action handlers (DESIGN.md §3): one trait, one file per action type, and a
//! registry keyed by type name. A handler validates its parameters (pure),
//! describes its change without making it (`dry_run`), makes it (`apply`),
//! undoes it (`revert`) and, after a crash, tells from the system whether an
//! interrupted attempt took effect (`recover`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::Config;
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;
use crate::plan::{ActionSeed, Alert, Severity, Source};
use crate::sys::Sys;

pub mod diff_apply;
pub mod hot_patch;
pub mod isolate_socket;
pub mod net;
pub mod notify_operator;
pub mod restart_service;
pub mod throttle_address;
pub mod throttle_entity;
pub mod throttle_unit;
pub mod unit_guard;
pub mod unit_name;

/// What validation needs besides the parameters: the config's guards.
pub struct ValidateCtx<'a> {
    pub config: &'a Config,
    /// The unit the agent itself runs in, when known: never a target.
    pub own_unit: Option<&'a str>,
}

/// Parameters after validation: normalized, with the resources they touch.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub params: Value,
    pub targets: Vec<String>,
}

/// Everything an executing action may look at.
pub struct ActionCtx<'a> {
    pub plan_id: &'a str,
    pub source: Source,
    pub severity: Severity,
    pub description: &'a str,
    pub index: usize,
    pub params: &'a Value,
    pub config: &'a Config,
    pub sys: &'a Sys,
    /// The agent's own unit, when it runs as one (a guard's business).
    pub own_unit: Option<&'a str>,
    /// What `prepare` returned for the current attempt, once it is durable.
    pub prepared: Option<&'a Value>,
}

impl ActionCtx<'_> {
    /// What `prepare` recorded for this attempt, read back as `T`; `None`
    /// when nothing was recorded (the attempt never got that far).
    pub fn prepared_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.prepared
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// One line for the plan's log.
    pub summary: String,
    /// Enough to revert the change, stored in the ledger.
    pub changes: Value,
    /// A timed action is reverted by the agent after this many seconds.
    pub revert_after_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError {
    /// Transient failures are retried with back-off; others fail the action.
    pub transient: bool,
    pub message: String,
}

impl ActionError {
    pub fn transient(message: impl Into<String>) -> Self {
        ActionError {
            transient: true,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        ActionError {
            transient: false,
            message: message.into(),
        }
    }
}

/// After a crash: did the interrupted attempt take effect?
#[derive(Debug, Clone, PartialEq)]
pub enum Recovered {
    TookEffect(Applied),
    DidNotTakeEffect(String),
}

#[async_trait]
pub trait ActionHandler: Send + Sync {
    fn name(&self) -> &'static str;

    /// Whether `revert` can undo `apply`.
    fn reversible(&self) -> bool;

    /// Whether the flap limiter (`restart.burst` in `restart.interval_secs`)
    /// counts this action against its first target.
    fn flap_limited(&self) -> bool {
        false
    }

    /// Checks parameters; errors name the field through `params.path`.
    fn validate(&self, params: &Fields<'_>, ctx: &ValidateCtx<'_>)
        -> Result<Validated, AgentError>;

    /// Whether `validate` looks at files (a disk that stalls would stall
    /// it): the engine then validates the alert on a blocking thread.
    fn validates_on_disk(&self) -> bool {
        false
    }

    /// How many actions of this type one alert may carry (an alert has at
    /// most 32 in all).
    fn max_per_alert(&self) -> usize {
        usize::MAX
    }

    /// The exact change `apply` would make now, without making it.
    async fn dry_run(&self, ctx: &ActionCtx<'_>) -> Result<Value, ActionError>;

    /// Reads the state `apply` is about to change, when `revert` or `recover`
    /// will need it. The engine makes it durable before calling `apply`, so a
    /// crash between the change and its record cannot lose the old values.
    async fn prepare(&self, _ctx: &ActionCtx<'_>) -> Result<Option<Value>, ActionError> {
        Ok(None)
    }

    /// Whether `action_started` must be durable before `apply` runs. Only
    /// an instant action whose recovery would simply do it again may say
    /// no: a crash before its outcome is recorded then finds no start and
    /// runs it again, which is what `recover` would have done. Its start is
    /// written with its outcome, saving one fsync per plan.
    fn write_ahead(&self, _params: &Value) -> bool {
        true
    }

    async fn apply(&self, ctx: &ActionCtx<'_>) -> Result<Applied, ActionError>;

    /// Undoes `apply` given what it recorded. Returns a summary for the log.
    async fn revert(&self, ctx: &ActionCtx<'_>, changes: &Value) -> Result<String, ActionError>;

    async fn recover(&self, ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError>;
}

/// Handlers by type name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<&'static str, Arc<dyn ActionHandler>>,
}

impl Registry {
    /// The five action types of DESIGN.md §3.
    pub fn builtin() -> Registry {
        let mut registry = Registry::default();
        registry.register(Arc::new(notify_operator::NotifyOperator));
        registry.register(Arc::new(restart_service::RestartService));
        registry.register(Arc::new(throttle_entity::ThrottleEntity));
        registry.register(Arc::new(isolate_socket::IsolateSocket));
        registry.register(Arc::new(hot_patch::HotPatch));
        registry
    }

    pub fn register(&mut self, handler: Arc<dyn ActionHandler>) {
        self.handlers.insert(handler.name(), handler);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn ActionHandler>> {
        self.handlers.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }

    /// Whether validating `alert` may wait on a disk (see
    /// [`ActionHandler::validates_on_disk`]).
    pub fn validates_on_disk(&self, alert: &Alert) -> bool {
        alert.actions.iter().any(|raw| {
            raw.value["type"]
                .as_str()
                .and_then(|kind| self.get(kind))
                .is_some_and(|h| h.validates_on_disk())
        })
    }

    /// Validates every action of `alert`, in order; the first error wins.
    pub fn validate_alert(
        &self,
        alert: &Alert,
        ctx: &ValidateCtx<'_>,
    ) -> Result<Vec<ActionSeed>, AgentError> {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        alert
            .actions
            .iter()
            .map(|raw| {
                let path = raw.path();
                let (kind, params) = raw.split()?;
                let handler = self.get(&kind).ok_or_else(|| {
                    AgentError::at(
                        ErrorName::UnknownAction,
                        &format!("{path}.type"),
                        format!(
                            "{kind:?} is not a known action (known: {})",
                            self.names().join(", ")
                        ),
                    )
                })?;
                let count = seen.entry(kind.clone()).or_default();
                *count += 1;
                if *count > handler.max_per_alert() {
                    return Err(AgentError::at(
                        ErrorName::InvalidAlert,
                        &format!("{path}.type"),
                        format!(
                            "an alert may carry at most {} {kind} action(s)",
                            handler.max_per_alert()
                        ),
                    ));
                }
                let fields = Fields { path, map: &params };
                let validated = handler.validate(&fields, ctx)?;
                Ok(ActionSeed {
                    kind,
                    params: without_nulls(validated.params),
                    targets: validated.targets,
                    reversible: handler.reversible(),
                })
            })
            .collect()
    }
}

/// Normalized parameters leave out optional fields that were not given, so
/// they validate again unchanged when the guards are re-checked at apply.
fn without_nulls(params: Value) -> Value {
    match params {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}
