//! The firewall seam: the agent's own nftables table `inet antibody`, with
//! one set element (and kernel timeout) per network mitigation.
//!
//! - `element`: which set and key a mitigation is (pure).
//! - `batch`: the JSON batches, golden-tested (pure).
//! - `listing`: reading `nft -j list table` back (pure).
//! - `claims`: which plans hold which element until when (pure).
//! - `routes`: the default gateways, never a target.
//! - `backend`: the firewall proper, which batches the element changes of
//!   concurrent plans into one `nft` call through a `Driver`.
//! - `cli`: the real driver, `nft -j -f -` (started ahead of each batch).

use async_trait::async_trait;
use serde_json::Value;

pub mod backend;
pub mod batch;
pub mod claims;
pub mod cli;
pub mod element;
pub mod fake;
pub mod listing;
pub mod routes;

pub use claims::{owner, Claim};
pub use element::Element;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nftables: {0}")]
pub struct FirewallError(pub String);

/// What reconcile found the kernel missing, and put back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift {
    /// The table was gone or damaged and was rebuilt.
    pub table_rebuilt: bool,
    /// Elements put back, with the seconds they were given.
    pub restored: Vec<(Element, u64)>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        !self.table_rebuilt && self.restored.is_empty()
    }
}

#[async_trait]
pub trait Firewall: Send + Sync {
    /// How long the firewall has been busy with one batch (0 while idle;
    /// `u64::MAX` if its task has ended). Each `nft` run is bounded, but
    /// one that keeps hanging makes a batch, and every plan waiting on it,
    /// slow: `Healthy` tells.
    fn stalled_for_ms(&self) -> u64 {
        0
    }

    /// Puts `element` in force for `owner` until `until_ms` (wall clock,
    /// ms). The kernel timeout becomes the longest live claim on the
    /// element, so claiming again extends it and never shortens another
    /// plan's hold. Returns the timeout the kernel got (seconds).
    async fn claim(&self, claim: Claim) -> Result<u64, FirewallError>;

    /// Ends `owner`'s claim. The element leaves the kernel unless another
    /// live claim holds it; then `Some(seconds)` it keeps.
    async fn release(&self, owner: &str, element: Element) -> Result<Option<u64>, FirewallError>;

    /// Seconds the element has left in the kernel, `None` if it is absent.
    async fn expires_in(&self, element: Element) -> Result<Option<u64>, FirewallError>;

    /// Compares the kernel's table with `active` (the ledger's applied,
    /// unreverted, unexpired network mitigations) and puts back what is
    /// missing, with its remaining time. Never touches the kernel when
    /// nothing is active.
    async fn reconcile(&self, active: Vec<Claim>) -> Result<Drift, FirewallError>;

    /// The exact batch (`{"nftables": [...]}`) `claim` would send now for
    /// `element` with `timeout_secs`, without sending it.
    async fn preview_claim(
        &self,
        element: Element,
        timeout_secs: u64,
    ) -> Result<Value, FirewallError>;

    /// Deletes the table if it exists (`nft.remove_on_stop`).
    async fn remove_table(&self) -> Result<bool, FirewallError>;
}
