//! Who holds each element, and until when. Two plans may isolate the same
//! address for different times; the kernel has one element. It stays for
//! the longest live claim, and a revert of one plan removes it only when no
//! other plan still holds it. Pure bookkeeping; the backend turns it into
//! batches.

use std::collections::{BTreeMap, HashMap};

use super::element::Element;

/// One mitigation's hold on an element: `owner` is `PLAN_ID#INDEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    pub element: Element,
    pub until_ms: u64,
}

pub fn owner(plan_id: &str, index: usize) -> String {
    format!("{plan_id}#{index}")
}

#[derive(Debug, Default)]
pub struct Claims {
    by_owner: HashMap<String, (Element, u64)>,
    by_element: HashMap<Element, HashMap<String, u64>>,
}

impl Claims {
    /// Records a claim, replacing the owner's previous one. Returns it.
    pub fn insert(&mut self, claim: Claim) -> Option<Claim> {
        let previous = self.remove(&claim.owner);
        self.by_element
            .entry(claim.element)
            .or_default()
            .insert(claim.owner.clone(), claim.until_ms);
        self.by_owner
            .insert(claim.owner, (claim.element, claim.until_ms));
        previous
    }

    pub fn remove(&mut self, owner: &str) -> Option<Claim> {
        let (element, until_ms) = self.by_owner.remove(owner)?;
        if let Some(holders) = self.by_element.get_mut(&element) {
            holders.remove(owner);
            if holders.is_empty() {
                self.by_element.remove(&element);
            }
        }
        Some(Claim {
            owner: owner.to_string(),
            element,
            until_ms,
        })
    }

    /// Until when the element must stay, if any claim on it is still live.
    pub fn until(&self, element: &Element, now_ms: u64) -> Option<u64> {
        self.by_element
            .get(element)?
            .values()
            .copied()
            .filter(|until| *until > now_ms)
            .max()
    }

    /// Every element with a live claim, with its deadline.
    pub fn live(&self, now_ms: u64) -> BTreeMap<Element, u64> {
        self.by_element
            .keys()
            .filter_map(|e| self.until(e, now_ms).map(|until| (*e, until)))
            .collect()
    }

    /// Forgets claims whose time is over (the kernel dropped their elements).
    pub fn prune(&mut self, now_ms: u64) {
        let expired: Vec<String> = self
            .by_owner
            .iter()
            .filter(|(_, (_, until))| *until <= now_ms)
            .map(|(owner, _)| owner.clone())
            .collect();
        for owner in expired {
            self.remove(&owner);
        }
    }

    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }
}

/// Whole seconds for a kernel timeout, rounded up so an element never ends
/// before its deadline; at least one.
pub fn timeout_secs(until_ms: u64, now_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(owner: &str, addr: &str, until_ms: u64) -> Claim {
        Claim {
            owner: owner.into(),
            element: Element::isolate(addr.parse().unwrap()),
            until_ms,
        }
    }

    #[test]
    fn the_longest_live_claim_wins_and_release_keeps_the_others() {
        let mut claims = Claims::default();
        let e = claim("a#0", "10.0.0.1", 0).element;
        claims.insert(claim("a#0", "10.0.0.1", 10_000));
        claims.insert(claim("b#0", "10.0.0.1", 5_000));
        assert_eq!(claims.until(&e, 1_000), Some(10_000));
        claims.remove("a#0");
        assert_eq!(claims.until(&e, 1_000), Some(5_000));
        assert_eq!(claims.until(&e, 6_000), None, "expired claims hold nothing");
        claims.remove("b#0");
        assert!(claims.is_empty());
        assert!(claims.live(0).is_empty());
    }

    #[test]
    fn an_owner_holds_one_element_and_expired_claims_are_pruned() {
        let mut claims = Claims::default();
        claims.insert(claim("a#0", "10.0.0.1", 10_000));
        let previous = claims.insert(claim("a#0", "10.0.0.2", 20_000)).unwrap();
        assert_eq!(previous.until_ms, 10_000);
        assert_eq!(claims.len(), 1);
        claims.insert(claim("b#1", "10.0.0.3", 500));
        claims.prune(1_000);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims.live(1_000).len(), 1);
    }

    #[test]
    fn timeouts_round_up() {
        assert_eq!(timeout_secs(10_001, 0), 11);
        assert_eq!(timeout_secs(10_000, 0), 10);
        assert_eq!(timeout_secs(0, 5), 1);
    }
}
