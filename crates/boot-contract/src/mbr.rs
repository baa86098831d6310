//! The MBR (DOS) partition table of a Raspberry Pi card, one
//! implementation for both sides: build-image writes it ([`Mbr::encode`]),
//! os-init and os-agent read it ([`Mbr::parse`]).
//!
//! The Pi boot ROMs read only an MBR, whose entries have no names. The
//! card's partitions are therefore found by **fixed partition numbers**
//! ([`BOOT`], [`ROOT_A`], [`ROOT_B`], [`PERSIST`]) on the disk whose MBR
//! holds the boot partition GRUB was started from. GRUB names that
//! partition on the kernel command line by the partition UUID it reads
//! with `probe --part-uuid`, which on an MBR disk is the disk signature and
//! the partition number, `xxxxxxxx-NN` in lowercase hex (the same form as
//! the kernel's `PARTUUID=`): [`PartUuid`].
//!
//! The disk signature says who chose it, in its top four bits like a
//! UUID's version ([`derived_disk_id`], [`random_disk_id`]): 8 for one a
//! build derived, which every card written from one image carries until
//! its first boot, when os-init gives the card a random one (4). Neither
//! is ever 0, which some tools read as "no signature".
//!
//! Only the four primary entries are read; extended partitions are not
//! part of the contract. The table is untrusted input: every failure is an
//! [`MbrError`] naming the field.

use std::fmt;
use std::str::FromStr;

/// Partition numbers (1-based, as in `/dev/mmcblk0p2`) of a Pi card.
pub const BOOT: u8 = 1;
pub const ROOT_A: u8 = 2;
pub const ROOT_B: u8 = 3;
pub const PERSIST: u8 = 4;

/// Partition type bytes.
pub mod types {
    /// FAT32 with LBA addressing: the boot partition the Pi firmware reads.
    pub const FAT32_LBA: u8 = 0x0c;
    /// Linux: the root slots and `persist`.
    pub const LINUX: u8 = 0x83;
    /// The protective MBR in front of a GPT.
    pub const GPT_PROTECTIVE: u8 = 0xee;
    /// Extended partition containers (CHS and LBA).
    pub const EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];
}

/// Offset of the disk signature in the first sector.
const DISK_ID_OFFSET: usize = 440;
const ENTRIES_OFFSET: usize = 446;
const ENTRY_SIZE: usize = 16;

/// One primary partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The active ("boot") flag.
    pub bootable: bool,
    pub kind: u8,
    pub first_lba: u32,
    pub sectors: u32,
}

impl Entry {
    /// One past the last sector.
    pub fn end_lba(&self) -> u64 {
        u64::from(self.first_lba) + u64::from(self.sectors)
    }
}

/// The first sector of an MBR disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    /// The 32-bit disk signature (at byte 440).
    pub disk_id: u32,
    /// The four primary entries; `None` for an unused one.
    pub entries: [Option<Entry>; 4],
}

/// Why a first sector is not an MBR the contract accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MbrError {
    #[error("MBR: no 55 AA boot signature at byte 510")]
    NoSignature,
    #[error("MBR: a protective MBR (type 0xee): the disk has a GPT")]
    Protective,
    #[error("MBR: entry {0}: {1}")]
    Entry(u8, String),
}

/// A partition UUID of an MBR disk: disk signature and partition number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartUuid {
    pub disk_id: u32,
    /// 1-based.
    pub partition: u8,
}

impl fmt::Display for PartUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{:02x}", self.disk_id, self.partition)
    }
}

impl FromStr for PartUuid {
    type Err = String;

    /// `xxxxxxxx-NN`, hex, either case.
    fn from_str(s: &str) -> Result<PartUuid, String> {
        let bad =
            || format!("{s:?}: expected an MBR partition UUID, 8 hex digits, '-', 2 hex digits");
        let (id, n) = s.split_once('-').ok_or_else(bad)?;
        if id.len() != 8 || n.len() != 2 {
            return Err(bad());
        }
        if !id.chars().chain(n.chars()).all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let disk_id = u32::from_str_radix(id, 16).map_err(|_| bad())?;
        let partition = u8::from_str_radix(n, 16).map_err(|_| bad())?;
        if !(1..=4).contains(&partition) {
            return Err(format!(
                "{s:?}: partition {partition} is not a primary partition (1 to 4)"
            ));
        }
        Ok(PartUuid { disk_id, partition })
    }
}

/// The disk signature a build derives from the hash bytes `h`: the top
/// four bits 8.
pub fn derived_disk_id(h: [u8; 4]) -> u32 {
    (u32::from_le_bytes(h) & 0x0fff_ffff) | 0x8000_0000
}

/// A device's own disk signature from the random bytes `r`: the top four
/// bits 4.
pub fn random_disk_id(r: [u8; 4]) -> u32 {
    (u32::from_le_bytes(r) & 0x0fff_ffff) | 0x4000_0000
}

/// Whether `id` is one a build derived ([`derived_disk_id`]): the card
/// still carries its image's identity.
pub fn is_derived_disk_id(id: u32) -> bool {
    id >> 28 == 8
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// CHS of `lba` for an entry (255 heads, 63 sectors a track), or the
/// "beyond CHS" marker every LBA reader ignores.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, spt) = (255u64, 63u64);
    let c = lba / (heads * spt);
    if c > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let h = (lba / spt) % heads;
    let s = lba % spt + 1;
    [h as u8, (s as u8) | (((c >> 8) as u8) << 6), c as u8]
}

impl Mbr {
    /// The first sector: the entries, the disk signature and `55 AA`;
    /// the boot code area is zeros.
    pub fn encode(&self) -> [u8; 512] {
        let mut m = [0u8; 512];
        m[DISK_ID_OFFSET..DISK_ID_OFFSET + 4].copy_from_slice(&self.disk_id.to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let Some(e) = e else { continue };
            let p = &mut m[ENTRIES_OFFSET + ENTRY_SIZE * i..][..ENTRY_SIZE];
            p[0] = if e.bootable { 0x80 } else { 0 };
            p[1..4].copy_from_slice(&chs(u64::from(e.first_lba)));
            p[4] = e.kind;
            p[5..8].copy_from_slice(&chs(e.end_lba().saturating_sub(1)));
            p[8..12].copy_from_slice(&e.first_lba.to_le_bytes());
            p[12..16].copy_from_slice(&e.sectors.to_le_bytes());
        }
        m[510] = 0x55;
        m[511] = 0xAA;
        m
    }

    /// Reads a first sector. Refuses a protective MBR (the disk has a GPT),
    /// bad boot flags, empty or overlapping partitions and partitions
    /// beyond `disk_sectors` (when known).
    pub fn parse(sector: &[u8; 512], disk_sectors: Option<u64>) -> Result<Mbr, MbrError> {
        if sector[510..512] != [0x55, 0xAA] {
            return Err(MbrError::NoSignature);
        }
        let mut entries = [None; 4];
        for (i, slot) in entries.iter_mut().enumerate() {
            let n = i as u8 + 1;
            let p = &sector[ENTRIES_OFFSET + ENTRY_SIZE * i..][..ENTRY_SIZE];
            let kind = p[4];
            if kind == 0 {
                continue;
            }
            if kind == types::GPT_PROTECTIVE {
                return Err(MbrError::Protective);
            }
            let bootable = match p[0] {
                0 => false,
                0x80 => true,
                f => {
                    return Err(MbrError::Entry(
                        n,
                        format!("boot flag {f:#04x}, expected 0 or 0x80"),
                    ))
                }
            };
            let e = Entry {
                bootable,
                kind,
                first_lba: le32(p, 8),
                sectors: le32(p, 12),
            };
            if e.first_lba == 0 || e.sectors == 0 {
                return Err(MbrError::Entry(
                    n,
                    format!(
                        "type {kind:#04x} starts at sector {} with {} sectors: expected a \
                         partition after sector 0 with at least one sector",
                        e.first_lba, e.sectors
                    ),
                ));
            }
            if let Some(total) = disk_sectors {
                if e.end_lba() > total {
                    return Err(MbrError::Entry(
                        n,
                        format!(
                            "ends at sector {}, beyond the disk's {total} sectors",
                            e.end_lba()
                        ),
                    ));
                }
            }
            *slot = Some(e);
        }
        for (i, a) in entries.iter().enumerate() {
            for (j, b) in entries.iter().enumerate().skip(i + 1) {
                if let (Some(a), Some(b)) = (a, b) {
                    if u64::from(a.first_lba) < b.end_lba() && u64::from(b.first_lba) < a.end_lba()
                    {
                        return Err(MbrError::Entry(
                            j as u8 + 1,
                            format!("overlaps entry {}", i + 1),
                        ));
                    }
                }
            }
        }
        Ok(Mbr {
            disk_id: le32(sector, DISK_ID_OFFSET),
            entries,
        })
    }

    /// Entry `n` (1-based), when used.
    pub fn entry(&self, n: u8) -> Option<&Entry> {
        self.entries.get(usize::from(n).checked_sub(1)?)?.as_ref()
    }

    /// The partition UUID of entry `n`.
    pub fn part_uuid(&self, n: u8) -> PartUuid {
        PartUuid {
            disk_id: self.disk_id,
            partition: n,
        }
    }

    /// Whether this is a Pi card of the contract: a FAT32 (LBA) boot
    /// partition [`BOOT`] and Linux slots [`ROOT_A`], [`ROOT_B`]
    /// ([`PERSIST`] may be absent). Says what does not match.
    pub fn check_card(&self) -> Result<(), MbrError> {
        let want = |n: u8, kinds: &[u8], what: &str| -> Result<(), MbrError> {
            match self.entry(n) {
                Some(e) if kinds.contains(&e.kind) => Ok(()),
                Some(e) => Err(MbrError::Entry(
                    n,
                    format!("type {:#04x}, expected {what}", e.kind),
                )),
                None => Err(MbrError::Entry(n, format!("unused, expected {what}"))),
            }
        };
        want(
            BOOT,
            &[types::FAT32_LBA, 0x0b, 0x0e, 0xef],
            "the FAT boot partition",
        )?;
        want(ROOT_A, &[types::LINUX], "root_a (type 0x83)")?;
        want(ROOT_B, &[types::LINUX], "root_b (type 0x83)")?;
        if self.entry(PERSIST).is_some() {
            want(PERSIST, &[types::LINUX], "persist (type 0x83)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Mbr {
        let e = |bootable, kind, first_lba, sectors| {
            Some(Entry {
                bootable,
                kind,
                first_lba,
                sectors,
            })
        };
        Mbr {
            disk_id: 0x1234abcd,
            entries: [
                e(true, types::FAT32_LBA, 2048, 524288),
                e(false, types::LINUX, 526336, 2097152),
                e(false, types::LINUX, 2623488, 2097152),
                e(false, types::LINUX, 4720640, 131072),
            ],
        }
    }

    #[test]
    fn round_trip_and_layout_bytes() {
        let m = card();
        let b = m.encode();
        assert_eq!(&b[440..444], &[0xcd, 0xab, 0x34, 0x12]);
        assert_eq!(b[446], 0x80);
        assert_eq!(b[446 + 4], 0x0c);
        assert_eq!(b[462], 0);
        assert_eq!(&b[510..], &[0x55, 0xAA]);
        assert_eq!(&b[446 + 1..446 + 4], &[32, 33, 0], "CHS of LBA 2048");
        assert_eq!(Mbr::parse(&b, Some(4851712)).unwrap(), m);
        assert!(m.check_card().is_ok());
        assert_eq!(m.part_uuid(ROOT_B).to_string(), "1234abcd-03");
    }

    #[test]
    fn refusals_name_the_entry_and_field() {
        let good = card().encode();
        let mut b = good;
        b[510] = 0;
        assert_eq!(Mbr::parse(&b, None), Err(MbrError::NoSignature));
        let gpt = crate::gpt::protective_mbr(1 << 20);
        assert_eq!(Mbr::parse(&gpt, None), Err(MbrError::Protective));
        let e = Mbr::parse(&good, Some(4800000)).unwrap_err().to_string();
        assert!(
            e.contains("entry 4") && e.contains("beyond the disk"),
            "{e}"
        );
        let mut b = good;
        b[446 + 16] = 0x81;
        let e = Mbr::parse(&b, None).unwrap_err().to_string();
        assert!(e.contains("entry 2: boot flag 0x81"), "{e}");
        let mut b = good;
        b[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&4096u32.to_le_bytes());
        let e = Mbr::parse(&b, None).unwrap_err().to_string();
        assert!(e.contains("entry 2: overlaps entry 1"), "{e}");
        let mut m = card();
        m.entries[2].as_mut().unwrap().kind = 0x07;
        let e = m.check_card().unwrap_err().to_string();
        assert!(e.contains("entry 3: type 0x07, expected root_b"), "{e}");
        m.entries[2] = None;
        let e = m.check_card().unwrap_err().to_string();
        assert!(e.contains("entry 3: unused"), "{e}");
    }

    #[test]
    fn disk_ids_say_who_chose_them() {
        for b in [[0u8; 4], [0xff; 4], [1, 2, 3, 4]] {
            let (d, r) = (derived_disk_id(b), random_disk_id(b));
            assert!(is_derived_disk_id(d), "{d:08x}");
            assert!(!is_derived_disk_id(r), "{r:08x}");
            assert_ne!(d, 0);
            assert_ne!(r, 0);
            assert_eq!(d & 0x0fff_ffff, r & 0x0fff_ffff);
        }
        assert_eq!(derived_disk_id([0x78, 0x56, 0x34, 0xf2]), 0x8234_5678);
        assert_eq!(random_disk_id([0x78, 0x56, 0x34, 0xf2]), 0x4234_5678);
        assert!(!is_derived_disk_id(0x1234abcd));
    }

    #[test]
    fn part_uuids_are_grubs_and_the_kernels_form() {
        let u: PartUuid = "1234ABCD-02".parse().unwrap();
        assert_eq!(
            u,
            PartUuid {
                disk_id: 0x1234abcd,
                partition: 2
            }
        );
        assert_eq!(u.to_string(), "1234abcd-02");
        for bad in [
            "1234abcd",
            "1234abcd-2",
            "1234abcg-02",
            "1234abcd-05",
            "x-01",
        ] {
            assert!(bad.parse::<PartUuid>().is_err(), "{bad}");
        }
        // A GPT partition GUID is not an MBR partition UUID.
        assert!("2b3c4d5e-0011-4a22-8b33-445566778899"
            .parse::<PartUuid>()
            .is_err());
    }
}
