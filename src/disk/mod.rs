//! GPT disk images with the A/B layout (see docs/architecture.md, "On-disk
//! contracts").
//!
//! A [`Layout`] fixes where every partition goes: 1 MiB aligned, in the
//! contract's order, with the disk and partition GUIDs derived from a seed
//! so the same inputs give the same bytes. [`write_image`] writes the
//! protective MBR, the primary and backup GPT and splices each partition's
//! content (a FAT writer's output, a squashfs file, any reader) at its
//! offset. The image file stays sparse where nothing is written.
//!
//! The partition names are the contract with the device: `os-init` and
//! `os-agent` find the slots by these names, never by number.

pub mod bmap;
pub mod card;
pub mod inspect;
mod write;

use std::ops::Range;

use anyhow::{bail, Result};
use boot_contract::gpt;
use sha2::{Digest, Sha256};

pub use boot_contract::gpt::{Guid, ParseGuidError};
pub use write::{
    write_image, write_mbr_boot_code, PartitionWriter, Source, WriteFn, MBR_BOOT_CODE_SIZE,
};

/// Partition names: the contract with `os-agent` and `os-init`, defined
/// once in `boot-contract`. `bios_grub` holds GRUB's i386-pc core.img (x86
/// only); `ESP` holds GRUB, its config and env blocks and the kernels;
/// `root_a`/`root_b` are raw squashfs slots; `persist` is created or grown
/// on first boot.
pub use boot_contract::partition::{BIOS_GRUB, ESP, PERSIST, ROOT_A, ROOT_B};

/// A partition table [`write_image`] can write: partitions known by name,
/// at fixed byte ranges of an image of a fixed size.
pub trait Table {
    /// Size of the whole image in bytes.
    fn size(&self) -> u64;
    /// The bytes of the image the partition `name` covers.
    fn extent(&self, name: &str) -> Option<Range<u64>>;
    /// The partition names, in table order (for messages).
    fn names(&self) -> Vec<&str>;
    /// Writes the table's own sectors (every other byte is left alone).
    fn write_table(&self, out: &std::fs::File) -> Result<()>;
}

impl Table for Layout {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&self, name: &str) -> Option<Range<u64>> {
        self.range(name)
    }

    fn names(&self) -> Vec<&str> {
        self.partitions.iter().map(|p| p.name.as_str()).collect()
    }

    fn write_table(&self, out: &std::fs::File) -> Result<()> {
        write::write_gpt(self, out)
    }
}

/// The sector size of the images build-image writes.
pub const SECTOR: u64 = 512;

/// A GUID derived from `seed` and `purpose`, so the same seed always gives
/// the same GUIDs and different purposes differ. Marked version 8
/// ([`Guid::derived`]): a device tells a disk that still carries its
/// image's identity by it and gives the disk random (version 4) GUIDs.
pub fn derive_guid(seed: &[u8], purpose: &str) -> Guid {
    let mut h = Sha256::new();
    h.update(b"build-image/disk-guid\0");
    h.update((seed.len() as u64).to_le_bytes());
    h.update(seed);
    h.update(purpose.as_bytes());
    let d = h.finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[..16]);
    Guid::derived(g)
}

/// Alignment (and size granularity) of every partition.
pub const ALIGN: u64 = 1 << 20;
/// Size of the BIOS boot partition.
pub const BIOS_GRUB_SIZE: u64 = 1 << 20;
/// Suggested ESP size.
pub const DEFAULT_ESP_SIZE: u64 = 256 << 20;

/// Partition type GUIDs.
pub mod types {
    use super::Guid;

    pub const BIOS_BOOT: Guid = Guid::parse_const("21686148-6449-6E6F-744E-656564454649");
    pub const EFI_SYSTEM: Guid = Guid::parse_const("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    pub const ROOT_X86_64: Guid = Guid::parse_const("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    pub const ROOT_ARM64: Guid = Guid::parse_const("B921B045-1DF0-41C3-AF44-4C6F280D3FAE");
    pub const LINUX_FILESYSTEM: Guid = Guid::parse_const("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
}

/// The architecture a disk is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The discoverable-partitions root type GUID for this architecture.
    pub fn root_type(self) -> Guid {
        match self {
            Arch::X86_64 => types::ROOT_X86_64,
            Arch::Aarch64 => types::ROOT_ARM64,
        }
    }
}

/// One partition of a [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub type_guid: Guid,
    pub guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Number of sectors.
    pub sectors: u64,
}

impl Partition {
    /// Byte offset from the start of the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn size(&self) -> u64 {
        self.sectors * SECTOR
    }

    /// The bytes of the disk this partition covers.
    pub fn range(&self) -> Range<u64> {
        self.offset()..self.offset() + self.size()
    }

    fn entry(&self) -> gpt::Entry {
        gpt::Entry {
            type_guid: self.type_guid,
            guid: self.guid,
            first_lba: self.first_lba,
            last_lba: self.first_lba + self.sectors - 1,
            attributes: 0,
            name: self.name.clone(),
        }
    }
}

/// What a partition is before it is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub name: String,
    pub type_guid: Guid,
    /// Rounded up to a multiple of [`ALIGN`].
    pub size: u64,
}

impl PartitionSpec {
    pub fn new(name: &str, type_guid: Guid, size: u64) -> Self {
        PartitionSpec {
            name: name.to_string(),
            type_guid,
            size,
        }
    }
}

/// Where every partition of a disk image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_guid: Guid,
    /// In disk (and GPT entry) order.
    pub partitions: Vec<Partition>,
    /// Size of the whole image in bytes.
    pub size: u64,
}

impl Layout {
    /// The A/B layout: `bios_grub` (x86_64 only), `ESP`, `root_a`, `root_b`
    /// (both `slot_size`) and `persist`. A `persist_size` of 0 leaves
    /// `persist` out: os-init creates it on first boot, grown to the end of
    /// the disk. Sizes are rounded up to MiB. GUIDs derive from `seed` (e.g.
    /// a hash of the build's inputs).
    pub fn ab(
        arch: Arch,
        esp_size: u64,
        slot_size: u64,
        persist_size: u64,
        seed: &[u8],
    ) -> Result<Layout> {
        let mut specs = Vec::new();
        if arch == Arch::X86_64 {
            specs.push(PartitionSpec::new(
                BIOS_GRUB,
                types::BIOS_BOOT,
                BIOS_GRUB_SIZE,
            ));
        }
        specs.extend([
            PartitionSpec::new(ESP, types::EFI_SYSTEM, esp_size),
            PartitionSpec::new(ROOT_A, arch.root_type(), slot_size),
            PartitionSpec::new(ROOT_B, arch.root_type(), slot_size),
        ]);
        if persist_size > 0 {
            specs.push(PartitionSpec::new(
                PERSIST,
                types::LINUX_FILESYSTEM,
                persist_size,
            ));
        }
        Layout::new(&specs, seed)
    }

    /// Places `specs` one after the other from 1 MiB, each aligned to
    /// [`ALIGN`], with 1 MiB after the last for the backup GPT.
    pub fn new(specs: &[PartitionSpec], seed: &[u8]) -> Result<Layout> {
        if specs.len() > gpt::NEW_ENTRY_COUNT {
            bail!("a GPT holds at most {} partitions", gpt::NEW_ENTRY_COUNT);
        }
        let mut partitions: Vec<Partition> = Vec::with_capacity(specs.len());
        let mut at = ALIGN;
        for s in specs {
            if s.size == 0 {
                bail!("partition {} has size 0", s.name);
            }
            if s.name.is_empty() || s.name.encode_utf16().count() > gpt::MAX_NAME {
                bail!(
                    "bad partition name {:?}: expected 1 to {} characters",
                    s.name,
                    gpt::MAX_NAME
                );
            }
            if partitions.iter().any(|p| p.name == s.name) {
                bail!("two partitions are named {}", s.name);
            }
            let size = s
                .size
                .checked_next_multiple_of(ALIGN)
                .filter(|sz| at.checked_add(*sz).is_some())
                .ok_or_else(|| anyhow::anyhow!("partition {} is too large", s.name))?;
            partitions.push(Partition {
                name: s.name.clone(),
                type_guid: s.type_guid,
                guid: derive_guid(seed, &format!("partition:{}", s.name)),
                first_lba: at / SECTOR,
                sectors: size / SECTOR,
            });
            at += size;
        }
        let size = at
            .checked_add(ALIGN)
            .ok_or_else(|| anyhow::anyhow!("the disk is too large"))?;
        Ok(Layout {
            disk_guid: derive_guid(seed, "disk"),
            partitions,
            size,
        })
    }

    /// The partition called `name`.
    pub fn partition(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// The GPT partition number (1-based entry) of the partition `name`.
    pub fn partition_number(&self, name: &str) -> Option<u32> {
        let i = self.partitions.iter().position(|p| p.name == name)?;
        Some(i as u32 + 1)
    }

    /// The bytes of the disk the partition called `name` covers.
    pub fn range(&self, name: &str) -> Option<Range<u64>> {
        self.partition(name).map(Partition::range)
    }

    pub fn total_sectors(&self) -> u64 {
        self.size / SECTOR
    }

    fn entries(&self) -> Vec<gpt::Entry> {
        self.partitions.iter().map(Partition::entry).collect()
    }

    /// The partition table of this layout.
    pub fn gpt(&self) -> Result<gpt::Gpt> {
        Ok(gpt::Gpt::new(
            SECTOR,
            self.total_sectors(),
            self.disk_guid,
            &self.entries(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ab_layout_x86_64() {
        let l = Layout::ab(Arch::X86_64, 256 * MIB, 1000 * MIB + 1, 64 * MIB, b"s").unwrap();
        let names: Vec<_> = l.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, [BIOS_GRUB, ESP, ROOT_A, ROOT_B, PERSIST]);
        assert_eq!(l.range(BIOS_GRUB).unwrap(), MIB..2 * MIB);
        assert_eq!(l.range(ESP).unwrap(), 2 * MIB..258 * MIB);
        assert_eq!(l.range(ROOT_A).unwrap(), 258 * MIB..1259 * MIB);
        assert_eq!(l.range(ROOT_B).unwrap(), 1259 * MIB..2260 * MIB);
        assert_eq!(l.range(PERSIST).unwrap(), 2260 * MIB..2324 * MIB);
        assert_eq!(l.size, 2325 * MIB);
        assert_eq!(l.partition(ROOT_A).unwrap().type_guid, types::ROOT_X86_64);
        assert!(l.partition("nope").is_none());
    }

    #[test]
    fn ab_layout_arm64_has_no_bios_grub() {
        let l = Layout::ab(Arch::Aarch64, 64 * MIB, 64 * MIB, 16 * MIB, b"s").unwrap();
        let names: Vec<_> = l.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, [ESP, ROOT_A, ROOT_B, PERSIST]);
        assert_eq!(l.partition(ROOT_B).unwrap().type_guid, types::ROOT_ARM64);
        assert_eq!(l.range(ESP).unwrap().start, MIB);
    }

    #[test]
    fn guids_follow_the_seed() {
        let a = Layout::ab(Arch::X86_64, MIB, MIB, MIB, b"one").unwrap();
        let b = Layout::ab(Arch::X86_64, MIB, MIB, MIB, b"one").unwrap();
        let c = Layout::ab(Arch::X86_64, MIB, MIB, MIB, b"two").unwrap();
        assert_eq!(a, b);
        assert_ne!(a.disk_guid, c.disk_guid);
        let mut all: Vec<Guid> = a.partitions.iter().map(|p| p.guid).collect();
        all.push(a.disk_guid);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn derived_guids_are_stable_and_distinct() {
        let a = derive_guid(b"seed", "disk");
        assert!(a.is_derived());
        assert_eq!(a, derive_guid(b"seed", "disk"));
        assert_ne!(a, derive_guid(b"seed", "root_a"));
        assert_ne!(a, derive_guid(b"seed2", "disk"));
        assert_eq!(a.text_bytes()[6] >> 4, 8, "version 8: derived, not random");
        assert_eq!(a.text_bytes()[8] >> 6, 0b10);
    }

    #[test]
    fn bad_specs_rejected() {
        assert!(Layout::ab(Arch::X86_64, 0, MIB, MIB, b"s").is_err());
        let dup = [
            PartitionSpec::new("x", types::EFI_SYSTEM, MIB),
            PartitionSpec::new("x", types::EFI_SYSTEM, MIB),
        ];
        assert!(Layout::new(&dup, b"s").is_err());
        assert!(Layout::new(
            &[PartitionSpec::new("x", types::EFI_SYSTEM, u64::MAX)],
            b"s"
        )
        .is_err());
    }
}
