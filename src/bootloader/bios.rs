//! BIOS boot with GRUB.
//!
//! A BIOS boots the A/B disk through three pieces of GRUB's i386-pc port,
//! all taken from the target's own `grub-pc-bin` package
//! (`/usr/lib/grub/i386-pc`):
//!
//! - **boot.img** (one sector) goes into the MBR's boot code area. It loads
//!   the first sector of core.img from the LBA patched in at
//!   [`KERNEL_SECTOR_OFFSET`].
//! - **core.img** goes into the `bios_grub` partition. Its first sector is
//!   diskboot.img, whose blocklist (at the end of that sector) says where
//!   the rest of core.img is: the sectors right after it. The rest is
//!   GRUB's kernel with every module the boot needs built in (nothing is
//!   loaded at run time) and a prefix naming the ESP by its partition
//!   number on the drive the BIOS booted from (`(,gpt2)/EFI/debian`: GRUB
//!   fills in the boot drive), the directory that holds the same
//!   `grub.cfg` the UEFI path reads, so slot selection is identical. No
//!   identifier of the ESP is built in: a device gives its disk new GUIDs
//!   and the ESP a new FAT serial on its first boot.
//! - The ESP itself (grub.cfg, the env blocks, the kernels) is shared with
//!   UEFI.
//!
//! [`core_image`] assembles core.img in-process from the target's own
//! kernel.img, modules and decompressor, as `grub-mkimage -O i386-pc` does
//! (see [`coreimg`]), so the build host needs no GRUB at all, let alone one
//! of the target's version; [`install`] then does, in-process and on a plain image
//! file, what `grub-install`'s setup does for a GPT disk with a BIOS boot
//! partition: core.img into `bios_grub` with its blocklist patched, boot.img
//! into the MBR with core.img's LBA, the boot drive taken from the BIOS, and
//! the protective MBR's disk signature and partition records left intact.
//! Reed-Solomon recovery codes are not added (as `grub-install
//! --no-rs-codes`): the partition is reserved for GRUB, nothing else writes
//! there.

pub mod coreimg;
pub mod lzma;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::disk::{self, types, Layout, BIOS_GRUB, MBR_BOOT_CODE_SIZE, SECTOR};
use crate::tree::{ContentStore, FsTree, InodeKind};
use coreimg::{CoreSpec, PcFiles};

/// Where the target's `grub-pc-bin` puts GRUB's i386-pc images and
/// modules (relative to the root of the image tree).
pub const I386_PC_DIR: &str = "usr/lib/grub/i386-pc";

/// The modules built into core.img: disk access through the BIOS, the GPT
/// and FAT of the ESP, and everything `bootloader/grub.cfg` uses (`normal`
/// for the script and menu, `test` for `[`, `loadenv` for
/// `load_env`/`save_env`, `probe` for the ESP's partition UUID, `linux` for
/// `linux`/`initrd`, `echo`, `sleep`, `halt`, `reboot`). Their dependencies
/// are added from `moddep.lst`.
pub const MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "fat",
    "probe",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "loadenv",
    "halt",
    "reboot",
    "sleep",
];

/// Size of boot.img and of one disk sector.
pub const BOOT_IMG_SIZE: usize = 512;
/// cdboot.img: one CD sector, loaded by the El Torito BIOS entry.
pub const CDBOOT_SIZE: usize = 2048;
const SECTOR_BYTES: usize = SECTOR as usize;

// Offsets in boot.img (GRUB's include/grub/i386/pc/boot.h).
/// Start of the BIOS parameter block kept from the disk's own sector.
pub const BPB_START: usize = 0x03;
/// End of that block; boot.img's own data starts here.
pub const BPB_END: usize = 0x5a;
/// The address boot.img loads the first sector of core.img to (0x8000,
/// little-endian): a marker that this is GRUB's boot.img.
pub const KERNEL_ADDRESS_OFFSET: usize = 0x5a;
/// LBA (u64, little-endian) of core.img's first sector.
pub const KERNEL_SECTOR_OFFSET: usize = 0x5c;
/// The BIOS drive to boot from; 0xff means "the drive the BIOS passed".
pub const BOOT_DRIVE_OFFSET: usize = 0x64;
/// A short jump over the check that repairs a bogus boot drive number;
/// two NOPs enable the check (grub-install does this for hard disks).
pub const DRIVE_CHECK_OFFSET: usize = 0x66;
/// Where the disk signature, the partition records and the boot signature
/// begin: never overwritten.
pub const WINDOWS_NT_MAGIC: usize = 0x1b8;

// core.img (diskboot.img's blocklist and the kernel header after it).
/// Size of one blocklist entry: start LBA (u64), sectors (u16), segment
/// (u16), little-endian.
pub const BLOCKLIST_SIZE: usize = 12;
/// The first blocklist entry, at the end of core.img's first sector; more
/// entries would grow downwards, ended by one of length 0.
pub const FIRST_BLOCKLIST: usize = SECTOR_BYTES - BLOCKLIST_SIZE;
/// The real-mode segment the rest of core.img is loaded to (0x8200).
pub const FIRST_SEGMENT: u16 = 0x820;
/// In core.img's second sector: the length of the part not covered by
/// Reed-Solomon codes; 0xffff in images older than the setup code knows.
const NO_RS_LENGTH_OFFSET: usize = SECTOR_BYTES + 0x14;
/// How many sectors of core.img GRUB's loader can place below 0x78000
/// (from its link address 0x9000), as grub-install's setup enforces.
pub const MAX_CORE_SECTORS: usize = (0x78000 - 0x9000) / SECTOR_BYTES;

/// Why installing boot.img and core.img was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the disk layout has no {BIOS_GRUB} partition (it has {found}): BIOS boot needs one \
         for core.img"
    )]
    NoBiosGrubPartition { found: String },
    #[error("partition {BIOS_GRUB} has type {found}, expected the BIOS boot type {expected}")]
    WrongPartitionType { found: String, expected: String },
    #[error("boot.img is {0} bytes, expected exactly {BOOT_IMG_SIZE}")]
    BootImgSize(usize),
    #[error(
        "boot.img is not GRUB's i386-pc boot sector: {0} (is it from grub-pc-bin's \
         /usr/lib/grub/i386-pc?)"
    )]
    BootImgLayout(&'static str),
    #[error(
        "core.img is {0} bytes, expected at least two sectors (diskboot.img and GRUB's kernel)"
    )]
    CoreTooSmall(usize),
    #[error(
        "core.img is {size} bytes ({sectors} sectors), larger than partition {BIOS_GRUB} \
         ({partition} bytes)"
    )]
    CoreLargerThanPartition {
        size: usize,
        sectors: usize,
        partition: u64,
    },
    #[error(
        "core.img is {sectors} sectors, more than the {MAX_CORE_SECTORS} GRUB's BIOS loader can \
         place in low memory: embed fewer modules"
    )]
    CoreTooLargeToLoad { sectors: usize },
    #[error(
        "core.img does not start with GRUB's diskboot.img: the blocklist at byte {FIRST_BLOCKLIST:#x} \
         says {len} sectors at segment {segment:#x}, expected {expected_len} sectors at segment \
         {FIRST_SEGMENT:#x}"
    )]
    NotDiskboot {
        len: u16,
        segment: u16,
        expected_len: usize,
    },
    #[error("core.img's first sector has no blocklist terminator")]
    NoBlocklistTerminator,
    #[error(
        "core.img comes from a GRUB older than this setup code knows (no Reed-Solomon length)"
    )]
    CoreVersionMismatch,
    #[error(
        "the image's first sector has no MBR boot signature (55 AA at byte 510): write the \
         partition table before the boot code"
    )]
    NoMbr,
}

/// The prefix built into core.img: `dir` on GPT partition `esp_partition`
/// of the drive the BIOS booted from, `(,gptN)/EFI/debian`. GRUB's kernel
/// fills in the drive (`hd0` for the boot drive) and sets `root` and
/// `prefix` from it, as grub-install's images without a search do; normal
/// mode then reads `$prefix/grub.cfg`.
pub fn disk_prefix(esp_partition: u32, dir: &str) -> Result<String> {
    if esp_partition == 0 || esp_partition > 128 {
        bail!("ESP partition number {esp_partition}: expected 1 to 128");
    }
    check_prefix(dir)?;
    Ok(format!("(,gpt{esp_partition}){dir}"))
}

fn check_prefix(prefix: &str) -> Result<()> {
    let ok = prefix.starts_with('/')
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if !ok {
        bail!(
            "bad GRUB prefix {prefix:?}: expected an absolute path on the ESP of letters, digits \
             and / . _ -, like /EFI/debian"
        );
    }
    Ok(())
}

/// Assembles core.img from the i386-pc directory of the target's
/// `grub-pc-bin` (`i386_pc_dir`): diskboot.img, the LZMA-compressed kernel
/// with [`MODULES`] built in, and the [`disk_prefix`] of `dir` on the ESP,
/// partition `esp_partition` (see [`coreimg`]).
pub fn core_image(i386_pc_dir: &Path, esp_partition: u32, dir: &str) -> Result<Vec<u8>> {
    let prefix = disk_prefix(esp_partition, dir)?;
    let files = PcFiles::from_dir(i386_pc_dir)?;
    let spec = CoreSpec {
        modules: MODULES,
        config: "",
        prefix: &prefix,
    };
    coreimg::assemble(&files, &spec)
        .with_context(|| format!("assembling core.img from {}", i386_pc_dir.display()))
}

/// The modules built into the core image of the live ISO: [`MODULES`]
/// without the environment block, plus ISO 9660 and the MBR of a stick.
pub const ISO_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "part_msdos",
    "iso9660",
    "search",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "halt",
];

/// The config built into the live ISO's core image: find the ISO by its
/// volume label, on a CD or on a stick.
pub fn iso_early_config(label: &str, prefix: &str) -> Result<String> {
    crate::iso::check_volume_id(label)?;
    check_prefix(prefix)?;
    Ok(format!(
        "search --no-floppy --label --set=root {label}\nset prefix=($root){prefix}\n"
    ))
}

/// boot.img and core.img for a BIOS boot.
pub struct BiosImages {
    pub boot_img: Vec<u8>,
    pub core_img: Vec<u8>,
}

/// What the core image is loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// The `bios_grub` partition, by boot.img.
    Disk,
    /// El Torito: cdboot.img goes in front.
    ElTorito,
}

/// GRUB's i386-pc files of an image tree that has `grub-pc-bin` installed
/// ([`I386_PC_DIR`]), read once; the disk's and the ISO's boot images are
/// made from them.
pub struct GrubPc {
    files: PcFiles,
}

impl GrubPc {
    pub fn from_tree(tree: &FsTree, store: &ContentStore) -> Result<GrubPc> {
        let dir = tree.lookup_path(I386_PC_DIR.as_bytes()).with_context(|| {
            format!("/{I386_PC_DIR} is not in the image: install grub-pc-bin for BIOS boot")
        })?;
        if !tree.inode(dir).kind.is_dir() {
            bail!("/{I386_PC_DIR} in the image is not a directory");
        }
        let mut files = PcFiles::new();
        for (name, id) in tree.children(dir) {
            let InodeKind::File { content } = &tree.inode(id).kind else {
                continue;
            };
            let name = std::str::from_utf8(name)
                .with_context(|| format!("odd file name {name:?} in /{I386_PC_DIR}"))?;
            let data = store
                .read_all(content)
                .with_context(|| format!("reading /{I386_PC_DIR}/{name} from the image"))?;
            files.insert(name, data);
        }
        // Everything the disk's and the ISO's images need, before anything
        // is built.
        for modules in [MODULES, ISO_MODULES] {
            coreimg::check(&files, modules)
                .with_context(|| format!("checking the image's /{I386_PC_DIR}"))?;
        }
        for name in ["boot.img", "cdboot.img"] {
            if files.get(name).is_none() {
                return Err(coreimg::CoreImgError::MissingFile(name.into()))
                    .with_context(|| format!("checking the image's /{I386_PC_DIR}"));
            }
        }
        Ok(GrubPc::from_files(files))
    }

    /// GRUB's i386-pc files as given.
    pub fn from_files(files: PcFiles) -> GrubPc {
        GrubPc { files }
    }

    pub fn files(&self) -> &PcFiles {
        &self.files
    }

    /// boot.img and the [`core_image`] of the disk, whose prefix is `dir`
    /// on partition `esp_partition` of the boot drive ([`disk_prefix`]).
    pub fn disk_images(&self, esp_partition: u32, dir: &str) -> Result<BiosImages> {
        let prefix = disk_prefix(esp_partition, dir)?;
        self.images("", &prefix, MODULES, Boot::Disk)
    }

    /// The BIOS boot images of the live ISO: boot.img for the MBR of a
    /// stick, and the El Torito image (cdboot.img followed by a core image
    /// whose early config finds the ISO labelled `label`).
    pub fn iso_images(&self, label: &str, prefix: &str) -> Result<BiosImages> {
        let config = iso_early_config(label, prefix)?;
        self.images(&config, prefix, ISO_MODULES, Boot::ElTorito)
    }

    /// core.img for a disk with `spec`'s modules, config and prefix.
    pub fn core_image(&self, spec: &CoreSpec) -> Result<Vec<u8>> {
        let core = coreimg::assemble(&self.files, spec).with_context(|| {
            format!("assembling GRUB's core.img from the image's /{I386_PC_DIR}")
        })?;
        tracing::info!(
            "GRUB {} core.img: {} bytes",
            self.files
                .grub_version()
                .as_deref()
                .unwrap_or("(version unknown)"),
            core.len()
        );
        Ok(core)
    }

    fn images(
        &self,
        config: &str,
        prefix: &str,
        modules: &[&str],
        boot: Boot,
    ) -> Result<BiosImages> {
        let spec = CoreSpec {
            modules,
            config,
            prefix,
        };
        let mut core_img = self.core_image(&spec)?;
        let file = |name: &str| {
            self.files
                .get(name)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| coreimg::CoreImgError::MissingFile(name.into()))
                .with_context(|| format!("reading /{I386_PC_DIR}/{name} of the image"))
        };
        if boot == Boot::ElTorito {
            let mut img = file("cdboot.img")?;
            if img.len() != CDBOOT_SIZE {
                bail!(
                    "/{I386_PC_DIR}/cdboot.img of the image is {} bytes, expected {CDBOOT_SIZE}",
                    img.len()
                );
            }
            img.extend_from_slice(&core_img);
            core_img = img;
        }
        let boot_img = file("boot.img")?;
        Ok(BiosImages { boot_img, core_img })
    }
}

/// Installs GRUB for BIOS into an image file that [`disk::write_image`]
/// wrote with `layout`: core.img (blocklist patched by [`patch_core_img`])
/// at the start of `bios_grub`, then boot.img's code (patched by
/// [`patch_boot_img`]) into the MBR. Everything is checked before the first
/// write; the disk signature and partition records stay as they were.
/// `out` must be open for reading (the MBR is read back) and writing.
pub fn install(out: &File, layout: &Layout, boot_img: &[u8], core_img: &[u8]) -> Result<()> {
    let part = bios_grub_partition(layout)?;
    let sectors = core_img.len().div_ceil(SECTOR_BYTES);
    if (sectors as u64) * SECTOR > part.size() {
        return Err(InstallError::CoreLargerThanPartition {
            size: core_img.len(),
            sectors,
            partition: part.size(),
        }
        .into());
    }
    let core = patch_core_img(core_img, part.first_lba)?;
    let mut mbr = [0u8; SECTOR_BYTES];
    out.read_exact_at(&mut mbr, 0)
        .context("reading the MBR of the image")?;
    let boot = patch_boot_img(boot_img, &mbr, part.first_lba)?;
    out.write_all_at(&core, part.offset())
        .with_context(|| format!("writing core.img into partition {BIOS_GRUB}"))?;
    disk::write_mbr_boot_code(out, &boot[..MBR_BOOT_CODE_SIZE])?;
    tracing::info!(
        "installed GRUB for BIOS: core.img ({} sectors) at LBA {}",
        core.len() / SECTOR_BYTES,
        part.first_lba
    );
    Ok(())
}

fn bios_grub_partition(layout: &Layout) -> Result<&disk::Partition, InstallError> {
    let part = layout.partition(BIOS_GRUB).ok_or_else(|| {
        let names: Vec<_> = layout.partitions.iter().map(|p| p.name.as_str()).collect();
        InstallError::NoBiosGrubPartition {
            found: names.join(", "),
        }
    })?;
    if part.type_guid != types::BIOS_BOOT {
        return Err(InstallError::WrongPartitionType {
            found: part.type_guid.to_string(),
            expected: types::BIOS_BOOT.to_string(),
        });
    }
    Ok(part)
}

/// core.img ready to be written at `first_lba`: padded to whole sectors,
/// with diskboot.img's blocklist saying "the next `sectors - 1` sectors from
/// `first_lba + 1`, loaded at segment 0x820", followed by a terminator.
pub fn patch_core_img(core_img: &[u8], first_lba: u64) -> Result<Vec<u8>, InstallError> {
    if core_img.len() < NO_RS_LENGTH_OFFSET + 2 {
        return Err(InstallError::CoreTooSmall(core_img.len()));
    }
    let sectors = core_img.len().div_ceil(SECTOR_BYTES);
    if sectors > MAX_CORE_SECTORS {
        return Err(InstallError::CoreTooLargeToLoad { sectors });
    }
    let entry = |img: &[u8], at: usize| {
        (
            u16::from_le_bytes([img[at + 8], img[at + 9]]),
            u16::from_le_bytes([img[at + 10], img[at + 11]]),
        )
    };
    // grub-mkimage fills in the length and segment; only the LBA is left.
    let (len, segment) = entry(core_img, FIRST_BLOCKLIST);
    if usize::from(len) != sectors - 1 || segment != FIRST_SEGMENT {
        return Err(InstallError::NotDiskboot {
            len,
            segment,
            expected_len: sectors - 1,
        });
    }
    let no_rs = u16::from_le_bytes([
        core_img[NO_RS_LENGTH_OFFSET],
        core_img[NO_RS_LENGTH_OFFSET + 1],
    ]);
    if no_rs == 0xffff {
        return Err(InstallError::CoreVersionMismatch);
    }

    let mut img = core_img.to_vec();
    img.resize(sectors * SECTOR_BYTES, 0);
    // Clear whatever entries are there, down to the terminator.
    let mut at = FIRST_BLOCKLIST;
    while entry(&img, at).0 != 0 {
        img[at..at + BLOCKLIST_SIZE].fill(0);
        at = at
            .checked_sub(BLOCKLIST_SIZE)
            .filter(|&a| a > 0)
            .ok_or(InstallError::NoBlocklistTerminator)?;
    }
    // The rest of core.img is contiguous: one entry and a terminator.
    let first = &mut img[FIRST_BLOCKLIST..SECTOR_BYTES];
    first[0..8].copy_from_slice(&(first_lba + 1).to_le_bytes());
    first[8..10].copy_from_slice(&len.to_le_bytes());
    first[10..12].copy_from_slice(&FIRST_SEGMENT.to_le_bytes());
    img[FIRST_BLOCKLIST - BLOCKLIST_SIZE..FIRST_BLOCKLIST].fill(0);
    Ok(img)
}

/// boot.img for a disk whose first sector is `mbr`, loading core.img from
/// `core_lba`: the BIOS parameter block area and everything from the disk
/// signature on come from `mbr`; the boot drive is the one the BIOS passes,
/// with GRUB's fix-up of bogus hard-disk drive numbers enabled (as
/// grub-install does for a hard disk).
pub fn patch_boot_img(
    boot_img: &[u8],
    mbr: &[u8],
    core_lba: u64,
) -> Result<[u8; BOOT_IMG_SIZE], InstallError> {
    let boot: [u8; BOOT_IMG_SIZE] = boot_img
        .try_into()
        .map_err(|_| InstallError::BootImgSize(boot_img.len()))?;
    if boot[510..] != [0x55, 0xaa] {
        return Err(InstallError::BootImgLayout(
            "no boot signature 55 AA at byte 510",
        ));
    }
    if boot[KERNEL_ADDRESS_OFFSET..KERNEL_ADDRESS_OFFSET + 2] != [0x00, 0x80] {
        return Err(InstallError::BootImgLayout(
            "no load address 0x8000 at byte 0x5a",
        ));
    }
    if boot[DRIVE_CHECK_OFFSET] != 0xeb
        && boot[DRIVE_CHECK_OFFSET..DRIVE_CHECK_OFFSET + 2] != [0x90, 0x90]
    {
        return Err(InstallError::BootImgLayout(
            "no drive-check jump at byte 0x66",
        ));
    }
    if mbr.len() != SECTOR_BYTES || mbr[510..] != [0x55, 0xaa] {
        return Err(InstallError::NoMbr);
    }
    let mut out = boot;
    out[BPB_START..BPB_END].copy_from_slice(&mbr[BPB_START..BPB_END]);
    out[KERNEL_SECTOR_OFFSET..KERNEL_SECTOR_OFFSET + 8].copy_from_slice(&core_lba.to_le_bytes());
    out[BOOT_DRIVE_OFFSET] = 0xff;
    out[DRIVE_CHECK_OFFSET..DRIVE_CHECK_OFFSET + 2].copy_from_slice(&[0x90, 0x90]);
    out[WINDOWS_NT_MAGIC..].copy_from_slice(&mbr[WINDOWS_NT_MAGIC..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for grub-mkimage's output: `sectors` sectors whose first
    /// one ends in the blocklist grub-mkimage leaves (start 2, the length,
    /// segment 0x820).
    fn fake_core(sectors: usize, extra: usize) -> Vec<u8> {
        let mut img = vec![0xa5u8; (sectors - 1) * SECTOR_BYTES + extra];
        // diskboot.img: code at the start, zeros up to the blocklist.
        img[..0x100].fill(0x11);
        img[0x100..SECTOR_BYTES].fill(0);
        let len = (img.len().div_ceil(SECTOR_BYTES) - 1) as u16;
        let b = &mut img[FIRST_BLOCKLIST..SECTOR_BYTES];
        b[0..8].copy_from_slice(&2u64.to_le_bytes());
        b[8..10].copy_from_slice(&len.to_le_bytes());
        b[10..12].copy_from_slice(&FIRST_SEGMENT.to_le_bytes());
        img[FIRST_BLOCKLIST - BLOCKLIST_SIZE..FIRST_BLOCKLIST].fill(0);
        img[NO_RS_LENGTH_OFFSET..NO_RS_LENGTH_OFFSET + 2].copy_from_slice(&0x75bu16.to_le_bytes());
        img
    }

    fn fake_boot() -> Vec<u8> {
        let mut b = vec![0xccu8; BOOT_IMG_SIZE];
        b[KERNEL_ADDRESS_OFFSET..KERNEL_ADDRESS_OFFSET + 2].copy_from_slice(&[0x00, 0x80]);
        b[KERNEL_SECTOR_OFFSET..KERNEL_SECTOR_OFFSET + 8].copy_from_slice(&1u64.to_le_bytes());
        b[DRIVE_CHECK_OFFSET..DRIVE_CHECK_OFFSET + 2].copy_from_slice(&[0xeb, 0x05]);
        b[510..].copy_from_slice(&[0x55, 0xaa]);
        b
    }

    #[test]
    fn core_blocklist_points_at_the_following_sectors() {
        let core = fake_core(289, 30);
        let img = patch_core_img(&core, 2048).unwrap();
        assert_eq!(img.len(), 289 * SECTOR_BYTES);
        let b = &img[FIRST_BLOCKLIST..SECTOR_BYTES];
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 2049);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 288);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 0x820);
        assert!(img[FIRST_BLOCKLIST - BLOCKLIST_SIZE..FIRST_BLOCKLIST]
            .iter()
            .all(|&x| x == 0));
        // Everything else is core.img as given, then zero padding.
        assert_eq!(
            img[..FIRST_BLOCKLIST - BLOCKLIST_SIZE],
            core[..FIRST_BLOCKLIST - BLOCKLIST_SIZE]
        );
        assert_eq!(img[SECTOR_BYTES..core.len()], core[SECTOR_BYTES..]);
        assert!(img[core.len()..].iter().all(|&x| x == 0));
    }

    #[test]
    fn stale_blocklist_entries_are_cleared() {
        let mut core = fake_core(10, 0);
        // A second entry below the first, as a fragmented install leaves.
        let second = FIRST_BLOCKLIST - BLOCKLIST_SIZE;
        core[second..second + 8].copy_from_slice(&77u64.to_le_bytes());
        core[second + 8..second + 10].copy_from_slice(&3u16.to_le_bytes());
        let img = patch_core_img(&core, 100).unwrap();
        assert!(img[second..FIRST_BLOCKLIST].iter().all(|&x| x == 0));
        assert_eq!(
            u64::from_le_bytes(
                img[FIRST_BLOCKLIST..FIRST_BLOCKLIST + 8]
                    .try_into()
                    .unwrap()
            ),
            101
        );
    }

    #[test]
    fn bad_core_images_are_refused() {
        assert!(matches!(
            patch_core_img(&[0; 500], 2048),
            Err(InstallError::CoreTooSmall(500))
        ));
        assert!(matches!(
            patch_core_img(&fake_core(MAX_CORE_SECTORS + 1, 1), 2048),
            Err(InstallError::CoreTooLargeToLoad { sectors }) if sectors == MAX_CORE_SECTORS + 1
        ));
        assert!(patch_core_img(&fake_core(MAX_CORE_SECTORS, 0), 2048).is_ok());
        // Not diskboot: wrong length, wrong segment.
        let mut core = fake_core(10, 0);
        core[FIRST_BLOCKLIST + 8] = 3;
        assert!(matches!(
            patch_core_img(&core, 2048),
            Err(InstallError::NotDiskboot {
                len: 3,
                expected_len: 8,
                ..
            })
        ));
        let mut core = fake_core(10, 0);
        core[FIRST_BLOCKLIST + 10] = 0;
        assert!(matches!(
            patch_core_img(&core, 2048),
            Err(InstallError::NotDiskboot { segment: 0x800, .. })
        ));
        let mut core = fake_core(10, 0);
        core[NO_RS_LENGTH_OFFSET..NO_RS_LENGTH_OFFSET + 2].fill(0xff);
        assert!(matches!(
            patch_core_img(&core, 2048),
            Err(InstallError::CoreVersionMismatch)
        ));
        // No terminator anywhere below the first entry.
        let mut core = fake_core(10, 0);
        for at in (0..=FIRST_BLOCKLIST - BLOCKLIST_SIZE)
            .rev()
            .step_by(BLOCKLIST_SIZE)
        {
            core[at + 8] = 1;
        }
        assert!(matches!(
            patch_core_img(&core, 2048),
            Err(InstallError::NoBlocklistTerminator)
        ));
    }

    #[test]
    fn boot_img_gets_the_core_lba_and_keeps_the_partition_table() {
        let mut mbr = [0u8; SECTOR_BYTES];
        mbr[BPB_START..BPB_END].fill(0x42);
        for (i, b) in mbr[WINDOWS_NT_MAGIC..510].iter_mut().enumerate() {
            *b = i as u8;
        }
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        let boot = fake_boot();
        let out = patch_boot_img(&boot, &mbr, 0x1_0000_0800).unwrap();
        assert_eq!(out[..BPB_START], boot[..BPB_START]);
        assert!(out[BPB_START..BPB_END].iter().all(|&b| b == 0x42));
        assert_eq!(
            out[KERNEL_SECTOR_OFFSET..KERNEL_SECTOR_OFFSET + 8],
            [0x00, 0x08, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(out[BOOT_DRIVE_OFFSET], 0xff);
        assert_eq!(
            out[DRIVE_CHECK_OFFSET..DRIVE_CHECK_OFFSET + 2],
            [0x90, 0x90]
        );
        assert_eq!(
            out[DRIVE_CHECK_OFFSET + 2..WINDOWS_NT_MAGIC],
            boot[DRIVE_CHECK_OFFSET + 2..WINDOWS_NT_MAGIC]
        );
        assert_eq!(out[WINDOWS_NT_MAGIC..], mbr[WINDOWS_NT_MAGIC..]);
    }

    #[test]
    fn bad_boot_images_and_mbrs_are_refused() {
        let mut mbr = [0u8; SECTOR_BYTES];
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(
            patch_boot_img(&[0; 440], &mbr, 1),
            Err(InstallError::BootImgSize(440))
        );
        let mut boot = fake_boot();
        boot[KERNEL_ADDRESS_OFFSET + 1] = 0x70;
        assert!(matches!(
            patch_boot_img(&boot, &mbr, 1),
            Err(InstallError::BootImgLayout(_))
        ));
        let mut boot = fake_boot();
        boot[511] = 0;
        assert!(matches!(
            patch_boot_img(&boot, &mbr, 1),
            Err(InstallError::BootImgLayout(_))
        ));
        assert_eq!(
            patch_boot_img(&fake_boot(), &[0u8; SECTOR_BYTES], 1),
            Err(InstallError::NoMbr)
        );
    }

    #[test]
    fn the_prefix_names_the_esp_by_its_partition_number() {
        assert_eq!(disk_prefix(2, "/EFI/debian").unwrap(), "(,gpt2)/EFI/debian");
        assert!(disk_prefix(0, "/EFI/debian").is_err());
        assert!(disk_prefix(129, "/EFI/debian").is_err());
        assert!(disk_prefix(2, "EFI/debian").is_err());
        assert!(disk_prefix(2, "/EFI/deb ian").is_err());
        assert!(disk_prefix(2, "/EFI/x\nnormal").is_err());
    }
}
