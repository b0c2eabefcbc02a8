//! Which units an action may touch (DESIGN.md §3, "Guards"), as pure
//! functions of the unit's name and, at apply, of what systemd reports
//! about it. Validation runs [`refusal`] on the name the alert gave (and
//! the names its alias symlinks lead to); just before the change the
//! action runs [`refusal_at_apply`] on every name systemd knows the unit
//! by, its load state, unit file, `RefuseManual*` and slice. Either one
//! saying why is a refusal: nothing is changed.

use glob::Pattern;

use super::unit_name::normalize_unit_name;
use crate::sys::systemd::UnitFacts;

/// What an action does to a unit: each use allows its own unit types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitUse {
    /// `restart_service`: a service, nothing else. Starting a target
    /// (`reboot.target`, `poweroff.target`) or restarting a slice would
    /// power the host off or end every session in it.
    Restart,
    /// A unit throttle: units that own a cgroup of processes.
    Throttle,
}

impl UnitUse {
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            UnitUse::Restart => &["service"],
            UnitUse::Throttle => &["service", "scope", "slice"],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            UnitUse::Restart => "restart_service restarts .service units only",
            UnitUse::Throttle => "a unit throttle acts on .service, .scope and .slice units only",
        }
    }
}

/// Units that keep the host running, reachable or its people logged in.
const PROTECTED_UNITS: [&str; 19] = [
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
    "-.mount",
    "system.slice",
    "user.slice",
    "machine.slice",
    "rescue.service",
    "emergency.service",
    "debug-shell.service",
];

/// Families of units with the same job: systemd's own, everything under
/// `user.slice`, the units that log people in (gettys, per-connection sshd).
const PROTECTED_PATTERNS: [&str; 11] = [
    "systemd-*",
    "user-*.slice",
    "session-*.scope",
    "user@*.service",
    "user-runtime-dir@*.service",
    "getty@*",
    "serial-getty@*",
    "console-getty.service",
    "container-getty@*",
    "autovt@*",
    "ssh*@*.service",
];

/// The agent's view of the config's unit guards: `protect.units` and
/// `restart.allowed_units` as glob patterns (checked when the config is
/// loaded, so a pattern here always parses).
pub struct UnitPolicy<'a> {
    pub own_unit: Option<&'a str>,
    pub protected: Vec<Pattern>,
    /// Empty: every unit the other guards allow.
    pub allowed: Vec<Pattern>,
}

impl<'a> UnitPolicy<'a> {
    /// The policy of `protect.units` and `restart.allowed_units`. Their
    /// entries were checked when the config was loaded; should one not
    /// compile here all the same, it fails closed: a bad protected entry
    /// protects every unit, a bad allowed entry allows none.
    pub fn new(own_unit: Option<&'a str>, protected: &[String], allowed: &[String]) -> Self {
        let compile = |entries: &[String], instead: &str| -> Vec<Pattern> {
            entries
                .iter()
                .map(|e| unit_pattern(e).unwrap_or_else(|_| Pattern::new(instead).expect("a glob")))
                .collect()
        };
        UnitPolicy {
            own_unit,
            protected: compile(protected, "*"),
            // No unit name holds a '/'.
            allowed: compile(allowed, "/"),
        }
    }
}

/// A `protect.units` or `restart.allowed_units` entry as a pattern: a unit
/// name (a bare name gets `.service`, as everywhere) or a glob of unit
/// names (`web-*.service`, `*.scope`). Anything else is an error, never
/// skipped: a guard that silently does nothing fails open.
pub fn unit_pattern(entry: &str) -> Result<Pattern, String> {
    if let Some(unit) = entry.strip_prefix("unit:") {
        return Err(format!(
            "{entry:?}: name the unit without \"unit:\" (as {unit:?})"
        ));
    }
    let is_glob = entry.contains(['*', '?', '[']);
    let text = if is_glob {
        let legal = entry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@*?[]!".contains(c));
        if !legal || entry.is_empty() {
            return Err(format!(
                "{entry:?} is neither a unit name nor a glob of unit names"
            ));
        }
        // A glob that cannot match a unit's suffix matches no unit: a
        // guard that silently does nothing.
        let typed = super::unit_name::has_unit_suffix(entry) || entry.ends_with('*');
        if !typed {
            return Err(format!(
                "{entry:?} matches no unit: a glob of unit names ends in a unit type (\"web-*.service\") or in *"
            ));
        }
        entry.to_string()
    } else {
        normalize_unit_name(entry)?
    };
    Pattern::new(&text).map_err(|e| format!("{entry:?} is not a valid glob: {e}"))
}

fn matches_any(unit: &str, patterns: &[Pattern]) -> bool {
    patterns.iter().any(|p| p.matches(unit))
}

/// Why `unit` is always protected, whatever the action, if it is.
fn protected_reason(unit: &str, policy: &UnitPolicy<'_>) -> Option<String> {
    if policy.own_unit == Some(unit) || unit == "antibody.service" {
        return Some(format!("{unit} is the agent's own unit"));
    }
    let built_in = PROTECTED_UNITS.contains(&unit)
        || PROTECTED_PATTERNS
            .iter()
            .any(|p| Pattern::new(p).is_ok_and(|p| p.matches(unit)));
    if built_in {
        return Some(format!(
            "{unit} keeps the host reachable or running and is always protected"
        ));
    }
    if matches_any(unit, &policy.protected) {
        return Some(format!("{unit} is listed in protect.units"));
    }
    None
}

/// Why `use_` may not touch `unit` (a normalized name), if it may not:
/// its type, the built-in and configured protections, `allowed_units`.
pub fn refusal(unit: &str, use_: UnitUse, policy: &UnitPolicy<'_>) -> Option<String> {
    let suffix = unit.rsplit_once('.').map_or("", |(_, s)| s);
    if !use_.suffixes().contains(&suffix) {
        return Some(format!("{unit} is a {suffix} unit; {}", use_.describe()));
    }
    if let Some(why) = protected_reason(unit, policy) {
        return Some(why);
    }
    if !policy.allowed.is_empty() && !matches_any(unit, &policy.allowed) {
        return Some(format!(
            "{unit} matches none of restart.allowed_units, the only units actions may touch"
        ));
    }
    None
}

/// Why acting on `unit` would reach a protected unit under another of its
/// names (an alias: `dbus-org.freedesktop.login1.service` is
/// `systemd-logind.service`), if it would.
pub fn protected_by_another_name(
    unit: &str,
    names: &[String],
    policy: &UnitPolicy<'_>,
) -> Option<String> {
    names
        .iter()
        .filter(|name| name.as_str() != unit)
        .find_map(|name| {
            let why = protected_reason(name, policy)?;
            Some(format!("{unit} is another name of {name}: {why}"))
        })
}

/// Why a unit must be named by its own name, not an alias: plans on one
/// unit share one scheduling target, one flap count and one throttle base
/// only under one name.
pub fn alias_refusal(alias: &str, unit: &str) -> String {
    format!(
        "{alias} is an alias of {unit}: name the unit itself, so that every plan on it shares one target"
    )
}

/// Whether a slice is `user.slice` or below it: slices nest by their
/// names (`user-1000.slice` is a child of `user.slice`).
fn under_user_slice(slice: &str) -> bool {
    slice == "user.slice" || slice.starts_with("user-")
}

/// The guards again, on what systemd reports about `unit` just before the
/// change: every name it has (aliases made after validation, or known
/// to systemd only), the unit it really is (`Id`, for `allowed_units`),
/// a unit file the agent can name, no `RefuseManualStart=`/`Stop=`, not
/// under `user.slice`.
pub fn refusal_at_apply(unit: &str, facts: &UnitFacts, policy: &UnitPolicy<'_>) -> Option<String> {
    if let Some(why) = protected_by_another_name(unit, &facts.names, policy) {
        return Some(why);
    }
    if facts.id != unit {
        return Some(alias_refusal(unit, &facts.id));
    }
    if facts.load_state != "loaded" {
        return Some(format!(
            "{unit} is not loaded (LoadState={})",
            facts.load_state
        ));
    }
    if facts.fragment_path.is_empty() {
        return Some(format!(
            "{unit} is not loaded from a unit file (no FragmentPath), so its origin cannot be named"
        ));
    }
    if facts.refuse_manual_start || facts.refuse_manual_stop {
        return Some(format!(
            "{unit} refuses manual start or stop (RefuseManualStart={}, RefuseManualStop={})",
            yes_no(facts.refuse_manual_start),
            yes_no(facts.refuse_manual_stop)
        ));
    }
    if under_user_slice(&facts.slice) {
        return Some(format!(
            "{unit} runs in {}, under user.slice, where people's sessions are",
            facts.slice
        ));
    }
    None
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> UnitPolicy<'static> {
        UnitPolicy::new(None, &[], &[])
    }

    fn facts(unit: &str) -> UnitFacts {
        UnitFacts {
            id: unit.into(),
            names: vec![unit.into()],
            load_state: "loaded".into(),
            fragment_path: format!("/usr/lib/systemd/system/{unit}"),
            refuse_manual_start: false,
            refuse_manual_stop: false,
            slice: "system.slice".into(),
        }
    }

    #[test]
    fn restart_acts_on_services_only() {
        for unit in [
            "reboot.target",
            "poweroff.target",
            "user.slice",
            "web.socket",
            "x.timer",
        ] {
            let why = refusal(unit, UnitUse::Restart, &policy()).expect(unit);
            assert!(why.contains("restarts .service units only"), "{why}");
        }
        assert_eq!(refusal("vael.service", UnitUse::Restart, &policy()), None);
    }

    #[test]
    fn throttle_acts_on_services_scopes_and_slices() {
        for unit in ["vael.service", "run-u7.scope", "batch.slice"] {
            assert_eq!(refusal(unit, UnitUse::Throttle, &policy()), None, "{unit}");
        }
        for unit in [
            "multi-user.target",
            "dev-sda.device",
            "var.mount",
            "web.socket",
        ] {
            let why = refusal(unit, UnitUse::Throttle, &policy()).expect(unit);
            assert!(
                why.contains(".service, .scope and .slice units only"),
                "{why}"
            );
        }
    }

    #[test]
    fn the_host_its_sessions_and_its_logins_are_protected() {
        for unit in [
            "-.slice",
            "system.slice",
            "user.slice",
            "machine.slice",
            "init.scope",
            "user-1000.slice",
            "session-4.scope",
            "user@1000.service",
            "user-runtime-dir@1000.service",
            "getty@tty1.service",
            "serial-getty@ttyS0.service",
            "console-getty.service",
            "container-getty@1.service",
            "autovt@tty2.service",
            "rescue.service",
            "emergency.service",
            "debug-shell.service",
            "systemd-logind.service",
            "dbus.service",
            "ssh.service",
            "sshd@3-10.0.0.1:22-10.0.0.9:5123.service",
            "polkit.service",
            "antibody.service",
        ] {
            let use_ = if unit.ends_with(".service") {
                UnitUse::Restart
            } else {
                UnitUse::Throttle
            };
            let why = refusal(unit, use_, &policy()).unwrap_or_else(|| panic!("{unit} allowed"));
            assert!(
                why.contains("always protected") || why.contains("own unit"),
                "{why}"
            );
        }
        // Near misses are not protected.
        for unit in [
            "users.slice",
            "sessions.scope",
            "gettyx.service",
            "my-systemd.service",
        ] {
            let use_ = if unit.ends_with(".service") {
                UnitUse::Restart
            } else {
                UnitUse::Throttle
            };
            assert_eq!(refusal(unit, use_, &policy()), None, "{unit}");
        }
    }

    #[test]
    fn configured_patterns_protect_and_allow() {
        let protected = ["db".to_string(), "batch-*.service".to_string()];
        let allowed = ["web-*.service".to_string(), "db.service".to_string()];
        let policy = UnitPolicy::new(Some("agent.service"), &protected, &allowed);
        let use_ = UnitUse::Restart;
        assert!(refusal("db.service", use_, &policy)
            .unwrap()
            .contains("protect.units"));
        assert!(refusal("batch-7.service", use_, &policy)
            .unwrap()
            .contains("protect.units"));
        assert!(refusal("agent.service", use_, &policy)
            .unwrap()
            .contains("own unit"));
        assert_eq!(refusal("web-1.service", use_, &policy), None);
        let why = refusal("vael.service", use_, &policy).unwrap();
        assert!(why.contains("restart.allowed_units"), "{why}");
    }

    #[test]
    fn a_policy_entry_that_does_not_compile_fails_closed() {
        let bad = ["foo bar".to_string()];
        let protect_all = UnitPolicy::new(None, &bad, &[]);
        assert!(refusal("vael.service", UnitUse::Restart, &protect_all).is_some());
        let allow_none = UnitPolicy::new(None, &[], &bad);
        assert!(refusal("vael.service", UnitUse::Restart, &allow_none).is_some());
    }

    #[test]
    fn entries_that_are_no_unit_and_no_glob_are_errors() {
        assert!(unit_pattern("web").unwrap().matches("web.service"));
        assert!(unit_pattern("web-*.service")
            .unwrap()
            .matches("web-2.service"));
        assert!(unit_pattern("*.scope").unwrap().matches("run-u1.scope"));
        for bad in [
            "",
            "foo bar",
            "a/b",
            "web-*/x",
            "[",
            "10.0.0.1 x",
            "web-?",
            "unit:db",
            "unit:web-*",
        ] {
            assert!(unit_pattern(bad).is_err(), "{bad:?} accepted");
        }
        assert!(unit_pattern("web-?.service").is_ok());
        assert!(unit_pattern("web-*").unwrap().matches("web-1.service"));
    }

    #[test]
    fn at_apply_every_name_the_file_origin_and_the_slice_count() {
        let p = policy();
        assert_eq!(
            refusal_at_apply("web.service", &facts("web.service"), &p),
            None
        );

        let mut alias = facts("www.service");
        alias.id = "systemd-logind.service".into();
        alias.names = vec!["systemd-logind.service".into(), "www.service".into()];
        let why = refusal_at_apply("www.service", &alias, &p).unwrap();
        assert!(
            why.contains("another name of systemd-logind.service"),
            "{why}"
        );

        let mut refusing = facts("web.service");
        refusing.refuse_manual_start = true;
        let why = refusal_at_apply("web.service", &refusing, &p).unwrap();
        assert!(why.contains("RefuseManualStart=yes"), "{why}");

        let mut fileless = facts("web.service");
        fileless.fragment_path.clear();
        let why = refusal_at_apply("web.service", &fileless, &p).unwrap();
        assert!(why.contains("no FragmentPath"), "{why}");

        let mut masked = facts("web.service");
        masked.load_state = "masked".into();
        assert!(refusal_at_apply("web.service", &masked, &p)
            .unwrap()
            .contains("LoadState=masked"));

        let mut in_session = facts("web.service");
        in_session.slice = "user-1000.slice".into();
        let why = refusal_at_apply("web.service", &in_session, &p).unwrap();
        assert!(why.contains("under user.slice"), "{why}");

        // A name systemd resolves to another unit is refused: plans on one
        // unit must share one target (and allowed_units must not be
        // passed by an alias).
        let allowed = ["web*.service".to_string()];
        let strict = UnitPolicy::new(None, &[], &allowed);
        let mut aliased = facts("web2.service");
        aliased.id = "vael.service".into();
        aliased.names = vec!["vael.service".into(), "web2.service".into()];
        let why = refusal_at_apply("web2.service", &aliased, &strict).unwrap();
        assert!(
            why.starts_with("web2.service is an alias of vael.service"),
            "{why}"
        );
    }
}
