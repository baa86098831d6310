//! FAT32 writer.
//!
//! [`write`] turns an [`FsTree`] (an ESP's or a boot partition's tree) and
//! its [`ContentStore`] into a FAT32 filesystem of a given size, written at
//! an offset inside any `Write + Seek` sink, so it can go straight into a
//! partition of a disk image file. Nothing is mounted.
//!
//! The work runs in two passes:
//!
//! 1. `plan`: walk the tree in sorted order, name every entry (8.3 short
//!    names, VFAT long names where needed) and give every directory and file
//!    one contiguous run of clusters, in walk order. Everything that can fail
//!    on the input (symlinks, names FAT cannot hold, too little space) fails
//!    here, before a byte is written.
//! 2. Write the reserved sectors (boot sector, FSInfo and their backups),
//!    both FATs, then directories and file data in ascending cluster order.
//!
//! The output depends only on the tree, the contents and [`FatOptions`]:
//! timestamps and the volume id come from the options, never the clock.

mod names;
mod plan;

use std::io::{Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};

use crate::tree::{ContentStore, FsTree};

use names::{short_entry, DosTime};
use plan::Extent;

/// Bytes per sector; the only size UEFI firmware reliably reads.
pub const SECTOR: u64 = 512;
const RESERVED_SECTORS: u32 = 32;
const FATS: u32 = 2;
/// Fewer clusters than this and the filesystem would be FAT16 by definition.
const MIN_CLUSTERS: u64 = 65_525;
const MAX_CLUSTERS: u64 = 0x0FFF_FFF5 - 2;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
const ATTR_VOLUME_ID: u8 = 0x08;
pub(crate) const ATTR_DIRECTORY: u8 = 0x10;
pub(crate) const ATTR_ARCHIVE: u8 = 0x20;
const COPY_CHUNK: usize = 1 << 20;

/// What [`write`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatOptions {
    /// Size of the filesystem; a multiple of 512, at least 33 MiB (FAT32
    /// needs 65,525 clusters).
    pub size_bytes: u64,
    /// Up to 11 characters: `A-Z`, `0-9`, space and `_-`; lower case is
    /// upper-cased. Empty means no label (`NO NAME`).
    pub volume_label: String,
    /// The volume serial number; derive it from the inputs for reproducible
    /// images.
    pub volume_id: u32,
    /// Seconds since the epoch, stamped on every entry (clamped to FAT's
    /// 1980-2107).
    pub timestamp: i64,
}

/// What [`write`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Data clusters in the filesystem.
    pub clusters: u32,
    /// Clusters holding directories and file data.
    pub used_clusters: u32,
    /// Directories, the root included.
    pub directories: usize,
    /// Regular files, empty ones included.
    pub files: usize,
}

/// The fixed layout of a FAT32 filesystem of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub total_sectors: u32,
    pub sectors_per_cluster: u32,
    pub fat_sectors: u32,
    /// Data clusters, numbered from 2.
    pub clusters: u32,
}

impl Geometry {
    pub fn new(size_bytes: u64) -> Result<Geometry> {
        if size_bytes % SECTOR != 0 {
            bail!("a FAT32 size must be a multiple of {SECTOR} bytes, not {size_bytes}");
        }
        let total = size_bytes / SECTOR;
        if total > u64::from(u32::MAX) {
            bail!("{size_bytes} bytes is too large for FAT32 (at most 2 TiB)");
        }
        // Microsoft's table of cluster sizes for FAT32 (fatgen103).
        const MIB: u64 = 1 << 20;
        let spc: u64 = match size_bytes {
            s if s <= 260 * MIB => 1,
            s if s <= 8 << 30 => 8,
            s if s <= 16 << 30 => 16,
            s if s <= 32 << 30 => 32,
            _ => 64,
        };
        let reserved = u64::from(RESERVED_SECTORS);
        if total <= reserved {
            bail!("a FAT32 filesystem needs at least 33 MiB, not {size_bytes} bytes");
        }
        // fatgen103's FAT size formula: never too small, at most a few
        // sectors too large.
        let per_fat_sector = (256 * spc + u64::from(FATS)) / 2;
        let fat_sectors = (total - reserved).div_ceil(per_fat_sector);
        let data_start = reserved + u64::from(FATS) * fat_sectors;
        let clusters = total.saturating_sub(data_start) / spc;
        if clusters < MIN_CLUSTERS {
            bail!(
                "{size_bytes} bytes is too small for FAT32: it gives {clusters} clusters of \
                 {} bytes, FAT32 needs at least {MIN_CLUSTERS}; use at least 33 MiB",
                spc * SECTOR
            );
        }
        let clusters = clusters.min(MAX_CLUSTERS);
        debug_assert!((clusters + 2) * 4 <= fat_sectors * SECTOR);
        Ok(Geometry {
            total_sectors: total as u32,
            sectors_per_cluster: spc as u32,
            fat_sectors: fat_sectors as u32,
            clusters: clusters as u32,
        })
    }

    pub fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR
    }

    fn data_start(&self) -> u64 {
        (u64::from(RESERVED_SECTORS) + u64::from(FATS) * u64::from(self.fat_sectors)) * SECTOR
    }

    /// Byte offset of a cluster from the start of the filesystem.
    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start() + u64::from(cluster - 2) * self.cluster_bytes()
    }
}

/// Writes `tree` as a FAT32 filesystem of exactly `opts.size_bytes` bytes
/// starting `offset` bytes into `out`. Only directories and regular files
/// can be stored; anything else is an error naming its path. Every check
/// runs before the first write, so a tree that does not fit leaves `out`
/// untouched. Free clusters are not written (a fresh sparse file stays
/// sparse); everything the filesystem's metadata covers is.
pub fn write<W: Write + Seek>(
    tree: &FsTree,
    store: &ContentStore,
    opts: &FatOptions,
    out: &mut W,
    offset: u64,
) -> Result<Summary> {
    let label = volume_label(&opts.volume_label)?;
    let geo = Geometry::new(opts.size_bytes)?;
    let stamp = DosTime::from_unix(opts.timestamp);
    let plan = plan::plan(tree, geo.cluster_bytes(), label.is_some())?;
    let used = plan.used_clusters();
    if used > u64::from(geo.clusters) {
        let overhead = u64::from(RESERVED_SECTORS) * SECTOR + u64::from(FATS) * (used + 2) * 4;
        let need = (used * geo.cluster_bytes() + overhead).div_ceil(1 << 20);
        bail!(
            "the files do not fit in a FAT32 of {} bytes: they need {used} clusters of {} bytes, \
             it has {}; make it at least {need} MiB (and at least 33 MiB)",
            opts.size_bytes,
            geo.cluster_bytes(),
            geo.clusters
        );
    }
    let used = used as u32;

    let mut w = At { out, base: offset };
    // The last sector first: it makes the filesystem span its full size even
    // in a fresh file, and data written later may overwrite it.
    w.put(opts.size_bytes - SECTOR, &[0u8; SECTOR as usize])
        .context("writing the last sector")?;

    let boot = boot_sector(&geo, opts, label, offset);
    let fsinfo = fsinfo_sector(geo.clusters - used, used);
    let mut reserved = vec![0u8; RESERVED_SECTORS as usize * SECTOR as usize];
    for (at, sector) in [(0, &boot), (1, &fsinfo), (6, &boot), (7, &fsinfo)] {
        reserved[at * SECTOR as usize..][..SECTOR as usize].copy_from_slice(sector);
    }
    w.put(0, &reserved).context("writing the boot sectors")?;

    let fat = plan.fat_table(geo.fat_sectors as usize * SECTOR as usize);
    for i in 0..u64::from(FATS) {
        let at = (u64::from(RESERVED_SECTORS) + i * u64::from(geo.fat_sectors)) * SECTOR;
        w.put(at, &fat).context("writing the FAT")?;
    }

    let cb = geo.cluster_bytes() as usize;
    let mut buf = Vec::new();
    for ext in &plan.extents {
        let at = geo.cluster_offset(ext.first);
        match &ext.what {
            Extent::Dir(i) => {
                plan.encode_dir(*i, label, stamp, &mut buf);
                buf.resize(ext.clusters as usize * cb, 0);
                w.put(at, &buf)
                    .with_context(|| format!("writing directory /{}", plan.dirs[*i].path))?;
            }
            Extent::File { content, path } => {
                copy_file(store, content, &mut w, at, ext.clusters as u64 * cb as u64)
                    .with_context(|| format!("writing file /{path}"))?;
            }
        }
    }
    w.out.flush().context("flushing the FAT image")?;
    Ok(Summary {
        cluster_size: cb as u32,
        clusters: geo.clusters,
        used_clusters: used,
        directories: plan.dirs.len(),
        files: plan.files,
    })
}

/// Writes at offsets relative to the filesystem's start.
struct At<'a, W> {
    out: &'a mut W,
    base: u64,
}

impl<W: Write + Seek> At<'_, W> {
    fn put(&mut self, at: u64, data: &[u8]) -> std::io::Result<()> {
        self.out.seek(SeekFrom::Start(self.base + at))?;
        self.out.write_all(data)
    }
}

fn copy_file<W: Write + Seek>(
    store: &ContentStore,
    content: &crate::tree::ContentRef,
    w: &mut At<'_, W>,
    at: u64,
    span: u64,
) -> Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut done = 0u64;
    w.out.seek(SeekFrom::Start(w.base + at))?;
    while done < content.len {
        let n = (content.len - done).min(COPY_CHUNK as u64) as usize;
        store
            .read_at(content, done, &mut buf[..n])
            .context("reading from the content store")?;
        w.out.write_all(&buf[..n])?;
        done += n as u64;
    }
    // Zero the slack of the last cluster so old bytes never leak in.
    let slack = (span - done) as usize;
    w.out.write_all(&vec![0u8; slack])?;
    Ok(())
}

/// Checks and pads a volume label; `None` for no label.
fn volume_label(label: &str) -> Result<Option<[u8; 11]>> {
    if label.is_empty() {
        return Ok(None);
    }
    let up = label.to_ascii_uppercase();
    if up.len() > 11
        || !up
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b" _-".contains(&b))
        || up.starts_with(' ')
    {
        bail!(
            "bad FAT volume label {label:?}: expected up to 11 characters from A-Z, 0-9, \
             space, '_' and '-', not starting with a space"
        );
    }
    let mut out = [b' '; 11];
    out[..up.len()].copy_from_slice(up.as_bytes());
    Ok(Some(out))
}

fn boot_sector(
    geo: &Geometry,
    opts: &FatOptions,
    label: Option<[u8; 11]>,
    offset: u64,
) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = geo.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    b[16] = FATS as u8;
    b[21] = 0xF8; // media: fixed disk
    b[24..26].copy_from_slice(&63u16.to_le_bytes()); // sectors per track
    b[26..28].copy_from_slice(&255u16.to_le_bytes()); // heads
                                                      // Hidden sectors: where the filesystem starts on its disk.
    let hidden = u32::try_from(offset / SECTOR).unwrap_or(0);
    b[28..32].copy_from_slice(&hidden.to_le_bytes());
    b[32..36].copy_from_slice(&geo.total_sectors.to_le_bytes());
    b[36..40].copy_from_slice(&geo.fat_sectors.to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    b[64] = 0x80; // drive number
    b[66] = 0x29; // extended boot signature
    b[67..71].copy_from_slice(&opts.volume_id.to_le_bytes());
    b[71..82].copy_from_slice(&label.unwrap_or(*b"NO NAME    "));
    b[82..90].copy_from_slice(b"FAT32   ");
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

fn fsinfo_sector(free: u32, used: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free.to_le_bytes());
    let next = if free == 0 { u32::MAX } else { 2 + used };
    s[492..496].copy_from_slice(&next.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

/// The volume-label entry of the root directory.
fn label_entry(label: &[u8; 11], stamp: DosTime) -> [u8; 32] {
    short_entry(label, ATTR_VOLUME_ID, 0, 0, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_common_sizes() {
        let g = Geometry::new(64 << 20).unwrap();
        assert_eq!(g.sectors_per_cluster, 1);
        assert!((g.clusters as u64 + 2) * 4 <= g.fat_sectors as u64 * 512);
        let g = Geometry::new(512 << 20).unwrap();
        assert_eq!(g.sectors_per_cluster, 8);
        assert!(u64::from(g.clusters) >= MIN_CLUSTERS);
        let e = Geometry::new(16 << 20).unwrap_err().to_string();
        assert!(e.contains("33 MiB"), "{e}");
        assert!(Geometry::new((64 << 20) + 1).is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(volume_label("esp").unwrap(), Some(*b"ESP        "));
        assert_eq!(volume_label("").unwrap(), None);
        assert!(volume_label("twelve chars").is_err());
        assert!(volume_label("a.b").is_err());
    }
}
