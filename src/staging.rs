//! Output files written under temporary names next to their destination
//! and renamed into place only when the whole command succeeded; dropped
//! without [`Staging::commit`], they are removed. A failed build therefore
//! never leaves a partial file that looks like a result.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cache::hash_file;
use crate::oci::Digest;

/// One file a command wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    /// What the file is: `squashfs`, `disk`, `iso`, `lock`, ...
    pub format: String,
    pub path: PathBuf,
    pub size: u64,
    /// `sha256:<hex>`, as every digest this tool prints.
    pub digest: Digest,
}

impl Artifact {
    /// `PATH  SIZE  sha256:…`, the line commands print for a result.
    pub fn line(&self) -> String {
        format!(
            "{}  {}  {}",
            self.path.display(),
            indicatif::HumanBytes(self.size),
            self.digest
        )
    }
}

/// A handle to a staged file, returned by [`Staging::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged(usize);

struct Entry {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    format: &'static str,
}

/// Files being written, in the order they were created.
#[derive(Default)]
pub struct Staging {
    files: Vec<Entry>,
}

impl Staging {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new empty temporary file in `dest`'s directory that becomes `dest`
    /// on [`commit`](Self::commit).
    pub fn create(&mut self, dest: &Path, format: &'static str) -> Result<Staged> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".build-image-")
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        self.files.push(Entry {
            tmp,
            dest: dest.to_path_buf(),
            format,
        });
        Ok(Staged(self.files.len() - 1))
    }

    pub fn file(&mut self, s: Staged) -> &mut File {
        self.files[s.0].tmp.as_file_mut()
    }

    /// The temporary file's path (for readers that want a path).
    pub fn temp_path(&self, s: Staged) -> &Path {
        self.files[s.0].tmp.path()
    }

    /// Another handle to the staged file.
    pub fn reopen(&self, s: Staged) -> Result<File> {
        self.files[s.0]
            .tmp
            .reopen()
            .with_context(|| format!("reopening the staged {}", self.files[s.0].dest.display()))
    }

    /// The current length of a staged file.
    pub fn len(&mut self, s: Staged) -> Result<u64> {
        Ok(self.file(s).seek(SeekFrom::End(0))?)
    }

    /// Makes every file readable by all (temporary files are created
    /// 0600), syncs it and renames it into place; returns the artifacts
    /// with their sizes and digests, in creation order.
    pub fn commit(self) -> Result<Vec<Artifact>> {
        let mut done = Vec::new();
        for e in self.files {
            std::fs::set_permissions(
                e.tmp.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .with_context(|| format!("setting permissions of {}", e.tmp.path().display()))?;
            e.tmp
                .as_file()
                .sync_all()
                .with_context(|| format!("syncing {}", e.dest.display()))?;
            e.tmp
                .persist(&e.dest)
                .with_context(|| format!("moving the result to {}", e.dest.display()))?;
            done.push((e.format, e.dest));
        }
        done.into_iter()
            .map(|(format, path)| {
                let (digest, size) = hash_file(&path)?;
                Ok(Artifact {
                    format: format.to_string(),
                    path,
                    size,
                    digest,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_is_left_without_commit_and_everything_appears_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.raw");
        {
            let mut s = Staging::new();
            let f = s.create(&dest, "disk").unwrap();
            s.file(f).write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut s = Staging::new();
        let f = s.create(&dest, "disk").unwrap();
        s.file(f).write_all(b"abc").unwrap();
        assert_eq!(s.len(f).unwrap(), 3);
        let arts = s.commit().unwrap();
        assert_eq!(arts.len(), 1);
        assert_eq!(arts[0].size, 3);
        assert_eq!(
            arts[0].digest.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
