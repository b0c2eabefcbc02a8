//! Telling an alert's source that its plan finished (the seed's
//! `PATCH /alert/{id} status=resolved` to NEXUS): the configuration of a
//! call back, the request it makes and what its answer means. Pure logic;
//! the engine sends and records them (`engine/callbacks.rs`).

mod outcome;
mod request;

pub use outcome::{verdict, Verdict};
pub use request::{body, url_for, ALERT_ID_PLACEHOLDER};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plan::Source;

/// `[callbacks.SOURCE]`: from the configuration only, never from an alert.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// `http://` or `https://`; `{alert_id}` is replaced by the alert's
    /// `context.alert_id`, percent-encoded.
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Holds the token sent as `Authorization: Bearer`; read at each
    /// attempt, so a rotated token is used without a reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Besides root, who may submit an alert of this source that owes a
    /// call back (user names or uids): the receiver's token is the
    /// agent's to use, so an alert naming a source is not enough. An alert
    /// from anyone else gets its plan, without a call back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submitters: Vec<String>,
    /// `submitters` as uids, resolved when the configuration is loaded
    /// ([`resolve_submitters`]).
    #[serde(skip)]
    pub submitter_uids: Vec<u32>,
    /// A call back not delivered this long after its plan finished is
    /// given up (and the operator told); 0: never.
    #[serde(default = "default_give_up_after")]
    pub give_up_after_secs: u64,
}

fn default_give_up_after() -> u64 {
    86_400
}

impl CallbackConfig {
    /// Whether a call back for a plan that finished at `finished_ms` is
    /// past `give_up_after_secs` at `now_ms` (never, with 0).
    pub fn past_give_up(&self, finished_ms: u64, now_ms: u64) -> bool {
        self.give_up_after_secs > 0
            && now_ms.saturating_sub(finished_ms) > self.give_up_after_secs.saturating_mul(1000)
    }
}

fn default_method() -> String {
    "PATCH".into()
}

fn default_timeout() -> u64 {
    5
}

/// The methods a call back may use: each sends a body.
pub const METHODS: [&str; 3] = ["PATCH", "POST", "PUT"];

/// `submitters` as uids: a number is a uid, a name is looked up in the
/// user database (once, at load or reload, never per alert); an unknown
/// name is an error naming it.
pub fn resolve_submitters(config: &mut CallbackConfig) -> Result<(), String> {
    let mut uids = Vec::new();
    for who in &config.submitters {
        let uid = match who.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => nix::unistd::User::from_name(who)
                .map_err(|e| format!(".submitters: cannot look up user {who:?}: {e}"))?
                .ok_or_else(|| format!(".submitters: no user is called {who:?}"))?
                .uid
                .as_raw(),
        };
        uids.push(uid);
    }
    config.submitter_uids = uids;
    Ok(())
}

/// What serde cannot check about `[callbacks.SOURCE]`: an error names the
/// key after `callbacks.SOURCE` (`.url`, `.method`…; empty for the table).
pub fn check_config(source: &str, config: &CallbackConfig) -> Result<(), String> {
    if !Source::ALL.iter().any(|(name, _)| *name == source) {
        let names: Vec<&str> = Source::ALL.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "no alert source is called {source:?} (sources: {})",
            names.join(", ")
        ));
    }
    let url = &config.url;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(".url: must be an http:// or https:// URL".into());
    }
    // Any other brace would be sent as it is: refused, as a typo
    // (`{alertid}`) would otherwise reach the receiver.
    let rest = url.replace(ALERT_ID_PLACEHOLDER, "");
    if rest.contains(['{', '}']) {
        return Err(format!(
            ".url: the only placeholder is {ALERT_ID_PLACEHOLDER}; found another brace in {}",
            crate::sys::notifier::redact_url(url)
        ));
    }
    // The alert's id may choose a path, never the host the token goes to.
    if let Some(at) = url.find(ALERT_ID_PLACEHOLDER) {
        let host_start = url.find("://").map_or(0, |i| i + 3);
        let path_start = url[host_start..]
            .find(['/', '?', '#'])
            .map(|i| host_start + i);
        if path_start.is_none_or(|p| at < p) {
            return Err(format!(
                ".url: {ALERT_ID_PLACEHOLDER} may only be in the path or query, not in the host"
            ));
        }
    }
    if url_for(url, "x").parse::<http::Uri>().is_err() {
        return Err(format!(
            ".url: not a valid URL: {}",
            crate::sys::notifier::redact_url(url)
        ));
    }
    if !METHODS.contains(&config.method.as_str()) {
        return Err(format!(
            ".method: {:?} is not one of {}",
            config.method,
            METHODS.join(", ")
        ));
    }
    if let Some(file) = &config.token_file {
        if !file.is_absolute() {
            return Err(".token_file: must be an absolute path".into());
        }
    }
    if !(1..=60).contains(&config.timeout_secs) {
        return Err(".timeout_secs: must be 1..=60".into());
    }
    if let Some(who) = config
        .submitters
        .iter()
        .find(|w| w.is_empty() || w.contains(|c: char| c.is_whitespace() || c == ':'))
    {
        return Err(format!(".submitters: {who:?} is not a user name or uid"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> CallbackConfig {
        CallbackConfig {
            url: url.into(),
            method: default_method(),
            token_file: None,
            timeout_secs: 5,
            submitters: Vec::new(),
            submitter_uids: Vec::new(),
            give_up_after_secs: default_give_up_after(),
        }
    }

    #[test]
    fn a_good_callback_passes_and_each_bad_key_is_named() {
        assert_eq!(
            check_config("NEXUS", &config("https://nexus.example/alert/{alert_id}")),
            Ok(())
        );
        let err = check_config("Nexus", &config("https://n.example/")).unwrap_err();
        assert!(err.contains("no alert source is called \"Nexus\""), "{err}");
        let err = check_config("NEXUS", &config("ftp://n.example/")).unwrap_err();
        assert!(err.starts_with(".url:"), "{err}");
        let err = check_config("NEXUS", &config("https://n.example/{alertid}")).unwrap_err();
        assert!(err.contains("the only placeholder is {alert_id}"), "{err}");
        for in_host in [
            "https://{alert_id}/x",
            "https://n{alert_id}.example/",
            "https://n.example{alert_id}",
        ] {
            let err = check_config("NEXUS", &config(in_host)).unwrap_err();
            assert!(err.contains("not in the host"), "{in_host}: {err}");
        }
        assert_eq!(
            check_config("NEXUS", &config("https://n.example/?id={alert_id}")),
            Ok(())
        );
        let err = check_config("NEXUS", &config("https://n.example/a b")).unwrap_err();
        assert!(err.starts_with(".url: not a valid URL"), "{err}");
        let mut bad = config("https://n.example/");
        bad.method = "GET".into();
        assert!(check_config("NEXUS", &bad)
            .unwrap_err()
            .starts_with(".method:"));
        let mut bad = config("https://n.example/");
        bad.token_file = Some("nexus.token".into());
        assert!(check_config("NEXUS", &bad)
            .unwrap_err()
            .starts_with(".token_file:"));
        let mut bad = config("https://n.example/");
        bad.timeout_secs = 0;
        assert!(check_config("NEXUS", &bad)
            .unwrap_err()
            .starts_with(".timeout_secs:"));
    }
}
