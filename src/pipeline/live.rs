//! The live/installer ISO of a build: the root filesystem, kernel and
//! initrd for the live system, the boot chain for BIOS and UEFI, and what
//! `os-agent install` writes to a disk (the A/B disk image's head — MBR,
//! GPT, bios_grub, ESP — and the root filesystem for `root_a`), described
//! by `install/install.json` (contract: `boot_contract::live`).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use boot_contract::live;
use hadris_fs::Content;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::bootloader::bios::BiosImages;
use crate::bootloader::esp::{self, BootChain, EfiFiles};
use crate::disk::{self, Layout};
use crate::iso;
use crate::tree::ContentStore;

/// The live menu, with `@NAME@`, `@LABEL@` and `@CMDLINE@` to fill in.
const LIVE_GRUB_CFG: &str = include_str!("../../bootloader/live-grub.cfg");
/// The config of the ISO's EFI image, with `@LABEL@` to fill in.
const ESP_GRUB_CFG: &str = include_str!("../../bootloader/live-esp-grub.cfg");
/// The head of the disk image is stored in blocks of this size; blocks of
/// zeros are left out.
const CHUNK: usize = 64 << 10;
/// Where the head of the disk image is stored on the ISO.
const HEAD_FILE: &str = "install/head.bin";

pub struct LiveInputs<'a> {
    pub flavor: &'a str,
    pub arch: &'a str,
    pub version: &'a str,
    /// Menu title, e.g. `Debian GNU/Linux 12 (bookworm) 1.0.0`.
    pub title: &'a str,
    pub cmdline: &'a str,
    pub mtime: i64,
    pub vmlinuz: &'a [u8],
    pub initrd: &'a [u8],
    /// The root SquashFS.
    pub rootfs: &'a Path,
    /// The A/B disk image and its layout.
    pub disk: &'a File,
    pub layout: &'a Layout,
    pub efi: &'a EfiFiles,
    pub grub: &'a [u8],
    pub shim: Option<(&'a [u8], Option<&'a [u8]>)>,
    /// boot.img and the El Torito core image, for BIOS boot.
    pub bios: Option<&'a BiosImages>,
    /// A directory for the ISO's temporary files.
    pub spool: &'a Path,
}

/// The ISO volume label of a build.
pub fn label(flavor: &str, arch: &str, version: &str) -> String {
    iso::volume_id(flavor, arch, version)
}

pub fn live_grub_cfg(title: &str, label: &str, cmdline: &str) -> String {
    LIVE_GRUB_CFG
        .replace("@NAME@", title)
        .replace("@LABEL@", label)
        .replace("@CMDLINE@", cmdline)
}

/// Writes the ISO to `out`; returns its size.
pub fn write(i: &LiveInputs<'_>, out: &File) -> Result<u64> {
    let label = label(i.flavor, i.arch, i.version);
    let esp_cfg = ESP_GRUB_CFG.replace("@LABEL@", &label);
    let chain = BootChain {
        grub: i.grub,
        shim: i.shim,
        files: i.efi,
        grub_cfg: &esp_cfg,
    };
    let mut esp_store = ContentStore::new_in(i.spool)?;
    let esp_tree = esp::live_tree(&chain, &mut esp_store, i.mtime)?;
    let serial = u32::from_le_bytes(Sha256::digest(label.as_bytes())[..4].try_into()?);
    let esp = iso::esp_image(&esp_tree, &esp_store, i.mtime, serial)?;

    let head_path = i.spool.join("head.bin");
    let manifest = install_manifest(i, &head_path)?;
    let rootfs =
        hadris_fs::host::file(i.rootfs).map_err(|e| anyhow!("{}: {e}", i.rootfs.display()))?;
    let head =
        hadris_fs::host::file(&head_path).map_err(|e| anyhow!("{}: {e}", head_path.display()))?;
    let spec = iso::Spec {
        volume_id: label.clone(),
        application_id: format!(
            "build-image {} {} {} {}",
            env!("CARGO_PKG_VERSION"),
            i.flavor,
            i.arch,
            i.version
        ),
        mtime: i.mtime,
        files: [
            (
                "boot/grub/grub.cfg".into(),
                Content::bytes(live_grub_cfg(i.title, &label, i.cmdline)),
            ),
            ("boot/vmlinuz".into(), Content::bytes(i.vmlinuz.to_vec())),
            ("boot/initrd".into(), Content::bytes(i.initrd.to_vec())),
            (live::ROOTFS.into(), rootfs),
            (HEAD_FILE.into(), head),
            (
                live::MANIFEST.into(),
                Content::bytes(serde_json::to_vec_pretty(&manifest)?),
            ),
        ]
        .into_iter()
        // Started from El Torito, GRUB 2.12 takes the whole CD as its
        // device ($root is (cd0), not the EFI image), so Debian 13's GRUB,
        // which has no embedded config, reads (cd0)/EFI/debian/grub.cfg:
        // the ISO 9660 side carries the EFI image's configs too.
        .chain(
            esp::GRUB_CFG_PATHS
                .iter()
                .map(|p| (p.to_string(), Content::bytes(esp_cfg.clone()))),
        )
        .collect(),
        bios: i.bios,
        esp,
    };
    iso::write(&spec, out)
}

/// Writes the non-zero blocks of the disk image's head (everything up to
/// the end of the ESP) to `head_path` and returns the install manifest.
fn install_manifest(i: &LiveInputs<'_>, head_path: &Path) -> Result<serde_json::Value> {
    let part = |name: &str| {
        i.layout
            .partition(name)
            .ok_or_else(|| anyhow!("the disk layout has no {name} partition"))
    };
    let esp = part(disk::ESP)?;
    let root_a = part(disk::ROOT_A)?;
    let root_b = part(disk::ROOT_B)?;
    let head_size = esp.range().end;
    let mut head =
        File::create(head_path).with_context(|| format!("creating {}", head_path.display()))?;
    let mut chunks: Vec<[u64; 2]> = Vec::new();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < head_size {
        let n = CHUNK.min((head_size - at) as usize);
        i.disk
            .read_exact_at(&mut buf[..n], at)
            .context("reading the disk image back")?;
        hash.update(&buf[..n]);
        if buf[..n].iter().any(|&b| b != 0) {
            head.write_all(&buf[..n])
                .with_context(|| format!("writing {}", head_path.display()))?;
            match chunks.last_mut() {
                Some(last) if last[0] + last[1] == at => last[1] += n as u64,
                _ => chunks.push([at, n as u64]),
            }
        }
        at += n as u64;
    }
    head.sync_all()?;
    let (rootfs_sha, rootfs_size) = crate::cache::hash_file(i.rootfs)?;
    let image_size = i.disk.metadata()?.len();
    Ok(json!({
        "format": live::MANIFEST_FORMAT,
        "image": {"id": i.flavor, "version": i.version, "arch": i.arch},
        "sector_size": disk::SECTOR,
        "image_size": image_size,
        // persist, aligned, and the backup GPT after it.
        "min_device_size": image_size + boot_contract::persist::MIN_SIZE + disk::ALIGN,
        "head": {
            "file": HEAD_FILE,
            "size": head_size,
            "sha256": hex::encode(hash.finalize()),
            "chunks": chunks,
        },
        "rootfs": {"file": live::ROOTFS, "size": rootfs_size, "sha256": rootfs_sha.hex()},
        "root_a": {"offset": root_a.offset(), "size": root_a.size()},
        "root_b": {"offset": root_b.offset(), "size": root_b.size()},
    }))
}
