//! Prometheus metrics: the bridge's own HTTP counters and latency, and the
//! agent's figures, read from its `Status` at each scrape: the gauges and
//! the plan and action counters, which the agent keeps since it started,
//! so a restart of the bridge loses none of them (a restart of the agent
//! starts them again at zero, which Prometheus' `rate()` and `increase()`
//! read as a counter reset).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::Value;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    pub source: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub r#type: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily,
    queue_depth: Gauge,
    active_mitigations: Gauge,
    ledger_ok: Gauge,
    agent_up: Gauge,
    ws_clients: Gauge,
    ws_dropped: Counter<u64, AtomicU64>,
    plans: Family<PlanLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    /// The label sets the agent's counters were ever reported under, so one
    /// it no longer reports (it restarted) reads 0 rather than its old count.
    plan_labels: Mutex<HashSet<PlanLabels>>,
    action_labels: Mutex<HashSet<ActionLabels>>,
    /// The start (`counters.since_ms`) of the agent whose counts are shown.
    agent_since: Mutex<Option<u64>>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … about 4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let queue_depth = Gauge::default();
        let active_mitigations = Gauge::default();
        let ledger_ok = Gauge::default();
        let agent_up = Gauge::default();
        let ws_clients = Gauge::default();
        let ws_dropped = Counter::default();
        let plans = Family::<PlanLabels, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        // prometheus-client adds `_total` to counters and `_seconds` to
        // nothing: the names below are the issue's less that suffix.
        registry.register(
            "antibody_http_requests",
            "HTTP requests answered by the bridge, by route and status code",
            http_requests.clone(),
        );
        registry.register(
            "antibody_http_request_duration_seconds",
            "Time the bridge took to answer, by route",
            http_duration.clone(),
        );
        registry.register(
            "antibody_queue_depth",
            "Plans queued in the agent (read from Status at scrape)",
            queue_depth.clone(),
        );
        registry.register(
            "antibody_active_mitigations",
            "Mitigations in force (read from Status at scrape)",
            active_mitigations.clone(),
        );
        registry.register(
            "antibody_ledger_ok",
            "1 when the agent's ledger hash chain verifies",
            ledger_ok.clone(),
        );
        registry.register(
            "antibody_agent_up",
            "1 when the agent answered Status at this scrape",
            agent_up.clone(),
        );
        registry.register(
            "antibody_web_event_clients",
            "WebSocket clients of the event stream",
            ws_clients.clone(),
        );
        registry.register(
            "antibody_web_event_clients_dropped",
            "WebSocket clients dropped because they stopped reading",
            ws_dropped.clone(),
        );
        registry.register(
            "antibody_plans",
            "Plans queued (status pending) and their status changes, by source, since the agent started (from Status)",
            plans.clone(),
        );
        registry.register(
            "antibody_actions",
            "Actions finished, by type and outcome, since the agent started (from Status)",
            actions.clone(),
        );
        Metrics {
            registry,
            plans,
            actions,
            plan_labels: Mutex::default(),
            action_labels: Mutex::default(),
            agent_since: Mutex::default(),
            http_requests,
            http_duration,
            queue_depth,
            active_mitigations,
            ledger_ok,
            agent_up,
            ws_clients,
            ws_dropped,
        }
    }

    pub fn observe_http(&self, route: &str, code: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                code,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Takes the agent's figures from its `Status` JSON (None: it did not answer).
    pub fn set_agent(&self, status: Option<&Value>) {
        let Some(status) = status else {
            self.agent_up.set(0);
            return;
        };
        let int = |v: &Value| v.as_i64().unwrap_or(0);
        self.agent_up.set(1);
        self.queue_depth.set(int(&status["queue_depth"]));
        self.active_mitigations
            .set(int(&status["active_mitigations"]));
        self.ledger_ok
            .set(i64::from(status["ledger"]["ok"].as_bool().unwrap_or(false)));
        let counters = &status["counters"];
        // Within one start of the agent a count only grows: an older reply
        // read after a newer one (two scrapes at once) must not lower it,
        // which Prometheus would read as a reset. A new start resets them.
        let since = counters["since_ms"].as_u64();
        let update = {
            let mut shown = crate::sync::lock(&self.agent_since);
            if since.is_some() && *shown == since {
                Update::Raise
            } else {
                *shown = since;
                Update::Restart
            }
        };
        store_counts(
            &self.plans,
            &self.plan_labels,
            &counters["plans"],
            update,
            |source, status| PlanLabels {
                source: source.into(),
                status: status.into(),
            },
        );
        store_counts(
            &self.actions,
            &self.action_labels,
            &counters["actions"],
            update,
            |kind, outcome| ActionLabels {
                r#type: kind.into(),
                outcome: outcome.into(),
            },
        );
    }

    pub fn set_ws(&self, clients: usize, dropped_total: u64) {
        self.ws_clients.set(clients as i64);
        let seen = self.ws_dropped.get();
        if dropped_total > seen {
            self.ws_dropped.inc_by(dropped_total - seen);
        }
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// How the agent's counts replace the shown ones.
#[derive(Clone, Copy)]
enum Update {
    /// The same agent: a count only grows.
    Raise,
    /// Another start of the agent: its counts replace the old ones, and a
    /// label set it does not report reads 0.
    Restart,
}

/// Sets `family` from the agent's `{outer: {inner: n}}` counts.
fn store_counts<L>(
    family: &Family<L, Counter>,
    known: &Mutex<HashSet<L>>,
    counts: &Value,
    update: Update,
    labels: impl Fn(&str, &str) -> L,
) where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    let mut reported = HashSet::new();
    for (outer, inner) in counts.as_object().into_iter().flatten() {
        for (inner, n) in inner.as_object().into_iter().flatten() {
            let label = labels(outer, inner);
            let n = n.as_u64().unwrap_or(0);
            let counter = family.get_or_create(&label);
            match update {
                Update::Raise => counter.inner().fetch_max(n, Ordering::Relaxed),
                Update::Restart => counter.inner().swap(n, Ordering::Relaxed),
            };
            reported.insert(label);
        }
    }
    let mut known = crate::sync::lock(known);
    if let Update::Restart = update {
        for gone in known.difference(&reported) {
            family
                .get_or_create(gone)
                .inner()
                .store(0, Ordering::Relaxed);
        }
    }
    known.extend(reported);
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exposition_has_the_issue_names() {
        let m = Metrics::new();
        m.observe_http("/antibody/status", 200, 0.002);
        m.set_agent(Some(&json!({
            "queue_depth": 3, "active_mitigations": 2, "ledger": {"ok": true},
            "counters": {
                "plans": {"NEXUS": {"pending": 1, "success": 1}, "unknown": {"failed": 1}},
                "actions": {"restart_service": {"applied": 1}},
            },
        })));
        let text = m.encode();
        for needle in [
            "antibody_plans_total{source=\"NEXUS\",status=\"pending\"} 1",
            "antibody_plans_total{source=\"NEXUS\",status=\"success\"} 1",
            "antibody_plans_total{source=\"unknown\",status=\"failed\"} 1",
            "antibody_actions_total{type=\"restart_service\",outcome=\"applied\"} 1",
            "antibody_http_requests_total{route=\"/antibody/status\",code=\"200\"} 1",
            "antibody_http_request_duration_seconds_count{route=\"/antibody/status\"} 1",
            "antibody_queue_depth 3",
            "antibody_active_mitigations 2",
            "antibody_ledger_ok 1",
            "antibody_agent_up 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn counters_follow_the_agent_and_read_zero_after_its_restart() {
        let m = Metrics::new();
        let status = |since: u64, plans: serde_json::Value| {
            json!({"queue_depth": 0, "ledger": {"ok": true},
                   "counters": {"since_ms": since, "plans": plans, "actions": {}}})
        };
        let shows = |needle: &str| {
            let text = m.encode();
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        };
        m.set_agent(Some(&status(
            1,
            json!({"NEXUS": {"pending": 5, "success": 4}}),
        )));
        m.set_agent(Some(&status(
            1,
            json!({"NEXUS": {"pending": 7, "success": 6}}),
        )));
        shows("antibody_plans_total{source=\"NEXUS\",status=\"pending\"} 7");
        // An older reply of the same agent, read late, lowers nothing.
        m.set_agent(Some(&status(
            1,
            json!({"NEXUS": {"pending": 6, "success": 5}}),
        )));
        shows("antibody_plans_total{source=\"NEXUS\",status=\"pending\"} 7");
        shows("antibody_plans_total{source=\"NEXUS\",status=\"success\"} 6");
        // The agent restarted: its counts start again, and one it has not
        // seen since reads 0, not the old figure.
        m.set_agent(Some(&status(2, json!({"Manual": {"pending": 1}}))));
        shows("antibody_plans_total{source=\"NEXUS\",status=\"pending\"} 0");
        shows("antibody_plans_total{source=\"NEXUS\",status=\"success\"} 0");
        shows("antibody_plans_total{source=\"Manual\",status=\"pending\"} 1");
        // The agent away: the counters keep their last values.
        m.set_agent(None);
        assert!(m
            .encode()
            .contains("antibody_plans_total{source=\"Manual\",status=\"pending\"} 1"));
    }
}
