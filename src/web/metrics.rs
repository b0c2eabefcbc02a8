//! Prometheus metrics: the bridge's own HTTP counters and latency, kept
//! here, and the agent's figures, read from `Status` at each scrape so they
//! are the agent's (and survive a bridge restart).

use std::sync::atomic::AtomicU64;

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
        Metrics {
            registry,
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
    fn exposition_has_the_issue_names() {
        let m = Metrics::new();
        m.observe_http("/antibody/status", 200, 0.002);
        m.set_agent(Some(
            &json!({"queue_depth": 3, "active_mitigations": 2, "ledger": {"ok": true}}),
        ));
        let text = m.encode();
        for needle in [
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
