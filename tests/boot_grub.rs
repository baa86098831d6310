//! GRUB's try-once slot selection, booted for real under UEFI (OVMF):
//! Debian's signed GRUB on an ESP written by the project's FAT writer,
//! bootloader/grub.cfg, a GRUB environment block written by
//! boot-contract, and two root slots whose inits say which slot they are.
//!
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
use common::abdisk::{self, grub_cfg, read_env, AbDisk};
use common::boot::{busybox_root, deb_tree, file_bytes, kernel_and_initrd};
use common::fixtures::debian_package_deb;
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

fn boot(disk: &Path, vars: &Path) -> String {
    let (status, console) = Vm::x86_64(768)
        .ovmf(vars)
        .virtio_disk(disk)
        .run(Duration::from_secs(300));
    assert!(
        status.is_some(),
        "QEMU did not power off:\n{}",
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
    let grub = deb_tree(
        &debian_package_deb("grub-efi-amd64-signed", "amd64"),
        &mut store,
    );
    let grub_efi = file_bytes(
        &grub,
        &store,
        "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
    );

    let (slot_a, slot_b) = (tmp.path().join("a.squashfs"), tmp.path().join("b.squashfs"));
    busybox_root(
        &mut store,
        "echo \"root-init: slot a $(cat /proc/cmdline)\"",
        &slot_a,
    );
    busybox_root(
        &mut store,
        "echo \"root-init: slot b $(cat /proc/cmdline)\"",
        &slot_b,
    );

    let cfg = grub_cfg("build-image test", CMDLINE);
    let esp_files: Vec<(&str, &[u8])> = vec![
        ("/EFI/BOOT/BOOTX64.EFI", &grub_efi),
        // Debian's signed GRUB reads $prefix/grub.cfg, prefix /EFI/debian.
        ("/EFI/debian/grub.cfg", cfg.as_bytes()),
        ("/EFI/BOOT/grub.cfg", cfg.as_bytes()),
        ("/a/vmlinuz", &k.vmlinuz),
        ("/a/initrd", &k.initrd),
        ("/b/vmlinuz", &k.vmlinuz),
        ("/b/initrd", &k.initrd),
    ];
    let vars = tmp.path().join("OVMF_VARS.fd");
    fresh_vars(OVMF_VARS, &vars);
    let disk_path = tmp.path().join("disk.img");

    // 1. The default slot.
    let mut env = GrubEnv::new();
    env.set("default_slot", "a").unwrap();
    env.set("trial_slot", "").unwrap();
    let slots = (slot_a.as_path(), slot_b.as_path());
    write_disk(&disk_path, &esp_files, &env, None, slots, &mut store);
    let c = boot(&disk_path, &vars);
    assert!(c.contains("os-init: root root_a is"), "{}", tail(&c, 40));
    assert!(c.contains("root-init: slot a"), "{}", tail(&c, 40));
    assert!(c.contains("bi.slot=a"), "{}", tail(&c, 40));

    // 2. A trial of slot b: booted once, and the trial is consumed.
    env.set("trial_slot", "b").unwrap();
    let layout = write_disk(&disk_path, &esp_files, &env, None, slots, &mut store);
    let c = boot(&disk_path, &vars);
    assert!(c.contains("os-init: root root_b is"), "{}", tail(&c, 40));
    assert!(c.contains("root-init: slot b"), "{}", tail(&c, 40));
    let after = read_env(&disk_path, &layout);
    assert_eq!(after.get("trial_slot"), Some(""), "GRUB left {after:?}");
    assert_eq!(after.get("default_slot"), Some("a"));

    // 3. Nothing committed the trial: back to slot a.
    let c = boot(&disk_path, &vars);
    assert!(c.contains("root-init: slot a"), "{}", tail(&c, 40));

    // 4. A torn primary block: the backup copy decides (default b here).
    let mut env = GrubEnv::new();
    env.set("default_slot", "b").unwrap();
    env.set("trial_slot", "").unwrap();
    let mut torn = env.encode().unwrap();
    torn[..8].copy_from_slice(b"\0\0\0\0\0\0\0\0");
    write_disk(&disk_path, &esp_files, &env, Some(&torn), slots, &mut store);
    let c = boot(&disk_path, &vars);
    assert!(c.contains("root-init: slot b"), "{}", tail(&c, 40));
}
