//! Paths inside an [`FsTree`] resolved the way the kernel (and so dpkg)
//! resolves them on a real root: symlinks in parent components are
//! followed, `..` climbs, absolute targets restart at the tree root. The
//! walk is confined to the tree: climbing above the root or more than 40
//! symlink hops (a loop) is an error.

use std::collections::{BTreeMap, VecDeque};

use anyhow::{anyhow, bail, Context, Result};

use crate::tree::{ContentStore, FsTree, InodeId, InodeKind, Metadata};

const MAX_SYMLINKS: u32 = 40;

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A path resolved inside the tree: the real names from the root, and the
/// inode of the last one.
pub(crate) struct Resolved {
    pub(crate) names: Vec<Vec<u8>>,
    pub(crate) dirs: Vec<InodeId>,
}

impl Resolved {
    pub(crate) fn dir(&self, tree: &FsTree) -> InodeId {
        self.dirs.last().copied().unwrap_or(tree.root())
    }
    pub(crate) fn path(&self, last: &[u8]) -> Vec<u8> {
        let mut p = self.names.join(&b'/');
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(last);
        p
    }
}

/// Why a path did not resolve.
pub(crate) enum ResolveFail {
    /// Component `name` is missing in directory `dir`.
    Missing {
        dir: InodeId,
        name: Vec<u8>,
        path: Vec<u8>,
    },
    Other(String),
}

/// Resolves directory components, following symlinks like the kernel does
/// but confined to the tree. With `create`, missing directories are made.
pub(crate) fn resolve_dir(
    tree: &mut FsTree,
    comps: &[&[u8]],
    create: bool,
) -> Result<Resolved, String> {
    loop {
        match resolve_ro(tree, comps) {
            Ok(r) => return Ok(r),
            Err(ResolveFail::Missing { dir, name, .. }) if create => {
                let id = tree.add_inode(
                    InodeKind::Directory {
                        children: BTreeMap::new(),
                    },
                    Metadata::implicit_dir(),
                );
                tree.link(dir, name, id);
            }
            Err(ResolveFail::Missing { path, .. }) => {
                return Err(format!("{} does not exist", lossy(&path)))
            }
            Err(ResolveFail::Other(e)) => return Err(e),
        }
    }
}

pub(crate) fn resolve_ro(tree: &FsTree, comps: &[&[u8]]) -> Result<Resolved, ResolveFail> {
    let mut r = Resolved {
        names: Vec::new(),
        dirs: Vec::new(),
    };
    let mut queue: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
    let mut follows = 0;
    while let Some(c) = queue.pop_front() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if r.dirs.pop().is_none() {
                    return Err(ResolveFail::Other(
                        "a symlink on its path points above the image root".into(),
                    ));
                }
                r.names.pop();
                continue;
            }
            _ => {}
        }
        let cur = r.dir(tree);
        let Some(id) = tree.lookup(cur, &c) else {
            let path = r.path(&c);
            return Err(ResolveFail::Missing {
                dir: cur,
                name: c,
                path,
            });
        };
        match &tree.inode(id).kind {
            InodeKind::Directory { .. } => {
                r.names.push(c);
                r.dirs.push(id);
            }
            InodeKind::Symlink { target } => {
                follows += 1;
                if follows > MAX_SYMLINKS {
                    return Err(ResolveFail::Other(format!(
                        "too many levels of symlinks at {} (a loop?)",
                        lossy(&r.path(&c))
                    )));
                }
                if target.first() == Some(&b'/') {
                    r.names.clear();
                    r.dirs.clear();
                }
                for t in target.split(|&b| b == b'/').rev() {
                    queue.push_front(t.to_vec());
                }
            }
            other => {
                return Err(ResolveFail::Other(format!(
                    "{} is a {}, not a directory",
                    lossy(&r.path(&c)),
                    other.describe()
                )))
            }
        }
    }
    Ok(r)
}

pub(crate) fn split(p: &[u8]) -> Vec<&[u8]> {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

pub(crate) fn read_tree_file(
    tree: &FsTree,
    store: &ContentStore,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    let comps = split(path.as_bytes());
    let Some((name, parents)) = comps.split_last() else {
        return Ok(None);
    };
    let Ok(dir) = resolve_ro(tree, parents) else {
        return Ok(None);
    };
    match tree
        .lookup(dir.dir(tree), name)
        .map(|id| &tree.inode(id).kind)
    {
        Some(InodeKind::File { content }) => {
            Ok(Some(store.read_all(content).with_context(|| {
                format!("reading /{path} of the image")
            })?))
        }
        _ => Ok(None),
    }
}

pub(crate) fn write_tree_file(
    tree: &mut FsTree,
    store: &mut ContentStore,
    path: &str,
    data: &[u8],
    mode: u16,
    mtime: i64,
) -> Result<()> {
    let comps = split(path.as_bytes());
    let (name, parents) = comps.split_last().ok_or_else(|| anyhow!("empty path"))?;
    let dir = resolve_dir(tree, parents, true).map_err(|e| anyhow!("writing /{path}: {e}"))?;
    let dir = dir.dir(tree);
    if let Some(id) = tree.lookup(dir, name) {
        if tree.inode(id).kind.is_dir() {
            bail!("writing /{path}: the image has a directory there");
        }
        tree.unlink(dir, name);
    }
    let content = store
        .append(data)
        .with_context(|| format!("storing /{path}"))?;
    let id = tree.add_inode(
        InodeKind::File { content },
        Metadata::new(mode, 0, 0, mtime),
    );
    tree.link(dir, name.to_vec(), id);
    Ok(())
}
