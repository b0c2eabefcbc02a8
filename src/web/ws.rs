//! `GET /antibody/events`: the `antibody_event` WebSocket. A client is
//! authenticated before the upgrade (operator JWT in the `Authorization`
//! header, or for browsers, which cannot set headers on a WebSocket, a
//! `token` query parameter or a `bearer.TOKEN` entry in
//! `Sec-WebSocket-Protocol` next to `antibody`). It joins the hub first,
//! then gets the snapshot, then every signal: nothing between the two is
//! lost.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;

use super::auth::Need;
use super::errors::ApiError;
use super::hub::Subscription;
use super::peer::Client;
use super::routes::{authenticate, header_token};
use super::{events, App};

/// The subprotocol the bridge speaks (echoed when the client offers it).
pub const SUBPROTOCOL: &str = "antibody";
/// The prefix of the `Sec-WebSocket-Protocol` entry that carries a token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";
/// Clients only send control frames; anything bigger is refused.
const MAX_CLIENT_MESSAGE: usize = 4096;
/// Retry-After of a stream refused at the cap.
const EVENT_CLIENTS_RETRY_SECS: u64 = 5;
/// How long the close frame of an expired stream may take to go out.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The token from a `Sec-WebSocket-Protocol` header value, if one is there.
pub fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
        .filter(|t| !t.is_empty())
}

#[utoipa::path(get, path = "/antibody/events", tag = "antibody",
    description = "The antibody_event WebSocket: a Snapshot message first, then one message per agent signal (PlanQueued, PlanStatusChanged, ActionFinished, OperatorNotice). JWT operator: Authorization header, or a token query parameter, or a `bearer.TOKEN` entry next to `antibody` in Sec-WebSocket-Protocol.",
    params(("token" = Option<String>, Query, description = "The JWT, for browsers")),
    responses(
        (status = 101, description = "Switching to the WebSocket"),
        (status = 400, description = "NotAWebSocket", body = super::openapi::ErrorBody),
        (status = 401, description = "No, wrong or expired token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token may not read events", body = super::openapi::ErrorBody),
        (status = 429, description = "Too many failed authentications", body = super::openapi::ErrorBody),
        (status = 503, description = "TooManyEventClients: max_event_clients streams are open (Retry-After)", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(app): State<Arc<App>>,
    Client(peer): Client,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let (header_token, header_sent) = header_token(&headers);
    let token = header_token
        .or_else(|| query.get("token").map(String::as_str))
        .or_else(|| protocol_token(&headers));
    let sent = header_sent || token.is_some();
    let principal = authenticate(&app, peer, token, sent, Need::Operator)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "NotAWebSocket",
            format!("this route is a WebSocket: {}", e.body_text()),
        )
    })?;
    app.audit
        .accepted(&principal.label(), peer, "opened the event stream", None);
    // Joined before the upgrade completes: every signal after this point
    // reaches the client, after its snapshot.
    let subscription = app.hub.try_join(app.max_event_clients).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TooManyEventClients",
            format!(
                "{} event streams are open, the most this bridge serves; try again later",
                app.max_event_clients
            ),
        )
        .retry_after(EVENT_CLIENTS_RETRY_SECS)
    })?;
    let expires = app.verifier.expires_at(&principal).map(deadline);
    Ok(upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(MAX_CLIENT_MESSAGE)
        // tungstenite's default frame limit is 16 MiB: without this one a
        // client could make us buffer a 16 MiB frame before the message
        // limit refuses it; with it the frame header alone is refused.
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve_client(socket, app, subscription, expires)))
}

/// The monotonic instant a Unix time corresponds to (now, if it is past).
fn deadline(unix_secs: u64) -> tokio::time::Instant {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = std::time::Duration::from_secs(unix_secs).saturating_sub(now_unix);
    tokio::time::Instant::now() + left
}

/// Closes the stream with 1008 (policy violation) once the token that
/// opened it expires: the check at the upgrade alone would let a stream
/// outlive a revoked operator's short-lived token for ever.
async fn expiry(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn serve_client(
    socket: WebSocket,
    app: Arc<App>,
    mut sub: Subscription,
    expires: Option<tokio::time::Instant>,
) {
    let (mut sink, mut incoming) = socket.split();
    let snapshot = events::snapshot(&app.link).await.to_string();
    if !send(&mut sink, snapshot, &mut sub.kicked).await {
        return;
    }
    let mut expired = std::pin::pin!(expiry(expires));
    loop {
        tokio::select! {
            _ = &mut sub.kicked => return,
            _ = &mut expired => {
                let close = Message::Close(Some(CloseFrame {
                    code: close_code::POLICY,
                    reason: "the token has expired".into(),
                }));
                // Bounded: a client that stopped reading must not hold us.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close)).await;
                return;
            }
            message = sub.rx.recv() => match message {
                Some(text) => {
                    if !send(&mut sink, text.to_string(), &mut sub.kicked).await {
                        return;
                    }
                }
                None => return,
            },
            // Reading keeps pings answered and notices a client that left.
            frame = incoming.next() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Sends one message unless the hub drops the client meanwhile (a client
/// that stopped reading blocks here; the hub's kick ends the wait). False
/// when the client is gone.
async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    text: String,
    kicked: &mut oneshot::Receiver<()>,
) -> bool {
    tokio::select! {
        sent = sink.send(Message::Text(text.into())) => sent.is_ok(),
        _ = kicked => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_from_the_subprotocol_list() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("antibody, bearer.abc.def.ghi"),
        );
        assert_eq!(protocol_token(&h), Some("abc.def.ghi"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("antibody, bearer."),
        );
        assert_eq!(protocol_token(&h), None);
        assert_eq!(protocol_token(&HeaderMap::new()), None);
    }
}
