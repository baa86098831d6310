//! The initramfs stage: the archive the kernel unpacks before `os-init`
//! runs. [`cpio::write`] turns an [`FsTree`](crate::tree::FsTree) into the
//! reproducible newc archive the kernel reads.

pub mod cpio;

use anyhow::{Context, Result};

use crate::kmod::ModuleIndex;
use crate::tree::edit::Editor;
use crate::tree::{ContentStore, FsTree, InodeKind, Metadata};

/// Modules os-init loads when the kernel has them (built-in or missing
/// ones are skipped): storage controllers, USB and MMC storage, and the
/// filesystems of the slots, the persistent partition, the ESP and a live
/// ISO; hardware watchdogs.
pub const BOOT_MODULES: &[&str] = &[
    // Storage: virtual, NVMe, SATA/SCSI, USB, SD/eMMC, CD.
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_scsi",
    "nvme",
    "ahci",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "xhci_pci",
    "xhci_plat_hcd",
    "ehci_pci",
    "ehci_platform",
    "ohci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
    "mmc_block",
    "sdhci_pci",
    "sdhci_acpi",
    "sdhci_of_arasan",
    "sdhci_iproc",
    "dw_mmc_rockchip",
    "mmc_spi",
    // Filesystems.
    "squashfs",
    "overlay",
    "ext4",
    // ext4 asks the crypto API for crc32c by name, not by depends=.
    "crc32c_generic",
    "crc32c_intel",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "isofs",
    "loop",
    // Hardware watchdogs, so that os-init can arm one for a trial boot and
    // systemd (RuntimeWatchdogSec=) finds it: QEMU's and Intel chipsets'
    // (i6300esb, iTCO_wdt), AMD's (sp5100_tco), the ACPI WDAT table's,
    // Arm SBSA and the Raspberry Pi's. Not softdog: a kernel timer resets
    // nothing when the kernel itself hangs, and as the first watchdog it
    // would hide the real one from systemd.
    "i6300esb",
    "iTCO_wdt",
    "sp5100_tco",
    "wdat_wdt",
    "sbsa_gwdt",
    "bcm2835_wdt",
];

/// The initramfs: os-init as /init, the closure of `wanted` modules (those
/// the kernel has), uncompressed, and the load list os-init reads. Returns
/// the newc archive and the modules it loads, in order.
pub fn build(
    kernel: &ModuleIndex,
    tree: &FsTree,
    store: &mut ContentStore,
    os_init: &[u8],
    wanted: &[&str],
) -> Result<(Vec<u8>, Vec<String>)> {
    let present: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|m| {
            let n = crate::kmod::normalise(m);
            kernel.modules.contains_key(&n) || kernel.builtin.contains(&n)
        })
        .collect();
    let closure = kernel.closure(&present)?;
    let mut initrd = FsTree::new();
    // Everything owned by root, at time 0: the archive is reproducible.
    let mut ed = Editor {
        tree: &mut initrd,
        store,
        mtime: 0,
    };
    ed.write("init", os_init, 0o755)?;
    let mut load = String::new();
    let mut names = Vec::new();
    for m in &closure {
        let InodeKind::File { content } = &tree.inode(m.inode).kind else {
            anyhow::bail!("module {}: {} is not a regular file", m.info.name, m.path);
        };
        // Decompressed here, so os-init's finit_module needs no
        // MODULE_INIT_COMPRESSED_FILE and the kernel no in-kernel
        // decompressor (Debian 13's modules are `.ko.xz`).
        let data = crate::kmod::read_module(ed.store, content, &m.path)
            .with_context(|| format!("reading module {}", m.path))?;
        let path = format!(
            "lib/modules/{}/{}",
            kernel.version,
            crate::kmod::uncompressed_path(&m.rel_path)
        );
        ed.write(&path, &data, 0o644)?;
        load.push('/');
        load.push_str(&path);
        load.push('\n');
        names.push(m.info.name.clone());
    }
    ed.write("lib/modules/os-init.load", load.as_bytes(), 0o644)?;
    for d in ["proc", "sys", "run", "sysroot", "tmp", "dev"] {
        ed.mkdir(d, 0o755)?;
    }
    let dev = ed.lookup("dev").context("the initramfs has no /dev")?;
    let console = initrd.add_inode(
        InodeKind::CharDevice { major: 5, minor: 1 },
        Metadata::new(0o600, 0, 0, 0),
    );
    initrd.link(dev, b"console".to_vec(), console);
    let mut bytes = Vec::new();
    cpio::write(&initrd, store, &mut bytes)?;
    Ok((bytes, names))
}
