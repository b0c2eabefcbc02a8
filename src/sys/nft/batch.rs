//! Pure builders of the nftables JSON batches the agent sends (`nft -j -f -`).
//! Every change is one batch, and a batch is one kernel transaction: it
//! applies whole or not at all. Only the table `inet antibody` is named.
//!
//! The table has a fixed set of rules; what is isolated or throttled lives
//! in typed sets with `flags timeout`, one element per mitigation, so the
//! kernel ends each one on time even if the agent is dead.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::element::{Element, RATE_CLASSES};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "antibody";
/// Our chains run just before the usual `filter` priority (0), so a drop
/// here holds whatever other tables accept.
const PRIORITY: i32 = -10;
/// Idle per-address meter entries of a throttle class are forgotten after this.
const METER_IDLE_SECS: u64 = 60;
const METER_SIZE: u64 = 65_535;

/// The `{"nftables": [...]}` document of a batch.
pub fn document(commands: Vec<Value>) -> Value {
    json!({ "nftables": commands })
}

fn table() -> Value {
    json!({"family": FAMILY, "name": TABLE})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn concat(a: Value, b: Value) -> Value {
    json!({"concat": [a, b]})
}

fn in_set(left: Value, set: &str) -> Value {
    json!({"match": {"op": "==", "left": left, "right": format!("@{set}")}})
}

fn tcp_or_udp() -> Value {
    json!({"match": {"op": "==", "left": meta("l4proto"), "right": {"set": ["tcp", "udp"]}}})
}

fn drop() -> Value {
    json!({"drop": null})
}

/// `ip saddr . th sport @peer4 drop`, limited to TCP and UDP: `th` reads the
/// first bytes of any transport header, and an ICMP checksum is no port.
fn peer_rule(ip: &str, addr: &str, port: &str, set: &str) -> Vec<Value> {
    vec![
        tcp_or_udp(),
        in_set(concat(payload(ip, addr), payload("th", port)), set),
        drop(),
    ]
}

/// `ip saddr @thr4_10 update @rl4_10 { ip saddr limit rate over 10/second } drop`:
/// membership picks the class, the meter keeps one token bucket per address.
fn throttle_rule(ip: &str, v: char, rate: u64) -> Vec<Value> {
    let saddr = payload(ip, "saddr");
    vec![
        in_set(saddr.clone(), &format!("thr{v}_{rate}")),
        json!({"set": {
            "op": "update",
            "elem": saddr,
            "set": format!("@rl{v}_{rate}"),
            "stmt": [{"limit": {"rate": rate, "per": "second", "inv": true}}],
        }}),
        drop(),
    ]
}

/// The rules of each chain, in order. Their number never depends on how
/// many entities are isolated or throttled.
pub fn chain_rules() -> BTreeMap<&'static str, Vec<Vec<Value>>> {
    let families = [("ip", '4'), ("ip6", '6')];
    let mut input = vec![vec![
        json!({"match": {"op": "==", "left": meta("iifname"), "right": "lo"}}),
        json!({"accept": null}),
    ]];
    let mut output = vec![vec![
        json!({"match": {"op": "==", "left": meta("oifname"), "right": "lo"}}),
        json!({"accept": null}),
    ]];
    let mut forward = Vec::new();
    for (ip, v) in families {
        let addr = format!("addr{v}");
        let peer = format!("peer{v}");
        input.push(vec![in_set(payload(ip, "saddr"), &addr), drop()]);
        output.push(vec![in_set(payload(ip, "daddr"), &addr), drop()]);
        forward.push(vec![in_set(payload(ip, "saddr"), &addr), drop()]);
        forward.push(vec![in_set(payload(ip, "daddr"), &addr), drop()]);
        // ADDR:PORT on either end of the packet: a remote service we talk
        // to, or one of our own addresses' ports.
        for chain in [&mut input, &mut output, &mut forward] {
            chain.push(peer_rule(ip, "saddr", "sport", &peer));
            chain.push(peer_rule(ip, "daddr", "dport", &peer));
        }
    }
    input.push(vec![
        in_set(concat(meta("l4proto"), payload("th", "dport")), "ports"),
        drop(),
    ]);
    output.push(vec![
        in_set(concat(meta("l4proto"), payload("th", "sport")), "ports"),
        drop(),
    ]);
    for (ip, v) in families {
        for rate in RATE_CLASSES {
            input.push(throttle_rule(ip, v, rate));
            forward.push(throttle_rule(ip, v, rate));
        }
    }
    BTreeMap::from([("input", input), ("output", output), ("forward", forward)])
}

/// Every set of the table: (name, `set` object without the table fields).
pub fn set_definitions() -> Vec<(String, Value)> {
    let timeout_set = |ty: Value| json!({"type": ty, "flags": ["timeout"]});
    let mut sets = vec![
        ("addr4".to_string(), timeout_set(json!("ipv4_addr"))),
        ("addr6".to_string(), timeout_set(json!("ipv6_addr"))),
        (
            "ports".to_string(),
            timeout_set(json!(["inet_proto", "inet_service"])),
        ),
        (
            "peer4".to_string(),
            timeout_set(json!(["ipv4_addr", "inet_service"])),
        ),
        (
            "peer6".to_string(),
            timeout_set(json!(["ipv6_addr", "inet_service"])),
        ),
    ];
    for (ty, v) in [("ipv4_addr", '4'), ("ipv6_addr", '6')] {
        for rate in RATE_CLASSES {
            sets.push((format!("thr{v}_{rate}"), timeout_set(json!(ty))));
            sets.push((
                format!("rl{v}_{rate}"),
                json!({"type": ty, "flags": ["timeout"], "timeout": METER_IDLE_SECS, "size": METER_SIZE}),
            ));
        }
    }
    sets
}

/// (Re)creates the whole table: `add` then `delete` then `add` makes it
/// empty whether or not it existed, all in the same transaction, so a
/// damaged table is never left half-built. Elements follow separately.
pub fn rebuild_table() -> Vec<Value> {
    let mut commands = vec![
        json!({"add": {"table": table()}}),
        json!({"delete": {"table": table()}}),
        json!({"add": {"table": table()}}),
    ];
    for (name, def) in set_definitions() {
        let mut set = json!({"family": FAMILY, "table": TABLE, "name": name});
        set.as_object_mut()
            .unwrap()
            .extend(def.as_object().unwrap().clone());
        commands.push(json!({"add": {"set": set}}));
    }
    let rules = chain_rules();
    for chain in rules.keys() {
        commands.push(json!({"add": {"chain": {
            "family": FAMILY, "table": TABLE, "name": chain,
            "type": "filter", "hook": chain, "prio": PRIORITY, "policy": "accept",
        }}}));
    }
    for (chain, rules) in rules {
        for expr in rules {
            commands.push(json!({"add": {"rule": {
                "family": FAMILY, "table": TABLE, "chain": chain, "expr": expr,
            }}}));
        }
    }
    commands
}

/// Removes the table (for `nft.remove_on_stop`); `add` first so the
/// batch succeeds if it is already gone.
pub fn remove_table() -> Vec<Value> {
    vec![
        json!({"add": {"table": table()}}),
        json!({"delete": {"table": table()}}),
    ]
}

/// One set's share of a batch.
#[derive(Default)]
struct SetChanges {
    /// Elements (with timeouts) to add.
    add: Vec<Value>,
    /// Elements (with timeouts) whose timeout changes, and their bare keys.
    retime: Vec<Value>,
    retime_keys: Vec<Value>,
    /// Keys to remove.
    gone: Vec<Value>,
}

fn element_command(verb: &str, set: &str, elems: Vec<Value>) -> Value {
    json!({verb: {"element": {"family": FAMILY, "table": TABLE, "name": set, "elem": elems}}})
}

fn with_timeout(element: &Element, timeout: u64) -> Value {
    json!({"elem": {"val": element.key(), "timeout": timeout.max(1)}})
}

/// What one batch does to elements (timeouts in seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ElementChanges {
    /// New elements: a plain `add`.
    pub add: Vec<(Element, u64)>,
    /// Elements that may exist and need this timeout: the kernel's `add`
    /// leaves an existing element's timeout alone, so each is added (a
    /// no-op if present), deleted and added again, within the one
    /// transaction. A delete costs the kernel an RCU grace period (≈ 15 ms
    /// here), which is why new elements take the plain path.
    pub retime: Vec<(Element, u64)>,
    /// Elements to delete, after an `add` so a missing one is no error.
    pub remove: Vec<Element>,
}

impl ElementChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.retime.is_empty() && self.remove.is_empty()
    }
}

/// Element changes as batch commands, grouped by set, in a stable order.
pub fn element_commands(changes: &ElementChanges) -> Vec<Value> {
    let mut by_set: BTreeMap<String, SetChanges> = BTreeMap::new();
    let sorted = |v: &[(Element, u64)]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    for (element, timeout) in sorted(&changes.add) {
        let set = by_set.entry(element.set_name()).or_default();
        set.add.push(with_timeout(&element, timeout));
    }
    for (element, timeout) in sorted(&changes.retime) {
        let set = by_set.entry(element.set_name()).or_default();
        set.retime.push(with_timeout(&element, timeout));
        set.retime_keys.push(element.key());
    }
    let mut removals = changes.remove.clone();
    removals.sort();
    for element in removals {
        by_set
            .entry(element.set_name())
            .or_default()
            .gone
            .push(element.key());
    }
    let mut commands = Vec::new();
    for (name, set) in by_set {
        if !set.add.is_empty() {
            commands.push(element_command("add", &name, set.add));
        }
        if !set.retime.is_empty() {
            commands.push(element_command("add", &name, set.retime.clone()));
            commands.push(element_command("delete", &name, set.retime_keys));
            commands.push(element_command("add", &name, set.retime));
        }
        if !set.gone.is_empty() {
            let placeholders = set
                .gone
                .iter()
                .map(|k| json!({"elem": {"val": k, "timeout": 1}}))
                .collect();
            commands.push(element_command("add", &name, placeholders));
            commands.push(element_command("delete", &name, set.gone));
        }
    }
    commands
}

/// New elements only: the common case of an isolation.
pub fn add_elements(adds: &[(Element, u64)]) -> Vec<Value> {
    element_commands(&ElementChanges {
        add: adds.to_vec(),
        ..ElementChanges::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(text: &str) -> Element {
        Element::isolate(text.parse().unwrap())
    }

    fn target(verb: &str, set: &str, elem: Value) -> Value {
        json!({verb: {"element": {"family": "inet", "table": "antibody", "name": set, "elem": elem}}})
    }

    #[test]
    fn a_new_isolation_is_one_add() {
        let batch = document(add_elements(&[(sid("tcp:8080"), 30)]));
        let elem = json!([{"elem": {"val": {"concat": ["tcp", 8080]}, "timeout": 30}}]);
        assert_eq!(batch, json!({"nftables": [target("add", "ports", elem)]}));
    }

    #[test]
    fn a_new_timeout_is_add_delete_add_in_one_transaction() {
        let changes = ElementChanges {
            retime: vec![(sid("tcp:8080"), 90)],
            ..ElementChanges::default()
        };
        let elem = json!([{"elem": {"val": {"concat": ["tcp", 8080]}, "timeout": 90}}]);
        assert_eq!(
            element_commands(&changes),
            [
                target("add", "ports", elem.clone()),
                target("delete", "ports", json!([{"concat": ["tcp", 8080]}])),
                target("add", "ports", elem),
            ]
        );
    }

    #[test]
    fn a_removal_tolerates_a_missing_element() {
        let batch = element_commands(&ElementChanges {
            remove: vec![sid("10.0.0.1")],
            ..ElementChanges::default()
        });
        assert_eq!(
            serde_json::to_string(&batch).unwrap(),
            r#"[{"add":{"element":{"elem":[{"elem":{"timeout":1,"val":"10.0.0.1"}}],"family":"inet","name":"addr4","table":"antibody"}}},{"delete":{"element":{"elem":["10.0.0.1"],"family":"inet","name":"addr4","table":"antibody"}}}]"#
        );
    }

    #[test]
    fn concurrent_changes_share_one_command_per_set_and_kind() {
        let batch = element_commands(&ElementChanges {
            add: vec![
                (sid("10.0.0.2"), 5),
                (sid("10.0.0.1"), 7),
                (sid("[fd00::1]:443"), 9),
            ],
            retime: vec![(sid("10.0.0.4"), 11)],
            remove: vec![sid("10.0.0.3")],
        });
        let sets: Vec<String> = batch
            .iter()
            .map(|c| {
                let (verb, body) = c.as_object().unwrap().iter().next().unwrap();
                format!("{verb} {}", body["element"]["name"].as_str().unwrap())
            })
            .collect();
        assert_eq!(
            sets,
            [
                "add addr4", // the two new ones
                "add addr4",
                "delete addr4",
                "add addr4", // the new timeout
                "add addr4",
                "delete addr4", // the removal
                "add peer6",
            ]
        );
        assert_eq!(
            batch[0]["add"]["element"]["elem"],
            json!([{"elem": {"val": "10.0.0.1", "timeout": 7}}, {"elem": {"val": "10.0.0.2", "timeout": 5}}])
        );
    }

    #[test]
    fn the_rule_count_is_fixed() {
        let rules = chain_rules();
        let count: usize = rules.values().map(Vec::len).sum();
        // input: lo + 2 addr + 4 peer + ports + 38 throttle; output: lo + 2 + 4 + ports;
        // forward: 4 addr + 4 peer + 38 throttle.
        assert_eq!(rules["input"].len(), 46);
        assert_eq!(rules["output"].len(), 8);
        assert_eq!(rules["forward"].len(), 46);
        assert_eq!(count, 100);
        assert_eq!(set_definitions().len(), 5 + 4 * RATE_CLASSES.len());
    }

    #[test]
    fn golden_throttle_rule_and_rebuild_prefix() {
        assert_eq!(
            json!(throttle_rule("ip", '4', 10)),
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@thr4_10"}},
                {"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                         "set": "@rl4_10", "stmt": [{"limit": {"rate": 10, "per": "second", "inv": true}}]}},
                {"drop": null},
            ])
        );
        let rebuild = rebuild_table();
        assert_eq!(
            rebuild[..4],
            [
                json!({"add": {"table": {"family": "inet", "name": "antibody"}}}),
                json!({"delete": {"table": {"family": "inet", "name": "antibody"}}}),
                json!({"add": {"table": {"family": "inet", "name": "antibody"}}}),
                json!({"add": {"set": {"family": "inet", "table": "antibody", "name": "addr4",
                                       "type": "ipv4_addr", "flags": ["timeout"]}}}),
            ]
        );
        // Nothing in any batch names another table.
        for command in rebuild.iter().chain(remove_table().iter()) {
            let text = command.to_string();
            assert!(text.contains(r#""antibody""#), "{text}");
        }
    }

    #[test]
    fn batches_fit_the_nftables_crate_schema() {
        let mut commands = rebuild_table();
        commands.extend(element_commands(&ElementChanges {
            add: vec![(sid("udp:53"), 3)],
            retime: vec![(Element::throttle("fd00::2".parse().unwrap(), 10), 4)],
            remove: vec![sid("10.0.0.1:80")],
        }));
        let doc = document(commands);
        let parsed: nftables::schema::Nftables =
            serde_json::from_value(doc.clone()).expect("the crate's schema accepts the batch");
        assert_eq!(
            parsed.objects.len(),
            doc["nftables"].as_array().unwrap().len()
        );
    }
}
