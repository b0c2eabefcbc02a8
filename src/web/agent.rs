//! The bridge's one link to the agent: a system-bus connection (it honours
//! `DBUS_SYSTEM_BUS_ADDRESS`), made on first use and made again after the
//! bus went away, so the bridge needs no restart when the agent or the bus
//! does. Every call has a deadline: a stuck agent costs a 503, never a
//! hung HTTP request.

use std::future::Future;
use std::time::Duration;

use zbus::{Connection, DBusError};

use super::errors::ApiError;
use crate::dbus::proxy::{self, AntibodyProxy};

pub struct AgentLink {
    current: tokio::sync::Mutex<Option<(Connection, AntibodyProxy<'static>)>>,
    timeout: Duration,
}

impl AgentLink {
    pub fn new(timeout: Duration) -> AgentLink {
        AgentLink {
            current: tokio::sync::Mutex::new(None),
            timeout,
        }
    }

    /// The connection and proxy in use, connecting first if there is none.
    pub async fn proxy(&self) -> Result<(Connection, AntibodyProxy<'static>), ApiError> {
        let mut current = self.current.lock().await;
        if let Some(pair) = current.as_ref() {
            return Ok(pair.clone());
        }
        let connect = async {
            let conn = zbus::connection::Builder::system().build().await?;
            let proxy = proxy::client(&conn).await?;
            Ok::<_, zbus::Error>((conn, proxy))
        };
        let pair = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| ApiError::agent_unavailable("the system bus did not answer in time"))?
            .map_err(|e| {
                ApiError::agent_unavailable(format!("cannot reach the system bus: {e}"))
            })?;
        *current = Some(pair.clone());
        Ok(pair)
    }

    /// How long one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Forgets the connection (it failed): the next call makes a new one.
    pub async fn reset(&self) {
        *self.current.lock().await = None;
    }

    /// Calls the agent through `call`; maps every failure to the answer
    /// the client gets.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(AntibodyProxy<'static>) -> Fut,
        Fut: Future<Output = zbus::Result<T>>,
    {
        let (_, proxy) = self.proxy().await?;
        let result = tokio::time::timeout(self.timeout, call(proxy))
            .await
            .map_err(|_| {
                ApiError::agent_unavailable(format!(
                    "the agent did not answer within {} s",
                    self.timeout.as_secs()
                ))
            })?;
        match result {
            Ok(value) => Ok(value),
            Err(e) => {
                let (api, transport) = classify(e);
                if transport {
                    self.reset().await;
                }
                Err(api)
            }
        }
    }
}

/// The client's answer for a failed call, and whether the connection
/// itself failed (rather than the agent or the bus answering an error).
pub fn classify(e: zbus::Error) -> (ApiError, bool) {
    match e {
        zbus::Error::MethodError(name, detail, _) => (
            ApiError::from_dbus(name.as_str(), detail.as_deref().unwrap_or("")),
            false,
        ),
        zbus::Error::FDO(fdo) => (
            ApiError::from_dbus(fdo.name().as_str(), fdo.description().unwrap_or("")),
            false,
        ),
        other => (
            ApiError::agent_unavailable(format!("the system bus connection failed: {other}")),
            true,
        ),
    }
}
