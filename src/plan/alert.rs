//! The alert envelope (DESIGN.md §2): strict parsing with errors that name
//! the field. Action parameters are checked by the action handlers
//! (`crate::actions`), which know each type's fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::canonical::canonical_sha256;
use super::fields::{type_name, Fields};
use super::strict_json::parse_strict;
use crate::error::AgentError;

pub const MAX_ALERT_BYTES: usize = 64 * 1024;
pub const MAX_ACTIONS: usize = 32;
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
pub const MAX_ENTITY_BYTES: usize = 512;
pub const MAX_STACK_TRACE_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "NEXUS")]
    Nexus,
    Watchdog,
    Manual,
}

impl Source {
    pub const ALL: [(&'static str, Source); 3] = [
        ("NEXUS", Source::Nexus),
        ("Watchdog", Source::Watchdog),
        ("Manual", Source::Manual),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, s)| *s == self).unwrap().0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Med,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [(&'static str, Severity); 4] = [
        ("low", Severity::Low),
        ("med", Severity::Med),
        ("high", Severity::High),
        ("critical", Severity::Critical),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, s)| *s == self).unwrap().0
    }
}

/// One requested action as the alert gave it: `{"type": "...", ...params}`.
/// Its shape is checked together with its parameters, action by action, so
/// the first bad action is the one reported whatever is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawAction {
    pub index: usize,
    pub value: Value,
}

impl RawAction {
    pub fn path(&self) -> String {
        format!("actions[{}]", self.index)
    }

    /// The action's type and its fields (every key but `type`).
    pub fn split(&self) -> Result<(String, Map<String, Value>), AgentError> {
        let fields = Fields::of(&self.path(), &self.value)?;
        let kind = fields.string("type")?.to_string();
        let mut params = fields.map.clone();
        params.remove("type");
        Ok((kind, params))
    }
}

/// A structurally valid alert, not yet checked against the action handlers.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub source: Source,
    pub severity: Severity,
    /// What kind of trouble (`ssh-bruteforce`): what playbooks match on.
    pub kind: Option<String>,
    pub description: String,
    /// Empty when the alert gives none: a playbook chooses them.
    pub actions: Vec<RawAction>,
    pub context: Option<Value>,
    /// SHA-256 of the canonical alert JSON (sorted keys, no whitespace).
    pub sha256: String,
}

const ALERT_FIELDS: [&str; 6] = [
    "source",
    "severity",
    "kind",
    "description",
    "actions",
    "context",
];
const CONTEXT_FIELDS: [&str; 4] = ["entity", "stack_trace", "payload", "alert_id"];
pub const MAX_ALERT_ID_BYTES: usize = 128;

pub fn parse_alert(text: &str) -> Result<Alert, AgentError> {
    if text.len() > MAX_ALERT_BYTES {
        return Err(AgentError::invalid(
            "alert",
            format!(
                "is {} bytes; at most {MAX_ALERT_BYTES} are allowed",
                text.len()
            ),
        ));
    }
    let value = parse_strict(text)
        .map_err(|e| AgentError::invalid("alert", format!("is not valid JSON: {e}")))?;
    let root = Fields::of("", &value)?;
    root.deny_unknown(&ALERT_FIELDS)?;

    let source = one_of(&root, "source", &Source::ALL)?;
    let severity = one_of(&root, "severity", &Severity::ALL)?;
    let kind = match root.get("kind") {
        None => None,
        Some(_) => {
            let kind = root.string("kind")?;
            if !crate::playbooks::model::is_kind(kind) {
                return Err(root.error(
                    "kind",
                    format!("{kind:?} is not 1-64 of [a-z0-9._-] starting with a letter or digit"),
                ));
            }
            Some(kind.to_string())
        }
    };
    let description = root.text("description", MAX_DESCRIPTION_BYTES)?.to_string();
    let actions = parse_actions(&root)?;
    let context = match root.get("context") {
        None => None,
        Some(v) => Some(parse_context(v)?),
    };
    Ok(Alert {
        source,
        severity,
        kind,
        description,
        actions,
        context,
        sha256: canonical_sha256(&value),
    })
}

fn one_of<T: Copy>(
    fields: &Fields<'_>,
    name: &str,
    choices: &[(&'static str, T)],
) -> Result<T, AgentError> {
    let given = fields.string(name)?;
    choices
        .iter()
        .find(|(label, _)| *label == given)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(l, _)| *l).collect();
            fields.error(
                name,
                format!("{given:?} is not one of {}", names.join(", ")),
            )
        })
}

/// The alert's actions; none when it gives no `actions` (a playbook then
/// chooses them).
fn parse_actions(root: &Fields<'_>) -> Result<Vec<RawAction>, AgentError> {
    let items = match root.get("actions") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(root.error(
                "actions",
                format!("must be an array, not {}", type_name(other)),
            ))
        }
    };
    if items.is_empty() || items.len() > MAX_ACTIONS {
        return Err(root.error(
            "actions",
            format!("must hold 1..={MAX_ACTIONS} actions, not {}", items.len()),
        ));
    }
    Ok(items
        .iter()
        .enumerate()
        .map(|(index, value)| RawAction {
            index,
            value: value.clone(),
        })
        .collect())
}

fn parse_context(value: &Value) -> Result<Value, AgentError> {
    let fields = Fields::of("context", value)?;
    fields.deny_unknown(&CONTEXT_FIELDS)?;
    if fields.get("entity").is_some() {
        fields.text("entity", MAX_ENTITY_BYTES)?;
    }
    if fields.get("stack_trace").is_some() {
        fields.text("stack_trace", MAX_STACK_TRACE_BYTES)?;
    }
    if fields.get("alert_id").is_some() {
        let id = fields.string("alert_id")?;
        let ok = (1..=MAX_ALERT_ID_BYTES).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !ok {
            return Err(fields.error(
                "alert_id",
                format!("{id:?} is not 1-{MAX_ALERT_ID_BYTES} of [A-Za-z0-9._:-]"),
            ));
        }
        // It becomes a segment of a call back's URL: "." and ".." would
        // move the request to another path once a server normalizes it.
        if id.bytes().all(|b| b == b'.') {
            return Err(fields.error("alert_id", format!("{id:?} may not be only dots")));
        }
    }
    Ok(value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"source":"Watchdog","severity":"high","description":"vael stalled",
        "actions":[{"type":"restart_service","name":"vael.service"}],
        "context":{"entity":"vael","payload":{"rss":1}}}"#;

    #[test]
    fn parses_a_good_alert() {
        let a = parse_alert(GOOD).unwrap();
        assert_eq!(a.source, Source::Watchdog);
        assert_eq!(a.severity, Severity::High);
        let (kind, params) = a.actions[0].split().unwrap();
        assert_eq!(kind, "restart_service");
        assert_eq!(params["name"], "vael.service");
        assert!(!params.contains_key("type"));
        assert_eq!(a.sha256.len(), 64);
    }

    #[test]
    fn hash_ignores_key_order_and_whitespace() {
        let b = r#"{"actions":[{"name":"vael.service","type":"restart_service"}],"context":{"payload":{"rss":1},"entity":"vael"},"description":"vael stalled","severity":"high","source":"Watchdog"}"#;
        assert_eq!(
            parse_alert(GOOD).unwrap().sha256,
            parse_alert(b).unwrap().sha256
        );
    }

    #[test]
    fn names_enum_values() {
        assert_eq!(Source::Nexus.as_str(), "NEXUS");
        assert_eq!(Severity::Critical.as_str(), "critical");
    }
}
