//! `playbooks` and `playbooks test`: the agent's playbooks as an operator
//! reads them (ListPlaybooks), and the plan an alert would get (DryRun).

use serde_json::Value;

use super::{clean, s};

/// A JSON object's keys and values as `key=value`, in their order.
fn pairs(v: &Value, skip: &[&str]) -> String {
    let Some(map) = v.as_object() else {
        return clean(&v.to_string());
    };
    map.iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| match v {
            Value::String(text) => format!("{}={}", clean(k), clean(text)),
            other => format!("{}={}", clean(k), clean(&other.to_string())),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn print_list(reply: &Value) {
    let dir = clean(s(reply, "dir"));
    let playbooks = reply["playbooks"].as_array().cloned().unwrap_or_default();
    if playbooks.is_empty() {
        println!("no playbooks in {dir}: an alert without actions is refused");
        return;
    }
    println!(
        "{} playbook(s) from {dir}, tried in this order:",
        playbooks.len()
    );
    for p in &playbooks {
        let simulate = match p["simulate"].as_bool() {
            Some(true) => "  [simulate: records what it would do, changes nothing]",
            _ => "",
        };
        println!(
            "{} ({}){simulate}",
            clean(s(p, "name")),
            clean(s(p, "file"))
        );
        let matched = pairs(&p["match"], &[]);
        let matched = if matched.is_empty() {
            "every alert without actions".into()
        } else {
            matched
        };
        println!("  match:    {matched}");
        for (i, action) in p["actions"].as_array().into_iter().flatten().enumerate() {
            println!(
                "  [{i}] {:<16} {}",
                clean(s(action, "type")),
                pairs(action, &["type"])
            );
        }
        if let Some(e) = p.get("escalate").filter(|e| e.is_object()) {
            println!("  escalate: {}", pairs(e, &[]));
        }
    }
}

pub fn print_test(reply: &Value) {
    let plan = &reply["plan"];
    match plan.get("playbook").filter(|p| p.is_object()) {
        Some(pb) => {
            let simulate = if pb["simulate"] == true {
                ", simulated"
            } else {
                ""
            };
            println!(
                "playbook {} ({}), repeat {}{simulate}",
                clean(s(pb, "name")),
                clean(s(pb, "file")),
                pb["repeat"].as_u64().unwrap_or(0)
            );
        }
        None => println!("no playbook: the alert names its own actions"),
    }
    match reply.get("existing_plan").and_then(Value::as_str) {
        Some(id) => println!("an identical alert already has plan {id}: no new plan would be made"),
        None => println!("a new plan would be made with these actions:"),
    }
    let changes = reply["actions"].as_array().cloned().unwrap_or_default();
    for (i, action) in plan["actions"].as_array().into_iter().flatten().enumerate() {
        println!(
            "  [{i}] {:<16} {}",
            clean(s(action, "type")),
            pairs(&action["params"], &[])
        );
        if let Some(change) = changes.get(i).map(|c| &c["change"]) {
            println!("      would: {}", clean(&change.to_string()));
        }
    }
    if let Some(cb) = reply.get("callback").filter(|c| c.is_object()) {
        println!(
            "  call back: {} {} {}",
            clean(s(cb, "method")),
            clean(s(cb, "url")),
            clean(s(cb, "when"))
        );
    }
}
