//! File helpers: paths inside the target root, and crash-safe writes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

/// The root directory the agent works on: `/` on a device, a directory
/// tree in tests (`--root DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root(dir.into())
    }

    /// Whether this is the running system's `/`.
    pub fn is_host(&self) -> bool {
        self.0 == Path::new("/")
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `abs` (an absolute path on the device) inside this root.
    pub fn join(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        let rel = abs.strip_prefix("/").unwrap_or(abs);
        self.0.join(rel)
    }
}

pub use node_config::check_abs_path;

/// Reads a file that may be missing.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Ownership and mode to give a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Owner {
    /// root:root with `mode`.
    pub const fn root(mode: u32) -> Owner {
        Owner {
            uid: 0,
            gid: 0,
            mode,
        }
    }
}

/// Writes `data` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over `path`, fsync of the directory. With
/// `owner` None, an existing file's owner and mode are kept (0644 root for
/// a new one). Skips the write when the file already has exactly this
/// content, owner and mode.
pub fn write_atomic(path: &Path, data: &[u8], owner: Option<Owner>) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| crate::error::Error::msg(format!("{} has no parent", path.display())))?;
    let existing = fs::symlink_metadata(path).ok();
    let owner = owner.unwrap_or(match &existing {
        Some(m) if m.is_file() => Owner {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        },
        _ => Owner {
            uid: 0,
            gid: 0,
            mode: 0o644,
        },
    });
    if let Some(m) = &existing {
        if m.is_file()
            && m.uid() == owner.uid
            && m.gid() == owner.gid
            && m.mode() & 0o7777 == owner.mode
            && m.len() == data.len() as u64
            && fs::read(path).map(|d| d == data).unwrap_or(false)
        {
            return Ok(());
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.os-agent.tmp"));
    let write = || -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        // Restrictive until owner and mode are set, so secrets never sit
        // world-readable.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        std::os::unix::fs::fchown(&f, Some(owner.uid), Some(owner.gid))?;
        f.set_permissions(fs::Permissions::from_mode(owner.mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates `dir` and its missing parents (0755 root).
pub fn create_dirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))
}

/// Creates the file `path` empty if it does not exist.
pub fn touch(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    write_atomic(path, b"", None)
}

/// Removes `path` if it exists.
pub fn remove_optional(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(check_abs_path("/etc/motd").is_ok());
        assert!(check_abs_path("etc/motd").is_err());
        assert!(check_abs_path("/etc/../shadow").is_err());
        assert!(check_abs_path("/etc/./x").is_err());
        assert!(check_abs_path("/").is_err());
        assert!(check_abs_path("/etc/").is_err());
        let r = Root::new("/tmp/x");
        assert_eq!(r.join("/etc/passwd"), Path::new("/tmp/x/etc/passwd"));
        assert!(Root::new("/").is_host());
    }

    #[test]
    fn atomic_write_sets_mode_and_keeps_existing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let me = Owner {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            mode: 0o640,
        };
        write_atomic(&p, b"one", Some(me)).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        write_atomic(&p, b"two", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
