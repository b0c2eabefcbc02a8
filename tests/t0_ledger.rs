//! T0 tests of the ledger (DESIGN.md §4): group-committed appends, segment
//! rotation, chain verification and tamper detection, torn tails, write
//! failures and record hashing. Everything runs against a temporary
//! directory; nothing is mounted and nothing outside the tempdir is touched.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};

use antibody::ledger::scan::TornTail;
use antibody::ledger::writer::AppendResult;
use antibody::ledger::{
    scan, Durable, Entry, LedgerWriter, Record, ScanReport, Tip, WriterOptions, GENESIS,
};
use antibody::plan::canonical::canonical_json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

// ---------------------------------------------------------------- helpers

const BIG_SEGMENT: u64 = 1 << 30;

fn seg_name(n: u64) -> String {
    format!("ledger-{n:08}.jsonl")
}

fn options(dir: &Path, segment_bytes: u64, from: Option<&ScanReport>) -> WriterOptions {
    WriterOptions {
        dir: dir.to_path_buf(),
        segment_bytes,
        tip: from.map(|r| r.tip.clone()).unwrap_or_default(),
        last_segment: from.and_then(|r| r.last_segment.clone()),
    }
}

/// The one place that calls `LedgerWriter::append`.
fn submit(
    writer: &LedgerWriter,
    kind: String,
    plan_id: Option<String>,
    payload: Value,
) -> oneshot::Receiver<AppendResult> {
    writer.append(kind, plan_id, payload, Vec::new())
}

fn start(dir: &Path, segment_bytes: u64, from: Option<&ScanReport>) -> LedgerWriter {
    LedgerWriter::start(
        options(dir, segment_bytes, from),
        Box::new(|_: &[Durable]| {}),
    )
    .expect("writer starts")
}

/// Starts a writer whose observer records every durable batch.
fn start_observed(
    dir: &Path,
    segment_bytes: u64,
    from: Option<&ScanReport>,
) -> (LedgerWriter, Arc<Mutex<Vec<Vec<u64>>>>) {
    let batches = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
    let seen = batches.clone();
    let writer = LedgerWriter::start(
        options(dir, segment_bytes, from),
        Box::new(move |batch: &[Durable]| {
            seen.lock()
                .unwrap()
                .push(batch.iter().map(|d| d.seq).collect());
        }),
    )
    .expect("writer starts");
    (writer, batches)
}

async fn append_ok(writer: &LedgerWriter, n: u64) -> Durable {
    submit(
        writer,
        "test.append".into(),
        Some(format!("plan-{n}")),
        json!({"n": n, "note": format!("note-{n}")}),
    )
    .await
    .expect("the writer answers")
    .expect("the append is durable")
}

async fn append_many(writer: &LedgerWriter, count: u64) -> Vec<Durable> {
    let mut out = Vec::new();
    for n in 1..=count {
        out.push(append_ok(writer, n).await);
    }
    out
}

fn scan_all(dir: &Path) -> (ScanReport, Vec<Record>) {
    let mut seen = Vec::new();
    let report = scan(dir, |r| seen.push(r.clone())).expect("scan reads the directory");
    (report, seen)
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("ledger-"))
        .collect();
    names.sort();
    names
}

fn read_lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    assert!(
        text.ends_with('\n'),
        "{} ends with a newline",
        path.display()
    );
    text.lines().map(str::to_string).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

/// A single-segment ledger of `count` records written by the real writer.
async fn fresh_ledger(count: u64) -> (tempfile::TempDir, PathBuf, Vec<Durable>) {
    let tmp = tempfile::tempdir().unwrap();
    let writer = start(tmp.path(), BIG_SEGMENT, None);
    let durables = append_many(&writer, count).await;
    drop(writer);
    let path = tmp.path().join(seg_name(1));
    assert_eq!(read_lines(&path).len() as u64, count);
    (tmp, path, durables)
}

fn assert_chain_links(records: &[Record]) {
    let mut prev = GENESIS.to_string();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "seq of record #{i}");
        assert_eq!(r.prev, prev, "prev of record seq {}", r.seq);
        assert_eq!(r.hash, r.expected_hash(), "hash of record seq {}", r.seq);
        prev = r.hash.clone();
    }
}

// ------------------------------------------------- 1. concurrent appends

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_form_one_contiguous_chain() {
    const TASKS: u64 = 16;
    const PER_TASK: u64 = 200;
    const N: u64 = TASKS * PER_TASK;
    let tmp = tempfile::tempdir().unwrap();
    let (writer, batches) = start_observed(tmp.path(), BIG_SEGMENT, None);

    let mut handles = Vec::new();
    for task in 0..TASKS {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            if task % 2 == 0 {
                // One append at a time: this task's records must come out in order.
                for i in 0..PER_TASK {
                    let plan_id = (i % 3 != 0).then(|| format!("t{task}-{i}"));
                    let d = submit(
                        &writer,
                        "test.concurrent".into(),
                        plan_id,
                        json!({"task": task, "i": i}),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                    got.push((i, d));
                }
            } else {
                // Queue everything, then wait: these share group commits.
                let pending: Vec<_> = (0..PER_TASK)
                    .map(|i| {
                        let plan_id = (i % 3 != 0).then(|| format!("t{task}-{i}"));
                        (
                            i,
                            submit(
                                &writer,
                                "test.concurrent".into(),
                                plan_id,
                                json!({"task": task, "i": i}),
                            ),
                        )
                    })
                    .collect();
                for (i, rx) in pending {
                    got.push((i, rx.await.unwrap().unwrap()));
                }
            }
            (task, got)
        }));
    }

    let mut durable_seqs = BTreeSet::new();
    let mut by_seq = std::collections::BTreeMap::new();
    for h in handles {
        let (task, got) = h.await.unwrap();
        let mut last_seq = 0;
        for (i, d) in got {
            assert_eq!(d.record().payload, json!({"task": task, "i": i}));
            assert_eq!(d.kind, "test.concurrent");
            assert_eq!(d.plan_id, (i % 3 != 0).then(|| format!("t{task}-{i}")));
            assert_eq!(d.hash, d.record().expected_hash());
            assert_eq!(antibody::time::rfc3339(d.ts_ms), d.record().ts);
            // The same task's appends, queued in order, are sealed in order.
            assert!(
                d.seq > last_seq,
                "task {task}: seq {} after {last_seq}",
                d.seq
            );
            last_seq = d.seq;
            assert!(durable_seqs.insert(d.seq), "seq {} answered twice", d.seq);
            by_seq.insert(d.seq, d.record());
        }
    }
    assert_eq!(durable_seqs.len() as u64, N);
    assert_eq!(
        durable_seqs.iter().copied().collect::<Vec<_>>(),
        (1..=N).collect::<Vec<_>>()
    );
    assert_eq!(writer.records(), N);

    // The observer saw every record exactly once, in chain order.
    let observed: Vec<u64> = batches.lock().unwrap().iter().flatten().copied().collect();
    assert_eq!(observed, (1..=N).collect::<Vec<_>>());

    let (report, records) = scan_all(tmp.path());
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.broken_at, None);
    assert_eq!(report.records, N);
    assert_eq!(
        report.report,
        format!(
            "chain intact: {N} record(s); tip seq {N} hash {}",
            report.tip.hash
        )
    );
    assert_eq!(
        report.tip,
        Tip {
            seq: N,
            hash: by_seq[&N].hash.clone()
        }
    );
    assert_eq!(report.torn_tail, None);
    assert_chain_links(&records);
    // What is on disk is exactly what was acknowledged.
    for r in &records {
        assert_eq!(r, &by_seq[&r.seq]);
    }
    let path = tmp.path().join(seg_name(1));
    assert_eq!(
        report.last_segment,
        Some((1, path.clone(), fs::metadata(&path).unwrap().len()))
    );
    assert_eq!(segment_files(tmp.path()), vec![seg_name(1)]);
}

/// Appends queued while the writer is busy share one write and one fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_share_one_group_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let entered_tx = Mutex::new(entered_tx);
    let batches = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
    let seen = batches.clone();
    let writer = LedgerWriter::start(
        options(tmp.path(), BIG_SEGMENT, None),
        Box::new(move |batch: &[Durable]| {
            seen.lock()
                .unwrap()
                .push(batch.iter().map(|d| d.seq).collect());
            if batch[0].seq == 1 {
                // Hold the writer thread until the test has queued more work.
                entered_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv().unwrap();
            }
        }),
    )
    .unwrap();

    let first = submit(&writer, "k".into(), None, json!(0));
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    let queued: Vec<_> = (1..=100)
        .map(|i| submit(&writer, "k".into(), None, json!(i)))
        .collect();
    release_tx.send(()).unwrap();

    assert_eq!(first.await.unwrap().unwrap().seq, 1);
    for (i, rx) in queued.into_iter().enumerate() {
        let d = rx.await.unwrap().unwrap();
        assert_eq!(d.seq, i as u64 + 2);
        assert_eq!(d.record().payload, json!(i + 1));
    }
    assert_eq!(
        *batches.lock().unwrap(),
        vec![vec![1], (2..=101).collect::<Vec<_>>()]
    );
    let (report, records) = scan_all(tmp.path());
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, 101);
    assert_chain_links(&records);
}

#[tokio::test]
async fn empty_and_missing_directories_scan_as_an_empty_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("not-there");
    let (report, records) = scan_all(&missing);
    assert!(report.ok());
    assert_eq!(report.records, 0);
    assert_eq!(
        report.tip,
        Tip {
            seq: 0,
            hash: GENESIS.to_string()
        }
    );
    assert_eq!(report.last_segment, None);
    assert_eq!(report.report, "chain intact: 0 record(s)");
    assert!(records.is_empty());

    // A writer creates the directory and the first segment, and starts at 1.
    let writer = start(&missing, BIG_SEGMENT, Some(&report));
    assert_eq!(segment_files(&missing), vec![seg_name(1)]);
    assert_eq!(writer.records(), 0);
    let d = append_ok(&writer, 1).await;
    assert_eq!(d.seq, 1);
    assert_eq!(d.prev, GENESIS);
    assert_eq!(writer.records(), 1);
    // Files that are not segments are ignored by the scan.
    fs::write(missing.join("notes.txt"), "not a segment\n").unwrap();
    fs::write(missing.join("ledger-x.jsonl"), "not a segment either\n").unwrap();
    let (report, _) = scan_all(&missing);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, 1);
}

// ------------------------------------------------------ 2. segment rotation

#[tokio::test]
async fn segments_rotate_and_a_reopened_writer_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let writer = start(dir, 4096, None);
    let first = append_many(&writer, 100).await;
    assert_eq!(writer.records(), 100);
    drop(writer);

    let files = segment_files(dir);
    assert!(
        files.len() >= 4,
        "100 records of ~200 bytes in 4 KiB segments: {files:?}"
    );
    let expected: Vec<String> = (1..=files.len() as u64).map(seg_name).collect();
    assert_eq!(files, expected, "segments are numbered without gaps");
    // Every segment but the newest was rotated out just after it reached
    // the limit: at least 4096 bytes, and less than 4096 before its last line.
    let mut line_total = 0;
    for name in &files[..files.len() - 1] {
        let path = dir.join(name);
        let len = fs::metadata(&path).unwrap().len();
        let lines = read_lines(&path);
        let last = lines.last().unwrap().len() as u64 + 1;
        assert!(
            len >= 4096 && len - last < 4096,
            "{name}: {len} bytes, last line {last}"
        );
        line_total += lines.len();
    }

    let (report, records) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, 100);
    assert!(report
        .report
        .starts_with("chain intact: 100 record(s); tip seq 100 hash "));
    assert_eq!(seqs(&records), (1..=100).collect::<Vec<_>>());
    assert_chain_links(&records);
    assert_eq!(
        report.tip,
        Tip {
            seq: 100,
            hash: first[99].hash.clone()
        }
    );
    let newest = files.len() as u64;
    let newest_path = dir.join(seg_name(newest));
    assert_eq!(
        report.last_segment,
        Some((
            newest,
            newest_path.clone(),
            fs::metadata(&newest_path).unwrap().len()
        ))
    );
    let in_newest = if fs::metadata(&newest_path).unwrap().len() == 0 {
        0
    } else {
        read_lines(&newest_path).len()
    };
    assert_eq!(line_total + in_newest, 100);
    // The chain runs on from one segment into the next.
    let first_of_2: Record = serde_json::from_str(&read_lines(&dir.join(seg_name(2)))[0]).unwrap();
    let last_of_1: Record =
        serde_json::from_str(read_lines(&dir.join(seg_name(1))).last().unwrap()).unwrap();
    assert_eq!(first_of_2.seq, last_of_1.seq + 1);
    assert_eq!(first_of_2.prev, last_of_1.hash);

    // Reopen from the scan: the chain continues where it stopped.
    let writer = start(dir, 4096, Some(&report));
    assert_eq!(writer.records(), 100);
    let d = submit(&writer, "test.reopen".into(), None, json!({"again": 1}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.seq, 101);
    assert_eq!(d.prev, first[99].hash);
    for n in 2..=50 {
        let d = append_ok(&writer, n).await;
        assert_eq!(d.seq, 100 + n);
    }
    assert_eq!(writer.records(), 150);
    drop(writer);

    let (report, records) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, 150);
    assert_eq!(seqs(&records), (1..=150).collect::<Vec<_>>());
    assert_chain_links(&records);
    assert_eq!(report.torn_tail, None);
    let files = segment_files(dir);
    assert!(
        files.len() as u64 > newest,
        "more segments after 50 more records: {files:?}"
    );
    assert_eq!(
        files,
        (1..=files.len() as u64).map(seg_name).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------ 3. tamper detection

async fn tamper_case(
    edit: impl FnOnce(&mut Vec<String>),
) -> (ScanReport, Vec<Record>, Vec<Durable>) {
    let (tmp, path, durables) = fresh_ledger(10).await;
    let mut lines = read_lines(&path);
    edit(&mut lines);
    write_lines(&path, &lines);
    let (report, records) = scan_all(tmp.path());
    (report, records, durables)
}

#[tokio::test]
async fn an_untouched_ledger_scans_intact() {
    let (report, records, durables) = tamper_case(|_| {}).await;
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, 10);
    assert_eq!(
        records,
        durables.into_iter().map(|d| d.record()).collect::<Vec<_>>()
    );
    // What was appended, not only what was acknowledged: the records
    // append_ok's arguments make, sealed independently of the writer.
    let mut prev = GENESIS.to_string();
    for (n, record) in (1u64..).zip(&records) {
        let expected = Record::seal(
            n,
            record.ts.clone(),
            "test.append".into(),
            Some(format!("plan-{n}")),
            json!({"n": n, "note": format!("note-{n}")}),
            prev,
        );
        assert_eq!(record, &expected, "record {n}");
        prev = expected.hash;
    }
}

#[tokio::test]
async fn tamper_edited_payload_is_a_hash_mismatch_at_that_record() {
    let (report, records, _) = tamper_case(|lines| {
        let before = lines[4].clone();
        lines[4] = lines[4].replace("\"note\":\"note-5\"", "\"note\":\"note-X\"");
        assert_ne!(lines[4], before, "the edit applied");
    })
    .await;
    assert!(!report.ok());
    assert_eq!(report.broken_at, Some(5));
    assert_eq!(
        report.report,
        "chain broken at record seq 5 (ledger-00000001.jsonl line 5): hash does not match its content (the record was altered)"
    );
    // The walk goes on: every record is still visited, the edited one as read.
    assert_eq!(report.records, 10);
    assert_eq!(seqs(&records), (1..=10).collect::<Vec<_>>());
    assert_eq!(records[4].payload["note"], "note-X");
    assert_eq!(report.tip.seq, 10);
}

#[tokio::test]
async fn tamper_edited_number_is_a_hash_mismatch() {
    let (report, _, _) = tamper_case(|lines| {
        let before = lines[6].clone();
        lines[6] = lines[6].replace("\"n\":7", "\"n\":70");
        assert_ne!(lines[6], before);
    })
    .await;
    assert_eq!(report.broken_at, Some(7));
    assert!(
        report.report.starts_with(
            "chain broken at record seq 7 (ledger-00000001.jsonl line 7): hash does not match"
        ),
        "{}",
        report.report
    );
}

#[tokio::test]
async fn tamper_deleted_line_is_a_seq_gap() {
    let (report, records, _) = tamper_case(|lines| {
        lines.remove(4);
    })
    .await;
    assert_eq!(report.broken_at, Some(6));
    assert_eq!(
        report.report,
        "chain broken at record seq 6 (ledger-00000001.jsonl line 5): expected seq 5 (a record was removed or moved)"
    );
    assert_eq!(report.records, 9);
    assert_eq!(seqs(&records), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    assert_eq!(report.tip.seq, 10);
}

#[tokio::test]
async fn tamper_deleted_first_line_is_a_seq_gap() {
    let (report, records, _) = tamper_case(|lines| {
        lines.remove(0);
    })
    .await;
    assert_eq!(report.broken_at, Some(2));
    assert_eq!(
        report.report,
        "chain broken at record seq 2 (ledger-00000001.jsonl line 1): expected seq 1 (a record was removed or moved)"
    );
    assert_eq!(report.records, 9);
    assert_eq!(seqs(&records), (2..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn tamper_swapped_lines_are_a_reorder() {
    let (report, records, _) = tamper_case(|lines| {
        lines.swap(4, 5);
    })
    .await;
    // Only the first break is reported: seq 6 where 5 belongs.
    assert_eq!(report.broken_at, Some(6));
    assert_eq!(
        report.report,
        "chain broken at record seq 6 (ledger-00000001.jsonl line 5): expected seq 5 (a record was removed or moved)"
    );
    assert_eq!(report.records, 10);
    assert_eq!(seqs(&records), vec![1, 2, 3, 4, 6, 5, 7, 8, 9, 10]);
}

#[tokio::test]
async fn tamper_rehashed_edit_breaks_the_next_prev() {
    let (report, records, durables) = tamper_case(|lines| {
        let mut r: Record = serde_json::from_str(&lines[4]).unwrap();
        r.payload = json!({"n": 5, "note": "forged"});
        r.hash = r.expected_hash();
        lines[4] = r.to_line().trim_end().to_string();
    })
    .await;
    assert_eq!(report.broken_at, Some(6));
    assert_eq!(
        report.report,
        "chain broken at record seq 6 (ledger-00000001.jsonl line 6): prev does not match the hash of record seq 5"
    );
    assert_eq!(report.records, 10);
    assert_eq!(records[4].payload["note"], "forged");
    assert_ne!(records[4].hash, durables[4].hash);
}

#[tokio::test]
async fn tamper_rehashed_edit_of_the_newest_record_is_visible_only_as_a_different_tip() {
    // A forger who rewrites the last record and its hash leaves a chain that
    // verifies: only the tip hash (e.g. one remembered elsewhere) gives it away.
    let (report, _, durables) = tamper_case(|lines| {
        let mut r: Record = serde_json::from_str(&lines[9]).unwrap();
        r.payload = json!({"forged": true});
        r.hash = r.expected_hash();
        lines[9] = r.to_line().trim_end().to_string();
    })
    .await;
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.tip.seq, 10);
    assert_ne!(report.tip.hash, durables[9].hash);
}

#[tokio::test]
async fn tamper_garbage_line_inserted() {
    let (report, records, _) = tamper_case(|lines| {
        lines.insert(4, "this is not json".to_string());
    })
    .await;
    assert_eq!(report.broken_at, Some(5));
    assert!(
        report
            .report
            .starts_with("chain broken at ledger-00000001.jsonl line 5: not a ledger record ("),
        "{}",
        report.report
    );
    assert!(
        report.report.ends_with("); expected seq 5 here"),
        "{}",
        report.report
    );
    // The garbage is not a record; all ten real ones are still visited.
    assert_eq!(report.records, 10);
    assert_eq!(seqs(&records), (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn tamper_garbage_line_replacing_a_record() {
    let (report, records, _) = tamper_case(|lines| {
        lines[4] = "{\"seq\":5,\"half\":".to_string();
    })
    .await;
    assert_eq!(report.broken_at, Some(5));
    assert!(
        report
            .report
            .starts_with("chain broken at ledger-00000001.jsonl line 5: not a ledger record ("),
        "{}",
        report.report
    );
    assert_eq!(report.records, 9);
    assert_eq!(seqs(&records), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
}

#[tokio::test]
async fn tamper_empty_line_is_damage() {
    let (report, _, _) = tamper_case(|lines| {
        lines.insert(2, String::new());
    })
    .await;
    assert_eq!(report.broken_at, Some(3));
    assert!(
        report
            .report
            .starts_with("chain broken at ledger-00000001.jsonl line 3: not a ledger record"),
        "{}",
        report.report
    );
    assert_eq!(report.records, 10);
}

#[tokio::test]
async fn tamper_in_a_later_segment_names_that_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let writer = start(dir, 2048, None);
    append_many(&writer, 40).await;
    drop(writer);
    let seg2 = dir.join(seg_name(2));
    let mut lines = read_lines(&seg2);
    let first_seq = serde_json::from_str::<Record>(&lines[0]).unwrap().seq;
    assert!(first_seq > 1);
    // Delete the second record of segment 2.
    let removed: Record = serde_json::from_str(&lines.remove(1)).unwrap();
    assert_eq!(removed.seq, first_seq + 1);
    write_lines(&seg2, &lines);

    let (report, records) = scan_all(dir);
    assert_eq!(report.broken_at, Some(first_seq + 2));
    assert_eq!(
        report.report,
        format!(
            "chain broken at record seq {} (ledger-00000002.jsonl line 2): expected seq {} (a record was removed or moved)",
            first_seq + 2,
            first_seq + 1
        )
    );
    assert_eq!(report.records, 39);
    assert_eq!(records.len(), 39);
}

#[tokio::test]
async fn tamper_a_deleted_middle_segment_is_a_seq_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let writer = start(dir, 2048, None);
    append_many(&writer, 40).await;
    drop(writer);
    assert!(segment_files(dir).len() >= 3);
    let seg2 = dir.join(seg_name(2));
    let removed = read_lines(&seg2).len() as u64;
    let first_of_3: Record = serde_json::from_str(&read_lines(&dir.join(seg_name(3)))[0]).unwrap();
    fs::remove_file(&seg2).unwrap();

    let (report, _) = scan_all(dir);
    assert_eq!(report.broken_at, Some(first_of_3.seq));
    assert_eq!(
        report.report,
        format!(
            "chain broken at record seq {} (ledger-00000003.jsonl line 1): expected seq {} (a record was removed or moved)",
            first_of_3.seq,
            first_of_3.seq - removed
        )
    );
    assert_eq!(report.records, 40 - removed);
}

#[tokio::test]
async fn a_cut_line_inside_an_older_segment_is_damage_not_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let writer = start(dir, 2048, None);
    append_many(&writer, 40).await;
    drop(writer);
    let seg1 = dir.join(seg_name(1));
    let lines = read_lines(&seg1);
    let last: Record = serde_json::from_str(lines.last().unwrap()).unwrap();
    // Cut the last line of segment 1 in half (no newline left).
    let len = fs::metadata(&seg1).unwrap().len();
    let cut = len - 1 - lines.last().unwrap().len() as u64 / 2;
    fs::OpenOptions::new()
        .write(true)
        .open(&seg1)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let (report, records) = scan_all(dir);
    assert_eq!(
        report.torn_tail, None,
        "only the newest segment can have a torn tail"
    );
    assert_eq!(report.broken_at, Some(last.seq));
    assert!(
        report.report.starts_with(&format!(
            "chain broken at ledger-00000001.jsonl line {}: not a ledger record",
            lines.len()
        )),
        "{}",
        report.report
    );
    assert_eq!(report.records, 39);
    assert_eq!(records.len(), 39);
}

// ------------------------------------------------------------ 4. torn tail

#[tokio::test]
async fn torn_tail_is_reported_and_cut_by_the_next_writer() {
    let (tmp, path, durables) = fresh_ledger(5).await;
    let dir = tmp.path();
    let valid_len = fs::metadata(&path).unwrap().len();
    let fragment = b"{\"seq\":6,\"ts\":\"2024-01-01T00:";
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(fragment)
        .unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        valid_len + fragment.len() as u64
    );

    let (report, records) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert!(report
        .report
        .starts_with("chain intact: 5 record(s); tip seq 5 hash "));
    assert_eq!(
        report.torn_tail,
        Some(TornTail {
            path: path.clone(),
            valid_len
        })
    );
    assert_eq!(report.records, 5);
    assert_eq!(seqs(&records), vec![1, 2, 3, 4, 5]);
    assert_eq!(report.last_segment, Some((1, path.clone(), valid_len)));
    assert_eq!(
        report.tip,
        Tip {
            seq: 5,
            hash: durables[4].hash.clone()
        }
    );

    let writer = start(dir, BIG_SEGMENT, Some(&report));
    // The fragment is gone as soon as the writer has opened the segment.
    assert_eq!(fs::metadata(&path).unwrap().len(), valid_len);
    for n in 6..=8 {
        let d = append_ok(&writer, n).await;
        assert_eq!(d.seq, n);
    }
    drop(writer);

    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains("2024-01-01T00:"), "the fragment was cut");
    let (report, records) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.records, 8);
    assert_eq!(seqs(&records), (1..=8).collect::<Vec<_>>());
    assert_chain_links(&records);
    assert_eq!(records[5].prev, durables[4].hash);
}

#[tokio::test]
async fn a_whole_record_without_its_newline_is_a_torn_tail() {
    let (tmp, path, durables) = fresh_ledger(5).await;
    let dir = tmp.path();
    let len = fs::metadata(&path).unwrap().len();
    let last_line_len = durables[4].line.len() as u64;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 1)
        .unwrap();

    let (report, _) = scan_all(dir);
    assert!(report.ok());
    assert_eq!(report.records, 4);
    assert_eq!(report.tip.seq, 4);
    assert_eq!(
        report.torn_tail,
        Some(TornTail {
            path: path.clone(),
            valid_len: len - last_line_len
        })
    );

    let writer = start(dir, BIG_SEGMENT, Some(&report));
    let d = append_ok(&writer, 99).await;
    assert_eq!(d.seq, 5);
    assert_eq!(d.prev, durables[3].hash);
    drop(writer);
    let (report, records) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, 5);
    assert_chain_links(&records);
}

#[tokio::test]
async fn a_torn_tail_in_the_newest_of_several_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let writer = start(dir, 2048, None);
    append_many(&writer, 30).await;
    drop(writer);
    let (before, _) = scan_all(dir);
    let (number, newest, len) = before.last_segment.clone().unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap()
        .write_all(b"{\"seq\":31")
        .unwrap();

    let (report, _) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, 30);
    assert_eq!(
        report.torn_tail,
        Some(TornTail {
            path: newest.clone(),
            valid_len: len
        })
    );
    assert_eq!(report.last_segment, Some((number, newest.clone(), len)));

    let writer = start(dir, 2048, Some(&report));
    for n in 31..=40 {
        assert_eq!(append_ok(&writer, n).await.seq, n);
    }
    drop(writer);
    let (report, records) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.records, 40);
    assert_chain_links(&records);
}

// ------------------------------------------------------- 5. write failures

/// A real write failure without mounts: the child process runs with a file
/// size limit (RLIMIT_FSIZE, SIGXFSZ ignored), so writes past it fail with
/// EFBIG. This test is the child; `write_failure_answers_err_and_keeps_the_chain`
/// runs it. Run directly it does nothing.
#[tokio::test]
#[ignore = "run as a child process by write_failure_answers_err_and_keeps_the_chain"]
async fn write_failure_child() {
    let Ok(dir) = std::env::var("ANTIBODY_T0_FSIZE_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let fsize = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap()
        .to_string();
    assert!(
        !fsize.contains("unlimited"),
        "the file size limit is in effect: {fsize}"
    );

    let path = dir.join(seg_name(1));
    let writer = start(&dir, BIG_SEGMENT, None);
    let mut acked = append_many(&writer, 10).await;
    let len_ok = fs::metadata(&path).unwrap().len();

    // One record far larger than the limit: part of it reaches the disk,
    // then EFBIG; the caller gets Err and the part is cut off again.
    let huge = "x".repeat(256 * 1024);
    let err = submit(&writer, "test.huge".into(), None, json!({"blob": huge}))
        .await
        .unwrap()
        .expect_err("a write past the file size limit fails");
    assert!(err.starts_with("ledger write failed: "), "{err}");
    assert!(err.contains("os error 27"), "EFBIG: {err}");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len_ok,
        "the failed batch was cut off"
    );
    assert_eq!(writer.records(), 10);

    // The chain goes on from the same tip: no hole where the failure was.
    let d = append_ok(&writer, 11).await;
    assert_eq!(d.seq, 11);
    assert_eq!(d.prev, acked[9].hash);
    acked.push(d);

    // Fill up to the limit: the batch that crosses it fails, the rest stays.
    let mut failures = 0;
    for n in 12..2000 {
        let len_before = fs::metadata(&path).unwrap().len();
        match submit(
            &writer,
            "test.append".into(),
            Some(format!("plan-{n}")),
            json!({"n": n, "note": format!("note-{n}")}),
        )
        .await
        .unwrap()
        {
            Ok(d) => {
                assert_eq!(d.seq, acked.len() as u64 + 1);
                assert_eq!(d.prev, acked.last().unwrap().hash);
                acked.push(d);
            }
            Err(e) => {
                assert!(e.contains("os error 27"), "{e}");
                assert_eq!(
                    fs::metadata(&path).unwrap().len(),
                    len_before,
                    "cut back after a partial write"
                );
                failures += 1;
                if failures == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(failures, 3, "the limit was reached");
    assert_eq!(writer.records(), acked.len() as u64);
    println!(
        "\nCHILD acked={} tip={}",
        acked.len(),
        acked.last().unwrap().hash
    );
}

#[tokio::test]
async fn write_failure_answers_err_and_keeps_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = std::env::current_exe().unwrap();
    // `ulimit -f 32` is 16 KiB in dash and 32 KiB in bash: either will do.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 32 && exec \"$0\" \"$@\"")
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            "write_failure_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ANTIBODY_T0_FSIZE_DIR", dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("the child ran the test:\n{stdout}\n{stderr}"));
    let (acked, tip) = line.split_once(" tip=").unwrap();
    let acked: u64 = acked.strip_prefix("acked=").unwrap().parse().unwrap();
    assert!(acked > 11);

    // On disk: exactly the acknowledged records, no fragment of a failed one.
    let (report, records) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.records, acked);
    assert_eq!(
        report.tip,
        Tip {
            seq: acked,
            hash: tip.to_string()
        }
    );
    assert_chain_links(&records);
    assert!(records.iter().all(|r| r.kind != "test.huge"));

    // Without the limit, a new writer carries on.
    let writer = start(dir, BIG_SEGMENT, Some(&report));
    for n in 1..=5 {
        assert_eq!(append_ok(&writer, n).await.seq, acked + n);
    }
    drop(writer);
    let (report, records) = scan_all(dir);
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, acked + 5);
    assert_chain_links(&records);
}

#[tokio::test]
async fn a_full_device_answers_err_every_time() {
    let full = Path::new("/dev/full");
    assert!(
        full.exists(),
        "/dev/full is needed by this test; it must not be skipped"
    );
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(full, tmp.path().join(seg_name(1))).unwrap();
    let writer = start(tmp.path(), BIG_SEGMENT, None);
    for attempt in 0..3 {
        let err = submit(&writer, "k".into(), None, json!(1))
            .await
            .unwrap()
            .expect_err("ENOSPC");
        assert!(err.starts_with("ledger write failed: "), "{err}");
        if attempt == 0 {
            assert!(err.contains("os error 28"), "{err}");
        } else {
            // /dev/full cannot be truncated: the writer refuses to append
            // after bytes it could not cut back, rather than risk a hole.
            assert!(err.contains("cannot cut back a failed write"), "{err}");
        }
        assert_eq!(writer.records(), 0);
    }
}

#[tokio::test]
async fn a_panicking_observer_costs_neither_the_answers_nor_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = LedgerWriter::start(
        options(tmp.path(), BIG_SEGMENT, None),
        Box::new(|_: &[Durable]| panic!("observer failure (expected by this test)")),
    )
    .unwrap();
    for n in 1..=3u64 {
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            submit(&writer, "k".into(), None, json!(n)),
        )
        .await
        .expect("an answer, not a hang")
        .expect("the writer is still there")
        .expect("the record is durable");
        assert_eq!(answer.seq, n);
    }
    let (report, _) = scan_all(tmp.path());
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, 3);
}

// --------------------------------------------------------- 6. record hashing

fn sample() -> Record {
    Record::seal(
        7,
        "2024-05-01T12:00:00.000Z".into(),
        "plan.accepted".into(),
        Some("plan-7".into()),
        json!({"b": [1, 2, {"c": null}], "a": "x"}),
        "ab".repeat(32),
    )
}

#[test]
fn seal_hash_is_sha256_of_the_canonical_fields() {
    let r = sample();
    assert_eq!(r.hash, r.expected_hash());
    assert_eq!(r.hash.len(), 64);
    assert!(r
        .hash
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let canonical = format!(
        "{{\"kind\":\"plan.accepted\",\"payload\":{{\"a\":\"x\",\"b\":[1,2,{{\"c\":null}}]}},\"plan_id\":\"plan-7\",\"prev\":\"{}\",\"seq\":7,\"ts\":\"2024-05-01T12:00:00.000Z\"}}",
        "ab".repeat(32)
    );
    let value: Value = serde_json::from_str(&canonical).unwrap();
    assert_eq!(canonical_json(&value), canonical);
    assert_eq!(r.hash, hex::encode(Sha256::digest(canonical.as_bytes())));
}

#[test]
fn any_single_field_change_alters_the_hash() {
    let r = sample();
    let mut variants: Vec<(&str, Record)> = Vec::new();
    let mut v = r.clone();
    v.seq = 8;
    variants.push(("seq", v));
    let mut v = r.clone();
    v.ts = "2024-05-01T12:00:00.001Z".into();
    variants.push(("ts", v));
    let mut v = r.clone();
    v.kind = "plan.accepteD".into();
    variants.push(("kind", v));
    let mut v = r.clone();
    v.plan_id = None;
    variants.push(("plan_id removed", v));
    let mut v = r.clone();
    v.plan_id = Some("plan-8".into());
    variants.push(("plan_id changed", v));
    let mut v = r.clone();
    v.plan_id = Some(String::new());
    variants.push(("plan_id empty", v));
    let mut v = r.clone();
    v.payload = json!({"b": [1, 2, {"c": null}], "a": "y"});
    variants.push(("payload value", v));
    let mut v = r.clone();
    v.payload = json!({"b": [2, 1, {"c": null}], "a": "x"});
    variants.push(("payload order in array", v));
    let mut v = r.clone();
    v.payload = json!({"b": [1, 2, {"c": null}], "a": "x", "d": 0});
    variants.push(("payload extra key", v));
    let mut v = r.clone();
    v.payload = json!({"b": [1, 2, {"c": false}], "a": "x"});
    variants.push(("payload nested", v));
    let mut v = r.clone();
    v.payload = json!({"b": [1, 2, {"c": null}], "a": "x "});
    variants.push(("payload whitespace in a string", v));
    let mut v = r.clone();
    v.prev = GENESIS.into();
    variants.push(("prev", v));

    let mut hashes = BTreeSet::from([r.hash.clone()]);
    for (what, v) in &variants {
        let h = v.expected_hash();
        assert_ne!(h, r.hash, "changing {what} must change the hash");
        assert_ne!(&v.hash, &h, "{what}: the stored hash no longer matches");
        hashes.insert(h);
    }
    assert_eq!(
        hashes.len(),
        variants.len() + 1,
        "every variant hashes differently"
    );

    // The stored hash is not part of what is hashed.
    let mut v = r.clone();
    v.hash = GENESIS.into();
    assert_eq!(v.expected_hash(), r.hash);
}

#[test]
fn hash_ignores_object_key_order_but_not_field_roles() {
    let a = Record::seal(
        1,
        "t".into(),
        "k".into(),
        None,
        json!({"x": 1, "y": 2}),
        GENESIS.into(),
    );
    let b_payload: Value = serde_json::from_str("{\"y\": 2,\n \"x\": 1}").unwrap();
    let b = Record::seal(1, "t".into(), "k".into(), None, b_payload, GENESIS.into());
    assert_eq!(a.hash, b.hash);
    // Swapping ts and kind is a different record.
    let c = Record::seal(
        1,
        "k".into(),
        "t".into(),
        None,
        json!({"x": 1, "y": 2}),
        GENESIS.into(),
    );
    assert_ne!(a.hash, c.hash);
}

#[test]
fn lines_round_trip_and_stay_one_line() {
    let r = Record::seal(
        3,
        "t".into(),
        "k".into(),
        None,
        json!({"text": "two\nlines\r\n and \u{2028} a separator", "emoji": "🛡"}),
        GENESIS.into(),
    );
    let line = r.to_line();
    assert!(line.ends_with('\n'));
    assert_eq!(line.matches('\n').count(), 1, "{line}");
    assert!(
        line.contains("\"plan_id\":null"),
        "every record carries plan_id (DESIGN.md §4), null for the agent's own: {line}"
    );
    let back: Record = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.expected_hash(), r.hash);

    let with_id = Record::seal(
        3,
        "t".into(),
        "k".into(),
        Some("p".into()),
        json!(null),
        GENESIS.into(),
    );
    let back: Record = serde_json::from_str(with_id.to_line().trim_end()).unwrap();
    assert_eq!(back.plan_id.as_deref(), Some("p"));
    assert_eq!(back.expected_hash(), with_id.hash);
}

/// Payloads with floating-point numbers must verify after a write and a
/// read: the hash is taken over the in-memory value, the scan recomputes it
/// from the parsed line.
///
/// BUG (see the report): serde_json without its `float_roundtrip` feature
/// parses some floats one ULP off, so the scan re-serializes a different
/// number and the record's hash no longer matches. Ignored so the suite is
/// green; `cargo test --test t0_ledger -- --ignored` shows it.
#[test]
fn float_payloads_verify_after_a_round_trip() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut bad = Vec::new();
    for i in 0..20_000u64 {
        let f = match i % 3 {
            0 => rng.f64(),
            1 => rng.f64() * 1e6,
            _ => f64::from_bits(rng.u64(0x0010_0000_0000_0000..0x7fe0_0000_0000_0000)),
        };
        let r = Record::seal(
            i + 1,
            "t".into(),
            "k".into(),
            None,
            json!({"score": f}),
            GENESIS.into(),
        );
        let back: Record = serde_json::from_str(r.to_line().trim_end()).unwrap();
        if back.expected_hash() != back.hash {
            bad.push(f);
        }
    }
    // The same for numbers that arrive as JSON text (a client's alert).
    let mut bad_text = Vec::new();
    for i in 0..20_000u64 {
        let text = format!(
            "{{\"score\": 0.{:017}}}",
            rng.u64(0..100_000_000_000_000_000)
        );
        let payload: Value = serde_json::from_str(&text).unwrap();
        let r = Record::seal(i + 1, "t".into(), "k".into(), None, payload, GENESIS.into());
        let back: Record = serde_json::from_str(r.to_line().trim_end()).unwrap();
        if back.expected_hash() != back.hash {
            bad_text.push(text);
        }
    }
    assert!(
        bad.is_empty() && bad_text.is_empty(),
        "{} of 20000 f64 payloads and {} of 20000 parsed-from-text payloads fail to verify, e.g. {:?} {:?}",
        bad.len(),
        bad_text.len(),
        &bad[..bad.len().min(3)],
        &bad_text[..bad_text.len().min(3)]
    );
}

/// The same bug end to end: a record the writer acknowledged, with a float
/// an alert's free-form `context.payload` may well carry, is reported by the
/// scan as altered.
#[tokio::test]
async fn float_payload_written_by_the_writer_verifies_on_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = start(tmp.path(), BIG_SEGMENT, None);
    let from_client: Value =
        serde_json::from_str(r#"{"context": {"payload": {"score": 0.93036703070938112}}}"#)
            .unwrap();
    let d1 = submit(
        &writer,
        "alert.received".into(),
        Some("p".into()),
        from_client,
    )
    .await
    .unwrap()
    .unwrap();
    let d2 = submit(
        &writer,
        "test".into(),
        None,
        json!({"score": 0.207_044_131_274_000_81_f64}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((d1.seq, d2.seq), (1, 2));
    drop(writer);
    let (report, _) = scan_all(tmp.path());
    assert!(report.ok(), "{}", report.report);
}

// ------------------------------------------------- write_now

fn entry(kind: &str, n: u64) -> Entry {
    Entry::new(
        kind.into(),
        Some(format!("plan-{n}")),
        &json!({"n": n}),
        Vec::new(),
    )
}

/// With nothing queued and no write under way, `write_now` writes on the
/// caller's own thread (no hand-off to the writer thread and back); with a
/// write under way, it joins the queue and shares the next group commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_now_writes_inline_when_idle_and_queues_when_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let writers = Arc::new(Mutex::new(Vec::<(Vec<u64>, String)>::new()));
    let seen = writers.clone();
    let writer = LedgerWriter::start(
        options(tmp.path(), BIG_SEGMENT, None),
        Box::new(move |batch: &[Durable]| {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            let seqs = batch.iter().map(|d| d.seq).collect();
            seen.lock().unwrap().push((seqs, thread));
            if batch[0].kind == "hold" {
                entered_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv().unwrap();
            }
        }),
    )
    .unwrap();

    let inline = writer.write_now(vec![entry("a", 1), entry("b", 2)]).await;
    let seqs: Vec<u64> = inline.iter().map(|r| r.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, [1, 2]);

    // Hold the writer thread inside a write, then write_now from a task.
    let held = submit(&writer, "hold".into(), None, json!(0));
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    let busy_writer = writer.clone();
    let joined = tokio::spawn(async move {
        busy_writer
            .write_now(vec![entry("c", 3), entry("d", 4)])
            .await
    });
    // Let that task queue its entries before the next append queues behind them.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let queued_behind = submit(&writer, "e".into(), None, json!(5));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !joined.is_finished(),
        "write_now answered while a write was under way"
    );
    release_tx.send(()).unwrap();

    assert_eq!(held.await.unwrap().unwrap().seq, 3);
    let joined: Vec<u64> = joined
        .await
        .unwrap()
        .iter()
        .map(|r| r.as_ref().unwrap().seq)
        .collect();
    assert_eq!(joined, [4, 5]);
    assert_eq!(queued_behind.await.unwrap().unwrap().seq, 6);

    let writers = writers.lock().unwrap();
    assert_eq!(writers.len(), 3, "{writers:?}");
    assert_eq!(writers[0].0, [1, 2]);
    assert_ne!(
        writers[0].1, "ledger-writer",
        "an idle write_now runs on its caller's thread"
    );
    assert_eq!(writers[1], (vec![3], "ledger-writer".to_string()));
    assert_eq!(
        writers[2].0,
        [4, 5, 6],
        "what queued during a write shares the next commit"
    );
    let (report, records) = scan_all(tmp.path());
    assert!(report.ok(), "{}", report.report);
    assert_chain_links(&records);
}

/// Many tasks mixing `write_now` (several entries each) with queued
/// appends: one contiguous chain, each `write_now`'s entries consecutive
/// and in one durable batch, each task's records in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_now_and_append_mixed_form_one_chain() {
    const TASKS: u64 = 8;
    const ROUNDS: u64 = 100;
    let tmp = tempfile::tempdir().unwrap();
    let (writer, batches) = start_observed(tmp.path(), BIG_SEGMENT, None);
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for round in 0..ROUNDS {
                let n = task * 1000 + round;
                if task % 2 == 0 {
                    let group: Vec<u64> = writer
                        .write_now(vec![entry("x", n), entry("y", n), entry("z", n)])
                        .await
                        .into_iter()
                        .map(|r| r.unwrap().seq)
                        .collect();
                    assert_eq!(
                        group,
                        [group[0], group[0] + 1, group[0] + 2],
                        "one write_now, consecutive"
                    );
                    seqs.push(group);
                } else {
                    let d = submit(&writer, "q".into(), None, json!(n))
                        .await
                        .unwrap()
                        .unwrap();
                    seqs.push(vec![d.seq]);
                }
            }
            seqs
        }));
    }
    let mut groups = Vec::new();
    for h in handles {
        let task_groups = h.await.unwrap();
        let firsts: Vec<u64> = task_groups.iter().map(|g| g[0]).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "a task's records out of order"
        );
        groups.extend(task_groups);
    }
    let total = TASKS / 2 * ROUNDS * 3 + TASKS / 2 * ROUNDS;
    let mut all: Vec<u64> = groups.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
    let batches = batches.lock().unwrap();
    for group in groups.iter().filter(|g| g.len() == 3) {
        assert!(
            batches.iter().any(|b| group.iter().all(|s| b.contains(s))),
            "write_now's records {group:?} were split across writes"
        );
    }
    let (report, records) = scan_all(tmp.path());
    assert!(report.ok(), "{}", report.report);
    assert_eq!(report.records, total);
    assert_chain_links(&records);
}
