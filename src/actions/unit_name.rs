//! systemd unit names (systemd.unit(5) "unit name" rules); which units an
//! action may touch is `unit_guard`'s business.

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
}
