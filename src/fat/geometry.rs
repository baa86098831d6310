//! The fixed layout of a FAT filesystem of a given size, the choice of FAT
//! type, and the reserved sectors (boot sector, FSInfo) that describe it.
//!
//! The FAT type is not a field of the filesystem: every reader (the Linux
//! kernel, dosfstools, mtools, UEFI's FAT driver) derives it from the
//! number of data clusters, as Microsoft's "FAT: General Overview of
//! On-Disk Format" (fatgen103) defines: fewer than 4,085 is FAT12, fewer
//! than 65,525 is FAT16, anything else FAT32. A layout is therefore only
//! valid if its cluster count falls in the range of the type it is written
//! as; [`Geometry::new`] makes sure it does.

use anyhow::{bail, Result};

use super::SECTOR;

/// Reserved sectors before the first FAT of a FAT32 (boot sector, FSInfo,
/// their backups at 6 and 7, and room), as mkfs.fat and Windows lay it out.
const FAT32_RESERVED: u32 = 32;
/// FAT12/16 keep only the boot sector in the reserved region.
const SMALL_RESERVED: u32 = 1;
/// Root directory entries of a FAT12/16: the fixed region every hard-disk
/// formatter uses (32 sectors).
pub const ROOT_ENTRIES: u32 = 512;
pub const FATS: u32 = 2;
/// The smallest cluster count of a FAT16, and one more than a FAT12's
/// largest.
const MIN_FAT16_CLUSTERS: u64 = 4_085;
/// The smallest cluster count of a FAT32, and one more than a FAT16's
/// largest.
const MIN_FAT32_CLUSTERS: u64 = 65_525;
const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF5 - 2;
/// The largest cluster FAT12/16 readers agree on (32 KiB); 64 KiB clusters
/// are a Windows NT extension.
const MAX_SMALL_SPC: u32 = 64;

/// The three FAT variants; they differ in the width of a FAT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// The file system type string of the extended BPB (informational:
    /// readers go by the cluster count).
    fn label(self) -> &'static [u8; 8] {
        match self {
            FatType::Fat12 => b"FAT12   ",
            FatType::Fat16 => b"FAT16   ",
            FatType::Fat32 => b"FAT32   ",
        }
    }

    /// The end-of-chain marker written for the last cluster of a file.
    pub fn end_of_chain(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }

    /// Bits per FAT entry.
    fn entry_bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    /// The range of cluster counts that makes a filesystem this type.
    fn cluster_range(self) -> std::ops::Range<u64> {
        match self {
            FatType::Fat12 => 1..MIN_FAT16_CLUSTERS,
            FatType::Fat16 => MIN_FAT16_CLUSTERS..MIN_FAT32_CLUSTERS,
            FatType::Fat32 => MIN_FAT32_CLUSTERS..MAX_FAT32_CLUSTERS + 1,
        }
    }
}

impl std::fmt::Display for FatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        })
    }
}

/// The fixed layout of a FAT filesystem of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub fat_type: FatType,
    pub total_sectors: u32,
    pub reserved_sectors: u32,
    pub sectors_per_cluster: u32,
    /// Sectors of one FAT.
    pub fat_sectors: u32,
    /// Entries of the fixed root directory region (FAT12/16); 0 for FAT32,
    /// whose root directory is a cluster chain.
    pub root_entries: u32,
    /// Data clusters, numbered from 2.
    pub clusters: u32,
}

impl Geometry {
    /// The layout of a `size_bytes` filesystem of type `want`, or of the
    /// type its size gives when `want` is `None`: FAT32 when the FAT32
    /// layout has at least 65,525 clusters (about 33 MiB and up), else
    /// FAT16 when 512-byte clusters give at least 4,085 (about 2 MiB and
    /// up), else FAT12.
    pub fn new(size_bytes: u64, want: Option<FatType>) -> Result<Geometry> {
        let name = want.map_or("FAT".to_string(), |t| t.to_string());
        if size_bytes % SECTOR != 0 {
            bail!("a {name} size must be a multiple of {SECTOR} bytes, not {size_bytes}");
        }
        let total = size_bytes / SECTOR;
        if total > u64::from(u32::MAX) {
            bail!("{size_bytes} bytes is too large for {name} (at most 2 TiB)");
        }
        match want {
            Some(FatType::Fat32) => fat32(size_bytes, total),
            Some(t) => small(size_bytes, total, t),
            None => fat32(size_bytes, total)
                .or_else(|_| small(size_bytes, total, FatType::Fat16))
                .or_else(|_| small(size_bytes, total, FatType::Fat12)),
        }
    }

    pub fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR
    }

    /// Byte offset of the first FAT.
    pub fn fat_start(&self) -> u64 {
        u64::from(self.reserved_sectors) * SECTOR
    }

    /// Byte offset of the fixed root directory region (FAT12/16).
    pub fn root_start(&self) -> u64 {
        self.fat_start() + u64::from(FATS) * u64::from(self.fat_sectors) * SECTOR
    }

    fn root_sectors(&self) -> u64 {
        root_sectors(self.root_entries)
    }

    fn data_start(&self) -> u64 {
        self.root_start() + self.root_sectors() * SECTOR
    }

    /// Byte offset of a cluster from the start of the filesystem.
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start() + u64::from(cluster - 2) * self.cluster_bytes()
    }

    /// Bytes of metadata a filesystem of this type needs besides its data
    /// clusters when `used` clusters are in use (for "make it at least"
    /// hints).
    pub fn overhead(&self, used: u64) -> u64 {
        let fat = ((used + 2) * self.fat_type.entry_bits()).div_ceil(8);
        (u64::from(self.reserved_sectors) + self.root_sectors()) * SECTOR + u64::from(FATS) * fat
    }
}

fn root_sectors(entries: u32) -> u64 {
    (u64::from(entries) * 32).div_ceil(SECTOR)
}

/// The FAT32 layout: Microsoft's cluster size table and FAT size formula
/// (fatgen103), 32 reserved sectors.
fn fat32(size_bytes: u64, total: u64) -> Result<Geometry> {
    const MIB: u64 = 1 << 20;
    let spc: u64 = match size_bytes {
        s if s <= 260 * MIB => 1,
        s if s <= 8 << 30 => 8,
        s if s <= 16 << 30 => 16,
        s if s <= 32 << 30 => 32,
        _ => 64,
    };
    let reserved = u64::from(FAT32_RESERVED);
    if total <= reserved {
        bail!("a FAT32 filesystem needs at least 33 MiB, not {size_bytes} bytes");
    }
    // fatgen103's FAT size formula: never too small, at most a few sectors
    // too large.
    let per_fat_sector = (256 * spc + u64::from(FATS)) / 2;
    let fat_sectors = (total - reserved).div_ceil(per_fat_sector);
    let data_start = reserved + u64::from(FATS) * fat_sectors;
    let clusters = total.saturating_sub(data_start) / spc;
    if clusters < MIN_FAT32_CLUSTERS {
        bail!(
            "{size_bytes} bytes is too small for FAT32: it gives {clusters} clusters of \
             {} bytes, FAT32 needs at least {MIN_FAT32_CLUSTERS}; use at least 33 MiB",
            spc * SECTOR
        );
    }
    let clusters = clusters.min(MAX_FAT32_CLUSTERS);
    debug_assert!((clusters + 2) * 4 <= fat_sectors * SECTOR);
    Ok(Geometry {
        fat_type: FatType::Fat32,
        total_sectors: total as u32,
        reserved_sectors: FAT32_RESERVED,
        sectors_per_cluster: spc as u32,
        fat_sectors: fat_sectors as u32,
        root_entries: 0,
        clusters: clusters as u32,
    })
}

/// A FAT12 or FAT16 layout: one reserved sector, a 512-entry root
/// directory region and the smallest cluster (from 512 bytes to 32 KiB)
/// that keeps the cluster count below the type's limit. Small clusters
/// waste the least space, and the FATs of a volume this small stay small.
fn small(size_bytes: u64, total: u64, t: FatType) -> Result<Geometry> {
    let range = t.cluster_range();
    let fixed = u64::from(SMALL_RESERVED) + root_sectors(ROOT_ENTRIES);
    let mut spc = 1u32;
    loop {
        let Some((fat_sectors, clusters)) = small_fat(total, fixed, spc, t) else {
            bail!(
                "{size_bytes} bytes is too small for {t}: its boot sector, FATs and \
                 {ROOT_ENTRIES}-entry root directory leave no room for data"
            );
        };
        if clusters < range.start {
            let hint = match t {
                FatType::Fat16 => "use FAT12 or a larger size",
                _ => "use a larger size",
            };
            bail!(
                "{size_bytes} bytes is too small for {t}: it gives {clusters} clusters of \
                 {} bytes, {t} needs at least {}; {hint}",
                u64::from(spc) * SECTOR,
                range.start
            );
        }
        if clusters < range.end {
            return Ok(Geometry {
                fat_type: t,
                total_sectors: total as u32,
                reserved_sectors: SMALL_RESERVED,
                sectors_per_cluster: spc,
                fat_sectors,
                root_entries: ROOT_ENTRIES,
                clusters: clusters as u32,
            });
        }
        if spc == MAX_SMALL_SPC {
            let next = match t {
                FatType::Fat12 => "FAT16 or FAT32",
                _ => "FAT32",
            };
            bail!(
                "{size_bytes} bytes is too large for {t}: even {} KiB clusters give \
                 {clusters}, {t} holds fewer than {}; use {next}",
                u64::from(spc) * SECTOR / 1024,
                range.end
            );
        }
        spc *= 2;
    }
}

/// Sectors per FAT and the cluster count for `spc` sectors per cluster:
/// the smallest FAT that holds an entry for every cluster the rest of the
/// volume gives. `None` when nothing is left for data.
fn small_fat(total: u64, fixed: u64, spc: u32, t: FatType) -> Option<(u32, u64)> {
    let mut fat = 1u64;
    loop {
        let meta = fixed + u64::from(FATS) * fat;
        if total <= meta {
            return None;
        }
        let clusters = (total - meta) / u64::from(spc);
        let need = ((clusters + 2) * t.entry_bits())
            .div_ceil(8)
            .div_ceil(SECTOR);
        if need <= fat {
            // Fits the 16-bit BPB field: a FAT12/16 has under 65,536
            // clusters when we keep it, and the caller discards others.
            return Some((fat.min(u64::from(u16::MAX)) as u32, clusters));
        }
        fat = need;
    }
}

/// The boot sector: BIOS parameter block and, by type, the FAT32 or the
/// FAT12/16 extended BPB. No boot code: these volumes are booted by UEFI
/// firmware, which reads files, never the boot sector's code.
pub(crate) fn boot_sector(
    geo: &Geometry,
    volume_id: u32,
    label: Option<[u8; 11]>,
    offset: u64,
) -> [u8; 512] {
    let mut b = [0u8; 512];
    let fat32 = geo.fat_type == FatType::Fat32;
    // A short jump over the BPB to where boot code would start.
    b[..3].copy_from_slice(&[0xEB, if fat32 { 0x58 } else { 0x3C }, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = geo.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(geo.reserved_sectors as u16).to_le_bytes());
    b[16] = FATS as u8;
    b[17..19].copy_from_slice(&(geo.root_entries as u16).to_le_bytes());
    b[21] = MEDIA;
    b[24..26].copy_from_slice(&63u16.to_le_bytes()); // sectors per track
    b[26..28].copy_from_slice(&255u16.to_le_bytes()); // heads
                                                      // Hidden sectors: where the filesystem starts on its disk.
    let hidden = u32::try_from(offset / SECTOR).unwrap_or(0);
    b[28..32].copy_from_slice(&hidden.to_le_bytes());
    // The 16-bit total when it fits (FAT12/16 only), else the 32-bit one.
    match u16::try_from(geo.total_sectors) {
        Ok(small) if !fat32 => b[19..21].copy_from_slice(&small.to_le_bytes()),
        _ => b[32..36].copy_from_slice(&geo.total_sectors.to_le_bytes()),
    }
    let ext = if fat32 {
        b[36..40].copy_from_slice(&geo.fat_sectors.to_le_bytes());
        b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
        b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
        b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
        64
    } else {
        b[22..24].copy_from_slice(&(geo.fat_sectors as u16).to_le_bytes());
        36
    };
    // The extended BPB: at 64 on FAT32, at 36 on FAT12/16.
    b[ext] = 0x80; // drive number
    b[ext + 2] = 0x29; // extended boot signature
    b[ext + 3..ext + 7].copy_from_slice(&volume_id.to_le_bytes());
    b[ext + 7..ext + 18].copy_from_slice(&label.unwrap_or(*b"NO NAME    "));
    b[ext + 18..ext + 26].copy_from_slice(geo.fat_type.label());
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// The media descriptor: a fixed disk. Also the low byte of FAT[0].
pub const MEDIA: u8 = 0xF8;

/// FAT32's FSInfo sector: the free cluster count and the next free cluster.
pub(crate) fn fsinfo_sector(free: u32, used: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free.to_le_bytes());
    let next = if free == 0 { u32::MAX } else { 2 + used };
    s[492..496].copy_from_slice(&next.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn fat32_geometry_of_common_sizes() {
        let g = Geometry::new(64 * MIB, Some(FatType::Fat32)).unwrap();
        assert_eq!(g.sectors_per_cluster, 1);
        assert!((g.clusters as u64 + 2) * 4 <= g.fat_sectors as u64 * 512);
        let g = Geometry::new(512 * MIB, None).unwrap();
        assert_eq!(g.fat_type, FatType::Fat32);
        assert_eq!(g.sectors_per_cluster, 8);
        assert!(u64::from(g.clusters) >= MIN_FAT32_CLUSTERS);
        let e = Geometry::new(16 * MIB, Some(FatType::Fat32))
            .unwrap_err()
            .to_string();
        assert!(e.contains("33 MiB"), "{e}");
        assert!(Geometry::new(64 * MIB + 1, None).is_err());
    }

    /// Every size from a few KiB to past the FAT32 threshold gets a layout
    /// whose cluster count is in its type's range, whose FATs hold every
    /// cluster and which fits in the volume; the type only grows with
    /// the size.
    #[test]
    fn automatic_layouts_are_consistent_at_every_size() {
        let mut last = FatType::Fat12;
        let mut seen = Vec::new();
        for sectors in (40..80_000u64).chain((80_000..300_000).step_by(97)) {
            let Ok(g) = Geometry::new(sectors * SECTOR, None) else {
                assert!(sectors < 64, "no layout for {sectors} sectors");
                continue;
            };
            let c = u64::from(g.clusters);
            assert!(g.fat_type.cluster_range().contains(&c), "{g:?}");
            let fat_bytes = u64::from(g.fat_sectors) * SECTOR;
            assert!((c + 2) * g.fat_type.entry_bits() <= fat_bytes * 8, "{g:?}");
            assert!(g.cluster_offset(2) + c * g.cluster_bytes() <= sectors * SECTOR);
            if g.fat_type != FatType::Fat32 {
                // Readers compute the count themselves: it must be ours.
                let data = sectors * SECTOR - g.cluster_offset(2);
                assert_eq!(data / g.cluster_bytes(), c, "{g:?}");
                assert!(g.sectors_per_cluster <= 2, "{g:?}");
            }
            assert!(
                g.fat_type as u8 >= last as u8,
                "{sectors}: {g:?} after {last}"
            );
            if g.fat_type != last || seen.is_empty() {
                seen.push((sectors, g.fat_type));
            }
            last = g.fat_type;
        }
        // The first size of each type (tests/fat.rs checks these with the
        // reference tools).
        assert_eq!(
            seen,
            [
                (40, FatType::Fat12),
                (4152, FatType::Fat16),
                (66589, FatType::Fat32)
            ]
        );
    }

    #[test]
    fn requested_types_refuse_sizes_outside_their_range() {
        let e = Geometry::new(MIB, Some(FatType::Fat16))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("too small for FAT16") && e.contains("4085"),
            "{e}"
        );
        let e = Geometry::new(256 * MIB, Some(FatType::Fat12))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large for FAT12"), "{e}");
        let e = Geometry::new(4 << 30, Some(FatType::Fat16))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large for FAT16"), "{e}");
        let e = Geometry::new(8 * 1024, None).unwrap_err().to_string();
        assert!(e.contains("no room for data"), "{e}");
        // Larger clusters when the small ones would be too many.
        let g = Geometry::new(64 * MIB, Some(FatType::Fat16)).unwrap();
        assert_eq!((g.fat_type, g.sectors_per_cluster), (FatType::Fat16, 2));
        let g = Geometry::new(8 * MIB, Some(FatType::Fat12)).unwrap();
        assert_eq!((g.fat_type, g.sectors_per_cluster), (FatType::Fat12, 4));
    }

    #[test]
    fn boot_sector_fields_by_type() {
        let g = Geometry::new(8 * MIB, None).unwrap();
        assert_eq!(g.fat_type, FatType::Fat16);
        let b = boot_sector(&g, 0xAABB_CCDD, Some(*b"EFIBOOT    "), 0);
        assert_eq!(&b[17..19], &512u16.to_le_bytes());
        assert_eq!(&b[19..21], &16384u16.to_le_bytes());
        assert_eq!(&b[32..36], &[0; 4]);
        assert_eq!(&b[22..24], &(g.fat_sectors as u16).to_le_bytes());
        assert_eq!(b[38], 0x29);
        assert_eq!(&b[39..43], &0xAABB_CCDDu32.to_le_bytes());
        assert_eq!(&b[43..54], b"EFIBOOT    ");
        assert_eq!(&b[54..62], b"FAT16   ");
        let g = Geometry::new(40 * MIB, Some(FatType::Fat16)).unwrap();
        let b = boot_sector(&g, 1, None, 2048 * 512);
        assert_eq!(&b[19..21], &[0, 0]);
        assert_eq!(&b[32..36], &(81920u32).to_le_bytes());
        assert_eq!(&b[28..32], &2048u32.to_le_bytes());
        assert_eq!(&b[43..54], b"NO NAME    ");
    }
}
