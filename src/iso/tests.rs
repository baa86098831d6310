use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::bootloader::bios::{KERNEL_ADDRESS_OFFSET, KERNEL_SECTOR_OFFSET};

/// The reference tools are part of the test setup (.ci/run installs
/// them): a missing one fails the test rather than skipping the check.
fn tool(name: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{name} is not installed (apt-get install xorriso genisoimage gdisk)"
    );
    ok
}

fn create(p: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .unwrap()
}

/// `xorriso -report_el_torito plain` of the ISO at `p`.
fn el_torito_report(p: &Path) -> String {
    tool("xorriso");
    let o = Command::new("xorriso")
        .arg("-indev")
        .arg(p)
        .args(["-report_el_torito", "plain"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{text}");
    text
}

/// boot.img as far as `patch_boot_img` checks it.
fn boot_img() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..0x5a].fill(0xcc);
    b[KERNEL_ADDRESS_OFFSET..KERNEL_ADDRESS_OFFSET + 2].copy_from_slice(&[0x00, 0x80]);
    b[0x66..0x68].copy_from_slice(&[0xeb, 0x05]);
    b[510..].copy_from_slice(&[0x55, 0xaa]);
    b
}

/// cdboot.img (2048 bytes) and a 3-sector core image whose diskboot.img
/// block list grub-mkimage filled in (length 2, segment 0x820).
fn eltorito_img() -> Vec<u8> {
    let mut img = vec![0x11u8; 2048 + 3 * 512];
    let b = &mut img[2048 + 500..2048 + 512];
    b.fill(0);
    b[8..10].copy_from_slice(&2u16.to_le_bytes());
    b[10..12].copy_from_slice(&0x820u16.to_le_bytes());
    img
}

/// `esp_image` of a tree holding `files`.
fn esp(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(dir.path()).unwrap();
    let mut tree = FsTree::new();
    let mut ed = crate::tree::edit::Editor {
        tree: &mut tree,
        store: &mut store,
        mtime: 0,
    };
    for (path, data) in files {
        ed.write(path, data, 0o644).unwrap();
    }
    esp_image(&tree, &store, 1_760_000_000, 0x1234_5678)
}

fn spec(bios: Option<&BiosImages>) -> Spec<'_> {
    let esp = esp(&[
        ("EFI/BOOT/BOOTX64.EFI", &[0x4d; 300_000]),
        ("EFI/debian/grub.cfg", b"configfile x\n"),
    ])
    .unwrap();
    Spec {
        volume_id: "DEBIAN_AMD64_1_0".into(),
        application_id: "build-image test".into(),
        mtime: 1_760_000_000,
        files: vec![
            (
                "boot/grub/grub.cfg".into(),
                Content::bytes("menuentry x {}\n"),
            ),
            (
                "a-rather-long-file-name.squashfs".into(),
                Content::bytes(vec![7u8; 100_000]),
            ),
        ],
        bios,
        esp,
    }
}

#[test]
fn volume_labels_are_d_characters() {
    assert_eq!(
        volume_id("debian", "amd64", "20251009.085320"),
        "DEBIAN_AMD64_20251009_085320"
    );
    assert_eq!(volume_id("x", "arm64", &"9".repeat(40)).len(), 32);
    check_volume_id("DEBIAN_AMD64_1_0").unwrap();
    for bad in ["", "debian", "A B", &"A".repeat(33)] {
        assert!(check_volume_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_uefi_iso_reads_back_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let mut sums = Vec::new();
    for name in ["one.iso", "two.iso"] {
        let p = dir.path().join(name);
        let f = create(&p);
        let size = write(&spec(None), &f).unwrap();
        assert_eq!(f.metadata().unwrap().len(), size);
        sums.push(std::fs::read(&p).unwrap());
    }
    assert!(sums[0] == sums[1], "two writes of one spec differ");
    let p = dir.path().join("one.iso");
    let info = read_info(&p).unwrap();
    assert_eq!(info.volume_id, "DEBIAN_AMD64_1_0");
    assert_eq!(info.application_id, "build-image test");
    assert!(info.install.is_none());
    assert!(is_iso(&p));
    assert_eq!(
        read_file(&p, "boot/grub/grub.cfg").unwrap().unwrap(),
        b"menuentry x {}\n"
    );
    if tool("isoinfo") {
        let o = Command::new("isoinfo")
            .arg("-d")
            .arg("-i")
            .arg(&p)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{text}");
        assert!(text.contains("Volume id: DEBIAN_AMD64_1_0"), "{text}");
        assert!(text.contains("Rock Ridge"), "{text}");
        assert!(text.contains("Eltorito"), "{text}");
    }
    let text = el_torito_report(&p);
    assert!(text.contains("El Torito boot img :   1  UEFI"), "{text}");
}

#[test]
fn the_mbr_boot_code_points_at_the_core_image() {
    let images = BiosImages {
        boot_img: boot_img(),
        core_img: eltorito_img(),
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bios.iso");
    let f = create(&p);
    write(&spec(Some(&images)), &f).unwrap();
    let plan = {
        let s = spec(Some(&images));
        hadris_iso::plan(&tree(&s).unwrap(), &options(&s, None).unwrap()).unwrap()
    };
    let at = plan.extents(BIOS_IMAGE).unwrap()[0].offset();
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0).unwrap();
    let sector = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    // boot.img loads diskboot.img, 4 disk sectors (cdboot.img) in.
    assert_eq!(sector(&mbr, KERNEL_SECTOR_OFFSET), at / 512 + 4);
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);
    // diskboot.img's block list starts right after it.
    let mut img = vec![0u8; 2048 + 512];
    f.read_exact_at(&mut img, at).unwrap();
    assert_eq!(sector(&img, 2048 + 500), at / 512 + 5);
    assert_eq!(u16::from_le_bytes([img[2048 + 508], img[2048 + 509]]), 2);
    if tool("sgdisk") {
        let o = Command::new("sgdisk").arg("-v").arg(&p).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("No problems found"), "{text}");
    }
    let text = el_torito_report(&p);
    assert!(text.contains("El Torito boot img :   1  BIOS"), "{text}");
    assert!(text.contains("El Torito boot img :   2  UEFI"), "{text}");
}

#[test]
fn an_esp_too_big_for_el_torito_is_refused() {
    let err = esp(&[("big", &vec![1u8; 40 << 20])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 32 MiB"), "{err}");
}
