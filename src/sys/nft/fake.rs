//! An in-memory stand-in for the kernel's nftables, for tests that must not
//! touch a real firewall (T0/T1). It keeps the parts of nft's semantics the
//! backend relies on: batches are atomic, `add` of an existing element
//! keeps its timeout, `delete` of a missing one fails, and nothing exists
//! in a table that does not. It records every batch it was sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::backend::Driver;
use super::batch::TABLE;

#[derive(Debug, Clone, Default)]
pub struct Kernel {
    pub table: bool,
    pub sets: BTreeSet<String>,
    /// (chain, rule count)
    pub rules: BTreeMap<String, usize>,
    /// (set, key JSON text) → timeout seconds
    pub elements: BTreeMap<(String, String), u64>,
}

impl Kernel {
    /// What `nft flush ruleset` does to it.
    pub fn flush(&mut self) {
        *self = Kernel::default();
    }

    fn run(&mut self, command: &Value) -> Result<(), String> {
        let (verb, body) = command
            .as_object()
            .and_then(|o| o.iter().next())
            .ok_or("empty command")?;
        let (kind, object) = body
            .as_object()
            .and_then(|o| o.iter().next())
            .ok_or("no object")?;
        let missing = || Err("Error: No such file or directory".to_string());
        match (verb.as_str(), kind.as_str()) {
            ("add", "table") => self.table = true,
            ("delete", "table") if self.table => *self = Kernel::default(),
            ("add", "set") if self.table => {
                self.sets
                    .insert(object["name"].as_str().unwrap_or_default().into());
            }
            ("add", "chain") if self.table => {
                self.rules
                    .entry(object["name"].as_str().unwrap_or_default().into())
                    .or_default();
            }
            ("add", "rule") if self.table => {
                *self
                    .rules
                    .entry(object["chain"].as_str().unwrap_or_default().into())
                    .or_default() += 1;
            }
            (verb, "element") => {
                let set = object["name"].as_str().unwrap_or_default().to_string();
                if !self.sets.contains(&set) {
                    return missing();
                }
                for item in object["elem"].as_array().ok_or("no elem")? {
                    let (key, timeout) = match item.get("elem") {
                        Some(e) => (e["val"].to_string(), e["timeout"].as_u64().unwrap_or(0)),
                        None => (item.to_string(), 0),
                    };
                    let slot = (set.clone(), key);
                    match verb {
                        "add" => {
                            self.elements.entry(slot).or_insert(timeout);
                        }
                        "delete" if self.elements.remove(&slot).is_some() => {}
                        _ => return missing(),
                    }
                }
            }
            _ => return missing(),
        }
        Ok(())
    }

    fn listing(&self) -> Value {
        let mut objects = vec![json!({"table": {"family": "inet", "name": TABLE}})];
        for set in &self.sets {
            let elem: Vec<Value> = self
                .elements
                .iter()
                .filter(|((s, _), _)| s == set)
                .map(|((_, key), timeout)| {
                    let val: Value = serde_json::from_str(key).expect("stored as JSON");
                    json!({"elem": {"val": val, "timeout": timeout, "expires": timeout}})
                })
                .collect();
            objects.push(
                json!({"set": {"family": "inet", "table": TABLE, "name": set, "elem": elem}}),
            );
        }
        for (chain, count) in &self.rules {
            for _ in 0..*count {
                objects.push(json!({"rule": {"family": "inet", "table": TABLE, "chain": chain}}));
            }
        }
        json!({ "nftables": objects })
    }
}

/// A [`Driver`] over a shared [`Kernel`]; clones share it.
#[derive(Clone, Default)]
pub struct FakeDriver {
    pub kernel: Arc<Mutex<Kernel>>,
    pub batches: Arc<Mutex<Vec<Value>>>,
}

#[async_trait]
impl Driver for FakeDriver {
    async fn apply(&self, batch: &Value) -> Result<(), String> {
        self.batches.lock().unwrap().push(batch.clone());
        let mut kernel = self.kernel.lock().unwrap();
        let mut next = kernel.clone();
        for command in batch["nftables"].as_array().ok_or("not a batch")? {
            next.run(command)?;
        }
        *kernel = next;
        Ok(())
    }

    async fn list(&self) -> Result<Option<Value>, String> {
        let kernel = self.kernel.lock().unwrap();
        Ok(kernel.table.then(|| kernel.listing()))
    }
}
