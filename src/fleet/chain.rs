//! Re-walking each host's ledger chain from a copy of its journal (pure).
//! Every journal entry that mirrors a ledger record carries the record's
//! exact line (`ANTIBODY_RECORD`), so the copy on a fleet's collector can
//! be checked as the ledger is: each record's hash against its content,
//! each `prev` against the record before, and the seq range for holes.
//!
//! A history that begins after seq 1 (the host's journal was vacuumed, or
//! retention removed the start) is said, not failed; so are entries an
//! agent older than this check wrote (a seq, no record) before the first
//! entry that carries its record. A hole in the middle, a record whose
//! hash or `prev` does not hold, two different records with one seq, an
//! entry whose fields (`ANTIBODY_SEQ`, `_HASH`, `_PREV`, `_KIND`,
//! `_PLAN_ID`) disagree with its record, or an entry after that first one
//! that mirrors a record without carrying it is a failure: a copy that
//! cannot be checked is never called whole. The entry's `MESSAGE` is for
//! people and is not checked.
//!
//! What a copy cannot show (the hash is unkeyed SHA-256, and the check
//! sees only what the copy holds): a history rewritten and resealed from
//! some record through its end, records removed from the start or the
//! end, a host whose entries are missing altogether, or hosts and entries
//! fabricated whole. Those need the host's own ledger
//! (`antibodyctl verify` there, its tip compared with the copy's).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ledger::record::parse_hash;
use crate::ledger::{Record, GENESIS};

/// One journal entry that mirrors a ledger record, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrored {
    /// `_MACHINE_ID` and `_HOSTNAME`, as journald stamped them.
    pub machine_id: String,
    pub hostname: String,
    /// `ANTIBODY_SEQ`, `ANTIBODY_HASH`, `ANTIBODY_PREV`, `ANTIBODY_KIND`,
    /// `ANTIBODY_PLAN_ID` (set only for a plan's record), `ANTIBODY_RECORD`.
    pub seq: Option<u64>,
    pub hash: Option<String>,
    pub prev: Option<String>,
    pub kind: Option<String>,
    pub plan_id: Option<String>,
    pub record: Option<String>,
    /// `_UID` and `_SYSTEMD_UNIT`, which journald sets from the sender
    /// (a local process cannot choose them).
    pub uid: Option<String>,
    pub unit: Option<String>,
}

#[cfg(test)]
impl Mirrored {
    /// The entry the agent's mirror writes for `record` (tests).
    pub(crate) fn of(machine_id: &str, hostname: &str, record: &Record) -> Mirrored {
        Mirrored {
            machine_id: machine_id.into(),
            hostname: hostname.into(),
            seq: Some(record.seq),
            hash: Some(record.hash.clone()),
            prev: Some(record.prev.clone()),
            kind: Some(record.kind.clone()),
            plan_id: record.plan_id.clone(),
            record: Some(record.to_line().trim_end().to_string()),
            uid: Some(AGENT_UID.into()),
            unit: Some(AGENT_UNIT.into()),
        }
    }
}

/// The unit and uid journald stamps on the agent's own entries.
pub const AGENT_UNIT: &str = "antibody.service";
pub const AGENT_UID: &str = "0";

/// The longest record line the check reads: far above any record the
/// agent writes (an alert is at most 64 KiB), so a longer one is forged
/// or cut, not a record.
pub const MAX_RECORD_LINE_BYTES: usize = 16 << 20;

/// Seqs `from..=to` that no entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Hole {
    pub from: u64,
    pub to: u64,
}

/// The first record (by seq) that does not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bad {
    pub seq: u64,
    pub why: String,
}

/// What the copy says of one host's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    pub machine_id: String,
    pub hostname: String,
    /// Distinct records seen.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The hash of the last record seen: once the upload has caught up,
    /// the host's own ledger tip (`antibodyctl verify` there) must match.
    pub last_hash: Option<String>,
    /// The history seen begins after seq 1 (not a failure).
    pub begins_after_start: bool,
    /// The seqs of the entries, before the first record seen, that carry
    /// no record: an agent older than this check mirrored them so, or the
    /// records were stripped (said, not checked; a gap among them is a
    /// hole all the same).
    pub without_records: Option<Hole>,
    /// Entries with a ledger record's `MESSAGE_ID` that journald did not
    /// stamp as written by `antibody.service` as root (`_SYSTEMD_UNIT`,
    /// `_UID`): any local process can send such an entry. Left out of
    /// the chain, counted here.
    pub set_aside: u64,
    pub holes: Vec<Hole>,
    /// Seq ranges the agent itself recorded it could not mirror
    /// (`journal_dropped`): holes there are explained, still holes.
    pub dropped_by_agent: Vec<Hole>,
    pub first_bad: Option<Bad>,
    pub versions: Vec<String>,
    pub ok: bool,
}

/// One record's place in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    seq: u64,
    hash: [u8; 32],
    prev: [u8; 32],
}

#[derive(Default)]
struct Host {
    hostname: String,
    links: Vec<Link>,
    bad: BTreeMap<u64, String>,
    /// Seqs of entries that carry no record.
    without_record: BTreeSet<u64>,
    set_aside: u64,
    versions: BTreeSet<String>,
    dropped: Vec<Hole>,
}

impl Host {
    fn bad(&mut self, seq: u64, why: String) {
        self.bad.entry(seq).or_insert(why);
    }
}

/// The chains of every host seen, built entry by entry.
#[derive(Default)]
pub struct Chains {
    hosts: BTreeMap<String, Host>,
}

impl Chains {
    /// Takes one entry; returns its record when it holds one whose hash
    /// matches its content (for [`super::summary`]).
    pub fn add(&mut self, mut entry: Mirrored) -> Option<Record> {
        let host = self
            .hosts
            .entry(std::mem::take(&mut entry.machine_id))
            .or_default();
        if !entry.hostname.is_empty() {
            host.hostname = std::mem::take(&mut entry.hostname);
        }
        if entry.uid.as_deref() != Some(AGENT_UID) || entry.unit.as_deref() != Some(AGENT_UNIT) {
            host.set_aside += 1;
            return None;
        }
        let field_seq = entry.seq.unwrap_or(0);
        let Some(text) = entry.record.take() else {
            match entry.seq {
                Some(seq) => host.without_record.insert(seq),
                None => {
                    host.bad(
                        0,
                        "an entry carries neither ANTIBODY_RECORD nor a readable ANTIBODY_SEQ"
                            .into(),
                    );
                    false
                }
            };
            return None;
        };
        if text.len() > MAX_RECORD_LINE_BYTES {
            host.bad(
                field_seq,
                format!("its ANTIBODY_RECORD is longer than {MAX_RECORD_LINE_BYTES} bytes, so it is not a record the agent wrote"),
            );
            return None;
        }
        let record: Record = match serde_json::from_str(&text) {
            Ok(record) => record,
            Err(e) => {
                host.bad(
                    field_seq,
                    format!("its ANTIBODY_RECORD is not a ledger record ({e})"),
                );
                return None;
            }
        };
        let (hash, prev) = match (parse_hash(&record.hash), parse_hash(&record.prev)) {
            (Some(hash), Some(prev)) => (hash, prev),
            _ => {
                host.bad(
                    record.seq,
                    "its hash or prev is not 64 hexadecimal digits".into(),
                );
                return None;
            }
        };
        if !record.hash_holds() {
            host.bad(
                record.seq,
                "its hash does not match its content (the record was altered)".into(),
            );
            return None;
        }
        let disagreeing = fields_disagreeing(&entry, &record);
        if !disagreeing.is_empty() {
            host.bad(
                record.seq,
                format!(
                    "its journal entry's {} disagree(s) with its record",
                    disagreeing.join(", ")
                ),
            );
        }
        match record.kind.as_str() {
            "agent_started" => {
                if let Some(version) = record.payload["version"].as_str() {
                    host.versions.insert(version.to_string());
                }
            }
            "journal_dropped" => {
                let seqs = (
                    record.payload["first_seq"].as_u64(),
                    record.payload["last_seq"].as_u64(),
                );
                if let (Some(from), Some(to)) = seqs {
                    host.dropped.push(Hole { from, to });
                }
            }
            _ => {}
        }
        host.links.push(Link {
            seq: record.seq,
            hash,
            prev,
        });
        Some(record)
    }

    /// Each host's report, hosts by machine id.
    pub fn reports(self) -> Vec<HostReport> {
        self.hosts
            .into_iter()
            .map(|(machine_id, host)| report(machine_id, host))
            .collect()
    }
}

/// The journal fields that say something other than the record they
/// carry: each is there for `journalctl` filters, so each must not lie.
fn fields_disagreeing(entry: &Mirrored, record: &Record) -> Vec<&'static str> {
    let checks = [
        ("ANTIBODY_SEQ", entry.seq == Some(record.seq)),
        (
            "ANTIBODY_HASH",
            entry.hash.as_deref() == Some(record.hash.as_str()),
        ),
        (
            "ANTIBODY_PREV",
            entry.prev.as_deref() == Some(record.prev.as_str()),
        ),
        (
            "ANTIBODY_KIND",
            entry.kind.as_deref() == Some(record.kind.as_str()),
        ),
        ("ANTIBODY_PLAN_ID", entry.plan_id == record.plan_id),
    ];
    checks
        .into_iter()
        .filter(|(_, agrees)| !agrees)
        .map(|(name, _)| name)
        .collect()
}

fn report(machine_id: String, mut host: Host) -> HostReport {
    let mut links = std::mem::take(&mut host.links);
    links.sort_by_key(|l| (l.seq, l.hash));
    links.dedup();
    // Entries without their record: those before the first record are an
    // older agent's, or stripped (said); any after it lost its record (bad).
    let first_record = links.first().map(|l| l.seq);
    let (older, lost): (Vec<u64>, Vec<u64>) = std::mem::take(&mut host.without_record)
        .into_iter()
        .partition(|seq| first_record.is_some_and(|first| *seq < first));
    if let Some(seq) = lost.first() {
        let why = match first_record {
            Some(_) => "its journal entry carries no ANTIBODY_RECORD though earlier ones do (dropped or cut), so it cannot be checked",
            None => "no journal entry of this host carries its ANTIBODY_RECORD (an agent older than this check wrote them, or they were stripped), so nothing can be checked",
        };
        host.bad(*seq, why.into());
    }
    if links.is_empty() && lost.is_empty() && host.set_aside > 0 {
        host.bad(
            0,
            format!("none of its entries was written by {AGENT_UNIT} as root, so nothing can be checked"),
        );
    }
    // Holes over every seq seen, with or without its record.
    let seen: Vec<u64> = older
        .iter()
        .copied()
        .chain(links.iter().map(|l| l.seq))
        .collect();
    let holes: Vec<Hole> = seen
        .windows(2)
        .filter(|pair| pair[1] > pair[0] + 1)
        .map(|pair| Hole {
            from: pair[0] + 1,
            to: pair[1] - 1,
        })
        .collect();
    for pair in links.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if after.seq == before.seq {
            host.bad(
                after.seq,
                format!("two different records have seq {}", after.seq),
            );
        } else if after.seq == before.seq + 1 && after.prev != before.hash {
            host.bad(
                after.seq,
                format!(
                    "its prev does not match the hash of record seq {}",
                    before.seq
                ),
            );
        }
    }
    let genesis = parse_hash(GENESIS).expect("64 hex digits");
    if let Some(first) = links.first().filter(|l| l.seq == 1 && l.prev != genesis) {
        host.bad(
            first.seq,
            "the first record does not follow the genesis hash".into(),
        );
    }
    let first_bad = host
        .bad
        .into_iter()
        .next()
        .map(|(seq, why)| Bad { seq, why });
    let (first_seq, last_seq) = (seen.first().copied(), links.last().map(|l| l.seq));
    let distinct = links.iter().map(|l| l.seq).collect::<BTreeSet<_>>().len() as u64;
    HostReport {
        machine_id,
        hostname: host.hostname,
        records: distinct,
        first_seq,
        last_seq,
        last_hash: links.last().map(|l| hex::encode(l.hash)),
        begins_after_start: first_seq.is_some_and(|s| s > 1),
        without_records: older.first().zip(older.last()).map(|(from, to)| Hole {
            from: *from,
            to: *to,
        }),
        set_aside: host.set_aside,
        ok: first_bad.is_none() && holes.is_empty(),
        holes,
        dropped_by_agent: host.dropped,
        first_bad,
        versions: host.versions.into_iter().collect(),
    }
}

impl HostReport {
    /// One line for a person.
    pub fn describe(&self) -> String {
        let name = if self.hostname.is_empty() {
            self.machine_id.clone()
        } else {
            format!("{} ({})", self.hostname, self.machine_id)
        };
        let range = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..{b}"),
            _ => "no records".into(),
        };
        let mut parts = vec![format!("{} record(s), {range}", self.records)];
        if let Some(hash) = &self.last_hash {
            parts.push(format!("tip hash {hash}"));
        }
        if self.begins_after_start {
            parts.push(format!(
                "history begins at seq {} (earlier records are not in this copy)",
                self.first_seq.unwrap_or(0)
            ));
        }
        if let Some(Hole { from, to }) = self.without_records {
            parts.push(format!(
                "entries seq {from}..{to} carry no record (an older agent's, or stripped): not checked"
            ));
        }
        if self.set_aside > 0 {
            parts.push(format!(
                "{} entr(ies) SET ASIDE: Antibody's MESSAGE_ID, not written by {AGENT_UNIT} as root",
                self.set_aside
            ));
        }
        for hole in &self.holes {
            let explained = self
                .dropped_by_agent
                .iter()
                .any(|d| d.from <= hole.from && hole.to <= d.to);
            let seqs = if hole.from == hole.to {
                format!("seq {}", hole.from)
            } else {
                format!("seq {}..{}", hole.from, hole.to)
            };
            parts.push(match explained {
                true => {
                    format!("HOLE at {seqs} (the agent recorded that journald could not take them)")
                }
                false => format!("HOLE at {seqs}"),
            });
        }
        if let Some(bad) = &self.first_bad {
            parts.push(format!("first BAD record at seq {}: {}", bad.seq, bad.why));
        }
        if !self.versions.is_empty() {
            parts.push(format!("agent version(s) {}", self.versions.join(", ")));
        }
        let verdict = if self.ok {
            "chain whole"
        } else {
            "chain BROKEN"
        };
        format!("{name}: {verdict}; {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A host's chain of `n` records, as its journal would mirror them.
    fn chain(machine: &str, n: u64) -> Vec<(Record, Mirrored)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let kind = if seq == 1 {
                    "agent_started"
                } else {
                    "plan_started"
                };
                let record = Record::seal(
                    seq,
                    "2026-11-30T00:00:00.000Z".into(),
                    kind.into(),
                    None,
                    json!({"version": "0.1.0"}),
                    prev.clone(),
                );
                prev = record.hash.clone();
                let mirrored = mirror(machine, &record);
                (record, mirrored)
            })
            .collect()
    }

    fn mirror(machine: &str, record: &Record) -> Mirrored {
        Mirrored::of(machine, &format!("host-{machine}"), record)
    }

    /// Just the entries of [`chain`].
    fn entries_of(machine: &str, n: u64) -> Vec<Mirrored> {
        chain(machine, n).into_iter().map(|(_, m)| m).collect()
    }

    /// Why the first bad record is bad.
    fn why(report: &HostReport) -> &str {
        &report.first_bad.as_ref().expect("a bad record").why
    }

    fn verify(entries: impl IntoIterator<Item = Mirrored>) -> Vec<HostReport> {
        let mut chains = Chains::default();
        for e in entries {
            chains.add(e);
        }
        chains.reports()
    }

    #[test]
    fn whole_chains_of_several_hosts_in_any_order_verify() {
        let mut entries = entries_of("a", 5);
        entries.extend(chain("b", 3).into_iter().map(|(_, m)| m).rev());
        entries.push(entries[0].clone()); // a duplicate is the same record
        let reports = verify(entries);
        assert_eq!(reports.len(), 2);
        for r in &reports {
            assert!(r.ok, "{}", r.describe());
            assert_eq!(r.versions, ["0.1.0"]);
        }
        assert_eq!(reports[0].records, 5);
        assert_eq!(
            reports[0].last_hash.as_deref(),
            Some(chain("a", 5)[4].0.hash.as_str())
        );
        assert!(reports[0]
            .describe()
            .starts_with("host-a (a): chain whole; 5 record(s), seq 1..5"));
    }

    #[test]
    fn a_history_that_begins_later_is_said_not_failed() {
        let entries = chain("a", 9).into_iter().skip(4).map(|(_, m)| m);
        let report = &verify(entries)[0];
        assert!(report.ok && report.begins_after_start);
        assert!(report.describe().contains("history begins at seq 5"));
    }

    #[test]
    fn a_missing_record_is_a_hole_and_an_altered_one_is_bad() {
        let mut entries = entries_of("a", 10);
        entries.remove(6); // seq 7
        entries.remove(2); // seq 3
        let report = &verify(entries.clone())[0];
        assert!(!report.ok);
        assert_eq!(
            report.holes,
            [Hole { from: 3, to: 3 }, Hole { from: 7, to: 7 }]
        );
        assert!(report.describe().contains("HOLE at seq 3; HOLE at seq 7"));

        let mut altered = chain("a", 6);
        let text = altered[3]
            .1
            .record
            .take()
            .unwrap()
            .replace("0.1.0", "6.6.6");
        altered[3].1.record = Some(text);
        let report = &verify(altered.into_iter().map(|(_, m)| m))[0];
        assert_eq!(report.first_bad.as_ref().unwrap().seq, 4);
        assert!(why(report).contains("does not match its content"));
    }

    #[test]
    fn a_record_rewritten_with_its_own_hash_breaks_the_next_prev() {
        let mut entries = chain("a", 5);
        // Rewritten and resealed: its own hash holds, the link after it not.
        let forged = Record::seal(
            3,
            "t".into(),
            "plan_started".into(),
            None,
            json!({"x": 1}),
            entries[1].0.hash.clone(),
        );
        entries[2].1 = mirror("a", &forged);
        let report = &verify(entries.into_iter().map(|(_, m)| m))[0];
        let bad = report.first_bad.as_ref().unwrap();
        assert_eq!(bad.seq, 4);
        assert!(bad
            .why
            .contains("prev does not match the hash of record seq 3"));
    }

    #[test]
    fn an_entry_without_its_record_and_two_records_with_one_seq_are_failures() {
        let mut entries = entries_of("a", 4);
        entries[1].record = None;
        let report = &verify(entries.clone())[0];
        assert!(!report.ok);
        assert!(why(report).contains("carries no ANTIBODY_RECORD"));

        let other = chain("a", 4)[1].0.clone();
        let mut twin = other.clone();
        twin.payload = json!({"version": "other"});
        let twin = Record::seal(2, twin.ts, twin.kind, None, twin.payload, twin.prev);
        let mut entries = entries_of("a", 4);
        entries.push(mirror("a", &twin));
        let report = &verify(entries)[0];
        assert!(why(report).contains("two different records have seq 2"));
    }

    #[test]
    fn an_older_agents_entries_before_the_first_record_are_said_not_failed() {
        let mut entries = entries_of("a", 6);
        for entry in &mut entries[..3] {
            entry.record = None;
        }
        let report = &verify(entries.clone())[0];
        assert!(report.ok, "{}", report.describe());
        assert_eq!(report.without_records, Some(Hole { from: 1, to: 3 }));
        assert_eq!((report.first_seq, report.records), (Some(1), 3));
        assert!(report.describe().contains(
            "entries seq 1..3 carry no record (an older agent's, or stripped): not checked"
        ));

        // A gap among them, or between them and the first record, is a hole.
        let mut gapped = entries.clone();
        gapped.remove(3); // seq 4, the first record
        gapped.remove(1); // seq 2
        let report = &verify(gapped)[0];
        assert!(!report.ok);
        assert_eq!(
            report.holes,
            [Hole { from: 2, to: 2 }, Hole { from: 4, to: 4 }]
        );

        // One after the first record lost its record: that one is bad.
        entries[4].record = None;
        let report = &verify(entries.clone())[0];
        assert!(!report.ok);
        assert_eq!(report.first_bad.as_ref().unwrap().seq, 5);

        // None at all carries its record: nothing was checked.
        for entry in &mut entries {
            entry.record = None;
        }
        let report = &verify(entries)[0];
        assert!(!report.ok);
        assert!(why(report).contains("nothing can be checked"));
    }

    #[test]
    fn an_entry_whose_fields_disagree_with_its_record_is_bad() {
        type Tamper = fn(&mut Mirrored);
        let tamper: [(&str, Tamper); 4] = [
            ("ANTIBODY_KIND", |m| m.kind = Some("plan_succeeded".into())),
            ("ANTIBODY_PREV", |m| m.prev = Some(GENESIS.into())),
            ("ANTIBODY_PLAN_ID", |m| m.plan_id = Some("p-forged".into())),
            ("ANTIBODY_SEQ", |m| m.seq = Some(9)),
        ];
        for (field, change) in tamper {
            let mut entries = entries_of("a", 4);
            change(&mut entries[2]);
            let report = &verify(entries)[0];
            let bad = report.first_bad.as_ref().expect(field);
            assert_eq!(bad.seq, 3, "{field}");
            assert!(bad.why.contains(field), "{field}: {}", bad.why);
        }
    }

    #[test]
    fn a_record_longer_than_any_the_agent_writes_is_bad() {
        let mut entries = entries_of("a", 3);
        entries[1].record = Some("x".repeat(MAX_RECORD_LINE_BYTES + 1));
        let report = &verify(entries)[0];
        let bad = report.first_bad.as_ref().unwrap();
        assert_eq!(bad.seq, 2);
        assert!(bad.why.contains("longer than"));
    }

    #[test]
    fn entries_not_stamped_as_the_agents_are_set_aside_and_said() {
        let mut entries = entries_of("a", 4);
        // A local user's forgery: another record at seq 3, and one past the tip.
        let mut forged = chain("a", 5);
        forged[2].1.record = Some(forged[2].1.record.take().unwrap().replace("0.1.0", "9"));
        for (_, mut m) in forged.into_iter().skip(2) {
            m.uid = Some("1000".into());
            m.unit = Some("user@1000.service".into());
            entries.push(m);
        }
        let report = &verify(entries)[0];
        assert!(report.ok, "{}", report.describe());
        assert_eq!((report.set_aside, report.last_seq), (3, Some(4)));
        assert!(report.describe().contains(
            "3 entr(ies) SET ASIDE: Antibody's MESSAGE_ID, not written by antibody.service as root"
        ));

        // A host with nothing but such entries is not called whole.
        let mut only = entries_of("b", 2);
        for m in &mut only {
            m.unit = None;
        }
        let report = &verify(only)[0];
        assert!(!report.ok);
        assert!(why(report).contains("nothing can be checked"));
    }

    #[test]
    fn an_entry_with_neither_record_nor_seq_is_bad() {
        let mut entries = entries_of("a", 3);
        entries[2].record = None;
        entries[2].seq = None;
        let report = &verify(entries)[0];
        let bad = report.first_bad.as_ref().unwrap();
        assert_eq!(bad.seq, 0);
        assert!(bad
            .why
            .contains("neither ANTIBODY_RECORD nor a readable ANTIBODY_SEQ"));
    }
}
