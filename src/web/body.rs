//! Request bodies: JSON only, UTF-8, at most 64 KiB (the agent's own alert
//! limit). Each way a body can be wrong has its own named answer: 415 for
//! another content type, 413 past the limit, 400 naming the line and
//! column of malformed JSON.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use futures_util::StreamExt;

use super::errors::ApiError;

pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A body no larger than this is read to its end (and dropped) before the
/// 413: a client still sending when the answer comes would otherwise get
/// a connection reset instead of it. A larger one is cut off at once.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long that draining may take.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the `Content-Type` is JSON (`application/json`, any parameters,
/// and only a UTF-8 charset if one is named).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';').map(str::trim);
    let mime = parts.next().unwrap_or("");
    if !mime.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    })
}

/// Reads the body after the content-type check, within `timeout`; returns
/// it as text that is valid JSON. hyper's header-read timeout stops at the
/// headers: without this one, a client that trickles its body a byte a
/// minute would hold its connection (one of `max_connections`) for ever.
pub async fn json_text(
    headers: &HeaderMap,
    body: Body,
    timeout: std::time::Duration,
) -> Result<String, ApiError> {
    tokio::time::timeout(timeout, read_json_text(headers, body))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                format!("the body did not arrive within {} s", timeout.as_secs_f64()),
            ))
        })
}

async fn read_json_text(headers: &HeaderMap, body: Body) -> Result<String, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body must be JSON: Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    // A declared length past the limit is refused before reading anything.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        if declared.is_some_and(|n| n <= DRAIN_LIMIT as u64) {
            drain(body.into_data_stream(), 0).await;
        }
        return Err(too_large());
    }
    // Read chunk by chunk so a body without a declared length (chunked)
    // is cut off at the limit too, without buffering past it.
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("MalformedBody", format!("the body could not be read: {e}"))
        })?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            drain(stream, bytes.len() + chunk.len()).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    parse_json(&bytes)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request("MalformedJson", e))?;
    // parse_json succeeded, so the bytes are UTF-8.
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("MalformedJson", "the body is not UTF-8"))
}

/// Reads and drops the rest of a body, up to [`DRAIN_LIMIT`] in all and
/// for at most [`DRAIN_TIMEOUT`].
async fn drain(mut stream: axum::body::BodyDataStream, mut read: usize) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while read <= DRAIN_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// Parses JSON; the error names where it went wrong.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "malformed JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            strip_position(&e.to_string())
        )
    })
}

/// serde_json appends " at line L column C" to its messages; we say it first.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_type(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
        h
    }

    #[test]
    fn content_types() {
        assert!(is_json(&with_type("application/json")));
        assert!(is_json(&with_type("Application/JSON; charset=UTF-8")));
        assert!(!is_json(&with_type("application/json; charset=latin1")));
        assert!(!is_json(&with_type("text/plain")));
        assert!(!is_json(&with_type("application/jsonx")));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn malformed_json_names_the_position() {
        let e = parse_json(b"{\"source\": \"NEXUS\",\n  \"severity\": }").unwrap_err();
        assert!(
            e.starts_with("malformed JSON at line 2, column 15: "),
            "{e}"
        );
        assert!(!e.contains(" at line 2 column"), "{e}");
        let e = parse_json(b"\xff").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(parse_json(b"{}").is_ok());
    }

    #[tokio::test]
    async fn limits_and_types() {
        let json = with_type("application/json");
        let ok = json_text(&json, Body::from("{\"a\": 1}"), T).await.unwrap();
        assert_eq!(ok, "{\"a\": 1}");
        let big = format!("\"{}\"", "x".repeat(MAX_BODY_BYTES));
        let e = json_text(&json, Body::from(big), T).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = json_text(&with_type("text/plain"), Body::from("{}"), T)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = json_text(&json, Body::from("{"), T).await.unwrap_err();
        assert_eq!(
            (e.status, e.name.as_str()),
            (StatusCode::BAD_REQUEST, "MalformedJson")
        );
    }

    const T: std::time::Duration = std::time::Duration::from_secs(5);

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_a_408() {
        // Half a JSON object, then nothing: the client keeps the body open.
        let half = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"a\""))
        })
        .chain(futures_util::stream::pending());
        let e = json_text(
            &with_type("application/json"),
            Body::from_stream(half),
            std::time::Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.status, e.name.as_str()),
            (StatusCode::REQUEST_TIMEOUT, "RequestTimeout")
        );
    }
}
