//! The arm64 UEFI boot path, booted for real: QEMU `virt` with AAVMF,
//! Debian's signed arm64 GRUB as /EFI/BOOT/BOOTAA64.EFI on an ESP written
//! by the project's FAT writer, bootloader/grub.cfg, Debian's arm64 kernel
//! (an uncompressed Image with an EFI stub) and an initramfs of os-init
//! built for aarch64 plus the module closure, and two busybox roots whose
//! inits say which slot they are.
//!
//! The cycle (`abdisk::try_once_cycle`, shared with the x86_64 test):
//! 1. default_slot=a boots slot a;
//! 2. trial_slot=b boots slot b once, and GRUB has cleared trial_slot in
//!    the env block on the ESP (read back with mtools);
//! 3. the next boot of the same disk is slot a again;
//! 4. with the primary block /grubenv torn, GRUB uses /grubenv.bak.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use boot_contract::grubenv::GrubEnv;
use build_image::disk::{self, Arch, Layout};
use build_image::tree::ContentStore;
use common::abdisk::{self, grub_cfg, slot_roots, try_once_cycle, try_once_esp, AbDisk};
use common::boot::{busybox_for, kernel_and_initrd_for, signed_grub_efi};
use common::qemu::{fresh_vars, tail, Vm, AAVMF_CODE, AAVMF_VARS};

/// Two uncompressed arm64 kernels (~33 MB each) and their initrds.
const ESP_SIZE: u64 = 128 << 20;
const CMDLINE: &str = "console=ttyAMA0 panic=-1";
/// One boot takes well under a minute under TCG on 2 busy cores; past this
/// something is stuck (GRUB's menu, a kernel waiting for its root).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes the arm64 A/B disk (no bios_grub, no persist) with the given
/// GRUB environment in both env blocks, or with `primary` as the bytes of
/// /grubenv when given.
fn write_disk(
    path: &Path,
    esp_files: &[(&str, &[u8])],
    env: &GrubEnv,
    primary: Option<&[u8]>,
    slots: (&Path, &Path),
    store: &mut ContentStore,
) -> Layout {
    let spec = AbDisk {
        arch: Arch::Aarch64,
        esp_size: ESP_SIZE,
        persist_size: 0,
        seed: b"grub-arm64-test",
        volume_id: 0x0a64_0a64,
        esp_files,
        env,
        primary,
        slots,
    };
    let (layout, _) = abdisk::write(path, &spec, store);
    assert!(
        layout.partition(disk::BIOS_GRUB).is_none() && layout.partition(disk::PERSIST).is_none(),
        "the arm64 layout without persist has only ESP, root_a, root_b: {layout:?}"
    );
    layout
}

/// Boots the disk once; panics with the console tail unless the guest
/// powered itself off within [`BOOT_TIMEOUT`].
fn boot(what: &str, disk: &Path, vars: &Path) -> String {
    for f in [AAVMF_CODE, AAVMF_VARS] {
        assert!(
            Path::new(f).is_file(),
            "{f} missing: install qemu-efi-aarch64 (from bookworm-backports, see .ci/run)"
        );
    }
    let start = Instant::now();
    let (status, console) = Vm::aarch64(1024)
        .aavmf(vars)
        .virtio_pci_disk(disk)
        // No wait in the firmware's boot manager.
        .args(["-boot", "menu=on,splash-time=0"])
        .run(BOOT_TIMEOUT);
    let console = strip_ansi(&console);
    let took = start.elapsed();
    eprintln!("boot {what}: {:.1} s", took.as_secs_f64());
    let Some(status) = status else {
        panic!(
            "boot {what}: QEMU (aarch64, AAVMF) did not power off within {} s; console tail:\n{}",
            BOOT_TIMEOUT.as_secs(),
            tail(&console, 40)
        );
    };
    assert!(
        status.success(),
        "boot {what}: QEMU exited with {status}; console tail:\n{}",
        tail(&console, 40)
    );
    console
}

/// The console without the terminal control sequences the firmware and
/// GRUB print, so failure messages read as plain text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // ESC [ parameters… final byte (0x40..=0x7e)
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[test]
fn arm64_uefi_grub_boots_default_slot_and_a_trial_slot_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    // virtio and the PCI host bridge are built into Debian's arm64 kernel;
    // the closure keeps only what is a module.
    let k = kernel_and_initrd_for(
        "arm64",
        &mut store,
        &["virtio_pci", "virtio_blk", "squashfs", "overlay"],
    );
    assert!(
        k.vmlinuz.len() > 64 && &k.vmlinuz[56..60] == b"ARM\x64",
        "boot/vmlinuz-{} is not an arm64 Image",
        k.version
    );
    let grub_efi = signed_grub_efi("arm64", &mut store);

    let busybox = busybox_for("arm64", &mut store);
    let (slot_a, slot_b) = slot_roots(&mut store, &busybox, tmp.path());

    let cfg = grub_cfg("build-image arm64 test", CMDLINE);
    let esp_files = try_once_esp("/EFI/BOOT/BOOTAA64.EFI", &grub_efi, &cfg, &k);
    let vars = tmp.path().join("AAVMF_VARS.fd");
    fresh_vars(AAVMF_VARS, &vars);
    let disk_path = tmp.path().join("disk.img");
    let slots = (slot_a.as_path(), slot_b.as_path());
    try_once_cycle(
        &disk_path,
        |env, primary| write_disk(&disk_path, &esp_files, env, primary, slots, &mut store),
        |step| boot(step, &disk_path, &vars),
    );
}
