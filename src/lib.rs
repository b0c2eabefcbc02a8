//! Antibody: turns alerts into audited, reversible mitigations.
//! See DESIGN.md for the contract and README.md for the operator's view.

pub mod actions;
pub mod callbacks;
pub mod config;
pub mod dbus;
pub mod engine;
pub mod error;
pub mod events;
pub mod fleet;
pub mod ledger;
pub mod plan;
pub mod playbooks;
pub mod sync;
pub mod sys;
pub mod time;
pub mod web;
