//! The fleet's view (DESIGN.md §8, "Fleet"): every host ships its journal
//! to a collector with `systemd-journal-upload`; each journal entry that
//! mirrors a ledger record carries the record itself, so the collector's
//! copy can be verified (`antibodyctl verify --journal`, [`chain`]) and
//! summarized (`antibodyctl fleet`, [`summary`]). [`journal`] reads the
//! files.

pub mod chain;
pub mod journal;
pub mod summary;
