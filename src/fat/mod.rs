//! FAT writer: FAT12, FAT16 and FAT32.
//!
//! [`write`] turns an [`FsTree`] (an ESP's or a boot partition's tree) and
//! its [`ContentStore`] into a FAT filesystem of a given size, written at
//! an offset inside any `Write + Seek` sink, so it can go straight into a
//! partition of a disk image file. Nothing is mounted.
//!
//! The caller may ask for a FAT type ([`FatOptions::fat_type`]); without
//! one the size decides, by the cluster count every reader uses to tell
//! the types apart (`geometry`): FAT32 from about 33 MiB, FAT16 from about
//! 2 MiB, FAT12 below. The UEFI specification ("File System Format")
//! has FAT32 for a system partition and FAT12 or FAT16 for removable
//! media: the A/B disk's ESP asks for FAT32; the ISO's El Torito image
//! lets its size decide.
//!
//! The work runs in two passes:
//!
//! 1. `plan`: walk the tree in sorted order, name every entry (8.3 short
//!    names, VFAT long names where needed) and give every directory and file
//!    one contiguous run of clusters, in walk order. A FAT12/16 root
//!    directory is the fixed region after the FATs instead, of
//!    [`ROOT_ENTRIES`] entries. Everything that can fail on the input
//!    (symlinks, names FAT cannot hold, a full root directory, too little
//!    space) fails here, before a byte is written.
//! 2. Write the reserved sectors (the boot sector, and on FAT32 FSInfo and
//!    the backups of both), both FATs, the FAT12/16 root directory, then
//!    directories and file data in ascending cluster order.
//!
//! The output depends only on the tree, the contents and [`FatOptions`]:
//! timestamps and the volume id come from the options, never the clock.

mod geometry;
mod names;
mod plan;

use std::io::{Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};

use crate::tree::{ContentStore, FsTree};

use geometry::{boot_sector, fsinfo_sector, Geometry, FATS};
pub use geometry::{FatType, ROOT_ENTRIES};
use names::{short_entry, DosTime, ENTRY};
use plan::Extent;

/// Bytes per sector; the only size UEFI firmware reliably reads.
pub const SECTOR: u64 = 512;
const ATTR_VOLUME_ID: u8 = 0x08;
pub(crate) const ATTR_DIRECTORY: u8 = 0x10;
pub(crate) const ATTR_ARCHIVE: u8 = 0x20;
const COPY_CHUNK: usize = 1 << 20;

/// What [`write`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatOptions {
    /// Size of the filesystem; a multiple of 512. FAT32 needs at least
    /// 33 MiB (65,525 clusters).
    pub size_bytes: u64,
    /// The FAT type to write; `None` picks it from the size (FAT32 when
    /// the size allows, else FAT16, else FAT12). A type the size cannot
    /// hold is an error.
    pub fat_type: Option<FatType>,
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
    pub fat_type: FatType,
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

/// Writes `tree` as a FAT filesystem of exactly `opts.size_bytes` bytes
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
    let geo = Geometry::new(opts.size_bytes, opts.fat_type)?;
    let ty = geo.fat_type;
    let stamp = DosTime::from_unix(opts.timestamp);
    let fixed_root = (ty != FatType::Fat32).then_some(geo.root_entries as usize);
    let plan = plan::plan(tree, geo.cluster_bytes(), label.is_some(), fixed_root, ty)?;
    let used = plan.used_clusters();
    if used > u64::from(geo.clusters) {
        let need = (used * geo.cluster_bytes() + geo.overhead(used)).div_ceil(1 << 20);
        let floor = if ty == FatType::Fat32 {
            " (and at least 33 MiB)"
        } else {
            ""
        };
        bail!(
            "the files do not fit in a {ty} of {} bytes: they need {used} clusters of {} bytes, \
             it has {}; make it at least {need} MiB{floor}",
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

    let boot = boot_sector(&geo, opts.volume_id, label, offset);
    let mut reserved = vec![0u8; geo.reserved_sectors as usize * SECTOR as usize];
    reserved[..SECTOR as usize].copy_from_slice(&boot);
    if ty == FatType::Fat32 {
        let fsinfo = fsinfo_sector(geo.clusters - used, used);
        for (at, sector) in [(1, &fsinfo), (6, &boot), (7, &fsinfo)] {
            reserved[at * SECTOR as usize..][..SECTOR as usize].copy_from_slice(sector);
        }
    }
    w.put(0, &reserved).context("writing the boot sectors")?;

    let fat = plan.fat_table(geo.fat_sectors as usize * SECTOR as usize);
    for i in 0..u64::from(FATS) {
        let at = geo.fat_start() + i * u64::from(geo.fat_sectors) * SECTOR;
        w.put(at, &fat).context("writing the FAT")?;
    }

    let mut buf = Vec::new();
    if let Some(entries) = fixed_root {
        plan.encode_dir(0, label, stamp, &mut buf);
        buf.resize(entries * ENTRY, 0);
        w.put(geo.root_start(), &buf)
            .context("writing the root directory")?;
    }
    let cb = geo.cluster_bytes() as usize;
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
        fat_type: ty,
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

/// The volume-label entry of the root directory.
fn label_entry(label: &[u8; 11], stamp: DosTime) -> [u8; 32] {
    short_entry(label, ATTR_VOLUME_ID, 0, 0, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(volume_label("esp").unwrap(), Some(*b"ESP        "));
        assert_eq!(volume_label("").unwrap(), None);
        assert!(volume_label("twelve chars").is_err());
        assert!(volume_label("a.b").is_err());
    }
}
