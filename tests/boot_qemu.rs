//! A real boot under QEMU: the Debian kernel, an initramfs of os-init plus
//! the module closure build-image computes, and a squashfs root in slot
//! root_a of a GPT A/B disk image — all written by this project's own
//! writers. Asserts that os-init found the disk by its ESP's partition
//! UUID (`bi.esp=`, as GRUB passes it) and the slot by its partition name,
//! loaded the virtio/squashfs/overlay modules, mounted the root with an
//! overlay and handed over to the root's /sbin/init.

mod common;

use std::fs::{self, File};
use std::path::Path;

use build_image::disk::{self, Arch, Layout, Source};
use build_image::tree::ContentStore;
use common::abdisk::esp_param;
use common::boot::{boot_direct, busybox_root, expect_console, kernel_and_initrd, tail};

/// Boots the Debian kernel with os-init's initramfs (direct kernel boot,
/// SeaBIOS) on `disk` with `cmdline`, and returns the console once QEMU
/// exits (it must, within 240 s: `-no-reboot` turns reboots into exits).
fn boot_os_init(tmp: &Path, store: &mut ContentStore, disk: &Path, cmdline: &str) -> String {
    let k = kernel_and_initrd(store, &["virtio_pci", "virtio_blk", "squashfs", "overlay"]);
    let (vmlinuz, initrd) = k.write_to(tmp);
    let drive = format!("file={},if=virtio,format=raw,snapshot=on", disk.display());
    boot_direct(
        &vmlinuz,
        &initrd,
        &format!("{cmdline} {}", esp_param(disk)),
        &drive,
    )
}

#[test]
fn debian_kernel_boots_os_init_into_a_squashfs_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let sqfs = tmp.path().join("root.squashfs");
    busybox_root(
        &mut store,
        "echo \"root-init: started as pid $$\"\n\
         /bin/busybox grep -q ' / overlay ' /proc/mounts && echo 'root-init: / is an overlay'\n\
         /bin/busybox touch /written && echo 'root-init: / is writable'",
        &sqfs,
    );
    let slot = fs::metadata(&sqfs).unwrap().len().max(16 << 20);
    let layout = Layout::ab(Arch::X86_64, 64 << 20, slot, 16 << 20, b"boot-test").unwrap();
    let disk_path = tmp.path().join("disk.img");
    let disk_file = File::create(&disk_path).unwrap();
    let sq = File::open(&sqfs).unwrap();
    disk::write_image(&layout, &disk_file, vec![(disk::ROOT_A, Source::File(&sq))]).unwrap();
    drop(disk_file);

    let console = boot_os_init(
        tmp.path(),
        &mut store,
        &disk_path,
        "console=ttyS0 bi.root=root_a panic=-1 bi.persist=off",
    );
    expect_console(
        &console,
        &[
            "os-init: boot disk /dev/vda: it holds the ESP partition",
            "os-init: root root_a is /dev/vda3",
            "os-init: switching to /sbin/init",
            "root-init: started as pid 1",
            "root-init: / is an overlay",
            "root-init: / is writable",
        ],
    );
}

#[test]
fn os_init_reports_a_missing_slot_and_reboots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    // A disk whose slots are empty: no squashfs named root_c anywhere.
    let layout = Layout::ab(Arch::X86_64, 64 << 20, 16 << 20, 16 << 20, b"fail").unwrap();
    let disk_path = tmp.path().join("disk.img");
    let disk_file = File::create(&disk_path).unwrap();
    disk::write_image(&layout, &disk_file, vec![]).unwrap();
    drop(disk_file);

    let console = boot_os_init(
        tmp.path(),
        &mut store,
        &disk_path,
        "console=ttyS0 bi.root=root_c bi.timeout=3 panic=-1",
    );
    expect_console(
        &console,
        &[
            "os-init: error: the boot disk /dev/vda has no partition named \"root_c\"",
            "os-init: rebooting in 5 s",
        ],
    );
    assert!(!console.contains("switching to"), "{}", tail(&console, 40));
}
