//! Reading journal files (as `systemd-journal-remote` writes them, or any
//! journal directory) through libsystemd's own journal API: only entries
//! whose `MESSAGE_ID` is one of a ledger record's, and only the fields the
//! check needs.
//!
//! Directories are walked here rather than by `sd_journal_open_directory`,
//! which passes over a file it cannot open without a word: a verification
//! that silently read less than it was given would call a partial copy
//! whole. Each file is read on its own, so one that cannot be opened, or
//! that libsystemd stops reading partway, stops the check with its path;
//! one file open at a time, however many a collector holds.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use systemd::journal::{Journal, OpenFilesOptions};

use super::chain::{Mirrored, MAX_RECORD_LINE_BYTES};
use crate::sys::journal::{MESSAGE_IDS, RECORD_FIELD};

/// Reads every ledger record's journal entry under `paths` (journal
/// files, or directories of them, walked down) and hands each to
/// `visit`. Returns how many entries it read.
pub fn read_mirrored(paths: &[PathBuf], mut visit: impl FnMut(Mirrored)) -> io::Result<u64> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = files.len();
            journal_files_under(path, &mut files)?;
            if files.len() == before {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no journal files in this directory", path.display()),
                ));
            }
        } else {
            regular_file(path)?;
            files.push(path.clone());
        }
    }
    let mut read = 0;
    for path in &files {
        read += read_file(path, &mut visit).map_err(|e| at(path, e))?;
    }
    Ok(read)
}

/// Journal files (`*.journal`, and `*.journal~` that journald set aside
/// after an unclean close) under `dir`, at any depth, in name order.
fn journal_files_under(dir: &Path, found: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| at(dir, e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| at(dir, e))?;
    entries.sort();
    for path in entries {
        let kind = std::fs::symlink_metadata(&path).map_err(|e| at(&path, e))?;
        if kind.is_dir() {
            journal_files_under(&path, found)?;
        } else if is_journal_file(&path) {
            regular_file(&path)?;
            found.push(path);
        } else if kind.file_type().is_symlink() && path.is_dir() {
            // Not followed (a link can make a loop), and not passed over
            // in silence either.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: a link to a directory; name the directory itself",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn is_journal_file(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
    name.ends_with(b".journal") || name.ends_with(b".journal~")
}

/// A journal file's name must end at a regular file (a FIFO would block
/// the open).
fn regular_file(path: &Path) -> io::Result<()> {
    if std::fs::metadata(path).map_err(|e| at(path, e))?.is_file() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: not a regular file", path.display()),
    ))
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// One file, in a journal of its own: libsystemd drops a file it cannot
/// iterate from a journal without a word (only a debug log), so each file
/// is checked to be still there after its walk. The file is opened here
/// and handed over as `/proc/self/fd/N`: one journal-remote renames while
/// rotating is read whole under its new name, not missed.
fn read_file(path: &Path, visit: &mut impl FnMut(Mirrored)) -> io::Result<u64> {
    let file = File::open(path)?;
    let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    let mut journal = OpenFilesOptions::default().open_files([by_fd.as_str()])?;
    journal.seek_tail()?;
    let holds_entries = journal.previous()? > 0;
    let read = read_journal(&mut journal, visit)?;
    journal.match_flush()?;
    journal.seek_tail()?;
    if holds_entries && journal.previous()? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "libsystemd gave up on this file partway (damaged or cut; `journalctl --verify --file` it): its entries after that point were not read",
        ));
    }
    drop(file);
    Ok(read)
}

fn read_journal(journal: &mut Journal, visit: &mut impl FnMut(Mirrored)) -> io::Result<u64> {
    // Every ledger record kind's MESSAGE_ID (ORed by libsystemd); an
    // operator notice's entry shares its id but mirrors no record.
    for (kind, id) in MESSAGE_IDS {
        if kind != "operator_notice" {
            journal.match_add("MESSAGE_ID", id.to_string())?;
        }
    }
    // A compressed field is unpacked up to one byte past the longest
    // record line the check accepts, so a longer one is named as too long
    // rather than unpacked whole (a forged entry could hold gigabytes).
    // libsystemd returns an uncompressed field whole: it is in the file,
    // already bounded by the file's size.
    journal.set_data_threshold(MAX_RECORD_LINE_BYTES + 1)?;
    journal.seek_head()?;
    let mut read = 0;
    while journal.next()? > 0 {
        // One pass over the entry's fields (each get_data would walk them
        // all again).
        let mut fields = EntryFields::default();
        journal.restart_data();
        while let Some(field) = journal.enumerate_data()? {
            fields.take(field.name(), field.value().unwrap_or_default());
        }
        if fields.seq.is_none() && fields.record.is_none() {
            continue;
        }
        visit(Mirrored {
            machine_id: fields.machine_id.unwrap_or_default(),
            hostname: fields.hostname.unwrap_or_default(),
            seq: fields.seq.and_then(|s| s.parse().ok()),
            hash: fields.hash,
            prev: fields.prev,
            kind: fields.kind,
            plan_id: fields.plan_id,
            uid: fields.uid,
            unit: fields.unit,
            record: fields.record,
        });
        read += 1;
    }
    Ok(read)
}

/// The fields of one entry the check reads (the first of each name).
#[derive(Default)]
struct EntryFields {
    machine_id: Option<String>,
    hostname: Option<String>,
    seq: Option<String>,
    hash: Option<String>,
    prev: Option<String>,
    kind: Option<String>,
    plan_id: Option<String>,
    uid: Option<String>,
    unit: Option<String>,
    record: Option<String>,
}

impl EntryFields {
    fn take(&mut self, name: &[u8], value: &[u8]) {
        let slot = match name {
            b"_MACHINE_ID" => &mut self.machine_id,
            b"_HOSTNAME" => &mut self.hostname,
            b"ANTIBODY_SEQ" => &mut self.seq,
            b"ANTIBODY_HASH" => &mut self.hash,
            b"ANTIBODY_PREV" => &mut self.prev,
            b"ANTIBODY_KIND" => &mut self.kind,
            b"ANTIBODY_PLAN_ID" => &mut self.plan_id,
            b"_UID" => &mut self.uid,
            b"_SYSTEMD_UNIT" => &mut self.unit,
            name if name == RECORD_FIELD.as_bytes() => &mut self.record,
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
}
