//! T2: `antibodyctl verify --journal` and `antibodyctl fleet` against
//! journal files the real `systemd-journal-remote` writes. Three hosts'
//! ledgers are made by the engine (T1 rig), each record is turned into the
//! journal entry the agent's mirror sends (`record_entry`, the same
//! function), and the entries go through `systemd-journal-remote` as an
//! export stream, as a collector receives them. Copies with a record
//! removed or edited are made the same way. (The booted fleet, with
//! `systemd-journal-upload` between machines, is `t4_fleet`.)

mod rig;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rig::*;

struct Host {
    machine_id: String,
    hostname: String,
    records: Vec<ledger::Record>,
}

/// A host's ledger after `plans` journal notices (and, with `isolate`, an
/// isolation of 10.9.9.9 for ten minutes).
async fn host(n: u32, plans: u32, isolate: bool) -> Host {
    let rig = start("").await;
    for p in 0..plans {
        let notice =
            json!([{"type": "notify_operator", "channel": "journal", "message": format!("m{p}")}]);
        let (id, _) = rig
            .engine
            .submit(&alert(&format!("host {n} plan {p}"), notice))
            .await
            .unwrap();
        wait_finished(&rig.engine, &id).await;
    }
    if isolate {
        let isolation = json!([{"type": "isolate_socket", "sid": "10.9.9.9", "seconds": 600}]);
        let (id, _) = rig
            .engine
            .submit(&alert("isolate", isolation))
            .await
            .unwrap();
        assert_eq!(wait_finished(&rig.engine, &id).await["status"], "success");
    }
    let dir = stop(rig).await;
    let mut records = Vec::new();
    ledger::scan(&dir.path().join("ledger"), |r| records.push(r.clone())).unwrap();
    Host {
        machine_id: format!("{n:032x}"),
        hostname: format!("host{n}"),
        records,
    }
}

/// A collector's journal directory holding `entries`, as
/// `systemd-journal-remote` writes it.
fn collector(dir: &Path, entries: &[String]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut remote = Command::new("/lib/systemd/systemd-journal-remote")
        .arg(format!("--output={}", dir.join("remote.journal").display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-journal-remote (Debian's systemd-journal-remote package)");
    remote
        .stdin
        .take()
        .unwrap()
        .write_all(entries.concat().as_bytes())
        .unwrap();
    let out = remote.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

fn antibodyctl(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_antibodyctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn a_collectors_copy_verifies_per_host_and_names_holes_and_altered_records() {
    let hosts = vec![
        host(1, 8, false).await,
        host(2, 5, false).await,
        host(3, 3, true).await,
    ];
    let entries = |skip: &dyn Fn(&Host, &ledger::Record) -> bool| -> Vec<String> {
        hosts
            .iter()
            .flat_map(|h| {
                h.records
                    .iter()
                    .filter(|r| !skip(h, r))
                    .map(|r| support::journal_export_entry(&h.machine_id, &h.hostname, r))
            })
            .collect()
    };
    let work = tempfile::tempdir().unwrap();
    let whole = collector(&work.path().join("whole"), &entries(&|_, _| false));
    let whole_text = whole.to_str().unwrap();

    let (code, out) = antibodyctl(&["verify", "--journal", whole_text]);
    assert_eq!(code, 0, "{out}");
    for h in &hosts {
        let line = format!(
            "{} ({}): chain whole; {} record(s), seq 1..{}",
            h.hostname,
            h.machine_id,
            h.records.len(),
            h.records.len()
        );
        assert!(out.contains(&line), "{line}\n{out}");
        let tip = format!("tip hash {}", h.records.last().unwrap().hash);
        assert!(out.contains(&tip), "{tip}\n{out}");
    }
    let (code, out) = antibodyctl(&["--json", "verify", "--journal", whole_text]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["hosts"].as_array().unwrap().len(), 3);
    assert_eq!(
        report["hosts"][0]["versions"],
        json!([]),
        "the rig writes no agent_started"
    );

    // The fleet: host 3 holds its isolation.
    let (code, out) = antibodyctl(&["fleet", "--journal", whole_text]);
    assert_eq!(code, 0, "{out}");
    let host3 = out.lines().find(|l| l.starts_with("host3 ")).unwrap();
    assert!(host3.contains("last 24 h: 4 success"), "{host3}");
    assert!(
        host3.contains("1 in force (isolate_socket addr:10.9.9.9 until "),
        "{host3}"
    );
    assert!(host3.ends_with("chain whole"), "{host3}");
    let host1 = out.lines().find(|l| l.starts_with("host1 ")).unwrap();
    assert!(host1.contains("nothing in force"), "{host1}");

    // A copy with one record of host 2 removed names the hole.
    let holed = collector(
        &work.path().join("holed"),
        &entries(&|h, r| h.hostname == "host2" && r.seq == 5),
    );
    let (code, out) = antibodyctl(&["verify", "--journal", holed.to_str().unwrap()]);
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("host2 (") && out.contains("chain BROKEN") && out.contains("HOLE at seq 5"),
        "{out}"
    );
    assert_eq!(out.matches("chain whole").count(), 2, "{out}");

    // A copy with one record of host 1 edited names it as bad.
    let mut edited = entries(&|_, _| false);
    let target = edited
        .iter()
        .position(|e| e.contains("_HOSTNAME=host1\n") && e.contains("\nANTIBODY_SEQ=7\n"))
        .unwrap();
    // The record's time, in its ANTIBODY_RECORD only: the hash no longer holds.
    edited[target] = edited[target].replacen(
        "ANTIBODY_RECORD={\"seq\":7,\"ts\":\"2026",
        "ANTIBODY_RECORD={\"seq\":7,\"ts\":\"2025",
        1,
    );
    assert_ne!(
        edited[target],
        entries(&|_, _| false)[target],
        "the edit took"
    );
    let bad = collector(&work.path().join("edited"), &edited);
    let (code, out) = antibodyctl(&["verify", "--journal", bad.to_str().unwrap()]);
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("first BAD record at seq 7: its hash does not match its content"),
        "{out}"
    );

    // Journal files with no Antibody records are not called whole.
    let others = collector(
        &work.path().join("others"),
        &[format!(
            "__REALTIME_TIMESTAMP=1764460800000000\n__MONOTONIC_TIMESTAMP=1\n_BOOT_ID={m}\n_MACHINE_ID={m}\nMESSAGE=not ours\n\n",
            m = "9".repeat(32)
        )],
    );
    let (code, out) = antibodyctl(&["verify", "--journal", others.to_str().unwrap()]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("no Antibody ledger records"), "{out}");

    // A directory without journal files is a mistake in the command.
    let empty = tempfile::tempdir().unwrap();
    let (code, out) = antibodyctl(&["verify", "--journal", empty.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no journal files in this directory"), "{out}");
}

/// A journal file the reader cannot open stops the check with its path:
/// libsystemd's directory reader would pass over it, and the copy would
/// be called whole on less than it holds.
#[tokio::test]
async fn a_journal_file_that_cannot_be_read_stops_the_check_with_its_path() {
    let h = host(4, 1, false).await;
    let entries: Vec<String> = h
        .records
        .iter()
        .map(|r| support::journal_export_entry(&h.machine_id, &h.hostname, r))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let dir = collector(&work.path().join("remote"), &entries);
    std::fs::copy(dir.join("remote.journal"), dir.join("sealed.journal")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (work.path().to_path_buf(), 0o755),
        (dir.clone(), 0o755),
        (dir.join("remote.journal"), 0o644),
        (dir.join("sealed.journal"), 0o600),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // As root everything is readable: the reader runs as nobody, from a
    // copy nobody can reach wherever the checkout lies.
    let reader = work.path().join("antibodyctl");
    std::fs::copy(env!("CARGO_BIN_EXE_antibodyctl"), &reader).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&reader)
        .args(["verify", "--journal", dir.to_str().unwrap()])
        .output()
        .expect("setpriv (util-linux)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "{}: Permission denied",
            dir.join("sealed.journal").display()
        )),
        "{text}"
    );

    // Entries with Antibody's MESSAGE_ID that another process sent (any
    // local user can): set aside and counted, the chain still whole.
    let mut forged = entries.clone();
    forged.push(
        support::journal_export_entry(&h.machine_id, &h.hostname, h.records.last().unwrap())
            .replace("\n_UID=0\n", "\n_UID=1000\n"),
    );
    let forged_dir = collector(&work.path().join("forged"), &forged);
    let (code, out) = antibodyctl(&["verify", "--journal", forged_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "1 entr(ies) SET ASIDE: Antibody's MESSAGE_ID, not written by antibody.service as root"
        ),
        "{out}"
    );

    // A journal name that is no regular file is named, not opened.
    std::fs::remove_file(dir.join("sealed.journal")).unwrap();
    nix::unistd::mkfifo(&dir.join("pipe.journal"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, out) = antibodyctl(&["verify", "--journal", dir.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("pipe.journal: not a regular file"), "{out}");
}

/// A file damaged inside (64 KiB of noise written over a part of it):
/// with matches, libsystemd may stop walking it and drop it from the
/// journal with only a debug log. The check says so, with the path,
/// rather than verify what it read before. Where the damage stops the
/// walk depends on the file's keyed hash tables (a random key per file),
/// so the noise goes over each 64 KiB of the first 2 MiB in turn, on a
/// fresh copy each time: some must stop the walk, and none may pass.
#[test]
fn a_journal_file_damaged_inside_stops_the_check_with_its_path() {
    let entries: Vec<String> = (1..=3000)
        .map(|seq| {
            format!(
                "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={seq}\n_BOOT_ID={m}\n_MACHINE_ID={m}\n_HOSTNAME=h\n_UID=0\n_SYSTEMD_UNIT=antibody.service\nMESSAGE_ID={id}\nANTIBODY_SEQ={seq}\nMESSAGE={pad}\n\n",
                1_764_460_800_000_000u64 + seq,
                m = "1".repeat(32),
                id = antibody::sys::journal::message_id("plan_created").unwrap(),
                pad = "x".repeat(300),
            )
        })
        .collect();
    let work = tempfile::tempdir().unwrap();
    let dir = collector(&work.path().join("damaged"), &entries);
    let whole = dir.join("remote.journal");
    let (code, out) = antibodyctl(&["verify", "--journal", whole.to_str().unwrap()]);
    assert_eq!(code, 5, "read whole (and no record carried): {out}");

    let mut noise = Vec::with_capacity(65_536);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 65_536 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        noise.extend_from_slice(&state.to_le_bytes());
    }
    let copy = work.path().join("copy.journal");
    let mut stopped = 0;
    for offset in (65_536..2 << 20).step_by(65_536) {
        std::fs::copy(&whole, &copy).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).unwrap();
        f.write_all(&noise).unwrap();
        drop(f);
        let (code, out) = antibodyctl(&["verify", "--journal", copy.to_str().unwrap()]);
        match code {
            2 => {
                let said = format!(
                    "{}: libsystemd gave up on this file partway",
                    copy.display()
                );
                assert!(out.contains(&said), "{out}");
                stopped += 1;
            }
            5 => {}
            _ => panic!("noise at {offset}: exit {code}: {out}"),
        }
    }
    assert!(stopped > 0, "no damage stopped libsystemd's walk");
}
