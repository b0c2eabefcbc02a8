//! The bridge's error answers: always `{"error": NAME, "message": …}` with
//! the agent's D-Bus error name (its last component) or the bridge's own,
//! and the status code the issue assigns to that name.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Seconds a client is told to wait after the agent said QueueFull or
/// RateLimited (D-Bus carries no retry hint of its own).
pub const AGENT_BUSY_RETRY_SECS: u64 = 1;
/// Seconds a client is told to wait while the agent is not on the bus.
pub const AGENT_GONE_RETRY_SECS: u64 = 5;

const AGENT_ERROR_PREFIX: &str = "org.vael.Antibody.Error.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub name: String,
    pub message: String,
    pub retry_after: Option<u64>,
    /// `WWW-Authenticate` for a 401.
    pub www_authenticate: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, name: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            name: name.to_string(),
            message: message.into(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// 401 with the RFC 6750 challenge; `invalid_token` when a token was
    /// sent (and refused), none when there was no token at all.
    pub fn unauthorized(message: impl Into<String>, token_sent: bool) -> ApiError {
        let message = message.into();
        let challenge = if token_sent {
            format!(
                "Bearer realm=\"antibody\", error=\"invalid_token\", error_description=\"{}\"",
                message.replace(['"', '\\'], "'")
            )
        } else {
            "Bearer realm=\"antibody\"".to_string()
        };
        ApiError {
            www_authenticate: Some(challenge),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
        }
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }

    pub fn agent_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "AgentUnavailable", message)
            .retry_after(AGENT_GONE_RETRY_SECS)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn bad_request(name: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, name, message)
    }

    /// The answer to an error the agent (or the bus, on its behalf) gave.
    pub fn from_dbus(name: &str, message: &str) -> ApiError {
        if let Some(agent) = name.strip_prefix(AGENT_ERROR_PREFIX) {
            let (status, retry) = agent_error_status(agent);
            let e = ApiError::new(status, agent, message);
            return match retry {
                Some(secs) => e.retry_after(secs),
                None => e,
            };
        }
        match name {
            // The bus policy refused the call before the agent saw it.
            "org.freedesktop.DBus.Error.AccessDenied" => {
                ApiError::forbidden(format!("the bus refused the bridge's call: {message}"))
            }
            _ => {
                ApiError::agent_unavailable(format!("the agent did not answer: {name}: {message}"))
            }
        }
    }
}

/// The status for each of the agent's error names. An unknown name (a
/// newer agent) is a 502: the agent answered, but with something this
/// bridge does not know how to pass on.
pub fn agent_error_status(name: &str) -> (StatusCode, Option<u64>) {
    match name {
        "InvalidAlert" | "UnknownAction" | "InvalidArgument" => (StatusCode::BAD_REQUEST, None),
        "AccessDenied" => (StatusCode::FORBIDDEN, None),
        "NotFound" => (StatusCode::NOT_FOUND, None),
        // NothingToRevert: the plan is in a state where a rollback makes no sense.
        "PlanNotFinished" | "NothingToRevert" => (StatusCode::CONFLICT, None),
        "ProtectedTarget" => (StatusCode::UNPROCESSABLE_ENTITY, None),
        "QueueFull" | "RateLimited" => (StatusCode::TOO_MANY_REQUESTS, Some(AGENT_BUSY_RETRY_SECS)),
        "StorageFailure" => (StatusCode::SERVICE_UNAVAILABLE, Some(AGENT_GONE_RETRY_SECS)),
        _ => (StatusCode::BAD_GATEWAY, None),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.name, "message": self.message}).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self
            .www_authenticate
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_errors_map_to_the_issue_codes() {
        let cases = [
            ("InvalidAlert", 400),
            ("UnknownAction", 400),
            ("InvalidArgument", 400),
            ("AccessDenied", 403),
            ("NotFound", 404),
            ("PlanNotFinished", 409),
            ("ProtectedTarget", 422),
            ("QueueFull", 429),
            ("RateLimited", 429),
            ("StorageFailure", 503),
        ];
        for (name, code) in cases {
            let e = ApiError::from_dbus(&format!("org.vael.Antibody.Error.{name}"), "why");
            assert_eq!(e.status.as_u16(), code, "{name}");
            assert_eq!(e.name, name);
            assert_eq!(e.message, "why");
            assert_eq!(
                e.retry_after.is_some(),
                code == 429 || code == 503,
                "{name}: Retry-After"
            );
        }
    }

    #[test]
    fn bus_errors_are_503_or_403() {
        let gone = ApiError::from_dbus("org.freedesktop.DBus.Error.ServiceUnknown", "x");
        assert_eq!(gone.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(gone.name, "AgentUnavailable");
        let policy = ApiError::from_dbus("org.freedesktop.DBus.Error.AccessDenied", "x");
        assert_eq!(policy.status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn challenge_never_breaks_the_header() {
        let e = ApiError::unauthorized("a \"quoted\" \\ reason", true);
        let c = e.www_authenticate.unwrap();
        assert!(HeaderValue::from_str(&c).is_ok());
        assert!(c.starts_with("Bearer realm=\"antibody\", error=\"invalid_token\""));
    }
}
