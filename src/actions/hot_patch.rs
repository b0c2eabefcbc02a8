//! `hot_patch {file, diff, sha256?}`: apply a unified diff to a file under one
//! of `hot_patch.allowed_paths`, atomically, keeping a backup for revert.
//! This build validates and describes it (the diff must parse, the path must
//! lie under an allowed root); the file backend is not implemented yet, and
//! `apply` fails plainly until it is.

use std::path::Path;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{
    not_available, ActionCtx, ActionError, ActionHandler, Applied, Recovered, ValidateCtx,
    Validated,
};
use crate::error::{AgentError, ErrorName};
use crate::plan::fields::Fields;

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
        Ok(json!({"file": ctx.params["file"], "diff": ctx.params["diff"], "available": false}))
    }

    async fn apply(&self, _ctx: &ActionCtx<'_>) -> Result<Applied, ActionError> {
        Err(not_available("hot_patch"))
    }

    async fn revert(&self, _ctx: &ActionCtx<'_>, _changes: &Value) -> Result<String, ActionError> {
        Err(not_available("hot_patch"))
    }

    async fn recover(&self, _ctx: &ActionCtx<'_>) -> Result<Recovered, ActionError> {
        Ok(Recovered::DidNotTakeEffect(
            "no backend on this build".into(),
        ))
    }
}
