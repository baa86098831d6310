//! A small reader for the tests, written after the kernel's code paths
//! (fs/squashfs/namei.c, file.c, export.c, xattr.c) rather than
//! unsquashfs': name lookups go through the directory index, files through
//! their block lists and the fragment table, inode numbers through the
//! export table. It checks what `unsquashfs` does not look at.

use std::collections::HashMap;
use std::io::Read;

use super::compress::{ID_GZIP, ID_XZ, ID_ZSTD};

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes(b[i..i + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Data {
    Dir {
        start_block: u32,
        offset: u16,
        /// Listing size + 3.
        size: u32,
        parent: u32,
        /// (index, start block, name)
        index: Vec<(u32, u32, Vec<u8>)>,
    },
    File {
        start: u64,
        size: u64,
        fragment: u32,
        frag_offset: u32,
        blocks: Vec<u32>,
    },
    Symlink(Vec<u8>),
    Dev(u32),
    Ipc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inode {
    pub ty: u16,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub number: u32,
    pub nlink: u32,
    pub xattr: Option<u32>,
    pub data: Data,
}

pub(crate) struct Reader<'a> {
    img: &'a [u8],
    comp: u16,
    pub block_size: u32,
    pub inode_count: u32,
    pub root: u64,
    inode_table: u64,
    dir_table: u64,
    frag_index: u64,
    export_index: u64,
    id_index: u64,
    xattr_header: u64,
    cache: HashMap<u64, (Vec<u8>, u64)>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(img: &'a [u8]) -> Self {
        assert_eq!(&img[..4], b"hsqs");
        Reader {
            img,
            comp: u16_at(img, 20),
            block_size: u32_at(img, 12),
            inode_count: u32_at(img, 4),
            root: u64_at(img, 32),
            id_index: u64_at(img, 48),
            xattr_header: u64_at(img, 56),
            inode_table: u64_at(img, 64),
            dir_table: u64_at(img, 72),
            frag_index: u64_at(img, 80),
            export_index: u64_at(img, 88),
            cache: HashMap::new(),
        }
    }

    fn decompress(&self, data: &[u8], max: usize) -> Vec<u8> {
        let out = match self.comp {
            ID_ZSTD => zstd::bulk::decompress(data, max).unwrap(),
            ID_XZ => {
                let mut v = Vec::new();
                liblzma::read::XzDecoder::new(data)
                    .read_to_end(&mut v)
                    .unwrap();
                v
            }
            ID_GZIP => {
                let mut v = Vec::new();
                flate2::read::ZlibDecoder::new(data)
                    .read_to_end(&mut v)
                    .unwrap();
                v
            }
            c => panic!("compressor {c}"),
        };
        assert!(out.len() <= max);
        out
    }

    /// The metadata block at absolute `at`: its bytes and the next block.
    fn block(&mut self, at: u64) -> (Vec<u8>, u64) {
        if let Some(b) = self.cache.get(&at) {
            return b.clone();
        }
        let h = u16_at(self.img, at as usize);
        let len = (h & 0x7fff) as usize;
        let raw = &self.img[at as usize + 2..at as usize + 2 + len];
        let data = if h & 0x8000 != 0 {
            raw.to_vec()
        } else {
            self.decompress(raw, 8192)
        };
        assert!(data.len() <= 8192);
        let r = (data, at + 2 + len as u64);
        self.cache.insert(at, r.clone());
        r
    }

    /// squashfs_read_metadata: `len` bytes from (absolute block, offset),
    /// moving the position on.
    fn read(&mut self, block: &mut u64, offset: &mut usize, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let (data, next) = self.block(*block);
            assert!(*offset <= data.len(), "offset past the block");
            let take = (len - out.len()).min(data.len() - *offset);
            out.extend_from_slice(&data[*offset..*offset + take]);
            *offset += take;
            if *offset == data.len() {
                *block = next;
                *offset = 0;
            }
        }
        out
    }

    /// Entry `i` (of `size` bytes) of a table whose block index is at `index`.
    fn table_entry(&mut self, index: u64, i: u64, size: u64) -> Vec<u8> {
        let pos = i * size;
        let mut block = u64_at(self.img, (index + pos / 8192 * 8) as usize);
        let mut offset = (pos % 8192) as usize;
        self.read(&mut block, &mut offset, size as usize)
    }

    fn id(&mut self, i: u16) -> u32 {
        u32_at(&self.table_entry(self.id_index, i as u64, 4), 0)
    }

    /// The inode number → reference mapping of the export table.
    pub(crate) fn export(&mut self, number: u32) -> u64 {
        u64_at(
            &self.table_entry(self.export_index, number as u64 - 1, 8),
            0,
        )
    }

    pub(crate) fn inode(&mut self, r: u64) -> Inode {
        let mut block = self.inode_table + (r >> 16);
        let mut off = (r & 0xffff) as usize;
        let h = self.read(&mut block, &mut off, 16);
        let ty = u16_at(&h, 0);
        let mut rd = |n: usize| self.read(&mut block, &mut off, n);
        let mut xattr = None;
        let mut nlink = 1;
        let data = match ty {
            1 => {
                let b = rd(16);
                nlink = u32_at(&b, 4);
                Data::Dir {
                    start_block: u32_at(&b, 0),
                    size: u16_at(&b, 8) as u32,
                    offset: u16_at(&b, 10),
                    parent: u32_at(&b, 12),
                    index: Vec::new(),
                }
            }
            8 => {
                let b = rd(24);
                nlink = u32_at(&b, 0);
                let count = u16_at(&b, 16);
                xattr = Some(u32_at(&b, 20));
                let mut index = Vec::new();
                for _ in 0..count {
                    let e = rd(12);
                    let name = rd(u32_at(&e, 8) as usize + 1);
                    index.push((u32_at(&e, 0), u32_at(&e, 4), name));
                }
                Data::Dir {
                    size: u32_at(&b, 4),
                    start_block: u32_at(&b, 8),
                    parent: u32_at(&b, 12),
                    offset: u16_at(&b, 18),
                    index,
                }
            }
            2 | 9 => {
                let (start, size, fragment, frag_offset) = if ty == 2 {
                    let b = rd(16);
                    (
                        u32_at(&b, 0) as u64,
                        u32_at(&b, 12) as u64,
                        u32_at(&b, 4),
                        u32_at(&b, 8),
                    )
                } else {
                    let b = rd(40);
                    nlink = u32_at(&b, 24);
                    xattr = Some(u32_at(&b, 36));
                    (u64_at(&b, 0), u64_at(&b, 8), u32_at(&b, 28), u32_at(&b, 32))
                };
                let bs = self.block_size as u64;
                let n = if fragment == u32::MAX {
                    size.div_ceil(bs)
                } else {
                    size / bs
                };
                let mut rd = |n: usize| self.read(&mut block, &mut off, n);
                let blocks = (0..n).map(|_| u32_at(&rd(4), 0)).collect();
                Data::File {
                    start,
                    size,
                    fragment,
                    frag_offset,
                    blocks,
                }
            }
            3 | 10 => {
                let b = rd(8);
                nlink = u32_at(&b, 0);
                let target = rd(u32_at(&b, 4) as usize);
                if ty == 10 {
                    xattr = Some(u32_at(&rd(4), 0));
                }
                Data::Symlink(target)
            }
            4 | 5 | 11 | 12 => {
                let b = rd(8);
                nlink = u32_at(&b, 0);
                if ty > 7 {
                    xattr = Some(u32_at(&rd(4), 0));
                }
                Data::Dev(u32_at(&b, 4))
            }
            6 | 7 | 13 | 14 => {
                nlink = u32_at(&rd(4), 0);
                if ty > 7 {
                    xattr = Some(u32_at(&rd(4), 0));
                }
                Data::Ipc
            }
            t => panic!("inode type {t}"),
        };
        Inode {
            ty,
            mode: u16_at(&h, 2),
            uid: self.id(u16_at(&h, 4)),
            gid: self.id(u16_at(&h, 6)),
            mtime: u32_at(&h, 8),
            number: u32_at(&h, 12),
            nlink,
            xattr: xattr.filter(|&x| x != u32::MAX),
            data,
        }
    }

    /// squashfs_lookup with get_dir_index_using_name: (inode ref, number).
    pub(crate) fn lookup(&mut self, dir: &Inode, name: &[u8]) -> Option<(u64, u32)> {
        let Data::Dir {
            start_block,
            offset,
            size,
            index,
            ..
        } = &dir.data
        else {
            panic!("not a directory");
        };
        let mut block = self.dir_table + *start_block as u64;
        let mut off = *offset as usize;
        let mut length = 0u32;
        for (idx, start, iname) in index {
            if iname.as_slice() > name {
                break;
            }
            length = *idx;
            block = self.dir_table + *start as u64;
        }
        off = (length as usize + off) % 8192;
        let mut length = length + 3;
        while length < *size {
            let h = self.read(&mut block, &mut off, 12);
            length += 12;
            let count = u32_at(&h, 0) + 1;
            assert!(count <= 256);
            for _ in 0..count {
                let e = self.read(&mut block, &mut off, 8);
                let len = u16_at(&e, 6) as usize + 1;
                assert!(len <= 256);
                let ename = self.read(&mut block, &mut off, len);
                length += 8 + len as u32;
                if name[0] < ename[0] {
                    return None;
                }
                if ename == name {
                    let r = ((u32_at(&h, 4) as u64) << 16) | u16_at(&e, 0) as u64;
                    let number = (u32_at(&h, 8) as i64 + u16_at(&e, 2) as i16 as i64) as u32;
                    return Some((r, number));
                }
            }
        }
        None
    }

    /// Every entry of a directory: (name, ref, number, type).
    pub(crate) fn readdir(&mut self, dir: &Inode) -> Vec<(Vec<u8>, u64, u32, u16)> {
        let Data::Dir {
            start_block,
            offset,
            size,
            ..
        } = &dir.data
        else {
            panic!("not a directory");
        };
        let mut block = self.dir_table + *start_block as u64;
        let mut off = *offset as usize;
        let mut length = 3;
        let mut out = Vec::new();
        while length < *size {
            let h = self.read(&mut block, &mut off, 12);
            length += 12;
            for _ in 0..u32_at(&h, 0) + 1 {
                let e = self.read(&mut block, &mut off, 8);
                let len = u16_at(&e, 6) as usize + 1;
                let name = self.read(&mut block, &mut off, len);
                length += 8 + len as u32;
                let r = ((u32_at(&h, 4) as u64) << 16) | u16_at(&e, 0) as u64;
                let number = (u32_at(&h, 8) as i64 + u16_at(&e, 2) as i16 as i64) as u32;
                out.push((name, r, number, u16_at(&e, 4)));
            }
        }
        assert_eq!(length, *size);
        out
    }

    fn data_block(&self, at: u64, word: u32, want: usize) -> Vec<u8> {
        let len = (word & 0xff_ffff) as usize;
        let raw = &self.img[at as usize..at as usize + len];
        let out = if word & (1 << 24) != 0 {
            raw.to_vec()
        } else {
            self.decompress(raw, self.block_size as usize)
        };
        assert!(out.len() >= want);
        out
    }

    pub(crate) fn read_file(&mut self, inode: &Inode) -> Vec<u8> {
        let Data::File {
            start,
            size,
            fragment,
            frag_offset,
            blocks,
        } = &inode.data
        else {
            panic!("not a file");
        };
        let bs = self.block_size as usize;
        let mut out = Vec::with_capacity(*size as usize);
        let mut at = *start;
        for &w in blocks {
            let want = bs.min(*size as usize - out.len());
            if w == 0 {
                out.resize(out.len() + want, 0);
                continue;
            }
            let b = self.data_block(at, w, want);
            out.extend_from_slice(&b[..want]);
            at += (w & 0xff_ffff) as u64;
        }
        if *fragment != u32::MAX {
            let e = self.table_entry(self.frag_index, *fragment as u64, 16);
            let tail = *size as usize - out.len();
            let b = self.data_block(u64_at(&e, 0), u32_at(&e, 8), 0);
            let o = *frag_offset as usize;
            out.extend_from_slice(&b[o..o + tail]);
        }
        assert_eq!(out.len() as u64, *size);
        out
    }

    /// The full names and values of xattr set `id`.
    pub(crate) fn xattrs(&mut self, id: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let h = self.xattr_header as usize;
        let kv_start = u64_at(self.img, h);
        assert!(id < u32_at(self.img, h + 8));
        let e = self.table_entry(self.xattr_header + 16, id as u64, 16);
        let r = u64_at(&e, 0);
        let mut block = kv_start + (r >> 16);
        let mut off = (r & 0xffff) as usize;
        let mut out = Vec::new();
        let mut size = 0u32;
        for _ in 0..u32_at(&e, 8) {
            let k = self.read(&mut block, &mut off, 4);
            let prefix: &[u8] = match u16_at(&k, 0) {
                0 => b"user.",
                1 => b"trusted.",
                2 => b"security.",
                t => panic!("xattr type {t}"),
            };
            let mut name = prefix.to_vec();
            name.extend(self.read(&mut block, &mut off, u16_at(&k, 2) as usize));
            let vlen = u32_at(&self.read(&mut block, &mut off, 4), 0) as usize;
            let value = self.read(&mut block, &mut off, vlen);
            size += (name.len() + 1 + value.len()) as u32;
            out.push((name, value));
        }
        assert_eq!(size, u32_at(&e, 12));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::squashfs::inode::{basic_type, clamp_mtime, new_encode_dev};
    use crate::squashfs::{write, Compression, Options};
    use crate::tree::{ContentStore, FsTree, InodeId, InodeKind, Metadata};

    fn noise(len: usize, mut s: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u8
            })
            .collect()
    }

    fn tree(store: &mut ContentStore) -> FsTree {
        let mut t = FsTree::new();
        let root = t.root();
        let m = |mode| Metadata::new(mode, 0, 0, 1_600_000_000);
        let add = |t: &mut FsTree, dir: InodeId, name: &[u8], kind, meta| {
            let id = t.add_inode(kind, meta);
            t.link(dir, name.to_vec(), id);
            id
        };
        let dir = || InodeKind::Directory {
            children: BTreeMap::new(),
        };
        let big = add(&mut t, root, b"big", dir(), m(0o755));
        let mut file = |t: &mut FsTree, d, name: &[u8], data: &[u8], meta| {
            let content = store.append(data).unwrap();
            add(t, d, name, InodeKind::File { content }, meta)
        };
        let sizes = [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 5, 10_000];
        for i in 0..5000usize {
            // Long names, so the listing spans many metadata blocks.
            let name = format!("{i:05}-{}", "x".repeat(i % 90));
            if i % 700 == 3 {
                let d = add(
                    &mut t,
                    big,
                    name.as_bytes(),
                    dir(),
                    Metadata::new(0o700, 7, 8, i as i64),
                );
                file(&mut t, d, b"in", b"inner", m(0o644));
            } else if i % 3 == 0 {
                let data = noise(sizes[i % sizes.len()], i as u64 + 1);
                file(
                    &mut t,
                    big,
                    name.as_bytes(),
                    &data,
                    Metadata::new(0o640, 1000 + (i % 5) as u32, 100, -(i as i64)),
                );
            } else {
                add(
                    &mut t,
                    big,
                    name.as_bytes(),
                    InodeKind::Symlink {
                        target: name.as_bytes().to_vec(),
                    },
                    m(0o777),
                );
            }
        }
        let zeros = file(&mut t, root, b"zeros", &vec![0u8; 5 * 4096 + 3], m(0o644));
        // Copies of big/00003-… (i = 3: 4096 bytes, seed 4) and of each other.
        file(&mut t, root, b"dup", &noise(4096, 4), m(0o644));
        file(&mut t, root, b"dup-tail", &noise(4097, 5), m(0o644));
        file(&mut t, root, b"dup-tail2", &noise(4097, 5), m(0o600));
        t.link(big, b"zz-hardlink".to_vec(), zeros);
        t.link(root, b"zeros2".to_vec(), zeros);
        let mut xm = m(0o4755);
        xm.xattrs
            .insert(b"security.capability".to_vec(), vec![1, 2, 3]);
        xm.xattrs.insert(b"user.a".to_vec(), b"b".to_vec());
        xm.xattrs.insert(b"system.skipped".to_vec(), b"c".to_vec());
        file(&mut t, root, b"cap", b"cap", xm.clone());
        add(&mut t, root, b"xdir", dir(), xm.clone());
        add(
            &mut t,
            root,
            b"chr",
            InodeKind::CharDevice {
                major: 10,
                minor: 1234,
            },
            xm.clone(),
        );
        add(
            &mut t,
            root,
            b"blk",
            InodeKind::BlockDevice {
                major: 4095,
                minor: 0xfffff,
            },
            m(0o600),
        );
        add(&mut t, root, b"fifo", InodeKind::Fifo, xm.clone());
        add(&mut t, root, b"sock", InodeKind::Socket, m(0o600));
        add(
            &mut t,
            root,
            b"xlink",
            InodeKind::Symlink {
                target: b"/abs".to_vec(),
            },
            xm,
        );
        t
    }

    fn check(compression: Compression) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ContentStore::new_in(dir.path()).unwrap();
        let t = tree(&mut store);
        let path = dir.path().join("img");
        let mut f = std::fs::File::create(&path).unwrap();
        let opts = Options {
            compression,
            block_size: 4096,
            ..Options::default()
        };
        let summary = write(&t, &store, &opts, &mut f).unwrap();
        let img = std::fs::read(&path).unwrap();
        let mut r = Reader::new(&img);
        assert_eq!(r.inode_count, summary.inodes);
        let root_ref = r.root;
        let root = r.inode(root_ref);
        assert_eq!(r.export(root.number), root_ref);
        assert_eq!(root.number, r.inode_count);
        assert!(matches!(root.data, Data::Dir { parent, .. } if parent == r.inode_count + 1));

        // Resolve every path component by component, as the kernel does.
        let mut seen: HashMap<InodeId, (u64, u32)> = HashMap::new();
        let mut dirs_with_index = 0;
        let mut stack = vec![(t.root(), root_ref, root.clone())];
        while let Some((id, _, dinode)) = stack.pop() {
            let listed = r.readdir(&dinode);
            let names: Vec<_> = t.children(id).map(|(n, _)| n.to_vec()).collect();
            assert_eq!(
                listed.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
                names
            );
            if let Data::Dir { index, .. } = &dinode.data {
                dirs_with_index += usize::from(!index.is_empty());
            }
            for (name, c) in t.children(id) {
                let (cref, cnum) = r.lookup(&dinode, name).unwrap_or_else(|| {
                    panic!("lookup of {:?} failed", String::from_utf8_lossy(name))
                });
                let e = seen.entry(c).or_insert((cref, cnum));
                assert_eq!(*e, (cref, cnum), "hardlinks share one inode");
                assert_eq!(r.export(cnum), cref);
                let ino = r.inode(cref);
                let node = t.inode(c);
                assert_eq!(ino.number, cnum);
                assert_eq!(ino.ty % 7, basic_type(&node.kind) % 7);
                assert_eq!(ino.mode, node.meta.mode);
                assert_eq!((ino.uid, ino.gid), (node.meta.uid, node.meta.gid));
                assert_eq!(ino.mtime, clamp_mtime(node.meta.mtime));
                assert_eq!(ino.nlink, node.nlink);
                let want: Vec<_> = node
                    .meta
                    .xattrs
                    .iter()
                    .filter(|(k, _)| !k.starts_with(b"system."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let got = ino.xattr.map(|x| r.xattrs(x)).unwrap_or_default();
                assert_eq!(got, want);
                match (&node.kind, &ino.data) {
                    (InodeKind::Directory { .. }, Data::Dir { parent, .. }) => {
                        assert_eq!(*parent, dinode.number);
                        stack.push((c, cref, ino.clone()));
                    }
                    (InodeKind::File { content }, Data::File { .. }) => {
                        assert_eq!(r.read_file(&ino), store.read_all(content).unwrap());
                    }
                    (InodeKind::Symlink { target }, Data::Symlink(got)) => assert_eq!(target, got),
                    (
                        InodeKind::CharDevice { major, minor }
                        | InodeKind::BlockDevice { major, minor },
                        Data::Dev(rdev),
                    ) => assert_eq!(Some(*rdev), new_encode_dev(*major, *minor)),
                    (InodeKind::Fifo | InodeKind::Socket, Data::Ipc) => {}
                    (k, d) => panic!("{k:?} stored as {d:?}"),
                }
            }
            // Names that are not there, before, between and after entries.
            for missing in [&b"!"[..], b"00000-a", b"04999-zzz", b"zzzz", b"00001-xx"] {
                assert_eq!(r.lookup(&dinode, missing), None);
            }
        }
        assert_eq!(seen.len() + 1, r.inode_count as usize);
        assert!(dirs_with_index >= 1);
    }

    #[test]
    fn kernel_style_reads_zstd() {
        check(Compression::Zstd { level: 3 });
    }

    #[test]
    fn kernel_style_reads_gzip() {
        check(Compression::Gzip { level: 6 });
    }

    #[test]
    fn kernel_style_reads_xz() {
        check(Compression::Xz { level: 1 });
    }
}
