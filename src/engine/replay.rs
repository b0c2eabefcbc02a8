//! Rebuilding the engine's state from the ledger at start (DESIGN.md §4):
//! every record is folded, in order, exactly as the running engine folded it.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::ledger::{scan, ScanReport};
use crate::plan::{Event, Plan};
use crate::time::parse_rfc3339;

pub struct Replayed {
    pub plans: Vec<Plan>,
    pub scan: ScanReport,
    /// Records whose kind this build does not know (written by a newer one).
    pub unknown_records: u64,
}

pub fn replay(dir: &Path) -> io::Result<Replayed> {
    let mut plans: HashMap<String, Plan> = HashMap::new();
    let mut unknown_records = 0;
    let scan = scan(dir, |record| {
        let Ok(event) = Event::from_parts(&record.kind, &record.payload) else {
            unknown_records += 1;
            return;
        };
        let ts_ms = parse_rfc3339(&record.ts).unwrap_or(0);
        match (event, &record.plan_id) {
            (Event::PlanCreated { plan }, _) => {
                plans.insert(plan.id.clone(), Plan::from_seed(plan, record.seq, ts_ms));
            }
            (event, Some(id)) => {
                if let Some(plan) = plans.get_mut(id) {
                    plan.apply_event(&event, ts_ms);
                }
            }
            (_, None) => {}
        }
    })?;
    Ok(Replayed {
        plans: plans.into_values().collect(),
        scan,
        unknown_records,
    })
}
