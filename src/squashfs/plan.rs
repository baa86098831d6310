//! The first pass: the order inodes are written in, their numbers, link
//! counts and owners, and every check that could otherwise fail halfway
//! through writing.
//!
//! Order: for each directory (depth first, children in name order) the
//! subdirectories' subtrees come first, then the inodes of all of the
//! directory's own entries in name order, then its listing. A directory's
//! entries therefore sit next to each other in the inode table, so a
//! listing needs few headers, and every inode exists before the listing
//! that points at it. Inode numbers follow the write order; the root comes
//! last, and its parent is `inode_count + 1`, as with mksquashfs.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use super::inode::new_encode_dev;
use super::xattr;
use crate::tree::{FsTree, InodeId, InodeKind};

/// Longest name a directory entry can hold.
pub(crate) const MAX_NAME: usize = 256;
/// Longest symlink target: PATH_MAX - 1 (the kernel refuses more than a page).
pub(crate) const MAX_SYMLINK: usize = 4095;

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Write this inode.
    Inode(InodeId),
    /// Write this directory's listing (its entries' inodes exist by now).
    Listing(InodeId),
}

pub(crate) struct Plan {
    pub events: Vec<Event>,
    /// Inode number by `InodeId`; 0 for inodes not in the tree.
    pub number: Vec<u32>,
    /// The directory an inode was first found in (a directory's only
    /// parent); `NONE` for the root and unreachable inodes.
    parent: Vec<u32>,
    /// Link count by `InodeId`: directory entries pointing at it, or for a
    /// directory 2 + its subdirectories.
    pub nlink: Vec<u32>,
    /// Regular files in the order their data is written.
    pub files: Vec<InodeId>,
    /// Index into `files` by `InodeId`.
    pub file_slot: Vec<u32>,
    /// Every uid and gid, sorted; inodes store indexes into this.
    pub ids: Vec<u32>,
    pub inode_count: u32,
}

impl Plan {
    pub(crate) fn id_index(&self, id: u32) -> u16 {
        // Every owner was collected while planning and there are at most
        // 65536 of them.
        self.ids.binary_search(&id).map_or(0, |i| i as u16)
    }

    pub(crate) fn parent(&self, id: InodeId) -> Option<InodeId> {
        match self.parent[id.0 as usize] {
            NONE => None,
            p => Some(InodeId(p)),
        }
    }

    /// The path of `id` for messages (`/` for the root).
    pub(crate) fn path(&self, tree: &FsTree, id: InodeId) -> String {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = id;
        while let Some(p) = self.parent(cur) {
            match tree.children(p).find(|&(_, c)| c == cur) {
                Some((name, _)) => parts.push(name),
                None => break,
            }
            cur = p;
            if parts.len() > self.parent.len() {
                break;
            }
        }
        parts.reverse();
        let mut s = String::new();
        for p in parts {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(p));
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }
}

enum Step {
    Enter(InodeId),
    Finish(InodeId),
}

pub(crate) fn plan(tree: &FsTree, block_size: u32) -> Result<Plan> {
    let cap = tree.inode_capacity();
    let root = tree.root();
    let mut p = Plan {
        events: Vec::new(),
        number: vec![0; cap],
        parent: vec![NONE; cap],
        nlink: vec![0; cap],
        files: Vec::new(),
        file_slot: vec![NONE; cap],
        ids: Vec::new(),
        inode_count: 0,
    };
    if !tree.inode(root).kind.is_dir() {
        bail!(
            "the root inode is a {}, not a directory",
            tree.inode(root).kind.describe()
        );
    }
    let mut seen_dir = vec![false; cap];
    seen_dir[root.0 as usize] = true;
    p.nlink[root.0 as usize] = 2;
    let mut ids = BTreeSet::new();
    let mut next: u32 = 1;
    let mut stack = vec![Step::Enter(root)];
    let mut subdirs = Vec::new();

    while let Some(step) = stack.pop() {
        match step {
            Step::Enter(d) => {
                stack.push(Step::Finish(d));
                subdirs.clear();
                for (name, c) in tree.children(d) {
                    check_name(name).with_context(|| {
                        format!(
                            "{}/{}",
                            p.path(tree, d).trim_end_matches('/'),
                            String::from_utf8_lossy(name)
                        )
                    })?;
                    let ci = c.0 as usize;
                    if ci >= cap {
                        bail!("{}: entry points at a missing inode", p.path(tree, d));
                    }
                    if tree.inode(c).kind.is_dir() {
                        if seen_dir[ci] {
                            bail!(
                                "directory {} is linked more than once (at {}/{})",
                                p.path(tree, c),
                                p.path(tree, d).trim_end_matches('/'),
                                String::from_utf8_lossy(name)
                            );
                        }
                        seen_dir[ci] = true;
                        p.parent[ci] = d.0;
                        p.nlink[ci] = 2;
                        p.nlink[d.0 as usize] += 1;
                        subdirs.push(c);
                    } else {
                        if p.parent[ci] == NONE {
                            p.parent[ci] = d.0;
                        }
                        p.nlink[ci] += 1;
                    }
                }
                stack.extend(subdirs.drain(..).rev().map(Step::Enter));
            }
            Step::Finish(d) => {
                for (_, c) in tree.children(d) {
                    if p.number[c.0 as usize] == 0 {
                        add_inode(&mut p, tree, c, &mut next, &mut ids, block_size)?;
                    }
                }
                p.events.push(Event::Listing(d));
            }
        }
    }
    add_inode(&mut p, tree, root, &mut next, &mut ids, block_size)?;
    p.inode_count = next - 1;
    if ids.len() > 1 << 16 {
        bail!(
            "the tree uses {} distinct uids and gids; SquashFS holds at most 65536",
            ids.len()
        );
    }
    p.ids = ids.into_iter().collect();
    Ok(p)
}

fn add_inode(
    p: &mut Plan,
    tree: &FsTree,
    id: InodeId,
    next: &mut u32,
    ids: &mut BTreeSet<u32>,
    block_size: u32,
) -> Result<()> {
    // The root's parent number is inode_count + 1, so that must fit too.
    if *next >= u32::MAX - 1 {
        bail!("too many inodes for SquashFS");
    }
    let inode = tree.inode(id);
    check_inode(tree, id, block_size).with_context(|| p.path(tree, id))?;
    for name in inode.meta.xattrs.keys() {
        if xattr::split_name(name).is_none() {
            tracing::warn!(
                "{}: skipping xattr {}: SquashFS stores only user.*, trusted.* and security.* attributes",
                p.path(tree, id),
                String::from_utf8_lossy(name)
            );
        }
    }
    p.number[id.0 as usize] = *next;
    *next += 1;
    p.events.push(Event::Inode(id));
    ids.insert(inode.meta.uid);
    ids.insert(inode.meta.gid);
    if let InodeKind::File { .. } = inode.kind {
        p.file_slot[id.0 as usize] = p.files.len() as u32;
        p.files.push(id);
    }
    Ok(())
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." {
        bail!("invalid file name {:?}", String::from_utf8_lossy(name));
    }
    if name.len() > MAX_NAME {
        bail!(
            "file name of {} bytes is longer than {MAX_NAME}",
            name.len()
        );
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        bail!("file name contains '/' or a NUL byte");
    }
    Ok(())
}

fn check_inode(tree: &FsTree, id: InodeId, block_size: u32) -> Result<()> {
    let inode = tree.inode(id);
    match &inode.kind {
        InodeKind::File { content } => {
            if content.len / block_size as u64 >= u32::MAX as u64 {
                bail!("file of {} bytes has too many blocks", content.len);
            }
        }
        InodeKind::Symlink { target } => {
            if target.len() > MAX_SYMLINK {
                bail!(
                    "symlink target of {} bytes is longer than {MAX_SYMLINK}",
                    target.len()
                );
            }
        }
        InodeKind::CharDevice { major, minor } | InodeKind::BlockDevice { major, minor } => {
            if new_encode_dev(*major, *minor).is_none() {
                bail!("device number {major}:{minor} does not fit (major < 4096, minor < 2^20)");
            }
        }
        InodeKind::Directory { .. } | InodeKind::Fifo | InodeKind::Socket => {}
    }
    for (name, value) in &inode.meta.xattrs {
        if name.len() > u16::MAX as usize || value.len() > u32::MAX as usize {
            bail!("xattr {} is too large", String::from_utf8_lossy(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{ContentRef, Metadata};
    use std::collections::BTreeMap;

    fn dir(t: &mut FsTree, parent: InodeId, name: &str) -> InodeId {
        let d = t.add_inode(
            InodeKind::Directory {
                children: BTreeMap::new(),
            },
            Metadata::new(0o755, 0, 0, 0),
        );
        t.link(parent, name.as_bytes().to_vec(), d);
        d
    }

    fn file(t: &mut FsTree, parent: InodeId, name: &str, uid: u32) -> InodeId {
        let f = t.add_inode(
            InodeKind::File {
                content: ContentRef::EMPTY,
            },
            Metadata::new(0o644, uid, uid, 0),
        );
        t.link(parent, name.as_bytes().to_vec(), f);
        f
    }

    #[test]
    fn order_numbers_and_links() {
        let mut t = FsTree::new();
        let root = t.root();
        let a = dir(&mut t, root, "a");
        let f = file(&mut t, a, "f", 1000);
        let b = file(&mut t, root, "b", 0);
        t.link(root, b"c".to_vec(), f);
        let p = plan(&t, 4096).unwrap();
        // a's subtree, then root's entries (a, b, c=f already written), root.
        assert_eq!(
            p.events,
            vec![
                Event::Inode(f),
                Event::Listing(a),
                Event::Inode(a),
                Event::Inode(b),
                Event::Listing(root),
                Event::Inode(root),
            ]
        );
        assert_eq!(p.inode_count, 4);
        assert_eq!(p.number[f.0 as usize], 1);
        assert_eq!(p.number[root.0 as usize], 4);
        assert_eq!(p.nlink[f.0 as usize], 2);
        assert_eq!(p.nlink[root.0 as usize], 3);
        assert_eq!(p.nlink[a.0 as usize], 2);
        assert_eq!(p.ids, vec![0, 1000]);
        assert_eq!(p.id_index(1000), 1);
        assert_eq!(p.files, vec![f, b]);
        // f was first seen as /c: root lists its entries before entering a.
        assert_eq!(p.path(&t, f), "/c");
        assert_eq!(p.path(&t, root), "/");
    }

    #[test]
    fn rejects_bad_names_and_devices() {
        let mut t = FsTree::new();
        let root = t.root();
        file(&mut t, root, &"x".repeat(257), 0);
        let e = format!("{:#}", plan(&t, 4096).err().unwrap());
        assert!(e.contains("longer than 256"), "{e}");

        let mut t = FsTree::new();
        let root = t.root();
        let d = dir(&mut t, root, "dev");
        let c = t.add_inode(
            InodeKind::CharDevice {
                major: 5000,
                minor: 1,
            },
            Metadata::new(0o600, 0, 0, 0),
        );
        t.link(d, b"weird".to_vec(), c);
        let e = format!("{:#}", plan(&t, 4096).err().unwrap());
        assert!(e.contains("/dev/weird") && e.contains("5000:1"), "{e}");
    }

    #[test]
    fn rejects_a_directory_linked_twice() {
        let mut t = FsTree::new();
        let root = t.root();
        let a = dir(&mut t, root, "a");
        t.link(root, b"b".to_vec(), a);
        let e = format!("{:#}", plan(&t, 4096).err().unwrap());
        assert!(e.contains("linked more than once"), "{e}");
    }
}
