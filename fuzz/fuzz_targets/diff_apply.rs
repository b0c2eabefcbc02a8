//! The bounded diff applier: any file content and any text diffy parses
//! as a patch. Never a panic, and the result is made of the file's lines
//! and the patch's: never longer than both together.
#![no_main]

use antibody::actions::diff_apply::apply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 0xff byte splits the base from the patch text.
    let Some(split) = data.iter().position(|b| *b == 0xff) else {
        return;
    };
    let (base, patch_text) = (&data[..split], &data[split + 1..]);
    let Ok(patch) = diffy::Patch::from_bytes(patch_text) else {
        return;
    };
    let _ = antibody::actions::diff_apply::changes_nothing(&patch);
    let Ok(patched) = apply(base, &patch) else {
        return;
    };
    assert!(patched.len() <= base.len() + patch_text.len() + 1);
});
