//! T0: the install tree agrees with the code — the shipped default config,
//! antibodyd(8), the unit, tmpfiles.d, the polkit actions and the bus
//! activation file. (scripts/package.sh checks the built packages; the
//! installed .deb is tested in a booted Debian by t4_package.rs.)

use std::collections::BTreeMap;
use std::path::Path;

use antibody::config::Config;
use antibody::dbus::auth::Permission;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every leaf key of a TOML table as `a.b.c`; empty tables (a map such as
/// `notify.channels` with no entry) have no leaf.
fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let name = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => leaf_keys(inner, &format!("{name}."), out),
            _ => out.push(name),
        }
    }
}

fn default_keys() -> Vec<String> {
    let defaults: toml::Table = toml::from_str(&toml::to_string(&Config::default()).unwrap())
        .expect("the defaults serialize to TOML");
    let mut keys = Vec::new();
    leaf_keys(&defaults, "", &mut keys);
    assert!(keys.len() > 20, "{keys:?}");
    keys
}

#[test]
fn shipped_config_is_every_key_at_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/antibody.toml");
    // The agent's own loader, as antibodyd --config reads it (no drop-ins there).
    let loaded = Config::load(&path, false).expect("packaging/antibody.toml loads");
    assert_eq!(loaded, Config::default());
    // Equal to the defaults could also mean "empty": every key is written out.
    let shipped: toml::Table = read("packaging/antibody.toml").parse().unwrap();
    let mut keys = Vec::new();
    leaf_keys(&shipped, "", &mut keys);
    assert_eq!(keys, default_keys());
}

#[test]
fn antibodyd_man_page_names_every_config_key() {
    let page = read("packaging/man/antibodyd.8").replace("\\-", "-");
    for key in default_keys() {
        assert!(page.contains(&key), "antibodyd.8 does not mention {key}");
    }
}

/// `Key=value` lines of a unit file, comments left out (repeated keys kept).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn directive(unit: &str, key: &str) -> Vec<String> {
    directives(unit)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn unit_keeps_the_life_with_systemd_contract() {
    let unit = read("systemd/antibody.service");
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30s"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("LogsDirectory", "antibody"),
        ("StateDirectory", "antibody"),
        ("ConfigurationDirectory", "antibody"),
        (
            "ExecStart",
            "/usr/sbin/antibodyd --config /etc/antibody/antibody.toml",
        ),
        ("Alias", "dbus-org.vael.Antibody.service"),
        ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
    ] {
        assert_eq!(directive(&unit, key), [value], "{key}");
    }
    // Root on purpose (systemd's Manager); never a User= that would break it.
    assert!(directive(&unit, "User").is_empty());
}

#[test]
fn tmpfiles_creates_the_directories_as_the_unit_does() {
    let unit = read("systemd/antibody.service");
    let tmpfiles: BTreeMap<String, String> = read("systemd/tmpfiles.conf")
        .lines()
        .filter(|l| l.starts_with("d "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), format!("{} {} {}", f[2], f[3], f[4]))
        })
        .collect();
    for (dir, mode_key) in [
        ("/var/log/antibody", "LogsDirectoryMode"),
        ("/var/lib/antibody", "StateDirectoryMode"),
        ("/etc/antibody", "ConfigurationDirectoryMode"),
    ] {
        let mode = directive(&unit, mode_key).pop().expect(mode_key);
        assert_eq!(tmpfiles[dir], format!("{mode} root root"), "{dir}");
    }
    let config = Config::default();
    assert_eq!(config.ledger.dir, Path::new("/var/log/antibody"));
    assert_eq!(config.state.dir, Path::new("/var/lib/antibody"));
}

#[test]
fn polkit_policy_defines_exactly_the_actions_the_agent_asks() {
    let policy = read("packaging/polkit/org.vael.antibody.policy");
    let ids: Vec<&str> = policy
        .split("<action id=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    let asked: Vec<&str> = [Permission::Submit, Permission::Read, Permission::Rollback]
        .iter()
        .map(|p| p.polkit_action())
        .collect();
    assert_eq!(ids, asked);
    // Nobody is authorized by default: only rules (or root) grant them.
    assert_eq!(policy.matches("<allow_any>no</allow_any>").count(), 3);
    let rules = read("packaging/examples/50-antibody.rules");
    assert!(rules.contains(Permission::Submit.polkit_action()));
    assert!(rules.contains(Permission::Read.polkit_action()));
    assert!(!rules.contains(Permission::Rollback.polkit_action()));
}

#[test]
fn bus_activation_starts_the_unit() {
    let file = read("dbus/org.vael.Antibody.service");
    let entries: Vec<(String, String)> = directives(&file);
    assert_eq!(
        entries,
        [
            ("Name", antibody::dbus::BUS_NAME),
            ("Exec", "/bin/false"),
            ("User", "root"),
            ("SystemdService", "antibody.service"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

// ---------------------------------------------------------------- antibody-web

/// The `#key = value` lines of the commented example web.toml, uncommented.
fn web_example() -> toml::Table {
    read("packaging/web.toml")
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| {
            l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
        .parse()
        .expect("the example's keys parse as TOML")
}

#[test]
fn web_toml_example_shows_every_key_with_its_default() {
    use antibody::web::config::WebConfig;
    let example = web_example();
    let defaults: toml::Table =
        toml::from_str(&toml::to_string(&WebConfig::default()).unwrap()).unwrap();
    for (key, value) in &defaults {
        assert_eq!(example.get(key), Some(value), "web.toml: {key}");
    }
    // The optional keys (no default) are shown with an example value.
    let mut optional: Vec<&String> = example
        .keys()
        .filter(|k| !defaults.contains_key(*k))
        .collect();
    optional.sort();
    assert_eq!(
        optional,
        ["jwt_audience", "jwt_issuer", "jwt_public_key_file"]
    );
    // And the whole example is a valid configuration.
    let text = toml::to_string(&example).unwrap();
    WebConfig::parse(&text).expect("the uncommented example loads");
    let page = read("packaging/man/antibody-web.8").replace("\\-", "-");
    for key in example.keys() {
        assert!(
            page.contains(key.as_str()),
            "antibody-web.8 does not mention {key}"
        );
    }
}

#[test]
fn web_unit_runs_with_no_privilege_and_is_not_enabled_by_the_packages() {
    let unit = read("systemd/antibody-web.service");
    for (key, value) in [
        ("Type", "notify"),
        ("User", "antibody-web"),
        ("SupplementaryGroups", "antibody"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("RestartPreventExitStatus", "78"),
        ("IPAddressDeny", "any"),
        ("IPAddressAllow", "localhost"),
        ("LimitNOFILE", "4096"),
        ("MemoryMax", "256M"),
        ("TasksMax", "64"),
        (
            "ExecStart",
            "/usr/sbin/antibody-web --config /etc/antibody/web.toml",
        ),
    ] {
        assert_eq!(
            directive(&unit, key),
            [value],
            "antibody-web.service: {key}"
        );
    }
    // Shipped, not enabled: no install script enables or starts it (an
    // upgrade only try-restarts it, if the admin runs it).
    for script in ["packaging/debian/postinst", "packaging/rpm/post_install.sh"] {
        for line in read(script).lines().filter(|l| l.contains("antibody-web")) {
            assert!(
                line.contains("try-restart") || line.trim_start().starts_with('#'),
                "{script} starts or enables antibody-web: {line}"
            );
        }
    }
    // Its user exists and is in the antibody group the bus policy names.
    let sysusers = read("systemd/sysusers.conf");
    let entries: Vec<Vec<&str>> = sysusers
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with(&["u", "antibody-web"])),
        "{sysusers}"
    );
    assert!(
        entries.contains(&vec!["m", "antibody-web", "antibody"]),
        "{sysusers}"
    );
}

/// Browsers pass their JWT to the event stream as `?token=`: the README's
/// nginx example must not write it to nginx's access log.
#[test]
fn readme_nginx_example_keeps_event_tokens_out_of_the_access_log() {
    let readme = read("README.md");
    let block = readme
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has an nginx example");
    let events = block
        .split("location = /antibody/events")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("the nginx example has a location for /antibody/events");
    assert!(events.contains("access_log off;"), "{events}");
    assert!(events.contains("proxy_set_header Upgrade"), "{events}");
    // The catch-all location does not pass the upgrade (so the events
    // route is reached only through its own, unlogged location).
    let catch_all = block
        .split("location / {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("a catch-all location");
    assert!(!catch_all.contains("Upgrade"), "{catch_all}");
}
