//! Antibody: turns alerts into audited, reversible mitigations.
//! See DESIGN.md for the contract and README.md for the operator's view.

pub mod config;
pub mod error;
pub mod plan;
pub mod time;
