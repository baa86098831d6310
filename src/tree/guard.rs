//! Refusing oversized tar extension records before they are read.
//!
//! The `tar` crate reads a GNU long-name (`L`) or long-link (`K`) record
//! and a PAX extended header (`x`; `g` when asked for its records) whole
//! into memory before it yields the entry they describe, however large the
//! record's header says it is: a 510 KB gzip layer holding one 512 MiB long
//! name costs 512 MiB of memory and minutes of work. A [`HeaderWatch`] puts
//! a reader between the decompressor and the tar reader that looks at each
//! header block as it passes and fails the read of one announcing such a
//! record larger than [`MAX_RECORD`], before its body is read.
//!
//! The watch follows the archive's block structure from what the tar
//! reader reports: the first header is at offset 0; after each entry the
//! caller tells where the next header starts ([`HeaderWatch::after`]); from
//! the header of an extension record the watch finds the next header
//! itself (the record's size, rounded up to 512).

use std::cell::Cell;
use std::io::{self, Read};

/// The largest GNU long-name/long-link record or PAX extended header
/// accepted, in bytes.
pub const MAX_RECORD: u64 = 64 << 10;
/// The longest path or link target accepted, in bytes.
pub const MAX_PATH: usize = 4096;

const BLOCK: u64 = 512;

/// An extension record larger than [`MAX_RECORD`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} of {size} bytes (the limit is {MAX_RECORD})", record_name(*.typeflag))]
pub struct RecordTooLarge {
    /// `L`, `K`, `x` or `g`.
    pub typeflag: u8,
    pub size: u64,
    /// The record header's own name field (`././@LongLink`,
    /// `PaxHeaders/…`), for messages.
    pub name: Vec<u8>,
}

/// What a record of type `typeflag` is called in messages.
pub fn record_name(typeflag: u8) -> &'static str {
    match typeflag {
        b'L' => "GNU long-name record",
        b'K' => "GNU long-link record",
        b'x' => "PAX extended header",
        b'g' => "PAX global header",
        _ => "extension record",
    }
}

/// The [`RecordTooLarge`] an entry iterator's error carries, if any.
pub fn record_error(e: &io::Error) -> Option<&RecordTooLarge> {
    e.get_ref()?.downcast_ref::<RecordTooLarge>()
}

/// Where the next header to inspect is. Create it before the archive
/// (the guarded reader borrows it), wrap the stream with
/// [`HeaderWatch::guard`], and call [`HeaderWatch::after`] with every
/// entry the archive yields.
#[derive(Debug)]
pub struct HeaderWatch {
    next: Cell<Option<u64>>,
}

impl Default for HeaderWatch {
    fn default() -> Self {
        HeaderWatch::new()
    }
}

impl HeaderWatch {
    pub fn new() -> Self {
        HeaderWatch {
            next: Cell::new(Some(0)),
        }
    }

    /// The tar stream `inner`, watched.
    pub fn guard<R: Read>(&self, inner: R) -> Guarded<'_, R> {
        Guarded {
            inner,
            watch: &self.next,
            pos: 0,
            block: [0; BLOCK as usize],
            filled: 0,
        }
    }

    /// Records where the header after `entry` starts: its data, rounded up
    /// to a block. A GNU sparse entry has extra header blocks the entry
    /// does not account for; after one the watch stops (callers refuse
    /// sparse entries anyway).
    pub fn after<R: Read>(&self, entry: &tar::Entry<'_, R>) {
        let next = if entry.header().entry_type().is_gnu_sparse() {
            None
        } else {
            entry
                .raw_file_position()
                .checked_add(entry.size())
                .and_then(|end| end.checked_next_multiple_of(BLOCK))
        };
        self.next.set(next);
    }
}

/// The reader [`HeaderWatch::guard`] makes.
pub struct Guarded<'w, R> {
    inner: R,
    watch: &'w Cell<Option<u64>>,
    /// Bytes passed through so far.
    pos: u64,
    /// The watched header, as far as it has passed.
    block: [u8; BLOCK as usize],
    filled: usize,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

impl<R> Guarded<'_, R> {
    fn observe(&mut self, data: &[u8]) -> io::Result<()> {
        let start = self.pos;
        let end = start + data.len() as u64;
        self.pos = end;
        while let Some(at) = self.watch.get() {
            let want = at + self.filled as u64;
            if want >= end {
                break;
            }
            if want < start {
                // Passed without being seen (the caller told too late):
                // nothing sensible to follow any more.
                self.watch.set(None);
                self.filled = 0;
                break;
            }
            let off = (want - start) as usize;
            let take = (BLOCK as usize - self.filled).min(data.len() - off);
            self.block[self.filled..self.filled + take].copy_from_slice(&data[off..off + take]);
            self.filled += take;
            if self.filled < BLOCK as usize {
                break;
            }
            self.filled = 0;
            let next =
                inspect(&self.block).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.watch.set(next.and_then(|len| {
                at.checked_add(BLOCK)?
                    .checked_add(len.checked_next_multiple_of(BLOCK)?)
            }));
        }
        Ok(())
    }
}

/// Looks at one header block: for an extension record of acceptable size,
/// the size of its body (the next header follows it); for anything else
/// (an entry, the end marker, a block the tar reader will refuse) `None`.
fn inspect(h: &[u8; BLOCK as usize]) -> Result<Option<u64>, RecordTooLarge> {
    if h.iter().all(|&b| b == 0) || !checksum_ok(h) {
        return Ok(None);
    }
    let typeflag = h[156];
    if !matches!(typeflag, b'L' | b'K' | b'x' | b'g') {
        return Ok(None);
    }
    let Some(size) = number(&h[124..136]) else {
        return Ok(None);
    };
    if size > MAX_RECORD {
        let name = h[..100].split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
        return Err(RecordTooLarge {
            typeflag,
            size,
            name,
        });
    }
    Ok(Some(size))
}

/// The header checksum as the tar reader checks it: the unsigned sum of the
/// block with the checksum field counted as spaces.
fn checksum_ok(h: &[u8; BLOCK as usize]) -> bool {
    let sum: u64 = h[..148]
        .iter()
        .chain(&h[156..])
        .map(|&b| u64::from(b))
        .sum::<u64>()
        + 8 * u64::from(b' ');
    number(&h[148..156]) == Some(sum)
}

/// A numeric header field read the way the `tar` crate reads it: octal
/// text (NUL/space padded), or GNU base-256 when the first byte's high bit
/// is set (an 8-byte field: its 63 low bits; a longer one: its last 8
/// bytes). Reading it the same way keeps the watch where the reader is.
pub(crate) fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let (first, rest) = if field.len() == 8 {
            (u64::from(field[0] ^ 0x80), &field[1..])
        } else {
            (0, &field[field.len().saturating_sub(8)..])
        };
        return Some(rest.iter().fold(first, |v, &b| (v << 8) | u64::from(b)));
    }
    let text = field.split(|&b| b == 0).next().unwrap_or(&[]);
    let text = std::str::from_utf8(text).ok()?.trim_matches(' ');
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(typeflag: u8, name: &[u8], size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        *h.as_bytes()
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"  644 \0\0"), Some(0o644));
        assert_eq!(number(b"\0\0\0\0"), None);
        assert_eq!(number(b"12x\0"), None);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[7] = 0x20;
        assert_eq!(number(&big), Some(0x20 << 32));
        // Bytes before the last 8 of a 12-byte field are ignored, as the
        // tar reader ignores them.
        let mut wide = [0u8; 12];
        wide[0] = 0x80;
        wide[1] = 1;
        wide[8] = 0x20;
        assert_eq!(number(&wide), Some(0x20 << 24));
        let mut uid = [0u8; 8];
        uid[0] = 0x80;
        uid[3] = 1;
        assert_eq!(number(&uid), Some(1 << 32));
    }

    #[test]
    fn inspects_extension_headers() {
        assert_eq!(inspect(&header(b'L', b"././@LongLink", 100)), Ok(Some(100)));
        assert_eq!(
            inspect(&header(b'x', b"PaxHeaders/f", MAX_RECORD)),
            Ok(Some(MAX_RECORD))
        );
        assert_eq!(inspect(&header(b'0', b"big", 1 << 40)), Ok(None));
        let e = inspect(&header(b'K', b"././@LongLink", MAX_RECORD + 1)).unwrap_err();
        assert_eq!((e.typeflag, e.size), (b'K', MAX_RECORD + 1));
        assert_eq!(e.name, b"././@LongLink");
        assert_eq!(
            e.to_string(),
            "GNU long-link record of 65537 bytes (the limit is 65536)"
        );
        let mut bad = header(b'L', b"x", 1 << 30);
        bad[0] ^= 1;
        assert_eq!(
            inspect(&bad),
            Ok(None),
            "a bad checksum is the tar reader's to report"
        );
        assert_eq!(inspect(&[0; 512]), Ok(None));
    }

    /// Headers split across reads of any size are still seen, and the
    /// read that completes an oversized one fails.
    #[test]
    fn follows_records_across_odd_reads() {
        let mut stream = Vec::new();
        stream.extend(header(b'x', b"PaxHeaders/a", 700));
        stream.extend([b'7'; 1024]); // 700 bytes, padded to 1024
        stream.extend(header(b'L', b"././@LongLink", 1 << 29));
        stream.extend([b'a'; 4096]);
        for chunk in [1, 7, 511, 512, 513, 4000] {
            let watch = HeaderWatch::new();
            let mut r = watch.guard(&stream[..]);
            let mut buf = vec![0; chunk];
            let mut seen = 0;
            let err = loop {
                match r.read(&mut buf) {
                    Ok(0) => panic!("chunk {chunk}: read to the end"),
                    Ok(n) => seen += n,
                    Err(e) => break e,
                }
            };
            let rec = record_error(&err).unwrap_or_else(|| panic!("{err}"));
            assert_eq!((rec.typeflag, rec.size), (b'L', 1 << 29));
            assert!(seen < 512 * 4, "chunk {chunk}: {seen} bytes passed");
        }
    }
}
