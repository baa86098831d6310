//! The xattr table: key/value lists in metadata blocks, an id table that
//! inodes index (one entry per distinct xattr set), and a header with the
//! index of the id table's blocks. It is the last table of the image: the
//! kernel checks that its index ends exactly at `bytes_used`.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;

use super::compress::Compressor;
use super::metadata::{meta_ref, MetaWriter};

/// Name prefixes SquashFS can store, with their type ids.
const PREFIXES: [(&[u8], u16); 3] = [(b"user.", 0), (b"trusted.", 1), (b"security.", 2)];

/// Splits a full xattr name into its SquashFS type id and the stored
/// suffix (`security.capability` → (2, `capability`)). `None` for
/// prefixes SquashFS has no type for (`system.*`, …).
pub(crate) fn split_name(name: &[u8]) -> Option<(u16, &[u8])> {
    PREFIXES
        .iter()
        .find_map(|&(prefix, ty)| name.strip_prefix(prefix).map(|rest| (ty, rest)))
}

pub(crate) struct XattrTable {
    /// Encoded key/value list → xattr id.
    ids: HashMap<Vec<u8>, u32>,
    kv: MetaWriter,
    /// Encoded id table entries (16 bytes each).
    id_entries: Vec<u8>,
    scratch: Vec<u8>,
}

impl XattrTable {
    pub(crate) fn new(comp: Compressor) -> Self {
        XattrTable {
            ids: HashMap::new(),
            kv: MetaWriter::new(comp),
            id_entries: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The xattr id for this set of attributes, adding it if it is new;
    /// `None` when nothing in it can be stored. Unsupported names are
    /// skipped (the plan already warned about them).
    pub(crate) fn add(&mut self, xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Option<u32>> {
        self.scratch.clear();
        let mut count = 0u32;
        let mut size = 0u32;
        for (name, value) in xattrs {
            let Some((ty, suffix)) = split_name(name) else {
                continue;
            };
            // Lengths were checked by the plan.
            self.scratch.extend_from_slice(&ty.to_le_bytes());
            self.scratch
                .extend_from_slice(&(suffix.len() as u16).to_le_bytes());
            self.scratch.extend_from_slice(suffix);
            self.scratch
                .extend_from_slice(&(value.len() as u32).to_le_bytes());
            self.scratch.extend_from_slice(value);
            count += 1;
            // What mksquashfs records: names with prefix and NUL, plus values.
            size = size.saturating_add((name.len() + 1 + value.len()) as u32);
        }
        if count == 0 {
            return Ok(None);
        }
        if let Some(&id) = self.ids.get(&self.scratch) {
            return Ok(Some(id));
        }
        let id = self.ids.len() as u32;
        let (block, offset) = self.kv.position();
        self.kv.append(&self.scratch)?;
        self.id_entries
            .extend_from_slice(&meta_ref(block, offset).to_le_bytes());
        self.id_entries.extend_from_slice(&count.to_le_bytes());
        self.id_entries.extend_from_slice(&size.to_le_bytes());
        self.ids.insert(std::mem::take(&mut self.scratch), id);
        Ok(Some(id))
    }

    /// The whole table placed at byte `at` of the image: key/value blocks,
    /// id blocks, the 16-byte header, the index. Returns the bytes and the
    /// header's position (the superblock's `xattr_id_table_start`).
    pub(crate) fn finish(self, comp: Compressor, at: u64) -> Result<(Vec<u8>, u64)> {
        let count = self.ids.len() as u32;
        let (mut bytes, _) = self.kv.finish()?;
        let ids_at = at + bytes.len() as u64;
        let mut w = MetaWriter::new(comp);
        w.append(&self.id_entries)?;
        let (id_blocks, starts) = w.finish()?;
        bytes.extend_from_slice(&id_blocks);
        let header_at = at + bytes.len() as u64;
        bytes.extend_from_slice(&at.to_le_bytes());
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for s in starts {
            bytes.extend_from_slice(&(ids_at + s).to_le_bytes());
        }
        Ok((bytes, header_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::Compression;

    fn table() -> XattrTable {
        XattrTable::new(Compressor::new(&Compression::Gzip { level: 9 }, 8192).unwrap())
    }

    #[test]
    fn prefixes() {
        assert_eq!(split_name(b"user.foo"), Some((0, &b"foo"[..])));
        assert_eq!(
            split_name(b"trusted.overlay.opaque"),
            Some((1, &b"overlay.opaque"[..]))
        );
        assert_eq!(
            split_name(b"security.capability"),
            Some((2, &b"capability"[..]))
        );
        assert_eq!(split_name(b"system.posix_acl_access"), None);
        assert_eq!(split_name(b"userfoo"), None);
    }

    #[test]
    fn sets_are_deduplicated_and_encoded() {
        let mut t = table();
        let mut a = BTreeMap::new();
        a.insert(b"user.foo".to_vec(), b"bar".to_vec());
        let mut b = a.clone();
        b.insert(b"system.posix_acl_access".to_vec(), b"x".to_vec());
        let mut c = BTreeMap::new();
        c.insert(b"security.capability".to_vec(), vec![1, 2, 3, 4]);
        let mut only_system = BTreeMap::new();
        only_system.insert(b"system.x".to_vec(), vec![]);

        assert_eq!(t.add(&a).unwrap(), Some(0));
        // The unsupported attribute is dropped, leaving the same set.
        assert_eq!(t.add(&b).unwrap(), Some(0));
        assert_eq!(t.add(&c).unwrap(), Some(1));
        assert_eq!(t.add(&only_system).unwrap(), None);
        assert_eq!(t.add(&BTreeMap::new()).unwrap(), None);
        assert_eq!(
            &t.id_entries[..16],
            &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 12, 0, 0, 0][..]
        );
        // Second set starts after the first: 2+2+3 + 4+3 = 14 bytes.
        assert_eq!(&t.id_entries[16..20], &[14, 0, 0, 0]);

        let (bytes, header_at) = t
            .finish(
                Compressor::new(&Compression::Gzip { level: 9 }, 8192).unwrap(),
                5000,
            )
            .unwrap();
        // Header then one index entry end the table.
        assert_eq!(header_at + 16 + 8, 5000 + bytes.len() as u64);
        let h = (header_at - 5000) as usize;
        assert_eq!(
            u64::from_le_bytes(bytes[h..h + 8].try_into().unwrap()),
            5000
        );
        assert_eq!(
            u32::from_le_bytes(bytes[h + 8..h + 12].try_into().unwrap()),
            2
        );
    }
}
