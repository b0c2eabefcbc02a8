//! A recording fake of the `Systemd` trait for logic tests: units with an
//! InvocationID that changes on each successful restart, scripted job
//! results, and resource limits that read back what was set.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use antibody::sys::systemd::{
    JobOutcome, ResourceLimits, Systemd, SystemdError, UnitFacts, UnitStatus,
};

pub const UNLIMITED: ResourceLimits = ResourceLimits {
    cpu_quota_per_sec_usec: u64::MAX,
    memory_high: u64::MAX,
    io_weight: u64::MAX,
};

/// Scripted results: the bus closed before the job's `JobRemoved`, after
/// the job restarted the unit, or after it ended without restarting it.
pub const UNHEARD_RESTARTED: &str = "unheard, restarted";
pub const UNHEARD_NOT_RESTARTED: &str = "unheard, not restarted";

#[derive(Debug, Clone)]
pub struct FakeUnit {
    pub invocation: u32,
    pub main_pid: u32,
    pub limits: ResourceLimits,
    /// Results of the next restarts; `done` when empty.
    pub results: VecDeque<String>,
}

#[derive(Default)]
pub struct FakeSystemd {
    pub units: Mutex<HashMap<String, FakeUnit>>,
    /// A unit's names when it has aliases (all of them, its own included).
    pub names: Mutex<HashMap<String, Vec<String>>>,
    /// What systemd reports to the guards, where it differs from a plain
    /// unit loaded from a file in system.slice.
    pub facts: Mutex<HashMap<String, UnitFacts>>,
    /// This many next `SetUnitProperties` fail as if systemd were out of reach.
    pub failing_sets: Mutex<u32>,
    /// `SetUnitProperties` succeeds but the unit keeps its IOWeight (as a
    /// unit whose cgroup has no io controller might).
    pub keeps_io_weight: std::sync::atomic::AtomicBool,
    /// `restart UNIT`, `set UNIT CPU/MEM/IO` in call order.
    pub calls: Mutex<Vec<String>>,
    next_job: Mutex<u32>,
}

impl FakeSystemd {
    pub fn with_units(names: &[&str]) -> FakeSystemd {
        let fake = FakeSystemd::default();
        for (i, name) in names.iter().enumerate() {
            fake.units.lock().unwrap().insert(
                name.to_string(),
                FakeUnit {
                    invocation: 1,
                    main_pid: 100 + i as u32,
                    limits: UNLIMITED,
                    results: VecDeque::new(),
                },
            );
        }
        fake
    }

    pub fn script_results(&self, unit: &str, results: &[&str]) {
        let mut units = self.units.lock().unwrap();
        let u = units.get_mut(unit).expect("a fake unit");
        u.results = results.iter().map(|r| r.to_string()).collect();
    }

    pub fn unit(&self, name: &str) -> FakeUnit {
        self.units.lock().unwrap()[name].clone()
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    fn with_unit<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut FakeUnit) -> T,
    ) -> Result<T, SystemdError> {
        let mut units = self.units.lock().unwrap();
        units
            .get_mut(name)
            .map(f)
            .ok_or_else(|| SystemdError::NoSuchUnit(format!("unit {name} does not exist")))
    }
}

fn status(name: &str, u: &FakeUnit) -> UnitStatus {
    UnitStatus {
        unit: name.into(),
        load_state: "loaded".into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        invocation_id: format!("{:032x}", u.invocation),
        main_pid: Some(u.main_pid),
    }
}

#[async_trait]
impl Systemd for FakeSystemd {
    async fn restart_unit(
        &self,
        unit: &str,
        _timeout: Duration,
    ) -> Result<JobOutcome, SystemdError> {
        self.calls.lock().unwrap().push(format!("restart {unit}"));
        let job_id = {
            let mut next = self.next_job.lock().unwrap();
            *next += 1;
            *next
        };
        let result = self.with_unit(unit, |u| {
            let result = u.results.pop_front().unwrap_or_else(|| "done".into());
            if result == "done" || result == UNHEARD_RESTARTED {
                u.invocation += 1;
                u.main_pid += 1000;
            }
            result
        })?;
        if result == UNHEARD_RESTARTED || result == UNHEARD_NOT_RESTARTED {
            return Err(SystemdError::JobLost(format!(
                "the bus closed while the restart job {job_id} of {unit} ran, so its result was not heard"
            )));
        }
        Ok(JobOutcome { job_id, result })
    }

    async fn unit_status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        self.with_unit(unit, |u| status(unit, u))
    }

    async fn unit_facts(&self, unit: &str) -> Result<UnitFacts, SystemdError> {
        if let Some(facts) = self.facts.lock().unwrap().get(unit) {
            return Ok(facts.clone());
        }
        self.with_unit(unit, |_| ())?;
        let names = self.names.lock().unwrap().get(unit).cloned();
        Ok(UnitFacts {
            id: unit.to_string(),
            names: names.unwrap_or_else(|| vec![unit.to_string()]),
            load_state: "loaded".into(),
            fragment_path: format!("/usr/lib/systemd/system/{unit}"),
            refuse_manual_start: false,
            refuse_manual_stop: false,
            slice: "system.slice".into(),
        })
    }

    async fn resource_limits(&self, unit: &str) -> Result<ResourceLimits, SystemdError> {
        self.with_unit(unit, |u| u.limits)
    }

    async fn set_resource_limits(
        &self,
        unit: &str,
        limits: &ResourceLimits,
    ) -> Result<(), SystemdError> {
        {
            let mut failing = self.failing_sets.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                self.calls
                    .lock()
                    .unwrap()
                    .push(format!("set {unit} unreachable"));
                return Err(SystemdError::Unreachable(
                    "systemd is out of reach (fake)".into(),
                ));
            }
        }
        self.calls.lock().unwrap().push(format!(
            "set {unit} {}/{}/{}",
            limits.cpu_quota_per_sec_usec, limits.memory_high, limits.io_weight
        ));
        let keeps_io = self
            .keeps_io_weight
            .load(std::sync::atomic::Ordering::Relaxed);
        self.with_unit(unit, |u| {
            let io_weight = if keeps_io {
                u.limits.io_weight
            } else {
                limits.io_weight
            };
            u.limits = ResourceLimits {
                io_weight,
                ..*limits
            };
        })
    }
}
