//! The FAT32 writer against the reference tools: images written at an
//! offset inside a file are checked with `fsck.vfat -n` (on a copy of the
//! partition: it has no offset option) and read back with mtools
//! (`mdir`/`mcopy -i IMG@@OFFSET`), every file byte for byte.
//!
//! Needs the `dosfstools` and `mtools` packages.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use build_image::fat::{self, FatOptions};
use build_image::tree::{ContentStore, FsTree, InodeKind, Metadata};
use common::require_tool;
use sha2::{Digest, Sha256};

const T0: i64 = 1_700_000_040; // 2023-11-14 22:14:00 UTC
const MIB: u64 = 1 << 20;
const OFFSET: u64 = MIB;

fn tools() {
    require_tool("fsck.vfat", "dosfstools");
    require_tool("mdir", "mtools");
    require_tool("mcopy", "mtools");
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .env("TZ", "UTC")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A pseudo-random byte stream (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    seed |= 1;
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
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
    FatOptions {
        size_bytes: size,
        volume_label: "esp".into(),
        volume_id: 0x1234_ABCD,
        timestamp: T0,
    }
}

/// Writes `b`'s tree at [`OFFSET`] into a new file with a tail after it.
fn write_image(b: &Builder, size: u64, path: &Path) -> fat::Summary {
    let mut f = File::create(path).unwrap();
    f.set_len(OFFSET + size + MIB).unwrap();
    let s = fat::write(&b.tree, &b.store, &opts(size), &mut f, OFFSET).unwrap();
    assert_eq!(f.metadata().unwrap().len(), OFFSET + size + MIB);
    s
}

/// `fsck.vfat -n` on a copy of the partition.
fn fsck(img: &Path, size: u64) {
    let part = img.with_extension("part");
    let mut src = File::open(img).unwrap();
    src.seek(SeekFrom::Start(OFFSET)).unwrap();
    let mut dst = File::create(&part).unwrap();
    std::io::copy(&mut src.take(size), &mut dst).unwrap();
    assert_eq!(dst.metadata().unwrap().len(), size);
    let out = run(Command::new("fsck.vfat").arg("-n").arg(&part));
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("differ") && !text.contains("Free cluster"),
        "{text}"
    );
    fs::remove_file(&part).unwrap();
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn check_round_trip(size: u64) {
    tools();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    let (b, files) = esp_tree();
    let summary = write_image(&b, size, &img);
    assert!(summary.used_clusters > 0);
    assert_eq!(summary.files, files.len());
    assert_eq!(summary.directories, 14); // the root included
    fsck(&img, size);

    let target = format!("{}@@{OFFSET}", img.display());
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

    for (path, data) in &files {
        let got = run(Command::new("mcopy").args(["-i", &target, &format!("::/{path}"), "-"]));
        assert_eq!(got.len(), data.len(), "/{path}: length");
        assert!(got == *data, "/{path}: content differs");
    }
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
