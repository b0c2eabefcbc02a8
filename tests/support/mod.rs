//! Shared harness for the tests that use real components: a private system
//! bus (`dbus-daemon` with Debian's default-deny policy plus the shipped
//! `dbus/org.vael.Antibody.conf`) and the real `antibodyd` binary on it.
//! Nothing here touches the host's own bus, services or files outside a
//! temporary directory.
#![allow(dead_code)]

/// Bus policy placed after the shipped one: lets uid 65534 (`nobody`)
/// through to the agent, whose own check of its groups then decides.
pub const LET_NOBODY_THROUGH: &str =
    r#"<policy user="nobody"><allow send_destination="org.vael.Antibody"/></policy>"#;

pub mod broker;
pub mod hooks;
pub mod notify;
pub mod testbed;
pub mod web;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Prints a long test's figures and keeps them in `target/figures/NAME.txt`,
/// which `scripts/test.sh` shows at the end of a run (cargo test keeps a
/// passing test's output to itself).
pub fn record_figures(name: &str, text: &str) {
    println!("{text}");
    let dir = Path::new(ROOT).join("target/figures");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.txt")), format!("{text}\n")).unwrap();
}

/// The ledger segments under `dir` (`ledger-*.jsonl`), in chain order.
pub fn ledger_segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("ledger-") && name.ends_with(".jsonl")
        })
        .collect();
    segments.sort();
    segments
}

/// Every record of every segment under `dir`, in chain order; a line that
/// is not JSON fails the test (read it only where nothing is being written).
pub fn ledger_records_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    for segment in ledger_segments(dir) {
        let text = std::fs::read_to_string(&segment).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            records.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", segment.display())),
            );
        }
    }
    records
}

/// Tests that need root fail loudly without it: they never skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it runs dbus-daemon with a system policy); it must not be skipped"
    );
}

pub struct PrivateBus {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

/// Writes the private bus's config into `dir` (`bus.conf`): Debian's
/// system policy, the shipped one, then `extra`, listening on `socket`.
fn write_bus_config(dir: &Path, socket: &Path, extra: &str) {
    let template =
        std::fs::read_to_string(Path::new(ROOT).join("tests/support/private-system-bus.conf.in"))
            .expect("bus config template");
    let config = template
        .replace("@SOCKET@", socket.to_str().unwrap())
        .replace("@POLICY@", &format!("{ROOT}/dbus/org.vael.Antibody.conf"))
        .replace("@EXTRA@", extra);
    std::fs::write(dir.join("bus.conf"), config).unwrap();
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        PrivateBus::start_with_extra("")
    }

    /// `extra` is XML placed after the shipped policy (e.g. a test-only
    /// `<policy>` that lets an unprivileged uid through to the agent's own check).
    pub fn start_with_extra(extra: &str) -> PrivateBus {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("system_bus_socket");
        write_bus_config(dir.path(), &socket, extra);
        let child = spawn_bus_daemon(dir.path(), &socket);
        PrivateBus { dir, socket, child }
    }

    /// The same bus served by `dbus-broker` (see [`broker`]) instead of
    /// `dbus-daemon`, with the same policy.
    pub fn start_broker_with_extra(extra: &str) -> PrivateBus {
        let dir = tempfile::tempdir().expect("tempdir");
        write_bus_config(dir.path(), Path::new("/run/dbus/system_bus_socket"), extra);
        let child = broker::spawn(dir.path());
        let socket = PathBuf::from(format!(
            "/proc/{}/root/run/dbus/system_bus_socket",
            child.id()
        ));
        wait_until(
            Duration::from_secs(10),
            || accepting(&socket),
            "dbus-broker accepting on its socket",
        );
        PrivateBus { dir, socket, child }
    }

    /// The bus's processes (benchmarks count their CPU time): dbus-daemon,
    /// or dbus-broker-launch and the dbus-broker it started.
    pub fn daemon_pids(&self) -> Vec<i32> {
        let pid = self.child.id() as i32;
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        std::iter::once(pid)
            .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
            .collect()
    }

    /// Stops the bus daemon and starts a new one on the same socket and
    /// policy, as `systemctl restart dbus` does: every connection drops.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn_bus_daemon(self.dir.path(), &self.socket);
    }

    /// The bus daemon's pid (benchmarks count its CPU time).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address().as_str())
            .build()
            .await
            .expect("connect to the private bus")
    }
}

/// Whether a bus accepts connections on `socket`: not only that the file
/// is there, which it is from bind(); a connect before the daemon's
/// listen() is refused (CI saw it once).
fn accepting(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

fn spawn_bus_daemon(dir: &Path, socket: &Path) -> Child {
    let child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", dir.join("bus.conf").display()))
        .args(["--nofork", "--nopidfile"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon must be installed (apt-get install dbus-daemon)");
    wait_until(
        Duration::from_secs(10),
        || accepting(socket),
        "dbus-daemon accepting on its socket",
    );
    child
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `home/antibody.toml`: ledger and state under `home`, plus `extra_toml`.
pub fn write_config(home: &Path, extra_toml: &str) -> PathBuf {
    std::fs::create_dir_all(home).unwrap();
    let config = home.join("antibody.toml");
    // The test's own playbooks directory (none unless a test names one),
    // never the host's /etc/antibody/playbooks.d.
    let playbooks = match extra_toml.contains("[playbooks]") {
        true => String::new(),
        false => format!(
            "[playbooks]\ndir = \"{}\"\n",
            home.join("playbooks").display()
        ),
    };
    std::fs::write(
        &config,
        format!(
            "{playbooks}[ledger]\ndir = \"{}\"\n[state]\ndir = \"{}\"\n{extra_toml}\n",
            home.join("ledger").display(),
            home.join("state").display()
        ),
    )
    .unwrap();
    config
}

/// The usual T2 start (root required): a private bus and an agent with the
/// default test config in a fresh directory. Bind all three: the tuple
/// drops the agent first, then its directory, then the bus.
pub fn bus_and_agent() -> (PrivateBus, tempfile::TempDir, Agent) {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(&bus, home.path(), "");
    (bus, home, agent)
}

/// A running `antibodyd` with its own ledger/state directories.
pub struct Agent {
    pub home: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Writes `home/antibody.toml` (see [`write_config`]) and starts the
    /// agent on `bus`; returns once it owns its name.
    pub fn start(bus: &PrivateBus, home: &Path, extra_toml: &str) -> Agent {
        let config = write_config(home, extra_toml);
        Agent::start_with_config(bus, home, &config, &[])
    }

    /// Writes `home/antibody.toml` (see [`write_config`]) and starts the
    /// agent as systemd would a `Type=notify` unit with `WatchdogSec=`:
    /// its notifications go to `notify`, its watchdog interval is `watchdog`.
    pub fn start_notified(
        bus: &PrivateBus,
        home: &Path,
        extra_toml: &str,
        notify: &notify::NotifySocket,
        watchdog: Duration,
    ) -> Agent {
        let config = write_config(home, extra_toml);
        Agent::start_with_config(
            bus,
            home,
            &config,
            &[
                ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
                ("WATCHDOG_USEC", &watchdog.as_micros().to_string()),
            ],
        )
    }

    /// Starts the agent with an existing config file and extra environment.
    pub fn start_with_config(
        bus: &PrivateBus,
        home: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Agent {
        Agent::start_wrapped(bus, home, config, env, &[])
    }

    /// Like [`Agent::start_with_config`], run through `wrapper` (e.g.
    /// `["ip", "netns", "exec", NS]`, which execs the agent in place, so
    /// the pid is still the agent's).
    pub fn start_wrapped(
        bus: &PrivateBus,
        home: &Path,
        config: &Path,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Agent {
        let log = home.join("agent.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let agent_bin = env!("CARGO_BIN_EXE_antibodyd");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(agent_bin),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(agent_bin);
                c
            }
        };
        cmd.arg("--config")
            .arg(config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn antibodyd");
        let agent = Agent {
            home: home.to_path_buf(),
            config: config.to_path_buf(),
            log,
            child: Some(child),
        };
        agent.wait_for_name(bus);
        agent
    }

    pub fn wait_for_name(&self, bus: &PrivateBus) {
        let address = bus.address();
        wait_until(
            Duration::from_secs(20),
            || {
                Command::new("busctl")
                    .args(["--system", "status", "org.vael.Antibody"])
                    .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            },
            "antibodyd to own org.vael.Antibody",
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("kill");
    }

    /// Waits for the agent to exit; returns its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().expect("wait")
    }

    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn ledger_dir(&self) -> PathBuf {
        self.home.join("ledger")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `busctl --system ARGS…` against `bus`; returns (success, stdout, stderr).
pub fn busctl(bus: &PrivateBus, args: &[&str]) -> (bool, String, String) {
    run_on_bus(bus, "busctl", &[&["--system"], args].concat(), None)
}

/// Runs a command on `bus`, optionally as `uid` (via setpriv, no groups
/// unless `gids` given).
pub fn run_on_bus(
    bus: &PrivateBus,
    program: &str,
    args: &[&str],
    as_user: Option<(u32, &[u32])>,
) -> (bool, String, String) {
    let mut cmd = match as_user {
        None => Command::new(program),
        Some((uid, gids)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={}", gids.first().copied().unwrap_or(uid)));
            if gids.is_empty() {
                c.arg("--clear-groups");
            } else {
                c.arg(format!(
                    "--groups={}",
                    gids.iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            c.arg(program);
            c
        }
    };
    let out = cmd
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal alert JSON with the given actions (a JSON array text).
pub fn alert(actions: &str) -> String {
    format!(
        r#"{{"source":"Manual","severity":"high","description":"test alert","actions":{actions}}}"#
    )
}

/// Appends `records` filler records (agent-level `config_reloaded`) to a
/// new ledger in `ledger_dir`: a long ledger to replay, quickly made.
pub async fn write_filler_ledger(ledger_dir: &Path, records: u64) {
    use antibody::ledger::{LedgerWriter, Tip, WriterOptions};
    let writer = LedgerWriter::start(
        WriterOptions {
            dir: ledger_dir.to_path_buf(),
            segment_bytes: 64 << 20,
            tip: Tip::default(),
            last_segment: None,
        },
        Box::new(|_| {}),
    )
    .unwrap();
    let mut pending = Vec::new();
    for n in 0..records {
        let event = antibody::plan::Event::ConfigReloaded {
            ok: true,
            detail: format!("filler {n}"),
        };
        let (kind, payload) = event.to_parts();
        pending.push(writer.append(kind, None, payload, vec![]));
        if pending.len() == 50_000 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

/// The export-format entry (`systemd-journal-remote`'s input) that host
/// `machine_id`'s journal holds for `record`: the fields the agent's
/// journal mirror sends (`record_entry`, the same function) and those
/// journald adds.
pub fn journal_export_entry(
    machine_id: &str,
    hostname: &str,
    record: &antibody::ledger::Record,
) -> String {
    use antibody::ledger::Durable;
    use antibody::sys::journal::record_entry;
    let ts_ms = antibody::time::parse_rfc3339(&record.ts).unwrap();
    let entry = record_entry(&Durable::from_record(record, ts_ms, Vec::new()));
    let mut text = format!(
        "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={machine_id}\n_MACHINE_ID={machine_id}\n_HOSTNAME={hostname}\n_UID=0\n_SYSTEMD_UNIT=antibody.service\nPRIORITY={}\nMESSAGE={}\n",
        ts_ms * 1000 + record.seq % 1000,
        record.seq,
        entry.priority,
        entry.message.replace('\n', " ")
    );
    for (key, value) in &entry.fields {
        text.push_str(&format!("{key}={value}\n"));
    }
    text.push('\n');
    text
}
