//! Just enough of FAT32 (Microsoft's "FAT: General Overview of On-Disk
//! Format" 1.03) for the device binaries to handle the ESP without
//! mounting it: its volume id (the serial `blkid` shows as `XXXX-XXXX`),
//! where to write a new one, and the contents of a small file in the root
//! directory (the GRUB environment blocks).
//!
//! The filesystem is untrusted input: every field used is checked against
//! the partition's size, cluster chains are bounded by the cluster count,
//! and every failure is a [`FatError`] naming what was wrong.

use std::io::{self, Read, Seek, SeekFrom};

/// Why a FAT32 filesystem or a file in it was refused.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("not a FAT32 filesystem: {0}")]
    NotFat32(String),
    #[error("FAT32: {0}")]
    Corrupt(String),
    #[error("FAT32: {name} is {size} bytes, more than the {max} expected")]
    TooLarge { name: String, size: u64, max: usize },
}

/// Offset of the volume id in a FAT32 boot sector (BS_VolID).
pub const VOLUME_ID_OFFSET: u64 = 0x43;

/// A FAT32 volume id the way `blkid`, GRUB and fstab write it:
/// 0x1234ABCD is `1234-ABCD`.
pub fn volume_id_text(id: u32) -> String {
    format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
}

/// The geometry of a FAT32 filesystem, read from its boot sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fat32 {
    /// Byte offset of the filesystem (the partition) on the device.
    offset: u64,
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    reserved_sectors: u64,
    fat_sectors: u64,
    fats: u64,
    root_cluster: u32,
    /// Sector of the backup boot sector, if there is one.
    backup_boot: Option<u64>,
    /// Clusters 2..cluster_count+2 are data clusters.
    cluster_count: u32,
    volume_id: u32,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_at<D: Read + Seek>(d: &mut D, at: u64, buf: &mut [u8], what: &str) -> Result<(), FatError> {
    d.seek(SeekFrom::Start(at))
        .and_then(|_| d.read_exact(buf))
        .map_err(|source| FatError::Io {
            what: format!("reading {what} at byte {at}"),
            source,
        })
}

impl Fat32 {
    /// Reads and checks the boot sector of the FAT32 filesystem at byte
    /// `offset` of `dev`, which has `len` bytes (the partition's size).
    pub fn read<D: Read + Seek>(dev: &mut D, offset: u64, len: u64) -> Result<Fat32, FatError> {
        let mut b = [0u8; 512];
        read_at(dev, offset, &mut b, "the FAT boot sector")?;
        let not = |why: String| FatError::NotFat32(why);
        if b[510..512] != [0x55, 0xAA] {
            return Err(not("no boot signature 55 AA at byte 510".into()));
        }
        let bps = le16(&b, 11);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(not(format!(
                "{bps} bytes per sector, expected 512, 1024, 2048 or 4096"
            )));
        }
        let spc = u64::from(b[13]);
        if spc == 0 || !spc.is_power_of_two() {
            return Err(not(format!("{spc} sectors per cluster")));
        }
        let reserved = le16(&b, 14);
        let fats = u64::from(b[16]);
        let root_entries = le16(&b, 17);
        let fat16_size = le16(&b, 22);
        let fat_sectors = u64::from(le32(&b, 36));
        if reserved == 0 || fats == 0 || root_entries != 0 || fat16_size != 0 || fat_sectors == 0 {
            return Err(not(format!(
                "reserved sectors {reserved}, FATs {fats}, root entries {root_entries}, \
                 FAT16 size {fat16_size}, FAT32 size {fat_sectors}: not the layout of FAT32"
            )));
        }
        let total = match le16(&b, 19) {
            0 => u64::from(le32(&b, 32)),
            n => n,
        };
        if total * bps > len {
            return Err(FatError::Corrupt(format!(
                "{total} sectors of {bps} bytes do not fit the partition's {len} bytes"
            )));
        }
        let data_start = reserved + fats * fat_sectors;
        if data_start >= total {
            return Err(FatError::Corrupt(format!(
                "the data area starts at sector {data_start}, beyond the {total} sectors"
            )));
        }
        let clusters = (total - data_start) / spc;
        // The FAT must hold an entry for every cluster (plus the first two).
        let fat_entries = fat_sectors * bps / 4;
        let cluster_count = clusters.min(fat_entries.saturating_sub(2)).min(0x0FFF_FFF5) as u32;
        let root_cluster = le32(&b, 44);
        if root_cluster < 2 || root_cluster >= cluster_count + 2 {
            return Err(FatError::Corrupt(format!(
                "root directory cluster {root_cluster} outside 2..{}",
                cluster_count + 2
            )));
        }
        if b[66] != 0x29 {
            return Err(not(format!(
                "extended boot signature {:#04x}, expected 0x29 (no volume id)",
                b[66]
            )));
        }
        let backup = le16(&b, 50);
        Ok(Fat32 {
            offset,
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            reserved_sectors: reserved,
            fat_sectors,
            fats,
            root_cluster,
            backup_boot: (backup != 0 && backup != 0xFFFF && backup < reserved).then_some(backup),
            cluster_count,
            volume_id: le32(&b, VOLUME_ID_OFFSET as usize),
        })
    }

    pub fn volume_id(&self) -> u32 {
        self.volume_id
    }

    /// The writes that set the volume id to `id` (byte offset on the
    /// device, 4 bytes): in the boot sector and in its backup, so the two
    /// stay the same (`fsck.vfat` compares them).
    pub fn volume_id_writes(&self, id: u32) -> Vec<(u64, [u8; 4])> {
        let mut v = vec![(self.offset + VOLUME_ID_OFFSET, id.to_le_bytes())];
        if let Some(s) = self.backup_boot {
            v.push((
                self.offset + s * self.bytes_per_sector + VOLUME_ID_OFFSET,
                id.to_le_bytes(),
            ));
        }
        v
    }

    fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * self.bytes_per_sector
    }

    fn cluster_at(&self, cluster: u32) -> u64 {
        let data = (self.reserved_sectors + self.fats * self.fat_sectors) * self.bytes_per_sector;
        self.offset + data + u64::from(cluster - 2) * self.cluster_bytes()
    }

    fn valid(&self, cluster: u32) -> bool {
        cluster >= 2 && cluster < self.cluster_count + 2
    }

    /// The FAT entry of `cluster`: the next cluster, or None at the end of
    /// the chain.
    fn next<D: Read + Seek>(&self, dev: &mut D, cluster: u32) -> Result<Option<u32>, FatError> {
        let at =
            self.offset + self.reserved_sectors * self.bytes_per_sector + u64::from(cluster) * 4;
        let mut e = [0u8; 4];
        read_at(dev, at, &mut e, "the FAT")?;
        let next = u32::from_le_bytes(e) & 0x0FFF_FFFF;
        match next {
            0x0FFF_FFF8..=0x0FFF_FFFF => Ok(None),
            n if self.valid(n) => Ok(Some(n)),
            n => Err(FatError::Corrupt(format!(
                "cluster {cluster} is followed by {n:#x}, not a data cluster or the end"
            ))),
        }
    }

    /// The clusters of the chain from `first`, at most `limit` of them.
    fn chain<D: Read + Seek>(
        &self,
        dev: &mut D,
        first: u32,
        limit: u64,
    ) -> Result<Vec<u32>, FatError> {
        let mut out = Vec::new();
        let mut c = first;
        loop {
            if !self.valid(c) {
                return Err(FatError::Corrupt(format!(
                    "cluster {c} is not a data cluster"
                )));
            }
            out.push(c);
            if out.len() as u64 >= limit {
                return Ok(out);
            }
            // No chain is longer than the filesystem.
            if out.len() as u64 > u64::from(self.cluster_count) {
                return Err(FatError::Corrupt(format!(
                    "the cluster chain from {first} loops"
                )));
            }
            match self.next(dev, c)? {
                Some(n) => c = n,
                None => return Ok(out),
            }
        }
    }

    /// The contents of the file `name` (an 8.3 name such as `grubenv` or
    /// `grubenv.bak`, matched case-insensitively against the short names)
    /// in the root directory, if it is there; a file larger than `max`
    /// bytes is refused.
    pub fn read_root_file<D: Read + Seek>(
        &self,
        dev: &mut D,
        name: &str,
        max: usize,
    ) -> Result<Option<Vec<u8>>, FatError> {
        let Some(short) = short_name(name) else {
            return Ok(None);
        };
        let cb = self.cluster_bytes();
        let mut buf = vec![0u8; cb as usize];
        for cl in self.chain(dev, self.root_cluster, u64::MAX)? {
            read_at(dev, self.cluster_at(cl), &mut buf, "the root directory")?;
            for e in buf.chunks_exact(32) {
                match e[0] {
                    0 => return Ok(None),
                    0xE5 => continue,
                    _ => {}
                }
                let attr = e[11];
                // Long-name parts, volume labels and directories.
                if attr & 0x0F == 0x0F || attr & 0x18 != 0 {
                    continue;
                }
                if !e[..11].eq_ignore_ascii_case(&short) {
                    continue;
                }
                let size = u64::from(le32(e, 28));
                if size > max as u64 {
                    return Err(FatError::TooLarge {
                        name: name.into(),
                        size,
                        max,
                    });
                }
                let first = ((le16(e, 20) as u32) << 16) | le16(e, 26) as u32;
                let mut data = Vec::with_capacity(size as usize);
                if size > 0 {
                    for c in self.chain(dev, first, size.div_ceil(cb))? {
                        let n = (size - data.len() as u64).min(cb) as usize;
                        let mut part = vec![0u8; n];
                        read_at(dev, self.cluster_at(c), &mut part, name)?;
                        data.extend_from_slice(&part);
                    }
                    if (data.len() as u64) < size {
                        return Err(FatError::Corrupt(format!(
                            "{name}: its cluster chain ends after {} of {size} bytes",
                            data.len()
                        )));
                    }
                }
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// The 11-byte short name of `name` (`grubenv.bak` is `GRUBENV BAK`), or
/// None when it is not a valid 8.3 name.
fn short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || !name.is_ascii() {
        return None;
    }
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    s.make_ascii_uppercase();
    Some(s)
}

#[cfg(test)]
mod tests;
