//! Call backs to alert sources (`[callbacks.SOURCE]`, `src/callbacks/`):
//! once a plan whose alert carried `context.alert_id` finishes, its source
//! is told, at least once. What is owed is in the plan itself (`callback`,
//! from its `plan_created` record) and every attempt is a ledger record, so
//! a restart carries on where the last agent stopped. Deliveries run in a
//! task of their own, a few at a time: a slow or dead receiver never holds
//! a plan, an action or the bus.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::backoff::endless_retry_ms;
use super::Engine;
use crate::callbacks::{self, verdict, CallbackConfig, Verdict};
use crate::config::Config;
use crate::plan::{Event, PlanSeed, Severity, Source};
use crate::sys::http::JsonRequest;
use crate::sys::notifier::redact_url;
use crate::time::now_ms;

/// Deliveries in flight at once.
const IN_FLIGHT: usize = 4;
/// The loop looks again at least this often (a plan readmitted from the
/// archive, say, wakes nobody).
const LOOK_AGAIN: Duration = Duration::from_secs(30);

/// What an attempt found out about its source's receiver.
enum Attempted {
    /// Nothing was sent (nothing owed any more, or given up unsent).
    Nothing,
    /// The receiver answered (whatever it said): it is there.
    Answered(&'static str),
    /// It is away: no answer, 429, 502, 503 or 504.
    Away(&'static str),
}

/// Keeps `away` up to date with an attempt's outcome: a plan that found
/// its receiver away becomes the one that tries it again; any answer from
/// the receiver lets the others go; a prober with nothing left to send
/// hands the probe on (to whichever plan of the source is due next).
///
/// `away`: each source whose receiver is away, and the plan that tries it.
fn note_receiver(away: &mut HashMap<&'static str, String>, plan_id: String, attempted: Attempted) {
    match attempted {
        Attempted::Away(source) => {
            away.entry(source).or_insert(plan_id);
        }
        Attempted::Answered(source) => {
            away.remove(source);
        }
        Attempted::Nothing => away.retain(|_, prober| *prober != plan_id),
    }
}

/// Whether the receiver itself is away (as opposed to refusing or failing
/// on this one request): only then do the source's other plans wait.
fn receiver_away(http_status: Option<u16>) -> bool {
    matches!(http_status, None | Some(429) | Some(502..=504))
}

/// What one attempt needs from its plan.
struct Owed {
    source: Source,
    severity: Severity,
    description: String,
    finished_ms: u64,
    alert_id: String,
    attempt: u32,
    body: Value,
}

impl Engine {
    /// Whether a plan made now from an alert of `source`, submitted by
    /// `uid` (`None`: root), owes a call back.
    pub(super) fn owes_callback(
        config: &Config,
        source: Source,
        context: Option<&Value>,
        uid: Option<u32>,
    ) -> bool {
        let Some(callback) = config.callbacks.get(source.as_str()) else {
            return false;
        };
        // `submitters` were resolved to uids when the configuration was
        // loaded: no user-database lookup per alert.
        context.and_then(|c| c.get("alert_id")).is_some()
            && uid.is_none_or(|uid| callback.submitter_uids.contains(&uid))
    }

    /// `DryRun`'s view of the call back a plan would make.
    pub(super) fn callback_preview(config: &Config, seed: &PlanSeed) -> Value {
        match config.callbacks.get(seed.source.as_str()) {
            Some(callback) if seed.callback => json!({
                "method": callback.method,
                "url": redact_url(&callback.url),
                "when": "once the plan finishes; retried until the receiver answers 2xx",
            }),
            _ => Value::Null,
        }
    }

    /// Sends the call backs owed, as they fall due, until the agent stops.
    /// While a source's receiver is away (no answer, 429, 502-504), only
    /// the plan that found it so tries it again: the others of that source
    /// wait until the receiver answers, so a receiver down for a day costs
    /// one plan's back-off in attempts and ledger records, not every
    /// plan's.
    pub async fn callback_loop(self: Arc<Self>) {
        let mut running: JoinSet<Attempted> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut away: HashMap<&'static str, String> = HashMap::new();
        loop {
            if self.is_stopping() {
                return;
            }
            let now = now_ms();
            let busy: HashSet<&String> = in_flight.values().collect();
            let (due, next_ms) = self.callbacks_due(now, &busy, &away);
            let free = IN_FLIGHT - in_flight.len();
            for (plan_id, held) in due.into_iter().take(free) {
                let engine = self.clone();
                let task = running.spawn({
                    let plan_id = plan_id.clone();
                    async move { engine.deliver_callback(plan_id, held).await }
                });
                in_flight.insert(task.id(), plan_id);
            }
            let wait = next_ms
                .map(|at| Duration::from_millis(at.saturating_sub(now)))
                .unwrap_or(LOOK_AGAIN)
                .min(LOOK_AGAIN);
            tokio::select! {
                _ = self.callback_wake.notified() => {}
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    let plan_id = in_flight.remove(&id);
                    if let (Ok((_, attempted)), Some(plan_id)) = (done, plan_id) {
                        note_receiver(&mut away, plan_id, attempted);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Plans whose call back is due now (oldest first; `true`: held back
    /// by its source's receiver being away, and only due to be given up),
    /// and when the next one not yet due falls due. Of a source whose
    /// receiver is away, the plan that found it so, and those held past
    /// `give_up_after_secs`.
    fn callbacks_due(
        &self,
        now: u64,
        in_flight: &HashSet<&String>,
        away: &HashMap<&'static str, String>,
    ) -> (Vec<(String, bool)>, Option<u64>) {
        let config = self.config();
        let inner = self.lock();
        let mut due = Vec::new();
        let mut next: Option<u64> = None;
        for plan in inner.state.plans.values() {
            // Not while a rollback is under way: the outcome is not settled.
            if !plan.callback_pending() || plan.rolling_back() || in_flight.contains(&plan.id) {
                continue;
            }
            if away
                .get(plan.source.as_str())
                .is_some_and(|prober| *prober != plan.id)
            {
                let too_old = config
                    .callbacks
                    .get(plan.source.as_str())
                    .is_some_and(|c| c.past_give_up(plan.finished_ms.unwrap_or(now), now));
                if too_old {
                    due.push((plan.seq, plan.id.clone(), true));
                }
                continue;
            }
            let at = plan
                .callback
                .as_ref()
                .and_then(|c| c.next_attempt_ms)
                .unwrap_or(0);
            if at <= now {
                due.push((plan.seq, plan.id.clone(), false));
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        due.sort_by_key(|(seq, _, _)| *seq);
        let due = due.into_iter().map(|(_, id, held)| (id, held)).collect();
        (due, next)
    }

    fn owed(&self, plan_id: &str) -> Option<Owed> {
        let inner = self.lock();
        let plan = inner.state.plans.get(plan_id)?;
        if !plan.callback_pending() {
            return None;
        }
        let alert_id = plan
            .context
            .as_ref()?
            .get("alert_id")?
            .as_str()?
            .to_string();
        Some(Owed {
            source: plan.source,
            severity: plan.severity,
            description: plan.description.clone(),
            finished_ms: plan.finished_ms.unwrap_or(0),
            alert_id,
            attempt: plan.callback.as_ref().map_or(0, |c| c.attempts) + 1,
            body: callbacks::body(plan),
        })
    }

    /// One attempt, recorded (durably) before the next is considered.
    /// Past `give_up_after_secs` since the plan's end, a call back that was
    /// tried at least once (or `held` behind its receiver's absence) is
    /// given up instead: one never tried, because the agent was down, is
    /// tried first.
    async fn deliver_callback(self: Arc<Self>, plan_id: String, held: bool) -> Attempted {
        let Some(owed) = self.owed(&plan_id) else {
            return Attempted::Nothing;
        };
        let config = self.config();
        let source = owed.source.as_str();
        let too_old = |c: &CallbackConfig| {
            (owed.attempt > 1 || held) && c.past_give_up(owed.finished_ms, now_ms())
        };
        let (verdict, http_status, error) = match config.callbacks.get(source) {
            Some(callback) if too_old(callback) => (
                Verdict::GiveUp,
                None,
                format!(
                    "not delivered within give_up_after_secs = {} of the plan's end",
                    callback.give_up_after_secs
                ),
            ),
            Some(callback) => match self.send_callback(callback, &owed).await {
                Ok(status) => (
                    verdict(Some(status)),
                    Some(status),
                    format!("HTTP {status}"),
                ),
                Err(e) => (verdict(None), None, e),
            },
            // Given up like a 4xx: nothing says where to send it any more.
            None => (
                Verdict::GiveUp,
                None,
                format!(
                    "the configuration has no [callbacks.{}] any more",
                    owed.source.as_str()
                ),
            ),
        };
        let attempt = owed.attempt;
        let event = match &verdict {
            Verdict::Delivered => Event::CallbackDelivered {
                attempt,
                http_status: http_status.unwrap_or_default(),
            },
            Verdict::Retry | Verdict::GiveUp => Event::CallbackFailed {
                attempt,
                http_status,
                error: error.clone(),
                retry_in_ms: (verdict == Verdict::Retry)
                    .then(|| endless_retry_ms(&config.retry, attempt, fastrand::f64())),
            },
        };
        let given_up = verdict == Verdict::GiveUp;
        let attempted = if verdict == Verdict::Retry && receiver_away(http_status) {
            Attempted::Away(source)
        } else if http_status.is_some() {
            Attempted::Answered(source)
        } else {
            Attempted::Nothing
        };
        // In a task of its own: the loop's tasks are dropped at a stop, and
        // a record written but not folded into the plan would leave the
        // stop's checkpoint short of the ledger it claims to hold.
        let engine = self.clone();
        let recorded = plan_id.clone();
        let _ = tokio::spawn(async move { engine.record(&recorded, event).await }).await;
        if given_up {
            self.tell_operator(
                &plan_id,
                (owed.source, owed.severity),
                &owed.description,
                format!(
                    "the call back to {} for plan {plan_id} (alert {}) was given up after attempt {attempt}: {error}",
                    owed.source.as_str(),
                    owed.alert_id
                ),
            );
        }
        attempted
    }

    async fn send_callback(&self, callback: &CallbackConfig, owed: &Owed) -> Result<u16, String> {
        let bearer = match &callback.token_file {
            Some(file) => Some(read_token(file).await?),
            None => None,
        };
        let request = JsonRequest {
            method: callback.method.clone(),
            url: callbacks::url_for(&callback.url, &owed.alert_id),
            bearer,
            timeout_secs: callback.timeout_secs,
            body: owed.body.clone(),
        };
        self.sys.http.send_json(request).await
    }
}

/// The token, read at each attempt (a rotated one is used at once). An
/// unreadable or empty file is a failure that may pass: tried again.
async fn read_token(file: &std::path::Path) -> Result<String, String> {
    let text = tokio::fs::read_to_string(file)
        .await
        .map_err(|e| format!("token_file {}: {e}", file.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(['\r', '\n']) {
        return Err(format!(
            "token_file {}: must hold one non-empty line",
            file.display()
        ));
    }
    Ok(token.to_string())
}
