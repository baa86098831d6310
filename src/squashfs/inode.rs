//! Inode encodings. Each kind has a basic form and an extended one (the
//! basic type id plus 7) that adds a link count, an xattr id or 64-bit
//! fields; the basic form is used whenever it can say everything.

use crate::tree::InodeKind;

pub(crate) const DIR: u16 = 1;
pub(crate) const FILE: u16 = 2;
pub(crate) const SYMLINK: u16 = 3;
pub(crate) const BLOCK_DEV: u16 = 4;
pub(crate) const CHAR_DEV: u16 = 5;
pub(crate) const FIFO: u16 = 6;
pub(crate) const SOCKET: u16 = 7;
/// Added to a basic type id for the extended form.
const EXTENDED: u16 = 7;

/// No fragment / no xattrs.
pub(crate) const NONE: u32 = 0xffff_ffff;

/// The basic type id of an inode kind, as directory entries record it.
pub(crate) fn basic_type(kind: &InodeKind) -> u16 {
    match kind {
        InodeKind::Directory { .. } => DIR,
        InodeKind::File { .. } => FILE,
        InodeKind::Symlink { .. } => SYMLINK,
        InodeKind::BlockDevice { .. } => BLOCK_DEV,
        InodeKind::CharDevice { .. } => CHAR_DEV,
        InodeKind::Fifo => FIFO,
        InodeKind::Socket => SOCKET,
    }
}

/// Linux `new_encode_dev`: the 32-bit device number SquashFS stores.
/// `None` when the numbers do not fit (major ≥ 4096 or minor ≥ 2^20).
pub fn new_encode_dev(major: u32, minor: u32) -> Option<u32> {
    if major > 0xfff || minor > 0xf_ffff {
        return None;
    }
    Some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// Fields every inode starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    /// Permission bits (12 bits, setuid/setgid/sticky included).
    pub mode: u16,
    /// Indexes into the id table.
    pub uid: u16,
    pub gid: u16,
    pub mtime: u32,
    pub number: u32,
}

/// SquashFS keeps 32-bit unsigned times.
pub(crate) fn clamp_mtime(t: i64) -> u32 {
    t.clamp(0, u32::MAX as i64) as u32
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_header(out: &mut Vec<u8>, ty: u16, h: &Header) {
    put16(out, ty);
    put16(out, h.mode & 0o7777);
    put16(out, h.uid);
    put16(out, h.gid);
    put32(out, h.mtime);
    put32(out, h.number);
}

pub(crate) struct FileInode<'a> {
    /// Image offset of the first data block.
    pub start: u64,
    pub size: u64,
    /// (fragment block index, offset inside it) of the tail.
    pub fragment: Option<(u32, u32)>,
    /// Size word of every full block.
    pub blocks: &'a [u32],
    pub nlink: u32,
    pub xattr: Option<u32>,
    /// Bytes covered by sparse (all-zero, not stored) blocks.
    pub sparse: u64,
}

pub(crate) fn encode_file(out: &mut Vec<u8>, h: &Header, f: &FileInode<'_>) {
    let (frag, frag_off) = f.fragment.unwrap_or((NONE, 0));
    let extended = f.nlink > 1
        || f.xattr.is_some()
        || f.sparse > 0
        || f.start > u32::MAX as u64
        || f.size > u32::MAX as u64;
    if extended {
        put_header(out, FILE + EXTENDED, h);
        put64(out, f.start);
        put64(out, f.size);
        put64(out, f.sparse);
        put32(out, f.nlink);
        put32(out, frag);
        put32(out, frag_off);
        put32(out, f.xattr.unwrap_or(NONE));
    } else {
        put_header(out, FILE, h);
        put32(out, f.start as u32);
        put32(out, frag);
        put32(out, frag_off);
        put32(out, f.size as u32);
    }
    for &b in f.blocks {
        put32(out, b);
    }
}

/// One directory index entry: where a header of a long listing starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirIndex {
    /// Offset of the header in the listing.
    pub index: u32,
    /// Start of its metadata block, relative to the directory table.
    pub start: u32,
    /// The header's first name.
    pub name: Vec<u8>,
}

pub(crate) struct DirInode<'a> {
    /// Where the listing starts: block start relative to the directory
    /// table, and offset inside the block.
    pub start_block: u32,
    pub offset: u16,
    /// Listing size in bytes (headers and entries).
    pub listing_size: u32,
    pub nlink: u32,
    pub parent: u32,
    pub xattr: Option<u32>,
    pub index: &'a [DirIndex],
}

pub(crate) fn encode_dir(out: &mut Vec<u8>, h: &Header, d: &DirInode<'_>) {
    // The stored size counts the implicit "." and ".." as 3 bytes.
    let file_size = d.listing_size as u64 + 3;
    // The index is optional; a u16 counts it.
    let index = &d.index[..d.index.len().min(u16::MAX as usize)];
    if file_size > u16::MAX as u64 || d.xattr.is_some() || !index.is_empty() {
        put_header(out, DIR + EXTENDED, h);
        put32(out, d.nlink);
        put32(out, file_size as u32);
        put32(out, d.start_block);
        put32(out, d.parent);
        put16(out, index.len() as u16);
        put16(out, d.offset);
        put32(out, d.xattr.unwrap_or(NONE));
        for i in index {
            put32(out, i.index);
            put32(out, i.start);
            put32(out, i.name.len() as u32 - 1);
            out.extend_from_slice(&i.name);
        }
    } else {
        put_header(out, DIR, h);
        put32(out, d.start_block);
        put32(out, d.nlink);
        put16(out, file_size as u16);
        put16(out, d.offset);
        put32(out, d.parent);
    }
}

pub(crate) fn encode_symlink(
    out: &mut Vec<u8>,
    h: &Header,
    target: &[u8],
    nlink: u32,
    xattr: Option<u32>,
) {
    put_header(
        out,
        if xattr.is_some() {
            SYMLINK + EXTENDED
        } else {
            SYMLINK
        },
        h,
    );
    put32(out, nlink);
    put32(out, target.len() as u32);
    out.extend_from_slice(target);
    if let Some(x) = xattr {
        put32(out, x);
    }
}

/// Devices (`rdev` from [`new_encode_dev`]), fifos and sockets (`rdev`
/// `None`).
pub(crate) fn encode_special(
    out: &mut Vec<u8>,
    h: &Header,
    basic: u16,
    rdev: Option<u32>,
    nlink: u32,
    xattr: Option<u32>,
) {
    put_header(
        out,
        if xattr.is_some() {
            basic + EXTENDED
        } else {
            basic
        },
        h,
    );
    put32(out, nlink);
    if let Some(r) = rdev {
        put32(out, r);
    }
    if let Some(x) = xattr {
        put32(out, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Header = Header {
        mode: 0o104755,
        uid: 1,
        gid: 2,
        mtime: 3,
        number: 4,
    };

    #[test]
    fn rdev_like_linux() {
        assert_eq!(new_encode_dev(8, 1), Some(0x801));
        assert_eq!(new_encode_dev(1, 3), Some(0x103));
        // Minor above 255: low byte, then the rest shifted past the major.
        let d = new_encode_dev(10, 1234).unwrap();
        assert_eq!(d, (1234 & 0xff) | (10 << 8) | ((1234 & !0xff) << 12));
        // new_decode_dev gives the numbers back.
        assert_eq!((d & 0xfff00) >> 8, 10);
        assert_eq!((d & 0xff) | ((d >> 12) & 0xfff00), 1234);
        assert_eq!(new_encode_dev(4095, 0xfffff), Some(0xffff_ffff));
        assert_eq!(new_encode_dev(4096, 0), None);
        assert_eq!(new_encode_dev(0, 1 << 20), None);
    }

    #[test]
    fn mtime_is_clamped() {
        assert_eq!(clamp_mtime(-5), 0);
        assert_eq!(clamp_mtime(1_700_000_000), 1_700_000_000);
        assert_eq!(clamp_mtime(1 << 40), u32::MAX);
    }

    #[test]
    fn header_keeps_only_permission_bits() {
        let mut out = Vec::new();
        encode_special(&mut out, &H, FIFO, None, 1, None);
        assert_eq!(
            out,
            [6, 0, 0xed, 0x09, 1, 0, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn file_forms() {
        let mut out = Vec::new();
        let f = FileInode {
            start: 96,
            size: 5000,
            fragment: Some((3, 100)),
            blocks: &[0x1000_0000 | 4096],
            nlink: 1,
            xattr: None,
            sparse: 0,
        };
        encode_file(&mut out, &H, &f);
        assert_eq!(out.len(), 16 + 16 + 4);
        assert_eq!(u16::from_le_bytes([out[0], out[1]]), FILE);

        for ext in [
            FileInode { nlink: 2, ..f },
            FileInode {
                xattr: Some(0),
                ..f
            },
            FileInode {
                start: 1 << 32,
                ..f
            },
            FileInode { size: 5 << 30, ..f },
            FileInode { sparse: 4096, ..f },
        ] {
            out.clear();
            encode_file(&mut out, &H, &ext);
            assert_eq!(u16::from_le_bytes([out[0], out[1]]), FILE + EXTENDED);
            assert_eq!(out.len(), 16 + 40 + 4);
        }
        // No fragment: index 0xffffffff.
        out.clear();
        encode_file(
            &mut out,
            &H,
            &FileInode {
                fragment: None,
                ..f
            },
        );
        assert_eq!(&out[20..24], &[0xff; 4]);
    }

    #[test]
    fn dir_forms() {
        let mut out = Vec::new();
        let d = DirInode {
            start_block: 10,
            offset: 20,
            listing_size: 100,
            nlink: 2,
            parent: 9,
            xattr: None,
            index: &[],
        };
        encode_dir(&mut out, &H, &d);
        assert_eq!(out.len(), 32);
        assert_eq!(u16::from_le_bytes([out[24], out[25]]), 103);

        out.clear();
        encode_dir(
            &mut out,
            &H,
            &DirInode {
                listing_size: 70_000,
                ..d
            },
        );
        assert_eq!(u16::from_le_bytes([out[0], out[1]]), DIR + EXTENDED);
        assert_eq!(u32::from_le_bytes(out[20..24].try_into().unwrap()), 70_003);
        assert_eq!(out.len(), 40);

        out.clear();
        let idx = [DirIndex {
            index: 8000,
            start: 555,
            name: b"abc".to_vec(),
        }];
        encode_dir(&mut out, &H, &DirInode { index: &idx, ..d });
        assert_eq!(out.len(), 40 + 12 + 3);
        assert_eq!(u16::from_le_bytes([out[32], out[33]]), 1);
        assert_eq!(u32::from_le_bytes(out[48..52].try_into().unwrap()), 2);
    }

    #[test]
    fn symlink_forms() {
        let mut out = Vec::new();
        encode_symlink(&mut out, &H, b"/etc/x", 1, None);
        assert_eq!(out.len(), 16 + 8 + 6);
        out.clear();
        encode_symlink(&mut out, &H, b"/etc/x", 1, Some(7));
        assert_eq!(u16::from_le_bytes([out[0], out[1]]), SYMLINK + EXTENDED);
        assert_eq!(&out[30..], &[7, 0, 0, 0]);
    }
}
