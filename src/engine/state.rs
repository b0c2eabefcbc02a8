//! The engine's bookkeeping, without I/O: every plan, the dedupe index, the
//! queue in submission order, what runs, and timed reverts to come.
//! Scheduling is a pure function of this state.

use std::collections::{BTreeMap, BTreeSet};

use super::maps::{FastMap, FastSet};
use super::offences::{ArchivedOffence, Offences};
use crate::plan::{Plan, PlanStatus};

#[derive(Default)]
pub struct EngineState {
    pub plans: FastMap<String, Plan>,
    /// Plan ids by the seq of their `plan_created` record (submission order).
    by_seq: BTreeMap<u64, String>,
    /// Alert hash → the newest plan made from it, for plans in memory.
    dedupe: FastMap<String, String>,
    /// Alert hash → a finished plan archived out of memory while its
    /// dedupe window still runs. Only this is kept, not the plan: under a
    /// flood of distinct alerts, plans held for the whole window took
    /// memory in proportion to the rate (about 10 KB each; the flood test
    /// saw 370 MB after 90 s at 430 plans/s).
    archived_dedupe: FastMap<String, ArchivedDedupe>,
    /// Accepted plans that have work to do, by submission order.
    waiting: BTreeMap<u64, String>,
    pub running: FastSet<String>,
    /// (deadline ms, plan id, action index) of timed reverts to come.
    timers: BTreeSet<(u64, String, usize)>,
    /// Mitigations in force in the plans in memory, kept up to date as
    /// plans come, change and go, so `Status` never walks every action.
    active: usize,
    /// Mitigations in force in plans archived out of memory.
    archived_active: usize,
    /// Playbook offences of plans archived out of memory, for escalation.
    pub offences: Offences,
}

/// What the dedupe window needs of a finished plan no longer in memory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchivedDedupe {
    pub alert_sha256: String,
    pub plan_id: String,
    pub finished_ms: u64,
    /// The seq of its `plan_created` record: retention keeps the ledger
    /// (and so the plan's archive) from here while the window runs.
    #[serde(default)]
    pub seq: u64,
}

fn in_force(plan: &Plan) -> usize {
    plan.in_force_count()
}

impl EngineState {
    /// Rebuilds the bookkeeping from plans (after replaying the ledger),
    /// with `archived_active` mitigations in force in archived plans.
    pub fn from_plans(
        plans: impl IntoIterator<Item = Plan>,
        archived_active: usize,
        archived_dedupe: Vec<ArchivedDedupe>,
        archived_offences: Vec<ArchivedOffence>,
    ) -> EngineState {
        let mut state = EngineState {
            archived_active,
            offences: Offences::from_checkpoint(archived_offences),
            archived_dedupe: archived_dedupe
                .into_iter()
                .map(|d| (d.alert_sha256.clone(), d))
                .collect(),
            ..EngineState::default()
        };
        let mut plans: Vec<Plan> = plans.into_iter().collect();
        plans.sort_by_key(|p| p.seq);
        for plan in plans {
            let needs_work = !plan.status.is_finished() || plan.rolling_back();
            let id = plan.id.clone();
            let seq = plan.seq;
            state.add_timers(&plan);
            state.insert(plan);
            if needs_work {
                state.waiting.insert(seq, id);
            }
        }
        state
    }

    /// Adds a newly durable plan and queues it.
    pub fn accept(&mut self, plan: Plan) {
        self.waiting.insert(plan.seq, plan.id.clone());
        self.insert(plan);
    }

    fn insert(&mut self, plan: Plan) {
        self.by_seq.insert(plan.seq, plan.id.clone());
        // The newest plan of an alert answers it: an older one taken back
        // into memory (a rollback of an archived plan) must not hide it.
        let newer = match self.dedupe.get(&plan.alert_sha256) {
            Some(current) => self
                .plans
                .get(current)
                .is_none_or(|c| c.id == plan.id || c.seq <= plan.seq),
            None => true,
        };
        if newer {
            self.dedupe
                .insert(plan.alert_sha256.clone(), plan.id.clone());
        }
        self.active += in_force(&plan);
        if let Some(old) = self.plans.insert(plan.id.clone(), plan) {
            self.active -= in_force(&old);
        }
    }

    /// Folds a durable event into its plan, keeping the count of
    /// mitigations in force.
    pub fn fold(&mut self, id: &str, event: &crate::plan::Event, seq: u64, ts_ms: u64) {
        if let Some(plan) = self.plans.get_mut(id) {
            let before = in_force(plan);
            plan.apply_event(event, ts_ms);
            plan.last_seq = plan.last_seq.max(seq);
            self.active = self.active + in_force(plan) - before;
        }
    }

    /// Puts a finished plan back in the queue (for a rollback).
    pub fn requeue(&mut self, id: &str) {
        if let Some(plan) = self.plans.get(id) {
            self.waiting.insert(plan.seq, id.to_string());
        }
    }

    /// The live plan for an identical alert: pending, running, or finished
    /// less than `window_ms` ago.
    pub fn dedupe_hit(&self, alert_sha256: &str, now_ms: u64, window_ms: u64) -> Option<&str> {
        let within = |done: u64| now_ms < done.saturating_add(window_ms);
        let in_memory = self
            .dedupe
            .get(alert_sha256)
            .and_then(|id| self.plans.get(id))
            .filter(|p| p.finished_ms.is_none_or(within))
            .map(|p| (p.seq, p.id.as_str()));
        let archived = self
            .archived_dedupe
            .get(alert_sha256)
            .filter(|d| within(d.finished_ms))
            .map(|d| (d.seq, d.plan_id.as_str()));
        // The newer of the two: an older plan of the alert may be in memory
        // (taken back for a rollback, or kept for a timed revert) while a
        // newer one was archived.
        in_memory
            .into_iter()
            .chain(archived)
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, id)| id)
    }

    /// Forgets archived plans' dedupe entries whose window has passed.
    pub fn prune_dedupe(&mut self, now_ms: u64, window_ms: u64) {
        self.archived_dedupe
            .retain(|_, d| now_ms < d.finished_ms.saturating_add(window_ms));
    }

    /// The archived plans' dedupe entries, for a checkpoint.
    pub fn archived_dedupe(&self) -> Vec<ArchivedDedupe> {
        self.archived_dedupe.values().cloned().collect()
    }

    /// Accepted plans not yet finished (queued and running).
    pub fn open_plans(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    pub fn queue_depth(&self) -> usize {
        self.waiting.len()
    }

    /// The targets of the plans running now (or held by a timed revert).
    pub fn busy_targets(&self) -> FastSet<String> {
        self.running
            .iter()
            .filter_map(|id| self.plans.get(id))
            .flat_map(|p| p.targets().map(str::to_string))
            .collect()
    }

    /// Plans to start now: in submission order, at most `max_concurrent`
    /// running, and never two plans sharing a target — a plan waits while
    /// an earlier one on any of its targets runs or waits.
    pub fn take_runnable(&mut self, max_concurrent: usize) -> Vec<String> {
        let mut blocked = self.busy_targets();
        let mut picked = Vec::new();
        for (seq, id) in &self.waiting {
            if self.running.len() + picked.len() >= max_concurrent {
                break;
            }
            let Some(plan) = self.plans.get(id) else {
                continue;
            };
            let targets: Vec<String> = plan.targets().map(str::to_string).collect();
            let free = targets.iter().all(|t| !blocked.contains(t));
            blocked.extend(targets);
            if free {
                picked.push((*seq, id.clone()));
            }
        }
        for (seq, id) in &picked {
            self.waiting.remove(seq);
            self.running.insert(id.clone());
        }
        picked.into_iter().map(|(_, id)| id).collect()
    }

    pub fn finish_running(&mut self, id: &str) {
        self.running.remove(id);
    }

    /// Finished plans memory need not hold: nothing left to run or revert
    /// on a timer, and older than the newest `keep` finished (an identical
    /// alert within the dedupe window still finds them: `archived_dedupe`).
    pub fn evictable(&self, keep: usize) -> Vec<String> {
        let waiting: FastSet<&String> = self.waiting.values().collect();
        let timed: FastSet<&String> = self.timers.iter().map(|(_, id, _)| id).collect();
        self.by_seq
            .values()
            .rev()
            .filter_map(|id| self.plans.get(id))
            .filter(|p| p.status.is_finished())
            .skip(keep)
            .filter(|p| {
                !self.running.contains(&p.id)
                    && !waiting.contains(&p.id)
                    && !timed.contains(&p.id)
                    // A timed mitigation stays in memory until its end (its
                    // timer, reconcile's view of the firewall and of unit
                    // holds read it there); an untimed one (a hot_patch
                    // not rolled back) does not need to: it is counted in
                    // `archived_active`, and a rollback takes it back.
                    && p.pending_timed_reverts().next().is_none()
                    // A call back still owed is sent from memory.
                    && !p.callback_pending()
                    && !p.rolling_back()
            })
            .map(|p| p.id.clone())
            .collect()
    }

    /// Forgets a plan (after it was archived).
    pub fn evict(&mut self, id: &str) {
        if let Some(plan) = self.plans.remove(id) {
            self.offences.archive(&plan);
            let active = in_force(&plan);
            self.active -= active;
            self.archived_active += active;
            self.by_seq.remove(&plan.seq);
            if self.dedupe.get(&plan.alert_sha256).map(String::as_str) == Some(id) {
                self.dedupe.remove(&plan.alert_sha256);
                // Its dedupe window outlives it in memory (unless a newer
                // plan of the alert was archived before it).
                if let Some(finished_ms) = plan.finished_ms {
                    let older = |d: &ArchivedDedupe| d.finished_ms <= finished_ms;
                    if self
                        .archived_dedupe
                        .get(&plan.alert_sha256)
                        .is_none_or(older)
                    {
                        self.archived_dedupe.insert(
                            plan.alert_sha256.clone(),
                            ArchivedDedupe {
                                alert_sha256: plan.alert_sha256,
                                plan_id: plan.id,
                                finished_ms,
                                seq: plan.seq,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Takes an archived plan back (e.g. to roll it back).
    pub fn readmit(&mut self, plan: Plan) {
        if !self.plans.contains_key(&plan.id) {
            self.archived_active = self.archived_active.saturating_sub(in_force(&plan));
            self.offences.readmit(&plan.id);
        }
        self.insert(plan);
    }

    /// Newest first, optionally only one status.
    pub fn list(&self, status: Option<PlanStatus>, limit: usize) -> Vec<&Plan> {
        self.by_seq
            .values()
            .rev()
            .filter_map(|id| self.plans.get(id))
            .filter(|p| status.is_none_or(|s| p.status == s))
            .take(limit)
            .collect()
    }

    /// Applied, reversible, not yet reverted: what is in force now, in
    /// memory and in archived plans.
    pub fn active_mitigations(&self) -> usize {
        self.active + self.archived_active
    }

    /// Mitigations in force in archived plans (kept in checkpoints).
    pub fn archived_active(&self) -> usize {
        self.archived_active
    }

    /// Sets that count, when it was counted from the archive itself.
    pub fn set_archived_active(&mut self, count: usize) {
        self.archived_active = count;
    }

    /// The oldest `plan_created` seq retention must keep: of the plans in
    /// memory (a start without its checkpoint must be able to replay from
    /// there), and of the archived plans whose dedupe window runs (their
    /// archives answer `GetPlan` for the id an identical alert returns).
    pub fn oldest_seq(&self) -> Option<u64> {
        let archived = self.archived_dedupe.values().map(|d| d.seq).min();
        self.by_seq
            .keys()
            .next()
            .copied()
            .into_iter()
            .chain(archived)
            .min()
    }

    pub fn add_timers(&mut self, plan: &Plan) {
        for (at, index) in plan.pending_timed_reverts() {
            self.timers.insert((at, plan.id.clone(), index));
        }
    }

    pub fn next_timer(&self) -> Option<u64> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// Timed reverts due at `now_ms`, removed from the schedule.
    pub fn take_due_timers(&mut self, now_ms: u64) -> Vec<(String, usize)> {
        let mut due = Vec::new();
        while let Some((at, _, _)) = self.timers.first() {
            if *at > now_ms {
                break;
            }
            let (_, id, index) = self.timers.pop_first().expect("first exists");
            due.push((id, index));
        }
        due
    }

    /// Puts a timed revert back (its plan was busy); retried at `at_ms`.
    pub fn defer_timer(&mut self, at_ms: u64, id: String, index: usize) {
        self.timers.insert((at_ms, id, index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::event::Event;
    use crate::plan::{ActionSeed, PlanSeed, Severity, Source};
    use serde_json::json;

    fn plan(id: &str, seq: u64, hash: &str, targets: &[&str]) -> Plan {
        let seed = PlanSeed {
            id: id.into(),
            timestamp: "t".into(),
            source: Source::Manual,
            severity: Severity::Low,
            description: "d".into(),
            alert_sha256: hash.into(),
            context: None,
            playbook: None,
            callback: false,
            actions: vec![ActionSeed {
                kind: "t".into(),
                params: json!({}),
                targets: targets.iter().map(|t| t.to_string()).collect(),
                reversible: true,
            }],
        };
        Plan::from_seed(seed, seq, 1000)
    }

    #[test]
    fn shared_targets_run_in_submission_order() {
        let mut s = EngineState::default();
        s.accept(plan("a", 1, "ha", &["unit:x"]));
        s.accept(plan("b", 2, "hb", &["unit:x"]));
        s.accept(plan("c", 3, "hc", &["unit:y"]));
        s.accept(plan("d", 4, "hd", &[]));
        assert_eq!(s.take_runnable(8), vec!["a", "c", "d"]);
        assert!(s.take_runnable(8).is_empty(), "b must wait for a");
        s.finish_running("a");
        assert_eq!(s.take_runnable(8), vec!["b"]);
    }

    #[test]
    fn a_waiting_plan_blocks_later_ones_on_its_targets() {
        let mut s = EngineState::default();
        s.accept(plan("a", 1, "ha", &["unit:x"]));
        assert_eq!(s.take_runnable(8), vec!["a"]);
        s.accept(plan("b", 2, "hb", &["unit:x", "unit:y"]));
        s.accept(plan("c", 3, "hc", &["unit:y"]));
        // b waits for a; c must not overtake b on unit:y.
        assert!(s.take_runnable(8).is_empty());
    }

    #[test]
    fn concurrency_is_bounded() {
        let mut s = EngineState::default();
        for i in 0..5 {
            s.accept(plan(&format!("p{i}"), i + 1, &format!("h{i}"), &[]));
        }
        assert_eq!(s.take_runnable(2).len(), 2);
        assert_eq!(s.take_runnable(2).len(), 0);
        assert_eq!(s.open_plans(), 5);
        assert_eq!(s.queue_depth(), 3);
    }

    /// Starts and ends `p` successfully at `at_ms`.
    fn run_to_success(p: &mut Plan, at_ms: u64) {
        p.apply_event(&Event::PlanStarted {}, at_ms);
        p.apply_event(
            &Event::PlanFinished {
                status: PlanStatus::Success,
            },
            at_ms,
        );
    }

    fn finish(s: &mut EngineState, id: &str, at_ms: u64) {
        run_to_success(s.plans.get_mut(id).unwrap(), at_ms);
    }

    /// The newest plan of an alert answers an identical one, whichever of
    /// the alert's plans are in memory or archived (a helper's review of
    /// the archived dedupe found both ways to hide it).
    #[test]
    fn the_newest_plan_of_an_alert_answers_it_in_memory_or_archived() {
        let mut s = EngineState::default();
        s.accept(plan("old", 1, "h", &[]));
        finish(&mut s, "old", 1_000);
        s.accept(plan("new", 2, "h", &[]));
        finish(&mut s, "new", 50_000);
        // The new one archived, the old one taken back (a rollback).
        s.evict("new");
        assert_eq!(s.dedupe_hit("h", 60_000, 60_000), Some("new"));
        assert_eq!(s.oldest_seq(), Some(1));
        s.evict("old");
        assert_eq!(
            s.dedupe_hit("h", 60_000, 60_000),
            Some("new"),
            "the older end does not replace it"
        );
        let mut old = plan("old", 1, "h", &[]);
        run_to_success(&mut old, 1_000);
        s.readmit(old);
        assert_eq!(s.dedupe_hit("h", 60_000, 60_000), Some("new"));
        // Retention keeps the archived one's records while its window runs.
        assert_eq!(s.oldest_seq(), Some(1));
        s.evict("old");
        assert_eq!(s.oldest_seq(), Some(2));
        s.prune_dedupe(110_000, 60_000);
        assert_eq!(s.dedupe_hit("h", 60_000, 60_000), None);
        assert_eq!(s.oldest_seq(), None);
    }

    #[test]
    fn dedupe_window() {
        let mut s = EngineState::default();
        s.accept(plan("a", 1, "h", &[]));
        assert_eq!(s.dedupe_hit("h", 5_000, 60_000), Some("a"));
        let p = s.plans.get_mut("a").unwrap();
        p.apply_event(&Event::PlanStarted {}, 1_000);
        p.apply_event(
            &Event::PlanFinished {
                status: PlanStatus::Success,
            },
            2_000,
        );
        assert_eq!(s.dedupe_hit("h", 61_999, 60_000), Some("a"));
        assert_eq!(s.dedupe_hit("h", 62_000, 60_000), None);
        assert_eq!(s.dedupe_hit("other", 0, 60_000), None);
    }

    #[test]
    fn list_is_newest_first_and_filters() {
        let mut s = EngineState::default();
        s.accept(plan("a", 1, "ha", &[]));
        s.accept(plan("b", 2, "hb", &[]));
        let ids: Vec<&str> = s.list(None, 10).iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["b", "a"]);
        assert_eq!(s.list(Some(PlanStatus::Success), 10).len(), 0);
        assert_eq!(s.list(None, 1).len(), 1);
    }

    #[test]
    fn eviction_keeps_live_recent_and_active_plans() {
        let mut s = EngineState::default();
        for i in 0..6u64 {
            s.accept(plan(&format!("p{i}"), i + 1, &format!("h{i}"), &[]));
        }
        assert_eq!(s.take_runnable(8).len(), 6);
        for i in 0..5u64 {
            let id = format!("p{i}");
            s.finish_running(&id);
            s.fold(&id, &Event::PlanStarted {}, 7, 1_000);
            if i == 1 || i == 2 {
                // p1 keeps a timed mitigation in force; p2 an untimed one
                // (a hot_patch), which may go to the archive.
                s.fold(
                    &id,
                    &Event::ActionApplied {
                        index: 0,
                        attempt: 1,
                        summary: "s".into(),
                        changes: json!({}),
                        revert_at_ms: (i == 1).then_some(10_000_000),
                    },
                    7,
                    1_000,
                );
            } else {
                s.fold(
                    &id,
                    &Event::ActionSkipped {
                        index: 0,
                        reason: "r".into(),
                    },
                    7,
                    1_000,
                );
            }
            s.fold(
                &id,
                &Event::PlanFinished {
                    status: PlanStatus::Success,
                },
                7,
                2_000,
            );
        }
        assert_eq!(s.active_mitigations(), 2);
        // p5 still runs; the newest finished (p4) is kept; p1 is active.
        let mut gone = s.evictable(1);
        gone.sort();
        assert_eq!(gone, vec!["p0", "p2", "p3"]);
        for id in &gone {
            s.evict(id);
        }
        assert_eq!(s.plans.len(), 3);
        // p2's patch is still in force, counted from the archive.
        assert_eq!((s.active_mitigations(), s.archived_active()), (2, 1));
        // Archived, each still answers an identical alert in its window.
        assert_eq!(s.dedupe_hit("h0", 2_500, 60_000), Some("p0"));
        s.prune_dedupe(70_000, 60_000);
        assert_eq!(s.dedupe_hit("h0", 2_500, 60_000), None);
        assert_eq!(s.list(None, 10).len(), 3);
    }

    #[test]
    fn timers_fire_in_deadline_order() {
        let mut s = EngineState::default();
        s.defer_timer(30, "b".into(), 0);
        s.defer_timer(10, "a".into(), 1);
        assert_eq!(s.next_timer(), Some(10));
        assert_eq!(s.take_due_timers(20), vec![("a".to_string(), 1)]);
        assert_eq!(s.take_due_timers(40), vec![("b".to_string(), 0)]);
        assert_eq!(s.next_timer(), None);
    }
}
