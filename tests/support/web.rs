//! The real `antibody-web` binary on a private bus, and a small blocking
//! HTTP client for it. The bridge listens on an ephemeral loopback port,
//! which it names in its first log line.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PrivateBus;

pub const SENTINEL: &str = "nexus-sentinel-token-for-tests";
pub const JWT_SECRET: &[u8] = b"an HS256 key of the tests, 32+ bytes long";
pub const NOBODY: u32 = 65534;

pub struct Web {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub addr: String,
    pub log: PathBuf,
    child: Option<Child>,
    http: ureq::Agent,
}

/// Who runs the bridge: root, or uid/gid 65534 (nobody/nogroup) as a
/// stand-in for the unprivileged `antibody-web` user.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    Root,
    Nobody,
}

/// Writes the secrets and `web.toml` (secrets readable by `run_as`) into a
/// fresh directory; returns it and the config's path.
pub fn write_web_config(extra_toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // uid 65534 must reach the files: the directory is 0700 by default.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sentinel = dir.path().join("sentinel.token");
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&sentinel, format!("{SENTINEL}\n")).unwrap();
    std::fs::write(&secret, JWT_SECRET).unwrap();
    // As installed: root-owned, readable by the bridge's group (here
    // nogroup, for uid 65534), by no one else (the bridge refuses that).
    for f in [&sentinel, &secret] {
        std::os::unix::fs::chown(f, Some(0), Some(NOBODY)).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let config = dir.path().join("web.toml");
    // An ephemeral loopback port, unless the test names its own `listen`.
    let listen = if extra_toml.contains("listen =") {
        ""
    } else {
        "listen = \"127.0.0.1:0\"\n"
    };
    std::fs::write(
        &config,
        format!(
            "{listen}sentinel_token_file = \"{}\"\njwt_secret_file = \"{}\"\n{extra_toml}\n",
            sentinel.display(),
            secret.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, config)
}

/// The command that runs the bridge binary with `config` on `bus`.
pub fn web_command(bus_address: &str, config: &Path, run_as: RunAs) -> Command {
    let bin = env!("CARGO_BIN_EXE_antibody-web");
    let mut cmd = match run_as {
        RunAs::Root => Command::new(bin),
        RunAs::Nobody => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                &format!("--groups={NOBODY}"),
                bin,
            ]);
            c
        }
    };
    cmd.arg("--config")
        .arg(config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null());
    cmd
}

impl Web {
    pub fn start(bus: &PrivateBus, extra_toml: &str, run_as: RunAs) -> Web {
        let (dir, config) = write_web_config(extra_toml);
        let log = dir.path().join("web.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = web_command(&bus.address(), &config, run_as)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn antibody-web");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "antibody-web did not start listening; its log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Web {
            dir,
            base: format!("http://{addr}"),
            addr,
            log,
            child: Some(child),
            http,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once `shows` holds for it, or after 5 s: the bridge writes
    /// its journal lines on a thread of their own, a moment after it answers.
    pub fn log_showing(&self, shows: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log_text();
            if shows(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.get_with(path, token, &[])
    }

    /// GET with extra request headers.
    pub fn get_with(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(&format!("GET {path}"), req.call())
    }

    /// POSTs `body` with `content_type` (none when None).
    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl AsRef<[u8]>,
    ) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        Reply::from(&format!("POST {path}"), req.send(body.as_ref()))
    }

    pub fn post_json(&self, path: &str, token: Option<&str>, body: &str) -> Reply {
        self.post(path, token, Some("application/json"), body)
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A JWT signed with the tests' key; `exp` is now + `exp_in` seconds.
pub fn jwt(sub: &str, role: &str, exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "role": role, "exp": now + exp_in, "iat": now}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .unwrap()
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    fn from(what: &str, result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = result.unwrap_or_else(|e| panic!("{what}: HTTP request failed: {e}"));
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let mut body = String::new();
        response
            .body_mut()
            .as_reader()
            .read_to_string(&mut body)
            .unwrap();
        Reply {
            status: response.status().as_u16(),
            headers,
            body,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// Asserts the named-error answer: status, `error` name, JSON content type.
    pub fn assert_error(&self, status: u16, name: &str) -> &Reply {
        assert_eq!(self.status, status, "{self:?}");
        let json = self.json();
        assert_eq!(json["error"], name, "{self:?}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "{self:?}"
        );
        self
    }
}

/// The pinned schemathesis (PyPI), in a venv under target/ made on first
/// use: its `st` command.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// The pinned Playwright (PyPI); the browser is Debian's chromium
/// (install-deps.sh).
pub const PLAYWRIGHT_VERSION: &str = "1.65.2";

pub fn schemathesis() -> PathBuf {
    venv_with("schemathesis", SCHEMATHESIS_VERSION).join("bin/st")
}

/// The python of Playwright's venv.
pub fn playwright_python() -> PathBuf {
    let python = venv_with("playwright", PLAYWRIGHT_VERSION).join("bin/python");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium must be installed (scripts/install-deps.sh)"
    );
    python
}

/// `target/NAME-venv` with `package==version` installed from PyPI, made
/// (or remade) unless that version is already there.
fn venv_with(package: &str, version: &str) -> PathBuf {
    let venv = Path::new(super::ROOT).join(format!("target/{package}-venv"));
    let python = venv.join("bin/python");
    let installed = Command::new(&python)
        .arg("-c")
        .arg(format!(
            "import importlib.metadata as m; print(m.version('{package}'))"
        ))
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == version);
    if !installed {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (with python3-venv) must be installed");
        assert!(made.success(), "python3 -m venv {}", venv.display());
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", &format!("{package}=={version}")])
            .status()
            .expect("pip");
        assert!(pip.success(), "pip install {package}=={version}");
    }
    venv
}
