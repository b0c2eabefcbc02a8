//! The one polkit question the agent asks (with `auth.polkit = true`):
//! `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` for the
//! caller's unique bus name, never interactive. Only the call and the
//! sorting of its outcome live here; what the agent does with the answer is
//! the pure [`super::auth`] logic.

use std::collections::HashMap;
use std::time::Duration;

use zbus::Variant;
use zbus::{proxy, Connection};

pub const SERVICE: &str = "org.freedesktop.PolicyKit1";

/// polkitd answers a non-interactive check at once; past this the caller is
/// denied rather than left waiting on a hung authority (dbus-daemon's own
/// reply timeout is 25 s).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `CheckAuthorization` flags: 0 = no user interaction (no password prompt
/// can reach the caller of a system service).
const NO_INTERACTION: u32 = 0;

#[proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
pub trait Authority {
    /// `(sa{sv}) subject, s action_id, a{ss} details, u flags, s cancellation_id
    /// → (bba{ss}) (is_authorized, is_challenge, details)`.
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Variant<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// What came back from polkit, sorted for the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Authorized,
    /// `challenge`: polkit would grant it after authentication, which a
    /// non-interactive call cannot give.
    NotAuthorized {
        challenge: bool,
    },
    /// polkit answered with an error of its own (e.g. an unknown action).
    Failed(String),
    /// No polkit on the bus, no answer in time, or the bus refused the call.
    Unreachable(String),
}

/// Asks polkit whether the connection `caller` (a unique name) may do `action`.
pub async fn check(conn: &Connection, caller: &str, action: &str) -> Answer {
    match tokio::time::timeout(TIMEOUT, ask(conn, caller, action)).await {
        Ok(Ok((true, _, _))) => Answer::Authorized,
        Ok(Ok((false, challenge, _))) => Answer::NotAuthorized { challenge },
        Ok(Err(e)) => sort_error(e),
        Err(_) => Answer::Unreachable(format!("no answer within {} s", TIMEOUT.as_secs())),
    }
}

async fn ask(
    conn: &Connection,
    caller: &str,
    action: &str,
) -> zbus::Result<(bool, bool, HashMap<String, String>)> {
    let proxy = AuthorityProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let subject = (
        "system-bus-name",
        HashMap::from([("name", Variant::from(caller))]),
    );
    proxy
        .check_authorization(&subject, action, HashMap::new(), NO_INTERACTION, "")
        .await
}

/// polkit's own errors (`org.freedesktop.PolicyKit1.Error.*`) are answers;
/// everything else (no such name, no reply, access denied by the bus, a
/// broken connection) means polkit could not be reached.
fn sort_error(e: zbus::Error) -> Answer {
    match e {
        zbus::Error::MethodError(name, message, _) if name.starts_with(SERVICE) => Answer::Failed(
            format!("{name}: {}", message.unwrap_or_default())
                .trim_end_matches(": ")
                .to_string(),
        ),
        zbus::Error::MethodError(name, message, _) => {
            Answer::Unreachable(format!("{name}: {}", message.unwrap_or_default()))
        }
        other => Answer::Unreachable(other.to_string()),
    }
}
