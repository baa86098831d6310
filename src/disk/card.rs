//! The Raspberry Pi card: an MBR disk (the only table the Pi boot ROMs
//! read) with four primary partitions at the contract's fixed numbers
//! ([`boot_contract::mbr`]): the FAT32 boot partition (type 0x0c, the
//! active flag), `root_a`, `root_b` and a small `persist` (all type 0x83).
//! Partitions start at 1 MiB and are 1 MiB aligned, like the GPT disk's.
//! The disk signature derives from the build's seed.

use std::fs::File;
use std::ops::Range;

use anyhow::{bail, Context, Result};
use boot_contract::mbr::{self, Entry, Mbr};
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;

use super::{Table, ALIGN, PERSIST, ROOT_A, ROOT_B, SECTOR};

/// The name [`write_image`](super::write_image) knows the boot partition
/// by (MBR entries have no names: on the card it is partition
/// [`mbr::BOOT`]).
pub const BOOT: &str = "boot";

/// Where every partition of a card goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardLayout {
    pub disk_id: u32,
    /// Name, entry: in partition-number order.
    pub partitions: Vec<(&'static str, Entry)>,
    /// Size of the whole image in bytes.
    pub size: u64,
}

impl CardLayout {
    /// Boot (`boot_size`), `root_a` and `root_b` (`slot_size` each) and
    /// `persist` (`persist_size`), each rounded up to MiB.
    pub fn new(boot_size: u64, slot_size: u64, persist_size: u64, seed: &[u8]) -> Result<Self> {
        let specs = [
            (BOOT, mbr::types::FAT32_LBA, boot_size),
            (ROOT_A, mbr::types::LINUX, slot_size),
            (ROOT_B, mbr::types::LINUX, slot_size),
            (PERSIST, mbr::types::LINUX, persist_size),
        ];
        let mut at = ALIGN;
        let mut partitions = Vec::new();
        for (name, kind, size) in specs {
            if size == 0 {
                bail!("partition {name} of the card has size 0");
            }
            let size = size
                .checked_next_multiple_of(ALIGN)
                .context("partition too large")?;
            let first = at / SECTOR;
            let sectors = size / SECTOR;
            let (Ok(first_lba), Ok(sectors)) = (u32::try_from(first), u32::try_from(sectors))
            else {
                bail!("partition {name} ends beyond 2 TiB, the limit of an MBR");
            };
            if u64::from(first_lba) + u64::from(sectors) > u64::from(u32::MAX) {
                bail!("partition {name} ends beyond 2 TiB, the limit of an MBR");
            }
            partitions.push((
                name,
                Entry {
                    bootable: name == BOOT,
                    kind,
                    first_lba,
                    sectors,
                },
            ));
            at += size;
        }
        Ok(CardLayout {
            disk_id: disk_id(seed),
            partitions,
            size: at,
        })
    }

    pub fn mbr(&self) -> Mbr {
        let mut entries = [None; 4];
        for (i, (_, e)) in self.partitions.iter().enumerate() {
            entries[i] = Some(*e);
        }
        Mbr {
            disk_id: self.disk_id,
            entries,
        }
    }

    /// The entry of partition `name` and its number.
    pub fn partition(&self, name: &str) -> Option<(u8, &Entry)> {
        self.partitions
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| (i as u8 + 1, &self.partitions[i].1))
    }
}

/// A disk signature derived from `seed`, marked as a build's
/// ([`mbr::derived_disk_id`]) so os-init gives each card its own on first
/// boot.
fn disk_id(seed: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(b"build-image/card-disk-id\0");
    h.update(seed);
    let d = h.finalize();
    mbr::derived_disk_id([d[0], d[1], d[2], d[3]])
}

impl Table for CardLayout {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&self, name: &str) -> Option<Range<u64>> {
        let (_, e) = self.partition(name)?;
        let start = u64::from(e.first_lba) * SECTOR;
        Some(start..start + u64::from(e.sectors) * SECTOR)
    }

    fn names(&self) -> Vec<&str> {
        self.partitions.iter().map(|(n, _)| *n).collect()
    }

    fn write_table(&self, out: &File) -> Result<()> {
        out.write_all_at(&self.mbr().encode(), 0)
            .context("writing the MBR")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn card_layout_follows_the_contract() {
        let l = CardLayout::new(256 * MIB, 1000 * MIB + 1, 64 * MIB, b"s").unwrap();
        assert_eq!(l.names(), [BOOT, ROOT_A, ROOT_B, PERSIST]);
        assert_eq!(l.extent(BOOT).unwrap(), MIB..257 * MIB);
        assert_eq!(l.extent(ROOT_A).unwrap(), 257 * MIB..1258 * MIB);
        assert_eq!(l.extent(PERSIST).unwrap(), 2259 * MIB..2323 * MIB);
        assert_eq!(l.size, 2323 * MIB);
        let m = l.mbr();
        m.check_card().unwrap();
        assert_eq!(l.partition(ROOT_B).unwrap().0, mbr::ROOT_B);
        assert!(m.entry(mbr::BOOT).unwrap().bootable);
        assert!(!m.entry(mbr::ROOT_A).unwrap().bootable);
        let parsed = Mbr::parse(&m.encode(), Some(l.size / SECTOR)).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(
            CardLayout::new(MIB, MIB, MIB, b"s").unwrap().disk_id,
            l.disk_id
        );
        assert_ne!(
            CardLayout::new(MIB, MIB, MIB, b"t").unwrap().disk_id,
            l.disk_id
        );
        // Marked as a build's, for os-init to replace on first boot.
        assert!(mbr::is_derived_disk_id(l.disk_id), "{:08x}", l.disk_id);
        assert!(CardLayout::new(MIB, 0, MIB, b"s").is_err());
        let e = CardLayout::new(MIB, 1 << 41, MIB, b"s").unwrap_err();
        assert!(e.to_string().contains("2 TiB"), "{e}");
    }
}
