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

fn segments(ledger: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(ledger)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("ledger-"))
        .collect();
    names.sort();
    names
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
    let Some(Event::LedgerPruned {
        segments: removed,
        first_kept_seq,
        archived_plans,
        backups,
        ..
    }) = rig.engine.prune_ledger().await.unwrap()
    else {
        panic!("nothing was pruned");
    };
    assert!(!removed.is_empty());

    assert!(
        ledger_bytes(&ledger) <= 16384 + 4096 + 1024,
        "{} bytes left",
        ledger_bytes(&ledger)
    );
    assert!(!segments(&ledger).contains(&removed[0]));
    assert!(
        archived_plans > 0,
        "plans whose records all went are pruned"
    );
    assert_eq!(backups, 0, "the patch in force keeps its backup");
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
    assert!(fs::read_dir(state.join("backups")).unwrap().count() == 1);
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

#[test]
fn a_missing_segment_after_the_anchor_is_a_break_not_a_shorter_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let writer = LedgerWriter::start(
            WriterOptions {
                dir: ledger.clone(),
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
    let names = segments(&ledger);
    assert!(names.len() >= 4);
    let first_of = |name: &str| -> ledger::Record {
        let text = fs::read_to_string(ledger.join(name)).unwrap();
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    };
    // As retention would: anchor at segment 2, segment 1 removed.
    let kept = first_of(&names[1]);
    let anchor = json!({"segment": 2, "seq": kept.seq - 1, "hash": kept.prev});
    fs::write(ledger.join("anchor.json"), anchor.to_string()).unwrap();
    fs::remove_file(ledger.join(&names[0])).unwrap();
    let scan = ledger::scan(&ledger, |_| {}).unwrap();
    assert!(scan.ok(), "{}", scan.report);
    // Segment 3 also gone: a hole after the anchor is a break.
    fs::remove_file(ledger.join(&names[2])).unwrap();
    let scan = ledger::scan(&ledger, |_| {}).unwrap();
    assert!(!scan.ok());
    assert!(
        scan.report.contains("a record was removed or moved"),
        "{}",
        scan.report
    );
    // An anchor that does not match the first kept record is a break too.
    let forged = json!({"segment": 2, "seq": kept.seq - 1, "hash": "00"});
    fs::write(ledger.join("anchor.json"), forged.to_string()).unwrap();
    let scan = ledger::scan(&ledger, |_| {}).unwrap();
    assert!(!scan.ok());
    assert!(
        scan.report.contains("prev does not match"),
        "{}",
        scan.report
    );
}
