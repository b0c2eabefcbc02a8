//! Alert parsing and validation: any text an IDS or a hostile caller can
//! send as `SubmitAlert`'s argument. Never a panic; an accepted alert's
//! normalized actions validate again to themselves (the guards are
//! re-checked at apply from them).
#![no_main]

use antibody::actions::{Registry, ValidateCtx};
use antibody::config::Config;
use antibody::plan::alert::parse_alert;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(alert) = parse_alert(text) else {
        return;
    };
    // An alert without actions gets them from a playbook, which the engine
    // validates as an alert's own (tests/t1_playbooks.rs); nothing to
    // normalize here.
    if alert.actions.is_empty() {
        return;
    }
    let config = Config::default();
    let ctx = ValidateCtx {
        config: &config,
        own_unit: Some("antibody.service"),
    };
    let registry = Registry::builtin();
    let Ok(seeds) = registry.validate_alert(&alert, &ctx) else {
        return;
    };
    // The normalized parameters, validated again, are the same.
    let again: Vec<serde_json::Value> = seeds
        .iter()
        .map(|s| {
            let mut action = s.params.clone();
            action["type"] = serde_json::Value::String(s.kind.clone());
            action
        })
        .collect();
    let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
    value["actions"] = serde_json::Value::Array(again);
    let alert = parse_alert(&value.to_string()).expect("a normalized alert parses");
    let seeds_again = registry
        .validate_alert(&alert, &ctx)
        .expect("normalized actions validate again");
    assert_eq!(seeds, seeds_again);
});
