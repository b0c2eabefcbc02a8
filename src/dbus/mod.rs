//! D-Bus: the interface, its named errors, caller authorization, and the
//! signal pump. No logic of its own (DESIGN.md §6).

pub mod auth;
pub mod errors;
pub mod interface;
pub mod polkit;
pub mod proxy;
pub mod signals;

use std::sync::Arc;

use zbus::fdo::{RequestNameFlags, RequestNameReply};
use zbus::object_server::InterfaceRef;
use zbus::Connection;

use crate::engine::Engine;
use crate::sys::notifier::NoticeSignal;
pub use interface::{Antibody, BUS_NAME, INTERFACE, OBJECT_PATH};

/// The `OperatorNotice` signal, sent on the connection the agent serves on
/// now (none while the bus is away).
#[derive(Default)]
pub struct NoticeSignals {
    current: std::sync::Mutex<Option<InterfaceRef<Antibody>>>,
}

#[async_trait::async_trait]
impl NoticeSignal for NoticeSignals {
    async fn operator_notice(
        &self,
        channel: &str,
        severity: &str,
        message: &str,
    ) -> Result<(), String> {
        let iface = crate::sync::lock(&self.current)
            .clone()
            .ok_or("the agent is not on the bus")?;
        let sent = Antibody::operator_notice(iface.signal_emitter(), channel, severity, message);
        // A bus daemon that stops reading (its socket still open) must not
        // hold the plan: a transient failure, retried.
        tokio::time::timeout(NOTICE_TIMEOUT, sent)
            .await
            .map_err(|_| {
                format!(
                    "the bus did not take it within {} s",
                    NOTICE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| e.to_string())
    }
}

/// How long handing an `OperatorNotice` to the bus may take.
const NOTICE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl NoticeSignals {
    /// The connection went away: notices fail at once until the next one.
    pub fn detach(&self) {
        *crate::sync::lock(&self.current) = None;
    }
}

/// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set), serves
/// the object, and only then asks for the well-known name, so no caller can
/// reach the name before the object answers. `OperatorNotice` signals go
/// out on this connection from then on.
pub async fn serve(engine: Arc<Engine>, notices: &NoticeSignals) -> zbus::Result<Connection> {
    let conn = zbus::connection::Builder::system()
        .serve_at(OBJECT_PATH, Antibody::new(engine.clone()))
        .build()
        .await?;
    let reply = conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await?;
    if reply != RequestNameReply::PrimaryOwner {
        return Err(zbus::Error::NameTaken);
    }
    let iface = conn
        .object_server()
        .interface::<_, Antibody>(OBJECT_PATH)
        .await?;
    *crate::sync::lock(&notices.current) = Some(iface.clone());
    tokio::spawn(signals::pump(engine, iface, conn.clone()));
    Ok(conn)
}
