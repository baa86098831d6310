//! Output files and directories written under temporary names next to
//! their destination and renamed into place only when the whole command
//! succeeded; dropped without [`Staging::commit`], they are removed. A
//! failed build therefore never leaves a partial file or directory that
//! looks like a result.

use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::cache::hash_file;
use crate::oci::Digest;

/// One file (or directory) a command wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    /// What the file is: `squashfs`, `disk`, `iso`, `upgrade`, `lock`, ...
    pub format: String,
    pub path: PathBuf,
    /// Bytes; for a directory, what its writer says it holds (an upgrade
    /// layout: the sum of its blobs).
    pub size: u64,
    /// `sha256:<hex>`, as every digest this tool prints; for a directory,
    /// the digest that identifies it (an upgrade layout: its manifest's).
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

/// A handle to a staged file or directory, returned by
/// [`Staging::create`] and [`Staging::create_dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged(usize);

enum Tmp {
    File(tempfile::NamedTempFile),
    Dir(tempfile::TempDir),
}

struct Entry {
    tmp: Tmp,
    dest: PathBuf,
    format: &'static str,
    /// Permissions the result gets (files; directories get 0755).
    mode: u32,
    /// Refuse to replace an existing `dest`.
    no_clobber: bool,
    /// Digest and size, once known: a file's hash (computed once), a
    /// directory's summary (set by its writer).
    summary: Option<(Digest, u64)>,
}

/// Files and directories being written, in the order they were created.
#[derive(Default)]
pub struct Staging {
    files: Vec<Entry>,
}

fn temp_dir_of(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl Staging {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new empty temporary file in `dest`'s directory that becomes `dest`
    /// on [`commit`](Self::commit).
    pub fn create(&mut self, dest: &Path, format: &'static str) -> Result<Staged> {
        let dir = temp_dir_of(dest);
        let tmp = tempfile::Builder::new()
            .prefix(".build-image-")
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        self.push(Tmp::File(tmp), dest, format)
    }

    /// Like [`create`](Self::create) for a file that must not replace an
    /// existing one and gets `mode` (a private key: 0600).
    pub fn create_new(&mut self, dest: &Path, format: &'static str, mode: u32) -> Result<Staged> {
        let s = self.create(dest, format)?;
        let e = &mut self.files[s.0];
        e.mode = mode;
        e.no_clobber = true;
        Ok(s)
    }

    /// A new empty temporary directory in `dest`'s parent that becomes
    /// `dest` on [`commit`](Self::commit), replacing a directory of that
    /// name in one step (the old one is removed after).
    pub fn create_dir(&mut self, dest: &Path, format: &'static str) -> Result<Staged> {
        let dir = temp_dir_of(dest);
        let tmp = tempfile::Builder::new()
            .prefix(".build-image-")
            .suffix(".partial")
            .tempdir_in(dir)
            .with_context(|| format!("creating a temporary directory in {}", dir.display()))?;
        self.push(Tmp::Dir(tmp), dest, format)
    }

    fn push(&mut self, tmp: Tmp, dest: &Path, format: &'static str) -> Result<Staged> {
        self.files.push(Entry {
            tmp,
            dest: dest.to_path_buf(),
            format,
            mode: 0o644,
            no_clobber: false,
            summary: None,
        });
        Ok(Staged(self.files.len() - 1))
    }

    fn named(&self, s: Staged) -> &tempfile::NamedTempFile {
        match &self.files[s.0].tmp {
            Tmp::File(f) => f,
            Tmp::Dir(_) => panic!("staged {} is a directory", self.files[s.0].dest.display()),
        }
    }

    pub fn file(&mut self, s: Staged) -> &mut File {
        let e = &mut self.files[s.0];
        e.summary = None;
        match &mut e.tmp {
            Tmp::File(f) => f.as_file_mut(),
            Tmp::Dir(_) => panic!("staged {} is a directory", e.dest.display()),
        }
    }

    /// The temporary file's or directory's path (for readers and writers
    /// that want a path).
    pub fn temp_path(&self, s: Staged) -> &Path {
        match &self.files[s.0].tmp {
            Tmp::File(f) => f.path(),
            Tmp::Dir(d) => d.path(),
        }
    }

    /// Another handle to the staged file.
    pub fn reopen(&self, s: Staged) -> Result<File> {
        self.named(s)
            .reopen()
            .with_context(|| format!("reopening the staged {}", self.files[s.0].dest.display()))
    }

    /// The current length of a staged file.
    pub fn len(&mut self, s: Staged) -> Result<u64> {
        let f = self.named(s);
        Ok(f.as_file()
            .metadata()
            .with_context(|| format!("reading the size of {}", f.path().display()))?
            .len())
    }

    /// The digest and length of a finished staged file, computed once (the
    /// artifact list reuses it).
    pub fn digest(&mut self, s: Staged) -> Result<(Digest, u64)> {
        if let Some(d) = &self.files[s.0].summary {
            return Ok(d.clone());
        }
        let d = hash_file(self.named(s).path())?;
        self.files[s.0].summary = Some(d.clone());
        Ok(d)
    }

    /// What the artifact list says of a staged directory: the digest that
    /// identifies it and its size.
    pub fn set_summary(&mut self, s: Staged, digest: Digest, size: u64) {
        self.files[s.0].summary = Some((digest, size));
    }

    /// Gives every result its permissions (temporary files are created
    /// 0600, directories 0700), syncs it and renames it into place;
    /// returns the artifacts with their sizes and digests, in creation
    /// order.
    pub fn commit(self) -> Result<Vec<Artifact>> {
        let mut done = Vec::new();
        for e in self.files {
            let summary = match e.tmp {
                Tmp::File(tmp) => {
                    std::fs::set_permissions(tmp.path(), Permissions::from_mode(e.mode))
                        .with_context(|| {
                            format!("setting permissions of {}", tmp.path().display())
                        })?;
                    tmp.as_file()
                        .sync_all()
                        .with_context(|| format!("syncing {}", e.dest.display()))?;
                    if e.no_clobber {
                        tmp.persist_noclobber(&e.dest).map_err(|err| {
                            anyhow!(err.error).context(format!(
                                "{} exists already; not replacing it",
                                e.dest.display()
                            ))
                        })?;
                    } else {
                        tmp.persist(&e.dest).with_context(|| {
                            format!("moving the result to {}", e.dest.display())
                        })?;
                    }
                    e.summary
                }
                Tmp::Dir(tmp) => {
                    sync_tree(tmp.path())
                        .with_context(|| format!("syncing {}", e.dest.display()))?;
                    std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o755))
                        .with_context(|| {
                            format!("setting permissions of {}", tmp.path().display())
                        })?;
                    let path = tmp.keep();
                    replace_dir(&path, &e.dest).inspect_err(|_| {
                        let _ = std::fs::remove_dir_all(&path);
                    })?;
                    Some(e.summary.ok_or_else(|| {
                        anyhow!("{}: directory written without a summary", e.dest.display())
                    })?)
                }
            };
            done.push((e.format, e.dest, summary));
        }
        if let Some((_, dest, _)) = done.first() {
            sync_dir(temp_dir_of(dest))?;
        }
        done.into_iter()
            .map(|(format, path, summary)| {
                let (digest, size) = match summary {
                    Some(s) => s,
                    None => hash_file(&path)?,
                };
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

/// fsyncs every file and directory under `dir`, then `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", p.display()))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Renames directory `new` to `dest`. An existing `dest` is swapped out
/// atomically (`RENAME_EXCHANGE`; where the filesystem lacks it, moved
/// aside first) and removed, so `dest` is at every moment either the old
/// result or the new one, never a mix.
fn replace_dir(new: &Path, dest: &Path) -> Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let moving = || format!("moving the result to {}", dest.display());
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::rename(new, dest).with_context(moving);
        }
        Err(e) => return Err(e).with_context(moving),
        Ok(m) if !m.is_dir() => bail!(
            "{} exists and is not a directory; not replacing it",
            dest.display()
        ),
        Ok(_) => {}
    }
    let old = match renameat_with(CWD, new, CWD, dest, RenameFlags::EXCHANGE) {
        // `new` now names the old directory.
        Ok(()) => new.to_path_buf(),
        Err(_) => {
            let aside = new.with_extension("old");
            std::fs::rename(dest, &aside).with_context(moving)?;
            std::fs::rename(new, dest).with_context(moving)?;
            aside
        }
    };
    std::fs::remove_dir_all(&old).with_context(|| {
        format!(
            "removing the previous {} (now {})",
            dest.display(),
            old.display()
        )
    })
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
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn a_directory_appears_whole_and_replaces_the_previous_one() {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("x.upgrade");
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // Dropped: nothing left.
        {
            let mut s = Staging::new();
            let d = s.create_dir(&dest, "upgrade").unwrap();
            std::fs::write(s.temp_path(d).join("index.json"), "{}").unwrap();
        }
        assert!(names(out.path()).is_empty());

        for (round, file) in [(1, "one"), (2, "two")] {
            let mut s = Staging::new();
            let d = s.create_dir(&dest, "upgrade").unwrap();
            std::fs::create_dir(s.temp_path(d).join("blobs")).unwrap();
            std::fs::write(s.temp_path(d).join("blobs").join(file), "x").unwrap();
            let digest = Digest::of(file.as_bytes());
            s.set_summary(d, digest.clone(), round);
            let arts = s.commit().unwrap();
            assert_eq!(arts[0].format, "upgrade");
            assert_eq!(arts[0].digest, digest);
            assert_eq!(arts[0].size, round);
            // Only the new content; no temporary or old directory left.
            assert_eq!(names(out.path()), ["x.upgrade"]);
            assert_eq!(names(&dest.join("blobs")), [file]);
            let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        // A file of that name is not replaced by a directory.
        let file_dest = out.path().join("f.upgrade");
        std::fs::write(&file_dest, "keep").unwrap();
        let mut s = Staging::new();
        let d = s.create_dir(&file_dest, "upgrade").unwrap();
        s.set_summary(d, Digest::of(b""), 0);
        let e = s.commit().unwrap_err();
        assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&file_dest).unwrap(), "keep");
        assert_eq!(names(out.path()), ["f.upgrade", "x.upgrade"]);
    }

    #[test]
    fn create_new_keeps_its_mode_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("k.key");
        let mut s = Staging::new();
        let f = s.create_new(&dest, "private-key", 0o600).unwrap();
        s.file(f).write_all(b"secret").unwrap();
        s.commit().unwrap();
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut s = Staging::new();
        let f = s.create_new(&dest, "private-key", 0o600).unwrap();
        s.file(f).write_all(b"other").unwrap();
        let e = s.commit().unwrap_err();
        assert!(format!("{e:#}").contains("exists already"), "{e:#}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"secret");
    }

    #[test]
    fn a_files_digest_is_computed_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staging::new();
        let f = s
            .create(&dir.path().join("r.squashfs"), "squashfs")
            .unwrap();
        s.file(f).write_all(b"abc").unwrap();
        let (d, n) = s.digest(f).unwrap();
        assert_eq!((d.clone(), n), (Digest::of(b"abc"), 3));
        assert_eq!(s.len(f).unwrap(), 3);
        let arts = s.commit().unwrap();
        assert_eq!(arts[0].digest, d);
    }
}
