//! Reading `playbooks.dir`: its `*.toml` files in lexical order, the
//! playbooks of each in file order. A missing directory is no playbook; a
//! bad file is an error naming the file, and the line and key when TOML
//! or a check can tell them.

use std::path::{Path, PathBuf};

use super::model::{Playbook, PlaybookFile};

/// The default `playbooks.dir`.
pub const DEFAULT_DIR: &str = "/etc/antibody/playbooks.d";

/// The largest playbook file read: a playbook is a few hundred bytes.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What went wrong, and in which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// Every playbook of `dir`, in the order they are tried.
pub fn load_dir(dir: &Path) -> Result<Vec<Playbook>, LoadError> {
    let error = |file: &Path, message: String| LoadError {
        file: file.to_path_buf(),
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error(dir, e.to_string())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| error(dir, e.to_string()))?;
        let name = entry.file_name();
        // Hidden files are editors' and package managers' leftovers.
        let visible = !name.as_encoded_bytes().starts_with(b".");
        if visible && name.as_encoded_bytes().ends_with(b".toml") {
            files.push(entry.path());
        }
    }
    files.sort();
    let mut playbooks: Vec<Playbook> = Vec::new();
    for file in files {
        for playbook in load_file(&file)? {
            if let Some(first) = playbooks.iter().find(|p| p.name == playbook.name) {
                return Err(error(
                    &file,
                    format!(
                        "playbook {:?} is already defined in {}",
                        playbook.name, first.file
                    ),
                ));
            }
            playbooks.push(playbook);
        }
    }
    Ok(playbooks)
}

/// The playbooks of one file.
pub fn load_file(file: &Path) -> Result<Vec<Playbook>, LoadError> {
    let error = |message: String| LoadError {
        file: file.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(file).map_err(|e| error(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(error(format!(
            "is {} bytes; a playbook file has at most {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(file).map_err(|e| error(e.to_string()))?;
    let parsed: PlaybookFile = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
    let shown = file.display().to_string();
    parsed
        .playbook
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.check(&shown, i).map_err(&error))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(name: &str) -> String {
        format!(
            "[[playbook]]\nname = \"{name}\"\n[[playbook.actions]]\ntype = \"notify_operator\"\nchannel = \"journal\"\nmessage = \"{name}\"\n"
        )
    }

    #[test]
    fn files_are_read_in_lexical_order_and_playbooks_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("20-b.toml"), book("third")).unwrap();
        std::fs::write(
            dir.path().join("10-a.toml"),
            format!("{}{}", book("first"), book("second")),
        )
        .unwrap();
        std::fs::write(dir.path().join("30-c.toml.dpkg-old"), book("ignored")).unwrap();
        std::fs::write(dir.path().join(".40-d.toml"), book("hidden")).unwrap();
        let names: Vec<String> = load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["first", "second", "third"]);
        assert_eq!(load_dir(&dir.path().join("missing")).unwrap(), vec![]);
    }

    #[test]
    fn a_bad_file_is_named_with_its_line_and_a_name_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-a.toml"), book("same")).unwrap();
        std::fs::write(dir.path().join("20-b.toml"), book("same")).unwrap();
        let twice = load_dir(dir.path()).unwrap_err();
        assert!(twice.file.ends_with("20-b.toml"), "{twice}");
        assert!(twice.message.contains("10-a.toml"), "{twice}");

        std::fs::write(
            dir.path().join("20-b.toml"),
            "[[playbook]]\nname = \"x\"\nsimulate = maybe\n",
        )
        .unwrap();
        let bad = load_dir(dir.path()).unwrap_err().to_string();
        assert!(bad.contains("20-b.toml") && bad.contains("line 3"), "{bad}");
    }
}
