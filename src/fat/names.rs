//! FAT names: 8.3 short names, VFAT long-name (LFN) entries and the
//! DOS date/time encoding.
//!
//! A name that is already a valid upper-case 8.3 name (`EFI`, `BOOTX64.EFI`)
//! is stored as a short entry only, the way Windows and Linux store it. Any
//! other name gets LFN entries holding it in UTF-16 plus a generated short
//! name (`GRUB.CFG`, `LONGFI~1.TXT`) that is unique in its directory.

use std::collections::HashSet;

use anyhow::{bail, Result};

/// Bytes of one directory entry.
pub const ENTRY: usize = 32;
/// UTF-16 units one LFN entry holds.
const LFN_CHARS: usize = 13;
/// Longest long name in UTF-16 units.
const MAX_LFN: usize = 255;

/// Characters a short name may hold besides `A-Z`, `0-9` and bytes >= 0x80
/// (which we never emit).
const SHORT_SPECIAL: &[u8] = b"$%'-_@~`!(){}^#&";
/// Characters no FAT name may hold.
const FORBIDDEN: &[char] = &['"', '*', '/', ':', '<', '>', '?', '\\', '|'];

/// How one directory entry is named on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirName {
    /// Blank-padded 8.3 name, no dot.
    pub short: [u8; 11],
    /// The long name in UTF-16, if one is stored.
    pub long: Option<Vec<u16>>,
}

impl DirName {
    /// Number of 32-byte entries this name takes (LFN entries + short entry).
    pub fn entry_count(&self) -> usize {
        1 + self
            .long
            .as_ref()
            .map_or(0, |l| l.len().div_ceil(LFN_CHARS))
    }

    /// Appends the LFN entries (if any) and the short entry for a file or
    /// directory.
    pub fn encode(&self, attr: u8, cluster: u32, size: u32, stamp: DosTime, out: &mut Vec<u8>) {
        if let Some(long) = &self.long {
            encode_lfn(long, checksum(&self.short), out);
        }
        out.extend_from_slice(&short_entry(&self.short, attr, cluster, size, stamp));
    }
}

/// A 32-byte short directory entry.
pub fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, t: DosTime) -> [u8; 32] {
    let mut e = [0u8; ENTRY];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&t.time.to_le_bytes()); // creation time
    e[16..18].copy_from_slice(&t.date.to_le_bytes()); // creation date
    e[18..20].copy_from_slice(&t.date.to_le_bytes()); // access date
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&t.time.to_le_bytes()); // write time
    e[24..26].copy_from_slice(&t.date.to_le_bytes()); // write date
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// The short-name checksum every LFN entry carries.
pub fn checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| {
        (sum >> 1).wrapping_add(sum << 7).wrapping_add(b)
    })
}

fn encode_lfn(long: &[u16], sum: u8, out: &mut Vec<u8>) {
    let n = long.len().div_ceil(LFN_CHARS);
    // Entries go last part first; the first one written carries 0x40.
    for seq in (1..=n).rev() {
        let mut chars = [0xFFFFu16; LFN_CHARS];
        let part = &long[(seq - 1) * LFN_CHARS..long.len().min(seq * LFN_CHARS)];
        chars[..part.len()].copy_from_slice(part);
        if part.len() < LFN_CHARS {
            chars[part.len()] = 0;
        }
        let mut e = [0u8; ENTRY];
        e[0] = seq as u8 | if seq == n { 0x40 } else { 0 };
        e[11] = 0x0F;
        e[13] = sum;
        let slots = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (c, at) in chars.iter().zip(slots) {
            e[at..at + 2].copy_from_slice(&c.to_le_bytes());
        }
        out.extend_from_slice(&e);
    }
}

/// Checks `name` can be a FAT long name and returns it as a string.
fn valid_long(name: &[u8]) -> Result<&str> {
    let Ok(s) = std::str::from_utf8(name) else {
        bail!("the name is not UTF-8");
    };
    if let Some(c) = s
        .chars()
        .find(|&c| (c as u32) < 0x20 || FORBIDDEN.contains(&c))
    {
        bail!("FAT names cannot hold {c:?}");
    }
    if s.ends_with('.') || s.ends_with(' ') {
        bail!("FAT names cannot end with a dot or a space");
    }
    if s.encode_utf16().count() > MAX_LFN {
        bail!("the name is longer than FAT's {MAX_LFN} characters");
    }
    Ok(s)
}

/// `name` as an 8.3 short name if it already is one exactly (upper case,
/// allowed characters, base 1-8 and extension 0-3 characters).
fn exact_short(name: &str) -> Option<[u8; 11]> {
    let ok = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_SPECIAL.contains(&b))
    };
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    if base.is_empty()
        || base.len() > 8
        || ext.len() > 3
        || ext.contains('.')
        || !ok(base)
        || !ok(ext)
    {
        return None;
    }
    Some(pad83(base.as_bytes(), ext.as_bytes()))
}

fn pad83(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base);
    s[8..8 + ext.len()].copy_from_slice(ext);
    s
}

/// Upper-cases and filters one part of a long name for a short name;
/// returns whether anything was lost.
fn short_part(part: &str) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut lossy = false;
    for c in part.chars() {
        match c {
            ' ' | '.' => lossy = true,
            c if c.is_ascii_alphanumeric()
                || (c.is_ascii() && SHORT_SPECIAL.contains(&(c as u8))) =>
            {
                out.push(c.to_ascii_uppercase() as u8)
            }
            _ => {
                out.push(b'_');
                lossy = true;
            }
        }
    }
    (out, lossy)
}

/// Names the children of one directory. `names` must be in the order the
/// entries are written; returns one [`DirName`] per name. Fails on names
/// FAT cannot hold and on names that differ only in case.
pub fn name_entries(names: &[&[u8]]) -> Result<Vec<Result<DirName>>> {
    let mut folded = HashSet::new();
    let mut used: HashSet<[u8; 11]> = HashSet::new();
    let mut out: Vec<Option<Result<DirName>>> = (0..names.len()).map(|_| None).collect();
    let mut pending = Vec::new();
    // Exact short names first, so generated ones never take them.
    for (i, raw) in names.iter().enumerate() {
        let s = match valid_long(raw) {
            Ok(s) => s,
            Err(e) => {
                out[i] = Some(Err(e));
                continue;
            }
        };
        if !folded.insert(s.to_lowercase()) {
            out[i] = Some(Err(anyhow::anyhow!(
                "another name in the same directory differs only in case (FAT ignores case)"
            )));
            continue;
        }
        match exact_short(s) {
            Some(short) => {
                used.insert(short);
                out[i] = Some(Ok(DirName { short, long: None }));
            }
            None => pending.push((i, s)),
        }
    }
    for (i, s) in pending {
        let (base_src, ext_src) = match s.rfind('.') {
            Some(dot) if dot > 0 => (&s[..dot], &s[dot + 1..]),
            _ => (s, ""),
        };
        let (mut base, lossy_b) = short_part(base_src.trim_start_matches('.'));
        let (mut ext, lossy_e) = short_part(ext_src);
        let mut lossy = lossy_b
            || lossy_e
            || base_src.starts_with('.')
            || base.len() > 8
            || ext.len() > 3
            || base.is_empty();
        if base.is_empty() {
            base = b"_".to_vec();
        }
        base.truncate(8);
        ext.truncate(3);
        let mut short = pad83(&base, &ext);
        if short[0] == 0xE5 {
            short[0] = 0x05;
        }
        if !lossy && used.contains(&short) {
            lossy = true;
        }
        if lossy {
            let mut n = 1u32;
            loop {
                let tail = format!("~{n}");
                let keep = base.len().min(8 - tail.len());
                let mut b = base[..keep].to_vec();
                b.extend_from_slice(tail.as_bytes());
                short = pad83(&b, &ext);
                if !used.contains(&short) {
                    break;
                }
                n += 1;
                if n > 999_999 {
                    bail!("no free short name for {s:?}");
                }
            }
        }
        used.insert(short);
        let long = s.encode_utf16().collect();
        out[i] = Some(Ok(DirName {
            short,
            long: Some(long),
        }));
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every name handled"))
        .collect())
}

/// A DOS date and time (local time is taken to be UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DosTime {
    pub date: u16,
    pub time: u16,
}

impl DosTime {
    /// Converts seconds since the epoch, clamped to FAT's 1980-2107 range.
    pub fn from_unix(secs: i64) -> DosTime {
        const MIN: i64 = 315_532_800; // 1980-01-01
        const MAX: i64 = 4_354_819_198; // 2107-12-31 23:59:58
        let (y, m, d, h, mi, s) = crate::time::civil(secs.clamp(MIN, MAX));
        DosTime {
            date: (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16,
            time: ((h as u16) << 11) | ((mi as u16) << 5) | (s / 2) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(s: &str) -> String {
        let n = name_entries(&[s.as_bytes()]).unwrap().remove(0).unwrap();
        String::from_utf8(n.short.to_vec()).unwrap()
    }

    #[test]
    fn short_names() {
        assert_eq!(short("EFI"), "EFI        ");
        assert_eq!(short("BOOTX64.EFI"), "BOOTX64 EFI");
        assert_eq!(short("grub.cfg"), "GRUB    CFG");
        assert_eq!(short("a long name.text"), "ALONGN~1TEX");
        assert_eq!(short(".hidden"), "HIDDEN~1   ");
        let names: Vec<&[u8]> = vec![b"FOO", b"foo.", b"Foo bar", b"foo bar2"];
        let r = name_entries(&names).unwrap();
        assert!(r[1].is_err());
        let s: Vec<_> = r
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|n| n.short)
            .collect();
        assert_eq!(&s[1], b"FOOBAR~1   ");
        assert_eq!(&s[2], b"FOOBAR~2   ");
    }

    #[test]
    fn case_clash_rejected() {
        let names: Vec<&[u8]> = vec![b"abc", b"ABC"];
        let r = name_entries(&names).unwrap();
        assert!(r[0].is_ok() && r[1].is_err());
    }

    #[test]
    fn lfn_entries_and_checksum() {
        let n = name_entries(&[b"grub.cfg".as_slice()])
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(n.entry_count(), 2);
        let mut out = Vec::new();
        n.encode(0x20, 5, 10, DosTime::from_unix(0), &mut out);
        assert_eq!(out.len(), 64);
        assert_eq!(out[0], 0x41);
        assert_eq!(out[11], 0x0F);
        assert_eq!(out[13], checksum(&n.short));
        assert_eq!(&out[1..3], &[b'g', 0]);
        // Terminator after 8 characters, then 0xFFFF padding.
        assert_eq!(&out[28..32], &[0xFF; 4]);
    }

    #[test]
    fn dos_time() {
        let t = DosTime::from_unix(1_700_000_040); // 2023-11-14 22:14:00
        assert_eq!(t.date, ((2023 - 1980) << 9) | (11 << 5) | 14);
        assert_eq!(t.time, (22 << 11) | (14 << 5));
        assert_eq!(DosTime::from_unix(0).date, (1 << 5) | 1);
    }
}
