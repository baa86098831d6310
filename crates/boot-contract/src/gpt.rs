//! The GUID partition table (UEFI 2.10 §5.3), one implementation for
//! both sides: build-image makes new tables with [`Gpt::new`] (the A/B disk
//! image); on the device, os-init reads and rewrites the existing one to add
//! or grow the `persist` partition and to move the backup GPT to the end of
//! a disk that is larger than the image written to it.
//!
//! The table is untrusted input: every field is checked and every failure is
//! a [`GptError`] naming the copy, the field and what was expected. Only the
//! fields a change needs are rewritten; everything else (reserved header
//! bytes, entry bytes beyond 128, the other entries) is kept byte for byte.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// `EFI PART`
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Size of the header fields the specification defines.
pub const HEADER_SIZE: usize = 92;
/// Size of the entry fields the specification defines.
pub const MIN_ENTRY_SIZE: usize = 128;
/// Longest partition name in UTF-16 units.
pub const MAX_NAME: usize = 36;
/// Refuse entry arrays larger than this (the usual one is 16 KiB).
const MAX_ENTRY_ARRAY: u64 = 1 << 20;

/// A GUID as its 16 bytes on disk (the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

/// Partition type GUIDs.
pub mod types {
    use super::Guid;
    /// Linux filesystem data, `0FC63DAF-8483-4772-8E79-3D69D8477DE4`.
    pub const LINUX_FILESYSTEM: Guid = Guid([
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D,
        0xE4,
    ]);
}

impl Guid {
    pub const NIL: Guid = Guid([0; 16]);

    /// The GUID whose text form is `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`,
    /// at compile time (a bad string is a build error in a `const`).
    pub const fn parse_const(s: &str) -> Guid {
        const fn nibble(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => panic!("bad hex digit in GUID"),
            }
        }
        let b = s.as_bytes();
        assert!(b.len() == 36, "a GUID has 36 characters");
        let mut text = [0u8; 16];
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            if b[i] == b'-' {
                assert!(
                    i == 8 || i == 13 || i == 18 || i == 23,
                    "misplaced '-' in GUID"
                );
                i += 1;
                continue;
            }
            text[n] = (nibble(b[i]) << 4) | nibble(b[i + 1]);
            n += 1;
            i += 2;
        }
        assert!(n == 16, "a GUID has 16 bytes");
        Guid::from_text_bytes(text)
    }

    /// From the bytes in the order the text form shows them to the order
    /// on disk (the first three fields little-endian).
    pub const fn from_text_bytes(t: [u8; 16]) -> Guid {
        Guid([
            t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12], t[13],
            t[14], t[15],
        ])
    }

    /// The bytes in the order the text form shows them.
    pub const fn text_bytes(&self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    /// A random (version 4, RFC 4122 variant) GUID from 16 random bytes.
    pub fn random_v4(mut bytes: [u8; 16]) -> Guid {
        // On disk the version nibble sits in byte 7 (field 3 is little-endian).
        bytes[7] = (bytes[7] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Guid(bytes)
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The version field (RFC 9562): 4 for random GUIDs, 8 for the ones a
    /// build derives from its inputs ([`Guid::derived`]).
    pub fn version(&self) -> u8 {
        self.0[7] >> 4
    }

    /// A GUID derived from 16 bytes of a hash of a build's inputs, marked
    /// version 8 (RFC 9562's custom version), so a disk that still carries
    /// the identity of the image it was written from is told from one that
    /// got its own random (version 4) GUIDs on the device.
    pub fn derived(mut bytes: [u8; 16]) -> Guid {
        bytes[7] = (bytes[7] & 0x0F) | 0x80;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Guid(bytes)
    }

    /// Whether this GUID was derived by a build ([`Guid::derived`]).
    pub fn is_derived(&self) -> bool {
        self.version() == 8
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02X}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a GUID string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad GUID {0:?}: expected XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX")]
pub struct ParseGuidError(pub String);

impl std::str::FromStr for Guid {
    type Err = ParseGuidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseGuidError(s.to_string());
        let parts: Vec<&str> = s.split('-').collect();
        if parts.iter().map(|p| p.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex = parts.concat();
        let mut text = [0u8; 16];
        for (i, b) in text.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Guid::from_text_bytes(text))
    }
}

/// Why a table was refused or a change is impossible.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("no GPT header at LBA {lba}: expected the signature \"EFI PART\"")]
    NoSignature { lba: u64 },
    #[error("GPT header at LBA {lba}: CRC32 is {stored:#010x}, expected {computed:#010x}")]
    HeaderCrc {
        lba: u64,
        stored: u32,
        computed: u32,
    },
    #[error("GPT entries at LBA {lba}: CRC32 is {stored:#010x}, expected {computed:#010x}")]
    EntriesCrc {
        lba: u64,
        stored: u32,
        computed: u32,
    },
    #[error("GPT header at LBA {lba}: {field} is {value}, expected {expected}")]
    BadHeader {
        lba: u64,
        field: &'static str,
        value: u64,
        expected: String,
    },
    #[error("GPT entry {index} ({name:?}): {problem}")]
    BadEntry {
        index: usize,
        name: String,
        problem: String,
    },
    #[error("GPT: {0}")]
    Change(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> GptError {
    let what = what.into();
    move |source| GptError::Io { what, source }
}

/// One partition entry (the 128 bytes the specification defines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Entry {
    pub fn is_empty(&self) -> bool {
        self.type_guid.is_nil()
    }

    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }

    fn decode(b: &[u8]) -> Entry {
        let guid = |r: std::ops::Range<usize>| {
            let mut g = [0u8; 16];
            g.copy_from_slice(&b[r]);
            Guid(g)
        };
        let units: Vec<u16> = b[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Entry {
            type_guid: guid(0..16),
            guid: guid(16..32),
            first_lba: le64(b, 32),
            last_lba: le64(b, 40),
            attributes: le64(b, 48),
            name: String::from_utf16_lossy(&units),
        }
    }

    fn encode(&self, b: &mut [u8]) -> Result<(), GptError> {
        let units: Vec<u16> = self.name.encode_utf16().collect();
        if units.len() > MAX_NAME {
            return Err(GptError::Change(format!(
                "partition name {:?} is longer than {MAX_NAME} UTF-16 units",
                self.name
            )));
        }
        b[..128].fill(0);
        b[0..16].copy_from_slice(&self.type_guid.0);
        b[16..32].copy_from_slice(&self.guid.0);
        b[32..40].copy_from_slice(&self.first_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.last_lba.to_le_bytes());
        b[48..56].copy_from_slice(&self.attributes.to_le_bytes());
        for (i, u) in units.iter().enumerate() {
            b[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        Ok(())
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A GPT read from a disk: the primary header and the entry array, checked.
#[derive(Clone, Debug)]
pub struct Gpt {
    sector_size: u64,
    /// The primary header, `header_size` bytes as read (CRC fields are
    /// recomputed on write).
    header: Vec<u8>,
    entries: Vec<u8>,
    entry_size: usize,
}

/// Entries in a table [`Gpt::new`] makes (what sgdisk and most tools use).
pub const NEW_ENTRY_COUNT: usize = 128;

impl Gpt {
    /// A new table for a disk of `disk_sectors` sectors of `sector_size`
    /// bytes: the primary header at LBA 1 with [`NEW_ENTRY_COUNT`] entries of
    /// 128 bytes from LBA 2, the backup entries and header at the disk's
    /// end, and `entries` in the first slots, checked (inside the usable
    /// LBAs, no overlaps, names that fit).
    pub fn new(
        sector_size: u64,
        disk_sectors: u64,
        disk_guid: Guid,
        entries: &[Entry],
    ) -> Result<Gpt, GptError> {
        if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
            return Err(GptError::Change(format!(
                "sector size {sector_size}: expected 512, 1024, 2048 or 4096"
            )));
        }
        if entries.len() > NEW_ENTRY_COUNT {
            return Err(GptError::Change(format!(
                "{} partitions: a GPT made here holds at most {NEW_ENTRY_COUNT}",
                entries.len()
            )));
        }
        let array_bytes = (NEW_ENTRY_COUNT * MIN_ENTRY_SIZE) as u64;
        let array_sectors = array_bytes.div_ceil(sector_size);
        let first_usable = 2 + array_sectors;
        let Some(last_usable) = disk_sectors
            .checked_sub(2 + array_sectors)
            .filter(|l| *l >= first_usable)
        else {
            return Err(GptError::Change(format!(
                "a disk of {disk_sectors} sectors of {sector_size} bytes cannot hold a GPT"
            )));
        };
        let mut header = vec![0u8; HEADER_SIZE];
        header[..8].copy_from_slice(SIGNATURE);
        header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        header[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        header[24..32].copy_from_slice(&1u64.to_le_bytes());
        header[32..40].copy_from_slice(&(disk_sectors - 1).to_le_bytes());
        header[40..48].copy_from_slice(&first_usable.to_le_bytes());
        header[48..56].copy_from_slice(&last_usable.to_le_bytes());
        header[56..72].copy_from_slice(&disk_guid.0);
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&(NEW_ENTRY_COUNT as u32).to_le_bytes());
        header[84..88].copy_from_slice(&(MIN_ENTRY_SIZE as u32).to_le_bytes());
        let mut gpt = Gpt {
            sector_size,
            header,
            entries: vec![0u8; array_bytes as usize],
            entry_size: MIN_ENTRY_SIZE,
        };
        for e in entries {
            gpt.add(e)?;
        }
        Ok(gpt)
    }

    /// Reads and checks the primary GPT of a disk of `disk_sectors` sectors
    /// of `sector_size` bytes: signature, header CRC, every header field
    /// against the disk's size, the entry array CRC and every used entry.
    pub fn read<D: Read + Seek>(
        disk: &mut D,
        sector_size: u64,
        disk_sectors: u64,
    ) -> Result<Gpt, GptError> {
        Gpt::read_copy(disk, sector_size, disk_sectors, true)
    }

    /// Reads and checks the backup GPT in the last sector of the disk, as
    /// [`Gpt::read`] does the primary. The result describes the table as a
    /// primary at LBA 1 with its entries at LBA 2 (where build-image, sgdisk
    /// and most tools put them), so writing it restores a damaged primary.
    pub fn read_backup<D: Read + Seek>(
        disk: &mut D,
        sector_size: u64,
        disk_sectors: u64,
    ) -> Result<Gpt, GptError> {
        let mut gpt = Gpt::read_copy(disk, sector_size, disk_sectors, false)?;
        let lba = disk_sectors - 1;
        if 2 + gpt.array_sectors() > gpt.first_usable() {
            return Err(GptError::BadHeader {
                lba,
                field: "first usable LBA",
                value: gpt.first_usable(),
                expected: format!(
                    "room for the primary entries ({} sectors from LBA 2) before it",
                    gpt.array_sectors()
                ),
            });
        }
        gpt.header[24..32].copy_from_slice(&1u64.to_le_bytes());
        gpt.header[32..40].copy_from_slice(&lba.to_le_bytes());
        gpt.header[72..80].copy_from_slice(&2u64.to_le_bytes());
        Ok(gpt)
    }

    fn read_copy<D: Read + Seek>(
        disk: &mut D,
        sector_size: u64,
        disk_sectors: u64,
        primary: bool,
    ) -> Result<Gpt, GptError> {
        if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
            return Err(GptError::Change(format!(
                "sector size {sector_size}: expected 512, 1024, 2048 or 4096"
            )));
        }
        if disk_sectors < 3 {
            return Err(GptError::Change(format!(
                "a disk of {disk_sectors} sectors cannot hold a GPT"
            )));
        }
        let (lba, copy) = if primary {
            (1, "primary")
        } else {
            (disk_sectors - 1, "backup")
        };
        let mut sector = vec![0u8; sector_size as usize];
        read_at(
            disk,
            lba * sector_size,
            &mut sector,
            &format!("reading the {copy} GPT header at LBA {lba}"),
        )?;
        if &sector[..8] != SIGNATURE {
            return Err(GptError::NoSignature { lba });
        }
        let bad = |field: &'static str, value: u64, expected: String| GptError::BadHeader {
            lba,
            field,
            value,
            expected,
        };
        let revision = le32(&sector, 8);
        if revision >> 16 != 1 {
            return Err(bad("revision", revision.into(), "1.x (0x0001xxxx)".into()));
        }
        let header_size = le32(&sector, 12) as usize;
        if header_size < HEADER_SIZE || header_size as u64 > sector_size {
            return Err(bad(
                "header size",
                header_size as u64,
                format!("{HEADER_SIZE} to {sector_size}"),
            ));
        }
        let mut header = sector[..header_size].to_vec();
        let stored = le32(&header, 16);
        header[16..20].fill(0);
        let computed = crc32(&header);
        if stored != computed {
            return Err(GptError::HeaderCrc {
                lba,
                stored,
                computed,
            });
        }
        let my_lba = le64(&header, 24);
        if my_lba != lba {
            return Err(bad("my LBA", my_lba, lba.to_string()));
        }
        let alternate = le64(&header, 32);
        if primary && (alternate <= 1 || alternate >= disk_sectors) {
            return Err(bad(
                "alternate LBA",
                alternate,
                format!(
                    "2 to {} (the disk has {disk_sectors} sectors)",
                    disk_sectors - 1
                ),
            ));
        }
        if !primary && alternate != 1 {
            return Err(bad("alternate LBA", alternate, "1".into()));
        }
        let entry_count = u64::from(le32(&header, 80));
        let entry_size = u64::from(le32(&header, 84));
        if entry_size < MIN_ENTRY_SIZE as u64 || !entry_size.is_power_of_two() {
            return Err(bad("entry size", entry_size, "128 × 2^n bytes".into()));
        }
        let array_bytes = entry_count * entry_size;
        if entry_count == 0 || array_bytes > MAX_ENTRY_ARRAY {
            return Err(bad(
                "entry count",
                entry_count,
                format!(
                    "1 to {} entries of {entry_size} bytes",
                    MAX_ENTRY_ARRAY / entry_size
                ),
            ));
        }
        let array_sectors = array_bytes.div_ceil(sector_size);
        let entries_lba = le64(&header, 72);
        let first_usable = le64(&header, 40);
        let last_usable = le64(&header, 48);
        if last_usable < first_usable || last_usable >= disk_sectors {
            return Err(bad(
                "last usable LBA",
                last_usable,
                format!(
                    "{first_usable} (the first usable LBA) to {}",
                    disk_sectors - 1
                ),
            ));
        }
        if primary {
            if entries_lba < 2 || entries_lba + array_sectors > first_usable {
                return Err(bad(
                    "partition entries LBA",
                    entries_lba,
                    format!("2 or more, with {array_sectors} sectors before the first usable LBA {first_usable}"),
                ));
            }
            // The backup (entries + header) must fit between the last
            // usable LBA and the alternate header, wherever that is.
            if alternate > last_usable && alternate - last_usable - 1 < array_sectors {
                return Err(bad(
                    "last usable LBA",
                    last_usable,
                    format!(
                        "at most {}, leaving {array_sectors} sectors for the backup entries",
                        alternate - 1 - array_sectors
                    ),
                ));
            }
        } else if entries_lba <= last_usable || entries_lba + array_sectors > lba {
            return Err(bad(
                "partition entries LBA",
                entries_lba,
                format!(
                    "after the last usable LBA {last_usable}, with {array_sectors} sectors before LBA {lba}"
                ),
            ));
        }
        let mut entries = vec![0u8; array_bytes as usize];
        disk.seek(SeekFrom::Start(entries_lba * sector_size))
            .and_then(|_| disk.read_exact(&mut entries))
            .map_err(io_err(format!(
                "reading the {copy} GPT partition entries at LBA {entries_lba}"
            )))?;
        let stored = le32(&header, 88);
        let computed = crc32(&entries);
        if stored != computed {
            return Err(GptError::EntriesCrc {
                lba: entries_lba,
                stored,
                computed,
            });
        }
        let gpt = Gpt {
            sector_size,
            header,
            entries,
            entry_size: entry_size as usize,
        };
        gpt.check_entries()?;
        Ok(gpt)
    }

    fn check_entries(&self) -> Result<(), GptError> {
        let used: Vec<(usize, Entry)> = self.partitions().collect();
        for (i, e) in &used {
            let problem = if e.first_lba > e.last_lba {
                Some(format!(
                    "first LBA {} is after last LBA {}",
                    e.first_lba, e.last_lba
                ))
            } else if e.first_lba < self.first_usable() || e.last_lba > self.last_usable() {
                Some(format!(
                    "LBAs {}..={} are outside the usable {}..={}",
                    e.first_lba,
                    e.last_lba,
                    self.first_usable(),
                    self.last_usable()
                ))
            } else {
                used.iter()
                    .find(|(j, o)| j != i && o.first_lba <= e.last_lba && e.first_lba <= o.last_lba)
                    .map(|(j, o)| format!("overlaps entry {j} ({:?})", o.name))
            };
            if let Some(problem) = problem {
                return Err(GptError::BadEntry {
                    index: *i,
                    name: e.name.clone(),
                    problem,
                });
            }
        }
        Ok(())
    }

    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    pub fn disk_guid(&self) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&self.header[56..72]);
        Guid(g)
    }

    pub fn alternate_lba(&self) -> u64 {
        le64(&self.header, 32)
    }

    pub fn first_usable(&self) -> u64 {
        le64(&self.header, 40)
    }

    pub fn last_usable(&self) -> u64 {
        le64(&self.header, 48)
    }

    fn entries_lba(&self) -> u64 {
        le64(&self.header, 72)
    }

    fn array_sectors(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(self.sector_size)
    }

    /// Every slot of the entry array, used or not.
    pub fn entry(&self, index: usize) -> Option<Entry> {
        let at = index.checked_mul(self.entry_size)?;
        let b = self.entries.get(at..at + self.entry_size)?;
        Some(Entry::decode(b))
    }

    /// The used entries with their index (partition number − 1).
    pub fn partitions(&self) -> impl Iterator<Item = (usize, Entry)> + '_ {
        self.entries
            .chunks_exact(self.entry_size)
            .map(Entry::decode)
            .enumerate()
            .filter(|(_, e)| !e.is_empty())
    }

    /// The used entry named `name`, with its index.
    pub fn find(&self, name: &str) -> Option<(usize, Entry)> {
        self.partitions().find(|(_, e)| e.name == name)
    }

    /// The last usable LBA if the backup GPT sat at the end of a disk of
    /// `disk_sectors` sectors.
    pub fn last_usable_at_end(&self, disk_sectors: u64) -> Option<u64> {
        disk_sectors.checked_sub(2 + self.array_sectors())
    }

    /// Whether the backup GPT is not at the end of a disk of `disk_sectors`
    /// sectors (the image was written to a larger disk).
    pub fn backup_misplaced(&self, disk_sectors: u64) -> bool {
        self.alternate_lba() != disk_sectors - 1
            || Some(self.last_usable()) != self.last_usable_at_end(disk_sectors)
    }

    /// Puts the backup GPT at the end of a disk of `disk_sectors` sectors
    /// and makes everything before it usable. Refuses to cut off a
    /// partition (a smaller disk).
    pub fn relocate_backup(&mut self, disk_sectors: u64) -> Result<(), GptError> {
        let last_usable = self
            .last_usable_at_end(disk_sectors)
            .filter(|&l| l >= self.first_usable())
            .ok_or_else(|| {
                GptError::Change(format!(
                    "a disk of {disk_sectors} sectors is too small for a GPT"
                ))
            })?;
        if let Some((i, e)) = self.partitions().find(|(_, e)| e.last_lba > last_usable) {
            return Err(GptError::Change(format!(
                "the disk has {disk_sectors} sectors, but entry {i} ({:?}) ends at LBA {}: \
                 expected a disk at least as large as the table says",
                e.name, e.last_lba
            )));
        }
        self.header[32..40].copy_from_slice(&(disk_sectors - 1).to_le_bytes());
        self.header[48..56].copy_from_slice(&last_usable.to_le_bytes());
        Ok(())
    }

    /// The first LBA after every partition, rounded up to `align` sectors.
    pub fn first_free_aligned(&self, align: u64) -> u64 {
        let end = self
            .partitions()
            .map(|(_, e)| e.last_lba + 1)
            .max()
            .unwrap_or(self.first_usable())
            .max(self.first_usable());
        end.div_ceil(align.max(1)) * align.max(1)
    }

    /// Adds `entry` in the first free slot and returns its index. It must
    /// lie within the usable LBAs and overlap no other partition; its name
    /// must be new.
    pub fn add(&mut self, entry: &Entry) -> Result<usize, GptError> {
        if entry.is_empty() {
            return Err(GptError::Change("a new entry needs a type GUID".into()));
        }
        if self.find(&entry.name).is_some() {
            return Err(GptError::Change(format!(
                "a partition named {:?} exists already",
                entry.name
            )));
        }
        let index = (0..self.entries.len() / self.entry_size)
            .find(|&i| self.entry(i).is_some_and(|e| e.is_empty()))
            .ok_or_else(|| GptError::Change("every partition entry is in use".into()))?;
        self.check_placement(index, entry.first_lba, entry.last_lba)?;
        let at = index * self.entry_size;
        entry.encode(&mut self.entries[at..at + self.entry_size])?;
        Ok(index)
    }

    /// Gives the table its own identity: a new disk GUID and a new GUID for
    /// every used entry, each from `new_guid` (random ones on a device);
    /// names, types, places and attributes stay. Every disk written from
    /// one image carries the image's GUIDs until this is done to it.
    pub fn personalize(&mut self, mut new_guid: impl FnMut() -> Guid) -> Result<(), GptError> {
        let disk = new_guid();
        if disk.is_nil() {
            return Err(GptError::Change("a disk GUID must not be nil".into()));
        }
        self.header[56..72].copy_from_slice(&disk.0);
        let used: Vec<usize> = self.partitions().map(|(i, _)| i).collect();
        for index in used {
            let guid = new_guid();
            if guid.is_nil() {
                return Err(GptError::Change("a partition GUID must not be nil".into()));
            }
            let at = index * self.entry_size;
            self.entries[at + 16..at + 32].copy_from_slice(&guid.0);
        }
        Ok(())
    }

    /// Moves the end of the used entry `index` to `last_lba` (inclusive).
    pub fn set_last_lba(&mut self, index: usize, last_lba: u64) -> Result<(), GptError> {
        let mut e = self
            .entry(index)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| GptError::Change(format!("entry {index} is not in use")))?;
        self.check_placement(index, e.first_lba, last_lba)?;
        e.last_lba = last_lba;
        let at = index * self.entry_size;
        e.encode(&mut self.entries[at..at + self.entry_size])
    }

    fn check_placement(&self, index: usize, first: u64, last: u64) -> Result<(), GptError> {
        if first > last || first < self.first_usable() || last > self.last_usable() {
            return Err(GptError::Change(format!(
                "LBAs {first}..={last} for entry {index} are outside the usable {}..={}",
                self.first_usable(),
                self.last_usable()
            )));
        }
        if let Some((j, o)) = self
            .partitions()
            .find(|(j, o)| *j != index && o.first_lba <= last && first <= o.last_lba)
        {
            return Err(GptError::Change(format!(
                "LBAs {first}..={last} for entry {index} overlap entry {j} ({:?}, {}..={})",
                o.name, o.first_lba, o.last_lba
            )));
        }
        Ok(())
    }

    fn header_bytes(&self, primary: bool) -> Vec<u8> {
        let mut h = self.header.clone();
        let alternate = self.alternate_lba();
        let (my, other, entries) = if primary {
            (1, alternate, self.entries_lba())
        } else {
            (alternate, 1, alternate - self.array_sectors())
        };
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[72..80].copy_from_slice(&entries.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&self.entries).to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h.resize(self.sector_size as usize, 0);
        h
    }

    /// The writes that store this table, as (byte offset, bytes), in the
    /// order to do them: the backup entries, the backup header, then the
    /// primary entries and the primary header. The primary header, which
    /// firmware and the kernel read first, changes last: until it does they
    /// see the old table; if the primary write is torn, the backup at the
    /// disk's end already holds the new table for readers that fall back to
    /// it (UEFI firmware, [`Gpt::read_backup`], Linux with `gpt` on its
    /// command line).
    pub fn writes(&self) -> [(u64, Vec<u8>); 4] {
        let ss = self.sector_size;
        let alternate = self.alternate_lba();
        [
            (
                (alternate - self.array_sectors()) * ss,
                self.entries.clone(),
            ),
            (alternate * ss, self.header_bytes(false)),
            (self.entries_lba() * ss, self.entries.clone()),
            (ss, self.header_bytes(true)),
        ]
    }

    /// Writes backup then primary (see [`Gpt::writes`]), calling `sync`
    /// after each copy so the backup is durable before the primary changes.
    pub fn write<D: Write + Seek>(
        &self,
        disk: &mut D,
        mut sync: impl FnMut(&mut D) -> io::Result<()>,
    ) -> Result<(), GptError> {
        let [be, bh, pe, ph] = self.writes();
        for (copy, parts) in [("backup", [be, bh]), ("primary", [pe, ph])] {
            for (at, bytes) in parts {
                disk.seek(SeekFrom::Start(at))
                    .and_then(|_| disk.write_all(&bytes))
                    .map_err(io_err(format!("writing the {copy} GPT at byte {at}")))?;
            }
            sync(disk).map_err(io_err(format!("syncing the {copy} GPT")))?;
        }
        Ok(())
    }
}

fn read_at<D: Read + Seek>(
    disk: &mut D,
    at: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<(), GptError> {
    disk.seek(SeekFrom::Start(at))
        .and_then(|_| disk.read_exact(buf))
        .map_err(io_err(what))
}

/// A protective MBR for a new GPT disk of `disk_sectors` sectors: one
/// partition of type 0xEE from LBA 1 covering the disk (capped at
/// 2^32 − 1 sectors), no boot code.
pub fn protective_mbr(disk_sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let p = &mut m[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    p[4] = 0xEE;
    p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(disk_sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    p[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// Makes a protective MBR (one 0xEE partition from LBA 1) cover a disk of
/// `disk_sectors` sectors, as the specification asks (capped at 2^32 − 1).
/// Returns whether `mbr` changed; any other MBR is left alone.
pub fn fit_protective_mbr(mbr: &mut [u8; 512], disk_sectors: u64) -> bool {
    if mbr[510..512] != [0x55, 0xAA] {
        return false;
    }
    let slots: Vec<usize> = (0..4).map(|i| 446 + 16 * i).collect();
    let protective: Vec<usize> = slots
        .iter()
        .copied()
        .filter(|&s| mbr[s + 4] == 0xEE)
        .collect();
    let others = slots.iter().any(|&s| mbr[s + 4] != 0 && mbr[s + 4] != 0xEE);
    let [p] = protective[..] else { return false };
    if others || le32(mbr, p + 8) != 1 {
        return false;
    }
    let size = u32::try_from(disk_sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    if le32(mbr, p + 12) == size {
        return false;
    }
    mbr[p + 12..p + 16].copy_from_slice(&size.to_le_bytes());
    mbr[p + 5..p + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    true
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE 802.3, reflected), as the GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests;
