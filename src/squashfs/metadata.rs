//! Metadata blocks: the inode, directory, fragment, export, id and xattr
//! tables are streams cut into 8 KiB pieces, each stored behind a 2-byte
//! header (length, bit 15 set when stored uncompressed).

use anyhow::{Context, Result};

use super::compress::Compressor;

/// Uncompressed size of a full metadata block.
pub(crate) const METADATA_SIZE: usize = 8192;

/// Bit 15 of a metadata block header: the block is stored uncompressed.
const METADATA_UNCOMPRESSED: u16 = 0x8000;

/// The 2-byte header in front of a metadata block of `len` stored bytes.
pub(crate) fn metadata_header(len: usize, compressed: bool) -> [u8; 2] {
    debug_assert!(len <= METADATA_SIZE);
    let mut h = len as u16;
    if !compressed {
        h |= METADATA_UNCOMPRESSED;
    }
    h.to_le_bytes()
}

/// A reference to a byte in a metadata stream, as inodes and directory
/// entries store it: the start of its metadata block (relative to the start
/// of the table) in the upper 48 bits, the offset inside the uncompressed
/// block in the lower 16.
pub(crate) fn meta_ref(block_start: u64, offset: u16) -> u64 {
    (block_start << 16) | offset as u64
}

/// Builds one metadata table in memory, compressing each block as soon as it
/// is full.
pub(crate) struct MetaWriter {
    comp: Compressor,
    /// Compressed blocks, headers included.
    out: Vec<u8>,
    /// The block being filled (< METADATA_SIZE bytes between calls).
    cur: Vec<u8>,
    scratch: Vec<u8>,
    /// Start of each block already written, relative to the table start.
    starts: Vec<u64>,
}

impl MetaWriter {
    pub(crate) fn new(comp: Compressor) -> Self {
        MetaWriter {
            comp,
            out: Vec::new(),
            cur: Vec::with_capacity(METADATA_SIZE * 2),
            scratch: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Where the next appended byte goes: (block start, offset in block).
    pub(crate) fn position(&self) -> (u64, u16) {
        (self.out.len() as u64, self.cur.len() as u16)
    }

    /// Uncompressed bytes appended so far.
    pub(crate) fn uncompressed_len(&self) -> u64 {
        self.starts.len() as u64 * METADATA_SIZE as u64 + self.cur.len() as u64
    }

    /// Start (relative to the table) of the block holding uncompressed byte
    /// `pos`, which must already have been appended or be the next one.
    pub(crate) fn block_start_of(&self, pos: u64) -> u64 {
        let block = (pos / METADATA_SIZE as u64) as usize;
        self.starts
            .get(block)
            .copied()
            .unwrap_or(self.out.len() as u64)
    }

    pub(crate) fn append(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let take = (METADATA_SIZE - self.cur.len()).min(data.len());
            self.cur.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.cur.len() == METADATA_SIZE {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        self.starts.push(self.out.len() as u64);
        let compressed = self
            .comp
            .compress(&self.cur, &mut self.scratch)
            .context("compressing a metadata block")?;
        let body: &[u8] = if compressed { &self.scratch } else { &self.cur };
        self.out
            .extend_from_slice(&metadata_header(body.len(), compressed));
        self.out.extend_from_slice(body);
        self.cur.clear();
        Ok(())
    }

    /// Writes out the last, partial block. Returns the table bytes and the
    /// start of every block relative to the table start.
    pub(crate) fn finish(mut self) -> Result<(Vec<u8>, Vec<u64>)> {
        self.flush()?;
        Ok((self.out, self.starts))
    }
}

/// A lookup table (fragment, export, id or xattr id table): `entries` in
/// metadata blocks starting at byte `at` of the image, followed by the
/// index of their absolute block positions. Returns the bytes to write and
/// the position of the index, which is what the superblock points at.
pub(crate) fn indexed_table(comp: Compressor, entries: &[u8], at: u64) -> Result<(Vec<u8>, u64)> {
    let mut w = MetaWriter::new(comp);
    w.append(entries)?;
    let (mut bytes, starts) = w.finish()?;
    let index_at = at + bytes.len() as u64;
    for s in starts {
        bytes.extend_from_slice(&(at + s).to_le_bytes());
    }
    Ok((bytes, index_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::Compression;

    fn zstd() -> Compressor {
        Compressor::new(&Compression::Zstd { level: 3 }, 8192).unwrap()
    }

    #[test]
    fn header_encoding() {
        assert_eq!(metadata_header(8192, false), [0x00, 0xa0]);
        assert_eq!(metadata_header(100, true), [100, 0]);
        assert_eq!(metadata_header(0x1234, true), [0x34, 0x12]);
    }

    #[test]
    fn ref_packing() {
        assert_eq!(meta_ref(0, 0), 0);
        assert_eq!(meta_ref(0x1234, 0x56), 0x1234_0056);
        assert_eq!(meta_ref(1 << 32, 8191) >> 16, 1 << 32);
        assert_eq!(meta_ref(1 << 32, 8191) & 0xffff, 8191);
    }

    #[test]
    fn blocks_are_cut_at_8k_and_positions_follow() {
        let mut w = MetaWriter::new(zstd());
        assert_eq!(w.position(), (0, 0));
        w.append(&[7u8; 5000]).unwrap();
        assert_eq!(w.position(), (0, 5000));
        w.append(&[7u8; 5000]).unwrap();
        // One block was written; the second one starts right after it.
        let (start, off) = w.position();
        assert!(start > 2 && start < 200, "compressed block of 8K sevens");
        assert_eq!(off, 10000 - 8192);
        assert_eq!(w.uncompressed_len(), 10000);
        assert_eq!(w.block_start_of(100), 0);
        assert_eq!(w.block_start_of(9000), start);
        let (bytes, starts) = w.finish().unwrap();
        assert_eq!(starts, vec![0, start]);
        // First header: compressed, length = start - 2.
        let h = u16::from_le_bytes([bytes[0], bytes[1]]);
        assert_eq!(h & 0x8000, 0);
        assert_eq!(h as u64, start - 2);
    }

    #[test]
    fn incompressible_blocks_are_stored() {
        let mut s = 1u32;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 24) as u8
            })
            .collect();
        let mut w = MetaWriter::new(zstd());
        w.append(&noise).unwrap();
        let (bytes, _) = w.finish().unwrap();
        assert_eq!(&bytes[..2], &metadata_header(8192, false));
        assert_eq!(&bytes[2..], &noise[..]);
    }

    #[test]
    fn indexed_table_points_at_its_blocks() {
        let entries = vec![0u8; 8192 + 16];
        let (bytes, index_at) = indexed_table(zstd(), &entries, 1000).unwrap();
        let n = bytes.len();
        let idx = &bytes[n - 16..];
        assert_eq!(index_at, 1000 + n as u64 - 16);
        assert_eq!(u64::from_le_bytes(idx[..8].try_into().unwrap()), 1000);
        let second = u64::from_le_bytes(idx[8..].try_into().unwrap());
        let first_len = u16::from_le_bytes([bytes[0], bytes[1]]) & 0x7fff;
        assert_eq!(second, 1000 + 2 + first_len as u64);
    }
}
