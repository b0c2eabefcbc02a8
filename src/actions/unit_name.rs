//! systemd unit names (systemd.unit(5) "unit name" rules) and the units no
//! action may touch.

pub const UNIT_SUFFIXES: [&str; 11] = [
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

const MAX_UNIT_NAME: usize = 255;

/// Units that keep the host reachable and the agent alive (DESIGN.md §3).
const PROTECTED_UNITS: [&str; 14] = [
    "antibody.service",
    "dbus.service",
    "dbus.socket",
    "dbus-broker.service",
    "ssh.service",
    "ssh.socket",
    "sshd.service",
    "sshd.socket",
    "polkit.service",
    "polkitd.service",
    "init.scope",
    "-.slice",
    "system.slice",
    "-.mount",
];

fn suffix_of(name: &str) -> Option<&str> {
    let (_, suffix) = name.rsplit_once('.')?;
    UNIT_SUFFIXES.contains(&suffix).then_some(suffix)
}

/// True when `name` ends in a unit type suffix (`vael.service`, `user.slice`).
pub fn has_unit_suffix(name: &str) -> bool {
    suffix_of(name).is_some()
}

/// Checks a unit name by systemd's rules; a name with no unit suffix gets
/// `.service`, as `systemctl` does. Returns the full name or why it is not one.
pub fn normalize_unit_name(given: &str) -> Result<String, String> {
    let name = if has_unit_suffix(given) {
        given.to_string()
    } else {
        format!("{given}.service")
    };
    let invalid = || format!("{given:?} is not a valid unit name");
    if given.is_empty() || name.len() > MAX_UNIT_NAME {
        return Err(invalid());
    }
    let (stem, _) = name.rsplit_once('.').ok_or_else(invalid)?;
    let (prefix, instance) = match stem.split_once('@') {
        Some((prefix, instance)) => (prefix, Some(instance)),
        None => (stem, None),
    };
    let valid_chars = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\'))
    };
    if prefix.is_empty() || !valid_chars(prefix) {
        return Err(invalid());
    }
    if let Some(instance) = instance {
        // A template (`getty@.service`) is not a unit that can be acted on.
        if instance.is_empty() || !valid_chars(instance) {
            return Err(invalid());
        }
    }
    Ok(name)
}

/// Why `unit` may never be restarted, throttled or frozen, if it may not.
pub fn protected_reason(
    unit: &str,
    own_unit: Option<&str>,
    configured: &[String],
) -> Option<String> {
    if own_unit == Some(unit) || unit == "antibody.service" {
        return Some(format!("{unit} is the agent's own unit"));
    }
    if PROTECTED_UNITS.contains(&unit) || unit.starts_with("systemd-") {
        return Some(format!(
            "{unit} keeps the host reachable or running and is always protected"
        ));
    }
    let listed = configured
        .iter()
        .any(|p| normalize_unit_name(p).as_deref() == Ok(unit));
    listed.then(|| format!("{unit} is listed in protect.units"))
}

/// Why acting on `unit` would touch a protected unit under another of its
/// names (systemd resolves aliases: `dbus-org.freedesktop.login1.service`
/// is `systemd-logind.service`), if it would. `names` are all the unit's
/// names, as systemd or the unit files tell them.
pub fn protected_by_another_name(
    unit: &str,
    names: &[String],
    own_unit: Option<&str>,
    configured: &[String],
) -> Option<String> {
    names
        .iter()
        .filter(|name| name.as_str() != unit)
        .find_map(|name| {
            let why = protected_reason(name, own_unit, configured)?;
            Some(format!("{unit} is another name of {name}: {why}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_get_service() {
        assert_eq!(normalize_unit_name("vael").unwrap(), "vael.service");
        assert_eq!(normalize_unit_name("user.slice").unwrap(), "user.slice");
        assert_eq!(
            normalize_unit_name("getty@tty1.service").unwrap(),
            "getty@tty1.service"
        );
        assert_eq!(normalize_unit_name("a.b").unwrap(), "a.b.service");
    }

    #[test]
    fn refuses_what_systemd_refuses() {
        for bad in [
            "",
            "foo bar",
            "a/b",
            "getty@.service",
            "@x.service",
            "x\u{e9}",
            ".service",
        ] {
            assert!(normalize_unit_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_unit_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn protection() {
        assert!(protected_reason("dbus.service", None, &[]).is_some());
        assert!(protected_reason("systemd-journald.service", None, &[]).is_some());
        assert!(protected_reason("my-agent.service", Some("my-agent.service"), &[]).is_some());
        assert!(protected_reason("db.service", None, &["db".into()]).is_some());
        assert!(protected_reason("vael.service", None, &["db".into()]).is_none());
    }

    #[test]
    fn an_alias_of_a_protected_unit_is_protected() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let logind = names(&[
            "systemd-logind.service",
            "dbus-org.freedesktop.login1.service",
        ]);
        let why =
            protected_by_another_name("dbus-org.freedesktop.login1.service", &logind, None, &[])
                .unwrap();
        assert!(
            why.starts_with(
                "dbus-org.freedesktop.login1.service is another name of systemd-logind.service: "
            ),
            "{why}"
        );
        let own = names(&["agent.service", "dbus-org.vael.Antibody.service"]);
        let why = protected_by_another_name(
            "dbus-org.vael.Antibody.service",
            &own,
            Some("agent.service"),
            &[],
        );
        assert!(why.unwrap().contains("the agent's own unit"));
        let listed = names(&["web.service", "www.service"]);
        let configured = ["web".to_string()];
        assert!(protected_by_another_name("www.service", &listed, None, &configured).is_some());
        assert!(protected_by_another_name("www.service", &listed, None, &[]).is_none());
        // The name itself is validation's business, not this check's.
        assert!(
            protected_by_another_name("ssh.service", &names(&["ssh.service"]), None, &[]).is_none()
        );
    }
}
