//! SquashFS 4.0 writer.
//!
//! [`write`] turns an [`FsTree`] and its [`ContentStore`] into an image the
//! Linux kernel and `unsquashfs` read. The work runs in passes:
//!
//! 1. `plan`: walk the tree once, fix the order inodes are written in,
//!    number them, count hardlinks and reject what SquashFS cannot hold.
//! 2. `data`: store files identical to an earlier one only once
//!    (`dedup`), compress full blocks on all cores and pack file tails into
//!    fragment blocks; results are written in a fixed order, so the output
//!    does not depend on the thread count.
//! 3. `layout`: write inodes and directory listings into metadata blocks.
//! 4. The fragment, export, id and xattr tables, then the superblock.
//!
//! The tables follow each other in the order mksquashfs uses, because the
//! kernel checks that each index ends exactly where the next table begins.

mod compress;
mod data;
mod dedup;
mod dir;
mod inode;
mod layout;
mod metadata;
mod plan;
#[cfg(test)]
mod read;
mod tables;
mod xattr;

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::tree::{ContentStore, FsTree, InodeKind};

pub use inode::new_encode_dev;

/// How data and metadata blocks are compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compression {
    /// zstd, levels 1 to 22.
    Zstd { level: i32 },
    /// xz (LZMA2) with a preset of 0 to 9 and a dictionary of one block.
    Xz { level: u32 },
    /// zlib-wrapped deflate, levels 1 to 9.
    Gzip { level: u32 },
}

impl Compression {
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
    pub const DEFAULT_XZ_LEVEL: u32 = 6;
    pub const DEFAULT_GZIP_LEVEL: u32 = 9;

    /// Checks the level against what the compressor accepts.
    pub fn validate(&self) -> Result<(), ParseCompressionError> {
        let ok = match *self {
            Compression::Zstd { level } => (1..=22).contains(&level),
            Compression::Xz { level } => level <= 9,
            Compression::Gzip { level } => (1..=9).contains(&level),
        };
        if ok {
            Ok(())
        } else {
            Err(ParseCompressionError::Level(self.to_string()))
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd {
            level: Compression::DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            Compression::Xz { level } => write!(f, "xz:{level}"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
        }
    }
}

/// Why a `--compression` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseCompressionError {
    #[error("unknown compression {0:?}: expected zstd, xz or gzip, optionally with :LEVEL")]
    Algorithm(String),
    #[error("bad compression level in {0:?}: zstd takes 1-22, xz 0-9, gzip 1-9")]
    Level(String),
}

impl FromStr for Compression {
    type Err = ParseCompressionError;

    /// Parses `zstd`, `zstd:19`, `xz`, `xz:9`, `gzip`, `gzip:6`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, level) = match s.split_once(':') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let bad_level = || ParseCompressionError::Level(s.to_string());
        let c = match algo {
            "zstd" => Compression::Zstd {
                level: match level {
                    Some(l) => l.parse().map_err(|_| bad_level())?,
                    None => Compression::DEFAULT_ZSTD_LEVEL,
                },
            },
            "xz" => Compression::Xz {
                level: match level {
                    Some(l) => l.parse().map_err(|_| bad_level())?,
                    None => Compression::DEFAULT_XZ_LEVEL,
                },
            },
            "gzip" => Compression::Gzip {
                level: match level {
                    Some(l) => l.parse().map_err(|_| bad_level())?,
                    None => Compression::DEFAULT_GZIP_LEVEL,
                },
            },
            _ => return Err(ParseCompressionError::Algorithm(s.to_string())),
        };
        c.validate().map_err(|_| bad_level())?;
        Ok(c)
    }
}

/// Smallest and largest block sizes SquashFS (and the kernel) accept.
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub compression: Compression,
    /// Data block size: a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
    /// The superblock's creation time, seconds since the epoch.
    pub mkfs_time: u32,
    /// Compression threads; 0 uses every core.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression: Compression::default(),
            block_size: 128 * 1024,
            mkfs_time: 0,
            threads: 0,
        }
    }
}

impl Options {
    pub fn validate(&self) -> Result<()> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            bail!("SquashFS block size {bs} is not a power of two from 4096 (4K) to 1048576 (1M)");
        }
        self.compression.validate()?;
        Ok(())
    }

    fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// What [`write`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Size of the image file, the padding to 4 KiB included.
    pub bytes: u64,
    pub inodes: u32,
    /// Full data blocks, sparse ones included (fragment blocks excluded).
    pub data_blocks: u64,
    pub fragments: u32,
}

/// Writes `tree` as a SquashFS image to `out`, which must be a new or
/// truncated file (it is truncated and written from offset 0). The image is
/// padded to a multiple of 4 KiB. The same tree and options give the same
/// bytes whatever the thread count.
pub fn write(
    tree: &FsTree,
    store: &ContentStore,
    opts: &Options,
    out: &mut File,
) -> Result<Summary> {
    write_with_progress(tree, store, opts, out, &|_, _| {})
}

/// [`write`], calling `progress(done, total)` as data units (blocks and
/// fragment blocks) are written, in order.
pub fn write_with_progress(
    tree: &FsTree,
    store: &ContentStore,
    opts: &Options,
    out: &mut File,
    progress: &dyn Fn(u64, u64),
) -> Result<Summary> {
    opts.validate()?;
    let bs = opts.block_size;
    let t0 = Instant::now();
    let plan = plan::plan(tree, bs)?;
    let contents: Vec<_> = plan
        .files
        .iter()
        .map(|&id| match &tree.inode(id).kind {
            InodeKind::File { content } => *content,
            _ => unreachable!("plan lists regular files only"),
        })
        .collect();
    tracing::debug!(
        inodes = plan.inode_count,
        files = contents.len(),
        elapsed = ?t0.elapsed(),
        "squashfs: planned"
    );

    out.set_len(0).context("truncating the image file")?;
    out.seek(SeekFrom::Start(0))
        .context("seeking to the start of the image file")?;
    let mut sink = Sink {
        w: BufWriter::with_capacity(1 << 20, &mut *out),
        pos: 0,
    };
    sink.put(&[0u8; tables::SUPERBLOCK_SIZE], "superblock")?;

    let t1 = Instant::now();
    let data = data::write_data(
        store,
        &contents,
        &opts.compression,
        bs,
        opts.thread_count(),
        &mut sink.w,
        sink.pos,
        &|i| plan.path(tree, plan.files[i]),
        progress,
    )?;
    sink.pos = data.end;
    tracing::debug!(
        blocks = data.blocks,
        fragments = data.fragments.len(),
        duplicates = data.duplicates,
        elapsed = ?t1.elapsed(),
        "squashfs: data written"
    );

    let t2 = Instant::now();
    let laid = layout::lay_out(tree, &plan, &data, &opts.compression)?;
    let fragment_count =
        u32::try_from(data.fragments.len()).context("more than 2^32 fragment blocks")?;
    let mut sb = tables::Superblock {
        inode_count: plan.inode_count,
        mkfs_time: opts.mkfs_time,
        block_size: bs,
        fragment_count,
        compression: compress::compressor_id(&opts.compression),
        flags: tables::FLAG_EXPORTABLE | tables::FLAG_ALWAYS_FRAGMENTS | tables::FLAG_DUPLICATES,
        id_count: u16::try_from(plan.ids.len()).context("more than 65536 uids and gids")?,
        root_inode: laid.root_ref,
        bytes_used: 0,
        id_table_start: 0,
        xattr_id_table_start: tables::NO_TABLE,
        inode_table_start: 0,
        directory_table_start: 0,
        fragment_table_start: 0,
        export_table_start: 0,
    };
    sb.inode_table_start = sink.put(&laid.inode_table, "inode table")?;
    sb.directory_table_start = sink.put(&laid.dir_table, "directory table")?;
    let meta_comp = || compress::Compressor::new(&opts.compression, metadata::METADATA_SIZE as u32);

    // With no fragments the field still marks where the directory table
    // ends, which is how unsquashfs finds that end.
    sb.fragment_table_start = sink.pos;
    if !data.fragments.is_empty() {
        let entries = tables::fragment_entries(&data.fragments);
        let (bytes, index_at) = metadata::indexed_table(meta_comp()?, &entries, sink.pos)?;
        sink.put(&bytes, "fragment table")?;
        sb.fragment_table_start = index_at;
    }
    let (bytes, index_at) = metadata::indexed_table(meta_comp()?, &laid.export, sink.pos)?;
    sink.put(&bytes, "export table")?;
    sb.export_table_start = index_at;
    let ids = tables::id_entries(&plan.ids);
    let (bytes, index_at) = metadata::indexed_table(meta_comp()?, &ids, sink.pos)?;
    sink.put(&bytes, "id table")?;
    sb.id_table_start = index_at;
    if laid.xattrs.is_empty() {
        sb.flags |= tables::FLAG_NO_XATTRS;
    } else {
        let (bytes, table_at) = laid.xattrs.finish(meta_comp()?, sink.pos)?;
        sink.put(&bytes, "xattr table")?;
        sb.xattr_id_table_start = table_at;
    }
    sb.bytes_used = sink.pos;
    let padded = sink.pos.next_multiple_of(4096);
    sink.put(&vec![0u8; (padded - sink.pos) as usize], "padding")?;
    let out = sink
        .w
        .into_inner()
        .map_err(|e| e.into_error())
        .context("writing the image")?;
    out.write_all_at(&sb.encode(), 0)
        .context("writing the superblock")?;
    tracing::debug!(elapsed = ?t2.elapsed(), "squashfs: metadata written");

    Ok(Summary {
        bytes: padded,
        inodes: plan.inode_count,
        data_blocks: data.blocks,
        fragments: fragment_count,
    })
}

/// The image file being written sequentially, and the position reached.
struct Sink<'a> {
    w: BufWriter<&'a mut File>,
    pos: u64,
}

impl Sink<'_> {
    /// Appends `bytes`; returns the position they were written at.
    fn put(&mut self, bytes: &[u8], what: &str) -> Result<u64> {
        self.w
            .write_all(bytes)
            .with_context(|| format!("writing the {what} to the image"))?;
        let at = self.pos;
        self.pos += bytes.len() as u64;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compression() {
        assert_eq!("zstd".parse(), Ok(Compression::Zstd { level: 3 }));
        assert_eq!("zstd:19".parse(), Ok(Compression::Zstd { level: 19 }));
        assert_eq!("xz".parse(), Ok(Compression::Xz { level: 6 }));
        assert_eq!("xz:9".parse(), Ok(Compression::Xz { level: 9 }));
        assert_eq!("gzip".parse(), Ok(Compression::Gzip { level: 9 }));
        assert_eq!("gzip:6".parse(), Ok(Compression::Gzip { level: 6 }));
        assert!(matches!(
            "lz4".parse::<Compression>(),
            Err(ParseCompressionError::Algorithm(_))
        ));
        for bad in [
            "zstd:0", "zstd:23", "zstd:x", "xz:10", "gzip:0", "gzip:", "xz:-1",
        ] {
            let e = bad.parse::<Compression>().unwrap_err();
            assert!(matches!(e, ParseCompressionError::Level(_)), "{bad}");
            assert!(e.to_string().contains(bad));
        }
        assert_eq!(Compression::Xz { level: 9 }.to_string(), "xz:9");
    }

    #[test]
    fn validates_block_size() {
        let mut o = Options::default();
        assert_eq!(o.block_size, 131072);
        o.validate().unwrap();
        for ok in [4096, 65536, 1 << 20] {
            o.block_size = ok;
            o.validate().unwrap();
        }
        for bad in [0, 2048, 4095, 100_000, 2 << 20] {
            o.block_size = bad;
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains("block size"), "{e}");
        }
    }
}
