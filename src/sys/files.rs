//! Files for `hot_patch`, reached only through descriptors: the allowed
//! root is opened once and the file's directory is walked to with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//! (or, where the sandbox or the kernel refuses openat2, the same walk one
//! `openat(O_NOFOLLOW)` per component: [`walk_beneath`]),
//! so no symlink (in any component) and no `..` can lead out of the root,
//! and nothing swapped in after the walk can redirect what follows. The
//! read, the temporary file, its fsync, the `renameat` over the target and
//! the directory's fsync all go through the directory descriptor the walk
//! returned: a reader sees the old content or the new one, never a mix,
//! a crash leaves one of the two, and the write lands where the read was.
//!
//! Blocking: callers in async code run these on a blocking thread.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

/// Larger targets are refused.
pub const MAX_TARGET_BYTES: u64 = 16 << 20;

/// How every walk below a root resolves: beneath it, through no link.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A file that may be patched, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The path as given (under its root; no link was followed to it).
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Which file was read, as it was: the write checks that the name
    /// still leads to it, unchanged, just before it renames over it.
    pub identity: Identity,
}

/// A file as `stat` tells it apart from another, or from itself changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(stat: &rustix::fs::Stat) -> Identity {
        Identity {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: stat.st_size,
            mtime: (stat.st_mtime, stat.st_mtime_nsec as i64),
            ctime: (stat.st_ctime, stat.st_ctime_nsec as i64),
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::plan::canonical::hex_lower(&Sha256::digest(bytes))
}

/// Why a target cannot be patched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// A guard forbids it (DESIGN.md §3): not under a root, a symbolic link
    /// on the way, not a regular file, larger than 16 MiB.
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

/// The directory a target lives in, open, and the target's name in it.
pub struct TargetDir {
    dir: OwnedFd,
    name: std::ffi::OsString,
    path: PathBuf,
}

/// Opens the directory of `path` through the root `path` is under (its
/// text must already be absolute without `.`/`..`: validation's rule).
pub fn open_target_dir(path: &Path, roots: &[PathBuf]) -> Result<TargetDir, TargetError> {
    let (root, relative) = roots
        .iter()
        .find_map(|root| {
            let relative = path.strip_prefix(root).ok()?;
            (!relative.as_os_str().is_empty()).then_some((root, relative))
        })
        .ok_or_else(|| {
            TargetError::Refused(format!(
                "{} is not under any of hot_patch.allowed_paths",
                path.display()
            ))
        })?;
    let name = relative
        .file_name()
        .ok_or_else(|| TargetError::Refused(format!("{} names no file", path.display())))?
        .to_os_string();
    // The root itself is the operator's choice and may be reached through
    // a link; nothing below it may.
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| walk_error(path, root, e))?;
    let parent = relative.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = open_beneath(
        &root_fd,
        parent.unwrap_or(Path::new(".")),
        OFlags::RDONLY | OFlags::DIRECTORY,
    )
    .map_err(|e| walk_error(path, root, e))?;
    Ok(TargetDir {
        dir,
        name,
        path: path.to_path_buf(),
    })
}

/// Opens `relative` below the directory `dir`, following no symbolic link
/// in any component and never leaving `dir`: `openat2` with
/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS; where
/// that is not to be had (ENOSYS: a kernel before 5.6, or a seccomp filter
/// such as the one systemd's `RestrictSUIDSGID=` installs, which cannot
/// look inside `openat2`'s arguments and so refuses it), the same walk by
/// hand ([`walk_beneath`]).
fn open_beneath(dir: &OwnedFd, relative: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    // For a file, O_NOFOLLOW: an O_PATH open then gives the link itself,
    // which fstat names as one. Not for a directory, where it would make
    // a trailing link ENOTDIR rather than RESOLVE_NO_SYMLINKS' ELOOP.
    // (openat2 refuses O_PATH with any flag but CLOEXEC, DIRECTORY, NOFOLLOW.)
    let flags = match flags.contains(OFlags::DIRECTORY) {
        true => flags | OFlags::CLOEXEC,
        false => flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    };
    #[cfg(test)]
    if tests::WITHOUT_OPENAT2.with(|w| w.get()) {
        return walk_beneath(dir, relative, flags);
    }
    match rustix::fs::openat2(dir, relative, flags, Mode::empty(), BENEATH) {
        Err(Errno::NOSYS) => walk_beneath(dir, relative, flags),
        other => other,
    }
}

/// [`open_beneath`] without `openat2`: from `dir`, one
/// `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)` per directory component,
/// each from the descriptor the one before returned, then the last
/// component with `flags` and O_NOFOLLOW. Only plain names are walked (no
/// `..`, no root): validation's rule, checked again here. A symbolic link
/// anywhere is ELOOP, as openat2 answers.
fn walk_beneath(dir: &OwnedFd, relative: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    use std::path::Component;
    let mut names = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Errno::XDEV)
            }
        }
    }
    let step = |at: &OwnedFd, name: &OsStr, flags: OFlags| {
        rustix::fs::openat(
            at,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_DIRECTORY | O_NOFOLLOW on a link: say it is one.
            Errno::NOTDIR if is_symlink(at, name) => Errno::LOOP,
            other => other,
        })
    };
    let Some((last, parents)) = names.split_last() else {
        return step(dir, OsStr::new("."), flags);
    };
    let mut current: Option<OwnedFd> = None;
    for name in parents {
        let at = current.as_ref().unwrap_or(dir);
        current = Some(step(at, name, OFlags::PATH | OFlags::DIRECTORY)?);
    }
    step(current.as_ref().unwrap_or(dir), last, flags)
}

fn is_symlink(dir: &OwnedFd, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

fn walk_error(path: &Path, root: &Path, e: Errno) -> TargetError {
    let at = path.display();
    match e {
        Errno::LOOP => TargetError::Refused(format!(
            "{at} has a symbolic link in its path below {}; hot_patch follows none",
            root.display()
        )),
        Errno::XDEV => TargetError::Refused(format!(
            "{at} leads out of {}, its root in hot_patch.allowed_paths",
            root.display()
        )),
        Errno::NOSYS => TargetError::Refused(format!(
            "{at}: this kernel has no openat2 (Linux 5.6 or later), which hot_patch needs to stay below its roots"
        )),
        other => TargetError::Unreadable(format!("{at}: {}", std::io::Error::from(other))),
    }
}

fn refuse_by_stat(path: &Path, stat: &rustix::fs::Stat) -> Result<(), TargetError> {
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type == FileType::Symlink {
        return Err(TargetError::Refused(format!(
            "{} is a symbolic link; hot_patch follows none",
            path.display()
        )));
    }
    if file_type != FileType::RegularFile {
        return Err(TargetError::Refused(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if stat.st_mode & 0o6000 != 0 {
        return Err(TargetError::Refused(format!(
            "{} is set-user-ID or set-group-ID; hot_patch changes no such file",
            path.display()
        )));
    }
    // A rename would give this name new content and leave the file's other
    // names with the old: not a patch of "the file", so refused.
    if stat.st_nlink > 1 {
        return Err(TargetError::Refused(format!(
            "{} has {} hard links; hot_patch changes files with one name only",
            path.display(),
            stat.st_nlink
        )));
    }
    if stat.st_size as u64 > MAX_TARGET_BYTES {
        return Err(TargetError::Refused(format!(
            "{} is {} bytes; hot_patch takes files of at most 16 MiB",
            path.display(),
            stat.st_size
        )));
    }
    Ok(())
}

impl TargetDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_file(&self, flags: OFlags) -> Result<OwnedFd, TargetError> {
        open_beneath(&self.dir, Path::new(&self.name), flags)
            .map_err(|e| walk_error(&self.path, Path::new("its root"), e))
    }

    /// The guards on the file itself, without reading it (an `O_PATH`
    /// descriptor: a FIFO cannot make anyone wait): a regular file of at
    /// most 16 MiB.
    pub fn check(&self) -> Result<(), TargetError> {
        let fd = self.open_file(OFlags::PATH)?;
        let stat =
            rustix::fs::fstat(&fd).map_err(|e| walk_error(&self.path, Path::new("its root"), e))?;
        refuse_by_stat(&self.path, &stat)
    }

    /// Reads the file if the guards allow it. `O_NONBLOCK`: a FIFO swapped
    /// in since [`TargetDir::check`] is refused without waiting for a writer.
    pub fn read(&self) -> Result<Target, TargetError> {
        let fd = self.open_file(OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        let unreadable =
            |e: std::io::Error| TargetError::Unreadable(format!("{}: {e}", self.path.display()));
        let stat = rustix::fs::fstat(&fd).map_err(|e| unreadable(e.into()))?;
        refuse_by_stat(&self.path, &stat)?;
        let mut content = Vec::with_capacity(stat.st_size as usize);
        // Read at most one byte past the limit: a file growing meanwhile
        // is refused, not read without end.
        File::from(fd)
            .take(MAX_TARGET_BYTES + 1)
            .read_to_end(&mut content)
            .map_err(unreadable)?;
        if content.len() as u64 > MAX_TARGET_BYTES {
            return Err(TargetError::Refused(format!(
                "{} grew past 16 MiB while it was read",
                self.path.display()
            )));
        }
        Ok(Target {
            path: self.path.clone(),
            content,
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            identity: Identity::of(&stat),
        })
    }

    /// Removes `temp`, a temporary file [`TargetDir::replace`] left beside
    /// the target when the agent was killed before its rename, if it is
    /// one (see [`clear_leftover`]). Quietly: it is usually not there.
    pub fn remove_leftover(&self, temp: &str) {
        let owner = rustix::fs::statat(&self.dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| st.st_uid)
            .ok();
        clear_leftover(&self.dir, temp, owner);
    }

    /// Replaces `read`'s file (as [`TargetDir::read`] returned it) with
    /// `content`, keeping its mode and owner, if the name still leads to
    /// that file unchanged just before the rename. The new content is
    /// written as `temp` first: a name of the caller's, fixed for one
    /// action, so after a SIGKILL mid-write the next try or the recovery
    /// finds it and removes it (a random name would stay beside the file).
    pub fn replace(&self, read: &Target, content: &[u8], temp: &str) -> Result<(), String> {
        let unchanged = || {
            let stat =
                rustix::fs::statat(&self.dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| format!("{}: {}", self.path.display(), std::io::Error::from(e)))?;
            if Identity::of(&stat) == read.identity {
                Ok(())
            } else {
                Err(format!(
                    "{} changed while it was being patched; left as it is",
                    self.path.display()
                ))
            }
        };
        replace_in(
            &self.dir,
            (&self.name, temp),
            &self.path,
            content,
            (read.mode, read.uid, read.gid),
            unchanged,
        )
    }
}

/// The guards on `path` (see [`TargetDir::check`]), for validation.
pub fn check_target(path: &Path, roots: &[PathBuf]) -> Result<(), TargetError> {
    open_target_dir(path, roots)?.check()
}

/// Makes way for a write's temporary file `temp` in `dir`: true when the
/// name is free, or held by what a killed write of the agent's left there
/// (a regular file with one name, the agent's or, after its `fchown`, the
/// target's owner's: `target_owner`), which is removed. Anything else at
/// that name (a directory, a link, another user's file) is not the agent's
/// to remove: false, and the write takes a name of its own, so nobody can
/// hold a patch back by planting something at its predictable name.
fn clear_leftover(dir: &OwnedFd, temp: &str, target_owner: Option<u32>) -> bool {
    let ours = |uid: u32| uid == rustix::process::geteuid().as_raw() || Some(uid) == target_owner;
    match rustix::fs::statat(dir, temp, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => true,
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode).is_file()
                && st.st_nlink == 1
                && ours(st.st_uid) =>
        {
            rustix::fs::unlinkat(dir, temp, AtFlags::empty()).is_ok()
        }
        _ => false,
    }
}

/// Writes `content` as `name` in the open directory `dir` (`shown` names
/// it in messages): a new temporary file `temp` (one a killed earlier try
/// left is removed first; see [`clear_leftover`]), its owner and mode,
/// fsync, then, if `still` agrees and `temp` is still the file written,
/// `renameat` over `name`, and fsync of the directory.
///
/// One writer per `temp` at a time: callers give each action its own name
/// and run file work one job at a time (hot_patch's `FILE_WORK`).
fn replace_in(
    dir: &OwnedFd,
    (name, temp): (&OsStr, &str),
    shown: &Path,
    content: &[u8],
    (mode, uid, gid): (u32, u32, u32),
    still: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let at =
        |what: &str, e: Errno| format!("{what} {}: {}", shown.display(), std::io::Error::from(e));
    // Not derived from the target's name, which may be up to NAME_MAX long.
    let random;
    let temp = if clear_leftover(dir, temp, Some(uid)) {
        temp
    } else {
        random = format!(".antibody-{}.tmp", uuid::Uuid::new_v4().simple());
        random.as_str()
    };
    // O_EXCL: never through a link someone put at that name meanwhile.
    let written = (|| {
        let fd = rustix::fs::openat(
            dir,
            temp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| at("a temporary file beside", e))?;
        let mut file = File::from(fd);
        file.write_all(content)
            .map_err(|e| format!("writing beside {}: {e}", shown.display()))?;
        rustix::fs::fchown(
            &file,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| at("the owner of the new", e))?;
        // After chown; never a set-id bit (set-id targets are refused).
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o1777))
            .map_err(|e| at("the mode of the new", e))?;
        rustix::fs::fsync(&file).map_err(|e| at("fsync of the new", e))?;
        still()?;
        // Whoever can write in the directory could have renamed the
        // temporary away and put a file of theirs at its name.
        let written = rustix::fs::fstat(&file).map_err(|e| at("fstat of the new", e))?;
        let placed = rustix::fs::statat(dir, temp, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| at("the temporary file beside", e))?;
        if (placed.st_dev, placed.st_ino) != (written.st_dev, written.st_ino) {
            return Err(format!(
                "the temporary file beside {} was replaced by someone else; not renamed",
                shown.display()
            ));
        }
        rustix::fs::renameat(dir, temp, dir, name).map_err(|e| at("rename over", e))
    })();
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(dir, temp, AtFlags::empty());
        return Err(e);
    }
    rustix::fs::fsync(dir).map_err(|e| at("fsync of the directory of", e))
}

/// Writes `content` to `dir/name` atomically (the agent's own files, such
/// as hot_patch backups under `state.dir`): root's, with `mode`.
pub fn write_own_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {}", dir.display(), std::io::Error::from(e)))?;
    let owner = (
        mode,
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    replace_in(
        &fd,
        (OsStr::new(name), &format!(".{name}.tmp")),
        &dir.join(name),
        content,
        owner,
        || Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    thread_local! {
        /// Set: this thread's walks go the way a kernel or sandbox without
        /// openat2 makes them go.
        pub(super) static WITHOUT_OPENAT2: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn without_openat2_the_walk_refuses_what_openat2_refuses() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("app.conf"), "x").unwrap();
        fs::create_dir(root.path().join("real")).unwrap();
        fs::write(root.path().join("real/app.conf"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("in")).unwrap();
        std::os::unix::fs::symlink("app.conf", root.path().join("real/link.conf")).unwrap();
        let root_fd: OwnedFd =
            rustix::fs::open(root.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let rd = OFlags::RDONLY;
        let both = |relative: &str| {
            let walked = walk_beneath(&root_fd, Path::new(relative), rd | OFlags::NOFOLLOW).err();
            let direct = rustix::fs::openat2(
                &root_fd,
                relative,
                rd | OFlags::NOFOLLOW,
                Mode::empty(),
                BENEATH,
            )
            .err();
            (walked, direct)
        };
        assert_eq!(both("real/app.conf"), (None, None));
        assert_eq!(both("out/app.conf"), (Some(Errno::LOOP), Some(Errno::LOOP)));
        assert_eq!(both("in/app.conf"), (Some(Errno::LOOP), Some(Errno::LOOP)));
        assert_eq!(
            both("real/link.conf"),
            (Some(Errno::LOOP), Some(Errno::LOOP))
        );
        assert_eq!(both("../x"), (Some(Errno::XDEV), Some(Errno::XDEV)));
        assert_eq!(both("real/absent").0, Some(Errno::NOENT));
    }

    #[test]
    fn without_openat2_a_directory_swapped_for_a_link_never_leads_a_write_out_of_the_root() {
        WITHOUT_OPENAT2.with(|w| w.set(true));
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("app.conf"), "secret\n").unwrap();
        let conf = root.path().join("conf");
        fs::create_dir(&conf).unwrap();
        fs::write(conf.join("app.conf"), "old\n").unwrap();
        let swapped = root.path().join("conf-swap");
        std::os::unix::fs::symlink(outside.path(), &swapped).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer = {
            let (stop, conf, swapped) = (stop.clone(), conf.clone(), swapped.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..2 {
                        nix::fcntl::renameat2(
                            nix::fcntl::AT_FDCWD,
                            &conf,
                            nix::fcntl::AT_FDCWD,
                            &swapped,
                            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                        )
                        .unwrap();
                    }
                    (0..2000).for_each(|_| std::hint::spin_loop());
                }
            })
        };
        let roots = [root.path().to_path_buf()];
        let mut written = 0;
        for n in 0..3000 {
            let Ok(dir) = open_target_dir(&conf.join("app.conf"), &roots) else {
                continue;
            };
            let Ok(target) = dir.read() else { continue };
            if dir
                .replace(&target, format!("new {n}\n").as_bytes(), ".t.tmp")
                .is_ok()
            {
                written += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        racer.join().unwrap();
        assert!(written > 0, "the race left no write to check");
        assert_eq!(
            fs::read_to_string(outside.path().join("app.conf")).unwrap(),
            "secret\n"
        );
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            1,
            "files made outside"
        );
    }

    fn read(path: &Path, roots: &[PathBuf]) -> Result<Target, TargetError> {
        open_target_dir(path, roots)?.read()
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_owner_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [dir.path().to_path_buf()];
        let path = dir.path().join("app.conf");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let target_dir = open_target_dir(&path, &roots).unwrap();
        let before = target_dir.read().unwrap();
        target_dir.replace(&before, b"new\n", ".t.tmp").unwrap();
        let after = read(&path, &roots).unwrap();
        assert_eq!(after.content, b"new\n");
        assert_eq!(
            (after.mode, after.uid, after.gid),
            (0o640, before.uid, before.gid)
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_leftover_temporary_of_a_killed_write_is_removed_and_anything_else_there_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [dir.path().to_path_buf()];
        let path = dir.path().join("app.conf");
        fs::write(&path, "old\n").unwrap();
        // What a SIGKILL mid-write leaves: the agent's own regular file.
        fs::write(dir.path().join(".t.tmp"), "half").unwrap();
        let target_dir = open_target_dir(&path, &roots).unwrap();
        target_dir.remove_leftover(".t.tmp");
        assert_eq!(names_in(dir.path()), ["app.conf"]);
        fs::write(dir.path().join(".t.tmp"), "half").unwrap();
        let before = target_dir.read().unwrap();
        target_dir.replace(&before, b"new\n", ".t.tmp").unwrap();
        assert_eq!(names_in(dir.path()), ["app.conf"]);

        // A directory, a link or a file with a second name at that name is
        // not the agent's: left there, and the write takes its own name.
        fs::create_dir(dir.path().join(".d.tmp")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(".l.tmp")).unwrap();
        fs::write(dir.path().join("other"), "other\n").unwrap();
        fs::hard_link(dir.path().join("other"), dir.path().join(".h.tmp")).unwrap();
        for temp in [".d.tmp", ".l.tmp", ".h.tmp"] {
            target_dir.remove_leftover(temp);
            let before = target_dir.read().unwrap();
            target_dir.replace(&before, temp.as_bytes(), temp).unwrap();
            assert_eq!(fs::read(&path).unwrap(), temp.as_bytes());
        }
        assert_eq!(
            names_in(dir.path()),
            [".d.tmp", ".h.tmp", ".l.tmp", "app.conf", "other"]
        );
        assert!(dir.path().join(".d.tmp").is_dir());
        assert_eq!(
            fs::read_link(dir.path().join(".l.tmp")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn a_temporary_swapped_for_another_file_before_the_rename_is_not_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        fs::write(dir.path().join("app.conf"), "old\n").unwrap();
        let temp = dir.path().join(".t.tmp");
        let err = replace_in(
            &fd,
            (OsStr::new("app.conf"), ".t.tmp"),
            &dir.path().join("app.conf"),
            b"new\n",
            (0o644, 0, 0),
            || {
                // Someone with write access to the directory, between
                // the checks and the rename.
                fs::rename(&temp, dir.path().join("moved")).unwrap();
                fs::write(&temp, "theirs\n").unwrap();
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.contains("replaced by someone else"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join("app.conf")).unwrap(),
            "old\n"
        );
    }

    #[test]
    fn targets_outside_the_roots_behind_links_or_not_regular_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        fs::write(&secret, "x").unwrap();
        let roots = [root.path().to_path_buf()];
        let refused = |path: &Path| match read(path, &roots) {
            Err(TargetError::Refused(why)) => why,
            other => panic!("{} not refused: {other:?}", path.display()),
        };
        // A link as the file, or as a directory on the way: refused, even
        // when it stays inside the root.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let why = refused(&link);
        assert!(why.contains("symbolic link"), "{why}");
        std::os::unix::fs::symlink(outside.path(), root.path().join("sub-link")).unwrap();
        let why = refused(&root.path().join("sub-link/shadow"));
        assert!(why.contains("symbolic link in its path"), "{why}");
        fs::create_dir(root.path().join("real")).unwrap();
        fs::write(root.path().join("real/app.conf"), "x").unwrap();
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("inner-link"))
            .unwrap();
        let why = refused(&root.path().join("inner-link/app.conf"));
        assert!(why.contains("symbolic link in its path"), "{why}");
        assert!(read(&root.path().join("real/app.conf"), &roots).is_ok());

        let sub = root.path().join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(refused(&sub).contains("not a regular file"));
        assert!(
            refused(root.path()).contains("not under"),
            "the root itself"
        );
        assert!(refused(&secret).contains("not under"));
        let big = root.path().join("big");
        File::create(&big)
            .unwrap()
            .set_len(MAX_TARGET_BYTES + 1)
            .unwrap();
        assert!(refused(&big).contains("at most 16 MiB"));
        nix::unistd::mkfifo(&root.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(refused(&root.path().join("fifo")).contains("not a regular file"));
        assert!(matches!(
            check_target(&root.path().join("fifo"), &roots),
            Err(TargetError::Refused(_))
        ));
        // Missing is not a guard's refusal: the plan reports it.
        let missing = read(&root.path().join("absent"), &roots);
        assert!(
            matches!(missing, Err(TargetError::Unreadable(_))),
            "{missing:?}"
        );
    }

    #[test]
    fn set_id_files_files_with_other_names_and_files_changed_meanwhile_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let roots = [root.path().to_path_buf()];
        let refused = |path: &Path| match read(path, &roots) {
            Err(TargetError::Refused(why)) => why,
            other => panic!("{} not refused: {other:?}", path.display()),
        };
        let setuid = root.path().join("tool");
        fs::write(&setuid, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4755)).unwrap();
        assert!(refused(&setuid).contains("set-user-ID or set-group-ID"));
        let linked = root.path().join("a.conf");
        fs::write(&linked, "x\n").unwrap();
        fs::hard_link(&linked, root.path().join("b.conf")).unwrap();
        assert!(refused(&linked).contains("has 2 hard links"));

        let path = root.path().join("app.conf");
        fs::write(&path, "old\n").unwrap();
        let dir = open_target_dir(&path, &roots).unwrap();
        let read = dir.read().unwrap();
        fs::write(&path, "edited meanwhile\n").unwrap();
        let err = dir.replace(&read, b"new\n", ".t.tmp").unwrap_err();
        assert!(err.contains("changed while it was being patched"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "edited meanwhile\n");
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            4,
            "no temporary left"
        );
    }

    #[test]
    fn the_agents_own_files_are_written_whole_and_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let backups = dir.path().join("backups");
        write_own_file(&backups, "p.0.orig", b"secret\n", 0o600).unwrap();
        let written = backups.join("p.0.orig");
        assert_eq!(fs::read(&written).unwrap(), b"secret\n");
        assert_eq!(
            fs::metadata(&written).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
