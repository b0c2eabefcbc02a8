//! Reading the kernel's copy of the table (`nft -j list table inet antibody`)
//! into what reconcile compares: which sets and rules exist, and which
//! elements are in force for how much longer.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::batch::{chain_rules, set_definitions, TABLE};
use super::element::Element;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub sets: BTreeSet<String>,
    /// Rules per chain.
    pub rules: BTreeMap<String, usize>,
    /// Elements the agent can read back, with seconds left before expiry.
    pub elements: BTreeMap<Element, u64>,
}

impl Listing {
    /// Parses nft's JSON output; objects of other tables are ignored.
    pub fn parse(json: &Value) -> Listing {
        let mut listing = Listing::default();
        let objects = json["nftables"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for object in objects {
            if let Some(set) = object.get("set").filter(|s| s["table"] == TABLE) {
                let name = set["name"].as_str().unwrap_or_default().to_string();
                for item in set["elem"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    // `{"elem": {"val": KEY, "timeout": T, "expires": E}}` or a bare KEY.
                    let (key, expires) = match item.get("elem") {
                        Some(e) => (&e["val"], e["expires"].as_u64().unwrap_or(0)),
                        None => (item, 0),
                    };
                    if let Some(element) = Element::from_nft(&name, key) {
                        listing.elements.insert(element, expires);
                    }
                }
                listing.sets.insert(name);
            }
            if let Some(rule) = object.get("rule").filter(|r| r["table"] == TABLE) {
                let chain = rule["chain"].as_str().unwrap_or_default().to_string();
                *listing.rules.entry(chain).or_default() += 1;
            }
        }
        listing
    }

    /// Whether the table has every set and exactly the rules the agent
    /// builds. Anything else (a flushed chain, a deleted set, a stray rule)
    /// is damage, and the table is rebuilt.
    pub fn is_intact(&self) -> bool {
        let sets_ok = set_definitions()
            .iter()
            .all(|(name, _)| self.sets.contains(name));
        let rules_ok = chain_rules()
            .iter()
            .all(|(chain, rules)| self.rules.get(*chain).copied().unwrap_or(0) == rules.len())
            && self.rules.len() == chain_rules().len();
        sets_ok && rules_ok
    }

    pub fn rule_count(&self) -> usize {
        self.rules.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_elements_of_every_shape() {
        let listing = Listing::parse(&json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "antibody", "handle": 1}},
            {"set": {"family": "inet", "name": "addr4", "table": "antibody", "type": "ipv4_addr",
                     "elem": [{"elem": {"val": "10.0.0.1", "timeout": 30, "expires": 29}}]}},
            {"set": {"family": "inet", "name": "ports", "table": "antibody",
                     "elem": [{"elem": {"val": {"concat": ["tcp", 8080]}, "timeout": 30, "expires": 12}}]}},
            {"set": {"family": "inet", "name": "addr4", "table": "someone_else",
                     "elem": [{"elem": {"val": "10.9.9.9", "timeout": 30, "expires": 12}}]}},
            {"rule": {"family": "inet", "table": "antibody", "chain": "input", "expr": []}},
            {"rule": {"family": "inet", "table": "antibody", "chain": "input", "expr": []}},
        ]}));
        let expected: BTreeMap<Element, u64> = [
            (Element::isolate("10.0.0.1".parse().unwrap()), 29),
            (Element::isolate("tcp:8080".parse().unwrap()), 12),
        ]
        .into();
        assert_eq!(listing.elements, expected);
        assert_eq!(listing.rule_count(), 2);
        assert!(!listing.is_intact());
    }

    #[test]
    fn a_freshly_built_table_is_intact() {
        // What `nft -j list` shows after `rebuild_table` (handles left out).
        let mut objects = vec![];
        for (name, _) in set_definitions() {
            objects.push(json!({"set": {"family": "inet", "table": "antibody", "name": name}}));
        }
        for (chain, rules) in chain_rules() {
            for _ in rules {
                objects.push(json!({"rule": {"table": "antibody", "chain": chain}}));
            }
        }
        let listing = Listing::parse(&json!({ "nftables": objects }));
        assert!(listing.is_intact());
        let mut damaged = listing.clone();
        damaged.rules.insert("input".into(), 0);
        assert!(!damaged.is_intact());
    }
}
