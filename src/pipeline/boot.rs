//! The boot files of a build, taken from the finished root: the kernel,
//! the initramfs (os-init and the closure of the boot modules), the signed
//! UEFI boot chain and GRUB's BIOS files.

use std::io::Write;

use anyhow::{anyhow, Context, Result};

use super::plan::BuildPlan;
use super::root::Root;
use crate::bootloader::{bios, esp, rpi};
use crate::cli::build::Format;
use crate::initramfs;
use crate::kmod::ModuleIndex;
use crate::progress::{Event, Reporter};

/// What every boot medium of the build carries.
pub struct BootFiles {
    pub vmlinuz: Vec<u8>,
    /// gzip-compressed newc cpio.
    pub initrd: Vec<u8>,
    pub efi: esp::EfiFiles,
    /// The distribution's signed GRUB.
    pub grub: Vec<u8>,
    /// shim and MokManager, when the image has them.
    pub shim: Option<Vec<u8>>,
    pub mok_manager: Option<Vec<u8>>,
    /// GRUB's i386-pc files (x86_64 images with grub-pc-bin).
    pub grub_pc: Option<bios::GrubPc>,
    /// The Raspberry Pi boot files (`--format rpi`).
    pub rpi: Option<rpi::CardFiles>,
}

impl BootFiles {
    pub fn shim_pair(&self) -> Option<(&[u8], Option<&[u8]>)> {
        self.shim
            .as_deref()
            .map(|s| (s, self.mok_manager.as_deref()))
    }
}

/// The kernel, the initramfs and the boot loaders from the finished root;
/// the Pi boot files too when the build makes a card. The initramfs of
/// an arm64 image loads every Pi board's SD drivers, so that a card, and
/// every upgrade of it, can read its own slots.
pub fn boot_files(
    plan: &BuildPlan,
    kver: &str,
    reporter: &dyn Reporter,
    root: &mut Root,
) -> Result<BootFiles> {
    let arch = plan.arch.as_str();
    reporter.event(Event::Stage {
        message: "initramfs: os-init and the boot modules".into(),
    });
    let ed = root.edit();
    let vmlinuz = ed
        .read_following(&format!("boot/vmlinuz-{kver}"))?
        .ok_or_else(|| anyhow!("kernel {kver}: /boot/vmlinuz-{kver} is not in the image"))?;
    let os_init = ed
        .read("usr/lib/build-image/os-init")?
        .ok_or_else(|| anyhow!("no /usr/lib/build-image/os-init in the image"))?;
    let efi = esp::efi_files(arch)?;
    let grub = ed.read(efi.grub)?.ok_or_else(|| {
        anyhow!(
            "/{} is not in the image: the flavor's bootloader packages must include the signed GRUB",
            efi.grub
        )
    })?;
    let shim = ed.read(efi.shim)?;
    let mok_manager = ed.read(efi.mok_manager)?;

    let idx = ModuleIndex::scan(&root.tree, &root.store, kver)?;
    let boards = if arch == "arm64" {
        rpi::boards()?
    } else {
        Vec::new()
    };
    let board_modules = rpi::sd_modules(&boards);
    let wanted: Vec<&str> = initramfs::BOOT_MODULES
        .iter()
        .copied()
        .chain(board_modules.iter().map(String::as_str))
        .collect();
    let rpi = match (&plan.flavor.rpi, plan.wants(Format::Rpi)) {
        (Some(flavor_rpi), true) => {
            let extra: Vec<&str> = [Some(flavor_rpi.config.as_str()), plan.rpi_config.as_deref()]
                .into_iter()
                .flatten()
                .filter(|t| !t.trim().is_empty())
                .collect();
            let files = rpi::card_files(
                &root.edit(),
                flavor_rpi,
                &plan.flavor.origin,
                &boards,
                &idx,
                &extra,
            )?;
            for b in &files.boards {
                if let Some(p) = &b.problem {
                    tracing::warn!("Raspberry Pi card: {} ({}): {p}", b.board, b.description);
                }
            }
            Some(files)
        }
        _ => None,
    };
    let (cpio, loaded) = initramfs::build(&idx, &root.tree, &mut root.store, &os_init, &wanted)?;
    tracing::info!("initramfs: {} modules", loaded.len());
    let initrd = gzip(&cpio).context("compressing the initramfs")?;

    let grub_pc = if arch == "amd64" {
        if root
            .tree
            .lookup_path(bios::I386_PC_DIR.as_bytes())
            .is_some()
        {
            Some(bios::GrubPc::from_tree(&root.tree, &root.store)?)
        } else {
            tracing::warn!(
                "the image has no /{}: the flavor lacks grub-pc-bin, so the disk boots with UEFI only",
                bios::I386_PC_DIR
            );
            None
        }
    } else {
        None
    };
    Ok(BootFiles {
        vmlinuz,
        initrd,
        efi,
        grub,
        shim,
        mok_manager,
        grub_pc,
        rpi,
    })
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data)?;
    Ok(enc.finish()?)
}
