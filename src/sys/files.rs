//! Files for `hot_patch`: reading a target only when it is what the guards
//! allow (DESIGN.md §3), and replacing a file's content atomically — a
//! temporary file in the same directory, fsync, the old mode and owner,
//! rename over, fsync of the directory — so a reader sees the old content or
//! the new one, never a mix, and a crash leaves one of the two.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Larger targets are refused.
pub const MAX_TARGET_BYTES: u64 = 16 << 20;

/// A file that may be patched, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Symlinks resolved.
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why a target cannot be patched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// A guard forbids it (DESIGN.md §3): outside the roots once symlinks
    /// are resolved, not a regular file, larger than 16 MiB.
    Refused(String),
    /// It could not be looked at (missing, unreadable).
    Unreadable(String),
}

impl TargetError {
    pub fn message(self) -> String {
        match self {
            TargetError::Refused(m) | TargetError::Unreadable(m) => m,
        }
    }
}

/// The guards on `path`, without opening it (so validation can run them,
/// and a FIFO cannot make anyone wait): with every symlink resolved, a
/// regular file of at most 16 MiB strictly under one of `roots` (themselves
/// resolved). Returns the resolved path.
pub fn check_target(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, TargetError> {
    let unreadable =
        |e: std::io::Error| TargetError::Unreadable(format!("{}: {e}", path.display()));
    let real = fs::canonicalize(path).map_err(unreadable)?;
    let inside = roots.iter().any(|root| {
        fs::canonicalize(root).is_ok_and(|root| real.starts_with(&root) && real != root)
    });
    if !inside {
        return Err(TargetError::Refused(format!(
            "{} resolves to {}, which is not under any of hot_patch.allowed_paths",
            path.display(),
            real.display()
        )));
    }
    let meta = fs::metadata(&real).map_err(unreadable)?;
    refuse_by_metadata(&real, &meta).map_err(TargetError::Refused)?;
    Ok(real)
}

fn refuse_by_metadata(real: &Path, meta: &fs::Metadata) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", real.display()));
    }
    if meta.len() > MAX_TARGET_BYTES {
        return Err(format!(
            "{} is {} bytes; hot_patch takes files of at most 16 MiB",
            real.display(),
            meta.len()
        ));
    }
    Ok(())
}

/// Reads `path` if the guards of [`check_target`] allow it.
pub fn read_target(path: &Path, roots: &[PathBuf]) -> Result<Target, TargetError> {
    let real = check_target(path, roots)?;
    let unreadable =
        |e: std::io::Error| TargetError::Unreadable(format!("{}: {e}", real.display()));
    // O_NOFOLLOW on the resolved path: a symlink swapped in since is
    // refused; O_NONBLOCK: so is a FIFO (checked below) without waiting
    // for a writer. Neither changes how a regular file reads.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&real)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    refuse_by_metadata(&real, &meta).map_err(TargetError::Refused)?;
    let mut content = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut content).map_err(unreadable)?;
    Ok(Target {
        path: real,
        content,
        mode: meta.permissions().mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Replaces `path`'s content with `content`, giving the new file `mode`,
/// `uid` and `gid`.
pub fn replace_atomically(
    path: &Path,
    content: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let temp = dir.join(format!(
        ".{name}.antibody-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let written = write_new(&temp, content, mode, uid, gid).and_then(|()| {
        fs::rename(&temp, path).map_err(|e| format!("rename over {}: {e}", path.display()))
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync of {}: {e}", dir.display()))
}

fn write_new(path: &Path, content: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), String> {
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(at)?;
    file.write_all(content).map_err(at)?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(at)?;
    // After chown, which clears set-id bits.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(at)?;
    file.sync_all().map_err(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_keeps_its_mode_and_owner_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.conf");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let before = read_target(&path, &[dir.path().to_path_buf()]).unwrap();
        replace_atomically(&path, b"new\n", before.mode, before.uid, before.gid).unwrap();
        let after = read_target(&path, &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(after.content, b"new\n");
        assert_eq!(
            (after.mode, after.uid, after.gid),
            (0o640, before.uid, before.gid)
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn targets_outside_the_roots_or_not_regular_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        fs::write(&secret, "x").unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let roots = [root.path().to_path_buf()];
        let refused = |path: &Path| match read_target(path, &roots) {
            Err(TargetError::Refused(why)) => why,
            other => panic!("{} not refused: {other:?}", path.display()),
        };
        let why = refused(&link);
        assert!(
            why.contains("not under any of hot_patch.allowed_paths"),
            "{why}"
        );
        let sub = root.path().join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(refused(&sub).contains("not a regular file"));
        assert!(
            refused(root.path()).contains("not under"),
            "the root itself"
        );
        let big = root.path().join("big");
        File::create(&big)
            .unwrap()
            .set_len(MAX_TARGET_BYTES + 1)
            .unwrap();
        assert!(refused(&big).contains("at most 16 MiB"));
        // Missing is not a guard's refusal: the plan reports it.
        let missing = read_target(&root.path().join("absent"), &roots);
        assert!(
            matches!(missing, Err(TargetError::Unreadable(_))),
            "{missing:?}"
        );
    }
}
