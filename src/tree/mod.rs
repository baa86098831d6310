//! The in-memory description of a root filesystem.
//!
//! An [`FsTree`] holds only metadata: paths, kinds, modes, owners, times,
//! xattrs and, for regular files, a [`ContentRef`] into a [`ContentStore`]
//! (a spool file holding file contents back to back). Memory therefore grows
//! with the number of entries, not with the size of the files.
//!
//! Hardlinks are directory entries that share one [`InodeId`]. Directory
//! children are kept in a `BTreeMap` keyed by the raw name bytes, which is
//! exactly the order SquashFS and reproducible cpio archives need.

mod content;
pub mod edit;
pub mod guard;
mod merge;
pub(crate) mod paths;

pub use content::{AppendError, ContentRef, ContentStore};
pub use merge::{
    header_id, header_mtime, merge_layer, LayerError, LayerErrorKind, LayerSource, MergeStats,
};

use std::collections::BTreeMap;

/// Index of an inode in [`FsTree::inodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId(pub u32);

/// Ownership, permissions, time and extended attributes of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits including setuid (0o4000), setgid (0o2000) and
    /// sticky (0o1000); never the file-type bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, sorted by full name (`security.capability`, …).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Metadata {
    pub fn new(mode: u16, uid: u32, gid: u32, mtime: i64) -> Self {
        Metadata {
            mode: mode & 0o7777,
            uid,
            gid,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }

    /// The metadata of a directory that a layer implies but never lists.
    pub fn implicit_dir() -> Self {
        Metadata::new(0o755, 0, 0, 0)
    }
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InodeKind {
    Directory {
        /// Name (raw bytes, no `/`) to child inode.
        children: BTreeMap<Vec<u8>, InodeId>,
    },
    File {
        content: ContentRef,
    },
    Symlink {
        /// Stored exactly as the layer gave it; absolute targets stay absolute.
        target: Vec<u8>,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

impl InodeKind {
    pub fn is_dir(&self) -> bool {
        matches!(self, InodeKind::Directory { .. })
    }

    /// A short name for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            InodeKind::Directory { .. } => "directory",
            InodeKind::File { .. } => "regular file",
            InodeKind::Symlink { .. } => "symlink",
            InodeKind::CharDevice { .. } => "character device",
            InodeKind::BlockDevice { .. } => "block device",
            InodeKind::Fifo => "fifo",
            InodeKind::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub kind: InodeKind,
    pub meta: Metadata,
    /// Number of directory entries that refer to this inode. For directories
    /// this is the POSIX count: 2 + number of child directories.
    pub nlink: u32,
}

/// A whole filesystem tree. Inode 0 is always the root directory.
#[derive(Debug, Clone)]
pub struct FsTree {
    inodes: Vec<Inode>,
}

impl Default for FsTree {
    fn default() -> Self {
        Self::new()
    }
}

impl FsTree {
    /// An empty tree: a root directory owned by root, mode 0755.
    pub fn new() -> Self {
        FsTree {
            inodes: vec![Inode {
                kind: InodeKind::Directory {
                    children: BTreeMap::new(),
                },
                meta: Metadata::implicit_dir(),
                nlink: 2,
            }],
        }
    }

    pub fn root(&self) -> InodeId {
        InodeId(0)
    }

    pub fn inode(&self, id: InodeId) -> &Inode {
        &self.inodes[id.0 as usize]
    }

    pub fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        &mut self.inodes[id.0 as usize]
    }

    /// Number of inode slots, including unreachable ones left behind by
    /// deletions. Use [`FsTree::walk`] for the live entries.
    pub fn inode_capacity(&self) -> usize {
        self.inodes.len()
    }

    /// Children of a directory in sorted order; empty for non-directories.
    pub fn children(&self, dir: InodeId) -> impl Iterator<Item = (&[u8], InodeId)> {
        let map = match &self.inode(dir).kind {
            InodeKind::Directory { children } => Some(children),
            _ => None,
        };
        map.into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_slice(), *v)))
    }

    /// Adds a new inode (not yet linked into any directory).
    pub fn add_inode(&mut self, kind: InodeKind, meta: Metadata) -> InodeId {
        let nlink = if kind.is_dir() { 2 } else { 0 };
        let id = InodeId(u32::try_from(self.inodes.len()).expect("more than 2^32 inodes"));
        self.inodes.push(Inode { kind, meta, nlink });
        id
    }

    /// Looks up one path component in a directory.
    pub fn lookup(&self, dir: InodeId, name: &[u8]) -> Option<InodeId> {
        match &self.inode(dir).kind {
            InodeKind::Directory { children } => children.get(name).copied(),
            _ => None,
        }
    }

    /// Resolves a relative path (components separated by `/`, no `.` or
    /// `..`) without following symlinks.
    pub fn lookup_path(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = self.root();
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = self.lookup(cur, comp)?;
        }
        Some(cur)
    }

    /// Links `child` into `dir` under `name`, replacing nothing: the caller
    /// must have removed any previous entry. Keeps link counts right.
    pub fn link(&mut self, dir: InodeId, name: Vec<u8>, child: InodeId) {
        let child_is_dir = self.inode(child).kind.is_dir();
        match &mut self.inode_mut(dir).kind {
            InodeKind::Directory { children } => {
                let prev = children.insert(name, child);
                debug_assert!(prev.is_none(), "link over an existing entry");
            }
            _ => panic!("link into a non-directory"),
        }
        if child_is_dir {
            self.inode_mut(dir).nlink += 1;
        } else {
            self.inode_mut(child).nlink += 1;
        }
    }

    /// Removes the entry `name` from `dir` (and, for a directory, everything
    /// below it). Returns the removed inode, if there was one.
    pub fn unlink(&mut self, dir: InodeId, name: &[u8]) -> Option<InodeId> {
        let removed = match &mut self.inode_mut(dir).kind {
            InodeKind::Directory { children } => children.remove(name),
            _ => None,
        }?;
        if self.inode(removed).kind.is_dir() {
            self.inode_mut(dir).nlink -= 1;
            self.clear_dir(removed);
        } else {
            let node = self.inode_mut(removed);
            node.nlink = node.nlink.saturating_sub(1);
        }
        Some(removed)
    }

    /// Removes every entry below `dir`, keeping `dir` itself.
    pub fn clear_dir(&mut self, dir: InodeId) {
        let children = match &mut self.inode_mut(dir).kind {
            InodeKind::Directory { children } => std::mem::take(children),
            _ => return,
        };
        for (_, child) in children {
            if self.inode(child).kind.is_dir() {
                self.clear_dir(child);
            } else {
                let node = self.inode_mut(child);
                node.nlink = node.nlink.saturating_sub(1);
            }
        }
        self.inode_mut(dir).nlink = 2;
    }

    /// Visits every reachable entry depth-first in sorted order, parents
    /// before children. The callback gets the full path (`b""` for the
    /// root) and the inode.
    pub fn walk(&self, mut f: impl FnMut(&[u8], InodeId)) {
        let mut path = Vec::new();
        self.walk_inner(self.root(), &mut path, &mut f);
    }

    fn walk_inner(&self, dir: InodeId, path: &mut Vec<u8>, f: &mut impl FnMut(&[u8], InodeId)) {
        f(path, dir);
        for (name, child) in self.children(dir) {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            if self.inode(child).kind.is_dir() {
                self.walk_inner(child, path, f);
            } else {
                f(path, child);
            }
            path.truncate(len);
        }
    }

    /// Number of reachable directory entries, the root included.
    pub fn entry_count(&self) -> usize {
        let mut n = 0;
        self.walk(|_, _| n += 1);
        n
    }

    /// Sets every mtime to `epoch` if it is later (the `SOURCE_DATE_EPOCH`
    /// clamp reproducible-builds.org describes).
    pub fn clamp_mtimes(&mut self, epoch: i64) {
        for inode in &mut self.inodes {
            if inode.meta.mtime > epoch {
                inode.meta.mtime = epoch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_share_inode_and_count() {
        let mut t = FsTree::new();
        let f = t.add_inode(
            InodeKind::File {
                content: ContentRef::EMPTY,
            },
            Metadata::new(0o644, 0, 0, 0),
        );
        let root = t.root();
        t.link(root, b"a".to_vec(), f);
        t.link(root, b"b".to_vec(), f);
        assert_eq!(t.inode(f).nlink, 2);
        assert_eq!(t.lookup_path(b"a"), t.lookup_path(b"b"));
        t.unlink(root, b"a");
        assert_eq!(t.inode(f).nlink, 1);
    }

    #[test]
    fn directory_nlink_counts_subdirs() {
        let mut t = FsTree::new();
        let root = t.root();
        let d = t.add_inode(
            InodeKind::Directory {
                children: BTreeMap::new(),
            },
            Metadata::implicit_dir(),
        );
        t.link(root, b"d".to_vec(), d);
        assert_eq!(t.inode(root).nlink, 3);
        t.unlink(root, b"d");
        assert_eq!(t.inode(root).nlink, 2);
    }

    #[test]
    fn walk_is_sorted_parents_first() {
        let mut t = FsTree::new();
        let root = t.root();
        for name in ["b", "a", "c"] {
            let d = t.add_inode(
                InodeKind::Directory {
                    children: BTreeMap::new(),
                },
                Metadata::implicit_dir(),
            );
            t.link(root, name.as_bytes().to_vec(), d);
        }
        let a = t.lookup_path(b"a").unwrap();
        let f = t.add_inode(InodeKind::Fifo, Metadata::new(0o600, 1, 1, 5));
        t.link(a, b"z".to_vec(), f);
        let mut seen = Vec::new();
        t.walk(|p, _| seen.push(String::from_utf8(p.to_vec()).unwrap()));
        assert_eq!(seen, ["", "a", "a/z", "b", "c"]);
    }
}
