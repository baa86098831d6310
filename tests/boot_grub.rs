//! GRUB's try-once slot selection, booted for real under UEFI (OVMF):
//! Debian's signed GRUB on an ESP written by the project's FAT writer,
//! bootloader/grub.cfg, a GRUB environment block written by
//! boot-contract, and two root slots whose inits say which slot they are.
//!
//! The cycle (`abdisk::try_once_cycle`, shared with the arm64 test):
//! 1. default_slot=a boots slot a;
//! 2. trial_slot=b boots slot b once — GRUB clears trial_slot before it
//!    boots, so
//! 3. the next boot (same disk, nothing else changed) is slot a again;
//! 4. with the primary block /grubenv corrupted, GRUB uses /grubenv.bak.

mod common;

use std::path::Path;
use std::time::Duration;

use boot_contract::grubenv::GrubEnv;
use build_image::disk::{Arch, Layout};
use build_image::tree::ContentStore;
use common::abdisk::{self, grub_cfg, slot_roots, try_once_cycle, try_once_esp, AbDisk};
use common::boot::{host_busybox, kernel_and_initrd, signed_grub_efi};
use common::qemu::{fresh_vars, tail, Vm, OVMF_VARS};

const ESP_SIZE: u64 = 64 << 20;
const CMDLINE: &str = "console=ttyS0 panic=-1 bi.persist=off";

/// Writes the A/B disk with the given GRUB environment (`primary`: the
/// bytes of /grubenv instead).
fn write_disk(
    path: &Path,
    esp_files: &[(&str, &[u8])],
    env: &GrubEnv,
    primary: Option<&[u8]>,
    slots: (&Path, &Path),
    store: &mut ContentStore,
) -> Layout {
    let spec = AbDisk {
        arch: Arch::X86_64,
        esp_size: ESP_SIZE,
        persist_size: 16 << 20,
        seed: b"grub-test",
        volume_id: 0x1234_5678,
        esp_files,
        env,
        primary,
        slots,
    };
    abdisk::write(path, &spec, store).0
}

/// Boots the disk once; panics with the console tail unless the guest
/// powered itself off.
fn boot(what: &str, disk: &Path, vars: &Path) -> String {
    let (status, console) = Vm::x86_64(768)
        .ovmf(vars)
        .virtio_disk(disk)
        .run(Duration::from_secs(300));
    assert!(
        status.is_some(),
        "boot {what}: QEMU did not power off:\n{}",
        tail(&console, 40)
    );
    console
}

#[test]
fn grub_boots_default_slot_and_a_trial_slot_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let k = kernel_and_initrd(
        &mut store,
        &["virtio_pci", "virtio_blk", "squashfs", "overlay"],
    );
    let grub_efi = signed_grub_efi("amd64", &mut store);

    let (slot_a, slot_b) = slot_roots(&mut store, &host_busybox(), tmp.path());

    let cfg = grub_cfg("build-image test", CMDLINE);
    let mut esp_files = try_once_esp("/EFI/BOOT/BOOTX64.EFI", &grub_efi, &cfg, &k);
    esp_files.push(("/EFI/BOOT/grub.cfg", cfg.as_bytes()));
    let vars = tmp.path().join("OVMF_VARS.fd");
    fresh_vars(OVMF_VARS, &vars);
    let disk_path = tmp.path().join("disk.img");
    let slots = (slot_a.as_path(), slot_b.as_path());
    try_once_cycle(
        &disk_path,
        |env, primary| write_disk(&disk_path, &esp_files, env, primary, slots, &mut store),
        |step| boot(step, &disk_path, &vars),
    );
}
