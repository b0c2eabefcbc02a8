//! The bridge's journal lines: every accepted request with its principal,
//! peer and plan, and every peer that starts being slowed down. Under
//! systemd (`JOURNAL_STREAM` set) they go to journald with fields
//! (`journalctl -u antibody-web ANTIBODY_WEB_PRINCIPAL=alice`); otherwise
//! to stderr, one line each.

use std::net::IpAddr;

use crate::sys::journal::{Journal, JournalEntry};

pub struct Audit {
    journal: Journal,
}

impl Audit {
    pub fn from_env() -> Audit {
        let journal = if std::env::var_os("JOURNAL_STREAM").is_some() {
            Journal::detect()
        } else {
            Journal::stderr()
        };
        Audit { journal }
    }

    /// An accepted request: `principal` did `what` from `peer`.
    pub fn accepted(&self, principal: &str, peer: IpAddr, what: &str, plan_id: Option<&str>) {
        let mut fields = vec![
            ("ANTIBODY_WEB_PRINCIPAL", principal.to_string()),
            ("ANTIBODY_WEB_PEER", peer.to_string()),
            ("ANTIBODY_WEB_REQUEST", what.to_string()),
        ];
        let plan = match plan_id {
            Some(id) => {
                fields.push(("ANTIBODY_PLAN_ID", id.to_string()));
                format!(" plan {id}")
            }
            None => String::new(),
        };
        self.journal.send(&JournalEntry {
            priority: 6,
            message: format!("antibody-web: {principal} from {peer}: {what}{plan}"),
            fields,
        });
    }

    /// A peer refused for its credentials (401); logged at notice level so
    /// a guesser shows in the journal.
    pub fn refused(&self, peer: IpAddr, why: &str) {
        self.journal.send(&JournalEntry {
            priority: 5,
            message: format!("antibody-web: refused credentials from {peer}: {why}"),
            fields: vec![("ANTIBODY_WEB_PEER", peer.to_string())],
        });
    }

    /// `peer` failed too often and is now answered 429 for `secs`.
    pub fn slowed(&self, peer: IpAddr, secs: u64) {
        self.journal.send(&JournalEntry {
            priority: 4,
            message: format!(
                "antibody-web: {peer} failed authentication too often; refused for {secs} s"
            ),
            fields: vec![("ANTIBODY_WEB_PEER", peer.to_string())],
        });
    }

    pub fn info(&self, message: &str) {
        self.journal.send(&JournalEntry {
            priority: 6,
            message: format!("antibody-web: {message}"),
            fields: vec![],
        });
    }
}
