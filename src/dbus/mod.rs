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
use zbus::Connection;

use crate::engine::Engine;
pub use interface::{Antibody, BUS_NAME, INTERFACE, OBJECT_PATH};

/// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set), serves
/// the object, and only then asks for the well-known name, so no caller can
/// reach the name before the object answers.
pub async fn serve(engine: Arc<Engine>) -> zbus::Result<Connection> {
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
    tokio::spawn(signals::pump(engine, iface, conn.clone()));
    Ok(conn)
}
