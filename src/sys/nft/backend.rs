//! The real firewall: a task that owns the table `inet antibody` and sends
//! every change through its [`Driver`] (`nft -j -f -`, see `cli`), one
//! atomic batch at a time. Changes that arrive while a batch is in flight wait in
//! a queue and go out together in the next one, so a burst of plans costs
//! a few `nft` processes, not one each.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
#[cfg(test)]
use serde_json::json;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::batch::{self, add_elements, document, element_commands, rebuild_table, ElementChanges};
use super::claims::{timeout_secs, Claim, Claims};
use super::listing::Listing;
use super::{Drift, Element, Firewall, FirewallError};
use crate::time::now_ms;

/// At most this many queued changes share one batch.
const MAX_JOBS_PER_BATCH: usize = 4096;
/// An element due to end within this long is not put back by reconcile:
/// its kernel timeout may simply have run out a moment before the ledger's
/// timed revert, which is not drift.
const RESTORE_MIN_MS: u64 = 2000;

/// How batches reach the kernel and how the table is read back.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    async fn apply(&self, batch: &Value) -> Result<(), String>;
    /// The table as `nft -j list table inet antibody` prints it; `None`
    /// when it does not exist.
    async fn list(&self) -> Result<Option<Value>, String>;
}

enum Change {
    Claim(Claim),
    Release {
        owner: String,
        element: Element,
    },
    /// Put these elements back as their claims say (reconcile).
    Sync(Vec<Element>),
}

impl Change {
    fn element(&self) -> Option<Element> {
        match self {
            Change::Claim(c) => Some(c.element),
            Change::Release { element, .. } => Some(*element),
            Change::Sync(_) => None,
        }
    }
}

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Option<u64>, FirewallError>>,
}

struct State {
    claims: Claims,
    /// The table was seen intact or built by us, and no batch failed since.
    table_ok: bool,
}

struct Shared {
    driver: Box<dyn Driver>,
    state: Mutex<State>,
}

pub struct NftFirewall {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
    /// When the batching task began the batch it works on (wall clock,
    /// ms); 0 while it waits for work, `u64::MAX` once it has ended.
    busy_since: Arc<AtomicU64>,
}

impl NftFirewall {
    /// Starts the batching task on the current tokio runtime.
    pub fn start(driver: impl Driver) -> NftFirewall {
        let shared = Arc::new(Shared {
            driver: Box::new(driver),
            state: Mutex::new(State {
                claims: Claims::default(),
                table_ok: false,
            }),
        });
        let (jobs, queue) = mpsc::unbounded_channel();
        let busy_since = Arc::new(AtomicU64::new(0));
        tokio::spawn(work(shared.clone(), queue, busy_since.clone()));
        NftFirewall {
            shared,
            jobs,
            busy_since,
        }
    }

    async fn submit(&self, change: Change) -> Result<Option<u64>, FirewallError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { change, reply })
            .map_err(|_| FirewallError("the firewall task has stopped".into()))?;
        answer
            .await
            .map_err(|_| FirewallError("the firewall task dropped the change".into()))?
    }
}

async fn work(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Job>,
    busy_since: Arc<AtomicU64>,
) {
    // Marks the task as ended however it ends (a panic included).
    struct Ended(Arc<AtomicU64>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(u64::MAX, Ordering::Relaxed);
        }
    }
    let _ended = Ended(busy_since.clone());
    while let Some(first) = queue.recv().await {
        busy_since.store(now_ms().max(1), Ordering::Relaxed);
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        shared.run(jobs).await;
        busy_since.store(0, Ordering::Relaxed);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Applies the jobs' claim changes, sends one batch for them, and
    /// answers each. If the shared batch fails, each job is tried alone so
    /// one bad change cannot sink the others.
    async fn run(&self, jobs: Vec<Job>) {
        let mut touched: BTreeMap<Element, Touch> = BTreeMap::new();
        let undo: Vec<Option<Undo>> = {
            let mut state = self.lock();
            let now = now_ms();
            state.claims.prune(now);
            jobs.iter()
                .map(|job| {
                    match &job.change {
                        Change::Sync(elements) => {
                            for e in elements {
                                touched.entry(*e).or_default().missing = true;
                            }
                        }
                        other => {
                            let e = other.element().expect("claims and releases name one");
                            let before = state.claims.until(&e, now);
                            touched.entry(e).or_insert(Touch {
                                before,
                                missing: false,
                            });
                        }
                    }
                    match &job.change {
                        Change::Claim(c) => Some(Undo::Claim {
                            owner: c.owner.clone(),
                            previous: state.claims.insert(c.clone()),
                        }),
                        Change::Release { owner, .. } => {
                            state.claims.remove(owner).map(Undo::Release)
                        }
                        Change::Sync(_) => None,
                    }
                })
                .collect()
        };
        match self.send(&touched).await {
            Ok(kept) => {
                for job in jobs {
                    let answer = job.change.element().and_then(|e| kept.get(&e).copied());
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(e) => {
                {
                    let mut state = self.lock();
                    for undo in undo.into_iter().rev().flatten() {
                        undo.apply(&mut state.claims);
                    }
                }
                if jobs.len() == 1 {
                    let job = jobs.into_iter().next().expect("one job");
                    let _ = job.reply.send(Err(e));
                } else {
                    for job in jobs {
                        Box::pin(self.run(vec![job])).await;
                    }
                }
            }
        }
    }

    /// One batch putting `touched` elements as their claims say; rebuilds
    /// the table first when it is missing or damaged. Tries twice: a batch
    /// failing because someone flushed the ruleset succeeds once the table
    /// is rebuilt. Returns the timeout each still-held touched element got.
    async fn send(
        &self,
        touched: &BTreeMap<Element, Touch>,
    ) -> Result<BTreeMap<Element, u64>, FirewallError> {
        let mut last_error = String::new();
        for _attempt in 0..2 {
            if !self.lock().table_ok {
                let listing = self.shared_listing().await?;
                let intact = listing.as_ref().is_some_and(Listing::is_intact);
                let mut state = self.lock();
                state.table_ok = intact;
                if listing.is_none() && state.claims.live(now_ms()).is_empty() {
                    // Nothing to enforce and no table: leave the kernel alone.
                    return Ok(BTreeMap::new());
                }
            }
            let (commands, kept) = self.plan(touched);
            if commands.is_empty() {
                return Ok(kept);
            }
            match self.driver.apply(&document(commands)).await {
                Ok(()) => {
                    self.lock().table_ok = true;
                    return Ok(kept);
                }
                Err(e) => {
                    self.lock().table_ok = false;
                    last_error = e;
                }
            }
        }
        Err(FirewallError(last_error))
    }

    async fn shared_listing(&self) -> Result<Option<Listing>, FirewallError> {
        let listed = self.driver.list().await.map_err(FirewallError)?;
        Ok(listed.as_ref().map(Listing::parse))
    }

    /// The batch for `touched` as the claims stand now.
    fn plan(&self, touched: &BTreeMap<Element, Touch>) -> (Vec<Value>, BTreeMap<Element, u64>) {
        let state = self.lock();
        let now = now_ms();
        let mut changes = ElementChanges::default();
        let mut kept = BTreeMap::new();
        let mut commands = Vec::new();
        if state.table_ok {
            for (element, touch) in touched {
                let Some(until) = state.claims.until(element, now) else {
                    changes.remove.push(*element);
                    continue;
                };
                let secs = timeout_secs(until, now);
                kept.insert(*element, secs);
                match touch.before {
                    // Held before for as long: the kernel already has it right.
                    Some(before) if before == until && !touch.missing => {}
                    Some(_) => changes.retime.push((*element, secs)),
                    None => changes.add.push((*element, secs)),
                }
            }
        } else {
            // A new table starts empty: every live claim goes in with it.
            commands = rebuild_table();
            for (element, until) in state.claims.live(now) {
                let secs = timeout_secs(until, now);
                changes.add.push((element, secs));
                if touched.contains_key(&element) {
                    kept.insert(element, secs);
                }
            }
        }
        commands.extend(element_commands(&changes));
        (commands, kept)
    }
}

/// What a batch knows about an element it touches.
#[derive(Debug, Clone, Copy, Default)]
struct Touch {
    /// Until when claims held it before this batch (none: it is new).
    before: Option<u64>,
    /// Reconcile found it missing from the kernel.
    missing: bool,
}

enum Undo {
    Claim {
        owner: String,
        previous: Option<Claim>,
    },
    Release(Claim),
}

impl Undo {
    fn apply(self, claims: &mut Claims) {
        match self {
            Undo::Claim { owner, previous } => {
                claims.remove(&owner);
                if let Some(previous) = previous {
                    claims.insert(previous);
                }
            }
            Undo::Release(claim) => {
                claims.insert(claim);
            }
        }
    }
}

#[async_trait]
impl Firewall for NftFirewall {
    fn stalled_for_ms(&self) -> u64 {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => 0,
            u64::MAX => u64::MAX,
            since => now_ms().saturating_sub(since),
        }
    }

    async fn claim(&self, claim: Claim) -> Result<u64, FirewallError> {
        let element = claim.element;
        self.submit(Change::Claim(claim)).await?.ok_or_else(|| {
            FirewallError(format!("{element} was not put in force (its time is over)"))
        })
    }

    async fn release(&self, owner: &str, element: Element) -> Result<Option<u64>, FirewallError> {
        self.submit(Change::Release {
            owner: owner.to_string(),
            element,
        })
        .await
    }

    async fn expires_in(&self, element: Element) -> Result<Option<u64>, FirewallError> {
        let listing = self.shared.shared_listing().await?;
        Ok(listing.and_then(|l| l.elements.get(&element).copied()))
    }

    async fn reconcile(&self, active: Vec<Claim>) -> Result<Drift, FirewallError> {
        let now = now_ms();
        let live = {
            let mut state = self.shared.lock();
            for claim in active.into_iter().filter(|c| c.until_ms > now) {
                state.claims.insert(claim);
            }
            state.claims.prune(now);
            state.claims.live(now)
        };
        if live.is_empty() {
            return Ok(Drift::default());
        }
        let listing = self.shared.shared_listing().await?;
        let worth_restoring = |until: u64| until.saturating_sub(now) >= RESTORE_MIN_MS;
        let (table_rebuilt, missing): (bool, Vec<(Element, u64)>) = match &listing {
            Some(l) if l.is_intact() => (
                false,
                live.iter()
                    .filter(|(e, until)| !l.elements.contains_key(e) && worth_restoring(**until))
                    .map(|(e, until)| (*e, *until))
                    .collect(),
            ),
            _ => {
                self.shared.lock().table_ok = false;
                (true, live.into_iter().collect())
            }
        };
        if !table_rebuilt && missing.is_empty() {
            return Ok(Drift::default());
        }
        self.submit(Change::Sync(missing.iter().map(|(e, _)| *e).collect()))
            .await?;
        Ok(Drift {
            table_rebuilt,
            restored: missing
                .into_iter()
                .map(|(e, until)| (e, timeout_secs(until, now)))
                .collect(),
        })
    }

    async fn preview_claim(
        &self,
        element: Element,
        timeout_secs_wanted: u64,
    ) -> Result<Value, FirewallError> {
        // Until a batch has succeeded, whether the table needs building is
        // read from the kernel, as the real change would.
        let table_ok = self.shared.lock().table_ok
            || self
                .shared
                .shared_listing()
                .await?
                .is_some_and(|l| l.is_intact());
        let state = self.shared.lock();
        let now = now_ms();
        let until = now.saturating_add(timeout_secs_wanted.saturating_mul(1000));
        let before = state.claims.until(&element, now);
        let secs = timeout_secs(before.unwrap_or(0).max(until), now);
        if !table_ok {
            let mut commands = rebuild_table();
            let mut adds = vec![(element, secs)];
            adds.extend(
                state
                    .claims
                    .live(now)
                    .into_iter()
                    .filter(|(e, _)| *e != element)
                    .map(|(e, until)| (e, timeout_secs(until, now))),
            );
            commands.extend(add_elements(&adds));
            return Ok(document(commands));
        }
        let changes = match before {
            Some(before) if before >= until => ElementChanges::default(),
            Some(_) => ElementChanges {
                retime: vec![(element, secs)],
                ..ElementChanges::default()
            },
            None => ElementChanges {
                add: vec![(element, secs)],
                ..ElementChanges::default()
            },
        };
        Ok(document(element_commands(&changes)))
    }

    async fn remove_table(&self) -> Result<bool, FirewallError> {
        if self.shared.shared_listing().await?.is_none() {
            return Ok(false);
        }
        self.shared.lock().table_ok = false;
        self.shared
            .driver
            .apply(&document(batch::remove_table()))
            .await
            .map_err(FirewallError)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::nft::fake::FakeDriver;
    use crate::sys::nft::owner;

    fn sid(text: &str) -> Element {
        Element::isolate(text.parse().unwrap())
    }

    fn claim(who: &str, element: Element, secs: u64) -> Claim {
        Claim {
            owner: owner(who, 0),
            element,
            until_ms: now_ms() + secs * 1000,
        }
    }

    fn timeout_of(driver: &FakeDriver, set: &str, key: &str) -> Option<u64> {
        let kernel = driver.kernel.lock().unwrap();
        kernel
            .elements
            .get(&(set.to_string(), key.to_string()))
            .copied()
    }

    #[tokio::test]
    async fn the_first_claim_builds_the_table_then_only_elements_change() {
        let driver = FakeDriver::default();
        let fw = NftFirewall::start(driver.clone());
        assert_eq!(fw.claim(claim("a", sid("10.0.0.1"), 30)).await, Ok(30));
        assert_eq!(fw.claim(claim("b", sid("tcp:8080"), 20)).await, Ok(20));
        let batches = driver.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 2);
        assert_eq!(
            batches[0]["nftables"][1],
            json!({"delete": {"table": {"family": "inet", "name": "antibody"}}})
        );
        assert_eq!(batches[1], document(add_elements(&[(sid("tcp:8080"), 20)])));
        assert_eq!(timeout_of(&driver, "addr4", "\"10.0.0.1\""), Some(30));
    }

    #[tokio::test]
    async fn overlapping_claims_extend_and_a_release_keeps_the_longer_one() {
        let driver = FakeDriver::default();
        let fw = NftFirewall::start(driver.clone());
        let e = sid("10.0.0.1");
        fw.claim(claim("a", e, 10)).await.unwrap();
        assert_eq!(
            fw.claim(claim("b", e, 100)).await,
            Ok(100),
            "re-isolating extends"
        );
        assert_eq!(timeout_of(&driver, "addr4", "\"10.0.0.1\""), Some(100));
        assert_eq!(fw.claim(claim("c", e, 5)).await, Ok(100), "never shortens");
        assert_eq!(fw.release(&owner("b", 0), e).await, Ok(Some(10)));
        assert_eq!(timeout_of(&driver, "addr4", "\"10.0.0.1\""), Some(10));
        assert_eq!(fw.release(&owner("a", 0), e).await, Ok(Some(5)));
        assert_eq!(fw.release(&owner("c", 0), e).await, Ok(None));
        assert_eq!(timeout_of(&driver, "addr4", "\"10.0.0.1\""), None);
        // Releasing what the kernel already dropped is no error.
        assert_eq!(fw.release(&owner("c", 0), e).await, Ok(None));
    }

    #[tokio::test]
    async fn a_flushed_table_is_rebuilt_with_every_live_claim() {
        let driver = FakeDriver::default();
        let fw = NftFirewall::start(driver.clone());
        fw.claim(claim("a", sid("10.0.0.1"), 30)).await.unwrap();
        driver.kernel.lock().unwrap().flush();
        // The next change fails on the missing set, rebuilds, and carries a's element back.
        fw.claim(claim("b", sid("udp:53"), 30)).await.unwrap();
        assert_eq!(timeout_of(&driver, "addr4", "\"10.0.0.1\""), Some(30));
        assert!(timeout_of(&driver, "ports", r#"{"concat":["udp",53]}"#).is_some());
    }

    #[tokio::test]
    async fn reconcile_restores_what_vanished_and_reports_it() {
        let driver = FakeDriver::default();
        let fw = NftFirewall::start(driver.clone());
        assert_eq!(fw.reconcile(vec![]).await, Ok(Drift::default()));
        assert!(
            driver.batches.lock().unwrap().is_empty(),
            "nothing active: kernel untouched"
        );
        let active = vec![
            claim("a", sid("10.0.0.1"), 60),
            claim("b", sid("tcp:9"), 60),
        ];
        let drift = fw.reconcile(active.clone()).await.unwrap();
        assert!(drift.table_rebuilt);
        assert_eq!(drift.restored.len(), 2);
        assert_eq!(fw.reconcile(active.clone()).await, Ok(Drift::default()));
        driver.kernel.lock().unwrap().elements.clear();
        let drift = fw.reconcile(active).await.unwrap();
        assert!(!drift.table_rebuilt);
        assert_eq!(
            drift.restored.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            [sid("10.0.0.1"), sid("tcp:9")]
        );
        assert_eq!(fw.expires_in(sid("tcp:9")).await, Ok(Some(60)));
    }

    #[tokio::test]
    async fn concurrent_claims_share_batches() {
        let driver = FakeDriver::default();
        let fw = Arc::new(NftFirewall::start(driver.clone()));
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let fw = fw.clone();
                let e = Element::isolate(
                    std::net::IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]).into_sid(),
                );
                tokio::spawn(async move { fw.claim(claim(&format!("p{i}"), e, 30)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(driver.kernel.lock().unwrap().elements.len(), 200);
        assert!(
            driver.batches.lock().unwrap().len() < 200,
            "changes were batched"
        );
    }

    #[tokio::test]
    async fn preview_is_the_batch_a_claim_sends() {
        let driver = FakeDriver::default();
        let fw = NftFirewall::start(driver.clone());
        fw.claim(claim("a", sid("10.0.0.1"), 30)).await.unwrap();
        let preview = fw.preview_claim(sid("tcp:80"), 15).await.unwrap();
        fw.claim(claim("b", sid("tcp:80"), 15)).await.unwrap();
        assert_eq!(driver.batches.lock().unwrap().last(), Some(&preview));
        fw.remove_table().await.unwrap();
        assert!(!driver.kernel.lock().unwrap().table);
    }

    trait IntoSid {
        fn into_sid(self) -> crate::actions::net::Sid;
    }
    impl IntoSid for std::net::IpAddr {
        fn into_sid(self) -> crate::actions::net::Sid {
            crate::actions::net::Sid::Addr(self)
        }
    }

    /// A driver whose batches wait until the test lets them through.
    struct Held {
        fake: FakeDriver,
        gate: Arc<tokio::sync::Semaphore>,
    }

    #[async_trait]
    impl Driver for Held {
        async fn apply(&self, batch: &Value) -> Result<(), String> {
            let _pass = self.gate.acquire().await.map_err(|e| e.to_string())?;
            self.fake.apply(batch).await
        }
        async fn list(&self) -> Result<Option<Value>, String> {
            self.fake.list().await
        }
    }

    #[tokio::test]
    async fn a_batch_that_does_not_end_shows_as_a_stall_until_it_does() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let firewall = Arc::new(NftFirewall::start(Held {
            fake: FakeDriver::default(),
            gate: gate.clone(),
        }));
        assert_eq!(firewall.stalled_for_ms(), 0, "idle");
        let claiming = {
            let firewall = firewall.clone();
            tokio::spawn(async move { firewall.claim(claim("p", sid("tcp:8080"), 60)).await })
        };
        while firewall.stalled_for_ms() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            firewall.stalled_for_ms() >= 50,
            "{}",
            firewall.stalled_for_ms()
        );
        gate.add_permits(10);
        assert!(claiming.await.unwrap().is_ok());
        assert_eq!(firewall.stalled_for_ms(), 0, "idle again");
    }
}
