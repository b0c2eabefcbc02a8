//! `hot_patch {file, diff, sha256?}`: apply a unified diff to a file under one
//! of `hot_patch.allowed_paths`, atomically, keeping a backup for revert.
//! `prepare` reads the file (refusing anything the guards forbid), checks the
//! expected `sha256`, applies the diff in memory and writes the backup; the
//! engine records the before and after hashes; `apply` then replaces the
//! file only if it still has the content `prepare` read. `revert` restores
//! the backup only if the file still has the patched content: anything else
//! is a conflict, reported and left alone.

use std::path::Path;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{ActionCtx, ActionError, ActionHandler, Applied, Recovered, ValidateCtx, Validated};
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;
use crate::sys::files::{
    check_target, read_target, replace_atomically, sha256_hex, Target, TargetError,
};

pub const MAX_DIFF_BYTES: usize = 60 * 1024;

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
        let plain = file.len() > 1
            && file.starts_with('/')
            && file[1..]
                .split('/')
                .all(|part| !matches!(part, "" | "." | ".."));
        if !plain {
            return Err(params.error(
                "file",
                format!("{file:?} must be an absolute path without \".\" or \"..\""),
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
        let (target, patched) = read_and_patch(ctx)?;
        Ok(json!({
            "file": ctx.params["file"],
            "resolved": target.path,
            "before_sha256": sha256_hex(&target.content),
            "after_sha256": sha256_hex(&patched),
            "diff": ctx.params["diff"],
            "keeps": {"mode": format!("{:o}", target.mode), "uid": target.uid, "gid": target.gid},
            "backup": backup_path(ctx),
        }))
    }

    async fn prepare(&self, ctx: &ActionCtx<'_>) -> Result<Option<Value>, ActionError> {
        let (target, patched) = read_and_patch(ctx)?;
        let backup = backup_path(ctx);
        if let Some(dir) = backup.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ActionError::transient(format!("{}: {e}", dir.display())))?;
        }
        // Readable by root only: the file may hold secrets.
        replace_atomically(&backup, &target.content, 0o600, 0, 0)
            .map_err(|e| ActionError::transient(format!("cannot write the backup: {e}")))?;
        Ok(Some(json!(Prepared {
            file: target.path.clone(),
            backup,
            before_sha256: sha256_hex(&target.content),
            after_sha256: sha256_hex(&patched),
        })))
    }

    async fn apply(&self, ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        let prepared = prepared(ctx)?;
        let target = read(ctx)?;
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
        let patched = patch_content(ctx, &target)?;
        replace_atomically(&target.path, &patched, target.mode, target.uid, target.gid)
            .map_err(ActionError::transient)?;
        Ok(applied(summary("patched")))
    }

    async fn revert(&self, ctx: &ActionCtx<'_>, changes: &Value) -> Result<String, ActionError> {
        let prepared: Prepared = serde_json::from_value(changes.clone()).map_err(|e| {
            ActionError::permanent(format!("the recorded patch is unreadable: {e}"))
        })?;
        let target = read(ctx)?;
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
        replace_atomically(&target.path, &original, target.mode, target.uid, target.gid)
            .map_err(ActionError::transient)?;
        Ok(format!(
            "restored {file} from {} (sha256 {})",
            prepared.backup.display(),
            prepared.before_sha256
        ))
    }

    /// After a crash mid-apply: the patch took effect when the file has
    /// exactly the patched content.
    async fn recover(&self, ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        let Ok(prepared) = prepared(ctx) else {
            return Ok(Recovered::DidNotTakeEffect(
                "the agent stopped before reading the file".into(),
            ));
        };
        let now = sha256_hex(&read(ctx)?.content);
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

/// Where the content from before the patch is kept: one file per action.
fn backup_path(ctx: &ActionCtx<'_>) -> std::path::PathBuf {
    ctx.config
        .state
        .dir
        .join("backups")
        .join(format!("{}.{}.orig", ctx.plan_id, ctx.index))
}

/// The target, under the guards in force now.
fn read(ctx: &ActionCtx<'_>) -> Result<Target, ActionError> {
    let file = Path::new(ctx.params["file"].as_str().unwrap_or_default());
    read_target(file, &ctx.config.hot_patch.allowed_paths)
        .map_err(|e| ActionError::permanent(e.message()))
}

/// The file's content with the diff applied.
fn patch_content(ctx: &ActionCtx<'_>, target: &Target) -> Result<Vec<u8>, ActionError> {
    let diff = ctx.params["diff"].as_str().unwrap_or_default();
    let patch = diffy::Patch::from_bytes(diff.as_bytes())
        .map_err(|e| ActionError::permanent(format!("the diff does not parse: {e}")))?;
    diffy::apply_bytes(&target.content, &patch).map_err(|e| {
        ActionError::permanent(format!(
            "the diff does not apply to {}: {e}",
            target.path.display()
        ))
    })
}

/// Reads the target, checks the alert's expected `sha256`, and patches it
/// in memory.
fn read_and_patch(ctx: &ActionCtx<'_>) -> Result<(Target, Vec<u8>), ActionError> {
    let target = read(ctx)?;
    if let Some(expected) = ctx.params["sha256"].as_str() {
        let found = sha256_hex(&target.content);
        if found != expected {
            return Err(ActionError::permanent(format!(
                "{} has sha256 {found}, not the {expected} the alert expected; not patched",
                target.path.display()
            )));
        }
    }
    let patched = patch_content(ctx, &target)?;
    Ok((target, patched))
}
