//! The cpio writer checked against GNU cpio: listing, extraction as root
//! (owners, modes, devices, symlinks, hardlinks), and reproducibility.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use build_image::initramfs::cpio;
use build_image::tree::{ContentStore, FsTree, InodeKind, Metadata};
use common::{require_tool, tool_stdout};

fn dir_inode(tree: &mut FsTree, mode: u16) -> build_image::tree::InodeId {
    tree.add_inode(
        InodeKind::Directory {
            children: BTreeMap::new(),
        },
        Metadata::new(mode, 0, 0, 1_600_000_000),
    )
}

fn sample(store: &mut ContentStore) -> FsTree {
    let mut t = FsTree::new();
    let root = t.root();
    let bin = dir_inode(&mut t, 0o755);
    t.link(root, b"bin".to_vec(), bin);
    let dev = dir_inode(&mut t, 0o755);
    t.link(root, b"dev".to_vec(), dev);
    let tmp = dir_inode(&mut t, 0o1777);
    t.link(root, b"tmp".to_vec(), tmp);
    let deep = dir_inode(&mut t, 0o700);
    let lib = dir_inode(&mut t, 0o755);
    t.link(root, b"lib".to_vec(), lib);
    t.link(lib, b"modules".to_vec(), deep);

    let init: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let c = store.append(&init).unwrap();
    let f = t.add_inode(
        InodeKind::File { content: c },
        Metadata::new(0o755, 0, 0, 1_700_000_000),
    );
    t.link(root, b"init".to_vec(), f);
    let c = store.append(b"shared").unwrap();
    let h = t.add_inode(
        InodeKind::File { content: c },
        Metadata::new(0o4755, 0, 0, 1_700_000_001),
    );
    t.link(bin, b"a".to_vec(), h);
    t.link(bin, b"b".to_vec(), h);
    let c = store.append(b"").unwrap();
    let e = t.add_inode(
        InodeKind::File { content: c },
        Metadata::new(0o600, 1000, 100, 5),
    );
    t.link(deep, "empty-ü".as_bytes().to_vec(), e);
    let s = t.add_inode(
        InodeKind::Symlink {
            target: b"/init".to_vec(),
        },
        Metadata::new(0o777, 0, 0, 0),
    );
    t.link(bin, b"sh".to_vec(), s);
    let console = t.add_inode(
        InodeKind::CharDevice { major: 5, minor: 1 },
        Metadata::new(0o600, 0, 5, 0),
    );
    t.link(dev, b"console".to_vec(), console);
    let odd = t.add_inode(
        InodeKind::BlockDevice {
            major: 259,
            minor: 1234,
        },
        Metadata::new(0o660, 0, 6, 0),
    );
    t.link(dev, b"nvme0n1".to_vec(), odd);
    let fifo = t.add_inode(InodeKind::Fifo, Metadata::new(0o644, 0, 0, 0));
    t.link(dev, b"initctl".to_vec(), fifo);
    t
}

fn archive(dir: &Path) -> Vec<u8> {
    let mut store = ContentStore::new_in(dir).unwrap();
    let tree = sample(&mut store);
    let mut out = Vec::new();
    cpio::write(&tree, &store, &mut out).unwrap();
    out
}

#[test]
fn gnu_cpio_lists_and_extracts_everything() {
    require_tool("cpio", "cpio");
    let tmp = tempfile::tempdir().unwrap();
    let bytes = archive(tmp.path());
    let img = tmp.path().join("initrd.cpio");
    fs::write(&img, &bytes).unwrap();

    let list = tool_stdout(
        Command::new("cpio")
            .args(["-it", "--quiet", "-F"])
            .arg(&img),
    );
    let names: Vec<String> = String::from_utf8(list)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        names,
        [
            ".",
            "bin",
            "bin/a",
            "bin/b",
            "bin/sh",
            "dev",
            "dev/console",
            "dev/initctl",
            "dev/nvme0n1",
            "init",
            "lib",
            "lib/modules",
            "lib/modules/empty-ü",
            "tmp"
        ]
    );

    let root = tmp.path().join("x");
    fs::create_dir(&root).unwrap();
    tool_stdout(
        Command::new("cpio")
            .args(["-idmu", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&img)
            .current_dir(&root),
    );

    let init: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(fs::read(root.join("init")).unwrap(), init);
    let m = fs::metadata(root.join("init")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(m.mtime(), 1_700_000_000);

    let a = fs::metadata(root.join("bin/a")).unwrap();
    let b = fs::metadata(root.join("bin/b")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlinks must share an inode");
    assert_eq!(a.nlink(), 2);
    assert_eq!(a.mode() & 0o7777, 0o4755);
    assert_eq!(fs::read(root.join("bin/b")).unwrap(), b"shared");

    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("/init")
    );
    let e = fs::metadata(root.join("lib/modules/empty-ü")).unwrap();
    assert_eq!((e.uid(), e.gid(), e.len()), (1000, 100, 0));
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(root.join("lib/modules")).unwrap().mode() & 0o7777,
        0o700
    );

    let c = fs::metadata(root.join("dev/console")).unwrap();
    assert!(c.file_type().is_char_device());
    assert_eq!(c.rdev(), libc_makedev(5, 1));
    assert_eq!(c.gid(), 5);
    let d = fs::metadata(root.join("dev/nvme0n1")).unwrap();
    assert!(d.file_type().is_block_device());
    assert_eq!(d.rdev(), libc_makedev(259, 1234));
    assert!(fs::metadata(root.join("dev/initctl"))
        .unwrap()
        .file_type()
        .is_fifo());
}

/// glibc's `makedev`, for comparing `st_rdev`.
fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

#[test]
fn same_tree_same_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    assert_eq!(archive(a.path()), archive(b.path()));
}
