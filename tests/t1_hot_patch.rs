//! T1: `hot_patch` through the engine, on real files in a temporary
//! directory: the atomic write, the backup, rollback, conflicts and the
//! guards that are checked on the file itself.

mod rig;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use rig::*;

const DIFF: &str = "--- a/app.conf\n+++ b/app.conf\n@@ -1,3 +1,3 @@\n listen 80\n-debug on\n+debug off\n workers 4\n";
const ORIGINAL: &str = "listen 80\ndebug on\nworkers 4\n";
const PATCHED: &str = "listen 80\ndebug off\nworkers 4\n";

struct Files {
    root: tempfile::TempDir,
    target: PathBuf,
}

fn files() -> Files {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("app.conf");
    fs::write(&target, ORIGINAL).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
    Files { root, target }
}

async fn start_for(files: &Files) -> Rig {
    start(&format!(
        "[hot_patch]\nallowed_paths = [{:?}]\n",
        files.root.path()
    ))
    .await
}

fn patch(file: &Path) -> Value {
    json!({"type": "hot_patch", "file": file, "diff": DIFF})
}

async fn run(rig: &Rig, actions: Value) -> (String, Value) {
    let (id, _) = rig.engine.submit(&alert("patch", actions)).await.unwrap();
    let plan = wait_finished(&rig.engine, &id).await;
    (id, plan)
}

/// `RollbackPlan` of a one-patch plan, until its action is reverted.
async fn rollback_and_wait(rig: &Rig, id: &str) {
    rig.engine.rollback(id, "test").await.unwrap();
    wait_for(
        || rig.engine.get_plan(id).unwrap()["actions"][0]["state"] == "reverted",
        "the rollback",
    )
    .await;
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn a_patch_is_applied_keeping_the_mode_and_a_rollback_restores_the_file() {
    let files = files();
    let rig = start_for(&files).await;
    let (id, plan) = run(&rig, json!([patch(&files.target)])).await;
    assert_eq!(plan["status"], "success", "{plan}");
    assert_eq!(fs::read_to_string(&files.target).unwrap(), PATCHED);
    assert_eq!(mode(&files.target), 0o640);
    let changes = &plan["actions"][0]["changes"];
    let backup = PathBuf::from(changes["backup"].as_str().unwrap());
    assert_eq!(fs::read_to_string(&backup).unwrap(), ORIGINAL);
    assert_eq!(mode(&backup), 0o600);
    // The hashes were durable before the write, in action_started.
    let started = ledger_payloads(&rig, "action_started");
    assert_eq!(
        started[0]["prepared"]["before_sha256"],
        antibody::sys::files::sha256_hex(ORIGINAL.as_bytes())
    );
    assert_eq!(
        started[0]["prepared"]["after_sha256"],
        antibody::sys::files::sha256_hex(PATCHED.as_bytes())
    );
    // No temporary file is left beside the target.
    assert_eq!(fs::read_dir(files.root.path()).unwrap().count(), 1);

    rollback_and_wait(&rig, &id).await;
    assert_eq!(fs::read_to_string(&files.target).unwrap(), ORIGINAL);
    assert_eq!(mode(&files.target), 0o640);
}

#[tokio::test]
async fn a_temporary_file_a_killed_write_left_is_removed_by_the_next_write() {
    // The crash loop (t4_crash_loop.rs) found `.antibody-*.tmp` files left
    // beside patched files after SIGKILLs mid-write. The temporary's name
    // is now one per action: the revert finds this one and removes it.
    let files = files();
    let rig = start_for(&files).await;
    let (id, plan) = run(&rig, json!([patch(&files.target)])).await;
    assert_eq!(plan["status"], "success", "{plan}");
    let leftover = files.root.path().join(format!(".antibody-{id}.0.tmp"));
    fs::write(&leftover, "half of a revert's wri").unwrap();
    rollback_and_wait(&rig, &id).await;
    assert_eq!(fs::read_to_string(&files.target).unwrap(), ORIGINAL);
    let names: Vec<_> = fs::read_dir(files.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["app.conf"], "left beside the target");
}

#[tokio::test]
async fn a_later_failure_rolls_the_patch_back() {
    let files = files();
    let rig = start_for(&files).await;
    rig.step.script("boom", vec![Outcome::Permanent]);
    let (_, plan) = run(&rig, json!([patch(&files.target), step("boom")])).await;
    assert_eq!(plan["status"], "failed");
    assert_eq!(plan["actions"][0]["state"], "reverted");
    assert_eq!(fs::read_to_string(&files.target).unwrap(), ORIGINAL);
}

#[tokio::test]
async fn a_file_changed_since_the_patch_is_a_conflict_and_left_alone() {
    let files = files();
    let rig = start_for(&files).await;
    let (id, _) = run(&rig, json!([patch(&files.target)])).await;
    fs::write(&files.target, "edited by hand\n").unwrap();
    rig.engine.rollback(&id, "test").await.unwrap();
    wait_for(
        || rig.engine.get_plan(&id).unwrap()["rollback"]["finished_at"].is_string(),
        "the rollback to end",
    )
    .await;
    let plan = rig.engine.get_plan(&id).unwrap();
    assert_eq!(plan["actions"][0]["revert_failed"], true, "{plan}");
    let log = plan["log"].to_string();
    assert!(log.contains("conflict: "), "{log}");
    assert!(log.contains("changed since the patch"), "{log}");
    assert_eq!(
        fs::read_to_string(&files.target).unwrap(),
        "edited by hand\n"
    );
}

#[tokio::test]
async fn a_wrong_expected_hash_or_a_diff_that_does_not_apply_changes_nothing() {
    let files = files();
    let rig = start_for(&files).await;
    let mut wrong_hash = patch(&files.target);
    wrong_hash["sha256"] = json!("0".repeat(64));
    let (_, plan) = run(&rig, json!([wrong_hash])).await;
    assert_eq!(plan["status"], "failed");
    assert_eq!(plan["actions"][0]["attempts"], 1);
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(error.contains("not the 0000"), "{error}");

    let mut right_hash = patch(&files.target);
    right_hash["sha256"] = json!(antibody::sys::files::sha256_hex(ORIGINAL.as_bytes()));
    right_hash["diff"] = json!("--- a\n+++ b\n@@ -1 +1 @@\n-no such line\n+x\n");
    let (_, plan) = run(&rig, json!([right_hash])).await;
    assert_eq!(plan["status"], "failed");
    let error = plan["actions"][0]["error"].as_str().unwrap();
    assert!(error.contains("the diff does not apply"), "{error}");
    assert_eq!(fs::read_to_string(&files.target).unwrap(), ORIGINAL);
}

/// The guards on the file itself answer `ProtectedTarget` at `SubmitAlert`,
/// naming the field; nothing is planned.
async fn refused_at_submit(rig: &Rig, file: &Path, why: &str) {
    let err = rig
        .engine
        .submit(&alert("patch", json!([patch(file)])))
        .await
        .unwrap_err();
    assert_eq!(
        err.name,
        antibody::error::ErrorName::ProtectedTarget,
        "{err:?}"
    );
    assert!(
        err.message.starts_with("actions[0].file: ") && err.message.contains(why),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_symlink_out_of_the_root_a_fifo_or_a_big_file_is_refused_at_submit() {
    let files = files();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.conf");
    fs::write(&secret, ORIGINAL).unwrap();
    let link = files.root.path().join("link.conf");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let fifo = files.root.path().join("fifo.conf");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = files.root.path().join("big.conf");
    fs::File::create(&big)
        .unwrap()
        .set_len(antibody::sys::files::MAX_TARGET_BYTES + 1)
        .unwrap();
    let rig = start_for(&files).await;
    refused_at_submit(&rig, &link, "is a symbolic link; hot_patch follows none").await;
    refused_at_submit(&rig, &fifo, "is not a regular file").await;
    refused_at_submit(&rig, &big, "hot_patch takes files of at most 16 MiB").await;
    assert_eq!(fs::read_to_string(&secret).unwrap(), ORIGINAL);
}

#[tokio::test]
async fn a_symlink_swapped_in_after_submit_is_refused_at_apply() {
    let files = files();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.conf");
    fs::write(&secret, ORIGINAL).unwrap();
    let link = files.root.path().join("link.conf");
    fs::write(&link, ORIGINAL).unwrap();
    // Held at its first step so the file can change between submit and apply.
    let rig = start_for(&files).await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    rig.step.script("gate", vec![Outcome::Gate(gate.clone())]);
    let (id, _) = rig
        .engine
        .submit(&alert("patch", json!([step("gate"), patch(&link)])))
        .await
        .unwrap();
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    wait_for(|| rig.step.count("apply", "gate") == 1, "the gate").await;
    gate.notify_one();
    let plan = wait_finished(&rig.engine, &id).await;
    assert_eq!(plan["status"], "failed");
    let error = plan["actions"][1]["error"].as_str().unwrap();
    assert!(
        error.contains("is a symbolic link; hot_patch follows none"),
        "{error}"
    );
    assert_eq!(fs::read_to_string(&secret).unwrap(), ORIGINAL);
}

#[tokio::test]
async fn dry_run_shows_the_hashes_and_changes_nothing() {
    let files = files();
    let rig = start_for(&files).await;
    let preview = rig
        .engine
        .dry_run(&alert("preview", json!([patch(&files.target)])))
        .await
        .unwrap();
    let change = &preview["actions"][0]["change"];
    assert_eq!(
        change["after_sha256"],
        antibody::sys::files::sha256_hex(PATCHED.as_bytes())
    );
    assert_eq!(change["keeps"]["mode"], "640");
    assert_eq!(fs::read_to_string(&files.target).unwrap(), ORIGINAL);
}

/// How long (in spin-loop turns) the racing thread leaves the link, then
/// the real directory, in place.
const LINK_SPINS: u32 = 2_000;
const DIR_SPINS: u32 = 20_000;

/// The reverse of [`DIFF`].
const UNDIFF: &str = "--- a/app.conf\n+++ b/app.conf\n@@ -1,3 +1,3 @@\n listen 80\n-debug off\n+debug on\n workers 4\n";

#[tokio::test]
async fn a_directory_swapped_for_a_link_while_plans_run_never_leads_a_write_out_of_the_root() {
    // root/conf is a real directory or, at any moment, a link to a
    // directory outside the root that holds a file of the same name: a
    // thread swaps the two names as fast as it can (renameat2 with
    // RENAME_EXCHANGE, so one of the two always exists) while plans patch
    // root/conf/app.conf back and forth.
    let files = files();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("app.conf");
    fs::write(&secret, ORIGINAL).unwrap();
    let conf = files.root.path().join("conf");
    fs::create_dir(&conf).unwrap();
    fs::write(conf.join("app.conf"), ORIGINAL).unwrap();
    let swapped = files.root.path().join("conf-swap");
    std::os::unix::fs::symlink(outside.path(), &swapped).unwrap();
    let target = conf.join("app.conf");
    let rig = start_for(&files).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (stop, conf, swapped) = (stop.clone(), conf.clone(), swapped.clone());
        std::thread::spawn(move || {
            let swap = || {
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &conf,
                    nix::fcntl::AT_FDCWD,
                    &swapped,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .expect("swap")
            };
            let spin = |n: u32| (0..n).for_each(|_| std::hint::spin_loop());
            // The link is in place in short bursts: most checks of the
            // path then pass, and a step right after one may meet the link.
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                swap();
                spin(LINK_SPINS);
                swap();
                spin(DIR_SPINS);
                swaps += 2;
            }
            swaps
        })
    };
    let (mut succeeded, mut refused) = (0, 0);
    for n in 0..300 {
        let diff = if n % 2 == 0 { DIFF } else { UNDIFF };
        let action = json!({"type": "hot_patch", "file": &target, "diff": diff});
        let Ok((id, _)) = rig
            .engine
            .submit(&alert(&format!("race {n}"), json!([action])))
            .await
        else {
            refused += 1; // the link was in place at submit
            continue;
        };
        match wait_finished(&rig.engine, &id).await["status"].as_str() {
            Some("success") => succeeded += 1,
            _ => refused += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    println!("{swaps} swaps; {succeeded} plans patched, {refused} refused or failed");
    assert!(swaps > 1000 && succeeded > 0, "the race did not run");
    // (The same test against the earlier, path-based code wrote PATCHED into
    // the file outside the root in each of two runs.)
    assert_eq!(
        fs::read_to_string(&secret).unwrap(),
        ORIGINAL,
        "written outside the root"
    );
    let left: Vec<_> = fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["app.conf"], "files made outside the root");
}
