//! Who may call what, judged from the caller's own credentials as the bus
//! daemon reports them (`GetConnectionCredentials` of the sender) — never
//! from the agent's pid. This is the second check after the bus policy.

use std::collections::HashMap;
use std::sync::Mutex;

use nix::unistd::Group;
use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::Connection;

use super::errors::Error;
use crate::config::AuthConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Submit,
    Read,
    Rollback,
}

impl Permission {
    fn describe(self) -> &'static str {
        match self {
            Permission::Submit => "submit alerts (auth.submit_groups)",
            Permission::Read => "read plans (auth.read_groups)",
            Permission::Rollback => "roll back plans (root only)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gids: Vec<u32>,
    pub sender: String,
}

impl Caller {
    pub fn label(&self) -> String {
        format!("uid {} ({})", self.uid, self.sender)
    }
}

/// The pure rule: root always; otherwise membership of a configured group.
pub fn allowed(
    caller: &Caller,
    permission: Permission,
    auth: &AuthConfig,
    gid_of: impl Fn(&str) -> Option<u32>,
) -> bool {
    if caller.uid == 0 {
        return true;
    }
    let groups = match permission {
        Permission::Submit => &auth.submit_groups,
        Permission::Read => &auth.read_groups,
        Permission::Rollback => return false,
    };
    groups
        .iter()
        .filter_map(|name| gid_of(name))
        .any(|gid| caller.gids.contains(&gid))
}

fn gid_by_name(name: &str) -> Option<u32> {
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Unique bus names are never reused while the bus runs, so a caller's
/// credentials can be remembered by its unique name.
#[derive(Default)]
pub struct Authorizer {
    cache: Mutex<HashMap<String, Caller>>,
}

const CACHE_LIMIT: usize = 4096;

impl Authorizer {
    pub async fn caller(&self, conn: &Connection, header: &Header<'_>) -> Result<Caller, Error> {
        let sender = header
            .sender()
            .ok_or_else(|| Error::AccessDenied("the call carries no sender".into()))?
            .to_string();
        if let Some(caller) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sender)
        {
            return Ok(caller.clone());
        }
        let proxy = DBusProxy::new(conn).await?;
        let creds = proxy
            .get_connection_credentials(sender.as_str().try_into()?)
            .await
            .map_err(|e| Error::AccessDenied(format!("cannot learn who {sender} is: {e}")))?;
        let uid = creds.unix_user_id().ok_or_else(|| {
            Error::AccessDenied(format!("the bus did not tell the uid of {sender}"))
        })?;
        let gids = creds.unix_group_ids().cloned().unwrap_or_default();
        let caller = Caller {
            uid,
            gids,
            sender: sender.clone(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(sender, caller.clone());
        Ok(caller)
    }

    pub async fn require(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        permission: Permission,
        auth: &AuthConfig,
    ) -> Result<Caller, Error> {
        let caller = self.caller(conn, header).await?;
        if allowed(&caller, permission, auth, gid_by_name) {
            Ok(caller)
        } else {
            Err(Error::AccessDenied(format!(
                "uid {} may not {}",
                caller.uid,
                permission.describe()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gids: &[u32]) -> Caller {
        Caller {
            uid,
            gids: gids.to_vec(),
            sender: ":1.1".into(),
        }
    }

    fn gid_of(name: &str) -> Option<u32> {
        match name {
            "antibody" => Some(900),
            "ops" => Some(901),
            _ => None,
        }
    }

    #[test]
    fn root_may_do_anything() {
        let auth = AuthConfig::default();
        for p in [Permission::Submit, Permission::Read, Permission::Rollback] {
            assert!(allowed(&caller(0, &[]), p, &auth, gid_of));
        }
    }

    #[test]
    fn group_membership_decides_for_others() {
        let auth = AuthConfig {
            submit_groups: vec!["antibody".into()],
            read_groups: vec!["ops".into()],
            polkit: false,
        };
        assert!(allowed(
            &caller(1000, &[900]),
            Permission::Submit,
            &auth,
            gid_of
        ));
        assert!(!allowed(
            &caller(1000, &[900]),
            Permission::Read,
            &auth,
            gid_of
        ));
        assert!(allowed(
            &caller(1000, &[901]),
            Permission::Read,
            &auth,
            gid_of
        ));
        assert!(!allowed(
            &caller(1000, &[900, 901]),
            Permission::Rollback,
            &auth,
            gid_of
        ));
        assert!(!allowed(
            &caller(1000, &[]),
            Permission::Submit,
            &auth,
            gid_of
        ));
    }

    #[test]
    fn unknown_group_names_grant_nothing() {
        let auth = AuthConfig {
            submit_groups: vec!["nosuch".into()],
            read_groups: vec![],
            polkit: false,
        };
        assert!(!allowed(
            &caller(1000, &[0, 1, 2]),
            Permission::Submit,
            &auth,
            gid_of
        ));
    }
}
