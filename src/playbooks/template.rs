//! Placeholders in a playbook's action parameters: `{entity}`, `{kind}`,
//! `{source}`, `{severity}`, `{alert_id}`, `{seconds}`; `{{` and `}}` are
//! literal braces. Substitution works on the parameters' string values,
//! never on JSON text, and in one pass: whatever an alert's entity holds
//! (quotes, braces, `{kind}`, a comma and another key) stays inside that
//! one string and is never read again as a placeholder, so it cannot add
//! a parameter or change another one. The result is then validated as if
//! the alert had carried it.

use serde_json::Value;

/// The placeholders a playbook may use.
pub const NAMES: [&str; 6] = [
    "entity", "kind", "source", "severity", "alert_id", "seconds",
];

/// One piece of a parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Brace(char),
    Placeholder(&'a str),
}

/// Splits `text` into literal text and placeholders; the error says what
/// is wrong (a lone brace, an unknown name).
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['{', '}']) {
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let brace = rest.as_bytes()[at] as char;
        let after = &rest[at + 1..];
        if after.starts_with(brace) {
            out.push(Piece::Brace(brace));
            rest = &after[1..];
            continue;
        }
        if brace == '}' {
            return Err(format!(
                "a lone `}}` in {text:?} (write `}}}}` for a brace)"
            ));
        }
        let Some(end) = after.find('}') else {
            return Err(format!(
                "a `{{` without its `}}` in {text:?} (write `{{{{` for a brace)"
            ));
        };
        let name = &after[..end];
        if !NAMES.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in {text:?}; known: {}",
                NAMES.map(|n| format!("{{{n}}}")).join(", ")
            ));
        }
        out.push(Piece::Placeholder(name));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Checks every string in `value` (at `path`): the error names the path.
pub fn check(path: &str, value: &Value) -> Result<(), String> {
    walk_strings(path, value, &mut |path, text| {
        pieces(text).map(|_| ()).map_err(|e| format!("{path}: {e}"))
    })
}

/// The placeholders `value` uses, each once.
pub fn used(value: &Value) -> Vec<&'static str> {
    let mut names = Vec::new();
    let _ = walk_strings("", value, &mut |_, text| {
        for piece in pieces(text).unwrap_or_default() {
            if let Piece::Placeholder(name) = piece {
                let name = NAMES.iter().find(|n| **n == name).copied();
                if let Some(name) = name.filter(|n| !names.contains(n)) {
                    names.push(name);
                }
            }
        }
        Ok(())
    });
    names
}

/// `value` with every placeholder replaced by `lookup(name)`; a name with
/// no value is an error naming it and where it is used.
pub fn fill(
    path: &str,
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(fill_text(path, text, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| fill(&format!("{path}[{i}]"), item, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), fill(&format!("{path}.{k}"), v, lookup)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn fill_text(
    path: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text).map_err(|e| format!("{path}: {e}"))? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Brace(b) => out.push(b),
            Piece::Placeholder(name) => match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(format!(
                        "{path} uses {{{name}}}, and the alert gives no {}",
                        describe(name)
                    ))
                }
            },
        }
    }
    Ok(out)
}

/// Where a placeholder's value comes from, for an error message.
fn describe(name: &str) -> &'static str {
    match name {
        "entity" => "context.entity",
        "alert_id" => "context.alert_id",
        "kind" => "kind",
        "seconds" => "seconds (no action of the playbook has a `seconds` parameter)",
        "source" => "source",
        _ => "severity",
    }
}

fn walk_strings(
    path: &str,
    value: &Value,
    visit: &mut dyn FnMut(&str, &str) -> Result<(), String>,
) -> Result<(), String> {
    match value {
        Value::String(text) => visit(path, text),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| walk_strings(&format!("{path}[{i}]"), item, visit)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| walk_strings(&format!("{path}.{k}"), v, visit)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(name: &str) -> Option<String> {
        match name {
            "entity" => Some("203.0.113.9".into()),
            "kind" => Some("ssh-bruteforce".into()),
            "seconds" => Some("600".into()),
            _ => None,
        }
    }

    #[test]
    fn placeholders_fill_string_values_and_braces_escape() {
        let action = json!({"type": "isolate_socket", "sid": "{entity}", "seconds": 600,
                            "message": "{kind}: isolated {entity} for {seconds}s {{ok}}"});
        let filled = fill("actions[0]", &action, &values).unwrap();
        assert_eq!(
            filled,
            json!({"type": "isolate_socket", "sid": "203.0.113.9", "seconds": 600,
                   "message": "ssh-bruteforce: isolated 203.0.113.9 for 600s {ok}"})
        );
        let mut names = used(&action);
        names.sort_unstable();
        assert_eq!(names, vec!["entity", "kind", "seconds"]);
    }

    #[test]
    fn a_hostile_entity_stays_one_string_and_is_never_read_again() {
        for hostile in [
            r#"1.2.3.4", "seconds": 1, "x": ""#,
            "{kind}",
            "{{entity}}",
            "}{",
            "\u{0}\n\"'\\",
        ] {
            let lookup = |name: &str| (name == "entity").then(|| hostile.to_string());
            let filled = fill(
                "actions[0]",
                &json!({"sid": "{entity}", "seconds": 600}),
                &lookup,
            )
            .unwrap();
            assert_eq!(
                filled,
                json!({"sid": hostile, "seconds": 600}),
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn a_missing_value_is_named_with_where_it_is_used() {
        let err = fill("actions[1]", &json!({"m": "for {alert_id}"}), &values).unwrap_err();
        assert_eq!(
            err,
            "actions[1].m uses {alert_id}, and the alert gives no context.alert_id"
        );
    }

    #[test]
    fn bad_templates_are_refused_at_load_with_their_path() {
        for (text, want) in [
            ("{nope}", "unknown placeholder {nope}"),
            ("{entity", "a `{` without its `}`"),
            ("x } y", "a lone `}`"),
            ("{}", "unknown placeholder {}"),
        ] {
            let err = check("actions[0]", &json!({"sid": text})).unwrap_err();
            assert!(err.starts_with("actions[0].sid: "), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
        check("a", &json!({"s": "{{literal}} {entity} }}"})).unwrap();
    }
}
