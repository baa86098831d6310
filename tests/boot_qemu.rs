//! A real boot under QEMU: the Debian kernel, an initramfs of os-init plus
//! the module closure build-image computes, and a squashfs root in slot
//! root_a of a GPT A/B disk image — all written by this project's own
//! writers. Asserts that os-init found the slot by its partition name,
//! loaded the virtio/squashfs/overlay modules, mounted the root with an
//! overlay and handed over to the root's /sbin/init.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use build_image::disk::{self, Arch, Layout, Source};
use build_image::initramfs::cpio;
use build_image::kmod::ModuleIndex;
use build_image::squashfs;
use build_image::tree::{
    merge_layer, ContentStore, FsTree, InodeId, InodeKind, LayerSource, Metadata,
};
use common::fixtures::debian_kernel_deb;
use common::require_tool;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Builds os-init for the host architecture as a static musl binary.
fn os_init_binary() -> PathBuf {
    let target = "x86_64-unknown-linux-musl";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "os-init",
            "--target",
            target,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building os-init (needs `rustup target add {target}`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bin = tmp.parent().unwrap().join(target).join("release/os-init");
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

fn dir(t: &mut FsTree, parent: InodeId, name: &str) -> InodeId {
    if let Some(id) = t.lookup(parent, name.as_bytes()) {
        return id;
    }
    let id = t.add_inode(
        InodeKind::Directory {
            children: BTreeMap::new(),
        },
        Metadata::new(0o755, 0, 0, 0),
    );
    t.link(parent, name.as_bytes().to_vec(), id);
    id
}

fn mkdirs(t: &mut FsTree, path: &str) -> InodeId {
    let mut cur = t.root();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        cur = dir(t, cur, c);
    }
    cur
}

fn file(t: &mut FsTree, store: &mut ContentStore, path: &str, data: &[u8], mode: u16) {
    let (parent, name) = path.rsplit_once('/').unwrap();
    let p = mkdirs(t, parent);
    let content = store.append(data).unwrap();
    let id = t.add_inode(InodeKind::File { content }, Metadata::new(mode, 0, 0, 0));
    t.link(p, name.as_bytes().to_vec(), id);
}

fn symlink(t: &mut FsTree, path: &str, target: &str) {
    let (parent, name) = path.rsplit_once('/').unwrap();
    let p = mkdirs(t, parent);
    let id = t.add_inode(
        InodeKind::Symlink {
            target: target.as_bytes().to_vec(),
        },
        Metadata::new(0o777, 0, 0, 0),
    );
    t.link(p, name.as_bytes().to_vec(), id);
}

#[test]
fn debian_kernel_boots_os_init_into_a_squashfs_slot() {
    require_tool(
        "qemu-system-x86_64",
        "qemu-system-x86 (from bookworm-backports, see .ci/run)",
    );
    require_tool("dpkg-deb", "dpkg");
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();

    // The kernel package, merged like any layer.
    let deb = debian_kernel_deb("amd64");
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kernel_tree = FsTree::new();
    merge_layer(
        &mut kernel_tree,
        &mut store,
        &LayerSource {
            name: "kernel".into(),
        },
        child.stdout.take().unwrap(),
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let version = ModuleIndex::versions(&kernel_tree).remove(0);
    let vmlinuz_id = kernel_tree
        .lookup_path(format!("boot/vmlinuz-{version}").as_bytes())
        .unwrap();
    let InodeKind::File { content } = kernel_tree.inode(vmlinuz_id).kind.clone() else {
        panic!("vmlinuz is not a file");
    };
    let vmlinuz = tmp.path().join("vmlinuz");
    fs::write(&vmlinuz, store.read_all(&content).unwrap()).unwrap();

    // The initramfs: os-init as /init and the module closure it loads.
    let idx = ModuleIndex::scan(&kernel_tree, &store, &version).unwrap();
    let closure = idx
        .closure(&["virtio_pci", "virtio_blk", "squashfs", "overlay"])
        .unwrap();
    let mut initrd = FsTree::new();
    file(
        &mut initrd,
        &mut store,
        "/init",
        &fs::read(os_init_binary()).unwrap(),
        0o755,
    );
    let mut load = String::new();
    for m in &closure {
        let InodeKind::File { content } = &kernel_tree.inode(m.inode).kind else {
            unreachable!()
        };
        let data = store.read_all(content).unwrap();
        let path = format!("/lib/modules/{version}/{}", m.rel_path);
        file(&mut initrd, &mut store, &path, &data, 0o644);
        load.push_str(&path);
        load.push('\n');
    }
    file(
        &mut initrd,
        &mut store,
        "/lib/modules/os-init.load",
        load.as_bytes(),
        0o644,
    );
    for d in ["/dev", "/proc", "/sys", "/run", "/sysroot"] {
        mkdirs(&mut initrd, d);
    }
    let devdir = mkdirs(&mut initrd, "/dev");
    let console = initrd.add_inode(
        InodeKind::CharDevice { major: 5, minor: 1 },
        Metadata::new(0o600, 0, 0, 0),
    );
    initrd.link(devdir, b"console".to_vec(), console);
    let initrd_path = tmp.path().join("initrd.cpio");
    let mut f = File::create(&initrd_path).unwrap();
    cpio::write(&initrd, &store, &mut f).unwrap();
    drop(f);

    // The root: busybox, and an init that reports and powers off.
    let mut root = FsTree::new();
    file(
        &mut root,
        &mut store,
        "/bin/busybox",
        &fs::read(busybox).unwrap(),
        0o755,
    );
    symlink(&mut root, "/bin/sh", "busybox");
    file(
        &mut root,
        &mut store,
        "/sbin/init",
        b"#!/bin/sh\n\
          echo \"root-init: started as pid $$\"\n\
          /bin/busybox grep -q ' / overlay ' /proc/mounts && echo 'root-init: / is an overlay'\n\
          /bin/busybox touch /written && echo 'root-init: / is writable'\n\
          /bin/busybox poweroff -f\n",
        0o755,
    );
    for d in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        mkdirs(&mut root, d);
    }
    let sqfs_path = tmp.path().join("root.squashfs");
    let mut sq = File::create(&sqfs_path).unwrap();
    squashfs::write(&root, &store, &squashfs::Options::default(), &mut sq).unwrap();
    drop(sq);

    // The disk: the A/B layout with the root in root_a.
    let slot = fs::metadata(&sqfs_path).unwrap().len().max(16 << 20);
    let layout = Layout::ab(Arch::X86_64, 64 << 20, slot, 16 << 20, b"boot-test").unwrap();
    let disk_path = tmp.path().join("disk.img");
    let disk_file = File::create(&disk_path).unwrap();
    let sq = File::open(&sqfs_path).unwrap();
    disk::write_image(&layout, &disk_file, vec![(disk::ROOT_A, Source::File(&sq))]).unwrap();
    drop(disk_file);

    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "768",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd_path)
        .args(["-append", "console=ttyS0 bi.root=root_a panic=-1"])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,snapshot=on",
            disk_path.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = qemu.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = qemu.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = reader.join().unwrap();
    let tail: Vec<&str> = console.lines().collect();
    let tail = tail[tail.len().saturating_sub(40)..].join("\n");
    assert!(
        status.is_some(),
        "QEMU did not power off within {BOOT_TIMEOUT:?}:\n{tail}"
    );
    for want in [
        "os-init: root root_a is /dev/vda3",
        "os-init: switching to /sbin/init",
        "root-init: started as pid 1",
        "root-init: / is an overlay",
        "root-init: / is writable",
    ] {
        assert!(console.contains(want), "console lacks {want:?}:\n{tail}");
    }
}
