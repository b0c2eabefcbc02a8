//! Sending JSON over HTTP (webhook notices and call backs): ureq on a
//! blocking thread, with a timeout on the whole exchange. Redirects are not
//! followed: a body meant for the configured URL is never resent elsewhere.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::notifier::redact_url;

#[derive(Clone, PartialEq)]
pub struct JsonRequest {
    /// `POST`, `PATCH` or `PUT`.
    pub method: String,
    pub url: String,
    /// Sent as `Authorization: Bearer …`.
    pub bearer: Option<String>,
    pub timeout_secs: u64,
    pub body: Value,
}

/// Without the token, and the URL as its scheme and host only.
impl std::fmt::Debug for JsonRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonRequest")
            .field("method", &self.method)
            .field("url", &redact_url(&self.url))
            .field("bearer", &self.bearer.as_ref().map(|_| "…"))
            .field("timeout_secs", &self.timeout_secs)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait HttpClient: Send + Sync {
    /// The answer's HTTP status, or why no answer came (with the URL shown
    /// as its scheme and host only: its path may carry a token).
    async fn send_json(&self, request: JsonRequest) -> Result<u16, String>;
}

/// The real thing.
pub struct UreqClient;

#[async_trait]
impl HttpClient for UreqClient {
    async fn send_json(&self, request: JsonRequest) -> Result<u16, String> {
        tokio::task::spawn_blocking(move || send_blocking(&request))
            .await
            .map_err(|e| format!("HTTP task: {e}"))?
    }
}

fn send_blocking(request: &JsonRequest) -> Result<u16, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(request.timeout_secs)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let url = request.url.as_str();
    let builder = match request.method.as_str() {
        "PATCH" => agent.patch(url),
        "PUT" => agent.put(url),
        _ => agent.post(url),
    };
    let mut builder = builder.header("Content-Type", "application/json").header(
        "User-Agent",
        concat!("antibody/", env!("CARGO_PKG_VERSION")),
    );
    if let Some(token) = &request.bearer {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    builder
        .send(request.body.to_string())
        .map(|response| response.status().as_u16())
        // The error goes to a plan's log: never the URL's secrets.
        .map_err(|e| {
            let shown = redact_url(url);
            format!(
                "{} {shown}: {}",
                request.method,
                e.to_string().replace(url, &shown)
            )
        })
}
