//! GRUB for BIOS on the A/B disk, booted for real by SeaBIOS (QEMU's
//! default firmware, no -kernel): core.img assembled in-process from
//! Debian's grub-pc-bin in `bios_grub`, boot.img in the MBR, and the same
//! ESP and bootloader/grub.cfg as the UEFI path (tests/boot_grub.rs).
//!
//! 1. default_slot=a boots slot a;
//! 2. trial_slot=b boots slot b once, and GRUB clears trial_slot on disk;
//! 3. the next boot (same disk) is slot a again;
//! 4. OVMF boots the same disk through the UEFI GRUB on the same ESP.
//!
//! A second boot runs trixie's GRUB 2.12 from a core.img assembled the same
//! way, which the host's grub-mkimage (2.06) could not build. The other
//! tests check the installed bytes against what grub-install's setup
//! writes, `sgdisk -v`, and the refusals; tests/grub_coreimg.rs compares
//! core.img itself with grub-mkimage's.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use boot_contract::grubenv::GrubEnv;
use build_image::bootloader::bios::coreimg::CoreSpec;
use build_image::bootloader::bios::{self, BiosImages, InstallError};
use build_image::disk::{self, Arch, Layout};
use build_image::iso;
use build_image::tree::edit::Editor;
use build_image::tree::{ContentStore, FsTree};
use common::abdisk::{self, grub_cfg, read_env, AbDisk};
use common::boot::{busybox_root, deb_tree, file_bytes, kernel_and_initrd};
use common::fixtures::{debian_package_deb, debian_release_deb};
use common::qemu::{fresh_vars, tail, Vm, OVMF_VARS};
use common::require_tool;
use hadris_fs::Content;

const ESP_SIZE: u64 = 64 << 20;
const ESP_VOLUME_ID: u32 = 0x2468_ace0;
const PREFIX: &str = "/EFI/debian";
/// The ESP's partition number in the x86_64 A/B layout (after bios_grub).
const ESP_PARTITION: u32 = 2;
/// `bi.persist=off`: these busybox roots have no mkfs.ext4 for os-init to
/// format `persist` with; slot selection is what is under test.
const CMDLINE: &str = "console=ttyS0 panic=-1 bi.persist=off";

/// boot.img and core.img from Debian's grub-pc-bin, through the same path
/// an image build takes (the package merged into a tree).
fn grub_images(store: &mut ContentStore) -> BiosImages {
    let tree = deb_tree(&debian_package_deb("grub-pc-bin", "amd64"), store);
    bios::GrubPc::from_tree(&tree, store)
        .unwrap()
        .disk_images(ESP_PARTITION, PREFIX)
        .unwrap()
}

/// Writes the A/B disk with the given GRUB environment and installs GRUB
/// for BIOS into it.
fn write_disk(
    path: &Path,
    esp_files: &[(&str, &[u8])],
    env: &GrubEnv,
    slots: (&Path, &Path),
    grub: &BiosImages,
    store: &mut ContentStore,
) -> Layout {
    let spec = AbDisk {
        arch: Arch::X86_64,
        esp_size: ESP_SIZE,
        persist_size: 16 << 20,
        seed: b"bios-test",
        volume_id: ESP_VOLUME_ID,
        esp_files,
        env,
        primary: None,
        slots,
    };
    let (layout, out) = abdisk::write(path, &spec, store);
    assert_eq!(layout.partition_number(disk::ESP), Some(ESP_PARTITION));
    bios::install(&out, &layout, &grub.boot_img, &grub.core_img).unwrap();
    layout
}

/// Boots the disk with SeaBIOS: no -kernel, no pflash.
fn boot(disk: &Path) -> String {
    powered_off(Vm::x86_64(768).virtio_disk(disk))
}

/// Boots the disk with OVMF (UEFI), from a copy of the disk.
fn boot_uefi(disk: &Path, tmp: &Path) -> String {
    let vars = tmp.join("OVMF_VARS.fd");
    fresh_vars(OVMF_VARS, &vars);
    powered_off(Vm::x86_64(768).ovmf(&vars).virtio_disk(disk))
}

fn powered_off(vm: Vm) -> String {
    let (status, console) = vm.run(Duration::from_secs(300));
    assert!(
        status.is_some(),
        "QEMU did not power off:\n{}",
        tail(&console, 40)
    );
    console
}

fn sgdisk_verify(disk: &Path) {
    require_tool("sgdisk", "gdisk");
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sgdisk -v failed:\n{text}");
    assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");
}

#[test]
fn seabios_boots_default_slot_and_a_trial_slot_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let k = kernel_and_initrd(
        &mut store,
        &["virtio_pci", "virtio_blk", "squashfs", "overlay"],
    );
    let grub = grub_images(&mut store);

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
    // The ESP also carries Debian's signed UEFI GRUB: one disk for both
    // firmwares.
    let efi = deb_tree(
        &debian_package_deb("grub-efi-amd64-signed", "amd64"),
        &mut store,
    );
    let grub_efi = file_bytes(
        &efi,
        &store,
        "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
    );
    let cfg = grub_cfg("build-image test", CMDLINE);
    let esp_files: Vec<(&str, &[u8])> = vec![
        ("/EFI/BOOT/BOOTX64.EFI", &grub_efi),
        ("/EFI/debian/grub.cfg", cfg.as_bytes()),
        ("/a/vmlinuz", &k.vmlinuz),
        ("/a/initrd", &k.initrd),
        ("/b/vmlinuz", &k.vmlinuz),
        ("/b/initrd", &k.initrd),
    ];
    let disk_path = tmp.path().join("disk.img");
    let slots = (slot_a.as_path(), slot_b.as_path());

    // 1. The default slot.
    let mut env = GrubEnv::new();
    env.set("default_slot", "a").unwrap();
    env.set("trial_slot", "").unwrap();
    let layout = write_disk(&disk_path, &esp_files, &env, slots, &grub, &mut store);
    sgdisk_verify(&disk_path);
    let c = boot(&disk_path);
    assert!(c.contains("os-init: root root_a is"), "{}", tail(&c, 40));
    assert!(c.contains("root-init: slot a"), "{}", tail(&c, 40));
    assert!(c.contains("bi.slot=a"), "{}", tail(&c, 40));
    assert_eq!(read_env(&disk_path, &layout).get("trial_slot"), Some(""));

    // 2. A trial of slot b: booted once, and the trial is consumed.
    env.set("trial_slot", "b").unwrap();
    let layout = write_disk(&disk_path, &esp_files, &env, slots, &grub, &mut store);
    let c = boot(&disk_path);
    assert!(c.contains("os-init: root root_b is"), "{}", tail(&c, 40));
    assert!(c.contains("root-init: slot b"), "{}", tail(&c, 40));
    let after = read_env(&disk_path, &layout);
    assert_eq!(after.get("trial_slot"), Some(""), "GRUB left {after:?}");
    assert_eq!(after.get("default_slot"), Some("a"));

    // 3. Nothing committed the trial: back to slot a.
    let c = boot(&disk_path);
    assert!(c.contains("root-init: slot a"), "{}", tail(&c, 40));
    sgdisk_verify(&disk_path);

    // 4. The same disk under UEFI: the same grub.cfg and env decide.
    let c = boot_uefi(&disk_path, tmp.path());
    assert!(c.contains("root-init: slot a"), "{}", tail(&c, 40));
}

/// Trixie's grub-pc-bin (GRUB 2.12), through the path an image build takes.
fn trixie_grub(store: &mut ContentStore) -> bios::GrubPc {
    let deb = debian_release_deb("trixie", "grub-pc-bin", "amd64");
    let tree = deb_tree(&deb, store);
    let grub = bios::GrubPc::from_tree(&tree, store).unwrap();
    assert_eq!(grub.files().grub_version().as_deref(), Some("2.12"));
    grub
}

/// A core image of `modules` plus `serial`, whose embedded config turns
/// on the serial console, prints `marker` and then runs `early`.
fn serial_core(
    grub: &bios::GrubPc,
    modules: &[&str],
    early: &str,
    prefix: &str,
    marker: &str,
) -> Vec<u8> {
    let config = format!(
        "serial --unit=0 --speed=115200\nterminal_output serial\necho \"{marker}\"\n{early}"
    );
    let modules: Vec<&str> = modules.iter().copied().chain(["serial"]).collect();
    grub.core_image(&CoreSpec {
        modules: &modules,
        config: &config,
        prefix,
    })
    .unwrap()
}

/// Boots `vm` (SeaBIOS) until GRUB's `halt`; returns the line of the
/// console that starts with `marker`, after checking `early` came first.
fn grub_line(vm: Vm, early: &str, marker: &str) -> String {
    let (status, c) = vm.run(Duration::from_secs(120));
    let at = c
        .find(early)
        .unwrap_or_else(|| panic!("the embedded config never ran:\n{}", tail(&c, 40)));
    let line = c[at..]
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("normal mode never ran grub.cfg:\n{}", tail(&c, 40)))
        .to_string();
    assert!(
        status.is_some(),
        "GRUB's halt did not power off:\n{}",
        tail(&c, 40)
    );
    line
}

/// GRUB 2.12 from trixie's grub-pc-bin, its core.img assembled in-process
/// (the host's grub-mkimage is 2.06): SeaBIOS loads it from `bios_grub`,
/// the embedded config turns on the serial console, the prefix names the
/// ESP by its partition number on the boot drive, and normal mode runs
/// grub.cfg from the ESP.
#[test]
fn seabios_boots_trixie_grub_2_12_from_a_native_core_img() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let grub = trixie_grub(&mut store);
    let prefix = bios::disk_prefix(ESP_PARTITION, PREFIX).unwrap();
    let core_img = serial_core(&grub, bios::MODULES, "", &prefix, "early config ran");
    let boot_img = grub.files().get("boot.img").unwrap().to_vec();

    let cfg = "echo \"grub.cfg on the ESP: root=$root prefix=$prefix\"\nhalt\n";
    let esp_files: Vec<(&str, &[u8])> = vec![("/EFI/debian/grub.cfg", cfg.as_bytes())];
    let (slot_a, slot_b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::write(&slot_a, b"").unwrap();
    fs::write(&slot_b, b"").unwrap();
    let spec = AbDisk {
        arch: Arch::X86_64,
        esp_size: ESP_SIZE,
        persist_size: 0,
        seed: b"bios-trixie",
        volume_id: ESP_VOLUME_ID,
        esp_files: &esp_files,
        env: &GrubEnv::new(),
        primary: None,
        slots: (&slot_a, &slot_b),
    };
    let disk_path = tmp.path().join("disk.img");
    let (layout, out) = abdisk::write(&disk_path, &spec, &mut store);
    bios::install(&out, &layout, &boot_img, &core_img).unwrap();
    drop(out);

    let vm = Vm::x86_64(256).virtio_disk(&disk_path);
    let line = grub_line(vm, "early config ran", "grub.cfg on the ESP:");
    assert!(line.contains("prefix=(hd0,gpt"), "{line}");
    assert!(line.trim_end().ends_with("/EFI/debian"), "{line}");
}

/// The live ISO's BIOS path with a native core image of trixie's GRUB
/// 2.12: El Torito (cdboot.img in front) from a CD, and boot.img in the
/// hybrid MBR from a disk; both find the ISO by its label.
#[test]
fn seabios_boots_a_native_el_torito_image_as_cd_and_as_disk() {
    const LABEL: &str = "NATIVE_CORE_TEST";
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let grub = trixie_grub(&mut store);
    let early = bios::iso_early_config(LABEL, "/boot/grub").unwrap();
    let core = serial_core(
        &grub,
        bios::ISO_MODULES,
        &early,
        "/boot/grub",
        "early config ran",
    );
    let mut core_img = grub.files().get("cdboot.img").unwrap().to_vec();
    core_img.extend_from_slice(&core);
    let images = BiosImages {
        boot_img: grub.files().get("boot.img").unwrap().to_vec(),
        core_img,
    };
    let cfg = "echo \"grub.cfg on the ISO: root=$root prefix=$prefix\"\nhalt\n";
    let mut esp_tree = FsTree::new();
    Editor {
        tree: &mut esp_tree,
        store: &mut store,
        mtime: 0,
    }
    .write("EFI/BOOT/README", b"BIOS test", 0o644)
    .unwrap();
    let spec = iso::Spec {
        volume_id: LABEL.into(),
        application_id: "build-image test".into(),
        mtime: 1_700_000_000,
        files: vec![(
            "boot/grub/grub.cfg".into(),
            Content::bytes(cfg.as_bytes().to_vec()),
        )],
        bios: Some(&images),
        esp: iso::esp_image(&esp_tree, &store, 1_700_000_000, 0x1357_9bdf).unwrap(),
    };
    let path = tmp.path().join("live.iso");
    let out = File::create(&path).unwrap();
    iso::write(&spec, &out).unwrap();
    drop(out);

    for (medium, vm) in [
        ("CD", Vm::x86_64(256).ide_cd(&path)),
        ("disk", Vm::x86_64(256).virtio_disk_ro(&path)),
    ] {
        let line = grub_line(vm, "early config ran", "grub.cfg on the ISO:");
        assert!(line.trim_end().ends_with(")/boot/grub"), "{medium}: {line}");
    }
}

/// A small A/B image with nothing in its partitions, for install checks.
fn empty_disk(path: &Path, arch: Arch) -> (File, Layout) {
    let layout = Layout::ab(arch, 33 << 20, 1 << 20, 0, b"bios-install").unwrap();
    let out = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    disk::write_image(&layout, &out, vec![]).unwrap();
    (out, layout)
}

fn read_at(f: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn install_writes_what_grub_setup_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let grub = grub_images(&mut store);
    // Same inputs, same core.img.
    assert_eq!(grub.core_img, grub_images(&mut store).core_img);
    assert_eq!(grub.boot_img.len(), 512);

    let path = tmp.path().join("disk.img");
    let (out, layout) = empty_disk(&path, Arch::X86_64);
    let mbr_before = read_at(&out, 0, 512);
    bios::install(&out, &layout, &grub.boot_img, &grub.core_img).unwrap();
    sgdisk_verify(&path);

    let part = layout.partition(disk::BIOS_GRUB).unwrap();
    assert_eq!(part.first_lba, 2048);
    let mbr = read_at(&out, 0, 512);
    // boot.img's code, with the protective MBR's BPB area, disk signature,
    // partition records and boot signature kept.
    assert_eq!(mbr[..bios::BPB_START], grub.boot_img[..bios::BPB_START]);
    assert_eq!(
        mbr[bios::BPB_START..bios::BPB_END],
        mbr_before[bios::BPB_START..bios::BPB_END]
    );
    assert_eq!(mbr[0x5a..0x5c], [0x00, 0x80], "load address");
    assert_eq!(u64_at(&mbr, bios::KERNEL_SECTOR_OFFSET), 2048);
    assert_eq!(mbr[bios::BOOT_DRIVE_OFFSET], 0xff);
    assert_eq!(
        mbr[bios::DRIVE_CHECK_OFFSET..bios::DRIVE_CHECK_OFFSET + 2],
        [0x90, 0x90]
    );
    assert_eq!(
        mbr[bios::DRIVE_CHECK_OFFSET + 2..bios::WINDOWS_NT_MAGIC],
        grub.boot_img[bios::DRIVE_CHECK_OFFSET + 2..bios::WINDOWS_NT_MAGIC]
    );
    assert_eq!(
        mbr[bios::WINDOWS_NT_MAGIC..],
        mbr_before[bios::WINDOWS_NT_MAGIC..]
    );
    assert_eq!(mbr[0x1c2], 0xee, "protective MBR record kept");

    // core.img at the start of bios_grub; its blocklist covers the rest.
    let sectors = grub.core_img.len().div_ceil(512);
    let core = read_at(&out, part.offset(), sectors * 512);
    let first = bios::FIRST_BLOCKLIST;
    assert_eq!(u64_at(&core, first), 2049);
    assert_eq!(usize::from(u16_at(&core, first + 8)), sectors - 1);
    assert_eq!(u16_at(&core, first + 10), 0x820);
    assert!(core[first - bios::BLOCKLIST_SIZE..first]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        core[..first - bios::BLOCKLIST_SIZE],
        grub.core_img[..first - bios::BLOCKLIST_SIZE]
    );
    assert_eq!(core[512..grub.core_img.len()], grub.core_img[512..]);
    assert!(core[grub.core_img.len()..].iter().all(|&b| b == 0));
}

#[test]
fn install_refuses_bad_inputs_without_touching_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let grub = grub_images(&mut store);
    let refused = |path: &Path, layout: &Layout, boot: &[u8], core: &[u8]| {
        let out = File::options().read(true).write(true).open(path).unwrap();
        let before = fs::read(path).unwrap();
        let err = bios::install(&out, layout, boot, core).unwrap_err();
        assert_eq!(fs::read(path).unwrap(), before, "the image changed");
        err.downcast::<InstallError>()
            .unwrap_or_else(|e| panic!("not an InstallError: {e:#}"))
    };

    // An arm64 layout has no bios_grub.
    let arm = tmp.path().join("arm.img");
    let (_, layout) = empty_disk(&arm, Arch::Aarch64);
    let e = refused(&arm, &layout, &grub.boot_img, &grub.core_img);
    assert!(matches!(e, InstallError::NoBiosGrubPartition { .. }), "{e}");
    assert!(e.to_string().contains("bios_grub"), "{e}");

    let x86 = tmp.path().join("x86.img");
    let (_, layout) = empty_disk(&x86, Arch::X86_64);
    // core.img larger than the 1 MiB partition.
    let mut big = grub.core_img.clone();
    big.resize((1 << 20) + 1, 0xa5);
    let e = refused(&x86, &layout, &grub.boot_img, &big);
    assert_eq!(
        e,
        InstallError::CoreLargerThanPartition {
            size: (1 << 20) + 1,
            sectors: 2049,
            partition: 1 << 20,
        }
    );
    // Too big for GRUB's loader, though it fits the partition.
    big.truncate(900 * 512);
    let e = refused(&x86, &layout, &grub.boot_img, &big);
    assert_eq!(e, InstallError::CoreTooLargeToLoad { sectors: 900 });
    // boot.img truncated to the MBR code area; core.img and boot.img swapped.
    let e = refused(&x86, &layout, &grub.boot_img[..440], &grub.core_img);
    assert_eq!(e, InstallError::BootImgSize(440));
    let e = refused(&x86, &layout, &grub.core_img[..512], &grub.core_img);
    assert!(matches!(e, InstallError::BootImgLayout(_)), "{e}");
    let mut not_core = grub.boot_img.repeat(4);
    not_core[0x214..0x216].fill(0);
    let e = refused(&x86, &layout, &grub.boot_img, &not_core);
    assert!(matches!(e, InstallError::NotDiskboot { .. }), "{e}");
    // An image without a partition table yet.
    let blank = tmp.path().join("blank.img");
    fs::write(&blank, vec![0u8; 4 << 20]).unwrap();
    let e = refused(&blank, &layout, &grub.boot_img, &grub.core_img);
    assert_eq!(e, InstallError::NoMbr);
}
