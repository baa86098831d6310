//! The arm64 UEFI boot path, booted for real: QEMU `virt` with AAVMF,
//! Debian's signed arm64 GRUB as /EFI/BOOT/BOOTAA64.EFI on an ESP written
//! by the project's FAT writer, bootloader/grub.cfg, Debian's arm64 kernel
//! (an uncompressed Image with an EFI stub) and an initramfs of os-init
//! built for aarch64 plus the module closure, and two busybox roots whose
//! inits say which slot they are.
//!
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
use common::abdisk::{self, grub_cfg, read_esp_file, AbDisk};
use common::boot::{busybox_for, busybox_root_with, deb_tree, file_bytes, kernel_and_initrd_for};
use common::fixtures::debian_package_deb_for;
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

#[track_caller]
fn assert_console(what: &str, console: &str, needle: &str) {
    assert!(
        console.contains(needle),
        "boot {what}: the console has no {needle:?}; its tail:\n{}",
        tail(console, 40)
    );
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
    let grub = deb_tree(
        &debian_package_deb_for("grub-efi-arm64-signed", "arm64"),
        &mut store,
    );
    let grub_efi = file_bytes(
        &grub,
        &store,
        "usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",
    );

    let busybox = busybox_for("arm64", &mut store);
    let (slot_a, slot_b) = (tmp.path().join("a.squashfs"), tmp.path().join("b.squashfs"));
    busybox_root_with(
        &mut store,
        &busybox,
        "echo \"root-init: slot a $(cat /proc/cmdline)\"",
        &slot_a,
    );
    busybox_root_with(
        &mut store,
        &busybox,
        "echo \"root-init: slot b $(cat /proc/cmdline)\"",
        &slot_b,
    );

    let cfg = grub_cfg("build-image arm64 test", CMDLINE);
    let esp_files: Vec<(&str, &[u8])> = vec![
        ("/EFI/BOOT/BOOTAA64.EFI", &grub_efi),
        // Debian's signed GRUB reads $prefix/grub.cfg, prefix /EFI/debian.
        ("/EFI/debian/grub.cfg", cfg.as_bytes()),
        ("/a/vmlinuz", &k.vmlinuz),
        ("/a/initrd", &k.initrd),
        ("/b/vmlinuz", &k.vmlinuz),
        ("/b/initrd", &k.initrd),
    ];
    let vars = tmp.path().join("AAVMF_VARS.fd");
    fresh_vars(AAVMF_VARS, &vars);
    let disk_path = tmp.path().join("disk.img");

    // 1. The default slot.
    let mut env = GrubEnv::new();
    env.set("default_slot", "a").unwrap();
    env.set("trial_slot", "").unwrap();
    let slots = (slot_a.as_path(), slot_b.as_path());
    write_disk(&disk_path, &esp_files, &env, None, slots, &mut store);
    let c = boot("1 (default a)", &disk_path, &vars);
    assert_console("1", &c, "os-init: root root_a is");
    assert_console("1", &c, "root-init: slot a");
    assert_console("1", &c, "BOOT_IMAGE=/a/vmlinuz bi.root=root_a bi.slot=a");
    assert!(!c.contains("root-init: slot b"), "{}", tail(&c, 40));

    // 2. A trial of slot b: booted once, and the trial is consumed.
    env.set("trial_slot", "b").unwrap();
    let layout = write_disk(&disk_path, &esp_files, &env, None, slots, &mut store);
    let c = boot("2 (trial b)", &disk_path, &vars);
    assert_console("2", &c, "os-init: root root_b is");
    assert_console("2", &c, "root-init: slot b");
    assert_console("2", &c, "BOOT_IMAGE=/b/vmlinuz bi.root=root_b bi.slot=b");
    let after = GrubEnv::parse(&read_esp_file(&disk_path, &layout, "/grubenv")).unwrap();
    assert_eq!(after.get("trial_slot"), Some(""), "GRUB left {after:?}");
    assert_eq!(after.get("default_slot"), Some("a"), "GRUB left {after:?}");
    // save_env rewrote the block in place; the backup copy is untouched.
    let bak = read_esp_file(&disk_path, &layout, "/grubenv.bak");
    assert!(
        bak[..] == env.encode().unwrap()[..],
        "/grubenv.bak changed: {:?}",
        GrubEnv::parse(&bak)
    );

    // 3. Nothing committed the trial: back to slot a.
    let c = boot("3 (after the trial)", &disk_path, &vars);
    assert_console("3", &c, "os-init: root root_a is");
    assert_console("3", &c, "root-init: slot a");
    assert!(!c.contains("root-init: slot b"), "{}", tail(&c, 40));

    // 4. A torn primary block: the backup copy decides (default b here).
    let mut env = GrubEnv::new();
    env.set("default_slot", "b").unwrap();
    env.set("trial_slot", "").unwrap();
    let mut torn = env.encode().unwrap();
    torn[..8].copy_from_slice(&[0; 8]);
    write_disk(&disk_path, &esp_files, &env, Some(&torn), slots, &mut store);
    let c = boot("4 (torn /grubenv, backup says b)", &disk_path, &vars);
    assert_console("4", &c, "os-init: root root_b is");
    assert_console("4", &c, "root-init: slot b");
}
