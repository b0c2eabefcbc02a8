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

use super::job_board::{JobBoard, JobEnd, JobWait};

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
    /// The bus closed (a restarted dbus-daemon) before systemd's answer to
    /// `RestartUnit` or before the job's `JobRemoved` came. systemd has no
    /// job for the unit any more, but whether a restart happened was not
    /// heard: the unit's state has to tell.
    JobLost(String),
}

impl SystemdError {
    pub fn message(&self) -> &str {
        match self {
            SystemdError::NoSuchUnit(m)
            | SystemdError::Refused(m)
            | SystemdError::Unreachable(m)
            | SystemdError::Timeout(m)
            | SystemdError::JobLost(m) => m,
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

/// What the unit guards check just before a change (see
/// `actions::unit_guard::refusal_at_apply`), as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFacts {
    /// The unit's own name (`Id`), which an alias resolves to.
    pub id: String,
    /// Every name systemd knows the unit by (its id and its aliases).
    pub names: Vec<String>,
    pub load_state: String,
    /// The unit file it was loaded from; empty when none.
    pub fragment_path: String,
    pub refuse_manual_start: bool,
    pub refuse_manual_stop: bool,
    /// The slice it runs in; empty for units with no cgroup.
    pub slice: String,
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

    /// What the unit guards check before a change: names, load state,
    /// unit file, `RefuseManual*`, slice.
    async fn unit_facts(&self, unit: &str) -> Result<UnitFacts, SystemdError>;

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

/// How long opening the connection to systemd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call to systemd may take (a hung Manager fails the call,
/// as out of reach, rather than hold a plan, a reconcile or the start
/// forever). A restart's wait for its job is bounded apart, by
/// `restart.timeout_secs`.
const CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// The real Manager, over one system-bus connection of its own.
#[derive(Default)]
pub struct SystemdManager {
    /// The connection, and the board its one `JobRemoved` listener posts to.
    connection: Mutex<Option<(zbus::Connection, JobBoard)>>,
}

impl SystemdManager {
    pub fn new() -> SystemdManager {
        SystemdManager::default()
    }

    /// The live connection and its job board, opened (subscribed to
    /// Manager signals, `JobRemoved` listened to) on first use and again
    /// after the bus dropped it.
    async fn connection(&self) -> Result<(zbus::Connection, JobBoard), SystemdError> {
        let mut slot = self.connection.lock().await;
        if let Some((conn, board)) = slot.as_ref() {
            // zbus marks a connection closed when its socket ends (a
            // restarted dbus-daemon); then a new one is opened below.
            if !conn.is_closed() && !board.is_closed() {
                return Ok((conn.clone(), board.clone()));
            }
            *slot = None;
        }
        // A bus daemon being restarted can leave a connection waiting in
        // its socket's backlog: bounded, so no caller waits on it forever.
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let conn = zbus::connection::Builder::system()
                .method_timeout(CALL_TIMEOUT)
                .build()
                .await
                .map_err(|e| SystemdError::Unreachable(format!("system bus: {e}")))?;
            let manager = manager_on(&conn).await?;
            let removed = manager
                .receive_job_removed()
                .await
                .map_err(|e| classify(e, "JobRemoved match"))?;
            // systemd sends JobRemoved only to subscribed clients.
            manager
                .subscribe()
                .await
                .map_err(|e| classify(e, "Manager.Subscribe"))?;
            Ok((conn, removed))
        })
        .await;
        let (conn, removed) = opened.unwrap_or_else(|_| {
            Err(SystemdError::Unreachable(format!(
                "system bus: no connection to systemd within {} s",
                CONNECT_TIMEOUT.as_secs()
            )))
        })?;
        let board = JobBoard::default();
        let ends = removed.filter_map(|signal| async move {
            let args = signal.args().ok()?;
            Some(JobEnd {
                job: args.job.to_string(),
                outcome: JobOutcome {
                    job_id: args.id,
                    result: args.result.to_string(),
                },
            })
        });
        tokio::spawn(board.clone().listen(ends));
        *slot = Some((conn.clone(), board.clone()));
        Ok((conn, board))
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, SystemdError> {
        manager_on(&self.connection().await?.0).await
    }

    /// Returns once systemd lists no job for `unit`, asking again (over a
    /// new connection when needed) while the bus is down or a job is still
    /// queued or running. The caller bounds the wait.
    async fn wait_until_unit_has_no_job(&self, unit: &str) {
        let mut delay = Duration::from_millis(50);
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            let Ok(manager) = self.manager().await else {
                continue;
            };
            match manager.list_jobs().await {
                Ok(jobs) if !jobs.iter().any(|job| job.1 == unit) => return,
                // A job is still there, or the bus is not back yet.
                _ => continue,
            }
        }
    }

    /// The connection and the unit's object path. systemd loads a unit
    /// when its path is first used, so no `LoadUnit` round trip is needed;
    /// callers check `LoadState` (a name with no unit file is `not-found`).
    async fn unit_object(
        &self,
        unit: &str,
    ) -> Result<(zbus::Connection, OwnedObjectPath), SystemdError> {
        let (conn, _) = self.connection().await?;
        let path = OwnedObjectPath::try_from(unit_object_path(unit))
            .map_err(|e| SystemdError::Refused(format!("{unit}: {e}")))?;
        Ok((conn, path))
    }
}

/// systemd's object path for a unit: `/org/freedesktop/systemd1/unit/`
/// and the name with every byte but letters (and digits after the first
/// byte) written as `_xx`, as sd-bus's `bus_label_escape` does.
pub fn unit_object_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        path.push('_');
    }
    for (i, byte) in unit.bytes().enumerate() {
        if byte.is_ascii_alphabetic() || (i > 0 && byte.is_ascii_digit()) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("_{byte:02x}"));
        }
    }
    path
}

async fn manager_on(conn: &zbus::Connection) -> Result<ManagerProxy<'static>, SystemdError> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| classify(e, "Manager"))
}

/// Reads properties of one object, each with its own `Get`, all sent at
/// once (zbus pipelines them on the connection): one round trip's wait,
/// and far smaller answers than a `GetAll` of systemd's 200-odd properties.
struct Reader {
    proxy: zbus::fdo::PropertiesProxy<'static>,
    what: String,
}

impl Reader {
    async fn new(conn: &zbus::Connection, path: &OwnedObjectPath) -> Result<Reader, SystemdError> {
        let proxy = zbus::fdo::PropertiesProxy::builder(conn)
            .destination("org.freedesktop.systemd1")
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| classify(e, "Properties"))?;
        Ok(Reader {
            proxy,
            what: path.as_str().to_string(),
        })
    }

    async fn get<T>(&self, interface: &'static str, name: &'static str) -> Result<T, SystemdError>
    where
        T: TryFrom<OwnedVariant>,
        T::Error: std::fmt::Display,
    {
        let iface = zbus::names::InterfaceName::from_static_str_unchecked(interface);
        let value = self.proxy.get(iface, name).await;
        crate::sys::sdnotify::note_start_progress(1);
        let value = value.map_err(|e| classify(e.into(), &format!("{} {name}", self.what)))?;
        T::try_from(value).map_err(|e| SystemdError::Refused(format!("{} {name}: {e}", self.what)))
    }
}

const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";

fn require_loaded(unit: &str, load_state: &str) -> Result<(), SystemdError> {
    if load_state == "not-found" {
        return Err(SystemdError::NoSuchUnit(format!(
            "unit {unit} does not exist (LoadState=not-found)"
        )));
    }
    Ok(())
}

#[async_trait]
impl Systemd for SystemdManager {
    async fn restart_unit(
        &self,
        unit: &str,
        timeout: Duration,
    ) -> Result<JobOutcome, SystemdError> {
        let restart = async {
            let (conn, board) = self.connection().await?;
            // The connection's JobRemoved listener was subscribed before this
            // call, so however quickly the job ends, its end is on the board.
            let asked = manager_on(&conn)
                .await?
                .restart_unit(unit.to_string(), "replace".into())
                .await;
            let job = match asked {
                Ok(job) => job,
                Err(e @ zbus::Error::MethodError(..)) => {
                    return Err(classify(e, &format!("RestartUnit({unit})")))
                }
                // The bus went away with the question or its answer: systemd
                // may have queued the job all the same.
                Err(e) => {
                    self.wait_until_unit_has_no_job(unit).await;
                    return Err(SystemdError::JobLost(format!(
                        "the bus closed before systemd answered RestartUnit({unit}) ({e})"
                    )));
                }
            };
            match board.wait_for(job.as_str()) {
                JobWait::Ended(outcome) => return Ok(outcome),
                JobWait::Pending(end) => {
                    if let Ok(outcome) = end.await {
                        return Ok(outcome);
                    }
                }
                JobWait::Deaf => {}
            }
            // The bus went away first: wait on a new connection until
            // systemd has no job for the unit. Asking for another restart
            // instead would restart the unit twice.
            self.wait_until_unit_has_no_job(unit).await;
            Err(SystemdError::JobLost(format!(
                "the bus closed while the restart job {} of {unit} ran, so its result was not heard",
                job.as_str()
            )))
        };
        tokio::time::timeout(timeout, restart).await.unwrap_or_else(|_| {
            Err(SystemdError::Timeout(format!(
                "the restart of {unit} did not finish within {} s (restart.timeout_secs); its job may still be queued in systemd",
                timeout.as_secs()
            )))
        })
    }

    async fn unit_status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let (conn, path) = self.unit_object(unit).await?;
        let read = Reader::new(&conn, &path).await?;
        let is_service = unit.ends_with(".service");
        let main_pid = async {
            match is_service {
                true => read.get::<u32>(SERVICE_IFACE, "MainPID").await.map(Some),
                false => Ok(None),
            }
        };
        let unit_props = async {
            tokio::try_join!(
                read.get::<String>(UNIT_IFACE, "LoadState"),
                read.get::<String>(UNIT_IFACE, "ActiveState"),
                read.get::<String>(UNIT_IFACE, "SubState"),
                read.get::<Vec<u8>>(UNIT_IFACE, "InvocationID"),
            )
        };
        // All five questions go out at once; a missing unit is told by its
        // LoadState, whatever the MainPID question answered.
        let (unit_props, main_pid) = tokio::join!(unit_props, main_pid);
        let (load_state, active_state, sub_state, invocation) = unit_props?;
        require_loaded(unit, &load_state)?;
        let main_pid = main_pid?;
        Ok(UnitStatus {
            unit: unit.to_string(),
            load_state,
            active_state,
            sub_state,
            invocation_id: invocation_hex(&invocation),
            main_pid,
        })
    }

    async fn unit_facts(&self, unit: &str) -> Result<UnitFacts, SystemdError> {
        let (conn, path) = self.unit_object(unit).await?;
        let read = Reader::new(&conn, &path).await?;
        // Only units with a cgroup have a slice (and may be acted on).
        let slice = async {
            match cgroup_interface(unit) {
                Some(interface) => read.get::<String>(interface, "Slice").await,
                None => Ok(String::new()),
            }
        };
        // Seven questions, all sent at once.
        let (id, names, load_state, fragment_path, refuse_manual_start, refuse_manual_stop, slice) =
            tokio::try_join!(
                read.get::<String>(UNIT_IFACE, "Id"),
                read.get::<Vec<String>>(UNIT_IFACE, "Names"),
                read.get::<String>(UNIT_IFACE, "LoadState"),
                read.get::<String>(UNIT_IFACE, "FragmentPath"),
                read.get::<bool>(UNIT_IFACE, "RefuseManualStart"),
                read.get::<bool>(UNIT_IFACE, "RefuseManualStop"),
                slice,
            )?;
        // A missing unit is told as every other read tells it.
        require_loaded(unit, &load_state)?;
        Ok(UnitFacts {
            id,
            names,
            load_state,
            fragment_path,
            refuse_manual_start,
            refuse_manual_stop,
            slice,
        })
    }

    async fn resource_limits(&self, unit: &str) -> Result<ResourceLimits, SystemdError> {
        let interface = cgroup_interface(unit).ok_or_else(|| {
            SystemdError::Refused(format!("{unit} has no cgroup: it cannot be throttled"))
        })?;
        let (conn, path) = self.unit_object(unit).await?;
        let read = Reader::new(&conn, &path).await?;
        let load_state = read.get::<String>(UNIT_IFACE, "LoadState").await?;
        require_loaded(unit, &load_state)?;
        let (cpu, memory, io) = tokio::try_join!(
            read.get::<u64>(interface, "CPUQuotaPerSecUSec"),
            read.get::<u64>(interface, "MemoryHigh"),
            read.get::<u64>(interface, "IOWeight"),
        )?;
        Ok(ResourceLimits {
            cpu_quota_per_sec_usec: cpu,
            memory_high: memory,
            io_weight: io,
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
    fn unit_paths_are_escaped_as_sd_bus_does() {
        assert_eq!(
            unit_object_path("sleeper.service"),
            "/org/freedesktop/systemd1/unit/sleeper_2eservice"
        );
        assert_eq!(
            unit_object_path("getty@tty1.service"),
            "/org/freedesktop/systemd1/unit/getty_40tty1_2eservice"
        );
        assert_eq!(
            unit_object_path("1password-x.service"),
            "/org/freedesktop/systemd1/unit/_31password_2dx_2eservice"
        );
        assert_eq!(unit_object_path(""), "/org/freedesktop/systemd1/unit/_");
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
