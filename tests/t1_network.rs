//! T1: the engine's side of the network mitigations across a restart and
//! while a revert keeps failing, with the nft backend on a fake driver
//! (its kernel is a map of set elements). That the real nft does what the
//! fake does is proven in T3 (t3_nft).

mod rig;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use antibody::sys::nft::backend::Driver;
use rig::*;

/// A driver whose next `failures` batches fail as a busy netlink would.
#[derive(Clone, Default)]
struct Flaky {
    fake: FakeDriver,
    failures: Arc<AtomicU32>,
}

#[async_trait]
impl Driver for Flaky {
    async fn apply(&self, batch: &Value) -> Result<(), String> {
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err("netlink busy (flaky)".into());
        }
        self.fake.apply(batch).await
    }

    async fn list(&self) -> Result<Option<Value>, String> {
        self.fake.list().await
    }
}

/// An engine on `dir` whose firewall goes through `driver`: opening the
/// same directory again with the same driver is an agent restart.
fn engine_on(dir: &std::path::Path, driver: impl Driver + Clone, extra: &str) -> Arc<Engine> {
    let mut registry = antibody::actions::Registry::builtin();
    registry.register(Arc::new(Step::default()));
    Engine::open(
        config_in(dir, extra),
        EngineParts {
            registry,
            sys: Sys {
                notifier: Arc::new(RecordingNotifier::default()),
                systemd: Arc::new(FakeSystemd::default()),
                firewall: Arc::new(NftFirewall::start(driver)),
                http: Arc::new(antibody::sys::http::UreqClient),
            },
            events: events::channel(),
            mirror: None,
            own_unit: None,
        },
    )
    .unwrap()
}

fn elements(driver: &FakeDriver) -> usize {
    driver.kernel.lock().unwrap().elements.len()
}

fn isolate(description: &str, seconds: u64) -> String {
    alert(
        description,
        json!([{"type": "isolate_socket", "sid": "10.9.9.9", "seconds": seconds}]),
    )
}

async fn isolated(engine: &Engine, description: &str, seconds: u64) -> String {
    let (id, _) = engine.submit(&isolate(description, seconds)).await.unwrap();
    assert_eq!(wait_finished(engine, &id).await["status"], "success");
    id
}

#[tokio::test]
async fn an_overdue_revert_at_start_keeps_an_element_another_plan_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let driver = FakeDriver::default();
    let engine = engine_on(dir.path(), driver.clone(), "");
    tokio::spawn(engine.clone().run());
    let short = isolated(&engine, "short", 1).await;
    let long = isolated(&engine, "long", 3600).await;
    engine.begin_stop();
    drop(engine);
    // The agent is down past the short isolation's end.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let sent_before = driver.batches.lock().unwrap().len();
    let engine = engine_on(dir.path(), driver.clone(), "");
    engine.recover_before_ready().await.unwrap();
    // Not even for a moment: no batch since the restart deleted it.
    let since: Vec<Value> = driver.batches.lock().unwrap()[sent_before..].to_vec();
    assert!(
        !since.iter().any(|b| b.to_string().contains("\"delete\"")),
        "{since:?}"
    );
    let plan = |id: &str| engine.get_plan(id).unwrap()["actions"][0]["state"].clone();
    assert_eq!(
        plan(&short),
        "reverted",
        "the overdue revert ran before READY=1"
    );
    assert_eq!(plan(&long), "applied");
    assert_eq!(elements(&driver), 1, "the long plan's element stays");
}

#[tokio::test]
async fn an_isolation_whose_end_keeps_failing_is_not_put_back_by_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Flaky::default();
    let engine = engine_on(dir.path(), flaky.clone(), "");
    tokio::spawn(engine.clone().run());
    let id = isolated(&engine, "short", 1).await;
    // Its end fails (the backend tries each batch twice) and is retried.
    flaky.failures.store(2, Ordering::SeqCst);
    wait_for(
        || engine.get_plan(&id).unwrap()["actions"][0]["timed_revert_failures"] == 1,
        "a failed end",
    )
    .await;
    // The kernel's own timeout ends the element meanwhile.
    flaky.fake.kernel.lock().unwrap().elements.clear();
    let drift = engine.reconcile_firewall().await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
    assert_eq!(elements(&flaky.fake), 0, "an ended isolation was put back");
    wait_for(
        || engine.get_plan(&id).unwrap()["actions"][0]["state"] == "reverted",
        "the retried end",
    )
    .await;
}

/// A firewall that reports itself stuck on a batch for `stalled_ms`.
struct Stalled {
    inner: NftFirewall,
    stalled_ms: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait]
impl antibody::sys::nft::Firewall for Stalled {
    fn stalled_for_ms(&self) -> u64 {
        self.stalled_ms.load(Ordering::Relaxed)
    }
    async fn claim(
        &self,
        claim: antibody::sys::nft::Claim,
    ) -> Result<u64, antibody::sys::nft::FirewallError> {
        self.inner.claim(claim).await
    }
    async fn release(
        &self,
        owner: &str,
        element: antibody::sys::nft::Element,
    ) -> Result<Option<u64>, antibody::sys::nft::FirewallError> {
        self.inner.release(owner, element).await
    }
    async fn expires_in(
        &self,
        element: antibody::sys::nft::Element,
    ) -> Result<Option<u64>, antibody::sys::nft::FirewallError> {
        self.inner.expires_in(element).await
    }
    async fn reconcile(
        &self,
        active: Vec<antibody::sys::nft::Claim>,
    ) -> Result<antibody::sys::nft::Drift, antibody::sys::nft::FirewallError> {
        self.inner.reconcile(active).await
    }
    async fn preview_claim(
        &self,
        element: antibody::sys::nft::Element,
        timeout_secs: u64,
    ) -> Result<Value, antibody::sys::nft::FirewallError> {
        self.inner.preview_claim(element, timeout_secs).await
    }
    async fn remove_table(&self) -> Result<bool, antibody::sys::nft::FirewallError> {
        self.inner.remove_table().await
    }
}

#[tokio::test]
async fn a_firewall_stuck_on_a_batch_makes_the_agent_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let stalled_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let engine = Engine::open(
        config_in(dir.path(), ""),
        EngineParts {
            registry: antibody::actions::Registry::builtin(),
            sys: Sys {
                notifier: Arc::new(RecordingNotifier::default()),
                systemd: Arc::new(FakeSystemd::default()),
                firewall: Arc::new(Stalled {
                    inner: NftFirewall::start(FakeDriver::default()),
                    stalled_ms: stalled_ms.clone(),
                }),
                http: Arc::new(antibody::sys::http::UreqClient),
            },
            events: events::channel(),
            mirror: None,
            own_unit: None,
        },
    )
    .unwrap();
    tokio::spawn(engine.clone().run());
    wait_for(|| engine.healthy(), "a healthy start").await;
    // Three nft timeouts' worth (30 s) on one batch: unhealthy, in Status too.
    stalled_ms.store(30_000, Ordering::Relaxed);
    assert!(!engine.healthy());
    assert_eq!(engine.status()["healthy"], false);
    stalled_ms.store(29_999, Ordering::Relaxed);
    assert!(engine.healthy());
}
