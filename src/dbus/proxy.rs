//! The client side of `org.vael.Antibody`, for `antibodyctl` and the tests.

use zbus::proxy;

#[proxy(
    interface = "org.vael.Antibody",
    default_service = "org.vael.Antibody",
    default_path = "/org/vael/Antibody"
)]
pub trait Antibody {
    fn submit_alert(&self, alert_json: &str) -> zbus::Result<(String, bool)>;
    fn get_plan(&self, plan_id: &str) -> zbus::Result<String>;
    fn list_plans(&self, status: &str, limit: u32) -> zbus::Result<String>;
    fn list_playbooks(&self) -> zbus::Result<String>;
    fn dry_run(&self, alert_json: &str) -> zbus::Result<String>;
    fn rollback_plan(&self, plan_id: &str) -> zbus::Result<()>;
    fn verify_ledger(&self) -> zbus::Result<(bool, String)>;
    fn status(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn queue_depth(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn healthy(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn active_mitigations(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn plan_queued(&self, plan_id: &str, source: &str, severity: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn plan_status_changed(&self, plan_id: &str, status: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn action_finished(
        &self,
        plan_id: &str,
        index: u32,
        r#type: &str,
        outcome: &str,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn operator_notice(&self, channel: &str, severity: &str, message: &str) -> zbus::Result<()>;
}

/// The proxy `antibodyctl` and the benchmarks call through: without a
/// property cache, which would subscribe to (and wake the client for)
/// every `PropertiesChanged` the agent sends while the client only calls.
pub async fn client(conn: &zbus::Connection) -> zbus::Result<AntibodyProxy<'static>> {
    AntibodyProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}
