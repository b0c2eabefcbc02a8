//! The `org.vael.Antibody` interface: argument plumbing, authorization and
//! error naming only. Every decision is the engine's.

use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection};

use super::auth::{Authorizer, Permission};
use super::errors::Error;
use crate::engine::{Engine, VERSION};
use crate::plan::PlanStatus;

pub const BUS_NAME: &str = "org.vael.Antibody";
pub const OBJECT_PATH: &str = "/org/vael/Antibody";
pub const INTERFACE: &str = "org.vael.Antibody";

pub struct Antibody {
    engine: Arc<Engine>,
    auth: Authorizer,
}

impl Antibody {
    pub fn new(engine: Arc<Engine>) -> Antibody {
        Antibody {
            engine,
            auth: Authorizer::default(),
        }
    }

    async fn require(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        permission: Permission,
    ) -> Result<super::auth::Caller, Error> {
        let auth = self.engine.config().auth.clone();
        self.auth.require(conn, header, permission, &auth).await
    }
}

#[interface(name = "org.vael.Antibody")]
impl Antibody {
    /// Validate, dedupe, persist (fsync) and queue an alert's plan.
    #[zbus(out_args("plan_id", "created"))]
    async fn submit_alert(
        &self,
        alert_json: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(String, bool), Error> {
        let caller = self.require(conn, &header, Permission::Submit).await?;
        let limited = (caller.uid != 0).then_some(caller.uid);
        Ok(self.engine.submit_as(alert_json, limited).await?)
    }

    /// The plan as stored, with per-action state and log.
    #[zbus(out_args("plan_json"))]
    async fn get_plan(
        &self,
        plan_id: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Error> {
        self.require(conn, &header, Permission::Read).await?;
        Ok(self.engine.fetch_plan(plan_id).await?)
    }

    /// Plans newest first; an empty status means all; limit 0 means 100,
    /// and at most 1000.
    #[zbus(out_args("plans_json"))]
    async fn list_plans(
        &self,
        status: &str,
        limit: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Error> {
        self.require(conn, &header, Permission::Read).await?;
        let filter = match status {
            "" => None,
            other => Some(PlanStatus::parse(other).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "status: {other:?} is not one of pending, in_progress, success, failed (or empty for all)"
                ))
            })?),
        };
        Ok(self.engine.list_plans(filter, limit))
    }

    /// The playbooks in force, in the order they are tried.
    #[zbus(out_args("playbooks_json"))]
    async fn list_playbooks(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Error> {
        self.require(conn, &header, Permission::Read).await?;
        Ok(self.engine.list_playbooks())
    }

    /// The plan that would be made and each action's exact change; no side effect.
    #[zbus(out_args("dry_run_json"))]
    async fn dry_run(
        &self,
        alert_json: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Error> {
        let caller = self.require(conn, &header, Permission::Submit).await?;
        let limited = (caller.uid != 0).then_some(caller.uid);
        Ok(self
            .engine
            .dry_run_as(alert_json, limited)
            .await?
            .to_string())
    }

    /// Revert the reversible actions of a finished plan, newest first.
    async fn rollback_plan(
        &self,
        plan_id: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let caller = self.require(conn, &header, Permission::Rollback).await?;
        Ok(self.engine.rollback(plan_id, &caller.label()).await?)
    }

    /// Re-walk the hash chain; the report names the first bad record.
    #[zbus(out_args("ok", "report"))]
    async fn verify_ledger(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(bool, String), Error> {
        self.require(conn, &header, Permission::Read).await?;
        Ok(self.engine.verify_ledger().await)
    }

    /// Health, queue depth, in-flight plans, active mitigations, ledger state, version.
    #[zbus(out_args("status_json"))]
    async fn status(&self) -> String {
        self.engine.status().to_string()
    }

    #[zbus(property)]
    async fn queue_depth(&self) -> u32 {
        self.engine.queue_depth()
    }

    #[zbus(property)]
    async fn healthy(&self) -> bool {
        self.engine.healthy()
    }

    #[zbus(property)]
    async fn active_mitigations(&self) -> u32 {
        self.engine.active_mitigations()
    }

    #[zbus(property)]
    async fn version(&self) -> String {
        VERSION.to_string()
    }

    #[zbus(signal)]
    pub async fn plan_queued(
        emitter: &SignalEmitter<'_>,
        plan_id: &str,
        source: &str,
        severity: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn plan_status_changed(
        emitter: &SignalEmitter<'_>,
        plan_id: &str,
        status: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn action_finished(
        emitter: &SignalEmitter<'_>,
        plan_id: &str,
        index: u32,
        r#type: &str,
        outcome: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn operator_notice(
        emitter: &SignalEmitter<'_>,
        channel: &str,
        severity: &str,
        message: &str,
    ) -> zbus::Result<()>;
}
