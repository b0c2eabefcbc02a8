//! Reading journal files (as `systemd-journal-remote` writes them, or any
//! journal directory) through libsystemd's own journal API: only entries
//! whose `MESSAGE_ID` is one of a ledger record's, and only the fields the
//! check needs. libsystemd's data threshold (64 KiB by default, past which
//! a field may come back truncated) is lifted, so a record is read whole.

use std::io;
use std::path::{Path, PathBuf};

use systemd::journal::{Journal, OpenDirectoryOptions, OpenFilesOptions};

use super::chain::Mirrored;
use crate::sys::journal::{MESSAGE_IDS, RECORD_FIELD};

/// Reads every ledger record's journal entry under `paths` (journal
/// files, or directories of them) and hands each to `visit`. Returns how
/// many entries it read.
pub fn read_mirrored(paths: &[PathBuf], mut visit: impl FnMut(Mirrored)) -> io::Result<u64> {
    let (dirs, files): (Vec<&PathBuf>, Vec<&PathBuf>) = paths.iter().partition(|p| p.is_dir());
    let mut read = 0;
    for dir in dirs {
        let mut journal = OpenDirectoryOptions::default()
            .open_directory(path_text(dir)?)
            .map_err(|e| at(dir, e))?;
        read += read_journal(&mut journal, &mut visit).map_err(|e| at(dir, e))?;
    }
    if !files.is_empty() {
        let names = files
            .iter()
            .map(|f| path_text(f))
            .collect::<io::Result<Vec<_>>>()?;
        let mut journal = OpenFilesOptions::default()
            .open_files(names)
            .map_err(|e| at(files[0], e))?;
        read += read_journal(&mut journal, &mut visit).map_err(|e| at(files[0], e))?;
    }
    Ok(read)
}

fn path_text(path: &Path) -> io::Result<&str> {
    path.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not UTF-8", path.display()),
        )
    })
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read_journal(journal: &mut Journal, visit: &mut impl FnMut(Mirrored)) -> io::Result<u64> {
    // Every ledger record kind's MESSAGE_ID (ORed by libsystemd); an
    // operator notice's entry shares its id but mirrors no record.
    for (kind, id) in MESSAGE_IDS {
        if kind != "operator_notice" {
            journal.match_add("MESSAGE_ID", id.to_string())?;
        }
    }
    journal.set_data_threshold(0)?;
    let mut read = 0;
    while journal.next()? > 0 {
        let mut field = |name: &str| -> io::Result<Option<String>> {
            Ok(journal
                .get_data(name)?
                .and_then(|f| f.value().map(|v| String::from_utf8_lossy(v).into_owned())))
        };
        let seq = field("ANTIBODY_SEQ")?;
        let record = field(RECORD_FIELD)?;
        if seq.is_none() && record.is_none() {
            continue;
        }
        visit(Mirrored {
            machine_id: field("_MACHINE_ID")?.unwrap_or_default(),
            hostname: field("_HOSTNAME")?.unwrap_or_default(),
            seq: seq.and_then(|s| s.parse().ok()),
            hash: field("ANTIBODY_HASH")?,
            record,
        });
        read += 1;
    }
    Ok(read)
}
