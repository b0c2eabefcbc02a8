//! Pure plan logic: alert parsing and validation, canonical hashing, the plan
//! model, its events and its state machine. Nothing here does I/O.

pub mod alert;
pub mod canonical;
pub mod event;
pub mod fields;
pub mod model;
pub mod step;
pub mod strict_json;

pub use alert::{parse_alert, Alert, RawAction, Severity, Source};
pub use event::{Event, RevertReason};
pub use model::{actions_of, ActionSeed, ActionState, Plan, PlanSeed, PlanStatus};
pub use step::{next_step, Step};
