//! The HTTP routes (the table) and what every request goes
//! through: authentication with the peer's slow-down, the error answers,
//! the metrics. Handlers only translate between HTTP and the D-Bus API.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::auth::{self, Need, Principal, Refusal};
use super::body::json_text;
use super::errors::ApiError;
use super::openapi::{
    AgentStatus, BodyErrors, CredentialErrors, ErrorBody, LedgerVerified, RollbackAccepted,
    Submitted,
};
use super::peer::Client;
use super::throttle::Counted;
use super::App;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/antibody/alert", post(submit_alert))
        .route("/antibody/plan/{id}", get(get_plan))
        .route("/antibody/plans", get(list_plans))
        .route("/antibody/dry-run", post(dry_run))
        .route("/antibody/plan/{id}/rollback", post(rollback))
        .route("/antibody/ledger/verify", get(verify_ledger))
        .route("/antibody/status", get(status))
        .route("/antibody/events", get(super::ws::events))
        .route("/metrics", get(metrics))
        .route("/antibody/openapi.json", get(openapi_json))
        .route("/", get(super::dashboard::index))
        .route("/dashboard.js", get(super::dashboard::script))
        .route("/dashboard.css", get(super::dashboard::style))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Records each answer's route, code and duration. Unmatched paths share
/// one label so a scanner cannot grow the label set.
async fn observe(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(unmatched)".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    app.metrics.observe_http(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Authenticates the request for `need`. The credential is always checked
/// first: a valid one passes even from a slowed-down peer, because behind
/// a proxy (or on loopback) many clients share one peer address, and a
/// few guesses by anyone there must not lock the sentinel out of ingest.
/// Only a failed check from a slowed-down peer is refused with 429. A
/// request with no credential at all is a plain 401 and not counted: it
/// guesses nothing (a browser's first try, a health check).
pub fn authenticate(
    app: &App,
    peer: IpAddr,
    token: Option<&str>,
    token_sent: bool,
    need: Need,
) -> Result<Principal, ApiError> {
    let why = match app.verifier.check(token, need) {
        Ok(principal) => return Ok(principal),
        Err(Refusal::Forbidden(why)) => return Err(ApiError::forbidden(why)),
        Err(Refusal::Unauthenticated(why)) if !token_sent => {
            return Err(ApiError::unauthorized(why, false))
        }
        Err(Refusal::Unauthenticated(why)) => why,
    };
    let now = Instant::now();
    let mut throttle = crate::sync::lock(&app.throttle);
    if let Err(secs) = throttle.check(peer, now) {
        drop(throttle);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyAuthFailures",
            format!("too many failed authentications from {peer}; try again in {secs} s"),
        )
        .retry_after(secs));
    }
    let counted = throttle.failure(peer, now);
    let slowed_for = throttle.check(peer, now).err().unwrap_or(1);
    drop(throttle);
    app.audit.refused(peer, &why);
    match counted {
        Counted::SlowedDown => app.audit.slowed(peer, slowed_for),
        // Journaled on every such failure: it only happens under a flood
        // from thousands of addresses, which the journal should show.
        Counted::Full => app.audit.refused(
            peer,
            "not counted for the slow-down: too many failing peers are tracked",
        ),
        Counted::Counted => {}
    }
    Err(ApiError::unauthorized(why, token_sent))
}

/// The bearer token of the `Authorization` header, and whether one was
/// sent at all (a header that is not `Bearer …` counts as a wrong one).
pub fn header_token(headers: &HeaderMap) -> (Option<&str>, bool) {
    match headers.get(header::AUTHORIZATION) {
        None => (None, false),
        Some(value) => (value.to_str().ok().and_then(auth::bearer), true),
    }
}

fn require(
    app: &App,
    peer: IpAddr,
    headers: &HeaderMap,
    need: Need,
) -> Result<Principal, ApiError> {
    let (token, sent) = header_token(headers);
    authenticate(app, peer, token, sent, need)
}

/// A JSON answer from text that already is JSON (the agent's).
fn json_response(status: StatusCode, text: String) -> Response {
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Plan ids are UUIDs; refusing anything else here keeps characters D-Bus
/// strings cannot carry (NUL) away from the bus.
fn plan_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|e| {
        ApiError::bad_request("InvalidArgument", format!("plan id: {}", e.body_text()))
    })?;
    check_plan_id(&id)?;
    Ok(id)
}

fn check_plan_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "InvalidArgument",
            "the plan id must be a UUID (letters, digits and '-', at most 64)",
        ))
    }
}

#[utoipa::path(post, path = "/antibody/alert", tag = "antibody",
    description = "Ingest an alert (DESIGN.md §2); the agent validates, dedupes, persists and queues its plan. Sentinel token or operator JWT.",
    request_body(content = Object, content_type = "application/json", description = "The alert JSON (at most 64 KiB)"),
    responses(
        (status = 202, description = "Queued (created false: an identical alert's live plan)", body = Submitted),
        BodyErrors,
        CredentialErrors,
    ),
    security(("bearer" = [])))]
pub async fn submit_alert(
    State(app): State<Arc<App>>,
    Client(peer): Client,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Ingest)?;
    let alert = json_text(&headers, body, app.body_read_timeout).await?;
    let (plan_id, created) = app
        .link
        .call(|p| async move { p.submit_alert(&alert).await })
        .await?;
    app.audit.accepted(
        &principal.label(),
        peer,
        if created {
            "submitted an alert"
        } else {
            "submitted a duplicate alert"
        },
        Some(&plan_id),
    );
    Ok((
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"plan_id": plan_id, "created": created}).to_string(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/antibody/plan/{id}", tag = "antibody",
    description = "The plan as the agent's GetPlan gives it, with per-action state and log. JWT, operator or admin.",
    params(("id" = String, Path, description = "The plan id (a UUID)")),
    responses(
        (status = 200, description = "The plan", body = Object),
        (status = 400, description = "InvalidArgument: not a plan id", body = ErrorBody),
        (status = 404, description = "NotFound", body = ErrorBody),
        CredentialErrors,
    ),
    security(("bearer" = [])))]
pub async fn get_plan(
    State(app): State<Arc<App>>,
    Client(peer): Client,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Operator)?;
    let id = plan_id(path)?;
    let plan = app
        .link
        .call(|p| {
            let id = id.clone();
            async move { p.get_plan(&id).await }
        })
        .await?;
    app.audit
        .accepted(&principal.label(), peer, "read a plan", Some(&id));
    Ok(json_response(StatusCode::OK, plan))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlansQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    limit: u32,
}

#[utoipa::path(get, path = "/antibody/plans", tag = "antibody",
    description = "Plans, newest first. JWT operator.",
    params(
        ("status" = Option<String>, Query, description = "pending, in_progress, success or failed; empty or absent for all"),
        ("limit" = Option<u32>, Query, description = "At most this many (0 or absent: 100; capped at 1000)"),
    ),
    responses(
        (status = 200, description = "The plans", body = [Object]),
        (status = 400, description = "InvalidArgument", body = ErrorBody),
        CredentialErrors,
    ),
    security(("bearer" = [])))]
pub async fn list_plans(
    State(app): State<Arc<App>>,
    Client(peer): Client,
    headers: HeaderMap,
    query: Result<Query<PlansQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Operator)?;
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(
            "InvalidArgument",
            format!(
                "query: {} (status: a plan status or empty; limit: 0 to 4294967295)",
                e.body_text()
            ),
        )
    })?;
    if query.status.len() > 32
        || !query
            .status
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(ApiError::bad_request(
            "InvalidArgument",
            "status: one of pending, in_progress, success, failed (or empty for all)",
        ));
    }
    let plans = app
        .link
        .call(|p| async move { p.list_plans(&query.status, query.limit).await })
        .await?;
    app.audit
        .accepted(&principal.label(), peer, "listed plans", None);
    Ok(json_response(StatusCode::OK, plans))
}

#[utoipa::path(post, path = "/antibody/dry-run", tag = "antibody",
    description = "The plan an alert would make and each action's exact change; no side effect. JWT operator.",
    request_body(content = Object, content_type = "application/json", description = "The alert JSON (at most 64 KiB)"),
    responses(
        (status = 200, description = "The agent's DryRun JSON", body = Object),
        BodyErrors,
        CredentialErrors,
    ),
    security(("bearer" = [])))]
pub async fn dry_run(
    State(app): State<Arc<App>>,
    Client(peer): Client,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Operator)?;
    let alert = json_text(&headers, body, app.body_read_timeout).await?;
    let result = app
        .link
        .call(|p| async move { p.dry_run(&alert).await })
        .await?;
    app.audit
        .accepted(&principal.label(), peer, "dry-ran an alert", None);
    Ok(json_response(StatusCode::OK, result))
}

#[utoipa::path(post, path = "/antibody/plan/{id}/rollback", tag = "antibody",
    description = "Revert a finished plan's reversible actions. JWT role admin; the agent then decides whether the bridge's user may (auth.rollback_groups).",
    params(("id" = String, Path, description = "The plan id (a UUID)")),
    responses(
        (status = 202, description = "Rolled back", body = RollbackAccepted),
        (status = 400, description = "InvalidArgument: not a plan id", body = ErrorBody),
        (status = 404, description = "NotFound", body = ErrorBody),
        (status = 409, description = "PlanNotFinished or NothingToRevert", body = ErrorBody),
        CredentialErrors,
    ),
    security(("bearer" = [])))]
pub async fn rollback(
    State(app): State<Arc<App>>,
    Client(peer): Client,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Admin)?;
    let id = plan_id(path)?;
    app.link
        .call(|p| {
            let id = id.clone();
            async move { p.rollback_plan(&id).await }
        })
        .await?;
    app.audit
        .accepted(&principal.label(), peer, "rolled back a plan", Some(&id));
    Ok((
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"plan_id": id, "rollback": "accepted"}).to_string(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/antibody/ledger/verify", tag = "antibody",
    description = "Re-walk the ledger's hash chain. JWT operator.",
    responses(
        (status = 200, description = "The verdict", body = LedgerVerified),
        CredentialErrors,
    ),
    security(("bearer" = [])))]
pub async fn verify_ledger(
    State(app): State<Arc<App>>,
    Client(peer): Client,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Operator)?;
    let (ok, report) = app
        .link
        .call(|p| async move { p.verify_ledger().await })
        .await?;
    app.audit
        .accepted(&principal.label(), peer, "verified the ledger", None);
    Ok(json_response(
        StatusCode::OK,
        json!({"ok": ok, "report": report}).to_string(),
    ))
}

/// Public: the agent's Status, or 503 with a body while it is away.
#[utoipa::path(get, path = "/antibody/status", tag = "antibody",
    description = "The agent's Status (at most 1 s old). Public.",
    responses(
        (status = 200, description = "The agent's status", body = AgentStatus),
        (status = 503, description = "AgentUnavailable: the agent is not on the bus (Retry-After)", body = ErrorBody),
    ))]
pub async fn status(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let status = agent_status(&app).await?;
    Ok(json_response(StatusCode::OK, status))
}

/// The agent's Status, at most [`super::status_cache::STATUS_TTL`] old.
async fn agent_status(app: &App) -> Result<String, ApiError> {
    app.status
        .get(|| app.link.call(|p| async move { p.status().await }))
        .await
}

#[utoipa::path(get, path = "/metrics", tag = "antibody",
    description = "Prometheus metrics (OpenMetrics text). Public.",
    responses((status = 200, description = "The exposition", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let status = agent_status(&app)
        .await
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    app.metrics.set_agent(status.as_ref());
    app.metrics
        .set_ws(app.hub.clients(), app.hub.dropped_total());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)],
        app.metrics.encode(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/antibody/openapi.json", tag = "antibody",
    description = "This document. Public.",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document(),
    )
        .into_response()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "this route does not take that method",
    )
}
