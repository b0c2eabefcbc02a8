//! Configuration: `/etc/antibody/antibody.toml` plus drop-ins in
//! `antibody.toml.d/*.toml` (applied in lexical order, tables merged key by
//! key). Every key has a default, so an empty or missing file is a valid
//! config. Unknown keys are refused so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/antibody/antibody.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub ledger: LedgerConfig,
    pub state: StateConfig,
    pub auth: AuthConfig,
    pub queue: QueueConfig,
    pub retry: RetryConfig,
    pub restart: RestartConfig,
    pub isolate: IsolateConfig,
    pub throttle: ThrottleConfig,
    pub nft: NftConfig,
    pub hot_patch: HotPatchConfig,
    pub protect: ProtectConfig,
    pub notify: NotifyConfig,
    pub playbooks: PlaybooksConfig,
    /// Per alert source (`NEXUS`, `Watchdog`, `Manual`): where to tell it
    /// that a plan for one of its alerts with `context.alert_id` finished.
    pub callbacks: BTreeMap<String, crate::callbacks::CallbackConfig>,
    /// The playbooks `playbooks.dir` held when this configuration was
    /// loaded (not a key): a reload that cannot read them is refused as a
    /// whole, and the running set stays.
    #[serde(skip)]
    pub loaded_playbooks: std::sync::Arc<Vec<crate::playbooks::Playbook>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlaybooksConfig {
    /// `*.toml` files of `[[playbook]]` tables, read in lexical order; the
    /// first playbook that matches a bare alert (one without `actions`)
    /// chooses its actions.
    pub dir: PathBuf,
}

impl Default for PlaybooksConfig {
    fn default() -> Self {
        PlaybooksConfig {
            dir: PathBuf::from(crate::playbooks::DEFAULT_DIR),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Directory of the hash-chained JSON Lines segments.
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// The oldest closed segments are removed while the ledger is larger
    /// (after a checkpoint anchors the chain); 0 keeps everything.
    pub max_bytes: u64,
    /// Closed segments whose newest record is older are removed (after a
    /// checkpoint anchors the chain); 0 keeps everything.
    pub retain_days: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            dir: PathBuf::from("/var/log/antibody"),
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 0,
            retain_days: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    pub dir: PathBuf,
    /// Finished plans kept in memory (for ListPlans); older ones are
    /// archived under `dir/plans/` and still answer GetPlan.
    pub keep_finished_plans: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("/var/lib/antibody"),
            keep_finished_plans: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub submit_groups: Vec<String>,
    pub read_groups: Vec<String>,
    /// Groups whose members may roll plans back (root always may).
    pub rollback_groups: Vec<String>,
    /// Plans a calling uid other than root may create per second, on
    /// average (a token bucket); 0 turns the limit off.
    pub submit_rate_per_sec: u32,
    /// How many plans such a uid may create at once, in a burst.
    pub submit_burst: u32,
    pub polkit: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            submit_groups: vec!["antibody".into()],
            read_groups: vec!["antibody".into()],
            rollback_groups: Vec::new(),
            submit_rate_per_sec: 100,
            submit_burst: 1000,
            polkit: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Plans accepted but not finished; past it `SubmitAlert` answers `QueueFull`.
    pub max: usize,
    pub dedupe_window_secs: u64,
    /// Plans on disjoint targets that may run at the same time. 8 by
    /// default: the runs' records share the ledger's fdatasyncs (a group
    /// commit), so under a burst of alerts 8 running plans cost each plan
    /// about 20 µs less CPU than 4 did, and finish sooner; 16 measured no
    /// better, and would restart twice as many units at once (README,
    /// "Decisions where DESIGN.md is silent"; BENCHMARKS.md, issue 18).
    pub max_concurrent: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max: 1024,
            dedupe_window_secs: 60,
            max_concurrent: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub base_ms: u64,
    pub factor: u32,
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base_ms: 200,
            factor: 2,
            max_attempts: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartConfig {
    pub burst: u32,
    pub interval_secs: u64,
    pub timeout_secs: u64,
    /// Globs of units: when not empty, the only units an action may restart
    /// or throttle.
    pub allowed_units: Vec<String>,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            burst: 3,
            interval_secs: 300,
            timeout_secs: 90,
            allowed_units: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsolateConfig {
    pub default_seconds: u64,
}

impl Default for IsolateConfig {
    fn default() -> Self {
        IsolateConfig {
            default_seconds: 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Packets per second an address entity may send when its
    /// `throttle_entity` action gives no `rate_per_sec`.
    pub default_rate_per_sec: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            default_rate_per_sec: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NftConfig {
    pub reconcile_interval_secs: u64,
    pub remove_on_stop: bool,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            reconcile_interval_secs: 5,
            remove_on_stop: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HotPatchConfig {
    pub allowed_paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtectConfig {
    pub units: Vec<String>,
    pub addresses: Vec<String>,
    pub ports: Vec<u16>,
}

impl Default for ProtectConfig {
    fn default() -> Self {
        ProtectConfig {
            units: Vec::new(),
            addresses: Vec::new(),
            ports: vec![22],
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    pub channels: BTreeMap<String, ChannelConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub kind: ChannelKind,
    pub url: String,
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: u64,
}

fn default_webhook_timeout() -> u64 {
    5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Webhook,
}

/// Channels every build has; config may not redefine them.
pub const BUILTIN_CHANNELS: [&str; 2] = ["journal", "dbus"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path` and its drop-ins. A missing main file is allowed only
    /// where `missing_ok` (the default path): the defaults then apply.
    pub fn load(path: &Path, missing_ok: bool) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        match std::fs::read_to_string(path) {
            Ok(text) => merge_tables(&mut merged, parse_table(path, &text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        }
        for dropin in dropin_files(path)? {
            let text = std::fs::read_to_string(&dropin).map_err(|source| ConfigError::Read {
                path: dropin.clone(),
                source,
            })?;
            merge_tables(&mut merged, parse_table(&dropin, &text)?);
        }
        let config: Config =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.into(),
                    message: e.message().to_string(),
                })?;
        config.check()?;
        let mut config = config;
        config.resolve_submitters()?;
        let playbooks = crate::playbooks::load_dir(&config.playbooks.dir)
            .map_err(|e| ConfigError::Invalid(format!("playbooks: {e}")))?;
        config.loaded_playbooks = std::sync::Arc::new(playbooks);
        Ok(config)
    }

    /// Parses one TOML document on its own (no drop-ins).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.message().to_string(),
        })?;
        config.check()?;
        config.resolve_submitters()?;
        Ok(config)
    }

    /// Each call back's `submitters` as uids (see
    /// [`crate::callbacks::resolve_submitters`]).
    fn resolve_submitters(&mut self) -> Result<(), ConfigError> {
        for (source, callback) in &mut self.callbacks {
            crate::callbacks::resolve_submitters(callback)
                .map_err(|why| callback_error(source, why))?;
        }
        Ok(())
    }

    /// Range checks serde cannot express.
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, what: &str| Err(ConfigError::Invalid(format!("{key}: {what}")));
        if self.queue.max == 0 {
            return bad("queue.max", "must be at least 1");
        }
        if self.queue.max_concurrent == 0 {
            return bad("queue.max_concurrent", "must be at least 1");
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts", "must be at least 1");
        }
        if self.retry.factor == 0 {
            return bad("retry.factor", "must be at least 1");
        }
        if !(1..=86_400).contains(&self.isolate.default_seconds) {
            return bad("isolate.default_seconds", "must be 1..=86400");
        }
        if !(1..=1_000_000).contains(&self.throttle.default_rate_per_sec) {
            return bad("throttle.default_rate_per_sec", "must be 1..=1000000");
        }
        if self.nft.reconcile_interval_secs == 0 {
            return bad("nft.reconcile_interval_secs", "must be at least 1");
        }
        if self.ledger.segment_bytes < 4096 {
            return bad("ledger.segment_bytes", "must be at least 4096");
        }
        if self.ledger.max_bytes != 0 && self.ledger.max_bytes < self.ledger.segment_bytes {
            return bad(
                "ledger.max_bytes",
                "must be 0 (keep everything) or at least ledger.segment_bytes",
            );
        }
        if self.auth.submit_rate_per_sec != 0 && self.auth.submit_burst == 0 {
            return bad("auth.submit_burst", "must be at least 1");
        }
        // Guard entries fail closed: one that does not parse stops the
        // start (or the reload), naming the key and the entry.
        let unit_lists = [
            ("protect.units", &self.protect.units),
            ("restart.allowed_units", &self.restart.allowed_units),
        ];
        for (key, entries) in unit_lists {
            for (i, entry) in entries.iter().enumerate() {
                if let Err(why) = crate::actions::unit_guard::unit_pattern(entry) {
                    return bad(&format!("{key}[{i}]"), &why);
                }
            }
        }
        for (i, entry) in self.protect.addresses.iter().enumerate() {
            if let Err(why) = crate::actions::net::address_prefix(entry) {
                return bad(&format!("protect.addresses[{i}]"), &why);
            }
        }
        for (name, channel) in &self.notify.channels {
            if BUILTIN_CHANNELS.contains(&name.as_str()) {
                return bad(
                    &format!("notify.channels.{name}"),
                    "is a built-in channel and cannot be redefined",
                );
            }
            if !channel.url.starts_with("http://") && !channel.url.starts_with("https://") {
                return bad(
                    &format!("notify.channels.{name}.url"),
                    "must be an http:// or https:// URL",
                );
            }
            if channel.timeout_secs == 0 {
                return bad(
                    &format!("notify.channels.{name}.timeout_secs"),
                    "must be at least 1",
                );
            }
        }
        for (source, callback) in &self.callbacks {
            crate::callbacks::check_config(source, callback)
                .map_err(|why| callback_error(source, why))?;
        }
        // The agent's own files are never a patch's target: its ledger,
        // its state (backups, checkpoint) and its configuration.
        let own = [
            ("ledger.dir", self.ledger.dir.as_path()),
            ("state.dir", self.state.dir.as_path()),
            ("the configuration directory", Path::new("/etc/antibody")),
        ];
        for (i, root) in self.hot_patch.allowed_paths.iter().enumerate() {
            let key = format!("hot_patch.allowed_paths[{i}]");
            if !root.is_absolute() {
                return bad(&key, "must be an absolute path");
            }
            // Compared as they are and, where they exist, with their links
            // resolved (a root may be a link to one of them).
            let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let overlaps = |dir: &Path| {
                let (dir_real, root_real) = (real(dir), real(root));
                dir.starts_with(root)
                    || root.starts_with(dir)
                    || dir_real.starts_with(&root_real)
                    || root_real.starts_with(&dir_real)
            };
            if let Some((what, dir)) = own.iter().find(|(_, dir)| overlaps(dir)) {
                return bad(
                    &key,
                    &format!(
                        "{} holds or lies in {what} ({}), which hot_patch may never change",
                        root.display(),
                        dir.display()
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A `[callbacks.SOURCE]` problem, named by its full key: `why` (from
/// `crate::callbacks`) starts with the key it is about (".url: …"), or is
/// about the table itself.
fn callback_error(source: &str, why: String) -> ConfigError {
    match why.split_once(": ") {
        Some((key, rest)) if key.starts_with('.') => {
            ConfigError::Invalid(format!("callbacks.{source}{key}: {rest}"))
        }
        _ => ConfigError::Invalid(format!("callbacks.{source}: {why}")),
    }
}

/// The config files (`path` and its drop-ins) any user may read. Webhook
/// URLs often carry a token: the package ships the file 0640 root:root,
/// and the agent warns at start when one of them is world-readable while
/// webhooks are configured.
pub fn world_readable_files(path: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![path.to_path_buf()];
    files.extend(dropin_files(path).unwrap_or_default());
    files
        .into_iter()
        .filter(|f| std::fs::metadata(f).is_ok_and(|m| m.permissions().mode() & 0o004 != 0))
        .collect()
}

fn parse_table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string().trim().to_string(),
    })
}

/// `antibody.toml` → `antibody.toml.d/*.toml`, sorted.
fn dropin_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Tables merge key by key; any other value in `over` replaces the one in `base`.
fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_callback_is_refused_naming_its_key() {
        let err = Config::from_toml("[callbacks.NEXUS]\nurl = \"ftp://n.example/\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "callbacks.NEXUS.url: must be an http:// or https:// URL"
        );
        let err = Config::from_toml("[callbacks.IDS]\nurl = \"https://n.example/\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("callbacks.IDS: no alert source is called \"IDS\""),
            "{err}"
        );
        let good =
            Config::from_toml("[callbacks.NEXUS]\nurl = \"https://n.example/alert/{alert_id}\"\n")
                .unwrap();
        assert_eq!(good.callbacks["NEXUS"].method, "PATCH");
        let named = Config::from_toml(
            "[callbacks.NEXUS]\nurl = \"https://n.example/\"\nsubmitters = [\"nobody\", \"4242\"]\n",
        )
        .unwrap();
        assert_eq!(named.callbacks["NEXUS"].submitter_uids, vec![65534, 4242]);
        let err = Config::from_toml(
            "[callbacks.NEXUS]\nurl = \"https://n.example/\"\nsubmitters = [\"no-such-user-here\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "callbacks.NEXUS.submitters: no user is called \"no-such-user-here\""
        );
        assert_eq!(good.callbacks["NEXUS"].timeout_secs, 5);
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.queue.max, 1024);
        assert_eq!(c.queue.dedupe_window_secs, 60);
        assert_eq!(c.retry.base_ms, 200);
        assert_eq!(c.restart.burst, 3);
        assert_eq!(c.protect.ports, vec![22]);
        assert_eq!(c.ledger.dir, PathBuf::from("/var/log/antibody"));
    }

    #[test]
    fn design_example_parses() {
        let text = r#"
[ledger]
dir = "/var/log/antibody"
[state]
dir = "/var/lib/antibody"
[auth]
submit_groups = ["antibody"]
read_groups = ["antibody"]
polkit = false
[queue]
max = 1024
dedupe_window_secs = 60
[retry]
base_ms = 200
factor = 2
max_attempts = 4
[restart]
burst = 3
interval_secs = 300
timeout_secs = 90
[isolate]
default_seconds = 3600
[nft]
reconcile_interval_secs = 5
remove_on_stop = false
[hot_patch]
allowed_paths = []
[protect]
units = []
addresses = []
ports = [22]
[notify.channels.ops]
kind = "webhook"
url = "http://127.0.0.1:9000/hook"
timeout_secs = 5
"#;
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.notify.channels["ops"].url, "http://127.0.0.1:9000/hook");
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = Config::from_toml("[queue]\nmaxx = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("maxx"), "{err}");
    }

    #[test]
    fn builtin_channel_cannot_be_redefined() {
        let err =
            Config::from_toml("[notify.channels.journal]\nkind=\"webhook\"\nurl=\"http://x\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("notify.channels.journal"), "{err}");
    }

    #[test]
    fn guard_entries_that_do_not_parse_are_refused_by_key_and_entry() {
        for (text, key, entry) in [
            (
                "[protect]\naddresses = [\"10.0.0.1\", \"db.example\"]\n",
                "protect.addresses[1]",
                "db.example",
            ),
            (
                "[protect]\naddresses = [\"10.0.0.0/33\"]\n",
                "protect.addresses[0]",
                "10.0.0.0/33",
            ),
            (
                "[protect]\nunits = [\"web\", \"foo bar\"]\n",
                "protect.units[1]",
                "foo bar",
            ),
            (
                "[restart]\nallowed_units = [\"web-*/x\"]\n",
                "restart.allowed_units[0]",
                "web-*/x",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.starts_with(key) && err.contains(entry), "{err}");
        }
        let good = "[protect]\naddresses = [\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.1\"]\nunits = [\"web-*.service\", \"db\"]\n[restart]\nallowed_units = [\"*.service\"]\n";
        let c = Config::from_toml(good).unwrap();
        assert_eq!(c.protect.addresses.len(), 3);
    }

    #[test]
    fn hot_patch_roots_never_cover_the_agents_own_files() {
        for (root, what) in [
            ("/var", "ledger.dir"),
            ("/var/log/antibody", "ledger.dir"),
            ("/var/lib/antibody/backups", "state.dir"),
            ("/etc", "the configuration directory"),
            ("/", "ledger.dir"),
        ] {
            let text = format!("[hot_patch]\nallowed_paths = [\"/srv/app\", \"{root}\"]\n");
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(
                err.starts_with("hot_patch.allowed_paths[1]: ") && err.contains(what),
                "{err}"
            );
        }
        assert!(
            Config::from_toml("[hot_patch]\nallowed_paths = [\"/srv/app\", \"/etc/nginx\"]\n")
                .is_ok()
        );
    }

    #[test]
    fn dropins_merge_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("antibody.toml");
        std::fs::write(&main, "[queue]\nmax = 10\ndedupe_window_secs = 5\n").unwrap();
        std::fs::create_dir(dir.path().join("antibody.toml.d")).unwrap();
        std::fs::write(
            dir.path().join("antibody.toml.d/20-b.toml"),
            "[queue]\nmax = 30\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("antibody.toml.d/10-a.toml"),
            "[queue]\nmax = 20\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("antibody.toml.d/ignored.conf"), "garbage").unwrap();
        let c = Config::load(&main, false).unwrap();
        assert_eq!(c.queue.max, 30);
        assert_eq!(c.queue.dedupe_window_secs, 5);
    }

    #[test]
    fn missing_file_only_ok_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("nope.toml");
        assert_eq!(Config::load(&main, true).unwrap(), Config::default());
        assert!(Config::load(&main, false).is_err());
    }

    #[test]
    fn a_playbook_file_that_does_not_read_stops_the_load_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let books = dir.path().join("playbooks.d");
        std::fs::create_dir(&books).unwrap();
        std::fs::write(
            books.join("10-a.toml"),
            "[[playbook]]\nname = \"a\"\nsimulat = false\n",
        )
        .unwrap();
        let file = dir.path().join("antibody.toml");
        std::fs::write(
            &file,
            format!("[playbooks]\ndir = \"{}\"\n", books.display()),
        )
        .unwrap();
        let err = Config::load(&file, false).unwrap_err().to_string();
        assert!(
            err.starts_with("playbooks: ") && err.contains("10-a.toml") && err.contains("line 3"),
            "{err}"
        );
        std::fs::write(
            books.join("10-a.toml"),
            "[[playbook]]\nname = \"a\"\n[[playbook.actions]]\ntype = \"notify_operator\"\nchannel = \"journal\"\nmessage = \"m\"\n",
        )
        .unwrap();
        let config = Config::load(&file, false).unwrap();
        assert_eq!(config.loaded_playbooks.len(), 1);
    }
}
