//! A reproducible cpio "newc" (SVR4, no CRC) writer, the format the Linux
//! kernel unpacks into the initramfs.
//!
//! Entries come out in [`FsTree::walk`] order (parents before children,
//! names sorted), inode numbers count up from 1 in that order, and every
//! field comes from the tree, so the same tree gives the same bytes.
//! Hardlinks share an inode number; the data travels with the first name
//! and later names have size 0, which is what the kernel's unpacker and
//! GNU cpio both accept.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{bail, Context, Result};

use crate::tree::{ContentStore, FsTree, InodeId, InodeKind};

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &[u8] = b"TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;

/// One entry's header fields.
#[derive(Debug, Default, Clone, Copy)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

/// Counts bytes and pads to 4-byte boundaries.
struct Out<'a> {
    w: &'a mut dyn Write,
    pos: u64,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).context("writing the cpio archive")?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<()> {
        let pad = (4 - (self.pos % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn entry(&mut self, h: &Header, name: &[u8]) -> Result<()> {
        let mut head = Vec::with_capacity(110);
        head.extend_from_slice(MAGIC);
        for v in [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.filesize,
            0, // devmajor: the archive's own device, meaningless here
            0, // devminor
            h.rdev_major,
            h.rdev_minor,
            name.len() as u32 + 1,
            0, // check: only for the 070702 (CRC) variant
        ] {
            write!(head, "{v:08x}").expect("writing to a Vec");
        }
        self.put(&head)?;
        self.put(name)?;
        self.put(&[0])?;
        self.pad4()
    }
}

fn clamp_u32(v: i64) -> u32 {
    v.clamp(0, u32::MAX as i64) as u32
}

/// Writes `tree` as a newc archive to `w` and returns the bytes written.
pub fn write(tree: &FsTree, store: &ContentStore, w: &mut dyn Write) -> Result<u64> {
    // Gather the entries first so errors name the path before any output.
    let mut entries: Vec<(Vec<u8>, InodeId)> = Vec::new();
    tree.walk(|path, id| {
        let name = if path.is_empty() {
            b".".to_vec()
        } else {
            path.to_vec()
        };
        entries.push((name, id));
    });

    // Link counts as the archive will carry them: the names present.
    let mut names_of: HashMap<InodeId, u32> = HashMap::new();
    for (_, id) in &entries {
        *names_of.entry(*id).or_default() += 1;
    }

    let mut out = Out { w, pos: 0 };
    let mut numbers: HashMap<InodeId, u32> = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    for (name, id) in &entries {
        let inode = tree.inode(*id);
        let path = String::from_utf8_lossy(name);
        let first = !numbers.contains_key(id);
        let next = numbers.len() as u32 + 1;
        let ino = *numbers.entry(*id).or_insert(next);
        let perm = inode.meta.mode as u32 & 0o7777;
        let mut h = Header {
            ino,
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            mtime: clamp_u32(inode.meta.mtime),
            nlink: 1,
            ..Header::default()
        };
        let mut data: Option<&[u8]> = None;
        let mut file = None;
        match &inode.kind {
            InodeKind::Directory { .. } => {
                h.mode = S_IFDIR | perm;
                h.nlink = inode.nlink.max(2);
            }
            InodeKind::File { content } => {
                h.mode = S_IFREG | perm;
                h.nlink = names_of[id];
                if first {
                    h.filesize = u32::try_from(content.len).map_err(|_| {
                        anyhow::anyhow!(
                            "{path}: {} bytes is too large for a cpio newc archive (at most 4 GiB - 1)",
                            content.len
                        )
                    })?;
                    file = Some(*content);
                }
            }
            InodeKind::Symlink { target } => {
                h.mode = S_IFLNK | 0o777;
                h.filesize = target.len() as u32;
                data = Some(target);
            }
            InodeKind::CharDevice { major, minor } | InodeKind::BlockDevice { major, minor } => {
                h.mode = perm
                    | if matches!(inode.kind, InodeKind::CharDevice { .. }) {
                        S_IFCHR
                    } else {
                        S_IFBLK
                    };
                h.rdev_major = *major;
                h.rdev_minor = *minor;
            }
            InodeKind::Fifo => h.mode = S_IFIFO | perm,
            InodeKind::Socket => h.mode = S_IFSOCK | perm,
        }
        if name.contains(&0) {
            bail!("{path}: a NUL byte in a name cannot be stored in cpio");
        }
        out.entry(&h, name)?;
        if let Some(d) = data {
            out.put(d)?;
        }
        if let Some(c) = file {
            let mut at = 0u64;
            while at < c.len {
                let n = buf.len().min((c.len - at) as usize);
                store
                    .read_at(&c, at, &mut buf[..n])
                    .with_context(|| format!("reading {path} from the content store"))?;
                out.put(&buf[..n])?;
                at += n as u64;
            }
        }
        out.pad4()?;
    }
    out.entry(
        &Header {
            nlink: 1,
            ..Header::default()
        },
        TRAILER,
    )?;
    Ok(out.pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Metadata;

    #[test]
    fn header_layout_and_padding() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ContentStore::new_in(dir.path()).unwrap();
        let mut tree = FsTree::new();
        let content = store.append(b"hi").unwrap();
        let f = tree.add_inode(InodeKind::File { content }, Metadata::new(0o755, 0, 0, 7));
        let root = tree.root();
        tree.link(root, b"init".to_vec(), f);
        let mut out = Vec::new();
        let n = write(&tree, &store, &mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        // "." first: header 110 bytes + ".\0" = 112, already aligned.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[110..112], b".\0");
        // Then "init": mode 0100755, size 2, name size 5.
        let e = &out[112..];
        assert_eq!(&e[14..22], b"000081ed");
        assert_eq!(&e[54..62], b"00000002");
        assert_eq!(&e[94..102], b"00000005");
        assert_eq!(&e[110..115], b"init\0");
        // 110 + 5 = 115 → padded to 116, then the data.
        assert_eq!(&e[116..118], b"hi");
        assert!(out.windows(10).any(|w| w == TRAILER));
    }

    #[test]
    fn rejects_files_over_4_gib() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::new_in(dir.path()).unwrap();
        let mut tree = FsTree::new();
        let content = crate::tree::ContentRef {
            offset: 0,
            len: 1 << 32,
        };
        let f = tree.add_inode(InodeKind::File { content }, Metadata::new(0o644, 0, 0, 0));
        let root = tree.root();
        tree.link(root, b"big".to_vec(), f);
        let err = write(&tree, &store, &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("big"), "{err:#}");
    }
}
