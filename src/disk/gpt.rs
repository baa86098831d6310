//! GUIDs and the on-disk encoding of the protective MBR and the GPT
//! (UEFI 2.10 §5.2-5.3), 512-byte sectors, 128 entries of 128 bytes.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub const SECTOR: u64 = 512;
pub const ENTRY_COUNT: usize = 128;
pub const ENTRY_SIZE: usize = 128;
/// Sectors the partition entry array takes (128 × 128 / 512).
pub const ENTRY_SECTORS: u64 = (ENTRY_COUNT * ENTRY_SIZE) as u64 / SECTOR;
const HEADER_SIZE: usize = 92;
/// Longest partition name in UTF-16 units.
pub const MAX_NAME: usize = 36;

/// A GUID in its usual textual byte order
/// (`C12A7328-F81F-11D2-BA4B-00A0C93EC93B` is `[0xC1, 0x2A, …]`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` at compile time; panics
    /// (a build error in a `const`) on anything else.
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
        let mut out = [0u8; 16];
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
            out[n] = (nibble(b[i]) << 4) | nibble(b[i + 1]);
            n += 1;
            i += 2;
        }
        assert!(n == 16, "a GUID has 16 bytes");
        Guid(out)
    }

    /// A version-4-shaped GUID derived from `seed` and `purpose`, so the same
    /// seed always gives the same GUIDs and different purposes differ.
    pub fn derive(seed: &[u8], purpose: &str) -> Guid {
        let mut h = Sha256::new();
        h.update(b"build-image/disk-guid\0");
        h.update((seed.len() as u64).to_le_bytes());
        h.update(seed);
        h.update(purpose.as_bytes());
        let d = h.finalize();
        let mut g = [0u8; 16];
        g.copy_from_slice(&d[..16]);
        g[6] = (g[6] & 0x0F) | 0x40; // version 4
        g[8] = (g[8] & 0x3F) | 0x80; // RFC 4122 variant
        Guid(g)
    }

    /// The mixed-endian form GPT stores: the first three fields
    /// little-endian, the rest as is.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let mut b = self.0;
        b[..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }

    pub fn from_gpt_bytes(mut b: [u8; 16]) -> Guid {
        b[..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Guid(b)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode_upper(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
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

impl FromStr for Guid {
    type Err = ParseGuidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseGuidError(s.to_string());
        let parts: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let bytes = hex::decode(parts.concat()).map_err(|_| bad())?;
        let mut g = [0u8; 16];
        g.copy_from_slice(&bytes);
        Ok(Guid(g))
    }
}

/// One used slot of the partition entry array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// The partition entry array (all 128 slots).
pub fn entry_array(entries: &[Entry]) -> Vec<u8> {
    let mut out = vec![0u8; ENTRY_COUNT * ENTRY_SIZE];
    for (e, slot) in entries.iter().zip(out.chunks_exact_mut(ENTRY_SIZE)) {
        slot[..16].copy_from_slice(&e.type_guid.to_gpt_bytes());
        slot[16..32].copy_from_slice(&e.guid.to_gpt_bytes());
        slot[32..40].copy_from_slice(&e.first_lba.to_le_bytes());
        slot[40..48].copy_from_slice(&e.last_lba.to_le_bytes());
        slot[48..56].copy_from_slice(&e.attributes.to_le_bytes());
        for (i, u) in e.name.encode_utf16().take(MAX_NAME).enumerate() {
            slot[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    out
}

/// A GPT header sector. `my_lba`/`alternate_lba`/`entries_lba` select the
/// primary or the backup copy.
pub fn header(
    disk_guid: Guid,
    total_sectors: u64,
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&first_usable().to_le_bytes());
    h[48..56].copy_from_slice(&last_usable(total_sectors).to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_gpt_bytes());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRY_COUNT as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h[..HEADER_SIZE]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// First LBA a partition may use: after the MBR, header and entries.
pub fn first_usable() -> u64 {
    2 + ENTRY_SECTORS
}

/// Last LBA a partition may use: before the backup entries and header.
pub fn last_usable(total_sectors: u64) -> u64 {
    total_sectors - 2 - ENTRY_SECTORS
}

/// The protective MBR: one partition of type 0xEE covering the disk.
pub fn protective_mbr(total_sectors: u64) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    let p = &mut m[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    p[4] = 0xEE;
    p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    p[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// CRC-32 (IEEE 802.3, reflected), as the GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guid_text_and_gpt_order() {
        let g: Guid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".parse().unwrap();
        assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            g.to_gpt_bytes(),
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(Guid::from_gpt_bytes(g.to_gpt_bytes()), g);
        assert!("C12A7328-F81F-11D2-BA4B".parse::<Guid>().is_err());
        assert!("X12A7328-F81F-11D2-BA4B-00A0C93EC93B"
            .parse::<Guid>()
            .is_err());
    }

    #[test]
    fn derived_guids_are_stable_and_distinct() {
        let a = Guid::derive(b"seed", "disk");
        assert_eq!(a, Guid::derive(b"seed", "disk"));
        assert_ne!(a, Guid::derive(b"seed", "root_a"));
        assert_ne!(a, Guid::derive(b"seed2", "disk"));
        assert_eq!(a.0[6] >> 4, 4);
    }
}
