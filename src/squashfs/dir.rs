//! Directory listings: runs of entries behind 12-byte headers. All entries
//! under one header share the metadata block their inodes start in, and
//! store their inode number as a signed 16-bit difference from the
//! header's; a header holds at most 256 entries. `.` and `..` are implicit.

/// Most entries one header may hold.
const MAX_PER_HEADER: u32 = 256;

/// One entry as the listing needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub name: &'a [u8],
    /// The inode's reference (block start << 16 | offset).
    pub inode_ref: u64,
    pub number: u32,
    /// Basic inode type id.
    pub kind: u16,
}

/// A header that starts in a later metadata block than the listing (or the
/// previous such header): a candidate for the directory index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexPoint {
    /// Offset of the header within the listing.
    pub offset: u32,
    /// Uncompressed position of the header in the directory table.
    pub table_pos: u64,
    pub name: Vec<u8>,
}

struct Open {
    /// Offset of the header's count field in `out`.
    count_at: usize,
    count: u32,
    block: u64,
    base: u32,
    /// Metadata block (uncompressed position / 8192) the header sits in.
    table_block: u64,
}

/// Appends the listing of `entries` (sorted by name) to `out`. `at` is the
/// uncompressed directory-table position the listing will start at: a new
/// header is started whenever an entry would begin in a later metadata
/// block, so that each block is reachable from an index point.
pub(crate) fn encode_listing(entries: &[Entry<'_>], at: u64, out: &mut Vec<u8>) -> Vec<IndexPoint> {
    const BLOCK: u64 = super::metadata::METADATA_SIZE as u64;
    let base_len = out.len();
    let mut index = Vec::new();
    let mut last_index_block = at / BLOCK;
    let mut open: Option<Open> = None;
    for e in entries {
        let block = e.inode_ref >> 16;
        let offset = (e.inode_ref & 0xffff) as u16;
        let table_pos = at + (out.len() - base_len) as u64;
        let fits = open.as_ref().is_some_and(|h| {
            h.count < MAX_PER_HEADER
                && h.block == block
                && i16::try_from(e.number as i64 - h.base as i64).is_ok()
                && table_pos / BLOCK == h.table_block
        });
        if !fits {
            let table_block = table_pos / BLOCK;
            if table_block != last_index_block {
                index.push(IndexPoint {
                    offset: (out.len() - base_len) as u32,
                    table_pos,
                    name: e.name.to_vec(),
                });
                last_index_block = table_block;
            }
            let count_at = out.len();
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(block as u32).to_le_bytes());
            out.extend_from_slice(&e.number.to_le_bytes());
            open = Some(Open {
                count_at,
                count: 0,
                block,
                base: e.number,
                table_block,
            });
        }
        let h = open.as_mut().expect("a header is open");
        let delta = (e.number as i64 - h.base as i64) as i16;
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&delta.to_le_bytes());
        out.extend_from_slice(&e.kind.to_le_bytes());
        out.extend_from_slice(&(e.name.len() as u16 - 1).to_le_bytes());
        out.extend_from_slice(e.name);
        // The header stores count - 1.
        out[h.count_at..h.count_at + 4].copy_from_slice(&h.count.to_le_bytes());
        h.count += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a listing into (header count, start block, base) and entries
    /// (name, offset, number, kind).
    #[allow(clippy::type_complexity)]
    fn decode(mut b: &[u8]) -> Vec<((u32, u32, u32), Vec<(Vec<u8>, u16, u32, u16)>)> {
        let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let mut out = Vec::new();
        while !b.is_empty() {
            let (count, start, base) = (u32_at(b, 0) + 1, u32_at(b, 4), u32_at(b, 8));
            b = &b[12..];
            let mut entries = Vec::new();
            for _ in 0..count {
                let off = u16_at(b, 0);
                let delta = u16_at(b, 2) as i16;
                let kind = u16_at(b, 4);
                let len = u16_at(b, 6) as usize + 1;
                let name = b[8..8 + len].to_vec();
                entries.push((name, off, (base as i64 + delta as i64) as u32, kind));
                b = &b[8 + len..];
            }
            out.push(((count, start, base), entries));
        }
        out
    }

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("file{i:05}").into_bytes()).collect()
    }

    #[test]
    fn small_listing_has_one_header() {
        let ns = names(3);
        let entries: Vec<_> = ns
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                name: n,
                inode_ref: (5 << 16) | (i as u64 * 40),
                number: 10 + i as u32,
                kind: 2,
            })
            .collect();
        let mut out = Vec::new();
        assert!(encode_listing(&entries, 0, &mut out).is_empty());
        let d = decode(&out);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, (3, 5, 10));
        assert_eq!(d[0].1[2], (b"file00002".to_vec(), 80, 12, 2));
        assert_eq!(out.len(), 12 + 3 * (8 + 9));
    }

    #[test]
    fn headers_split_at_256_entries_and_block_changes() {
        let ns = names(600);
        let entries: Vec<_> = ns
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                name: n,
                // Inodes 0..299 in block 0, the rest in block 7000.
                inode_ref: if i < 300 { 0 } else { 7000 << 16 },
                number: 1 + i as u32,
                kind: 2,
            })
            .collect();
        let mut out = Vec::new();
        encode_listing(&entries, 0, &mut out);
        let d = decode(&out);
        let counts: Vec<_> = d.iter().map(|h| (h.0 .0, h.0 .1)).collect();
        // Also split where the listing crosses 8 KiB (entry 8192/17 ≈ 480).
        assert_eq!(counts[0], (256, 0));
        assert_eq!(counts[1], (44, 0));
        assert_eq!(counts[2].1, 7000);
        assert_eq!(counts.iter().map(|c| c.0).sum::<u32>(), 600);
        assert!(counts.len() >= 4);
        let all: Vec<_> = d.iter().flat_map(|h| h.1.iter()).collect();
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.0, ns[i]);
            assert_eq!(e.2, 1 + i as u32);
        }
    }

    #[test]
    fn headers_split_when_numbers_drift_apart() {
        let ns = names(3);
        let numbers = [100u32, 100 + 32767, 100 + 32768];
        let entries: Vec<_> = (0..3)
            .map(|i| Entry {
                name: &ns[i],
                inode_ref: 0,
                number: numbers[i],
                kind: 1,
            })
            .collect();
        let mut out = Vec::new();
        encode_listing(&entries, 0, &mut out);
        let d = decode(&out);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].0 .0, 2);
        assert_eq!(d[1].0, (1, 0, 100 + 32768));
        // Negative deltas work too.
        let entries: Vec<_> = (0..2)
            .map(|i| Entry {
                name: &ns[i],
                inode_ref: 0,
                number: [50_000u32, 50_000 - 32768][i],
                kind: 1,
            })
            .collect();
        out.clear();
        encode_listing(&entries, 0, &mut out);
        let d = decode(&out);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1[1].2, 50_000 - 32768);
    }

    #[test]
    fn index_points_mark_new_blocks() {
        let ns = names(1000);
        let entries: Vec<_> = ns
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                name: n,
                inode_ref: 0,
                number: 1 + i as u32,
                kind: 2,
            })
            .collect();
        let mut out = Vec::new();
        // Start near the end of a metadata block.
        let at = 3 * 8192 + 8000;
        let index = encode_listing(&entries, at, &mut out);
        assert!(index.len() >= 2);
        let d = decode(&out);
        let mut off = 0usize;
        let mut header_offsets = Vec::new();
        for h in &d {
            header_offsets.push((off, h.1[0].0.clone()));
            off += 12 + h.1.iter().map(|e| 8 + e.0.len()).sum::<usize>();
        }
        let mut prev_block = at / 8192;
        for p in &index {
            assert!(header_offsets.contains(&(p.offset as usize, p.name.clone())));
            assert_eq!(p.table_pos, at + p.offset as u64);
            assert!(p.table_pos / 8192 > prev_block);
            prev_block = p.table_pos / 8192;
        }
        // Every block an entry starts in has a header in it (the last entry
        // may run into one more block).
        let last_block = (at + out.len() as u64 - 1) / 8192;
        assert!(last_block - prev_block <= 1);
    }
}
