//! The install manifest on the live ISO (`install/install.json`, format
//! `build-image-install/1`): what `install` writes where. It is read and
//! checked in full before any device is touched.

use std::path::{Path, PathBuf};

use boot_contract::live::MANIFEST_FORMAT;
use serde::Deserialize;

use crate::error::{Context, Error, Result};
use crate::fsutil::check_abs_path;

/// Sector size the manifest's layout is made for.
pub const SECTOR: u64 = 512;
/// LBA 0 (MBR) and the primary GPT (LBA 1..33): written last.
pub const TABLE_BYTES: u64 = 34 * SECTOR;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub image: ImageId,
    pub sector_size: u64,
    /// Size of the A/B disk image the head's GPT describes.
    pub image_size: u64,
    /// `image_size` plus the room the `persist` partition needs.
    pub min_device_size: u64,
    pub head: Head,
    pub rootfs: Blob,
    pub root_a: Region,
    pub root_b: Region,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageId {
    pub id: String,
    pub version: String,
    pub arch: String,
}

/// The start of the disk image, `[0, size)`, stored sparsely: `file`
/// holds the bytes of `chunks` (`[offset, length]`, ascending)
/// concatenated; everything else is zero.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub file: String,
    pub size: u64,
    /// SHA-256 of the whole reconstructed head, zeros included.
    pub sha256: String,
    pub chunks: Vec<[u64; 2]>,
}

impl Head {
    /// Bytes `file` must hold.
    pub fn stored_len(&self) -> u64 {
        self.chunks.iter().map(|c| c[1]).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// Bytes of the disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub offset: u64,
    pub size: u64,
}

impl Region {
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.size)
    }
}

/// Reads and checks `source`/install/install.json.
pub fn load(source: &Path) -> Result<(Manifest, PathBuf)> {
    let path = source.join(boot_contract::live::MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::msg(format!(
            "reading the install manifest {}: {e} (is --source the mounted live ISO?)",
            path.display()
        ))
    })?;
    let m = parse(&text, &path)?;
    Ok((m, path))
}

/// Parses and checks a manifest's text; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
    let m: Manifest = serde_json::from_str(text).with_context(|| path.display().to_string())?;
    validate(&m).with_context(|| path.display().to_string())?;
    Ok(m)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A path inside the ISO: relative, no `.`/`..`/empty components.
fn check_rel(field: &str, p: &str) -> std::result::Result<(), String> {
    check_abs_path(&format!("/{p}"))
        .map_err(|why| format!("{field}: {p:?} is not a relative path inside the ISO ({why})"))?;
    if p.starts_with('/') {
        return Err(format!(
            "{field}: {p:?} is not a relative path inside the ISO"
        ));
    }
    Ok(())
}

/// Checks what the types cannot. Errors name the field.
fn validate(m: &Manifest) -> std::result::Result<(), String> {
    if m.format != MANIFEST_FORMAT {
        return Err(format!(
            "format: {:?} is not supported, expected {MANIFEST_FORMAT:?} (an ISO from another build-image version?)",
            m.format
        ));
    }
    if m.sector_size != SECTOR {
        return Err(format!(
            "sector_size: {} is not supported, expected {SECTOR}",
            m.sector_size
        ));
    }
    for (field, v) in [
        ("image.id", &m.image.id),
        ("image.version", &m.image.version),
    ] {
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{field}: {v:?} is empty or holds white space"));
        }
    }
    let sectors = |field: &str, v: u64| {
        if v % SECTOR != 0 {
            Err(format!("{field}: {v} is not a multiple of {SECTOR}"))
        } else {
            Ok(())
        }
    };
    sectors("image_size", m.image_size)?;
    if m.min_device_size < m.image_size {
        return Err(format!(
            "min_device_size: {} is smaller than image_size {}",
            m.min_device_size, m.image_size
        ));
    }
    // head
    let h = &m.head;
    check_rel("head.file", &h.file)?;
    if !is_sha256(&h.sha256) {
        return Err(format!(
            "head.sha256: {:?} is not 64 lower-case hex digits",
            h.sha256
        ));
    }
    sectors("head.size", h.size)?;
    if h.size < TABLE_BYTES || h.size > m.image_size {
        return Err(format!(
            "head.size: {} is outside {TABLE_BYTES}..={} (the MBR and primary GPT up to image_size)",
            h.size, m.image_size
        ));
    }
    let mut prev_end = 0u64;
    for (i, &[off, len]) in h.chunks.iter().enumerate() {
        let end = off
            .checked_add(len)
            .filter(|&e| e <= h.size)
            .ok_or_else(|| {
                format!(
                    "head.chunks[{i}]: [{off}, {len}] ends past head.size {}",
                    h.size
                )
            })?;
        if len == 0 {
            return Err(format!("head.chunks[{i}]: [{off}, {len}] is empty"));
        }
        if i > 0 && off < prev_end {
            return Err(format!(
                "head.chunks[{i}]: offset {off} is before the end {prev_end} of the previous chunk (chunks must be ascending and not overlap)"
            ));
        }
        prev_end = end;
    }
    // rootfs and the slots
    check_rel("rootfs.file", &m.rootfs.file)?;
    if !is_sha256(&m.rootfs.sha256) {
        return Err(format!(
            "rootfs.sha256: {:?} is not 64 lower-case hex digits",
            m.rootfs.sha256
        ));
    }
    for (name, r) in [("root_a", &m.root_a), ("root_b", &m.root_b)] {
        sectors(&format!("{name}.offset"), r.offset)?;
        sectors(&format!("{name}.size"), r.size)?;
        if r.size == 0 {
            return Err(format!("{name}.size: is 0"));
        }
        if r.offset < h.size {
            return Err(format!(
                "{name}.offset: {} is inside the head (head.size {})",
                r.offset, h.size
            ));
        }
        if r.end().is_none_or(|e| e > m.image_size) {
            return Err(format!(
                "{name}: offset {} + size {} is past image_size {}",
                r.offset, r.size, m.image_size
            ));
        }
    }
    let (a, b) = (&m.root_a, &m.root_b);
    if a.offset < b.end().unwrap_or(0) && b.offset < a.end().unwrap_or(0) {
        return Err(format!(
            "root_b: offset {} size {} overlaps root_a (offset {} size {})",
            b.offset, b.size, a.offset, a.size
        ));
    }
    if m.rootfs.size == 0 || m.rootfs.size > a.size {
        return Err(format!(
            "rootfs.size: {} does not fit root_a ({} bytes) or is 0",
            m.rootfs.size, a.size
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const GOOD: &str = r#"{
  "format": "build-image-install/1",
  "image": {"id": "debian", "version": "1.0.0", "arch": "amd64"},
  "sector_size": 512,
  "image_size": 3221225472,
  "min_device_size": 3254779904,
  "head": {"file": "install/head.bin", "size": 269484032, "sha256": "0000000000000000000000000000000000000000000000000000000000000000", "chunks": [[0, 65536], [1048576, 131072]]},
  "rootfs": {"file": "rootfs.squashfs", "size": 123456789, "sha256": "1111111111111111111111111111111111111111111111111111111111111111"},
  "root_a": {"offset": 269484032, "size": 1476395008},
  "root_b": {"offset": 1745879040, "size": 1475346432}
}"#;

    fn p(text: &str) -> Result<Manifest> {
        parse(text, Path::new("/run/os/live/install/install.json"))
    }

    #[test]
    fn parses_the_documented_example() {
        let m = p(GOOD).unwrap();
        assert_eq!(m.image.version, "1.0.0");
        assert_eq!(m.head.chunks, vec![[0, 65536], [1048576, 131072]]);
        assert_eq!(m.head.stored_len(), 196608);
        assert_eq!(m.root_b.end(), Some(3221225472));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "\"build-image-install/1\"",
                "\"build-image-install/2\"",
                "format",
            ),
            (
                "\"sector_size\": 512",
                "\"sector_size\": 4096",
                "sector_size",
            ),
            (
                "\"image_size\": 3221225472",
                "\"image_size\": 3221225473",
                "image_size",
            ),
            (
                "\"min_device_size\": 3254779904",
                "\"min_device_size\": 1",
                "min_device_size",
            ),
            ("\"id\": \"debian\"", "\"id\": \"\"", "image.id"),
            (
                "\"file\": \"install/head.bin\"",
                "\"file\": \"../head.bin\"",
                "head.file",
            ),
            (
                "\"file\": \"rootfs.squashfs\"",
                "\"file\": \"/rootfs.squashfs\"",
                "rootfs.file",
            ),
            ("\"sha256\": \"0000", "\"sha256\": \"X000", "head.sha256"),
            ("\"sha256\": \"1111", "\"sha256\": \"x111", "rootfs.sha256"),
            ("\"size\": 269484032", "\"size\": 100", "head.size"),
            ("[1048576, 131072]", "[269484000, 131072]", "head.chunks[1]"),
            (
                "[[0, 65536], [1048576, 131072]]",
                "[[1048576, 1], [0, 512]]",
                "head.chunks[1]",
            ),
            (
                "[[0, 65536], [1048576, 131072]]",
                "[[0, 65536], [1000, 10]]",
                "head.chunks[1]",
            ),
            ("[0, 65536]", "[0, 0]", "head.chunks[0]"),
            (
                "\"offset\": 269484032",
                "\"offset\": 1048576",
                "root_a.offset",
            ),
            (
                "\"offset\": 269484032",
                "\"offset\": 269484033",
                "root_a.offset",
            ),
            (
                "\"root_b\": {\"offset\": 1745879040",
                "\"root_b\": {\"offset\": 1745879552",
                "root_b",
            ),
            (
                "\"root_b\": {\"offset\": 1745879040",
                "\"root_b\": {\"offset\": 269484032",
                "root_b",
            ),
            ("\"size\": 123456789", "\"size\": 1476395009", "rootfs.size"),
            (
                "\"arch\": \"amd64\"",
                "\"arch\": \"amd64\", \"extra\": 1",
                "extra",
            ),
            ("\"sector_size\": 512,", "", "sector_size"),
        ];
        for (from, to, field) in cases {
            assert!(GOOD.contains(from), "{from}");
            let doc = GOOD.replacen(from, to, 1);
            let e = p(&doc).unwrap_err().to_string();
            assert!(
                e.starts_with("/run/os/live/install/install.json: ") && e.contains(field),
                "{from} -> {to}: {e}"
            );
        }
    }
}
