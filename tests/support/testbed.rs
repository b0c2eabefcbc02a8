//! The T4 testbed from Rust: a booted Debian 12 (systemd-nspawn, see
//! `tests/testbed/testbed.sh`) with this build's agent installed as a
//! `Type=notify` service. Each test boots its own machine, so tests do not
//! share units, ledgers or flap counts; the machine is powered off and
//! deleted on drop, even when the test fails.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{require_root, ROOT};

pub struct Testbed {
    pub name: String,
}

fn script() -> PathBuf {
    PathBuf::from(ROOT).join("tests/testbed/testbed.sh")
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_antibodyd"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run_script(args: &[&str]) -> Output {
    run_script_with(args, &[])
}

fn run_script_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(script())
        .args(args)
        .env("ANTIBODY_BIN_DIR", bin_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("tests/testbed/testbed.sh runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Testbed {
    /// Boots a machine for `test` and starts the agent in it.
    pub fn boot(test: &str) -> Testbed {
        Testbed::boot_with(test, None, true)
    }

    /// Boots a machine for `test`, alone on its private network or, with
    /// `zone`, on that zone's bridge with the other machines booted into
    /// it; with `agent`, installs and starts the agent.
    pub fn boot_with(test: &str, zone: Option<&str>, agent: bool) -> Testbed {
        require_root();
        let name = format!("ab-{test}-{}", std::process::id())
            .replace('_', "-")
            .chars()
            .take(40)
            .collect::<String>();
        let machine = Testbed { name };
        let env: Vec<(&str, &str)> = zone.map(|z| ("TESTBED_ZONE", z)).into_iter().collect();
        let steps: &[&str] = if agent {
            &["boot", "install"]
        } else {
            &["boot"]
        };
        for step in steps {
            let out = run_script_with(&[step, &machine.name], &env);
            assert!(
                out.status.success(),
                "testbed {step} failed: {}\n{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        if agent {
            machine.wait_active("antibody.service");
        }
        machine
    }

    /// The machine's root directory on the host.
    pub fn root(&self) -> PathBuf {
        let out = run_script(&["root", &self.name]);
        assert!(out.status.success(), "testbed root: {}", text(&out.stderr));
        PathBuf::from(text(&out.stdout).trim())
    }

    /// Runs `sh -c script` inside; (success, stdout, stderr).
    pub fn try_sh(&self, script: &str) -> (bool, String, String) {
        let out = run_script(&["exec", &self.name, "sh", "-c", script]);
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// Runs `sh -c script` inside and returns its stdout; fails the test if
    /// the command fails.
    pub fn sh(&self, script: &str) -> String {
        let (ok, out, err) = self.try_sh(script);
        if !ok {
            // What the agent's unit said: the usual reason a command failed.
            let journal = self
                .try_sh("journalctl -u antibody.service --no-pager -o short-monotonic | tail -n 30")
                .1;
            panic!(
                "in the testbed, `{script}` failed:\n{out}\n{err}\nthe agent's journal:\n{journal}"
            );
        }
        out
    }

    /// One property of a unit as `systemctl show` prints it.
    pub fn show(&self, unit: &str, property: &str) -> String {
        self.sh(&format!("systemctl show -p {property} --value {unit}"))
            .trim()
            .to_string()
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; the agent's journal:\n{}",
            self.try_sh("journalctl -u antibody --no-pager -o cat | tail -n 40")
                .1
        );
    }

    /// Waits until systemd has started the agent again: a new main PID,
    /// and active.
    pub fn wait_for_new_agent(&self, what: &str, old_pid: &str) {
        self.wait_until(what, Duration::from_secs(30), || {
            let now = self.show("antibody.service", "MainPID");
            now != old_pid && now != "0" && self.show("antibody.service", "ActiveState") == "active"
        });
    }

    pub fn wait_active(&self, unit: &str) {
        self.wait_until(
            &format!("{unit} to be active"),
            Duration::from_secs(30),
            || {
                self.try_sh(&format!("systemctl is-active --quiet {unit}"))
                    .0
            },
        );
    }

    /// `SubmitAlert` through antibodyctl as root: the plan id, or the
    /// refusal as `antibodyctl: <ErrorName>: <message>`.
    pub fn submit(&self, alert: &Value) -> Result<String, String> {
        let quoted = shell_quote(&alert.to_string());
        let (ok, out, err) = self.try_sh(&format!(
            "printf '%s' {quoted} | antibodyctl --json submit -"
        ));
        if !ok {
            return Err(err.trim().to_string());
        }
        let reply: Value = serde_json::from_str(out.trim()).expect("antibodyctl JSON");
        Ok(reply["plan_id"].as_str().unwrap().to_string())
    }

    pub fn plan(&self, id: &str) -> Value {
        serde_json::from_str(&self.sh(&format!("antibodyctl --json plan {id}"))).unwrap()
    }

    /// Waits for the plan to end and returns it.
    pub fn finished_plan(&self, id: &str) -> Value {
        let mut plan = Value::Null;
        self.wait_until(
            &format!("plan {id} to finish"),
            Duration::from_secs(60),
            || {
                plan = self.plan(id);
                plan["status"] == "success" || plan["status"] == "failed"
            },
        );
        plan
    }

    /// The ledger's `kind`s for one plan, read back from journald by the
    /// plan's id (`ANTIBODY_PLAN_ID`), as an operator would.
    pub fn journal_kinds(&self, plan_id: &str) -> Vec<String> {
        self.sh(&format!(
            "journalctl -u antibody ANTIBODY_PLAN_ID={plan_id} -o json --no-pager"
        ))
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["ANTIBODY_KIND"].as_str().map(str::to_string))
        .collect()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = run_script(&["stop", &self.name]);
    }
}

pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
