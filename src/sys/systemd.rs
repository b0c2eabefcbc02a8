//! systemd's Manager over D-Bus (`org.freedesktop.systemd1`), never
//! `systemctl`: restart a unit and wait for exactly its job, read a unit's
//! state, read and set its runtime resource limits. The real implementation
//! keeps one long-lived system-bus connection of its own and opens a new one
//! when the bus went away (a restarted dbus-daemon).

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use zbus::proxy::CacheProperties;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy;

/// What went wrong talking to systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemdError {
    /// systemd knows no such unit: retrying will not help.
    NoSuchUnit(String),
    /// systemd refused the request (a bad property, a masked unit, …).
    Refused(String),
    /// The bus or systemd could not be reached; a later attempt may work.
    Unreachable(String),
    /// The job did not finish in time; it may still be queued in systemd.
    Timeout(String),
}

impl SystemdError {
    pub fn message(&self) -> &str {
        match self {
            SystemdError::NoSuchUnit(m)
            | SystemdError::Refused(m)
            | SystemdError::Unreachable(m)
            | SystemdError::Timeout(m) => m,
        }
    }
}

impl std::fmt::Display for SystemdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// A unit as systemd reports it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub unit: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// 32 hex digits; empty while the unit has never run.
    pub invocation_id: String,
    /// For services: the main process, 0 when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_pid: Option<u32>,
}

/// How a job ended: `result` is systemd's word (`done`, `failed`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub job_id: u32,
    pub result: String,
}

/// The runtime limits a throttle changes, in systemd's own units;
/// `u64::MAX` is systemd's "infinity" / "not set".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    #[serde(rename = "CPUQuotaPerSecUSec")]
    pub cpu_quota_per_sec_usec: u64,
    #[serde(rename = "MemoryHigh")]
    pub memory_high: u64,
    #[serde(rename = "IOWeight")]
    pub io_weight: u64,
}

#[async_trait]
pub trait Systemd: Send + Sync {
    /// `RestartUnit(unit, "replace")`, then the `JobRemoved` of exactly that
    /// job, within `timeout`.
    async fn restart_unit(&self, unit: &str, timeout: Duration)
        -> Result<JobOutcome, SystemdError>;

    async fn unit_status(&self, unit: &str) -> Result<UnitStatus, SystemdError>;

    async fn resource_limits(&self, unit: &str) -> Result<ResourceLimits, SystemdError>;

    /// `SetUnitProperties(unit, runtime=true, …)`: gone at reboot at the latest.
    async fn set_resource_limits(
        &self,
        unit: &str,
        limits: &ResourceLimits,
    ) -> Result<(), SystemdError>;
}

/// The D-Bus interface that carries a unit type's cgroup properties.
pub fn cgroup_interface(unit: &str) -> Option<&'static str> {
    let suffix = unit.rsplit_once('.')?.1;
    Some(match suffix {
        "service" => "org.freedesktop.systemd1.Service",
        "socket" => "org.freedesktop.systemd1.Socket",
        "mount" => "org.freedesktop.systemd1.Mount",
        "swap" => "org.freedesktop.systemd1.Swap",
        "slice" => "org.freedesktop.systemd1.Slice",
        "scope" => "org.freedesktop.systemd1.Scope",
        _ => return None,
    })
}

/// Transient job results: the next attempt may succeed. `done` is success;
/// anything else not listed here (`invalid`, `unsupported`) is permanent.
pub fn job_result_is_transient(result: &str) -> bool {
    matches!(
        result,
        "failed" | "timeout" | "dependency" | "canceled" | "skipped"
    )
}

/// Hex of systemd's 16-byte InvocationID.
pub fn invocation_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn classify(e: zbus::Error, what: &str) -> SystemdError {
    if let zbus::Error::MethodError(name, detail, _) = &e {
        let detail = detail.clone().unwrap_or_default();
        return match name.as_str() {
            "org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.systemd1.LoadFailed" => {
                SystemdError::NoSuchUnit(format!("{what}: {detail}"))
            }
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NoReply"
            | "org.freedesktop.DBus.Error.Disconnected"
            | "org.freedesktop.DBus.Error.Timeout"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
                SystemdError::Unreachable(format!("{what}: systemd is not reachable: {detail}"))
            }
            _ => SystemdError::Refused(format!("{what}: {name}: {detail}")),
        };
    }
    SystemdError::Unreachable(format!("{what}: system bus: {e}"))
}

/// The real Manager, over one system-bus connection of its own.
#[derive(Default)]
pub struct SystemdManager {
    connection: Mutex<Option<zbus::Connection>>,
}

impl SystemdManager {
    pub fn new() -> SystemdManager {
        SystemdManager::default()
    }

    /// The live connection, opened (and subscribed to Manager signals) on
    /// first use and again after the bus dropped it.
    async fn connection(&self) -> Result<zbus::Connection, SystemdError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            // zbus marks a connection closed when its socket ends (a
            // restarted dbus-daemon); then a new one is opened below.
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
            *slot = None;
        }
        let conn = zbus::Connection::system()
            .await
            .map_err(|e| SystemdError::Unreachable(format!("system bus: {e}")))?;
        // systemd sends JobRemoved only to subscribed clients.
        manager_on(&conn)
            .await?
            .subscribe()
            .await
            .map_err(|e| classify(e, "Manager.Subscribe"))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, SystemdError> {
        manager_on(&self.connection().await?).await
    }

    /// The unit's object path, loading the unit if systemd has not yet.
    /// `LoadUnit` answers even for a name with no unit file behind it; the
    /// callers check `LoadState`.
    async fn unit_path(
        &self,
        unit: &str,
    ) -> Result<(zbus::Connection, OwnedObjectPath), SystemdError> {
        let conn = self.connection().await?;
        let path = manager_on(&conn)
            .await?
            .load_unit(unit.to_string())
            .await
            .map_err(|e| classify(e, &format!("LoadUnit({unit})")))?;
        Ok((conn, path))
    }
}

async fn manager_on(conn: &zbus::Connection) -> Result<ManagerProxy<'static>, SystemdError> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| classify(e, "Manager"))
}

/// The properties of one interface of a unit, in one call and without a
/// proxy's property cache (which would cost a match rule per unit).
async fn properties(
    conn: &zbus::Connection,
    path: &OwnedObjectPath,
    interface: &'static str,
) -> Result<Properties, SystemdError> {
    let proxy = zbus::fdo::PropertiesProxy::builder(conn)
        .destination("org.freedesktop.systemd1")
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| classify(e, "Properties"))?;
    let name = zbus::names::InterfaceName::from_static_str_unchecked(interface);
    let values = proxy
        .get_all(name)
        .await
        .map_err(|e| classify(e.into(), &format!("{} properties", path.as_str())))?;
    Ok(Properties {
        what: path.as_str().to_string(),
        values,
    })
}

struct Properties {
    what: String,
    values: std::collections::HashMap<String, OwnedVariant>,
}

impl Properties {
    fn take<T>(&mut self, name: &str) -> Result<T, SystemdError>
    where
        T: TryFrom<OwnedVariant>,
        T::Error: std::fmt::Display,
    {
        let value = self.values.remove(name).ok_or_else(|| {
            SystemdError::Refused(format!("{} has no property {name}", self.what))
        })?;
        T::try_from(value).map_err(|e| SystemdError::Refused(format!("{} {name}: {e}", self.what)))
    }
}

fn require_loaded(unit: &str, unit_props: &mut Properties) -> Result<String, SystemdError> {
    let load_state: String = unit_props.take("LoadState")?;
    if load_state == "not-found" {
        return Err(SystemdError::NoSuchUnit(format!(
            "unit {unit} does not exist (LoadState=not-found)"
        )));
    }
    Ok(load_state)
}

#[async_trait]
impl Systemd for SystemdManager {
    async fn restart_unit(
        &self,
        unit: &str,
        timeout: Duration,
    ) -> Result<JobOutcome, SystemdError> {
        let manager = self.manager().await?;
        // Subscribe to JobRemoved before asking, so a quick job cannot end
        // before we listen.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| classify(e, "JobRemoved match"))?;
        let job = manager
            .restart_unit(unit.to_string(), "replace".into())
            .await
            .map_err(|e| classify(e, &format!("RestartUnit({unit})")))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Ok(JobOutcome {
                        job_id: args.id,
                        result: args.result.to_string(),
                    });
                }
            }
            Err(SystemdError::Unreachable(format!(
                "the bus closed while waiting for the restart job of {unit}"
            )))
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or_else(|_| {
            Err(SystemdError::Timeout(format!(
                "the restart job {} of {unit} did not finish within {} s (restart.timeout_secs); it may still be queued in systemd",
                job.as_str(),
                timeout.as_secs()
            )))
        })
    }

    async fn unit_status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let (conn, path) = self.unit_path(unit).await?;
        let mut props = properties(&conn, &path, "org.freedesktop.systemd1.Unit").await?;
        let load_state = require_loaded(unit, &mut props)?;
        let invocation: Vec<u8> = props.take("InvocationID")?;
        let main_pid = if unit.ends_with(".service") {
            let mut service = properties(&conn, &path, "org.freedesktop.systemd1.Service").await?;
            Some(service.take::<u32>("MainPID")?)
        } else {
            None
        };
        Ok(UnitStatus {
            unit: unit.to_string(),
            load_state,
            active_state: props.take("ActiveState")?,
            sub_state: props.take("SubState")?,
            invocation_id: invocation_hex(&invocation),
            main_pid,
        })
    }

    async fn resource_limits(&self, unit: &str) -> Result<ResourceLimits, SystemdError> {
        let interface = cgroup_interface(unit).ok_or_else(|| {
            SystemdError::Refused(format!("{unit} has no cgroup: it cannot be throttled"))
        })?;
        let (conn, path) = self.unit_path(unit).await?;
        let mut unit_props = properties(&conn, &path, "org.freedesktop.systemd1.Unit").await?;
        require_loaded(unit, &mut unit_props)?;
        let mut props = properties(&conn, &path, interface).await?;
        Ok(ResourceLimits {
            cpu_quota_per_sec_usec: props.take("CPUQuotaPerSecUSec")?,
            memory_high: props.take("MemoryHigh")?,
            io_weight: props.take("IOWeight")?,
        })
    }

    async fn set_resource_limits(
        &self,
        unit: &str,
        limits: &ResourceLimits,
    ) -> Result<(), SystemdError> {
        let manager = self.manager().await?;
        let properties = [
            ("CPUQuotaPerSecUSec", limits.cpu_quota_per_sec_usec),
            ("MemoryHigh", limits.memory_high),
            ("IOWeight", limits.io_weight),
        ]
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                Variant::from(value).try_into().expect("u64 variant"),
            )
        })
        .collect();
        manager
            .set_unit_properties(unit.to_string(), true, properties)
            .await
            .map_err(|e| classify(e, &format!("SetUnitProperties({unit})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_interfaces_by_suffix() {
        assert_eq!(
            cgroup_interface("nginx.service"),
            Some("org.freedesktop.systemd1.Service")
        );
        assert_eq!(
            cgroup_interface("user.slice"),
            Some("org.freedesktop.systemd1.Slice")
        );
        assert_eq!(cgroup_interface("multi-user.target"), None);
        assert_eq!(cgroup_interface("x.timer"), None);
    }

    #[test]
    fn job_results() {
        assert!(job_result_is_transient("failed"));
        assert!(job_result_is_transient("dependency"));
        assert!(!job_result_is_transient("invalid"));
        assert!(!job_result_is_transient("unsupported"));
    }

    #[test]
    fn limits_serialize_with_systemd_names() {
        let limits = ResourceLimits {
            cpu_quota_per_sec_usec: 200_000,
            memory_high: u64::MAX,
            io_weight: u64::MAX,
        };
        let json = serde_json::to_value(limits).unwrap();
        assert_eq!(json["CPUQuotaPerSecUSec"], 200_000);
        assert_eq!(json["MemoryHigh"], u64::MAX);
        let back: ResourceLimits = serde_json::from_value(json).unwrap();
        assert_eq!(back, limits);
    }
}
