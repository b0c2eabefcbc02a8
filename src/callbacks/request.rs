//! The request a call back makes: its URL and its JSON body.

use serde_json::{json, Value};

use crate::plan::model::Plan;

pub const ALERT_ID_PLACEHOLDER: &str = "{alert_id}";

/// `template` with `{alert_id}` replaced by `alert_id`, percent-encoded so
/// it stays one path segment or query value whatever it holds. (The alert
/// format already limits it to `[A-Za-z0-9._:-]`; encoding here keeps
/// that a property of the URL, not of the validator. Hand-written: the
/// rule is one line, and the `percent-encoding` crate's sets would need
/// the same line to say which bytes stay.)
pub fn url_for(template: &str, alert_id: &str) -> String {
    let mut encoded = String::with_capacity(alert_id.len());
    for byte in alert_id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    template.replace(ALERT_ID_PLACEHOLDER, &encoded)
}

/// `{"status": "resolved" | "failed", "plan_id", "alert_sha256",
/// "finished_at", "actions": [{"type", "state"}]}`.
pub fn body(plan: &Plan) -> Value {
    let status = match plan.status {
        crate::plan::PlanStatus::Success => "resolved",
        _ => "failed",
    };
    let actions: Vec<Value> = plan
        .actions
        .iter()
        .map(|a| json!({"type": a.seed.kind, "state": a.state}))
        .collect();
    json!({
        "status": status,
        "plan_id": plan.id,
        "alert_sha256": plan.alert_sha256,
        "finished_at": plan.finished_at,
        "actions": actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alert_id_is_one_encoded_segment() {
        assert_eq!(
            url_for("https://n.example/alert/{alert_id}", "NX-1:a.b_c"),
            "https://n.example/alert/NX-1%3Aa.b_c"
        );
        // Whatever reached it, it cannot add a segment, a query or a host.
        assert_eq!(
            url_for("https://n.example/a/{alert_id}?x=1", "../b?c=d#e/@f"),
            "https://n.example/a/..%2Fb%3Fc%3Dd%23e%2F%40f?x=1"
        );
        assert_eq!(
            url_for("https://n.example/fixed", "id"),
            "https://n.example/fixed"
        );
    }
}
