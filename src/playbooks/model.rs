//! A playbook file as written (`[[playbook]]` tables, these key names
//! exactly) and the checks that need no other file: names and kinds,
//! match keys, actions (shape and placeholders; their parameters are
//! checked by the action handlers once filled in), escalation.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::escalate::Escalate;
use super::template;
use crate::plan::alert::{Severity, Source, MAX_ACTIONS};

/// A file of playbooks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookFile {
    #[serde(default)]
    pub playbook: Vec<PlaybookText>,
}

/// One `[[playbook]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookText {
    pub name: String,
    #[serde(default)]
    pub simulate: bool,
    #[serde(default, rename = "match")]
    pub matches: Match,
    #[serde(default)]
    pub actions: Vec<toml::Table>,
    pub escalate: Option<Escalate>,
}

/// `[playbook.match]`: every key optional; all given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Vec<Source>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
}

/// A checked playbook.
#[derive(Debug, Clone, PartialEq)]
pub struct Playbook {
    pub name: String,
    /// The file it came from.
    pub file: String,
    pub simulate: bool,
    pub matches: Match,
    /// Each action as an alert would carry it (`{"type": …, …}`), with
    /// its placeholders still in.
    pub actions: Vec<Value>,
    pub escalate: Option<Escalate>,
}

impl Playbook {
    /// As `ListPlaybooks` shows it: the keys of its file, with the file's name.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "file": self.file,
            "simulate": self.simulate,
            "match": self.matches,
            "actions": self.actions,
        });
        if let Some(escalate) = &self.escalate {
            v["escalate"] = json!(escalate);
        }
        v
    }
}

/// Kinds and playbook names: `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn is_kind(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=64).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

impl PlaybookText {
    /// The checked playbook, number `index` of `file`; the error names the
    /// playbook and the key.
    pub fn check(self, file: &str, index: usize) -> Result<Playbook, String> {
        let at = format!("playbook[{index}] ({:?})", self.name);
        if !is_kind(&self.name) {
            return Err(format!(
                "playbook[{index}].name: {:?} is not 1-64 of [a-z0-9._-] starting with a letter or digit",
                self.name
            ));
        }
        if let Some(kind) = self.matches.kind.as_deref().filter(|k| !is_kind(k)) {
            return Err(format!(
                "{at}: match.kind: {kind:?} is not 1-64 of [a-z0-9._-] starting with a letter or digit"
            ));
        }
        if self.matches.source.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!(
                "{at}: match.source: an empty list matches nothing; leave the key out to match every source"
            ));
        }
        if self.actions.is_empty() || self.actions.len() > MAX_ACTIONS {
            return Err(format!(
                "{at}: actions: {} given; a playbook has 1 to {MAX_ACTIONS}",
                self.actions.len()
            ));
        }
        let mut actions = Vec::with_capacity(self.actions.len());
        for (i, table) in self.actions.into_iter().enumerate() {
            let path = format!("{at}: actions[{i}]");
            let value = json_of(&path, toml::Value::Table(table))?;
            match value.get("type").and_then(Value::as_str) {
                None => return Err(format!("{path}.type: missing, or not a string")),
                // The playbook, not the alert, chooses what is done.
                Some(kind) if kind.contains(['{', '}']) => {
                    return Err(format!("{path}.type: {kind:?} may not hold a placeholder"))
                }
                Some(_) => {}
            }
            template::check(&path, &value)?;
            actions.push(value);
        }
        let has_seconds = actions.iter().any(|a| base_seconds(a).is_some());
        if !has_seconds
            && actions
                .iter()
                .any(|a| template::used(a).contains(&"seconds"))
        {
            return Err(format!(
                "{at}: {{seconds}} is used, and no action has a `seconds` number"
            ));
        }
        if let Some(escalate) = &self.escalate {
            if let Some(problem) = escalate.problem() {
                return Err(format!("{at}: escalate.{problem}"));
            }
            if !has_seconds {
                return Err(format!(
                    "{at}: escalate: no action has a `seconds` number to escalate"
                ));
            }
        }
        Ok(Playbook {
            name: self.name,
            file: file.to_string(),
            simulate: self.simulate,
            matches: self.matches,
            actions,
            escalate: self.escalate,
        })
    }
}

/// An action's `seconds`, when it is a whole number.
pub fn base_seconds(action: &Value) -> Option<u64> {
    action.get("seconds").and_then(Value::as_u64)
}

/// A TOML value as JSON; TOML dates have no JSON form and are refused.
fn json_of(path: &str, value: toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{path}: {f} has no JSON form"))?,
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => {
            return Err(format!("{path}: {d} is a TOML date; write it as a string"))
        }
        toml::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| json_of(&format!("{path}[{i}]"), v))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| {
                    let value = json_of(&format!("{path}.{k}"), v)?;
                    Ok((k, value))
                })
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Playbook>, String> {
        let file: PlaybookFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.playbook
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.check("10-test.toml", i))
            .collect()
    }

    /// The shipped example, as the tests of the engine use it too.
    const SSH: &str = include_str!("../../packaging/examples/playbook-ssh-bruteforce.toml");

    #[test]
    fn the_issues_example_reads_as_written() {
        let playbooks = parse(SSH).unwrap();
        assert_eq!(playbooks.len(), 1);
        let p = &playbooks[0];
        assert_eq!(p.name, "ssh-bruteforce");
        assert!(!p.simulate);
        assert_eq!(
            p.matches,
            Match {
                source: Some(vec![Source::Nexus]),
                kind: Some("ssh-bruteforce".into()),
                min_severity: Some(Severity::Med),
            }
        );
        assert_eq!(
            p.actions[0],
            serde_json::json!({"type": "isolate_socket", "sid": "{entity}", "seconds": 600})
        );
        assert_eq!(p.escalate.as_ref().unwrap().factor, 4);
        assert_eq!(p.file, "10-test.toml");
    }

    #[test]
    fn the_shipped_examples_load() {
        let heartbeat = include_str!("../../packaging/examples/playbook-stale-heartbeat.toml");
        let p = &parse(heartbeat).unwrap()[0];
        assert_eq!(p.name, "stale-heartbeat");
        assert_eq!(p.matches.source, Some(vec![Source::Watchdog]));
        assert_eq!(p.actions[0]["name"], "{entity}");
        let scan = include_str!("../../packaging/examples/playbook-port-scan-simulate.toml");
        let p = &parse(scan).unwrap()[0];
        assert_eq!((p.name.as_str(), p.simulate), ("port-scan", true));
    }

    #[test]
    fn mistakes_name_the_key_and_toml_names_the_line() {
        let unknown = parse(&SSH.replace("min_severity", "min_sevrity")).unwrap_err();
        assert!(
            unknown.contains("line 17") && unknown.contains("min_sevrity"),
            "{unknown}"
        );
        let bad_source = parse(&SSH.replace("[\"NEXUS\"]", "[\"Nexus\"]")).unwrap_err();
        assert!(
            bad_source.contains("line 15") && bad_source.contains("Nexus"),
            "{bad_source}"
        );
        for (edit, want) in [
            (
                ("name = \"ssh-bruteforce\"", "name = \"SSH\""),
                "playbook[0].name",
            ),
            (
                ("kind = \"ssh-bruteforce\"", "kind = \"a b\""),
                "match.kind",
            ),
            (("source = [\"NEXUS\"]", "source = []"), "match.source"),
            (
                ("sid = \"{entity}\"", "sid = \"{entitty}\""),
                "actions[0].sid: unknown placeholder {entitty}",
            ),
            (
                ("type = \"isolate_socket\"", "kind = \"isolate_socket\""),
                "actions[0].type: missing",
            ),
            (("factor = 4", "factor = 0"), "escalate.factor"),
            (
                ("seconds = 600", "seconds = \"600\""),
                "{seconds} is used, and no action has a `seconds` number",
            ),
            (("seconds = 600", "seconds = 1979-05-27"), "is a TOML date"),
            (
                ("type = \"isolate_socket\"", "type = \"{kind}\""),
                "may not hold a placeholder",
            ),
        ] {
            let err = parse(&SSH.replace(edit.0, edit.1)).unwrap_err();
            assert!(err.contains(want), "{edit:?}: {err}");
        }
        let no_seconds = SSH
            .replace("seconds = 600", "seconds = \"600\"")
            .replace(" for {seconds}s", "");
        let err = parse(&no_seconds).unwrap_err();
        assert!(
            err.contains("escalate: no action has a `seconds` number"),
            "{err}"
        );
        let none = parse("[[playbook]]\nname = \"x\"\n").unwrap_err();
        assert!(none.contains("actions: 0 given"), "{none}");
    }

    #[test]
    fn kinds_are_short_lowercase_words() {
        for good in ["a", "ssh-bruteforce", "stale.heartbeat_2", &"a".repeat(64)] {
            assert!(is_kind(good), "{good}");
        }
        for bad in ["", "-a", ".a", "A", "a b", "a/b", &"a".repeat(65), "é"] {
            assert!(!is_kind(bad), "{bad}");
        }
    }
}
