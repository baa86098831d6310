//! The hybrid live/installer ISO: ISO 9660 with Rock Ridge and Joliet, El
//! Torito entries for BIOS (GRUB's cdboot.img and core image) and UEFI (a
//! small FAT image with the signed boot chain), and an MBR + GPT so that
//! the same file boots from a USB stick it was `dd`'d to. Written by
//! hadris-iso, in process, without root or loop devices.
//!
//! As a disk, the BIOS reads the MBR boot code (GRUB's boot.img), which
//! loads the core image's first disk sector (diskboot.img, right after
//! cdboot.img in the El Torito image), whose block list names the rest of
//! the core image: both addresses come from the image's place in the ISO.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use hadris_fs::{Content, Node, Tree};
use hadris_iso::{
    AppendedPartition, BootEntry, BootInfo, ElTorito, Hybrid, IsoId, IsoLevel, IsoOptions,
};

use crate::bootloader::bios::{self, BiosImages};
use crate::fat::{self, FatOptions};
use crate::tree::{ContentStore, FsTree, InodeKind};

/// Where the BIOS El Torito image (cdboot.img + core image) is stored.
pub const BIOS_IMAGE: &str = "boot/grub/i386-pc/eltorito.img";
/// Where the boot catalog is listed.
pub const CATALOG: &str = "boot/grub/boot.cat";
/// 512-byte sectors per CD sector.
const SECTORS_PER_BLOCK: u64 = 4;

/// What goes into an ISO.
pub struct Spec<'a> {
    /// ISO 9660 volume label; see [`check_volume_id`].
    pub volume_id: String,
    /// Application identifier (up to 128 characters).
    pub application_id: String,
    /// Seconds since the epoch for every date in the image.
    pub mtime: i64,
    /// Files by path (no leading slash).
    pub files: Vec<(String, Content)>,
    /// BIOS boot: boot.img for the MBR and the El Torito image (cdboot.img
    /// followed by the core image). `None`: UEFI only.
    pub bios: Option<&'a BiosImages>,
    /// The FAT image of the EFI system partition, stored once for El
    /// Torito and the GPT.
    pub esp: Vec<u8>,
}

/// ISO 9660 volume labels of our ISOs: 1 to 32 of `A-Z`, `0-9` and `_`
/// (d-characters), which GRUB's `search --label`, the kernel command line
/// and every ISO reader take as they are.
pub fn check_volume_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("ISO volume label {id:?}: expected 1 to 32 of A-Z, 0-9 and _");
    }
    Ok(())
}

/// The volume label naming an image: `DEBIAN_AMD64_20251009_085320`,
/// cut to 32 characters.
pub fn volume_id(flavor: &str, arch: &str, version: &str) -> String {
    let mut id: String = format!("{flavor}_{arch}_{version}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    id.truncate(32);
    id
}

fn options(spec: &Spec<'_>, bootstrap: Option<&[u8]>) -> Result<IsoOptions> {
    check_volume_id(&spec.volume_id)?;
    if spec.application_id.len() > 128 || !spec.application_id.is_ascii() {
        bail!(
            "ISO application id {:?}: expected at most 128 ASCII characters",
            spec.application_id
        );
    }
    let time = hadris_fs::DateTime::from_unix_seconds(spec.mtime)
        .map_err(|e| anyhow!("ISO date {}: {e:?}", spec.mtime))?;
    let mut el_torito = ElTorito::new();
    if spec.bios.is_some() {
        el_torito = el_torito.with_entry(
            BootEntry::bios(BIOS_IMAGE)
                .with_load_size(SECTORS_PER_BLOCK as u16)
                .with_boot_info(BootInfo::Grub2),
        );
    }
    el_torito = el_torito
        .with_entry(BootEntry::uefi_appended(0))
        .with_catalog_path(CATALOG);
    let esp = AppendedPartition::esp(Content::bytes(spec.esp.clone()));
    let hybrid = match bootstrap {
        Some(code) => Hybrid::gpt_hybrid_mbr().with_bootstrap(code),
        None if spec.bios.is_some() => Hybrid::gpt_hybrid_mbr(),
        None => Hybrid::gpt(),
    }
    .with_appended(esp);
    Ok(IsoOptions::default()
        .with_id(IsoId::Volume, &spec.volume_id)
        .with_id(IsoId::Application, &spec.application_id)
        .with_id(IsoId::Publisher, "build-image")
        .with_level(IsoLevel::L3)
        .with_joliet()
        .with_rock_ridge()
        .with_el_torito(el_torito)
        .with_hybrid(hybrid)
        .with_time(time)
        .with_seed(u64::from_le_bytes(
            sha2::Sha256::digest(spec.volume_id.as_bytes())[..8]
                .try_into()
                .expect("8 bytes"),
        )))
}

use sha2::Digest;

fn tree(spec: &Spec<'_>) -> Result<Tree> {
    let mut tree = Tree::new();
    for (path, content) in &spec.files {
        tree.insert(path, Node::file(content.clone()))
            .map_err(|e| anyhow!("ISO file {path}: {e}"))?;
    }
    if let Some(b) = spec.bios {
        tree.insert(BIOS_IMAGE, Node::file(Content::bytes(b.core_img.clone())))
            .map_err(|e| anyhow!("ISO file {BIOS_IMAGE}: {e}"))?;
    }
    Ok(tree)
}

/// Writes the ISO to `out` (truncated first); returns its size.
pub fn write(spec: &Spec<'_>, out: &File) -> Result<u64> {
    let tree = tree(spec)?;
    // The MBR boot code needs the El Torito image's address, which the
    // plan gives without writing anything.
    let bootstrap = match spec.bios {
        Some(b) => {
            let plan = hadris_iso::plan(&tree, &options(spec, None)?)
                .map_err(|e| anyhow!("laying out the ISO: {e}"))?;
            let at = plan
                .extents(BIOS_IMAGE)
                .or_else(|| plan.extents(format!("/{BIOS_IMAGE}")))
                .and_then(|e| e.first().copied())
                .ok_or_else(|| anyhow!("the ISO plan does not place {BIOS_IMAGE}"))?;
            if at.offset() % 2048 != 0 {
                bail!(
                    "{BIOS_IMAGE} is at byte {}, not on a CD sector",
                    at.offset()
                );
            }
            // boot.img loads diskboot.img, the first disk sector after
            // cdboot.img; diskboot.img's own block list is patched by the
            // writer (BootInfo::Grub2).
            let core_lba = at.offset() / 512 + SECTORS_PER_BLOCK;
            let mut mbr = [0u8; 512];
            mbr[510..].copy_from_slice(&[0x55, 0xaa]);
            let boot = bios::patch_boot_img(&b.boot_img, &mbr, core_lba)
                .context("preparing GRUB's boot.img for the ISO's MBR")?;
            Some(boot[..446].to_vec())
        }
        None => None,
    };
    let opts = options(spec, bootstrap.as_deref())?;
    out.set_len(0).context("truncating the ISO file")?;
    let dev = hadris_storage::host::FileDevice::new(out.try_clone()?)
        .context("opening the ISO file for writing")?;
    let report =
        hadris_iso::sync::write(dev, &tree, &opts).map_err(|e| anyhow!("writing the ISO: {e}"))?;
    for w in report.warnings() {
        tracing::warn!("ISO: {w}");
    }
    Ok(report.size())
}

/// The El Torito EFI image: `tree` (see [`crate::bootloader::esp::live_tree`])
/// as a FAT filesystem labelled `EFIBOOT`, a little larger than its files.
/// Its size picks the FAT type (FAT16 for a few MiB of boot files, FAT12
/// below 2 MiB); UEFI reads all three types from removable media.
pub fn esp_image(tree: &FsTree, store: &ContentStore, mtime: i64, serial: u32) -> Result<Vec<u8>> {
    let mut total = 0u64;
    tree.walk(|_, id| {
        if let InodeKind::File { content } = &tree.inode(id).kind {
            total += content.len.div_ceil(4096) * 4096 + 4096;
        }
    });
    // Room for the FATs, directories and slack, in whole MiB.
    let size = (total + total / 8 + (1 << 20)).div_ceil(1 << 20) << 20;
    if size > 32 << 20 {
        bail!(
            "the ISO's boot files need a {} MiB EFI image; El Torito loads at most 32 MiB",
            size >> 20
        );
    }
    let opts = FatOptions {
        size_bytes: size,
        fat_type: None,
        volume_label: "EFIBOOT".into(),
        volume_id: serial,
        timestamp: mtime,
    };
    let mut out = Cursor::new(Vec::with_capacity(size as usize));
    fat::write(tree, store, &opts, &mut out, 0).context("writing the ISO's EFI image")?;
    Ok(out.into_inner())
}

/// What `inspect` reports of an ISO.
#[derive(Debug, serde::Serialize)]
pub struct IsoInfo {
    pub volume_id: String,
    pub application_id: String,
    pub size: u64,
    /// The install manifest, when the ISO has one.
    pub install: Option<serde_json::Value>,
}

/// Whether `path` starts like an ISO 9660 image.
pub fn is_iso(path: &Path) -> bool {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(_) => return false,
    };
    let mut buf = vec![0u8; 32768 + 6];
    f.read_exact(&mut buf).is_ok() && &buf[32768..] == boot_contract::live::PVD_MAGIC
}

/// Reads the primary volume descriptor and the install manifest of an ISO.
pub fn read_info(path: &Path) -> Result<IsoInfo> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 32768 + 2048];
    f.read_exact(&mut buf)
        .with_context(|| format!("{}: too short for an ISO 9660 image", path.display()))?;
    let pvd = &buf[32768..];
    if &pvd[..6] != boot_contract::live::PVD_MAGIC {
        bail!(
            "{}: no ISO 9660 primary volume descriptor at byte 32768",
            path.display()
        );
    }
    let text = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(&pvd[r])
            .trim_end_matches([' ', '\0'])
            .to_string()
    };
    let blocks = u32::from_le_bytes(pvd[80..84].try_into().expect("4 bytes"));
    let block_size = u16::from_le_bytes(pvd[128..130].try_into().expect("2 bytes"));
    let install = read_file(path, boot_contract::live::MANIFEST)?
        .map(|b| {
            serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{}: /{} is not JSON",
                    path.display(),
                    boot_contract::live::MANIFEST
                )
            })
        })
        .transpose()?;
    Ok(IsoInfo {
        volume_id: text(40..72),
        application_id: text(574..702),
        size: u64::from(blocks) * u64::from(block_size),
        install,
    })
}

/// A file of the ISO at `path`, or `None` if it has none there.
pub fn read_file(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    use hadris_fs::sync::Volume;
    let dev = hadris_storage::host::FileDevice::open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let iso = hadris_iso::sync::IsoFs::mount(dev, hadris_fs::MountOptions::new())
        .map_err(|e| anyhow!("{}: not a readable ISO 9660 image: {e}", path.display()))?;
    let vol = Volume::new(iso);
    let mut f = match vol.open(format!("/{name}"), hadris_fs::OpenOptions::new().read()) {
        Ok(f) => f,
        Err(e) if e.kind() == hadris_fs::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("{}: reading /{name}: {e}", path.display()),
    };
    let mut data = Vec::new();
    f.read_to_end(&mut data)
        .with_context(|| format!("{}: reading /{name}", path.display()))?;
    Ok(Some(data))
}

#[cfg(test)]
mod tests;
