//! The factory reset `os-agent reset` asks for with the marker
//! [`persist::RESET_MARKER`] at the root of `persist`: everything on
//! `persist` goes, except (with `keep-config`) [`persist::KEEP_ON_RESET`].
//!
//! Power-cut safe: every step can be cut short and is done again whole at
//! the next boot, because the marker goes last.
//! 1. `keep-config`: the kept files are copied to `reset.keep.tmp`, synced
//!    and renamed to [`persist::RESET_KEEP_DIR`] (skipped when that exists:
//!    a cut-off earlier run made it, and what is on `persist` now may be
//!    half deleted);
//! 2. everything but the marker, the keep directory and `lost+found` is
//!    removed, and synced;
//! 3. the kept files are copied back (copies, not moves: a cut here leaves
//!    the keep directory whole for step 2 and 3 again), synced;
//! 4. the keep directory, then the marker, are removed, synced.

use std::fs;
use std::path::Path;

use boot_contract::persist;

use super::fs::{copy_tree, make_dir_like};
use crate::Result;
use crate::{Context, Error};

fn sync() {
    rustix::fs::sync();
}

fn remove(p: &Path) -> Result<()> {
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::msg(format!("reading {}: {e}", p.display()))),
    };
    if m.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    }
    .with_context(|| format!("removing {}", p.display()))
}

/// Creates the missing parents of `mount/rel` like the root's directories
/// of the same path below `state/` (the image's `/var/lib/...`), 0755
/// root's otherwise.
fn make_parents(mount: &Path, rel: &str) -> Result<()> {
    let mut at = mount.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        at.push(part);
        if !at.exists() {
            let like = format!("/{}", parts[1..=i].join("/"));
            make_dir_like(&at, Path::new(&like))?;
        }
    }
    Ok(())
}

/// Carries out a reset requested on the `persist` mounted at `mount`.
/// Returns what was done (`all` or `keep-config`), None when no reset was
/// asked for.
pub fn apply(mount: &Path) -> Result<Option<&'static str>> {
    let marker = mount.join(persist::RESET_MARKER);
    let what = match fs::read_to_string(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::msg(format!("reading {}: {e}", marker.display()))),
    };
    let keep = match what.trim() {
        persist::RESET_KEEP_CONFIG => true,
        persist::RESET_ALL => false,
        other => {
            return Err(Error::msg(format!(
                "{}: unknown reset request {other:?} (expected {} or {}); remove the file to boot without a reset",
                marker.display(),
                persist::RESET_ALL,
                persist::RESET_KEEP_CONFIG
            )))
        }
    };
    let keep_dir = mount.join(persist::RESET_KEEP_DIR);
    if keep && !keep_dir.exists() {
        let tmp = mount.join(format!("{}.tmp", persist::RESET_KEEP_DIR));
        remove(&tmp)?;
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for rel in persist::KEEP_ON_RESET {
            let from = mount.join(rel);
            if fs::symlink_metadata(&from).is_ok() {
                let to = tmp.join(rel);
                fs::create_dir_all(to.parent().expect("a relative path with a parent"))
                    .with_context(|| format!("creating the parent of {}", to.display()))?;
                copy_tree(&from, &to)?;
            }
        }
        sync();
        fs::rename(&tmp, &keep_dir).map_err(|e| {
            Error::msg(format!(
                "renaming {} to {}: {e}",
                tmp.display(),
                keep_dir.display()
            ))
        })?;
        sync();
    }
    let entries = fs::read_dir(mount).with_context(|| format!("listing {}", mount.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", mount.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == persist::RESET_MARKER
            || (keep && name == persist::RESET_KEEP_DIR)
            || name == "lost+found"
        {
            continue;
        }
        remove(&entry.path())?;
    }
    sync();
    if keep {
        for rel in persist::KEEP_ON_RESET {
            let from = keep_dir.join(rel);
            if fs::symlink_metadata(&from).is_ok() {
                make_parents(mount, rel)?;
                copy_tree(&from, &mount.join(rel))?;
            }
        }
        sync();
    }
    remove(&keep_dir)?;
    sync();
    fs::remove_file(&marker)
        .map_err(|e| Error::msg(format!("removing {}: {e}", marker.display())))?;
    sync();
    Ok(Some(if keep {
        persist::RESET_KEEP_CONFIG
    } else {
        persist::RESET_ALL
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn filled(d: &Path, marker: &str) {
        put(&d.join("machine-id"), "0123\n");
        put(
            &d.join("state/var/lib/os-agent/config.yaml"),
            "hostname: kept\n",
        );
        put(&d.join("state/var/lib/os-agent/state.json"), "{}\n");
        put(
            &d.join("state/var/lib/os-agent/ssh/ssh_host_ed25519_key"),
            "KEY\n",
        );
        put(&d.join("state/var/log/syslog"), "old\n");
        put(&d.join("state/root/.bash_history"), "ls\n");
        fs::create_dir_all(d.join("lost+found")).unwrap();
        if !marker.is_empty() {
            put(&d.join(persist::RESET_MARKER), marker);
        }
    }

    fn listing(d: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![d.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap().path();
                if e.is_dir() {
                    stack.push(e.clone());
                } else {
                    out.push(e.strip_prefix(d).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn without_a_marker_nothing_happens() {
        let d = tempfile::tempdir().unwrap();
        filled(d.path(), "");
        let before = listing(d.path());
        assert_eq!(apply(d.path()).unwrap(), None);
        assert_eq!(listing(d.path()), before);
    }

    #[test]
    fn a_reset_empties_persist() {
        let d = tempfile::tempdir().unwrap();
        filled(d.path(), "all\n");
        assert_eq!(apply(d.path()).unwrap(), Some("all"));
        assert!(listing(d.path()).is_empty(), "{:?}", listing(d.path()));
        assert!(d.path().join("lost+found").is_dir());
        assert_eq!(apply(d.path()).unwrap(), None);
    }

    #[test]
    fn keep_config_keeps_the_config_and_host_keys_only() {
        let d = tempfile::tempdir().unwrap();
        filled(d.path(), "keep-config\n");
        assert_eq!(apply(d.path()).unwrap(), Some("keep-config"));
        assert_eq!(
            listing(d.path()),
            [
                "state/var/lib/os-agent/config.yaml",
                "state/var/lib/os-agent/ssh/ssh_host_ed25519_key"
            ]
        );
        let cfg = fs::read_to_string(d.path().join("state/var/lib/os-agent/config.yaml"));
        assert_eq!(cfg.unwrap(), "hostname: kept\n");
    }

    #[test]
    fn a_run_cut_short_anywhere_finishes_at_the_next_boot() {
        // Cut after the keep directory was made and persist half emptied,
        // with a half restored file: the next run completes from the keep
        // directory.
        let d = tempfile::tempdir().unwrap();
        filled(d.path(), "keep-config\n");
        let keep = d.path().join(persist::RESET_KEEP_DIR);
        put(
            &keep.join("state/var/lib/os-agent/config.yaml"),
            "hostname: kept\n",
        );
        put(
            &keep.join("state/var/lib/os-agent/ssh/ssh_host_ed25519_key"),
            "KEY\n",
        );
        put(
            &d.path().join("state/var/lib/os-agent/config.yaml"),
            "hostn",
        );
        fs::remove_file(d.path().join("machine-id")).unwrap();
        assert_eq!(apply(d.path()).unwrap(), Some("keep-config"));
        assert_eq!(listing(d.path()).len(), 2);
        let cfg = fs::read_to_string(d.path().join("state/var/lib/os-agent/config.yaml"));
        assert_eq!(cfg.unwrap(), "hostname: kept\n");
        // Cut after the keep directory went, before the marker did: the
        // restored files are kept again.
        put(&d.path().join(persist::RESET_MARKER), "keep-config\n");
        assert_eq!(apply(d.path()).unwrap(), Some("keep-config"));
        assert_eq!(listing(d.path()).len(), 2);
        // A marker nobody wrote is refused, and nothing is removed.
        put(&d.path().join(persist::RESET_MARKER), "everything\n");
        assert!(apply(d.path())
            .unwrap_err()
            .to_string()
            .contains("unknown reset request"));
        assert_eq!(listing(d.path()).len(), 3);
    }
}
