//! The append-only, hash-chained ledger (DESIGN.md §4): JSON Lines segments,
//! group-committed appends, chain verification.

pub mod record;
pub mod retention;
pub mod scan;
pub mod segments;
pub mod writer;

pub use record::{Record, GENESIS};
pub use scan::{record_at, scan, scan_from, Position, ScanReport, Tip};
pub use writer::{Durable, Entry, JournalFields, LedgerWriter, WriterOptions};
