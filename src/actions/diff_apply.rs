//! Applying a unified diff (as `diffy` parses it) to a file's bytes, in
//! bounded work. Pure.
//!
//! Written here rather than calling `diffy::apply_bytes`, whose work has
//! no bound an alert cannot reach: for each hunk it tries every line of
//! the file as a position (comparing the hunk's lines at each) and then
//! splices the hunk into a vector of the whole file. A 60 KiB diff of
//! thousands of near-miss hunks against a 16 MiB file would keep a core
//! busy for minutes, and `DryRun` runs it for any submitter. Here:
//! - hunks apply in order, each after the one before, at the position its
//!   header names shifted by the offset the previous hunk was found at
//!   (as `patch` does), searched outwards from there;
//! - every byte compared while searching counts against
//!   [`MAX_COMPARED_BYTES`]; past it the diff is refused as not applying;
//! - the result is built once, by copying runs of lines: O(file + diff).

use diffy::{Line, Patch};

/// All the searching one diff may do, in bytes compared: a few tens of
/// milliseconds of `memcmp` (BENCHMARKS.md, "hot_patch worst case").
pub const MAX_COMPARED_BYTES: u64 = 64 << 20;

/// The file's lines, each with its `\n` (the last may have none), as diffy
/// splits them, so hunk lines compare byte for byte. Kept as the offsets
/// where lines end (4 bytes a line: a 16 MiB file of empty lines is
/// 64 MiB of index, not 256 MiB of slices).
struct Lines<'a> {
    base: &'a [u8],
    ends: Vec<u32>,
}

impl<'a> Lines<'a> {
    fn new(base: &'a [u8]) -> Lines<'a> {
        let mut ends: Vec<u32> = base
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| (i + 1) as u32)
            .collect();
        if ends.last().map_or(0, |e| *e as usize) < base.len() {
            ends.push(base.len() as u32);
        }
        Lines { base, ends }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Where line `i` starts (`len()` for the end of the file).
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize
        }
    }

    fn line(&self, i: usize) -> &'a [u8] {
        &self.base[self.start(i)..self.ends[i] as usize]
    }

    /// Lines `from..to`, as one slice of the file.
    fn run(&self, from: usize, to: usize) -> &'a [u8] {
        &self.base[self.start(from)..self.start(to)]
    }
}

fn pre_image<'a>(lines: &[Line<'a, [u8]>]) -> Vec<&'a [u8]> {
    lines
        .iter()
        .filter_map(|l| match l {
            Line::Context(t) | Line::Delete(t) => Some(*t),
            Line::Insert(_) => None,
        })
        .collect()
}

fn post_image<'a>(lines: &[Line<'a, [u8]>]) -> Vec<&'a [u8]> {
    lines
        .iter()
        .filter_map(|l| match l {
            Line::Context(t) | Line::Insert(t) => Some(*t),
            Line::Delete(_) => None,
        })
        .collect()
}

/// True when no hunk of `patch` changes anything (every hunk's lines
/// before and after are the same): such a diff is refused at validation.
pub fn changes_nothing(patch: &Patch<'_, [u8]>) -> bool {
    patch
        .hunks()
        .iter()
        .all(|h| pre_image(h.lines()) == post_image(h.lines()))
}

/// Positions from `from` outwards, alternating after and before, within
/// `low..=high`.
fn outwards(from: usize, low: usize, high: usize) -> impl Iterator<Item = usize> {
    let after = from..=high;
    let before = (low..from).rev();
    let mut after = after.into_iter();
    let mut before = before.into_iter();
    let mut turn = false;
    std::iter::from_fn(move || {
        turn = !turn;
        if turn {
            after.next().or_else(|| before.next())
        } else {
            before.next().or_else(|| after.next())
        }
    })
}

/// `base` with `patch` applied, or which hunk does not apply.
pub fn apply(base: &[u8], patch: &Patch<'_, [u8]>) -> Result<Vec<u8>, String> {
    assert!(base.len() < u32::MAX as usize, "targets are at most 16 MiB");
    let lines = Lines::new(base);
    let mut out = Vec::with_capacity(base.len() + 1024);
    let mut copied = 0usize; // lines[..copied] are settled
    let mut offset = 0isize; // where the last hunk was found, against its header
    let mut budget = MAX_COMPARED_BYTES;
    for (i, hunk) in patch.hunks().iter().enumerate() {
        let number = i + 1;
        let pre = pre_image(hunk.lines());
        let does_not_apply = || format!("hunk #{number} does not apply");
        let Some(high) = lines.len().checked_sub(pre.len()).filter(|h| *h >= copied) else {
            return Err(does_not_apply());
        };
        // `@@ -2,0 …` (a hunk that only inserts) means "after line 2";
        // any other range starts at its line.
        let range = hunk.old_range();
        let stated = match range.len() {
            0 => range.start(),
            _ => range.start().saturating_sub(1),
        } as isize;
        let expected = (stated + offset).clamp(copied as isize, high as isize) as usize;
        let mut found = None;
        for at in outwards(expected, copied, high) {
            let mut matched = true;
            for (k, want) in pre.iter().enumerate() {
                let have = lines.line(at + k);
                let cost = want.len().min(have.len()).max(1) as u64;
                budget = budget.checked_sub(cost).ok_or_else(|| {
                    format!(
                        "hunk #{number} does not apply: gave up after comparing {} MiB while looking for its place",
                        MAX_COMPARED_BYTES >> 20
                    )
                })?;
                if *want != have {
                    matched = false;
                    break;
                }
            }
            if matched {
                found = Some(at);
                break;
            }
        }
        let at = found.ok_or_else(does_not_apply)?;
        let post = post_image(hunk.lines());
        // A line without its newline ("\ No newline at end of file") can
        // only end the file: elsewhere it would join two lines.
        let ends_file = at + pre.len() == lines.len();
        if !ends_file && post.last().is_some_and(|l| !l.ends_with(b"\n")) {
            return Err(format!(
                "hunk #{number} ends without a newline but does not end the file"
            ));
        }
        out.extend_from_slice(lines.run(copied, at));
        for line in post {
            out.extend_from_slice(line);
        }
        copied = at + pre.len();
        offset = at as isize - stated;
    }
    out.extend_from_slice(lines.run(copied, lines.len()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch_of(old: &[u8], new: &[u8]) -> Vec<u8> {
        let (old, new) = (
            std::str::from_utf8(old).unwrap(),
            std::str::from_utf8(new).unwrap(),
        );
        diffy::create_patch(old, new).to_string().into_bytes()
    }

    #[test]
    fn applies_as_diffy_does_on_edits_of_every_kind() {
        let mut rng = fastrand::Rng::with_seed(13);
        for round in 0..300 {
            let n = rng.usize(0..60);
            let old: Vec<String> = (0..n).map(|i| format!("line {}\n", i % 7)).collect();
            let mut new = old.clone();
            for _ in 0..rng.usize(1..6) {
                match rng.u8(0..3) {
                    0 if !new.is_empty() => {
                        new.remove(rng.usize(0..new.len()));
                    }
                    1 => new.insert(rng.usize(0..=new.len()), format!("added {round}\n")),
                    _ if !new.is_empty() => {
                        let at = rng.usize(0..new.len());
                        new[at] = format!("changed {round}\n");
                    }
                    _ => new.push("tail\n".into()),
                }
            }
            let (old, new) = (old.concat().into_bytes(), new.concat().into_bytes());
            let text = patch_of(&old, &new);
            let patch = Patch::from_bytes(&text).unwrap();
            let ours = apply(&old, &patch).unwrap();
            assert_eq!(ours, new, "round {round}");
            assert_eq!(
                ours,
                diffy::apply_bytes(&old, &patch).unwrap(),
                "round {round}"
            );
        }
    }

    #[test]
    fn diffs_without_context_apply_as_diffy_does() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut options = diffy::DiffOptions::new();
        options.set_context_len(0);
        for round in 0..300 {
            let n = rng.usize(1..40);
            let old: Vec<String> = (0..n).map(|i| format!("line {i}\n")).collect();
            let mut new = old.clone();
            for _ in 0..rng.usize(1..5) {
                let at = rng.usize(0..=new.len());
                match rng.u8(0..2) {
                    0 => new.insert(at, format!("added {round}\n")),
                    _ if at < new.len() => {
                        new.remove(at);
                    }
                    _ => new.push("tail\n".into()),
                }
            }
            let (old, new) = (old.concat(), new.concat());
            if old == new {
                continue;
            }
            let text = options.create_patch(&old, &new).to_string();
            let patch = Patch::from_bytes(text.as_bytes()).unwrap();
            assert_eq!(
                apply(old.as_bytes(), &patch).unwrap(),
                new.as_bytes(),
                "round {round}:\n{text}"
            );
        }
        // The reviewer's case: insert after line 2.
        let patch = Patch::from_bytes(b"--- a/f\n+++ b/f\n@@ -2,0 +3 @@\n+X\n").unwrap();
        assert_eq!(apply(b"a\nb\nc\n", &patch).unwrap(), b"a\nb\nX\nc\n");
        let at_top = Patch::from_bytes(b"--- a/f\n+++ b/f\n@@ -0,0 +1 @@\n+X\n").unwrap();
        assert_eq!(apply(b"a\n", &at_top).unwrap(), b"X\na\n");
        // A line without its newline in the middle of the file would join
        // two lines: refused.
        let joining = Patch::from_bytes(
            b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+A\n\\ No newline at end of file\n",
        )
        .unwrap();
        assert!(apply(b"a\nb\n", &joining)
            .unwrap_err()
            .contains("does not end the file"));
    }

    #[test]
    fn a_hunk_found_away_from_its_stated_line_still_applies() {
        let old = b"a\nb\nc\nd\n";
        let patch = Patch::from_bytes(b"--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n c\n-d\n+D\n").unwrap();
        assert_eq!(apply(old, &patch).unwrap(), b"a\nb\nc\nD\n");
        let missing = Patch::from_bytes(b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-z\n+Z\n").unwrap();
        assert_eq!(apply(old, &missing).unwrap_err(), "hunk #1 does not apply");
    }

    #[test]
    fn no_newline_at_the_end_is_kept_as_it_was() {
        let old = b"a\nb";
        let new = b"a\nB";
        let text = patch_of(old, new);
        let patch = Patch::from_bytes(&text).unwrap();
        assert_eq!(apply(old, &patch).unwrap(), new);
    }

    #[test]
    fn the_search_of_a_hostile_diff_is_bounded() {
        // 4 MiB of identical lines, and a hunk of many of them that ends
        // in a line the file lacks: it nearly matches at every position.
        let base = b"a\n".repeat(2 << 20);
        let mut text = b"--- a/f\n+++ b/f\n@@ -1,2001 +1,2001 @@\n".to_vec();
        text.extend(b" a\n".repeat(2000));
        text.extend(b"-b\n+c\n");
        let patch = Patch::from_bytes(&text).unwrap();
        let err = apply(&base, &patch).unwrap_err();
        assert!(err.contains("gave up after comparing 64 MiB"), "{err}");
    }

    #[test]
    fn a_diff_that_changes_nothing_is_told_apart() {
        let same = Patch::from_bytes(b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-x\n+x\n").unwrap();
        assert!(changes_nothing(&same));
        let context_only = Patch::from_bytes(b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n x\n").unwrap();
        assert!(changes_nothing(&context_only));
        let real = Patch::from_bytes(b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-x\n+y\n").unwrap();
        assert!(!changes_nothing(&real));
    }
}
