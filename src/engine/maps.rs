//! The hash maps on a plan's path, keyed by plan ids and alert digests.
//!
//! They hash with `foldhash` (seeded per process) instead of std's SipHash:
//! a plan's path looks plans and their ids up dozens of times, and SipHash
//! was about 12 000 instructions a plan (callgrind). HashDoS
//! resistance is not given up where it matters: the keys are UUIDs the
//! agent draws and SHA-256 digests, which a caller cannot choose to
//! collide, and the seed is random per process.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
