//! One ledger record: a JSON line `{seq, ts, kind, plan_id, payload, prev, hash}`
//! where `hash` is the SHA-256 of the canonical JSON of every other field, and
//! `prev` is the previous record's `hash` (64 zeros for the first).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::canonical::canonical_sha256;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    pub payload: Value,
    pub prev: String,
    pub hash: String,
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
        };
        record.hash = record.expected_hash();
        record
    }

    /// The hash this record's content calls for (whatever `hash` says).
    pub fn expected_hash(&self) -> String {
        let mut value = serde_json::json!({
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "payload": self.payload,
            "prev": self.prev,
        });
        if let Some(id) = &self.plan_id {
            value["plan_id"] = Value::String(id.clone());
        }
        canonical_sha256(&value)
    }

    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("records always serialize");
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
