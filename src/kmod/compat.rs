//! depmod's and libkmod's rules, reproduced where the index files depend
//! on them: module names, `.modinfo` fields, which symbols a module exports
//! and needs, alias normalisation, device numbers, the iteration order of
//! libkmod's hash table, and the builtin files.

use anyhow::{Context, Result};

use super::elf;
use super::index::Index;

/// depmod's module name for a file name.
pub(super) fn modname(file_name: &str) -> String {
    let stem = file_name.split('.').next().unwrap_or("");
    stem.replace('-', "_")
}

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `.modinfo` strings (NUL-separated, empty ones skipped) split at `=`;
/// a string without `=` is a key with an empty value.
pub(super) fn modinfo_pairs(section: &[u8]) -> Vec<(String, String)> {
    section
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| match s.iter().position(|&b| b == b'=') {
            Some(eq) => (lossy(&s[..eq]), lossy(&s[eq + 1..])),
            None => (lossy(s), String::new()),
        })
        .collect()
}

const EM_SPARC: u16 = 2;
const EM_SPARCV9: u16 = 43;
const STT_REGISTER: u8 = 13;

/// Exported symbols (`__crc_NAME` entries of `.symtab`, else the names in
/// `__ksymtab_strings`) and needed ones (undefined `.symtab` entries, then
/// `__versions` names no undefined symbol matched), in file order.
pub(super) fn symbols(t: &elf::SymbolTables) -> (Vec<String>, Vec<String>) {
    let mut exports: Vec<String> = t
        .symtab
        .iter()
        .flatten()
        .filter_map(|s| s.name.strip_prefix(b"__crc_"))
        .map(lossy)
        .collect();
    if exports.is_empty() {
        exports = t
            .ksymtab_strings
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(lossy)
            .collect();
    }
    let mut imports = Vec::new();
    if let Some(symtab) = &t.symtab {
        let mut visited = vec![false; t.versions.len()];
        let sparc = matches!(t.machine, EM_SPARC | EM_SPARCV9);
        for s in symtab {
            if s.shndx != 0 || (sparc && s.info & 0xf == STT_REGISTER) || s.name.is_empty() {
                continue;
            }
            if let Some(i) = t.versions.iter().position(|v| *v == s.name) {
                visited[i] = true;
            }
            imports.push(lossy(s.name));
        }
        for (v, seen) in t.versions.iter().zip(visited) {
            if !seen {
                imports.push(lossy(v));
            }
        }
    }
    (exports, imports)
}

/// Paul Hsieh's SuperFastHash as libkmod's hash table computes it on an
/// x86-64 host (little-endian, signed `char`; for ASCII keys the sign does
/// not matter).
pub(super) fn kmod_hash(key: &[u8]) -> u32 {
    let u16le = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) as u32;
    let schar = |b: u8| b as i8 as i32 as u32;
    let mut hash = key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        hash = hash.wrapping_add(u16le(&c[0..2]));
        let tmp = (u16le(&c[2..4]) << 11) ^ hash;
        hash = (hash << 16) ^ tmp;
        hash = hash.wrapping_add(hash >> 11);
    }
    let rest = chunks.remainder();
    match rest.len() {
        3 => {
            hash = hash.wrapping_add(u16le(&rest[0..2]));
            hash ^= hash << 16;
            hash ^= schar(rest[2]) << 18;
            hash = hash.wrapping_add(hash >> 11);
        }
        2 => {
            hash = hash.wrapping_add(u16le(&rest[0..2]));
            hash ^= hash << 11;
            hash = hash.wrapping_add(hash >> 17);
        }
        1 => {
            hash = hash.wrapping_add(schar(rest[0]));
            hash ^= hash << 10;
            hash = hash.wrapping_add(hash >> 1);
        }
        _ => {}
    }
    hash ^= hash << 3;
    hash = hash.wrapping_add(hash >> 5);
    hash ^= hash << 4;
    hash = hash.wrapping_add(hash >> 17);
    hash ^= hash << 25;
    hash = hash.wrapping_add(hash >> 6);
    hash
}

/// The order libkmod's hash table (`buckets`, a power of two) iterates
/// its keys in: by bucket, then by `strcmp` within a bucket.
pub(super) fn hash_order<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    buckets: u32,
) -> Vec<&'a str> {
    let mut v: Vec<(u32, &str)> = keys
        .into_iter()
        .map(|k| (kmod_hash(k.as_bytes()) & (buckets - 1), k))
        .collect();
    v.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
    });
    v.into_iter().map(|(_, k)| k).collect()
}

/// kmod's `alias_normalize`: `-` → `_` outside `[...]` ranges; `None` for
/// an unmatched bracket.
pub(super) fn alias_normalize(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut chars = alias.chars();
    while let Some(c) = chars.next() {
        match c {
            '-' => out.push('_'),
            ']' => return None,
            '[' => {
                out.push('[');
                loop {
                    match chars.next() {
                        Some(']') => {
                            out.push(']');
                            break;
                        }
                        Some(c) => out.push(c),
                        None => return None,
                    }
                }
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// `sscanf(value, "PREFIX%u-%u")`: both numbers, as glibc reads them.
pub(super) fn major_minor(value: &str, prefix: &str) -> Option<(u32, u32)> {
    fn number(s: &str) -> Option<(u32, &str)> {
        let s = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let (neg, s) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        let n = s[..end].parse::<u64>().unwrap_or(u64::MAX);
        let n = if neg { n.wrapping_neg() } else { n };
        Some((n as u32, &s[end..]))
    }
    let (major, rest) = number(value.strip_prefix(prefix)?)?;
    let (minor, _) = number(rest.strip_prefix('-')?)?;
    Some((major, minor))
}

/// modules.builtin.bin: each line's file name up to its first dot, `-` →
/// `_`, with an empty value. Lines not starting with a letter are skipped
/// as depmod skips them.
pub(super) fn builtin_index(text: &[u8]) -> Result<(Index, usize)> {
    let mut idx = Index::new();
    let mut count = 0;
    let mut rest = text;
    while !rest.is_empty() {
        // fgets: a line keeps its newline.
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        rest = &rest[end..];
        if !line[0].is_ascii_alphabetic() {
            tracing::warn!(
                "modules.builtin: invalid line {:?}",
                String::from_utf8_lossy(line)
            );
            continue;
        }
        let base = line.rsplit(|&b| b == b'/').next().unwrap_or(line);
        let name = modname(&lossy(base));
        if name.is_empty() {
            continue;
        }
        idx.insert(&name, "", 0)
            .with_context(|| format!("modules.builtin entry {name:?}"))?;
        count += 1;
    }
    Ok((idx, count))
}

/// modules.builtin.alias.bin: the `MODULE.alias=VALUE` records of
/// modules.builtin.modinfo, keyed by the normalised alias.
pub(super) fn builtin_alias_index(modinfo: &[u8]) -> Result<Index> {
    let mut idx = Index::new();
    let mut at = 0;
    // depmod's flush_stream_to: the bytes up to `end`; `None` (consuming
    // the stop byte) when a NUL or the end of the file comes first.
    let read_to = |at: &mut usize, end: u8| -> Option<&[u8]> {
        let start = *at;
        while *at < modinfo.len() {
            let c = modinfo[*at];
            *at += 1;
            if c == end {
                return Some(&modinfo[start..*at - 1]);
            }
            if c == 0 {
                return None;
            }
        }
        None
    };
    while at < modinfo.len() {
        let Some(module) = read_to(&mut at, b'.').filter(|m| !m.is_empty()) else {
            continue;
        };
        let key = read_to(&mut at, b'=').unwrap_or_default();
        if key != b"alias" {
            // Skip to the end of the record.
            while at < modinfo.len() {
                at += 1;
                if modinfo[at - 1] == 0 {
                    break;
                }
            }
            continue;
        }
        let Some(value) = read_to(&mut at, 0).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = lossy(value);
        let Some(alias) = alias_normalize(&value) else {
            tracing::warn!("modules.builtin.modinfo: unmatched bracket in alias {value:?}");
            continue;
        };
        let module = lossy(module);
        idx.insert(&alias, &module, 0)
            .with_context(|| format!("modules.builtin.modinfo alias {value:?} of {module}"))?;
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmod::index::read_entries;

    #[test]
    fn hash_matches_libkmod() {
        // Computed with hash_superfast from kmod's shared/hash.c on x86-64.
        for (key, want) in [
            (&b""[..], 0x0000_0000),
            (b"a", 0x115e_a782),
            (b"ab", 0x516b_8b44),
            (b"abc", 0xd2be_198a),
            (b"ext4", 0xe679_ab16),
            (b"virtio_blk", 0x9add_a8b8),
            (b"__this_module", 0xe577_1e51),
            (b"\xe9t\xe9", 0x69bd_f30d),
            (b"jbd2_journal_start", 0xf1ba_de19),
        ] {
            assert_eq!(kmod_hash(key), want, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(
            hash_order(
                ["jbd2_journal_start", "virtio_blk", "__this_module", "ext4"],
                2
            ),
            ["ext4", "virtio_blk", "__this_module", "jbd2_journal_start"],
            "bucket 0 (sorted) before bucket 1"
        );
    }

    /// A little-endian ELF64 file with the given (name, contents) sections
    /// after the null one, and `.shstrtab` last.
    fn elf64(sections: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut shstr = b"\0".to_vec();
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x12] = 62; // EM_X86_64
        let mut headers = vec![(0u32, 0usize, 0usize)];
        for (name, data) in sections {
            headers.push((shstr.len() as u32, f.len(), data.len()));
            shstr.extend_from_slice(name.as_bytes());
            shstr.push(0);
            f.extend_from_slice(data);
        }
        headers.push((shstr.len() as u32, f.len(), 0));
        shstr.extend_from_slice(b".shstrtab\0");
        let last = headers.len() - 1;
        headers[last].2 = shstr.len();
        f.extend_from_slice(&shstr);
        let shoff = f.len();
        for (name, off, size) in &headers {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(*off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(*size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        }
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&(headers.len() as u16).to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&(last as u16).to_le_bytes());
        f
    }

    fn sym(name: u32, info: u8, shndx: u16) -> Vec<u8> {
        let mut e = vec![0u8; 24];
        e[..4].copy_from_slice(&name.to_le_bytes());
        e[4] = info;
        e[6..8].copy_from_slice(&shndx.to_le_bytes());
        e
    }

    fn version(name: &str) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[8..8 + name.len()].copy_from_slice(name.as_bytes());
        e
    }

    fn test_module() -> Vec<u8> {
        let strtab = b"\0foo\0__crc_bar\0.local_ref\0".to_vec();
        let symtab = [
            sym(0, 0, 0),
            sym(1, 0x10, 0),  // foo: global, undefined
            sym(5, 0x10, 3),  // __crc_bar: defined
            sym(0, 0x10, 0),  // unnamed: skipped
            sym(15, 0x20, 0), // .local_ref: weak, undefined
        ]
        .concat();
        elf64(&[
            (".symtab", symtab),
            (".strtab", strtab),
            (
                "__versions",
                [version("foo"), version("module_layout")].concat(),
            ),
            ("__ksymtab_strings", b"bar\0".to_vec()),
        ])
    }

    #[test]
    fn exports_and_needs_come_from_symtab_and_versions() {
        let m = test_module();
        let t = elf::symbol_tables(&m).unwrap();
        assert_eq!(t.machine, 62);
        assert_eq!(t.versions, [&b"foo"[..], b"module_layout"]);
        let (exports, imports) = symbols(&t);
        assert_eq!(exports, ["bar"]);
        assert_eq!(imports, ["foo", ".local_ref", "module_layout"]);

        // Without __crc_ symbols, __ksymtab_strings names the exports.
        let m = elf64(&[
            (".symtab", [sym(0, 0, 0), sym(1, 0x10, 0)].concat()),
            (".strtab", b"\0foo\0".to_vec()),
            ("__ksymtab_strings", b"\0a\0\0b\0".to_vec()),
        ]);
        let (exports, imports) = symbols(&elf::symbol_tables(&m).unwrap());
        assert_eq!(exports, ["a", "b"]);
        assert_eq!(imports, ["foo"]);
    }

    #[test]
    fn hostile_symbol_tables_are_errors_not_panics() {
        let good = test_module();
        for m in crate::kmod::mutants(&good, 0x2545_f491_4f6c_dd1d, 7) {
            if let Ok(t) = elf::symbol_tables(&m) {
                let _ = symbols(&t);
            }
        }
    }

    #[test]
    fn alias_normalize_keeps_ranges() {
        assert_eq!(
            alias_normalize("pci:v*d*sv*sd*bc01sc[0-9]i*-x").as_deref(),
            Some("pci:v*d*sv*sd*bc01sc[0-9]i*_x")
        );
        assert_eq!(alias_normalize("fs-ext4").as_deref(), Some("fs_ext4"));
        assert_eq!(alias_normalize("bad]"), None);
        assert_eq!(alias_normalize("bad[0-"), None);
    }

    #[test]
    fn major_minor_reads_like_sscanf() {
        assert_eq!(
            major_minor("char-major-10-229", "char-major-"),
            Some((10, 229))
        );
        assert_eq!(major_minor("block-major-8-*", "block-major-"), None);
        assert_eq!(major_minor("char-major-10-*", "char-major-"), None);
        assert_eq!(
            major_minor("char-major- 4-+5x", "char-major-"),
            Some((4, 5))
        );
        assert_eq!(major_minor("devname:fuse", "char-major-"), None);
    }

    #[test]
    fn modname_is_the_name_up_to_the_first_dot() {
        assert_eq!(modname("virtio-blk.ko.xz"), "virtio_blk");
        assert_eq!(modname("nls_cp437.ko"), "nls_cp437");
    }

    #[test]
    fn builtin_indexes_from_their_text_forms() {
        let (idx, n) =
            builtin_index(b"kernel/fs/ext4/ext4.ko\nkernel/drivers/a-b.ko\n#x\n").unwrap();
        assert_eq!(n, 2);
        let keys: Vec<String> = read_entries(&idx.to_bytes().unwrap())
            .unwrap()
            .into_iter()
            .map(|(k, _, v)| {
                assert_eq!(v, "");
                k
            })
            .collect();
        assert_eq!(keys, ["a_b", "ext4"]);

        let modinfo =
            b"ext4.alias=fs-ext4\0ext4.license=GPL\0\0\0unix.alias=net-pf-1\0bad.alias=x]\0";
        let got = read_entries(&builtin_alias_index(modinfo).unwrap().to_bytes().unwrap()).unwrap();
        assert_eq!(
            got,
            [
                ("fs_ext4".to_string(), 0, "ext4".to_string()),
                ("net_pf_1".to_string(), 0, "unix".to_string())
            ]
        );
    }
}
