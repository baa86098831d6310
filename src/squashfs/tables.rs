//! The superblock and the entries of the fragment and id tables.

pub(crate) const SUPERBLOCK_SIZE: usize = 96;
const MAGIC: u32 = 0x7371_7368; // "hsqs"

/// A table that is not present.
pub(crate) const NO_TABLE: u64 = u64::MAX;

// Superblock flags. Only COMPRESSOR_OPTIONS changes how the kernel reads
// the image; the others are informational.
pub(crate) const FLAG_ALWAYS_FRAGMENTS: u16 = 0x0020;
pub(crate) const FLAG_DUPLICATES: u16 = 0x0040;
pub(crate) const FLAG_EXPORTABLE: u16 = 0x0080;
pub(crate) const FLAG_NO_XATTRS: u16 = 0x0200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub inode_count: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub compression: u16,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table_start: u64,
    pub xattr_id_table_start: u64,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    pub fragment_table_start: u64,
    pub export_table_start: u64,
}

impl Superblock {
    pub(crate) fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&self.inode_count.to_le_bytes());
        b.extend_from_slice(&self.mkfs_time.to_le_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&self.fragment_count.to_le_bytes());
        b.extend_from_slice(&self.compression.to_le_bytes());
        b.extend_from_slice(&(self.block_size.trailing_zeros() as u16).to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.id_count.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        for v in [
            self.root_inode,
            self.bytes_used,
            self.id_table_start,
            self.xattr_id_table_start,
            self.inode_table_start,
            self.directory_table_start,
            self.fragment_table_start,
            self.export_table_start,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.try_into().expect("superblock is 96 bytes")
    }
}

/// Fragment table entries: start (u64), size word (u32), unused (u32).
pub(crate) fn fragment_entries(fragments: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fragments.len() * 16);
    for &(start, size) in fragments {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    out
}

/// Id table entries: each uid/gid as u32.
pub(crate) fn id_entries(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_layout() {
        let sb = Superblock {
            inode_count: 7,
            mkfs_time: 0x1122_3344,
            block_size: 131072,
            fragment_count: 2,
            compression: 6,
            flags: FLAG_EXPORTABLE,
            id_count: 3,
            root_inode: 0x20_0040,
            bytes_used: 5000,
            id_table_start: 4900,
            xattr_id_table_start: NO_TABLE,
            inode_table_start: 1000,
            directory_table_start: 2000,
            fragment_table_start: 3000,
            export_table_start: 4000,
        };
        let b = sb.encode();
        assert_eq!(&b[0..4], b"hsqs");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 7);
        assert_eq!(u16::from_le_bytes([b[20], b[21]]), 6);
        assert_eq!(u16::from_le_bytes([b[22], b[23]]), 17);
        assert_eq!(u16::from_le_bytes([b[28], b[29]]), 4);
        assert_eq!(u16::from_le_bytes([b[30], b[31]]), 0);
        assert_eq!(u64::from_le_bytes(b[32..40].try_into().unwrap()), 0x20_0040);
        assert_eq!(u64::from_le_bytes(b[56..64].try_into().unwrap()), u64::MAX);
        assert_eq!(u64::from_le_bytes(b[88..96].try_into().unwrap()), 4000);
    }

    #[test]
    fn entries() {
        assert_eq!(
            fragment_entries(&[(96, 0x0100_0010)]),
            [96, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(id_entries(&[0, 65534]), [0, 0, 0, 0, 0xfe, 0xff, 0, 0]);
    }
}
