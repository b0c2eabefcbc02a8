//! `hot_patch {file, diff, sha256?}`: apply a unified diff to a file under one
//! of `hot_patch.allowed_paths`, atomically, keeping a backup for revert.
//! `prepare` reads the file (refusing anything the guards forbid), checks the
//! expected `sha256`, applies the diff in memory and writes the backup; the
//! engine records the before and after hashes; `apply` then replaces the
//! file only if it still has the content `prepare` read. `revert` restores
//! the backup only if the file still has the patched content: anything else
//! is a conflict, reported and left alone.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::diff_apply;
use super::{ActionCtx, ActionError, ActionHandler, Applied, Recovered, ValidateCtx, Validated};
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;
use crate::sys::files::{
    check_target, open_target_dir, sha256_hex, write_own_file, Target, TargetDir, TargetError,
};

pub const MAX_DIFF_BYTES: usize = 60 * 1024;
/// hot_patch actions one alert may carry.
pub const MAX_PER_ALERT: usize = 4;

pub struct HotPatch;

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[async_trait]
impl ActionHandler for HotPatch {
    fn name(&self) -> &'static str {
        "hot_patch"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn validate(
        &self,
        params: &Fields<'_>,
        ctx: &ValidateCtx<'_>,
    ) -> Result<Validated, AgentError> {
        params.deny_unknown(&["file", "diff", "sha256"])?;
        let file = params.string("file")?;
        let path = Path::new(file);
        // Checked on the text: `Path::components` silently drops inner `.`
        // and doubled slashes, and then two spellings of one file would be
        // two scheduling targets.
        // No NUL (no path holds one: the open would fail after the plan
        // was accepted) and no other control character (a name an
        // operator could not read back in a log).
        let plain = file.len() > 1
            && file.starts_with('/')
            && !file.chars().any(char::is_control)
            && file[1..]
                .split('/')
                .all(|part| !matches!(part, "" | "." | ".."));
        if !plain {
            return Err(params.error(
                "file",
                format!(
                    "{file:?} must be an absolute path without \".\", \"..\" or control characters"
                ),
            ));
        }
        let roots = &ctx.config.hot_patch.allowed_paths;
        if roots.is_empty() {
            return Err(params.error_named(
                ErrorName::ProtectedTarget,
                "file",
                "hot_patch is off: hot_patch.allowed_paths names no root",
            ));
        }
        if !roots
            .iter()
            .any(|root| path.starts_with(root) && path != root)
        {
            return Err(params.error_named(
                ErrorName::ProtectedTarget,
                "file",
                format!("{file:?} is not under any of hot_patch.allowed_paths"),
            ));
        }
        // The guards on the file itself, at validation as at apply. A file
        // that cannot be looked at now (missing, unreadable) is left to
        // `prepare`, which reports it in the plan.
        if let Err(TargetError::Refused(why)) = check_target(path, roots) {
            return Err(params.error_named(ErrorName::ProtectedTarget, "file", why));
        }
        let diff = params.text("diff", MAX_DIFF_BYTES)?;
        match diffy::Patch::from_str(diff) {
            Err(e) => return Err(params.error("diff", format!("is not a unified diff: {e}"))),
            // diffy reads text with no hunk as an empty patch.
            Ok(patch) if patch.hunks().is_empty() => {
                return Err(params.error("diff", "is not a unified diff: it has no hunk"))
            }
            Ok(_) => {}
        }
        let patch = diffy::Patch::from_bytes(diff.as_bytes())
            .map_err(|e| params.error("diff", format!("is not a unified diff: {e}")))?;
        if diff_apply::changes_nothing(&patch) {
            return Err(params.error(
                "diff",
                "changes nothing: every hunk's lines are the same before and after",
            ));
        }
        let sha = params.opt_string("sha256")?;
        if let Some(sha) = sha {
            if !is_sha256_hex(sha) {
                return Err(params.error("sha256", "must be 64 lowercase hexadecimal digits"));
            }
        }
        Ok(Validated {
            targets: vec![format!("file:{file}")],
            params: json!({"file": file, "diff": diff, "sha256": sha}),
        })
    }

    async fn dry_run(&self, ctx: &ActionCtx<'_>) -> Result<Value, ActionError> {
        let job = Job::of(ctx);
        let backup = job.backup_path();
        let file = ctx.params["file"].clone();
        let diff = ctx.params["diff"].clone();
        blocking(move || {
            let (_, target, patched) = job.read_and_patch()?;
            Ok(json!({
                "file": file,
                "resolved": target.path,
                "before_sha256": sha256_hex(&target.content),
                "after_sha256": sha256_hex(&patched),
                "diff": diff,
                "keeps": {"mode": format!("{:o}", target.mode), "uid": target.uid, "gid": target.gid},
                "backup": backup,
            }))
        })
        .await
    }

    fn validates_on_disk(&self) -> bool {
        true
    }

    /// Each may read and hash a 16 MiB file and search it for its hunks
    /// (bounded per diff): four keep a `DryRun` of one alert well under a
    /// second of one core (BENCHMARKS.md, "hot_patch worst case").
    fn max_per_alert(&self) -> usize {
        MAX_PER_ALERT
    }

    async fn prepare(&self, ctx: &ActionCtx<'_>) -> Result<Option<Value>, ActionError> {
        let job = Job::of(ctx);
        blocking(move || {
            let (_, target, patched) = job.read_and_patch()?;
            // Readable by root only: the file may hold secrets.
            write_own_file(&job.backup_dir, &job.backup_name, &target.content, 0o600)
                .map_err(|e| ActionError::transient(format!("cannot write the backup: {e}")))?;
            Ok(Some(json!(Prepared {
                file: target.path.clone(),
                backup: job.backup_path(),
                before_sha256: sha256_hex(&target.content),
                after_sha256: sha256_hex(&patched),
            })))
        })
        .await
    }

    async fn apply(&self, ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        let prepared = prepared(ctx)?;
        let job = Job::of(ctx);
        blocking(move || {
            let (dir, target) = job.open_clear_and_read()?;
            let now = sha256_hex(&target.content);
            let summary = |what: &str| {
                format!(
                    "{what} {} (sha256 {} -> {}); the content from before is kept at {}",
                    prepared.file.display(),
                    prepared.before_sha256,
                    prepared.after_sha256,
                    prepared.backup.display()
                )
            };
            let applied = |summary: String| Applied {
                summary,
                changes: json!(prepared),
                revert_after_secs: None,
            };
            if now == prepared.after_sha256 {
                return Ok(applied(summary("already patched:")));
            }
            if now != prepared.before_sha256 {
                return Err(ActionError::permanent(format!(
                    "{} changed between reading and writing it (sha256 now {now}); not patched",
                    prepared.file.display()
                )));
            }
            let patched = job.patch(&target)?;
            dir.replace(&target, &patched, &job.temp_name)
                .map_err(ActionError::transient)?;
            Ok(applied(summary("patched")))
        })
        .await
    }

    async fn revert(&self, ctx: &ActionCtx<'_>, changes: &Value) -> Result<String, ActionError> {
        let prepared: Prepared = serde_json::from_value(changes.clone()).map_err(|e| {
            ActionError::permanent(format!("the recorded patch is unreadable: {e}"))
        })?;
        let job = Job::of(ctx);
        blocking(move || {
            let (dir, target) = job.open_clear_and_read()?;
            let now = sha256_hex(&target.content);
            let file = prepared.file.display();
            if now == prepared.before_sha256 {
                return Ok(format!(
                    "{file} already has its content from before the patch"
                ));
            }
            if now != prepared.after_sha256 {
                return Err(ActionError::permanent(format!(
                    "conflict: {file} changed since the patch (sha256 now {now}, the patch wrote {}); left as it is; the content from before is kept at {}",
                    prepared.after_sha256,
                    prepared.backup.display()
                )));
            }
            let original = std::fs::read(&prepared.backup).map_err(|e| {
                ActionError::permanent(format!("the backup {}: {e}", prepared.backup.display()))
            })?;
            if sha256_hex(&original) != prepared.before_sha256 {
                return Err(ActionError::permanent(format!(
                    "the backup {} does not hold the content from before the patch; {file} left as it is",
                    prepared.backup.display()
                )));
            }
            dir.replace(&target, &original, &job.temp_name)
                .map_err(ActionError::transient)?;
            Ok(format!(
                "restored {file} from {} (sha256 {})",
                prepared.backup.display(),
                prepared.before_sha256
            ))
        })
        .await
    }

    /// After a crash mid-apply: the patch took effect when the file has
    /// exactly the patched content.
    async fn recover(&self, ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        let Ok(prepared) = prepared(ctx) else {
            return Ok(Recovered::DidNotTakeEffect(
                "the agent stopped before reading the file".into(),
            ));
        };
        let job = Job::of(ctx);
        let now = blocking(move || Ok(sha256_hex(&job.open_clear_and_read()?.1.content))).await?;
        if now == prepared.after_sha256 {
            Ok(Recovered::TookEffect(Applied {
                summary: format!(
                    "{} was patched before the agent stopped (sha256 {})",
                    prepared.file.display(),
                    now
                ),
                changes: json!(prepared),
                revert_after_secs: None,
            }))
        } else {
            Ok(Recovered::DidNotTakeEffect(format!(
                "{} does not have the patched content (sha256 {now})",
                prepared.file.display()
            )))
        }
    }
}

/// What `prepare` recorded: enough to check, apply and undo.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Prepared {
    file: std::path::PathBuf,
    backup: std::path::PathBuf,
    before_sha256: String,
    after_sha256: String,
}

fn prepared(ctx: &ActionCtx<'_>) -> Result<Prepared, ActionError> {
    ctx.prepared_as()
        .ok_or_else(|| ActionError::permanent("the file's state before the patch was not recorded"))
}

/// hot_patch's file work runs one at a time: each may hold a 16 MiB file,
/// its patched copy and a line index, so many callers at once (a loop of
/// `DryRun`s) cannot add up to more memory or cores than one.
static FILE_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Runs file work (reads, hashing, the diff, fsyncs) on a blocking thread,
/// never on the async workers that serve the bus and the engine, one at a
/// time ([`FILE_WORK`]).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ActionError> + Send + 'static,
) -> Result<T, ActionError> {
    let turn = FILE_WORK
        .acquire()
        .await
        .map_err(|e| ActionError::transient(format!("the hot_patch queue: {e}")))?;
    // The turn is held by the thread, not by this future: were the future
    // dropped (a timeout around a step), the next job would still wait for
    // this one's writes to end (two writes of one action share a name).
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .map_err(|e| ActionError::transient(format!("the hot_patch task failed: {e}")))?
}

/// What the file work needs from the action's context, owned, so it can
/// move to a blocking thread.
struct Job {
    file: PathBuf,
    roots: Vec<PathBuf>,
    diff: String,
    sha256: Option<String>,
    /// Where the content from before the patch is kept: one file per action.
    backup_dir: PathBuf,
    backup_name: String,
    /// The new content's name beside the target until its rename: one per
    /// action, so what a SIGKILL left is known and removed (DESIGN.md §4).
    temp_name: String,
}

impl Job {
    fn of(ctx: &ActionCtx<'_>) -> Job {
        Job {
            file: PathBuf::from(ctx.params["file"].as_str().unwrap_or_default()),
            roots: ctx.config.hot_patch.allowed_paths.clone(),
            diff: ctx.params["diff"].as_str().unwrap_or_default().to_string(),
            sha256: ctx.params["sha256"].as_str().map(str::to_string),
            backup_dir: ctx.config.state.dir.join("backups"),
            backup_name: format!("{}.{}.orig", ctx.plan_id, ctx.index),
            temp_name: format!(".antibody-{}.{}.tmp", ctx.plan_id, ctx.index),
        }
    }

    fn backup_path(&self) -> PathBuf {
        self.backup_dir.join(&self.backup_name)
    }

    /// The target's directory, held open, and the target read through it,
    /// under the guards in force now.
    fn open_and_read(&self) -> Result<(TargetDir, Target), ActionError> {
        self.open_then_read(|_| {})
    }

    /// As [`Job::open_and_read`], for the steps that write (apply, revert)
    /// or follow one (recover): a temporary file this action left beside
    /// the target when the agent was killed mid-write is removed first,
    /// before the read, which may refuse the target: the leftover goes
    /// even when the step itself cannot.
    fn open_clear_and_read(&self) -> Result<(TargetDir, Target), ActionError> {
        self.open_then_read(|dir| dir.remove_leftover(&self.temp_name))
    }

    fn open_then_read(
        &self,
        before_read: impl FnOnce(&TargetDir),
    ) -> Result<(TargetDir, Target), ActionError> {
        let refused = |e: TargetError| ActionError::permanent(e.message());
        let dir = open_target_dir(Path::new(&self.file), &self.roots).map_err(refused)?;
        before_read(&dir);
        let target = dir.read().map_err(refused)?;
        Ok((dir, target))
    }

    /// The file's content with the diff applied.
    fn patch(&self, target: &Target) -> Result<Vec<u8>, ActionError> {
        let patch = diffy::Patch::from_bytes(self.diff.as_bytes())
            .map_err(|e| ActionError::permanent(format!("the diff does not parse: {e}")))?;
        diff_apply::apply(&target.content, &patch).map_err(|e| {
            ActionError::permanent(format!(
                "the diff does not apply to {}: {e}",
                target.path.display()
            ))
        })
    }

    /// Reads the target, checks the alert's expected `sha256`, and patches
    /// it in memory.
    fn read_and_patch(&self) -> Result<(TargetDir, Target, Vec<u8>), ActionError> {
        let (dir, target) = self.open_and_read()?;
        if let Some(expected) = &self.sha256 {
            let found = sha256_hex(&target.content);
            if &found != expected {
                return Err(ActionError::permanent(format!(
                    "{} has sha256 {found}, not the {expected} the alert expected; not patched",
                    target.path.display()
                )));
            }
        }
        let patched = self.patch(&target)?;
        Ok((dir, target, patched))
    }
}
