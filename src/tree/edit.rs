//! Small edits of an image tree by path, resolved the way the kernel
//! resolves them on the device (symlinks in parent components followed,
//! confined to the tree), so `/lib/...` lands in `/usr/lib/...` on a
//! merged-/usr system.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};

use crate::tree::paths::{lossy, resolve_dir, resolve_ro, split};
use crate::tree::{ContentStore, FsTree, InodeId, InodeKind, Metadata};

/// A tree and the store its file contents live in, with the mtime new
/// entries get.
pub struct Editor<'a> {
    pub tree: &'a mut FsTree,
    pub store: &'a mut ContentStore,
    pub mtime: i64,
}

impl Editor<'_> {
    fn parent(&mut self, path: &str, create: bool) -> Result<(InodeId, Vec<u8>)> {
        let comps = split(path.as_bytes());
        let (name, parents) = comps
            .split_last()
            .ok_or_else(|| anyhow!("{path:?}: empty path"))?;
        let dir = resolve_dir(self.tree, parents, create).map_err(|e| anyhow!("/{path}: {e}"))?;
        Ok((dir.dir(self.tree), name.to_vec()))
    }

    /// The inode at `path` (the last component is not followed).
    pub fn lookup(&self, path: &str) -> Option<InodeId> {
        let comps = split(path.as_bytes());
        let (name, parents) = comps.split_last()?;
        let dir = resolve_ro(self.tree, parents).ok()?;
        self.tree.lookup(dir.dir(self.tree), name)
    }

    pub fn exists(&self, path: &str) -> bool {
        self.lookup(path).is_some()
    }

    /// The contents of a regular file, or `None` if there is none there.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        crate::tree::paths::read_tree_file(self.tree, self.store, path)
    }

    pub fn read_string(&self, path: &str) -> Result<Option<String>> {
        match self.read(path)? {
            Some(b) => Ok(Some(
                String::from_utf8(b).with_context(|| format!("/{path}: not UTF-8"))?,
            )),
            None => Ok(None),
        }
    }

    /// Writes a regular file, replacing a file or symlink already there.
    pub fn write(&mut self, path: &str, data: &[u8], mode: u16) -> Result<()> {
        crate::tree::paths::write_tree_file(self.tree, self.store, path, data, mode, self.mtime)
    }

    /// Makes `path` a symlink to `target`, replacing a file or symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let (dir, name) = self.parent(path, true)?;
        if let Some(id) = self.tree.lookup(dir, &name) {
            if self.tree.inode(id).kind.is_dir() {
                bail!("/{path}: the image has a directory there, expected room for a symlink");
            }
            self.tree.unlink(dir, &name);
        }
        let id = self.tree.add_inode(
            InodeKind::Symlink {
                target: target.as_bytes().to_vec(),
            },
            Metadata::new(0o777, 0, 0, self.mtime),
        );
        self.tree.link(dir, name, id);
        Ok(())
    }

    /// Creates a directory and its parents (existing ones are kept).
    pub fn mkdir(&mut self, path: &str, mode: u16) -> Result<()> {
        let (dir, name) = self.parent(path, true)?;
        match self.tree.lookup(dir, &name) {
            Some(id) if self.tree.inode(id).kind.is_dir() => Ok(()),
            Some(id) if matches!(self.tree.inode(id).kind, InodeKind::Symlink { .. }) => {
                // A symlink to a directory (e.g. /lib -> usr/lib) will do.
                resolve_dir(self.tree, &split(path.as_bytes()), false)
                    .map(|_| ())
                    .map_err(|e| anyhow!("/{path}: {e}"))
            }
            Some(id) => bail!(
                "/{path}: the image has a {} there, expected a directory",
                self.tree.inode(id).kind.describe()
            ),
            None => {
                let id = self.tree.add_inode(
                    InodeKind::Directory {
                        children: BTreeMap::new(),
                    },
                    Metadata::new(mode, 0, 0, self.mtime),
                );
                self.tree.link(dir, name, id);
                Ok(())
            }
        }
    }

    /// Removes the entry at `path` (anything, directories with their
    /// contents); true if there was one.
    pub fn remove(&mut self, path: &str) -> Result<bool> {
        let comps = split(path.as_bytes());
        let Some((name, parents)) = comps.split_last() else {
            return Ok(false);
        };
        let Ok(dir) = resolve_ro(self.tree, parents) else {
            return Ok(false);
        };
        let dir = dir.dir(self.tree);
        Ok(self.tree.unlink(dir, name).is_some())
    }

    /// Names in the directory at `path` (following symlinks), sorted;
    /// empty if there is no directory there.
    pub fn list(&self, path: &str) -> Vec<String> {
        let comps = split(path.as_bytes());
        let Ok(r) = resolve_ro(self.tree, &comps) else {
            return Vec::new();
        };
        let dir = r.dir(self.tree);
        if !self.tree.inode(dir).kind.is_dir() {
            return Vec::new();
        }
        self.tree.children(dir).map(|(n, _)| lossy(n)).collect()
    }

    /// The inode `path` leads to with every symlink followed, the last
    /// component's too (within the tree); `None` if nothing is there or a
    /// link dangles; an error when links loop.
    pub fn lookup_following(&self, path: &str) -> Result<Option<InodeId>> {
        let mut p = path.trim_start_matches('/').to_string();
        for _ in 0..40 {
            if p.trim_matches('/').is_empty() {
                return Ok(Some(self.tree.root()));
            }
            let Some(id) = self.lookup(&p) else {
                return Ok(None);
            };
            let InodeKind::Symlink { target } = &self.tree.inode(id).kind else {
                return Ok(Some(id));
            };
            let t = lossy(target);
            p = if t.starts_with('/') {
                t.trim_start_matches('/').to_string()
            } else {
                let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
                format!("{dir}/{t}")
            };
        }
        bail!("/{path}: too many levels of symlinks")
    }

    /// The contents of the regular file at `path`, following a final
    /// symlink within the tree; `None` if there is none.
    pub fn read_following(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(id) = self.lookup_following(path)? else {
            return Ok(None);
        };
        match &self.tree.inode(id).kind {
            InodeKind::File { content } => {
                Ok(Some(self.store.read_all(content).with_context(|| {
                    format!("reading /{path} of the image")
                })?))
            }
            _ => Ok(None),
        }
    }
}

/// An empty tree with its content store in a temporary directory, for
/// tests that edit one.
#[cfg(test)]
pub(crate) struct Scratch {
    pub tree: FsTree,
    pub store: ContentStore,
    _dir: tempfile::TempDir,
}

#[cfg(test)]
impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        Scratch {
            tree: FsTree::new(),
            store: ContentStore::new_in(dir.path()).unwrap(),
            _dir: dir,
        }
    }

    pub fn editor(&mut self) -> Editor<'_> {
        Editor {
            tree: &mut self.tree,
            store: &mut self.store,
            mtime: 0,
        }
    }
}

impl Editor<'_> {
    /// Sets the permission bits (with setuid/setgid/sticky) of the entry
    /// at `path`.
    pub fn chmod(&mut self, path: &str, mode: u16) -> Result<()> {
        let id = self
            .lookup(path)
            .ok_or_else(|| anyhow!("/{path}: not in the image"))?;
        self.tree.inode_mut(id).meta.mode = mode & 0o7777;
        Ok(())
    }

    /// Sets owner and group of the entry at `path`.
    pub fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        let id = self
            .lookup(path)
            .ok_or_else(|| anyhow!("/{path}: not in the image"))?;
        let m = &mut self.tree.inode_mut(id).meta;
        m.uid = uid;
        m.gid = gid;
        Ok(())
    }
}
