//! A unit's other names as its unit files tell them, for validation, which
//! must answer at once without asking systemd: an alias is a symlink named
//! after the alias in a unit directory, pointing at the unit's file
//! (systemd.unit(5), "Aliases"). systemd's own answer (`Names`) is checked
//! again at apply.

use std::path::Path;

/// systemd's system unit search path, highest priority first.
const UNIT_DIRS: [&str; 5] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Aliases of aliases are followed this far; systemd refuses longer chains.
const MAX_HOPS: usize = 8;

/// `unit` and the names its alias symlinks lead to, in the order followed.
pub fn names_on_disk(unit: &str) -> Vec<String> {
    names_in(unit, &UNIT_DIRS.map(Path::new))
}

/// [`names_on_disk`] over the given unit directories.
pub fn names_in(unit: &str, dirs: &[&Path]) -> Vec<String> {
    let mut names = vec![unit.to_string()];
    while names.len() <= MAX_HOPS {
        let current = names.last().expect("starts with the unit");
        let Some(next) = alias_target(current, dirs) else {
            break;
        };
        if names.contains(&next) {
            break;
        }
        names.push(next);
    }
    names
}

/// The file name a symlink called `name` points at, in the first unit
/// directory that has `name`, when it names another unit. A link to
/// `/dev/null` (a masked unit) or to a file of the same name (a linked
/// unit file) is no alias.
fn alias_target(name: &str, dirs: &[&Path]) -> Option<String> {
    let suffix = name.rsplit_once('.')?.1;
    let link = dirs
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.symlink_metadata().is_ok())?;
    let target = std::fs::read_link(link).ok()?;
    let target = target.file_name()?.to_str()?;
    let is_unit = target.rsplit_once('.').is_some_and(|(_, s)| s == suffix);
    (is_unit && target != name).then(|| target.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_alias_links_but_not_masks_or_linked_files() {
        let etc = tempfile::tempdir().unwrap();
        let lib = tempfile::tempdir().unwrap();
        std::fs::write(lib.path().join("systemd-logind.service"), "").unwrap();
        symlink(
            lib.path().join("systemd-logind.service"),
            lib.path().join("dbus-org.freedesktop.login1.service"),
        )
        .unwrap();
        symlink(
            "systemd-logind.service",
            etc.path().join("logind-alias.service"),
        )
        .unwrap();
        symlink("/dev/null", etc.path().join("masked.service")).unwrap();
        symlink(
            lib.path().join("linked.service"),
            etc.path().join("linked.service"),
        )
        .unwrap();
        let dirs = [etc.path(), lib.path()];
        assert_eq!(
            names_in("dbus-org.freedesktop.login1.service", &dirs),
            [
                "dbus-org.freedesktop.login1.service",
                "systemd-logind.service"
            ]
        );
        assert_eq!(
            names_in("logind-alias.service", &dirs),
            ["logind-alias.service", "systemd-logind.service"]
        );
        assert_eq!(names_in("masked.service", &dirs), ["masked.service"]);
        assert_eq!(names_in("linked.service", &dirs), ["linked.service"]);
        assert_eq!(names_in("absent.service", &dirs), ["absent.service"]);
    }

    #[test]
    fn a_loop_of_links_ends() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b.service", dir.path().join("a.service")).unwrap();
        symlink("a.service", dir.path().join("b.service")).unwrap();
        assert_eq!(
            names_in("a.service", &[dir.path()]),
            ["a.service", "b.service"]
        );
    }
}
