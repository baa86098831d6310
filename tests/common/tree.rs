//! A model of a root filesystem tree, built three independent ways and
//! compared entry by entry:
//! - from test layers with a reference OCI merge ([`Tree::from_layers`]),
//! - from a tar archive ([`Tree::from_tar`]),
//! - from a directory that `unsquashfs` extracted ([`Tree::from_dir`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use super::layer::{EntryKind, LayerBuilder};
use super::sha256_hex;

/// What an entry is, with the data that identifies its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// size, sha256 hex of the content
    File(u64, String),
    Symlink(Vec<u8>),
    CharDev(u32, u32),
    BlockDev(u32, u32),
    Fifo,
    Socket,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File(..) => "file",
            Kind::Symlink(_) => "symlink",
            Kind::CharDev(..) => "char device",
            Kind::BlockDev(..) => "block device",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// A directory no layer listed (its metadata is up to the builder).
    pub implicit: bool,
    /// Link count (only filled in from extracted directories).
    pub nlink: Option<u64>,
}

impl Node {
    fn implicit_dir() -> Node {
        Node {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
            implicit: true,
            nlink: None,
        }
    }
}

/// Paths are relative, without leading `./` or `/` and without a trailing
/// `/`; the root directory is the empty path.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub nodes: BTreeMap<Vec<u8>, Node>,
    /// Sets of paths that are hardlinks of one inode (only sets of 2+).
    pub links: BTreeSet<BTreeSet<Vec<u8>>>,
}

/// Options for [`assert_trees_match`].
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    /// Compare mtimes of entries the expected tree lists explicitly.
    pub mtimes: bool,
    /// Compare mtimes of symlinks (extractors differ in setting them).
    pub symlink_mtimes: bool,
    /// Clamp expected mtimes to this value (SOURCE_DATE_EPOCH).
    pub clamp_mtime: Option<i64>,
    /// Compare the root directory's metadata.
    pub root: bool,
    /// Compare xattrs.
    pub xattrs: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            mtimes: true,
            symlink_mtimes: false,
            clamp_mtime: None,
            root: false,
            xattrs: true,
        }
    }
}

/// Normalises a layer or tar path: strips `./` and `/` prefixes and
/// trailing `/`. Returns None for the root.
pub fn norm(path: &[u8]) -> Vec<u8> {
    let mut p = path;
    loop {
        if let Some(r) = p.strip_prefix(b"./") {
            p = r;
        } else if let Some(r) = p.strip_prefix(b"/") {
            p = r;
        } else {
            break;
        }
    }
    while let Some(r) = p.strip_suffix(b"/") {
        p = r;
    }
    if p == b"." {
        p = b"";
    }
    p.to_vec()
}

fn parent(path: &[u8]) -> Option<&[u8]> {
    if path.is_empty() {
        return None;
    }
    Some(match path.iter().rposition(|&c| c == b'/') {
        Some(i) => &path[..i],
        None => b"",
    })
}

fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut p = dir.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

fn is_under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

pub fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".to_string()
    } else {
        format!("/{}", String::from_utf8_lossy(p))
    }
}

/// A tree in which nodes are inodes that paths point to (for hardlinks).
#[derive(Default)]
struct InodeTree {
    paths: BTreeMap<Vec<u8>, usize>,
    inodes: Vec<Node>,
}

impl InodeTree {
    fn new() -> InodeTree {
        let mut t = InodeTree::default();
        t.inodes.push(Node::implicit_dir());
        t.paths.insert(Vec::new(), 0);
        t
    }

    fn remove_subtree(&mut self, path: &[u8]) {
        self.paths.remove(path);
        let under: Vec<Vec<u8>> = self
            .paths
            .keys()
            .filter(|p| is_under(p, path))
            .cloned()
            .collect();
        for p in under {
            self.paths.remove(&p);
        }
    }

    fn ensure_parents(&mut self, path: &[u8]) {
        let mut cur = parent(path);
        let mut missing = Vec::new();
        while let Some(p) = cur {
            match self.paths.get(p) {
                Some(&i) => {
                    assert_eq!(
                        self.inodes[i].kind,
                        Kind::Dir,
                        "reference merge: parent {} of {} is not a directory",
                        show(p),
                        show(path)
                    );
                    break;
                }
                None => missing.push(p.to_vec()),
            }
            cur = parent(p);
        }
        for p in missing.into_iter().rev() {
            self.inodes.push(Node::implicit_dir());
            self.paths.insert(p, self.inodes.len() - 1);
        }
    }

    fn into_tree(self) -> Tree {
        let mut by_inode: BTreeMap<usize, BTreeSet<Vec<u8>>> = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (p, i) in &self.paths {
            nodes.insert(p.clone(), self.inodes[*i].clone());
            by_inode.entry(*i).or_default().insert(p.clone());
        }
        let links = by_inode.into_values().filter(|s| s.len() > 1).collect();
        Tree { nodes, links }
    }
}

impl Tree {
    /// The merged tree the OCI spec says `layers` (lowest first) produce:
    /// per layer, first the whiteouts and opaque markers hide entries of the
    /// layers below, then the layer's entries are added (a directory over a
    /// directory replaces its metadata only; anything else replaces the old
    /// entry and its subtree). Hardlinks share the inode of their target.
    pub fn from_layers(layers: &[&LayerBuilder]) -> Tree {
        let mut t = InodeTree::new();
        for layer in layers {
            // 1. whiteouts against the lower layers
            for e in &layer.entries {
                let p = norm(&e.path);
                let name = file_name(&p);
                let dir = parent(&p).unwrap_or(b"");
                if name == b".wh..wh..opq" {
                    let under: Vec<Vec<u8>> = t
                        .paths
                        .keys()
                        .filter(|q| is_under(q, dir))
                        .cloned()
                        .collect();
                    for q in under {
                        t.paths.remove(&q);
                    }
                } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                    t.remove_subtree(&join(dir, hidden));
                }
            }
            // 2. additions
            for e in &layer.entries {
                let p = norm(&e.path);
                if file_name(&p).starts_with(b".wh.") {
                    continue;
                }
                let node = |kind| Node {
                    kind,
                    mode: e.mode & 0o7777,
                    uid: e.uid,
                    gid: e.gid,
                    mtime: e.mtime,
                    xattrs: e.xattrs.clone(),
                    implicit: false,
                    nlink: None,
                };
                let kind = match &e.kind {
                    EntryKind::Dir => Kind::Dir,
                    EntryKind::File(c) => Kind::File(c.len() as u64, sha256_hex(c)),
                    EntryKind::Symlink(t) => Kind::Symlink(t.clone()),
                    EntryKind::CharDev(a, b) => Kind::CharDev(*a, *b),
                    EntryKind::BlockDev(a, b) => Kind::BlockDev(*a, *b),
                    EntryKind::Fifo => Kind::Fifo,
                    EntryKind::Hardlink(target) => {
                        let target = norm(target);
                        let i = *t.paths.get(&target).unwrap_or_else(|| {
                            panic!("reference merge: hardlink target {} missing", show(&target))
                        });
                        if t.paths.get(&p) != Some(&i) {
                            t.remove_subtree(&p);
                            t.ensure_parents(&p);
                            t.paths.insert(p.clone(), i);
                        }
                        continue;
                    }
                };
                let new = node(kind);
                t.ensure_parents(&p);
                match t.paths.get(&p) {
                    Some(&i) if t.inodes[i].kind == Kind::Dir && new.kind == Kind::Dir => {
                        t.inodes[i] = new;
                    }
                    _ => {
                        t.remove_subtree(&p);
                        t.inodes.push(new);
                        t.paths.insert(p, t.inodes.len() - 1);
                    }
                }
            }
        }
        t.into_tree()
    }

    /// The tree a tar archive (plain, gzip or zstd) describes.
    pub fn from_tar_file(path: &Path) -> Tree {
        let data = std::fs::read(path).unwrap();
        Tree::from_tar_bytes(&decompress(&data))
    }

    /// The tree an uncompressed tar stream describes (later entries replace
    /// earlier ones; hardlinks share inodes).
    pub fn from_tar_bytes(tar: &[u8]) -> Tree {
        let mut t = InodeTree::new();
        let mut ar = tar::Archive::new(tar);
        for entry in ar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let p = norm(&entry.path_bytes());
            let h = entry.header().clone();
            let mut xattrs = BTreeMap::new();
            if let Some(exts) = entry.pax_extensions().unwrap() {
                for ext in exts {
                    let ext = ext.unwrap();
                    if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                    }
                }
            }
            let dev = || {
                (
                    h.device_major().unwrap().unwrap_or(0),
                    h.device_minor().unwrap().unwrap_or(0),
                )
            };
            let kind = match h.entry_type() {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut c = Vec::new();
                    entry.read_to_end(&mut c).unwrap();
                    Kind::File(c.len() as u64, sha256_hex(&c))
                }
                tar::EntryType::Symlink => Kind::Symlink(entry.link_name_bytes().unwrap().to_vec()),
                tar::EntryType::Char => Kind::CharDev(dev().0, dev().1),
                tar::EntryType::Block => Kind::BlockDev(dev().0, dev().1),
                tar::EntryType::Fifo => Kind::Fifo,
                tar::EntryType::Link => {
                    let target = norm(&entry.link_name_bytes().unwrap());
                    let i = *t
                        .paths
                        .get(&target)
                        .unwrap_or_else(|| panic!("tar hardlink to missing {}", show(&target)));
                    t.remove_subtree(&p);
                    t.ensure_parents(&p);
                    t.paths.insert(p, i);
                    continue;
                }
                other => panic!("unexpected tar entry type {other:?} at {}", show(&p)),
            };
            let node = Node {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap() as u32,
                gid: h.gid().unwrap() as u32,
                mtime: h.mtime().unwrap() as i64,
                xattrs,
                implicit: false,
                nlink: None,
            };
            if p.is_empty() {
                t.inodes[0] = node;
                continue;
            }
            t.ensure_parents(&p);
            match t.paths.get(&p) {
                Some(&i) if t.inodes[i].kind == Kind::Dir && node.kind == Kind::Dir => {
                    t.inodes[i] = node;
                }
                _ => {
                    t.remove_subtree(&p);
                    t.inodes.push(node);
                    t.paths.insert(p, t.inodes.len() - 1);
                }
            }
        }
        t.into_tree()
    }

    /// The tree found on disk under `root` (e.g. an `unsquashfs -d`
    /// extraction): lstat of every entry, file contents hashed, xattrs read
    /// with `getfattr`, hardlinks grouped by inode number.
    pub fn from_dir(root: &Path) -> Tree {
        let xattrs = getfattr_tree(root);
        let mut nodes = BTreeMap::new();
        let mut inodes: BTreeMap<(u64, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
        let mut stack = vec![(root.to_path_buf(), Vec::new())];
        while let Some((abs, rel)) = stack.pop() {
            let md = std::fs::symlink_metadata(&abs).unwrap();
            let ft = md.file_type();
            let rdev = md.rdev();
            let (maj, min) = (dev_major(rdev), dev_minor(rdev));
            let kind = if ft.is_dir() {
                for child in std::fs::read_dir(&abs).unwrap() {
                    let child = child.unwrap();
                    let name = child.file_name();
                    stack.push((child.path(), join(&rel, name.as_bytes())));
                }
                Kind::Dir
            } else if ft.is_file() {
                let c = std::fs::read(&abs).unwrap();
                Kind::File(c.len() as u64, sha256_hex(&c))
            } else if ft.is_symlink() {
                Kind::Symlink(
                    std::fs::read_link(&abs)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if ft.is_char_device() {
                Kind::CharDev(maj, min)
            } else if ft.is_block_device() {
                Kind::BlockDev(maj, min)
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            if !ft.is_dir() {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .insert(rel.clone());
            }
            nodes.insert(
                rel.clone(),
                Node {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: md.mtime(),
                    xattrs: xattrs.get(&rel).cloned().unwrap_or_default(),
                    implicit: false,
                    nlink: Some(md.nlink()),
                },
            );
        }
        let links = inodes.into_values().filter(|s| s.len() > 1).collect();
        Tree { nodes, links }
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&norm(path.as_bytes()))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Number of entries including the root directory.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The hardlink set `path` belongs to (empty if none).
    pub fn links_of(&self, path: &str) -> BTreeSet<Vec<u8>> {
        let p = norm(path.as_bytes());
        self.links
            .iter()
            .find(|s| s.contains(&p))
            .cloned()
            .unwrap_or_default()
    }
}

/// Linux `major()` of a dev_t.
pub fn dev_major(d: u64) -> u32 {
    (((d >> 32) & 0xffff_f000) | ((d >> 8) & 0xfff)) as u32
}

/// Linux `minor()` of a dev_t.
pub fn dev_minor(d: u64) -> u32 {
    (((d >> 12) & 0xffff_ff00) | (d & 0xff)) as u32
}

/// Decompresses gzip or zstd data by magic; returns plain data unchanged.
pub fn decompress(data: &[u8]) -> Vec<u8> {
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(data).unwrap()
    } else {
        data.to_vec()
    }
}

/// Undoes getfattr's escaping of names (`\ooo` octal and `\\`).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else if s[i] == b'\\' && s.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// All xattrs under `root` by relative path, via one recursive
/// `getfattr -R -P -d -m - -h -e hex --absolute-names`.
pub fn getfattr_tree(root: &Path) -> BTreeMap<Vec<u8>, BTreeMap<String, Vec<u8>>> {
    super::require_tool("getfattr", "attr");
    let out = Command::new("getfattr")
        .args([
            "-R",
            "-P",
            "-d",
            "-m",
            "-",
            "-h",
            "-e",
            "hex",
            "--absolute-names",
        ])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success() || out.stdout.is_empty(),
        "getfattr failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root_b = root.as_os_str().as_bytes();
    let mut map: BTreeMap<Vec<u8>, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut cur: Option<Vec<u8>> = None;
    for line in out.stdout.split(|&c| c == b'\n') {
        if let Some(f) = line.strip_prefix(b"# file: ") {
            let abs = unescape(f);
            let rel = abs
                .strip_prefix(root_b)
                .unwrap_or_else(|| panic!("getfattr path outside root: {}", show(&abs)));
            cur = Some(norm(rel));
        } else if let (Some(p), Some(eq)) = (&cur, line.iter().position(|&c| c == b'=')) {
            let name = String::from_utf8(line[..eq].to_vec()).unwrap();
            let v = &line[eq + 1..];
            let v = v.strip_prefix(b"0x").unwrap_or(v);
            let v = hex::decode(v).unwrap_or_else(|e| panic!("getfattr value of {name}: {e}"));
            map.entry(p.clone()).or_default().insert(name, v);
        }
    }
    map
}

/// Checks `actual` against `expected` entry by entry (kind, mode, uid, gid,
/// size + sha256, symlink target, device numbers, xattrs, mtimes, hardlink
/// sets and their link counts) and panics with every difference found.
pub fn assert_trees_match(actual: &Tree, expected: &Tree, opts: Compare) {
    let diff = diff_trees(actual, expected, opts);
    if !diff.is_empty() {
        let n = diff.lines().count();
        let shown: String = diff.lines().take(60).map(|l| format!("  {l}\n")).collect();
        panic!("trees differ in {n} ways:\n{shown}");
    }
}

/// The differences [`assert_trees_match`] reports, one per line.
pub fn diff_trees(actual: &Tree, expected: &Tree, opts: Compare) -> String {
    let mut d = String::new();
    for (p, e) in &expected.nodes {
        let Some(a) = actual.nodes.get(p) else {
            writeln!(d, "{}: missing ({} expected)", show(p), e.kind.name()).unwrap();
            continue;
        };
        if p.is_empty() && !opts.root {
            continue;
        }
        if a.kind != e.kind {
            writeln!(d, "{}: is {:?}, expected {:?}", show(p), a.kind, e.kind).unwrap();
            continue;
        }
        if e.implicit {
            continue;
        }
        if a.mode != e.mode {
            writeln!(d, "{}: mode {:o}, expected {:o}", show(p), a.mode, e.mode).unwrap();
        }
        if (a.uid, a.gid) != (e.uid, e.gid) {
            writeln!(
                d,
                "{}: owner {}:{}, expected {}:{}",
                show(p),
                a.uid,
                a.gid,
                e.uid,
                e.gid
            )
            .unwrap();
        }
        let check_mtime =
            opts.mtimes && (opts.symlink_mtimes || !matches!(e.kind, Kind::Symlink(_)));
        let want_mtime = match opts.clamp_mtime {
            Some(c) => e.mtime.min(c),
            None => e.mtime,
        };
        if check_mtime && a.mtime != want_mtime {
            writeln!(d, "{}: mtime {}, expected {}", show(p), a.mtime, want_mtime).unwrap();
        }
        if opts.xattrs && a.xattrs != e.xattrs {
            writeln!(
                d,
                "{}: xattrs {:?}, expected {:?}",
                show(p),
                a.xattrs,
                e.xattrs
            )
            .unwrap();
        }
    }
    for p in actual.nodes.keys() {
        if !expected.nodes.contains_key(p) {
            writeln!(d, "{}: unexpected {}", show(p), actual.nodes[p].kind.name()).unwrap();
        }
    }
    let fmt = |s: &BTreeSet<Vec<u8>>| s.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = ");
    for set in &expected.links {
        if !actual.links.contains(set) {
            let got = actual
                .links
                .iter()
                .find(|s| s.iter().any(|p| set.contains(p)));
            writeln!(
                d,
                "hardlinks {}: not one inode (actual set: {})",
                fmt(set),
                got.map(fmt).unwrap_or_else(|| "none".into())
            )
            .unwrap();
        }
    }
    for (p, n) in &actual.nodes {
        let linked = actual.links.iter().any(|s| s.contains(p));
        if !linked && n.kind != Kind::Dir && n.nlink.is_some_and(|c| c != 1) {
            writeln!(
                d,
                "{}: link count {}, expected 1",
                show(p),
                n.nlink.unwrap()
            )
            .unwrap();
        }
    }
    for set in &actual.links {
        if !expected.links.contains(set) {
            writeln!(d, "hardlinks {}: unexpectedly one inode", fmt(set)).unwrap();
        }
        for p in set {
            if let Some(n) = actual.nodes.get(p).and_then(|n| n.nlink) {
                if n != set.len() as u64 {
                    writeln!(d, "{}: link count {n}, expected {}", show(p), set.len()).unwrap();
                }
            }
        }
    }
    d
}
