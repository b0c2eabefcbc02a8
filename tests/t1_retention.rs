//! T1: ledger retention (`ledger.max_bytes`): the oldest segments go only
//! behind a checkpoint and an anchor; `VerifyLedger` then verifies from
//! the first kept record; archived plans and backups go with their
//! records, unless a mitigation of theirs is still in force; a start with
//! or without the checkpoint still works. Real files in a temp dir.

mod rig;

use std::fs;
use std::path::Path;

use rig::*;

const DIFF: &str = "--- a/app.conf\n+++ b/app.conf\n@@ -1 +1 @@\n-debug on\n+debug off\n";

/// A journal notice: nothing stays in force after it.
fn notice(message: &str) -> Value {
    json!({"type": "notify_operator", "channel": "journal", "message": message})
}

/// The segment files' names, in chain order.
fn segments(ledger: &Path) -> Vec<String> {
    ledger::segments::list_segments(ledger)
        .unwrap()
        .into_iter()
        .map(|(_, path)| path.file_name().unwrap().to_string_lossy().to_string())
        .collect()
}

fn ledger_bytes(ledger: &Path) -> u64 {
    segments(ledger)
        .iter()
        .map(|n| fs::metadata(ledger.join(n)).unwrap().len())
        .sum()
}

#[tokio::test]
async fn the_oldest_segments_go_behind_an_anchor_and_the_chain_still_verifies() {
    let files = tempfile::tempdir().unwrap();
    fs::write(files.path().join("app.conf"), "debug on\n").unwrap();
    let config = format!(
        "[ledger]\nsegment_bytes = 4096\nmax_bytes = 16384\n[state]\nkeep_finished_plans = 5\n\
         [queue]\ndedupe_window_secs = 0\n[hot_patch]\nallowed_paths = [{:?}]\n",
        files.path()
    );
    let rig = start(&config).await;
    let ledger = rig.dir.path().join("ledger");
    let state = rig.dir.path().join("state");
    // The first plan patches a file and stays in force; then many plans.
    let patch = json!([{"type": "hot_patch", "file": files.path().join("app.conf"), "diff": DIFF}]);
    let (patched, _) = rig.engine.submit(&alert("patch", patch)).await.unwrap();
    assert_eq!(
        wait_finished(&rig.engine, &patched).await["status"],
        "success"
    );
    let mut ids = Vec::new();
    for n in 0..60 {
        let (id, _) = rig
            .engine
            .submit(&alert(
                &format!("plan {n}"),
                json!([notice("a"), notice("b")]),
            ))
            .await
            .unwrap();
        wait_finished(&rig.engine, &id).await;
        ids.push(id);
    }
    assert!(
        ledger_bytes(&ledger) > 16384,
        "the test needs a ledger over max_bytes"
    );
    let evicted = rig.engine.evict_finished().unwrap();
    assert!(evicted >= 56, "{evicted}");
    // No checkpoint yet: nothing anchors the chain, nothing is removed.
    assert_eq!(rig.engine.prune_ledger().await.unwrap(), None);
    assert_eq!(segments(&ledger)[0], "ledger-00000001.jsonl");

    rig.engine.checkpoint_now().await.unwrap();
    // Archived plans: a line each in the archive's bucket files.
    let archives = || {
        fs::read_dir(state.join("plans"))
            .unwrap()
            .map(|e| {
                fs::read_to_string(e.unwrap().path())
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum::<usize>()
    };
    let archived_before = archives();
    let Some(Event::LedgerPruned {
        first_segment,
        last_segment,
        segments: removed,
        first_kept_seq,
        ..
    }) = rig.engine.prune_ledger().await.unwrap()
    else {
        panic!("nothing was pruned");
    };
    assert_eq!((first_segment, removed), (1, last_segment));
    assert!(
        ledger_bytes(&ledger) <= 16384 + 4096 + 1024,
        "{} bytes left",
        ledger_bytes(&ledger)
    );
    assert_eq!(
        segments(&ledger)[0],
        format!("ledger-{:08}.jsonl", last_segment + 1)
    );
    assert!(
        archives() < archived_before,
        "plans whose records all went are pruned"
    );
    assert_eq!(
        fs::read_dir(state.join("backups")).unwrap().count(),
        1,
        "the patch in force keeps its backup"
    );
    let anchor: Value =
        serde_json::from_slice(&fs::read(ledger.join("anchor.json")).unwrap()).unwrap();
    assert_eq!(anchor["seq"], first_kept_seq - 1);

    let (ok, report) = rig.engine.verify_ledger().await;
    assert!(ok, "{report}");
    assert!(
        report.starts_with(&format!("chain intact from seq {first_kept_seq}: ")),
        "{report}"
    );
    // The oldest plans are gone from GetPlan; the patch in force and the
    // newest stay; the patch still counts and can be rolled back.
    assert_eq!(
        rig.engine.get_plan(&ids[0]).unwrap_err().name,
        ErrorName::NotFound
    );
    assert!(rig.engine.get_plan(&patched).is_ok());
    assert!(rig.engine.get_plan(ids.last().unwrap()).is_ok());
    assert_eq!(rig.engine.active_mitigations(), 1);
    let after_prune = ledger_kinds(&rig);
    assert!(after_prune.contains(&"ledger_pruned".to_string()));

    // A start from the checkpoint, and one without it (from the anchor).
    let dir = stop(rig).await;
    let again = open(dir, Step::default(), &config);
    assert!(again.engine.started_from_checkpoint());
    assert_eq!(again.engine.active_mitigations(), 1);
    assert!(again.engine.verify_ledger().await.0);
    let dir = {
        let Rig { engine, dir, .. } = again;
        drop(engine);
        dir
    };
    fs::remove_file(dir.path().join("state/checkpoint.json")).unwrap();
    let whole = open(dir, Step::default(), &config);
    assert!(!whole.engine.started_from_checkpoint());
    assert_eq!(whole.engine.status()["ledger"]["ok"], true);
    assert!(whole.engine.get_plan(ids.last().unwrap()).is_ok());
    tokio::spawn(whole.engine.clone().run());
    whole.engine.rollback(&patched, "test").await.unwrap();
    wait_for(
        || whole.engine.get_plan(&patched).unwrap()["actions"][0]["state"] == "reverted",
        "the rollback of the archived patch",
    )
    .await;
    assert_eq!(
        fs::read_to_string(files.path().join("app.conf")).unwrap(),
        "debug on\n"
    );
    assert_eq!(whole.engine.active_mitigations(), 0);
}

/// A ledger of 200 small records in segments of 4 KiB, written directly.
fn small_segments(ledger: &Path) -> Vec<String> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let writer = LedgerWriter::start(
            WriterOptions {
                dir: ledger.to_path_buf(),
                segment_bytes: 4096,
                tip: Tip::default(),
                last_segment: None,
            },
            Box::new(|_| {}),
        )
        .unwrap();
        for n in 0..200 {
            let (kind, payload) = Event::ConfigReloaded {
                ok: true,
                detail: format!("filler {n}"),
            }
            .to_parts();
            writer
                .append(kind, None, payload, vec![])
                .await
                .unwrap()
                .unwrap();
        }
    });
    segments(ledger)
}

#[test]
fn an_anchor_that_no_ledger_pruned_record_confirms_is_a_break() {
    // Someone removes the first segment and writes the anchor by hand:
    // the kept chain holds no record of it.
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let names = small_segments(&ledger);
    assert!(names.len() >= 4);
    let text = fs::read_to_string(ledger.join(&names[1])).unwrap();
    let kept: ledger::Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let anchor = json!({"segment": 2, "seq": kept.seq - 1, "hash": kept.prev});
    fs::write(ledger.join("anchor.json"), anchor.to_string()).unwrap();
    fs::remove_file(ledger.join(&names[0])).unwrap();
    let scan = ledger::scan(&ledger, |_| {}).unwrap();
    assert!(!scan.ok());
    assert!(
        scan.report
            .contains("no ledger_pruned record in it says so"),
        "{}",
        scan.report
    );
}

/// An engine whose ledger is over `max_bytes`, with a checkpoint taken.
async fn over_its_size() -> Rig {
    let rig = start(
        "[ledger]\nsegment_bytes = 4096\nmax_bytes = 8192\n[state]\nkeep_finished_plans = 0\n[queue]\ndedupe_window_secs = 0\n",
    )
    .await;
    for n in 0..30 {
        let (id, _) = rig
            .engine
            .submit(&alert(&format!("plan {n}"), json!([notice("a")])))
            .await
            .unwrap();
        wait_finished(&rig.engine, &id).await;
    }
    rig.engine.evict_finished().unwrap();
    rig.engine.checkpoint_now().await.unwrap();
    rig
}

#[tokio::test]
async fn a_prune_cut_short_leaves_a_verifiable_chain_and_the_next_round_finishes_it() {
    let rig = over_its_size().await;
    let ledger = rig.dir.path().join("ledger");
    let kept_aside = tempfile::tempdir().unwrap();
    for name in segments(&ledger) {
        fs::copy(ledger.join(&name), kept_aside.path().join(&name)).unwrap();
    }
    let Some(Event::LedgerPruned {
        first_segment,
        last_segment,
        ..
    }) = rig.engine.prune_ledger().await.unwrap()
    else {
        panic!("nothing was pruned");
    };
    assert!(
        last_segment > first_segment,
        "the test wants a cut of two segments or more"
    );
    // As if the agent had died after removing only the first of them.
    for number in first_segment + 1..=last_segment {
        let name = format!("ledger-{number:08}.jsonl");
        fs::copy(kept_aside.path().join(&name), ledger.join(&name)).unwrap();
    }
    let (ok, report) = rig.engine.verify_ledger().await;
    assert!(ok, "{report}");
    assert!(report.starts_with("chain intact from seq "), "{report}");
    // The next round removes what was left below the anchor.
    rig.engine.checkpoint_now().await.unwrap();
    rig.engine.prune_ledger().await.unwrap();
    let first_kept = format!("ledger-{:08}.jsonl", last_segment + 1);
    assert!(
        segments(&ledger)[0] >= first_kept,
        "{:?}",
        segments(&ledger)
    );
    assert!(rig.engine.verify_ledger().await.0);
}

#[tokio::test]
async fn nothing_is_pruned_while_the_chain_is_known_broken() {
    let rig = over_its_size().await;
    let ledger = rig.dir.path().join("ledger");
    // Alter a record in the first segment, and let VerifyLedger find it.
    let first = ledger.join(&segments(&ledger)[0]);
    let text = fs::read_to_string(&first)
        .unwrap()
        .replacen("plan 0", "plan X", 1);
    fs::write(&first, text).unwrap();
    let (ok, _) = rig.engine.verify_ledger().await;
    assert!(!ok);
    assert_eq!(rig.engine.prune_ledger().await.unwrap(), None);
    assert!(
        first.exists(),
        "the broken segment stays for whoever investigates"
    );
}
