//! The SquashFS writer against the reference reader: trees holding every
//! inode kind are written with each compressor and checked with
//! `unsquashfs -lln`, `unsquashfs -s`, a full `unsquashfs -d` extraction
//! (run as root, so owners, devices and xattrs are restored) and the
//! kernel's mount-time table checks. Nothing is mounted.
//!
//! Self-contained on purpose: it needs only the library and the tools.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use build_image::squashfs::{self, Compression, Options, Summary};
use build_image::tree::{ContentStore, FsTree, InodeId, InodeKind, Metadata};
use common::squash::{stat_field, unsquashfs_listing, unsquashfs_stat};
use common::{noise, require_tool, tool_stdout};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const T0: i64 = 1_700_000_040; // 2023-11-14 22:14:00 UTC

fn require_root() {
    let uid = fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        uid, 0,
        "the SquashFS writer tests must run as root: extraction has to restore owners, device nodes and xattrs"
    );
}

fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&tool_stdout(cmd.env("TZ", "UTC"))).into_owned()
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

struct Fixture {
    tree: FsTree,
    store: ContentStore,
    _dir: TempDir,
}

struct Builder<'a> {
    tree: &'a mut FsTree,
    store: &'a mut ContentStore,
}

impl Builder<'_> {
    fn meta(mode: u16, uid: u32, gid: u32) -> Metadata {
        Metadata::new(mode, uid, gid, T0)
    }

    fn add(&mut self, dir: InodeId, name: &[u8], kind: InodeKind, meta: Metadata) -> InodeId {
        let id = self.tree.add_inode(kind, meta);
        self.tree.link(dir, name.to_vec(), id);
        id
    }

    fn dir(&mut self, parent: InodeId, name: &str, meta: Metadata) -> InodeId {
        self.add(
            parent,
            name.as_bytes(),
            InodeKind::Directory {
                children: BTreeMap::new(),
            },
            meta,
        )
    }

    fn file(&mut self, dir: InodeId, name: &[u8], data: &[u8], meta: Metadata) -> InodeId {
        let content = self.store.append(data).unwrap();
        self.add(dir, name, InodeKind::File { content }, meta)
    }
}

fn xattrs(pairs: &[(&str, &[u8])], mut meta: Metadata) -> Metadata {
    for (k, v) in pairs {
        meta.xattrs.insert(k.as_bytes().to_vec(), v.to_vec());
    }
    meta
}

/// A tree with every inode kind and the awkward sizes around a block.
fn fixture(block_size: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(dir.path()).unwrap();
    let mut tree = FsTree::new();
    let root = tree.root();
    tree.inode_mut(root).meta = Metadata::new(0o755, 0, 0, T0);
    let bs = block_size as usize;
    let m = Builder::meta;
    let mut b = Builder {
        tree: &mut tree,
        store: &mut store,
    };

    // Nested directories and a 3-level deep path.
    let a = b.dir(root, "a", m(0o755, 0, 0));
    let ab = b.dir(a, "b", m(0o750, 0, 0));
    let abc = b.dir(ab, "c", m(0o700, 0, 0));
    b.file(abc, b"deep.txt", b"deep inside\n", m(0o644, 0, 0));
    b.dir(root, "emptydir", m(0o755, 0, 0));

    // A large directory: headers split, the listing spans metadata blocks.
    let big = b.dir(root, "big", m(0o755, 0, 0));
    for i in 0..3000u32 {
        let name = format!("entry-{i:05}-with-a-longer-name");
        if i % 500 == 7 {
            let d = b.dir(big, &name, m(0o755, 0, 0));
            b.file(d, b"inner", name.as_bytes(), m(0o644, 0, 0));
        } else {
            let data = format!("{i}\n");
            b.file(big, name.as_bytes(), data.as_bytes(), m(0o644, 0, 0));
        }
    }

    // Sizes around the block size, big files, zeros, copies.
    let files = b.dir(root, "files", m(0o755, 0, 0));
    b.file(files, b"empty", b"", m(0o644, 0, 0));
    b.file(files, b"exact", &noise(bs, 1), m(0o644, 0, 0));
    b.file(files, b"plus1", &noise(bs + 1, 2), m(0o644, 0, 0));
    b.file(files, b"minus1", &noise(bs - 1, 3), m(0o644, 0, 0));
    b.file(files, b"random5m", &noise(5_000_000, 4), m(0o644, 0, 0));
    b.file(files, b"zeros5m", &vec![0u8; 5_000_000], m(0o644, 0, 0));
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {i} of some compressible text\n").into_bytes())
        .collect();
    b.file(files, b"text", &text, m(0o644, 0, 0));
    // Copies (not hardlinks) are stored once but stay separate inodes.
    b.file(
        files,
        b"random5m-copy",
        &noise(5_000_000, 4),
        m(0o600, 1000, 1000),
    );
    b.file(files, b"plus1-copy", &noise(bs + 1, 2), m(0o644, 0, 0));

    // Hardlinks: a pair in one directory and a third link elsewhere.
    let h = b.file(files, b"hard1", b"linked content\n", m(0o644, 0, 0));
    b.tree.link(files, b"hard2".to_vec(), h);
    let bin = b.dir(root, "bin", m(0o755, 0, 0));
    b.tree.link(bin, b"hard3".to_vec(), h);
    let hb = b.file(files, b"hardbig1", &noise(3 * bs + 17, 5), m(0o600, 0, 0));
    b.tree.link(files, b"hardbig2".to_vec(), hb);

    // Symlinks.
    let links = b.dir(root, "links", m(0o755, 0, 0));
    let sym = |t: &[u8]| InodeKind::Symlink { target: t.to_vec() };
    b.add(links, b"abs", sym(b"/etc/passwd"), m(0o777, 0, 0));
    b.add(links, b"rel", sym(b"../files/exact"), m(0o777, 0, 0));
    let long: Vec<u8> = (0..200).map(|i| b'a' + (i % 26) as u8).collect();
    b.add(links, b"long", sym(&long), m(0o777, 0, 0));
    let xsym = xattrs(&[("trusted.symattr", b"on a symlink")], m(0o777, 0, 0));
    b.add(links, b"withxattr", sym(b"abs"), xsym);

    // Devices, fifos, a socket.
    let dev = b.dir(root, "dev", m(0o755, 0, 0));
    let chr = |major, minor| InodeKind::CharDevice { major, minor };
    b.add(dev, b"ttyX", chr(10, 1234), m(0o620, 0, 5));
    b.add(
        dev,
        b"sda1",
        InodeKind::BlockDevice { major: 8, minor: 1 },
        m(0o660, 0, 6),
    );
    b.add(dev, b"null", chr(1, 3), m(0o666, 0, 0));
    b.add(dev, b"fifo", InodeKind::Fifo, m(0o644, 0, 0));
    let xfifo = xattrs(&[("trusted.fifo", b"yes")], m(0o600, 0, 0));
    b.add(dev, b"xfifo", InodeKind::Fifo, xfifo);
    b.add(dev, b"sock", InodeKind::Socket, m(0o755, 0, 0));

    // Special modes, owners, xattrs.
    let usr = b.dir(root, "usr", m(0o755, 0, 0));
    let ubin = b.dir(usr, "bin", m(0o755, 0, 0));
    b.file(ubin, b"sudo", &noise(70_000, 6), m(0o4755, 0, 0));
    b.file(ubin, b"wall", b"#!/bin/sh\n", m(0o2755, 0, 5));
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let capm = xattrs(&[("security.capability", cap)], m(0o755, 0, 0));
    b.file(ubin, b"ping", &noise(40_000, 7), capm.clone());
    // A second file with the very same xattrs (one shared xattr set).
    b.file(ubin, b"ping6", b"ping6", capm);
    let user = xattrs(
        &[
            ("user.foo", b"bar"),
            ("user.empty", b""),
            ("system.posix_acl_access", &[2, 0, 0, 0]),
        ],
        m(0o644, 0, 0),
    );
    b.file(files, b"userattr", b"has xattrs", user);
    b.dir(root, "tmp", m(0o1777, 0, 0));
    b.dir(
        root,
        "xdir",
        xattrs(&[("user.dir", b"directory attr")], m(0o755, 0, 0)),
    );
    let home = b.dir(root, "home", m(0o755, 0, 0));
    let u = b.dir(home, "user", m(0o700, 1000, 1000));
    b.file(u, b".profile", b"export X=1\n", m(0o644, 1000, 1000));
    b.file(root, b"nobody", b"nobody's\n", m(0o600, 65534, 65534));

    // Names: UTF-8 and the longest allowed.
    let names = b.dir(root, "names", m(0o755, 0, 0));
    for n in [
        "héllo-wörld",
        "日本語.txt",
        "emoji-😀",
        "with space",
        "-dash",
    ] {
        b.file(names, n.as_bytes(), n.as_bytes(), m(0o644, 0, 0));
    }
    let long_name = "n".repeat(255);
    b.file(names, long_name.as_bytes(), b"long name", m(0o644, 0, 0));

    // Times outside what SquashFS stores are clamped.
    let times = b.dir(root, "times", m(0o755, 0, 0));
    b.file(
        times,
        b"before-1970",
        b"x",
        Metadata::new(0o644, 0, 0, -100),
    );
    b.file(
        times,
        b"after-2106",
        b"y",
        Metadata::new(0o644, 0, 0, 1 << 33),
    );
    b.file(times, b"epoch", b"z", Metadata::new(0o644, 0, 0, 0));

    Fixture {
        tree,
        store,
        _dir: dir,
    }
}

fn write_image(f: &Fixture, opts: &Options, path: &Path) -> Summary {
    let mut out = fs::File::create(path).unwrap();
    squashfs::write(&f.tree, &f.store, opts, &mut out).unwrap()
}

// ---------------------------------------------------------------------------
// Expectations derived from the tree.

fn clamp(t: i64) -> i64 {
    t.clamp(0, u32::MAX as i64)
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn utc(t: i64) -> String {
    let (y, mo, d, h, mi, _) = build_image::apt::release::civil(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

fn mode_string(kind: &InodeKind, mode: u16) -> String {
    let t = match kind {
        InodeKind::Directory { .. } => 'd',
        InodeKind::File { .. } => '-',
        InodeKind::Symlink { .. } => 'l',
        InodeKind::CharDevice { .. } => 'c',
        InodeKind::BlockDevice { .. } => 'b',
        InodeKind::Fifo => 'p',
        InodeKind::Socket => 's',
    };
    let mut s = String::from(t);
    let bit = |b: u16, c: char| if mode & b != 0 { c } else { '-' };
    for (shift, special, set, set_no_x) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        s.push(bit(4 << shift, 'r'));
        s.push(bit(2 << shift, 'w'));
        s.push(match (mode & special != 0, mode & (1 << shift) != 0) {
            (true, true) => set,
            (true, false) => set_no_x,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// Every path of the tree ("" for the root) with its inode.
fn paths(tree: &FsTree) -> Vec<(String, InodeId)> {
    let mut v = Vec::new();
    tree.walk(|p, id| v.push((String::from_utf8(p.to_vec()).unwrap(), id)));
    v
}

/// What `unsquashfs -lln` must print for the tree (directory sizes depend
/// on the listing layout and are left out as "*").
fn expected_listing(tree: &FsTree) -> Vec<String> {
    let mut lines = Vec::new();
    for (path, id) in paths(tree) {
        let node = tree.inode(id);
        let meta = &node.meta;
        let mode = match node.kind {
            InodeKind::Symlink { .. } => 0o777,
            _ => meta.mode,
        };
        let size = match &node.kind {
            InodeKind::Directory { .. } => "*".to_string(),
            InodeKind::File { content } => content.len.to_string(),
            InodeKind::Symlink { target } => target.len().to_string(),
            // unsquashfs 4.5 prints the stored word split the old way
            // (rdev >> 8, rdev & 0xff); extraction decodes it correctly.
            InodeKind::CharDevice { major, minor } | InodeKind::BlockDevice { major, minor } => {
                let r = squashfs::new_encode_dev(*major, *minor).unwrap();
                format!("{},{}", r >> 8, r & 0xff)
            }
            InodeKind::Fifo | InodeKind::Socket => "0".to_string(),
        };
        let full = if path.is_empty() {
            "squashfs-root".to_string()
        } else {
            format!("squashfs-root/{path}")
        };
        let mut line = format!(
            "{} {}/{} {} {} {}",
            mode_string(&node.kind, mode),
            meta.uid,
            meta.gid,
            size,
            utc(clamp(meta.mtime)),
            full
        );
        if let InodeKind::Symlink { target } = &node.kind {
            line.push_str(" -> ");
            line.push_str(&String::from_utf8_lossy(target));
        }
        lines.push(line);
    }
    lines
}

/// `unsquashfs -lln` (see [`unsquashfs_listing`]), one line per entry as
/// [`expected_listing`] writes them: single spaces, directory sizes as
/// "*".
fn actual_listing(img: &Path) -> Vec<String> {
    unsquashfs_listing(img)
        .into_iter()
        .map(|e| {
            let size = if e.kind_char() == 'd' { "*" } else { &e.size };
            let path = match e.path.as_str() {
                "" => "squashfs-root".to_string(),
                p => format!("squashfs-root/{p}"),
            };
            let mut line = format!("{} {}/{} {size} {} {path}", e.perms, e.uid, e.gid, e.time);
            if let Some(t) = &e.target {
                line.push_str(" -> ");
                line.push_str(t);
            }
            line
        })
        .collect()
}

fn getfattr(path: &Path) -> BTreeMap<String, String> {
    let text = run(Command::new("getfattr")
        .args(["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"])
        .arg(path));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            // Empty values print without "=0x".
            let (k, v) = l.split_once('=').unwrap_or((l, "0x"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn dev_major(d: u64) -> u32 {
    (((d >> 8) & 0xfff) | ((d >> 32) & !0xfff)) as u32
}

fn dev_minor(d: u64) -> u32 {
    ((d & 0xff) | ((d >> 12) & !0xff)) as u32
}

/// Extracts `img` and compares every entry with the tree.
fn check_extraction(f: &Fixture, img: &Path, scratch: &Path) {
    let root = scratch.join("extracted");
    run(Command::new("unsquashfs")
        .args(["-q", "-n", "-st", "-d"])
        .arg(&root)
        .arg(img));
    let mut inos: HashMap<InodeId, u64> = HashMap::new();
    for (path, id) in paths(&f.tree) {
        let p: PathBuf = if path.is_empty() {
            root.clone()
        } else {
            root.join(&path)
        };
        let node = f.tree.inode(id);
        let meta = &node.meta;
        let what = format!("/{path}");
        let st = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{what}: {e}"));
        let ft = st.file_type();
        match &node.kind {
            InodeKind::Directory { children } => {
                assert!(ft.is_dir(), "{what}");
                assert_eq!(fs::read_dir(&p).unwrap().count(), children.len(), "{what}");
            }
            InodeKind::File { content } => {
                assert!(ft.is_file(), "{what}");
                assert_eq!(st.len(), content.len, "{what}");
                let want = sha256(&f.store.read_all(content).unwrap());
                assert_eq!(sha256(&fs::read(&p).unwrap()), want, "{what} content");
                assert_eq!(st.nlink(), node.nlink as u64, "{what} nlink");
            }
            InodeKind::Symlink { target } => {
                assert!(ft.is_symlink(), "{what}");
                let got = fs::read_link(&p).unwrap();
                assert_eq!(got.as_os_str().as_encoded_bytes(), &target[..], "{what}");
            }
            InodeKind::CharDevice { major, minor } | InodeKind::BlockDevice { major, minor } => {
                let is_char = matches!(node.kind, InodeKind::CharDevice { .. });
                assert_eq!(ft.is_char_device(), is_char, "{what}");
                assert_eq!(ft.is_block_device(), !is_char, "{what}");
                let got = (dev_major(st.rdev()), dev_minor(st.rdev()));
                assert_eq!(got, (*major, *minor), "{what} device number");
            }
            InodeKind::Fifo => assert!(ft.is_fifo(), "{what}"),
            InodeKind::Socket => assert!(ft.is_socket(), "{what}"),
        }
        if !ft.is_symlink() {
            assert_eq!(st.mode() & 0o7777, meta.mode as u32, "{what} mode");
        }
        assert_eq!((st.uid(), st.gid()), (meta.uid, meta.gid), "{what} owner");
        assert_eq!(st.mtime(), clamp(meta.mtime), "{what} mtime");
        // Hardlinks come out as one inode.
        let ino = *inos.entry(id).or_insert(st.ino());
        assert_eq!(st.ino(), ino, "{what} is a hardlink of an earlier path");

        // system.* cannot be stored in SquashFS: the writer skips it.
        let stored: BTreeMap<String, String> = meta
            .xattrs
            .iter()
            .filter(|(k, _)| !k.starts_with(b"system."))
            .map(|(k, v)| {
                let k = String::from_utf8(k.clone()).unwrap();
                (k, format!("0x{}", hex::encode(v)))
            })
            .collect();
        if !stored.is_empty() || path.starts_with("usr/bin") || path.starts_with("files/") {
            assert_eq!(getfattr(&p), stored, "{what} xattrs");
        }
    }
    assert!(inos.len() > 3000);
    // ... and separate inodes (copies included) stay separate.
    let distinct: HashSet<u64> = inos.values().copied().collect();
    assert_eq!(distinct.len(), inos.len(), "separate inodes stay separate");
}

// ---------------------------------------------------------------------------
// The kernel's mount-time checks (fs/squashfs/super.c, id.c, export.c,
// fragment.c, xattr_id.c): each table's index must end exactly where the
// next table starts, index entries must be increasing and at most one
// metadata block (8194 bytes) apart, the last one right before the index.

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes(b[i..i + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

/// Checks a table index at `index_at`; returns its first block's position.
fn check_index(img: &[u8], what: &str, index_at: u64, entries: u64, entry_size: u64) -> u64 {
    let blocks = (entries * entry_size).div_ceil(8192);
    let idx: Vec<u64> = (0..blocks)
        .map(|i| u64_at(img, (index_at + i * 8) as usize))
        .collect();
    for w in idx.windows(2) {
        assert!(w[0] < w[1] && w[1] - w[0] <= 8194, "{what}: index {idx:?}");
    }
    let last = *idx.last().unwrap();
    assert!(
        last < index_at && index_at - last <= 8194,
        "{what}: last block {last} vs index {index_at}"
    );
    idx[0]
}

fn check_layout(img: &[u8], summary: &Summary, block_size: u32) {
    assert_eq!(&img[0..4], b"hsqs");
    let inodes = u32_at(img, 4);
    let bs = u32_at(img, 12);
    let fragments = u32_at(img, 16);
    let block_log = u16_at(img, 22);
    let flags = u16_at(img, 24);
    let ids = u16_at(img, 26) as u64;
    assert_eq!((u16_at(img, 28), u16_at(img, 30)), (4, 0));
    let root = u64_at(img, 32);
    let bytes_used = u64_at(img, 40);
    let id_start = u64_at(img, 48);
    let xattr_start = u64_at(img, 56);
    let inode_start = u64_at(img, 64);
    let dir_start = u64_at(img, 72);
    let frag_start = u64_at(img, 80);
    let export_start = u64_at(img, 88);

    assert_eq!(bs, block_size);
    assert_eq!(1u32 << block_log, bs);
    assert_eq!(flags & 0x0400, 0, "no compressor options are written");
    assert_eq!(inodes, summary.inodes);
    assert_eq!(fragments, summary.fragments);
    assert!(root & 0xffff < 8192);
    assert_eq!(img.len() as u64, summary.bytes);
    assert_eq!(img.len() % 4096, 0);
    assert!(bytes_used <= img.len() as u64 && img.len() as u64 - bytes_used < 4096);
    assert!(img[bytes_used as usize..].iter().all(|&b| b == 0));

    // From the end backwards, as the kernel does.
    let mut next = bytes_used;
    if xattr_start != u64::MAX {
        let xattr_table = u64_at(img, xattr_start as usize);
        let xids = u32_at(img, xattr_start as usize + 8) as u64;
        assert!(xids > 0);
        assert_eq!(xattr_start + 16 + xids.div_ceil(512) * 8, bytes_used);
        let first = check_index(img, "xattr id table", xattr_start + 16, xids, 16);
        assert!(xattr_table < first);
        next = xattr_table;
    }
    assert_eq!(
        next - id_start,
        ids.div_ceil(2048) * 8,
        "id index ends at the next table"
    );
    next = check_index(img, "id table", id_start, ids, 4);
    assert_ne!(export_start, u64::MAX);
    assert_eq!(next - export_start, (inodes as u64).div_ceil(1024) * 8);
    next = check_index(img, "export table", export_start, inodes as u64, 8);
    if fragments > 0 {
        assert!(frag_start + (fragments as u64).div_ceil(512) * 8 <= next);
        next = check_index(img, "fragment table", frag_start, fragments as u64, 16);
    } else {
        assert_eq!(frag_start, next);
    }
    // An empty root leaves the directory table empty, as with mksquashfs.
    assert!(inode_start < dir_start && dir_start <= next);
    assert!((root >> 16) < dir_start - inode_start);
}

// ---------------------------------------------------------------------------

fn check_all(compression: Compression, block_size: u32) {
    require_tool("unsquashfs", "squashfs-tools");
    require_tool("getfattr", "attr");
    require_root();
    let f = fixture(block_size);
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img.sqfs");
    let opts = Options {
        compression: compression.clone(),
        block_size,
        mkfs_time: 1_234_567_890,
        threads: 2,
    };
    let summary = write_image(&f, &opts, &img);
    let bytes = fs::read(&img).unwrap();
    check_layout(&bytes, &summary, block_size);

    // The superblock as unsquashfs reads it.
    let stat = unsquashfs_stat(&img);
    let name = match compression {
        Compression::Zstd { .. } => "zstd",
        Compression::Xz { .. } => "xz",
        Compression::Gzip { .. } => "gzip",
    };
    let field = |name: &str| stat_field(&stat, name);
    assert_eq!(field("Compression").as_deref(), Some(name), "{stat}");
    assert_eq!(field("Block size"), Some(block_size.to_string()), "{stat}");
    let frags = summary.fragments.to_string();
    assert_eq!(field("Number of fragments"), Some(frags), "{stat}");
    assert_eq!(
        field("Number of inodes"),
        Some(summary.inodes.to_string()),
        "{stat}"
    );
    // Owners 0, 5, 6, 1000 and 65534.
    assert_eq!(field("Number of ids").as_deref(), Some("5"), "{stat}");
    assert!(stat.contains("Duplicates are removed"), "{stat}");
    assert!(summary.fragments > 0 && summary.data_blocks > 0);
    // The random 5 MB file is there twice but stored once.
    let mut sizes = HashMap::new();
    for (_, id) in paths(&f.tree) {
        if let InodeKind::File { content } = &f.tree.inode(id).kind {
            sizes.insert(id, content.len);
        }
    }
    let all: u64 = sizes.values().sum();
    assert!(
        summary.bytes < all - 5_000_000,
        "{} of {all} bytes",
        summary.bytes
    );
    let mkfs = run(Command::new("unsquashfs").arg("-mkfs-time").arg(&img));
    assert_eq!(mkfs.trim(), "1234567890");

    // Listing: kinds, modes, owners, sizes, times, targets, devices.
    let expected = expected_listing(&f.tree);
    let actual = actual_listing(&img);
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a, e);
    }
    assert_eq!(actual.len(), expected.len());

    check_extraction(&f, &img, tmp.path());

    // Single files go through the fragment and block lookups.
    let cat = |p: &str| run(Command::new("unsquashfs").arg("-cat").arg(&img).arg(p));
    assert_eq!(cat("big/entry-02999-with-a-longer-name"), "2999\n");
    assert_eq!(cat("files/hard2"), "linked content\n");
}

#[test]
fn every_kind_with_zstd() {
    check_all(Compression::Zstd { level: 3 }, 128 * 1024);
}

#[test]
fn every_kind_with_xz() {
    check_all(Compression::Xz { level: 6 }, 128 * 1024);
}

#[test]
fn every_kind_with_gzip() {
    check_all(Compression::Gzip { level: 9 }, 128 * 1024);
}

#[test]
fn every_kind_with_4k_blocks() {
    check_all(Compression::Zstd { level: 1 }, 4096);
}

#[test]
fn every_kind_with_1m_blocks() {
    check_all(Compression::Gzip { level: 1 }, 1 << 20);
}

#[test]
fn output_is_reproducible_across_runs_and_thread_counts() {
    let f = fixture(128 * 1024);
    let tmp = tempfile::tempdir().unwrap();
    for compression in [
        Compression::Zstd { level: 3 },
        Compression::Gzip { level: 6 },
    ] {
        let mut images = Vec::new();
        for threads in [2, 2, 1, 5] {
            let opts = Options {
                compression: compression.clone(),
                threads,
                ..Options::default()
            };
            let p = tmp.path().join(format!("img-{threads}"));
            write_image(&f, &opts, &p);
            images.push(fs::read(&p).unwrap());
        }
        for (i, img) in images.iter().enumerate().skip(1) {
            assert!(
                img == &images[0],
                "{compression}: image {i} differs from image 0"
            );
        }
    }
}

#[test]
fn empty_tree() {
    require_tool("unsquashfs", "squashfs-tools");
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::new_in(dir.path()).unwrap();
    let tree = FsTree::new();
    let img = dir.path().join("empty.sqfs");
    let mut out = fs::File::create(&img).unwrap();
    let s = squashfs::write(&tree, &store, &Options::default(), &mut out).unwrap();
    assert_eq!((s.inodes, s.fragments, s.data_blocks), (1, 0, 0));
    check_layout(&fs::read(&img).unwrap(), &s, 128 * 1024);
    let listing = actual_listing(&img);
    assert_eq!(
        listing,
        vec!["drwxr-xr-x 0/0 * 1970-01-01 00:00 squashfs-root"]
    );
    let x = dir.path().join("x");
    run(Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&x)
        .arg(&img));
    assert_eq!(fs::read_dir(&x).unwrap().count(), 0);
}

#[test]
fn errors_name_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::new_in(dir.path()).unwrap();
    let mut tree = FsTree::new();
    let root = tree.root();
    let d = tree.add_inode(
        InodeKind::Directory {
            children: BTreeMap::new(),
        },
        Metadata::new(0o755, 0, 0, 0),
    );
    tree.link(root, b"etc".to_vec(), d);
    let l = tree.add_inode(
        InodeKind::Symlink {
            target: vec![b'x'; 5000],
        },
        Metadata::new(0o777, 0, 0, 0),
    );
    tree.link(d, b"toolong".to_vec(), l);
    let img = dir.path().join("bad.sqfs");
    let mut out = fs::File::create(&img).unwrap();
    let e = squashfs::write(&tree, &store, &Options::default(), &mut out).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("/etc/toolong") && msg.contains("5000"),
        "{msg}"
    );

    let bad = Options {
        block_size: 3000,
        ..Options::default()
    };
    let e = squashfs::write(&FsTree::new(), &store, &bad, &mut out).unwrap_err();
    assert!(e.to_string().contains("block size 3000"), "{e}");
}
