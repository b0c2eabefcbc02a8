//! Canonical JSON (object keys sorted, no whitespace) and its SHA-256: the
//! alert's identity for dedupe and the ledger's record hashes.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Serializes with keys sorted at every depth. Sorting is done here rather
/// than trusting serde_json's map order, which a `preserve_order` feature
/// anywhere in the dependency graph would silently change.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Appends `value`'s canonical JSON to `out`, allocating nothing per key
/// or scalar (a ledger walk hashes a million records this way).
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Already in order unless a preserve_order map was built.
            if !entries.windows(2).all(|w| w[0].0 <= w[1].0) {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(text) => write_str(text, out),
        scalar => write_scalar(scalar, out),
    }
}

/// A JSON string as serde_json writes it. Most strings a record holds
/// (hashes, times, ids, kinds, keys) need no escape, and serde_json's
/// byte-at-a-time escaper cost 400 instructions a 64-digit hash (a
/// ledger record writes five): those are copied between quotes, after a
/// check that compiles to a few instructions per 16 bytes.
pub fn write_str(text: &str, out: &mut Vec<u8>) {
    // serde_json escapes `"`, `\` and the control characters, nothing else.
    let needs_escape = text.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        write_scalar(text, out);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// A string, number, bool or null as serde_json writes it, no whitespace.
pub fn write_scalar<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, value).expect("scalars serialize");
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_lower(&Sha256::digest(bytes))
}

/// Lower-case hex, by table. The `hex` crate's `encode` collects an
/// iterator of chars: about 1 700 instructions for a 32-byte hash, and
/// every ledger record spells one (callgrind, issue 18); this is a tenth
/// of that.
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0x0f)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

pub fn canonical_sha256(value: &Value) -> String {
    sha256_hex(canonical_json(value).as_bytes())
}

/// Random JSON of every kind, its strings full of what needs escaping
/// (for tests of what writes JSON).
#[cfg(test)]
pub(crate) fn random_json(rng: &mut fastrand::Rng, depth: u32) -> Value {
    use serde_json::json;
    let pool = [
        "a", "ü", "\"", "\\", "\n", "\u{1}", "é€", "z", "0", " ", "\u{2028}",
    ];
    let text = |rng: &mut fastrand::Rng| -> String {
        (0..rng.usize(0..6))
            .map(|_| pool[rng.usize(0..pool.len())])
            .collect()
    };
    match rng.u8(0..if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64() * 1e6 - 5e5),
        4 => json!(text(rng)),
        5 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.usize(0..5))
                .map(|_| (text(rng), random_json(rng, depth + 1)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hex_lower_spells_as_the_hex_crate_does() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_lower(&bytes), hex::encode(&bytes));
        assert_eq!(hex_lower(&[]), "");
    }

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
    fn a_string_is_written_as_serde_json_writes_it() {
        let mut every_char: Vec<String> = (0u32..0x3000)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b"))
            .collect();
        every_char.extend(
            [
                "",
                "\"",
                "\\",
                "\u{7f}",
                "\u{2028}",
                "\u{10ffff}",
                "plain-id_0:1.2",
            ]
            .map(String::from),
        );
        for text in every_char {
            let mut out = Vec::new();
            write_str(&text, &mut out);
            assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        let v = json!({"k\"": "line\nbreak"});
        assert_eq!(canonical_json(&v), r#"{"k\"":"line\nbreak"}"#);
    }

    /// The construction before this writer (a key re-made as a JSON string
    /// and printed, scalars printed): hashes must never change.
    fn earlier_canonical(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let parts: Vec<String> = keys
                    .into_iter()
                    .map(|k| {
                        format!(
                            "{}:{}",
                            Value::String(k.clone()),
                            earlier_canonical(&map[k])
                        )
                    })
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(earlier_canonical).collect();
                format!("[{}]", parts.join(","))
            }
            scalar => scalar.to_string(),
        }
    }

    #[test]
    fn the_writer_makes_exactly_what_the_earlier_construction_made() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let v = random_json(&mut rng, 0);
            assert_eq!(canonical_json(&v), earlier_canonical(&v), "{v}");
        }
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
