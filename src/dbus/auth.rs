//! Who may call what, judged from the caller's own credentials as the bus
//! daemon reports them (`GetConnectionCredentials` of the sender) — never
//! from the agent's pid. This is the second check after the bus policy.
//!
//! Root may always do everything. Other callers are judged by the group
//! rule ([`allowed`]) or, with `auth.polkit = true`, by polkit alone (the
//! groups are then not consulted, so polkit's rules are the one place that
//! says who may do what). [`decide`] and [`polkit_verdict`] are pure; the
//! polkit call itself is [`super::polkit::check`].

use std::collections::HashMap;
use std::sync::Mutex;

use nix::unistd::Group;
use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::Connection;

use super::errors::Error;
use super::polkit;
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
            Permission::Rollback => "roll back plans (auth.rollback_groups)",
        }
    }

    /// The polkit action that guards this permission
    /// (`packaging/polkit/org.vael.antibody.policy`).
    pub fn polkit_action(self) -> &'static str {
        match self {
            Permission::Submit => "org.vael.antibody.submit",
            Permission::Read => "org.vael.antibody.read",
            Permission::Rollback => "org.vael.antibody.rollback",
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
    groups_for(permission, auth)
        .iter()
        .filter_map(|name| gid_of(name))
        .any(|gid| caller.gids.contains(&gid))
}

/// The groups whose members the group rule lets through for `permission`.
fn groups_for(permission: Permission, auth: &AuthConfig) -> &[String] {
    match permission {
        Permission::Submit => &auth.submit_groups,
        Permission::Read => &auth.read_groups,
        Permission::Rollback => &auth.rollback_groups,
    }
}

/// What to do with a call, before any polkit round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Ask polkit about this action for the caller's unique name.
    AskPolkit(&'static str),
}

/// The pure routing: root always; with `auth.polkit` polkit decides for
/// everyone else; otherwise the group rule.
pub fn decide(
    caller: &Caller,
    permission: Permission,
    auth: &AuthConfig,
    gid_of: impl Fn(&str) -> Option<u32>,
) -> Decision {
    if caller.uid == 0 {
        Decision::Allow
    } else if auth.polkit {
        Decision::AskPolkit(permission.polkit_action())
    } else if allowed(caller, permission, auth, gid_of) {
        Decision::Allow
    } else {
        Decision::Deny
    }
}

/// polkit's answer as the call's outcome: only `Authorized` lets it through.
pub fn polkit_verdict(answer: polkit::Answer, caller: &Caller, action: &str) -> Result<(), Error> {
    let who = caller.label();
    match answer {
        polkit::Answer::Authorized => Ok(()),
        polkit::Answer::NotAuthorized { challenge: false } => Err(Error::AccessDenied(format!(
            "polkit does not authorize {who} for {action}"
        ))),
        polkit::Answer::NotAuthorized { challenge: true } => Err(Error::AccessDenied(format!(
            "polkit would authorize {who} for {action} only after authentication, \
             which a call to a system service cannot give"
        ))),
        polkit::Answer::Failed(why) => Err(Error::AccessDenied(format!(
            "polkit refused to decide on {action} for {who}: {why}"
        ))),
        polkit::Answer::Unreachable(why) => Err(Error::AccessDenied(format!(
            "polkit is unreachable ({why}), so {action} is denied to {who} (auth.polkit = true)"
        ))),
    }
}

/// The gids of the groups the group rule would consult for this call
/// (none for root or under polkit), looked up on a blocking thread: the
/// group database may be a file, or sssd or LDAP across the network.
async fn group_ids(
    caller: &Caller,
    permission: Permission,
    auth: &AuthConfig,
) -> Vec<(String, u32)> {
    if caller.uid == 0 || auth.polkit {
        return Vec::new();
    }
    let names = groups_for(permission, auth).to_vec();
    let lookup = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .filter_map(|name| gid_by_name(&name).map(|gid| (name, gid)))
            .collect()
    });
    // A group database that does not answer grants nothing.
    match tokio::time::timeout(GROUP_LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(gids)) => gids,
        _ => Vec::new(),
    }
}

/// How long looking up the configured groups may take.
const GROUP_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
        let gids = group_ids(&caller, permission, auth).await;
        let gid_of = |name: &str| gids.iter().find(|(n, _)| n == name).map(|(_, gid)| *gid);
        match decide(&caller, permission, auth, gid_of) {
            Decision::Allow => Ok(caller),
            Decision::Deny => Err(Error::AccessDenied(format!(
                "uid {} may not {}",
                caller.uid,
                permission.describe()
            ))),
            Decision::AskPolkit(action) => {
                // Not cached: polkit's rules (and its temporary
                // authorizations) may change between two calls.
                let answer = polkit::check(conn, &caller.sender, action).await;
                polkit_verdict(answer, &caller, action).map(|()| caller)
            }
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
            ..AuthConfig::default()
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
        let rollback = AuthConfig {
            rollback_groups: vec!["ops".into()],
            ..AuthConfig::default()
        };
        assert!(allowed(
            &caller(1000, &[901]),
            Permission::Rollback,
            &rollback,
            gid_of
        ));
        assert!(!allowed(
            &caller(1000, &[900]),
            Permission::Rollback,
            &rollback,
            gid_of
        ));
        assert!(!allowed(
            &caller(1000, &[]),
            Permission::Submit,
            &auth,
            gid_of
        ));
    }

    fn polkit_auth() -> AuthConfig {
        AuthConfig {
            polkit: true,
            ..AuthConfig::default()
        }
    }

    #[test]
    fn without_polkit_decide_follows_the_group_rule() {
        let auth = AuthConfig::default();
        assert_eq!(
            decide(&caller(1000, &[900]), Permission::Submit, &auth, gid_of),
            Decision::Allow
        );
        assert_eq!(
            decide(&caller(1000, &[]), Permission::Read, &auth, gid_of),
            Decision::Deny
        );
        assert_eq!(
            decide(&caller(1000, &[900]), Permission::Rollback, &auth, gid_of),
            Decision::Deny
        );
    }

    #[test]
    fn with_polkit_root_is_allowed_and_everyone_else_is_asked() {
        let auth = polkit_auth();
        for p in [Permission::Submit, Permission::Read, Permission::Rollback] {
            assert_eq!(decide(&caller(0, &[]), p, &auth, gid_of), Decision::Allow);
            // Group members too: polkit alone decides for them.
            assert_eq!(
                decide(&caller(1000, &[900]), p, &auth, gid_of),
                Decision::AskPolkit(p.polkit_action())
            );
        }
        assert_eq!(
            Permission::Submit.polkit_action(),
            "org.vael.antibody.submit"
        );
        assert_eq!(Permission::Read.polkit_action(), "org.vael.antibody.read");
        assert_eq!(
            Permission::Rollback.polkit_action(),
            "org.vael.antibody.rollback"
        );
    }

    fn denial(answer: polkit::Answer) -> String {
        match polkit_verdict(answer, &caller(1000, &[]), "org.vael.antibody.read") {
            Err(Error::AccessDenied(m)) => m,
            other => panic!("expected AccessDenied, got {other:?}"),
        }
    }

    #[test]
    fn only_an_authorized_polkit_answer_lets_the_call_through() {
        let who = caller(1000, &[]);
        assert!(polkit_verdict(polkit::Answer::Authorized, &who, "a").is_ok());
        let no = denial(polkit::Answer::NotAuthorized { challenge: false });
        assert!(no.contains("polkit does not authorize uid 1000"), "{no}");
        let challenge = denial(polkit::Answer::NotAuthorized { challenge: true });
        assert!(
            challenge.contains("only after authentication"),
            "{challenge}"
        );
        let failed = denial(polkit::Answer::Failed("Error.Failed: bad action".into()));
        assert!(failed.contains("refused to decide"), "{failed}");
        let gone = denial(polkit::Answer::Unreachable("ServiceUnknown".into()));
        assert!(
            gone.contains("polkit is unreachable") && gone.contains("ServiceUnknown"),
            "{gone}"
        );
    }

    #[test]
    fn unknown_group_names_grant_nothing() {
        let auth = AuthConfig {
            submit_groups: vec!["nosuch".into()],
            read_groups: vec![],
            ..AuthConfig::default()
        };
        assert!(!allowed(
            &caller(1000, &[0, 1, 2]),
            Permission::Submit,
            &auth,
            gid_of
        ));
    }
}
