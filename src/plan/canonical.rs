//! Canonical JSON (object keys sorted, no whitespace) and its SHA-256: the
//! alert's identity for dedupe and the ledger's record hashes.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Serializes with keys sorted at every depth. Sorting is done here rather
/// than trusting serde_json's map order, which a `preserve_order` feature
/// anywhere in the dependency graph would silently change.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn canonical_sha256(value: &Value) -> String {
    sha256_hex(canonical_json(value).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sorted_at_every_depth_without_whitespace() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": true, "x": null}], "c": "s"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"s","z":[3,{"x":null,"y":true}]},"b":1}"#
        );
    }

    #[test]
    fn same_content_same_hash_regardless_of_layout() {
        let a: Value = serde_json::from_str(r#"{"x": 1, "y": [1,2]}"#).unwrap();
        let b: Value = serde_json::from_str("{\n \"y\":[1, 2],\"x\":1}").unwrap();
        assert_eq!(canonical_sha256(&a), canonical_sha256(&b));
        let c: Value = serde_json::from_str(r#"{"x": 1, "y": [2,1]}"#).unwrap();
        assert_ne!(canonical_sha256(&a), canonical_sha256(&c));
    }

    #[test]
    fn strings_are_escaped() {
        let v = json!({"k\"": "line\nbreak"});
        assert_eq!(canonical_json(&v), r#"{"k\"":"line\nbreak"}"#);
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
