//! What each host's immune system did and holds now, from a copy of its
//! journal (pure): the last record's time, its plans of the last 24 hours
//! by status, and the mitigations in force (applied timed actions whose end
//! has not come and that were not reverted). Each host's records are folded
//! into plans exactly as the agent's own replay folds its ledger.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::chain::HostReport;
use crate::engine::replay::fold_record;
use crate::ledger::Record;
use crate::plan::{ActionState, Plan};
use crate::time::{parse_rfc3339, rfc3339};

const DAY_MS: u64 = 86_400_000;

/// A mitigation a host holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InForce {
    pub plan_id: String,
    pub action: String,
    /// What it holds: the unit, the address or port, as the plan names it.
    pub target: String,
    pub until: String,
}

/// One host's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostSummary {
    pub machine_id: String,
    pub hostname: String,
    pub last_record: Option<String>,
    /// Plans created in the 24 hours before `now`, by status.
    pub plans_last_24h: BTreeMap<String, u64>,
    pub in_force: Vec<InForce>,
    pub chain_ok: bool,
    pub chain: String,
}

/// Every host's records, gathered as they are read.
#[derive(Default)]
pub struct Histories {
    hosts: BTreeMap<String, Vec<Record>>,
}

impl Histories {
    pub fn add(&mut self, machine_id: &str, record: Record) {
        self.hosts
            .entry(machine_id.to_string())
            .or_default()
            .push(record);
    }

    /// One summary per host the chain reports name, at `now_ms`.
    pub fn summarize(mut self, chains: &[HostReport], now_ms: u64) -> Vec<HostSummary> {
        chains
            .iter()
            .map(|chain| {
                let records = self.hosts.remove(&chain.machine_id).unwrap_or_default();
                summarize_host(chain, records, now_ms)
            })
            .collect()
    }
}

fn summarize_host(chain: &HostReport, mut records: Vec<Record>, now_ms: u64) -> HostSummary {
    records.sort_by_key(|r| r.seq);
    records.dedup_by_key(|r| r.seq);
    let mut plans: HashMap<String, Plan> = HashMap::new();
    for record in &records {
        fold_record(&mut plans, record, |_| None);
    }
    let last_record = records
        .iter()
        .filter_map(|r| parse_rfc3339(&r.ts))
        .max()
        .map(rfc3339);
    let mut plans_last_24h = BTreeMap::new();
    for plan in plans.values().filter(|p| p.created_ms + DAY_MS > now_ms) {
        *plans_last_24h
            .entry(plan.status.as_str().to_string())
            .or_default() += 1;
    }
    let mut in_force: Vec<InForce> = plans
        .values()
        .flat_map(|plan| {
            plan.actions.iter().filter_map(move |a| {
                let until = a.revert_at_ms.filter(|at| *at > now_ms)?;
                (a.seed.reversible && a.state == ActionState::Applied).then(|| InForce {
                    plan_id: plan.id.clone(),
                    action: a.seed.kind.clone(),
                    target: a.seed.targets.join(", "),
                    until: rfc3339(until),
                })
            })
        })
        .collect();
    in_force.sort_by(|a, b| (&a.until, &a.plan_id).cmp(&(&b.until, &b.plan_id)));
    HostSummary {
        machine_id: chain.machine_id.clone(),
        hostname: chain.hostname.clone(),
        last_record,
        plans_last_24h,
        in_force,
        chain_ok: chain.ok,
        chain: if chain.ok {
            "whole".into()
        } else {
            "BROKEN".into()
        },
    }
}

impl HostSummary {
    /// One line for a person.
    pub fn describe(&self) -> String {
        let plans = if self.plans_last_24h.is_empty() {
            "no plans".to_string()
        } else {
            self.plans_last_24h
                .iter()
                .map(|(status, n)| format!("{n} {status}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let in_force = if self.in_force.is_empty() {
            "nothing in force".to_string()
        } else {
            let each: Vec<String> = self
                .in_force
                .iter()
                .map(|m| format!("{} {} until {}", m.action, m.target, m.until))
                .collect();
            format!("{} in force ({})", self.in_force.len(), each.join("; "))
        };
        format!(
            "{} ({}): last record {}; last 24 h: {plans}; {in_force}; chain {}",
            self.hostname,
            self.machine_id,
            self.last_record.as_deref().unwrap_or("none"),
            self.chain
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::chain::{Chains, Mirrored};
    use crate::ledger::GENESIS;
    use crate::plan::{ActionSeed, Event, PlanSeed, PlanStatus, Severity, Source};
    use serde_json::json;

    /// A host's records for the events given, chained from genesis.
    fn records(events: Vec<(Option<&str>, Event)>, ts_ms: u64) -> Vec<Record> {
        let mut prev = GENESIS.to_string();
        events
            .into_iter()
            .enumerate()
            .map(|(i, (plan, event))| {
                let (kind, payload) = event.to_parts();
                let r = Record::seal(
                    i as u64 + 1,
                    rfc3339(ts_ms),
                    kind,
                    plan.map(str::to_string),
                    payload,
                    prev.clone(),
                );
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn isolation_plan(id: &str) -> PlanSeed {
        PlanSeed {
            id: id.into(),
            timestamp: "t".into(),
            source: Source::Manual,
            severity: Severity::High,
            description: "d".into(),
            alert_sha256: "h".into(),
            context: None,
            playbook: None,
            callback: false,
            actions: vec![ActionSeed {
                kind: "isolate_socket".into(),
                params: json!({"sid": "10.0.0.9"}),
                targets: vec!["addr:10.0.0.9".into()],
                reversible: true,
            }],
        }
    }

    #[test]
    fn a_host_shows_its_plans_of_the_day_and_what_it_holds_now() {
        let now = 1_800_000_000_000;
        let applied = |plan: &'static str, until: u64| {
            (
                Some(plan),
                Event::ActionApplied {
                    index: 0,
                    attempt: 1,
                    summary: "s".into(),
                    changes: json!({}),
                    revert_at_ms: Some(until),
                },
            )
        };
        let finished = |plan: &'static str| {
            (
                Some(plan),
                Event::PlanFinished {
                    status: PlanStatus::Success,
                },
            )
        };
        let history = records(
            vec![
                (
                    Some("p1"),
                    Event::PlanCreated {
                        plan: isolation_plan("p1"),
                    },
                ),
                (Some("p1"), Event::PlanStarted {}),
                applied("p1", now + 600_000),
                finished("p1"),
                (
                    Some("p2"),
                    Event::PlanCreated {
                        plan: isolation_plan("p2"),
                    },
                ),
                (Some("p2"), Event::PlanStarted {}),
                applied("p2", now - 1),
                finished("p2"),
            ],
            now - 60_000,
        );
        let mut chains = Chains::default();
        let mut histories = Histories::default();
        for r in history {
            if let Some(record) = chains.add(Mirrored::of("m3", "host3", &r)) {
                histories.add("m3", record);
            }
        }
        let reports = chains.reports();
        let summary = &histories.summarize(&reports, now)[0];
        assert_eq!(
            summary.plans_last_24h,
            BTreeMap::from([("success".to_string(), 2)])
        );
        assert_eq!(summary.in_force.len(), 1, "p2's end has come");
        assert_eq!(summary.in_force[0].target, "addr:10.0.0.9");
        assert!(summary.chain_ok);
        let line = summary.describe();
        assert!(line.starts_with("host3 (m3): last record "), "{line}");
        assert!(
            line.contains("last 24 h: 2 success; 1 in force (isolate_socket addr:10.0.0.9 until"),
            "{line}"
        );
    }
}
