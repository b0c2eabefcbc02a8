//! Prometheus metrics: the bridge's own HTTP counters and latency; the
//! agent's gauges, read from `Status` at each scrape (so they are the
//! agent's own and survive a bridge restart); and the plan and action
//! counters, counted from the agent's signals since the bridge started
//! (a restart of the bridge resets them, which Prometheus' `rate()` and
//! `increase()` expect of any counter).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::Value;

use super::events::Signal;

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
    sources: Mutex<PlanSources>,
}

/// Plans whose source is remembered (PlanStatusChanged does not carry it).
const REMEMBERED_PLANS: usize = 10_000;

/// Each recent plan's source, oldest forgotten first.
#[derive(Default)]
pub struct PlanSources {
    by_plan: HashMap<String, String>,
    order: VecDeque<String>,
}

impl PlanSources {
    pub fn insert(&mut self, plan_id: &str, source: &str) {
        if self.by_plan.contains_key(plan_id) {
            return;
        }
        if self.order.len() >= REMEMBERED_PLANS {
            if let Some(oldest) = self.order.pop_front() {
                self.by_plan.remove(&oldest);
            }
        }
        self.order.push_back(plan_id.to_string());
        self.by_plan.insert(plan_id.to_string(), source.to_string());
    }

    /// The plan's source, or `unknown` for a plan queued before the bridge
    /// started (or forgotten).
    pub fn get(&self, plan_id: &str) -> &str {
        self.by_plan.get(plan_id).map_or("unknown", String::as_str)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
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
            "Plans queued (status pending) and their status changes, by source, counted from the agent's signals since the bridge started",
            plans.clone(),
        );
        registry.register(
            "antibody_actions",
            "Actions finished, by type and outcome, counted from the agent's signals since the bridge started",
            actions.clone(),
        );
        Metrics {
            registry,
            plans,
            actions,
            sources: Mutex::new(PlanSources::default()),
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

    /// Counts one of the agent's signals.
    pub fn observe_signal(&self, signal: &Signal) {
        match signal {
            Signal::PlanQueued {
                plan_id, source, ..
            } => {
                crate::sync::lock(&self.sources).insert(plan_id, source);
                self.plans
                    .get_or_create(&PlanLabels {
                        source: source.clone(),
                        status: "pending".into(),
                    })
                    .inc();
            }
            Signal::PlanStatusChanged { plan_id, status } => {
                let source = crate::sync::lock(&self.sources).get(plan_id).to_string();
                self.plans
                    .get_or_create(&PlanLabels {
                        source,
                        status: status.clone(),
                    })
                    .inc();
            }
            Signal::ActionFinished {
                action_type,
                outcome,
                ..
            } => {
                self.actions
                    .get_or_create(&ActionLabels {
                        r#type: action_type.clone(),
                        outcome: outcome.clone(),
                    })
                    .inc();
            }
            Signal::OperatorNotice { .. } => {}
        }
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

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plan_sources_stay_bounded() {
        let mut sources = PlanSources::default();
        for n in 0..(REMEMBERED_PLANS + 10) {
            sources.insert(&format!("p{n}"), "NEXUS");
        }
        assert_eq!(sources.len(), REMEMBERED_PLANS);
        assert_eq!(sources.get("p0"), "unknown", "the oldest is forgotten");
        assert_eq!(sources.get(&format!("p{}", REMEMBERED_PLANS + 9)), "NEXUS");
    }

    #[test]
    fn exposition_has_the_issue_names() {
        let m = Metrics::new();
        m.observe_http("/antibody/status", 200, 0.002);
        m.set_agent(Some(
            &json!({"queue_depth": 3, "active_mitigations": 2, "ledger": {"ok": true}}),
        ));
        m.observe_signal(&Signal::PlanQueued {
            plan_id: "p1".into(),
            source: "NEXUS".into(),
            severity: "high".into(),
        });
        m.observe_signal(&Signal::PlanStatusChanged {
            plan_id: "p1".into(),
            status: "success".into(),
        });
        m.observe_signal(&Signal::PlanStatusChanged {
            plan_id: "from-before".into(),
            status: "failed".into(),
        });
        m.observe_signal(&Signal::ActionFinished {
            plan_id: "p1".into(),
            index: 0,
            action_type: "restart_service".into(),
            outcome: "applied".into(),
        });
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
}
