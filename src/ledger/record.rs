//! One ledger record: a JSON line `{seq, ts, kind, plan_id, payload, prev, hash}`
//! where `hash` is the SHA-256 of the canonical JSON of every other field, and
//! `prev` is the previous record's `hash` (64 zeros for the first).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use sha2::{Digest, Sha256};

use crate::plan::canonical::{write_canonical, write_scalar, write_str};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `plan_id` is on every line, `null` for the agent's own records
/// (`agent_started`, `config_reloaded`, …). Lines written before that
/// (up to session 5) leave the key out for those records; their hash was
/// computed without it, and still is: `plan_id_on_line` remembers which.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "Line")]
pub struct Record {
    pub seq: u64,
    pub ts: String,
    pub kind: String,
    pub plan_id: Option<String>,
    pub payload: Value,
    pub prev: String,
    pub hash: String,
    /// False only for an older line without the key: its hash leaves it out.
    pub plan_id_on_line: bool,
}

/// A record as its JSON line has it.
#[derive(Deserialize)]
struct Line {
    seq: u64,
    ts: String,
    kind: String,
    /// Missing (older lines) → `None`; `null` → `Some(None)`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    plan_id: Option<Option<String>>,
    payload: Value,
    prev: String,
    hash: String,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl From<Line> for Record {
    fn from(line: Line) -> Record {
        Record {
            seq: line.seq,
            ts: line.ts,
            kind: line.kind,
            plan_id_on_line: line.plan_id.is_some(),
            plan_id: line.plan_id.flatten(),
            payload: line.payload,
            prev: line.prev,
            hash: line.hash,
        }
    }
}

/// A record as its JSON line has it, borrowed: a record is written out
/// once per step, and serde's `into` would clone it (payload and all) first.
#[derive(Serialize)]
struct LineRef<'a> {
    seq: u64,
    ts: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_id: Option<&'a Option<String>>,
    payload: &'a Value,
    prev: &'a str,
    hash: &'a str,
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        LineRef {
            seq: self.seq,
            ts: &self.ts,
            kind: &self.kind,
            plan_id: self.plan_id_on_line.then_some(&self.plan_id),
            payload: &self.payload,
            prev: &self.prev,
            hash: &self.hash,
        }
        .serialize(serializer)
    }
}

impl Record {
    /// Builds a record and computes its hash.
    pub fn seal(
        seq: u64,
        ts: String,
        kind: String,
        plan_id: Option<String>,
        payload: Value,
        prev: String,
    ) -> Record {
        let mut record = Record {
            seq,
            ts,
            kind,
            plan_id,
            payload,
            prev,
            hash: String::new(),
            plan_id_on_line: true,
        };
        record.hash = record.expected_hash();
        record
    }

    /// The hash this record's content calls for (whatever `hash` says).
    /// The SHA-256 of the canonical JSON of every field but `hash`: the
    /// object `{kind, payload, plan_id (when on the line), prev, seq, ts}`
    /// with its keys sorted, written straight into one buffer (a walk of
    /// the ledger hashes every record; no copy of the payload is made).
    pub fn expected_hash(&self) -> String {
        crate::plan::canonical::hex_lower(&self.expected_digest())
    }

    /// Whether `hash` is the hash of the record's content (compared as
    /// bytes: a walk of the ledger asks this of every record).
    pub fn hash_holds(&self) -> bool {
        parse_hash(&self.hash) == Some(self.expected_digest())
    }

    fn expected_digest(&self) -> [u8; 32] {
        hashed_form_digest(
            |out| write_canonical(&self.payload, out),
            HashedFields {
                seq: self.seq,
                ts: &self.ts,
                kind: &self.kind,
                plan_id: self.plan_id_on_line.then_some(self.plan_id.as_deref()),
                prev: &self.prev,
            },
        )
    }

    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("records always serialize");
        line.push('\n');
        line
    }
}

/// A record about to be sealed, its payload already written as canonical
/// JSON: the append path seals from these rather than from a [`Record`],
/// so the payload is serialized once, not once for the line and again for
/// the hash, and no `serde_json::Value` of it outlives the caller's
/// `Entry` (issue 18: building, writing twice and dropping that value was
/// the largest share of a record's cost). `payload_json` must be canonical
/// (what [`crate::plan::canonical::canonical_json`] writes): a reader
/// hashes the canonical form of the payload it parses.
pub(crate) struct Unsealed<'a> {
    pub seq: u64,
    pub ts: &'a str,
    pub kind: &'a str,
    pub plan_id: Option<&'a str>,
    /// The payload's canonical JSON ([`crate::plan::canonical`]).
    pub payload_json: &'a str,
    pub prev: &'a str,
}

/// A sealed record's hash, and its line with the newline.
pub(crate) struct SealedLine {
    pub hash: String,
    pub line: String,
    /// Where the payload's JSON lies in `line`.
    pub payload_at: std::ops::Range<usize>,
}

impl Unsealed<'_> {
    /// The record's hash and line: the same bytes [`Record::seal`] and
    /// [`Record::to_line`] make from the same content, since a canonical
    /// payload is what serde_json writes for a `Value` whose maps are
    /// sorted, and the line's other fields are scalars.
    pub fn seal(&self) -> SealedLine {
        let digest = hashed_form_digest(
            |out| out.extend_from_slice(self.payload_json.as_bytes()),
            HashedFields {
                seq: self.seq,
                ts: self.ts,
                kind: self.kind,
                plan_id: Some(self.plan_id),
                prev: self.prev,
            },
        );
        let hash = crate::plan::canonical::hex_lower(&digest);
        // The field order of `LineRef`, which older lines have too.
        let mut line = Vec::with_capacity(self.payload_json.len() + 256);
        line.extend_from_slice(b"{\"seq\":");
        write_scalar(&self.seq, &mut line);
        line.extend_from_slice(b",\"ts\":");
        write_str(self.ts, &mut line);
        line.extend_from_slice(b",\"kind\":");
        write_str(self.kind, &mut line);
        line.extend_from_slice(b",\"plan_id\":");
        write_plan_id(self.plan_id, &mut line);
        line.extend_from_slice(b",\"payload\":");
        let payload_start = line.len();
        line.extend_from_slice(self.payload_json.as_bytes());
        let payload_at = payload_start..line.len();
        line.extend_from_slice(b",\"prev\":");
        write_str(self.prev, &mut line);
        line.extend_from_slice(b",\"hash\":");
        write_str(&hash, &mut line);
        line.extend_from_slice(b"}\n");
        SealedLine {
            hash,
            line: String::from_utf8(line).expect("JSON is UTF-8"),
            payload_at,
        }
    }
}

/// A hash as the ledger writes it (64 lowercase hex digits) to its 32
/// bytes; anything else is `None`. Written out rather than taken from the
/// hex crate, whose decoder alone took longer than the SHA-256 it checks
/// (445 ns a hash against 160 ns: a ledger walk, and the journal verifier,
/// decode one or two per record).
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    /// Each byte's value as a lowercase hex digit, or 0xff.
    const NIBBLE: [u8; 256] = {
        let mut table = [0xffu8; 256];
        let mut digit = 0;
        while digit < 16 {
            table[b"0123456789abcdef"[digit] as usize] = digit as u8;
            digit += 1;
        }
        table
    };
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    // No early exit: a branch per digit cost more than the whole table walk.
    let mut invalid = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    (invalid & 0xf0 == 0).then_some(out)
}

/// A record's fields but its payload and hash, as its hash covers them.
struct HashedFields<'a> {
    seq: u64,
    ts: &'a str,
    kind: &'a str,
    /// `None` for an older line without the key: its hash leaves it out.
    plan_id: Option<Option<&'a str>>,
    prev: &'a str,
}

/// The SHA-256 of a record's hashed form: the canonical JSON object
/// `{kind, payload, plan_id (when on the line), prev, seq, ts}`, keys
/// sorted, written straight into one buffer per thread, reused record
/// after record (a walk of the ledger hashes every record; the writer
/// seals every one). `write_payload` writes the payload's canonical JSON.
fn hashed_form_digest(write_payload: impl FnOnce(&mut Vec<u8>), fields: HashedFields) -> [u8; 32] {
    thread_local! {
        static HASHED_FORM: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    HASHED_FORM.with(|buffer| {
        let mut out = buffer.borrow_mut();
        out.clear();
        out.extend_from_slice(b"{\"kind\":");
        write_str(fields.kind, &mut out);
        out.extend_from_slice(b",\"payload\":");
        write_payload(&mut out);
        if let Some(plan_id) = fields.plan_id {
            out.extend_from_slice(b",\"plan_id\":");
            write_plan_id(plan_id, &mut out);
        }
        out.extend_from_slice(b",\"prev\":");
        write_str(fields.prev, &mut out);
        out.extend_from_slice(b",\"seq\":");
        write_scalar(&fields.seq, &mut out);
        out.extend_from_slice(b",\"ts\":");
        write_str(fields.ts, &mut out);
        out.push(b'}');
        Sha256::digest(&*out).into()
    })
}

fn write_plan_id(plan_id: Option<&str>, out: &mut Vec<u8>) {
    match plan_id {
        Some(id) => write_str(id, out),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::canonical::canonical_sha256;
    use serde_json::json;

    #[test]
    fn a_hash_is_64_lowercase_hex_digits_and_nothing_else() {
        let digest: [u8; 32] = Sha256::digest(b"x").into();
        assert_eq!(parse_hash(&hex::encode(digest)), Some(digest));
        assert_eq!(parse_hash(GENESIS), Some([0u8; 32]));
        for wrong in [
            hex::encode(digest).to_uppercase(),
            hex::encode(digest)[..62].to_string(),
            format!("{}0", hex::encode(digest)),
            format!("{}g", &hex::encode(digest)[..63]),
            String::new(),
        ] {
            assert_eq!(parse_hash(&wrong), None, "{wrong}");
        }
        let mut r = Record::seal(1, "t".into(), "k".into(), None, json!({}), GENESIS.into());
        assert!(r.hash_holds());
        r.hash = r.hash.to_uppercase();
        assert!(
            !r.hash_holds(),
            "the writer writes lowercase; anything else was not written by it"
        );
    }

    #[test]
    fn hash_covers_every_field_but_itself() {
        let r = Record::seal(
            1,
            "t".into(),
            "k".into(),
            Some("p".into()),
            json!({"a":1}),
            GENESIS.into(),
        );
        assert_eq!(r.hash, r.expected_hash());
        let mut edited = r.clone();
        edited.payload = json!({"a": 2});
        assert_ne!(edited.expected_hash(), r.hash);
        let mut edited = r.clone();
        edited.plan_id = None;
        assert_ne!(edited.expected_hash(), r.hash);
        let back: Record = serde_json::from_str(r.to_line().trim_end()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn every_line_has_a_plan_id_and_older_lines_without_one_still_verify() {
        let r = Record::seal(
            1,
            "t".into(),
            "agent_started".into(),
            None,
            json!({}),
            GENESIS.into(),
        );
        let line = r.to_line();
        assert!(line.contains("\"plan_id\":null"), "{line}");
        let back: Record = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.expected_hash(), back.hash);
        // The hash covers the null too: it is one of "the other fields".
        let mut value = json!({"seq": 1, "ts": "t", "kind": "agent_started", "payload": {},
                               "prev": GENESIS, "plan_id": null});
        assert_eq!(canonical_sha256(&value), r.hash);
        // A line written before plan_id was always there.
        value.as_object_mut().unwrap().remove("plan_id");
        let old_hash = canonical_sha256(&value);
        value["hash"] = json!(old_hash);
        let old: Record = serde_json::from_value(value).unwrap();
        assert!(!old.plan_id_on_line);
        assert_eq!(old.expected_hash(), old_hash);
        assert!(!old.to_line().contains("plan_id"), "written back as it was");
    }

    #[test]
    fn a_line_sealed_from_canonical_json_is_byte_for_byte_the_records_line() {
        let mut rng = fastrand::Rng::with_seed(18);
        for i in 0..2000u64 {
            let payload = crate::plan::canonical::random_json(&mut rng, 0);
            let plan_id = rng.bool().then(|| format!("p\"{i}é"));
            let kind = if i % 7 == 0 {
                "k\n\"ind"
            } else {
                "action_applied"
            };
            let ts = crate::time::rfc3339(1_790_000_000_000 + i);
            let prev = if i == 0 {
                GENESIS.to_string()
            } else {
                "ab".repeat(32)
            };
            let record = Record::seal(
                i + 1,
                ts.clone(),
                kind.into(),
                plan_id.clone(),
                payload.clone(),
                prev.clone(),
            );
            let payload_json = crate::plan::canonical::canonical_json(&payload);
            let sealed = Unsealed {
                seq: i + 1,
                ts: &ts,
                kind,
                plan_id: plan_id.as_deref(),
                payload_json: &payload_json,
                prev: &prev,
            }
            .seal();
            assert_eq!(sealed.hash, record.hash, "{payload}");
            assert_eq!(sealed.line, record.to_line(), "{payload}");
            assert_eq!(&sealed.line[sealed.payload_at.clone()], payload_json);
            let back: Record = serde_json::from_str(sealed.line.trim_end()).unwrap();
            assert!(back.hash_holds());
            assert_eq!(back, record);
        }
    }

    #[test]
    fn the_hash_written_straight_is_the_hash_of_the_records_canonical_object() {
        let payloads = [
            json!({}),
            json!({"plan": {"id": "p", "actions": [{"type": "x", "params": {"b": 1, "a": [1.5, null, "é\n"]}}]}}),
            json!({"z": true, "a": {"y": -3, "x": "\"q\""}}),
        ];
        for (i, payload) in payloads.into_iter().enumerate() {
            for plan_id in [None, Some("p-1".to_string())] {
                let r = Record::seal(
                    i as u64 + 1,
                    "2026-11-30T00:00:00.000Z".into(),
                    "action_applied".into(),
                    plan_id.clone(),
                    payload.clone(),
                    "ab".repeat(32),
                );
                let value = json!({"seq": r.seq, "ts": r.ts, "kind": r.kind, "payload": payload,
                                   "prev": r.prev, "plan_id": plan_id});
                assert_eq!(r.hash, canonical_sha256(&value));
                assert_eq!(r.expected_hash(), r.hash);
            }
        }
    }
}
