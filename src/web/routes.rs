//! The HTTP routes (the table) and what every request goes
//! through: authentication with the peer's slow-down, the error answers,
//! the metrics. Handlers only translate between HTTP and the D-Bus API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
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

/// Authenticates the request for `need`: refuses a throttled peer with
/// 429 before looking at its credentials, counts a 401 against the peer.
pub fn authenticate(
    app: &App,
    peer: IpAddr,
    token: Option<&str>,
    token_sent: bool,
    need: Need,
) -> Result<Principal, ApiError> {
    let now = Instant::now();
    if let Err(secs) = crate::sync::lock(&app.throttle).check(peer, now) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyAuthFailures",
            format!("too many failed authentications from {peer}; try again in {secs} s"),
        )
        .retry_after(secs));
    }
    match app.verifier.check(token, need) {
        Ok(principal) => Ok(principal),
        Err(Refusal::Forbidden(why)) => Err(ApiError::forbidden(why)),
        Err(Refusal::Unauthenticated(why)) => {
            let started = crate::sync::lock(&app.throttle).failure(peer, now);
            app.audit.refused(peer, &why);
            if started {
                let secs = crate::sync::lock(&app.throttle)
                    .check(peer, now)
                    .err()
                    .unwrap_or(1);
                app.audit.slowed(peer, secs);
            }
            Err(ApiError::unauthorized(why, token_sent))
        }
    }
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
    peer: SocketAddr,
    headers: &HeaderMap,
    need: Need,
) -> Result<Principal, ApiError> {
    let (token, sent) = header_token(headers);
    authenticate(app, peer.ip(), token, sent, need)
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

type Peer = ConnectInfo<SocketAddr>;

async fn submit_alert(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Ingest)?;
    let alert = json_text(&headers, body).await?;
    let (plan_id, created) = app
        .link
        .call(|p| async move { p.submit_alert(&alert).await })
        .await?;
    app.audit.accepted(
        &principal.label(),
        peer.ip(),
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

async fn get_plan(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Operator)?;
    check_plan_id(&id)?;
    let plan = app
        .link
        .call(|p| {
            let id = id.clone();
            async move { p.get_plan(&id).await }
        })
        .await?;
    app.audit
        .accepted(&principal.label(), peer.ip(), "read a plan", Some(&id));
    Ok(json_response(StatusCode::OK, plan))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    limit: u32,
}

async fn list_plans(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    query: Result<Query<PlansQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Operator)?;
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(
            "InvalidArgument",
            format!("query: {} (status: a plan status or empty; limit: 0 to 4294967295)", e.body_text()),
        )
    })?;
    if query.status.len() > 32 || !query.status.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
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
        .accepted(&principal.label(), peer.ip(), "listed plans", None);
    Ok(json_response(StatusCode::OK, plans))
}

async fn dry_run(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Operator)?;
    let alert = json_text(&headers, body).await?;
    let result = app
        .link
        .call(|p| async move { p.dry_run(&alert).await })
        .await?;
    app.audit
        .accepted(&principal.label(), peer.ip(), "dry-ran an alert", None);
    Ok(json_response(StatusCode::OK, result))
}

async fn rollback(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Admin)?;
    check_plan_id(&id)?;
    app.link
        .call(|p| {
            let id = id.clone();
            async move { p.rollback_plan(&id).await }
        })
        .await?;
    app.audit
        .accepted(&principal.label(), peer.ip(), "rolled back a plan", Some(&id));
    Ok((
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"plan_id": id, "rollback": "accepted"}).to_string(),
    )
        .into_response())
}

async fn verify_ledger(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = require(&app, peer, &headers, Need::Operator)?;
    let (ok, report) = app
        .link
        .call(|p| async move { p.verify_ledger().await })
        .await?;
    app.audit
        .accepted(&principal.label(), peer.ip(), "verified the ledger", None);
    Ok(json_response(
        StatusCode::OK,
        json!({"ok": ok, "report": report}).to_string(),
    ))
}

/// Public: the agent's Status, or 503 with a body while it is away.
async fn status(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let status = app.link.call(|p| async move { p.status().await }).await?;
    Ok(json_response(StatusCode::OK, status))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let status = app
        .link
        .call(|p| async move { p.status().await })
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
