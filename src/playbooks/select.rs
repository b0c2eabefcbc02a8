//! Choosing a playbook for a bare alert (the first that matches, in load
//! order), saying why the others did not, and filling in its actions.

use serde_json::Value;

use super::model::{base_seconds, Playbook};
use super::template;
use crate::plan::alert::{Severity, Source};

/// What a playbook may match and fill in from an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFacts {
    pub source: Source,
    pub severity: Severity,
    pub kind: Option<String>,
    pub entity: Option<String>,
    pub alert_id: Option<String>,
}

impl AlertFacts {
    /// `source=NEXUS kind=…` as the no-match error shows it.
    pub fn summary(&self) -> String {
        format!(
            "source={} kind={}",
            self.source.as_str(),
            self.kind.as_deref().unwrap_or("(none)")
        )
    }
}

/// Why `playbook` does not match, or None when it does.
pub fn mismatch(playbook: &Playbook, facts: &AlertFacts) -> Option<String> {
    let m = &playbook.matches;
    if let Some(sources) = m.source.as_ref().filter(|s| !s.contains(&facts.source)) {
        let names: Vec<&str> = sources.iter().map(|s| s.as_str()).collect();
        return Some(format!(
            "source is {}, not one of {}",
            facts.source.as_str(),
            names.join(", ")
        ));
    }
    if let Some(kind) = m.kind.as_deref() {
        match facts.kind.as_deref() {
            Some(k) if k == kind => {}
            Some(k) => return Some(format!("kind is {k}, not {kind}")),
            None => return Some(format!("the alert has no kind (wanted {kind})")),
        }
    }
    if let Some(min) = m.min_severity.filter(|min| facts.severity < *min) {
        return Some(format!(
            "severity {} is below {}",
            facts.severity.as_str(),
            min.as_str()
        ));
    }
    None
}

/// The first playbook that matches, or the reason for each that did not.
pub fn choose<'a>(
    playbooks: &'a [Playbook],
    facts: &AlertFacts,
) -> Result<&'a Playbook, Vec<(String, String)>> {
    let mut reasons = Vec::new();
    for playbook in playbooks {
        match mismatch(playbook, facts) {
            None => return Ok(playbook),
            Some(why) => reasons.push((playbook.name.clone(), why)),
        }
    }
    Err(reasons)
}

/// A playbook's actions for one alert: its `repeat`-th repeat within the
/// window (0: first), with `jitter` drawn for the escalation.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub actions: Vec<Value>,
    /// The escalated `seconds` (of the first action that has them).
    pub seconds: Option<u64>,
}

/// Fills in `playbook`'s actions for `facts`. Every `seconds` number is
/// escalated; `{seconds}` is the first one's value after escalation.
pub fn fill(
    playbook: &Playbook,
    facts: &AlertFacts,
    repeat: u32,
    jitter: u64,
) -> Result<Filled, String> {
    let escalated = |base: u64| match &playbook.escalate {
        Some(e) => e.seconds(base, repeat, jitter),
        None => base,
    };
    let seconds = playbook
        .actions
        .iter()
        .find_map(base_seconds)
        .map(escalated);
    let lookup = |name: &str| -> Option<String> {
        match name {
            "entity" => facts.entity.clone(),
            "kind" => facts.kind.clone(),
            "alert_id" => facts.alert_id.clone(),
            "source" => Some(facts.source.as_str().to_string()),
            "severity" => Some(facts.severity.as_str().to_string()),
            "seconds" => seconds.map(|s| s.to_string()),
            _ => None,
        }
    };
    let actions = playbook
        .actions
        .iter()
        .enumerate()
        .map(|(i, action)| {
            let mut filled = template::fill(&format!("actions[{i}]"), action, &lookup)
                .map_err(|e| format!("playbook {}: {e}", playbook.name))?;
            if let Some(base) = base_seconds(action) {
                filled["seconds"] = Value::from(escalated(base));
            }
            Ok(filled)
        })
        .collect::<Result<_, String>>()?;
    Ok(Filled { actions, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbooks::escalate::Escalate;
    use crate::playbooks::model::Match;
    use serde_json::json;

    fn book(name: &str, matches: Match) -> Playbook {
        Playbook {
            name: name.into(),
            file: "10-a.toml".into(),
            simulate: false,
            matches,
            actions: vec![
                json!({"type": "notify_operator", "channel": "journal", "message": name}),
            ],
            escalate: None,
        }
    }

    fn facts(kind: Option<&str>, severity: Severity) -> AlertFacts {
        AlertFacts {
            source: Source::Nexus,
            severity,
            kind: kind.map(str::to_string),
            entity: Some("203.0.113.9".into()),
            alert_id: None,
        }
    }

    #[test]
    fn the_first_match_wins_and_the_others_say_why_not() {
        let books = [
            book(
                "watchdog-only",
                Match {
                    source: Some(vec![Source::Watchdog]),
                    ..Match::default()
                },
            ),
            book(
                "ssh",
                Match {
                    kind: Some("ssh-bruteforce".into()),
                    min_severity: Some(Severity::Med),
                    ..Match::default()
                },
            ),
            book("anything", Match::default()),
        ];
        let chosen = choose(&books, &facts(Some("ssh-bruteforce"), Severity::High)).unwrap();
        assert_eq!(chosen.name, "ssh");
        let chosen = choose(&books, &facts(Some("ssh-bruteforce"), Severity::Low)).unwrap();
        assert_eq!(chosen.name, "anything", "below min_severity falls through");
        let none = choose(&books[..2], &facts(None, Severity::High)).unwrap_err();
        assert_eq!(
            none,
            vec![
                (
                    "watchdog-only".to_string(),
                    "source is NEXUS, not one of Watchdog".to_string()
                ),
                (
                    "ssh".to_string(),
                    "the alert has no kind (wanted ssh-bruteforce)".to_string()
                ),
            ]
        );
        let wrong_kind =
            choose(&books[1..2], &facts(Some("port-scan"), Severity::High)).unwrap_err();
        assert_eq!(wrong_kind[0].1, "kind is port-scan, not ssh-bruteforce");
    }

    #[test]
    fn filling_escalates_every_seconds_and_the_placeholder() {
        let mut p = book("ssh", Match::default());
        p.actions = vec![
            json!({"type": "isolate_socket", "sid": "{entity}", "seconds": 600}),
            json!({"type": "notify_operator", "channel": "journal", "message": "{kind} {entity} {seconds}s"}),
        ];
        p.escalate = Some(Escalate {
            factor: 4,
            window_secs: 86_400,
            max_seconds: 86_400,
            jitter_secs: 0,
        });
        let f = facts(Some("ssh-bruteforce"), Severity::High);
        let first = fill(&p, &f, 0, 0).unwrap();
        assert_eq!(
            first.actions[0],
            json!({"type": "isolate_socket", "sid": "203.0.113.9", "seconds": 600})
        );
        assert_eq!(
            first.actions[1]["message"],
            "ssh-bruteforce 203.0.113.9 600s"
        );
        let second = fill(&p, &f, 1, 0).unwrap();
        assert_eq!(second.seconds, Some(2_400));
        assert_eq!(second.actions[0]["seconds"], 2_400);
        assert_eq!(
            second.actions[1]["message"],
            "ssh-bruteforce 203.0.113.9 2400s"
        );
    }

    #[test]
    fn an_absent_value_is_an_error_naming_it() {
        let mut p = book("needs-id", Match::default());
        p.actions = vec![
            json!({"type": "notify_operator", "channel": "journal", "message": "NEXUS {alert_id}"}),
        ];
        let err = fill(&p, &facts(None, Severity::Low), 0, 0).unwrap_err();
        assert_eq!(
            err,
            "playbook needs-id: actions[0].message uses {alert_id}, and the alert gives no context.alert_id"
        );
    }
}
