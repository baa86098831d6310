//! The FAT writer (FAT12, FAT16, FAT32) against the reference tools:
//! images written at an offset inside a file are checked with
//! `fsck.vfat -n -v` (on a copy of the partition: it has no offset option;
//! its "N bit entries" is the type it derived from the cluster count) and
//! read back with mtools (`minfo`/`mdir`/`mcopy -i IMG@@OFFSET`), every
//! file byte for byte.
//!
//! Needs the `dosfstools` and `mtools` packages.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use build_image::fat::{self, FatOptions, FatType};
use build_image::tree::{ContentStore, FsTree, InodeKind, Metadata};
use common::{require_tool, tool_stdout};
use sha2::{Digest, Sha256};

const T0: i64 = 1_700_000_040; // 2023-11-14 22:14:00 UTC
const MIB: u64 = 1 << 20;
const OFFSET: u64 = MIB;

fn tools() {
    require_tool("fsck.vfat", "dosfstools");
    require_tool("mdir", "mtools");
    require_tool("mcopy", "mtools");
    require_tool("minfo", "mtools");
}

fn run(cmd: &mut Command) -> Vec<u8> {
    tool_stdout(
        cmd.env("TZ", "UTC")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("LC_ALL", "C.UTF-8"),
    )
}

/// [`common::noise`] from the odd seed `seed | 1` (the files of the
/// reproducibility hashes below were made so).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    common::noise(len, seed | 1)
}

/// Builds a tree of directories and files; parents are created as needed.
/// `None` content makes a directory.
struct Builder {
    tree: FsTree,
    store: ContentStore,
    _dir: tempfile::TempDir,
}

impl Builder {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::new_in(dir.path()).unwrap();
        Builder {
            tree: FsTree::new(),
            store,
            _dir: dir,
        }
    }

    fn dir(&mut self, path: &str) -> build_image::tree::InodeId {
        let mut cur = self.tree.root();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            cur = match self.tree.lookup(cur, comp.as_bytes()) {
                Some(id) => id,
                None => {
                    let id = self.tree.add_inode(
                        InodeKind::Directory {
                            children: BTreeMap::new(),
                        },
                        Metadata::new(0o755, 0, 0, T0),
                    );
                    self.tree.link(cur, comp.as_bytes().to_vec(), id);
                    id
                }
            };
        }
        cur
    }

    fn file(&mut self, path: &str, data: &[u8]) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = self.dir(parent);
        let content = self.store.append(data).unwrap();
        let id = self
            .tree
            .add_inode(InodeKind::File { content }, Metadata::new(0o644, 0, 0, T0));
        self.tree.link(dir, name.as_bytes().to_vec(), id);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = self.dir(parent);
        let id = self.tree.add_inode(
            InodeKind::Symlink {
                target: target.as_bytes().to_vec(),
            },
            Metadata::new(0o777, 0, 0, T0),
        );
        self.tree.link(dir, name.as_bytes().to_vec(), id);
    }
}

/// An ESP-like tree; returns it with every file's path and content.
fn esp_tree() -> (Builder, Vec<(String, Vec<u8>)>) {
    let mut b = Builder::new();
    let mut files = vec![
        ("EFI/BOOT/BOOTX64.EFI".to_string(), noise(150_000, 1)),
        ("EFI/BOOT/grubx64.efi".to_string(), noise(70_001, 2)),
        (
            "EFI/debian/grub.cfg".to_string(),
            b"set default=0\nconfigfile $prefix/slot.cfg\n".to_vec(),
        ),
        ("EFI/debian/grubenv".to_string(), vec![b'#'; 1024]),
        (
            "boot/grub/x86_64-efi/normal.mod".to_string(),
            noise(3_333, 3),
        ),
        (
            "boot/a/b/c/deeply nested file with a long name.txt".to_string(),
            b"deep\n".to_vec(),
        ),
        ("slot_a/vmlinuz".to_string(), noise(5_000_000, 4)),
        (
            "slot_a/initrd.img-6.1.0-28-amd64".to_string(),
            noise(777_777, 5),
        ),
        ("empty-file".to_string(), Vec::new()),
        ("café.txt".to_string(), "é\n".as_bytes().to_vec()),
        ("MixedCase.Conf".to_string(), b"mixed\n".to_vec()),
        (".hidden".to_string(), b"dot\n".to_vec()),
    ];
    // Enough entries for a directory of many clusters, with short-name tails.
    for i in 0..120 {
        files.push((
            format!("many/a rather long name number {i:03}.bin"),
            noise(i * 37, i as u64 + 10),
        ));
    }
    for (p, d) in &files {
        b.file(p, d);
    }
    b.dir("empty-dir");
    b.dir("EFI/Linux");
    (b, files)
}

fn opts(size: u64) -> FatOptions {
    opts_as(size, Some(FatType::Fat32))
}

fn opts_as(size: u64, fat_type: Option<FatType>) -> FatOptions {
    FatOptions {
        size_bytes: size,
        fat_type,
        volume_label: "esp".into(),
        volume_id: 0x1234_ABCD,
        timestamp: T0,
    }
}

/// Writes `b`'s tree at [`OFFSET`] into a new file with a tail after it.
fn write_image(b: &Builder, size: u64, path: &Path) -> fat::Summary {
    write_image_as(b, size, Some(FatType::Fat32), path)
}

fn write_image_as(b: &Builder, size: u64, ty: Option<FatType>, path: &Path) -> fat::Summary {
    let mut f = File::create(path).unwrap();
    f.set_len(OFFSET + size + MIB).unwrap();
    let s = fat::write(&b.tree, &b.store, &opts_as(size, ty), &mut f, OFFSET).unwrap();
    assert_eq!(f.metadata().unwrap().len(), OFFSET + size + MIB);
    s
}

/// `fsck.vfat -n` on a copy of the partition.
fn fsck(img: &Path, size: u64) {
    fsck_at(img, OFFSET, size);
}

/// `fsck.vfat -n -v` on a copy of the `size` bytes at `offset` of `img`;
/// returns the width of a FAT entry it found.
fn fsck_at(img: &Path, offset: u64, size: u64) -> u32 {
    let part = img.with_extension("part");
    let mut src = File::open(img).unwrap();
    src.seek(SeekFrom::Start(offset)).unwrap();
    let mut dst = File::create(&part).unwrap();
    std::io::copy(&mut src.take(size), &mut dst).unwrap();
    assert_eq!(dst.metadata().unwrap().len(), size);
    let out = run(Command::new("fsck.vfat").arg("-n").arg("-v").arg(&part));
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("differ") && !text.contains("Free cluster"),
        "{text}"
    );
    fs::remove_file(&part).unwrap();
    let bits = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("2 FATs, ")?
                .strip_suffix(" bit entries")
        })
        .unwrap_or_else(|| panic!("no FAT width in:\n{text}"));
    bits.parse().unwrap()
}

fn bits(ty: FatType) -> u32 {
    match ty {
        FatType::Fat12 => 12,
        FatType::Fat16 => 16,
        FatType::Fat32 => 32,
    }
}

/// `minfo` of the filesystem at `target` (`IMG@@OFFSET`).
fn minfo(target: &str) -> String {
    String::from_utf8_lossy(&run(Command::new("minfo").args(["-i", target, "::"]))).into_owned()
}

/// Every one of `files` read back with `mcopy`, byte for byte.
fn read_back(target: &str, files: &[(String, Vec<u8>)]) {
    for (path, data) in files {
        let got = run(Command::new("mcopy").args(["-i", target, &format!("::/{path}"), "-"]));
        assert_eq!(got.len(), data.len(), "/{path}: length");
        assert!(got == *data, "/{path}: content differs");
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn check_round_trip(size: u64) {
    check_round_trip_as(size, Some(FatType::Fat32), FatType::Fat32);
}

/// Writes [`esp_tree`] as `ty` (by size when `None`), expecting `expect`.
fn check_round_trip_as(size: u64, ty: Option<FatType>, expect: FatType) {
    tools();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    let (b, files) = esp_tree();
    let summary = write_image_as(&b, size, ty, &img);
    assert_eq!(summary.fat_type, expect);
    assert!(summary.used_clusters > 0);
    assert_eq!(summary.files, files.len());
    assert_eq!(summary.directories, 14); // the root included
    assert_eq!(fsck_at(&img, OFFSET, size), bits(expect));

    let target = format!("{}@@{OFFSET}", img.display());
    let info = minfo(&target);
    assert!(
        info.contains(&format!("disk type=\"{expect}   \""))
            && info.contains("serial number: 1234ABCD")
            && info.contains("disk label=\"ESP        \""),
        "{info}"
    );
    let listing = run(Command::new("mdir").args(["-i", &target, "::/EFI/BOOT"]));
    let listing = String::from_utf8_lossy(&listing);
    assert!(
        listing.contains("BOOTX64") && listing.contains("grubx64.efi"),
        "{listing}"
    );
    let label = run(Command::new("mlabel").args(["-i", &target, "-s", "::"]));
    assert!(String::from_utf8_lossy(&label).contains("ESP"));
    let empty = run(Command::new("mdir").args(["-i", &target, "-b", "::/empty-dir"]));
    assert!(empty.is_empty(), "{}", String::from_utf8_lossy(&empty));
    let many = run(Command::new("mdir").args(["-i", &target, "-b", "::/many"]));
    assert_eq!(String::from_utf8_lossy(&many).lines().count(), 120);
    read_back(&target, &files);
}

#[test]
fn esp_64_mib_reads_back_with_mtools_and_passes_fsck() {
    check_round_trip(64 * MIB);
}

#[test]
fn esp_256_mib_reads_back_with_mtools_and_passes_fsck() {
    check_round_trip(256 * MIB);
}

#[test]
fn fat16_by_size_reads_back_with_mtools_and_passes_fsck() {
    check_round_trip_as(16 * MIB, None, FatType::Fat16);
}

#[test]
fn fat12_on_request_reads_back_with_mtools_and_passes_fsck() {
    // 12 MiB as FAT12 takes 4 KiB clusters.
    check_round_trip_as(12 * MIB, Some(FatType::Fat12), FatType::Fat12);
}

/// The first and last sizes of each type, by 512-byte sector (the unit
/// test of the layout finds them): each is the type fsck.vfat derives
/// from its cluster count, and mtools reads nested directories, long
/// names and data back.
#[test]
fn sizes_at_the_type_boundaries() {
    tools();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    let mut b = Builder::new();
    let files = vec![
        (
            "EFI/BOOT/a file with a rather long name.efi".to_string(),
            noise(300_000, 21),
        ),
        ("EFI/debian/grub.cfg".to_string(), b"set x=1\n".to_vec()),
        (
            "one/two/three/four/deep.txt".to_string(),
            b"deep\n".to_vec(),
        ),
        ("README".to_string(), noise(1000, 22)),
    ];
    for (p, d) in &files {
        b.file(p, d);
    }
    for (sectors, expect) in [
        (4151, FatType::Fat12),
        (4152, FatType::Fat16),
        (66588, FatType::Fat16),
        (66589, FatType::Fat32),
    ] {
        let size = sectors * 512;
        let s = write_image_as(&b, size, None, &img);
        assert_eq!(s.fat_type, expect, "{sectors} sectors");
        assert_eq!(fsck_at(&img, OFFSET, size), bits(expect), "{sectors}");
        let target = format!("{}@@{OFFSET}", img.display());
        let info = minfo(&target);
        assert!(
            info.contains(&format!("disk type=\"{expect}   \"")),
            "{info}"
        );
        read_back(&target, &files);
        let deep = run(Command::new("mdir").args(["-i", &target, "-b", "::/one/two/three/four"]));
        assert_eq!(
            String::from_utf8_lossy(&deep).trim(),
            "::/one/two/three/four/deep.txt"
        );
    }
}

/// A FAT12/16 root directory is a fixed region of 512 entries; the label
/// takes one and a long name one per 13 characters plus its short entry.
#[test]
fn a_full_root_directory_is_refused() {
    tools();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    let mut b = Builder::new();
    for i in 0..511 {
        b.file(&format!("F{i:03}.TXT"), format!("{i}\n").as_bytes());
    }
    let s = write_image_as(&b, 8 * MIB, None, &img);
    assert_eq!(s.fat_type, FatType::Fat16);
    fsck(&img, 8 * MIB);
    let target = format!("{}@@{OFFSET}", img.display());
    let list = run(Command::new("mdir").args(["-i", &target, "-b", "::/"]));
    assert_eq!(String::from_utf8_lossy(&list).lines().count(), 511);
    read_back(&target, &[("F510.TXT".into(), b"510\n".to_vec())]);

    b.file("ONEMORE", b"x");
    let mut out = std::io::Cursor::new(Vec::new());
    let err = fat::write(&b.tree, &b.store, &opts_as(8 * MIB, None), &mut out, 0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("root directory of a FAT16 holds at most 512 entries")
            && msg.contains("needs 513"),
        "{msg}"
    );
    assert!(out.get_ref().is_empty(), "nothing may be written");

    // 127 names of 29 characters: 4 entries each, 509 with the label.
    let mut b = Builder::new();
    for i in 0..127 {
        b.file(&format!("a long file name number {i:03}"), b"x");
    }
    let s = write_image_as(&b, MIB, None, &img);
    assert_eq!(s.fat_type, FatType::Fat12);
    fsck(&img, MIB);
    b.file("a long file name number 127", b"x");
    let err = fat::write(&b.tree, &b.store, &opts_as(MIB, None), &mut out, 0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("FAT12 holds at most 512") && msg.contains("needs 513"),
        "{msg}"
    );
    // FAT32's root directory grows like any other.
    write_image(&b, 40 * MIB, &img);
}

/// FAT32 images are what they were before FAT12/16 existed: the disk
/// image builds are reproducible across versions.
#[test]
fn fat32_output_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.img");
    for (size, want) in [
        (
            40 * MIB,
            "ff6b09b3dc96c847f651e5c261301a80412d61740754a7cdc004cbbcd06a1862",
        ),
        (
            64 * MIB,
            "9a8cfb6216c28f58e531cf859c56d87c678260240b55ac85e6f13fdab60272d4",
        ),
        (
            300 * MIB,
            "b4c5d338953d8a66cc5f6f5a9032800910127bc53b0f0e063ba740dd8560feeb",
        ),
    ] {
        for ty in [Some(FatType::Fat32), None] {
            let (b, _) = esp_tree();
            write_image_as(&b, size, ty, &p);
            assert_eq!(sha(&fs::read(&p).unwrap()), want, "{size} bytes, {ty:?}");
        }
    }
    write_image(&Builder::new(), 40 * MIB, &p);
    assert_eq!(
        sha(&fs::read(&p).unwrap()),
        "1495ad25816c8a56e39e87325d660743d12901271e7ffd6ccd4a6f5682381b65"
    );
}

/// The live ISO's El Torito image, built as the ISO build builds it:
/// FAT16 at this size, label EFIBOOT, the given serial, and every boot
/// file readable.
#[test]
fn the_iso_efi_image_passes_fsck_and_reads_back() {
    use build_image::bootloader::esp::{efi_files, live_tree, BootChain};
    tools();
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let (shim, grub, mm) = (noise(950_000, 31), noise(2_600_000, 32), noise(850_000, 33));
    let cfg =
        "search --no-floppy --set=root --label DEBIAN_AMD64\nconfigfile /boot/grub/grub.cfg\n";
    let efi = efi_files("amd64").unwrap();
    let chain = BootChain {
        grub: &grub,
        shim: Some((&shim, Some(&mm))),
        files: &efi,
        grub_cfg: cfg,
    };
    let tree = live_tree(&chain, &mut store, T0).unwrap();
    let image = build_image::iso::esp_image(&tree, &store, T0, 0xCAFE_F00D).unwrap();
    let again = build_image::iso::esp_image(&tree, &store, T0, 0xCAFE_F00D).unwrap();
    assert!(image == again, "two EFI images of one tree differ");
    assert!(image.len() <= 8 * MIB as usize, "{} bytes", image.len());
    let img = tmp.path().join("efi.img");
    fs::write(&img, &image).unwrap();
    assert_eq!(fsck_at(&img, 0, image.len() as u64), 16);

    let target = img.display().to_string();
    let info = minfo(&target);
    assert!(
        info.contains("disk label=\"EFIBOOT    \"")
            && info.contains("serial number: CAFEF00D")
            && info.contains("disk type=\"FAT16   \""),
        "{info}"
    );
    let mut files = vec![
        ("EFI/BOOT/BOOTX64.EFI".to_string(), shim),
        ("EFI/BOOT/grubx64.efi".to_string(), grub),
        ("EFI/BOOT/mmx64.efi".to_string(), mm),
    ];
    for dir in ["EFI/debian", "EFI/ubuntu", "EFI/BOOT"] {
        files.push((format!("{dir}/grub.cfg"), cfg.as_bytes().to_vec()));
    }
    read_back(&target, &files);
    let listing = run(Command::new("mdir").args(["-i", &target, "::/EFI/BOOT"]));
    let listing = String::from_utf8_lossy(&listing);
    assert!(listing.contains("2023-11-14  22:14"), "{listing}");
}

#[test]
fn bigger_sizes_use_bigger_clusters() {
    tools();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    let (b, _) = esp_tree();
    let s = write_image(&b, 300 * MIB, &img);
    assert_eq!(s.cluster_size, 4096);
    fsck(&img, 300 * MIB);
    // Nothing beyond the filesystem's metadata and data was written: the
    // file stays sparse.
    assert!(fs::metadata(&img).unwrap().blocks() * 512 < 20 * MIB);
}

#[test]
fn two_writes_are_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, _) = esp_tree();
    let one = tmp.path().join("one.img");
    let two = tmp.path().join("two.img");
    write_image(&b, 64 * MIB, &one);
    let (b2, _) = esp_tree();
    write_image(&b2, 64 * MIB, &two);
    assert_eq!(sha(&fs::read(&one).unwrap()), sha(&fs::read(&two).unwrap()));
}

#[test]
fn empty_tree_is_a_valid_filesystem() {
    tools();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    let b = Builder::new();
    write_image(&b, 40 * MIB, &img);
    fsck(&img, 40 * MIB);
}

#[test]
fn symlink_is_rejected_with_its_path() {
    let mut b = Builder::new();
    b.file("EFI/BOOT/BOOTX64.EFI", b"x");
    b.symlink("EFI/BOOT/link", "BOOTX64.EFI");
    let mut out = std::io::Cursor::new(Vec::new());
    let err = fat::write(&b.tree, &b.store, &opts(64 * MIB), &mut out, 0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("/EFI/BOOT/link") && msg.contains("symlink"),
        "{msg}"
    );
    assert!(out.get_ref().is_empty(), "nothing may be written");
}

#[test]
fn too_small_says_how_much_is_needed() {
    let mut b = Builder::new();
    b.file("big", &noise(40 * MIB as usize, 9));
    let mut out = std::io::Cursor::new(Vec::new());
    let err = fat::write(&b.tree, &b.store, &opts(36 * MIB), &mut out, 0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("at least 41 MiB"), "{msg}");
    assert!(out.get_ref().is_empty(), "nothing may be written");
    let err = fat::write(&b.tree, &b.store, &opts(16 * MIB), &mut out, 0).unwrap_err();
    assert!(format!("{err:#}").contains("33 MiB"));

    // By size: a FAT16, and the size it names is enough.
    let mut b = Builder::new();
    b.file("big", &noise(10 * MIB as usize, 9));
    let err = fat::write(&b.tree, &b.store, &opts_as(8 * MIB, None), &mut out, 0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("do not fit in a FAT16") && msg.contains("at least 11 MiB"),
        "{msg}"
    );
    assert!(out.get_ref().is_empty(), "nothing may be written");
    fat::write(&b.tree, &b.store, &opts_as(11 * MIB, None), &mut out, 0).unwrap();
}

#[test]
fn names_fat_cannot_hold_are_rejected() {
    let mut b = Builder::new();
    b.file("dir/a:b", b"x");
    let mut out = std::io::Cursor::new(Vec::new());
    let err = fat::write(&b.tree, &b.store, &opts(64 * MIB), &mut out, 0).unwrap_err();
    assert!(format!("{err:#}").contains("/dir/a:b"), "{err:#}");
    let mut b = Builder::new();
    b.file("Readme", b"x");
    b.file("README", b"y");
    let err = fat::write(&b.tree, &b.store, &opts(64 * MIB), &mut out, 0).unwrap_err();
    assert!(format!("{err:#}").contains("case"), "{err:#}");
}
