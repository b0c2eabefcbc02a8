//! `antibody-web`: the unprivileged HTTP/WebSocket bridge to the agent
//! (DESIGN.md §8). It holds no state of its own that matters: every answer
//! comes from the agent's public D-Bus API, so it can be restarted, or the
//! agent can, at any time.
//!
//! - [`config`]: `web.toml` and the secrets it names
//! - [`auth`]: sentinel token and JWT checks; [`throttle`]: the slow-down
//!   of peers that keep failing them; [`peer`]: who the peer is (behind a
//!   trusted proxy too)
//! - [`body`]: JSON request bodies; [`errors`]: the error answers
//! - [`agent`]: the D-Bus link; [`routes`]: the HTTP routes; [`server`]:
//!   the connection loop (timeouts, cap)
//! - [`events`], [`hub`], [`ws`]: the `antibody_event` WebSocket
//! - [`dashboard`]: the page at `/`
//! - [`metrics`], [`audit`]: Prometheus and the journal; [`openapi`]: the
//!   OpenAPI document; [`status_cache`]: the agent's Status, kept for 1 s

pub mod agent;
pub mod audit;
pub mod auth;
pub mod body;
pub mod config;
pub mod dashboard;
pub mod errors;
pub mod events;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod peer;
pub mod routes;
pub mod server;
pub mod status_cache;
pub mod throttle;
pub mod ws;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::AgentLink;
use audit::Audit;
use auth::Verifier;
use config::{Secrets, WebConfig};
use hub::Hub;
use metrics::Metrics;
use throttle::FailureThrottle;

/// Everything a request handler may use.
pub struct App {
    pub link: Arc<AgentLink>,
    pub verifier: Verifier,
    pub throttle: Mutex<FailureThrottle>,
    pub audit: Audit,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Event streams open at once, at most.
    pub max_event_clients: usize,
    /// How long a request body may take to arrive.
    pub body_read_timeout: Duration,
    /// The agent's Status for the public routes.
    pub status: status_cache::Cached<String>,
}

impl App {
    pub fn new(config: &WebConfig, secrets: &Secrets) -> Result<Arc<App>, String> {
        Ok(Arc::new(App {
            link: Arc::new(AgentLink::new(Duration::from_secs(
                config.agent_timeout_secs,
            ))),
            verifier: Verifier::new(config, secrets)?,
            throttle: Mutex::new(FailureThrottle::new(
                config.auth_failures_max,
                Duration::from_secs(config.auth_failure_window_secs),
            )),
            audit: Audit::from_env(),
            hub: Hub::new(config.ws_client_buffer),
            metrics: Arc::new(Metrics::new()),
            trusted_proxies: peer::parse_trusted(&config.trusted_proxies)?,
            max_event_clients: config.max_event_clients,
            body_read_timeout: Duration::from_secs(config.body_read_timeout_secs),
            status: status_cache::Cached::new(status_cache::STATUS_TTL),
        }))
    }

    /// Starts the one signal subscription that feeds every WebSocket
    /// client; returns once it is made (or could not be, for now).
    pub async fn start_event_pump(self: &Arc<App>) {
        events::start_pump(self.link.clone(), self.hub.clone(), self.link.timeout()).await;
    }
}
