//! Pieces of a bootable test system built with the project's own writers:
//! the Debian kernel as a tree, an initramfs of os-init plus a module
//! closure, small busybox roots as squashfs. QEMU itself: [`super::qemu`].

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use build_image::initramfs::cpio;
use build_image::kmod::ModuleIndex;
use build_image::squashfs;
use build_image::tree::{
    merge_layer, ContentStore, FsTree, InodeId, InodeKind, LayerSource, Metadata,
};

use super::fixtures::debian_kernel_deb;
pub use super::qemu::tail;
use super::qemu::Vm;
use super::require_tool;

/// Builds os-init for x86_64 as a static musl binary.
pub fn os_init_binary() -> PathBuf {
    os_init_binary_for(musl_target("amd64"))
}

pub fn mkdirs(t: &mut FsTree, path: &str) -> InodeId {
    let mut cur = t.root();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        cur = match t.lookup(cur, c.as_bytes()) {
            Some(id) => id,
            None => {
                let id = t.add_inode(
                    InodeKind::Directory {
                        children: BTreeMap::new(),
                    },
                    Metadata::new(0o755, 0, 0, 0),
                );
                t.link(cur, c.as_bytes().to_vec(), id);
                id
            }
        };
    }
    cur
}

pub fn file(t: &mut FsTree, store: &mut ContentStore, path: &str, data: &[u8], mode: u16) {
    let (parent, name) = path.rsplit_once('/').unwrap();
    let p = mkdirs(t, parent);
    let content = store.append(data).unwrap();
    let id = t.add_inode(InodeKind::File { content }, Metadata::new(mode, 0, 0, 0));
    t.link(p, name.as_bytes().to_vec(), id);
}

pub fn symlink(t: &mut FsTree, path: &str, target: &str) {
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

/// Merges a .deb's files into a new tree (the same merge the image build
/// uses for layers).
pub fn deb_tree(deb: &Path, store: &mut ContentStore) -> FsTree {
    require_tool("dpkg-deb", "dpkg");
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tree = FsTree::new();
    merge_layer(
        &mut tree,
        store,
        &LayerSource {
            name: deb.display().to_string(),
        },
        child.stdout.take().unwrap(),
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    tree
}

pub fn file_bytes(tree: &FsTree, store: &ContentStore, path: &str) -> Vec<u8> {
    let id = tree
        .lookup_path(path.as_bytes())
        .unwrap_or_else(|| panic!("{path} not in the tree"));
    let InodeKind::File { content } = &tree.inode(id).kind else {
        panic!("{path} is not a regular file");
    };
    store.read_all(content).unwrap()
}

/// The Debian amd64 kernel and an initramfs (os-init + the closure of
/// `modules`), both as bytes.
pub struct KernelAndInitrd {
    pub version: String,
    pub vmlinuz: Vec<u8>,
    pub initrd: Vec<u8>,
}

pub fn kernel_and_initrd(store: &mut ContentStore, modules: &[&str]) -> KernelAndInitrd {
    let init = fs::read(os_init_binary()).unwrap();
    kernel_and_initrd_from(&debian_kernel_deb("amd64"), &init, store, modules)
}

/// The Debian amd64 kernel and the initramfs an image build ships: os-init
/// and the closure of `initramfs::BOOT_MODULES` (those this kernel has).
pub fn kernel_and_shipped_initrd(store: &mut ContentStore) -> KernelAndInitrd {
    let init = fs::read(os_init_binary()).unwrap();
    let deb = debian_kernel_deb("amd64");
    let kernel = deb_tree(&deb, store);
    let version = ModuleIndex::versions(&kernel).remove(0);
    let vmlinuz = file_bytes(&kernel, store, &format!("boot/vmlinuz-{version}"));
    let idx = ModuleIndex::scan(&kernel, store, &version).unwrap();
    let (initrd, _) = build_image::initramfs::build(
        &idx,
        &kernel,
        store,
        &init,
        build_image::initramfs::BOOT_MODULES,
    )
    .unwrap();
    KernelAndInitrd {
        version,
        vmlinuz,
        initrd,
    }
}

/// The kernel of a kernel package and the initramfs the image build makes
/// (`initramfs::build`) from `init` and the closure of `modules`.
fn kernel_and_initrd_from(
    deb: &Path,
    init: &[u8],
    store: &mut ContentStore,
    modules: &[&str],
) -> KernelAndInitrd {
    let kernel = deb_tree(deb, store);
    let version = ModuleIndex::versions(&kernel).remove(0);
    let vmlinuz = file_bytes(&kernel, store, &format!("boot/vmlinuz-{version}"));
    let idx = ModuleIndex::scan(&kernel, store, &version).unwrap();
    for m in modules {
        let n = build_image::kmod::normalise(m);
        assert!(
            idx.modules.contains_key(&n) || idx.builtin.contains(&n),
            "kernel {version} has no module {m}"
        );
    }
    let (initrd, _) = build_image::initramfs::build(&idx, &kernel, store, init, modules).unwrap();
    KernelAndInitrd {
        version,
        vmlinuz,
        initrd,
    }
}

/// A squashfs root of busybox whose /sbin/init runs `script` (sh) and
/// powers off.
pub fn busybox_root(store: &mut ContentStore, script: &str, out: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    let mut root = FsTree::new();
    file(
        &mut root,
        store,
        "/bin/busybox",
        &fs::read(busybox).unwrap(),
        0o755,
    );
    symlink(&mut root, "/bin/sh", "busybox");
    let init = format!("#!/bin/sh\n{script}\n/bin/busybox poweroff -f\n");
    file(&mut root, store, "/sbin/init", init.as_bytes(), 0o755);
    for d in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        mkdirs(&mut root, d);
    }
    let mut f = File::create(out).unwrap();
    squashfs::write(&root, store, &squashfs::Options::default(), &mut f).unwrap();
}

/// Runs QEMU (x86_64, TCG, 768 MiB) with `args` until it exits or
/// `timeout` passes. Returns its exit status (`None` on timeout, after
/// killing it) and the console output.
pub fn run_qemu(args: &[String], timeout: Duration) -> (Option<ExitStatus>, String) {
    Vm::x86_64(768).args(args.iter().cloned()).run(timeout)
}

/// The Rust musl target whose os-init runs on Debian architecture `arch`.
pub fn musl_target(arch: &str) -> &'static str {
    match arch {
        "amd64" => "x86_64-unknown-linux-musl",
        "arm64" => "aarch64-unknown-linux-musl",
        _ => panic!("no musl target known for Debian architecture {arch:?}"),
    }
}

/// Builds os-init for the Rust `target` (`aarch64-unknown-linux-musl`, …)
/// as a static musl binary and returns its path.
pub fn os_init_binary_for(target: &str) -> PathBuf {
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
        "building os-init for {target} (needs `rustup target add {target}`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bin = tmp.parent().unwrap().join(target).join("release/os-init");
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// Like [`kernel_and_initrd`], for the Debian kernel of `arch` (`amd64`,
/// `arm64`) with an os-init built for that architecture.
pub fn kernel_and_initrd_for(
    arch: &str,
    store: &mut ContentStore,
    modules: &[&str],
) -> KernelAndInitrd {
    let init = fs::read(os_init_binary_for(musl_target(arch))).unwrap();
    let deb = super::fixtures::debian_kernel_deb_for(arch);
    kernel_and_initrd_from(&deb, &init, store, modules)
}

/// The static busybox of Debian's `busybox-static` for `arch`.
pub fn busybox_for(arch: &str, store: &mut ContentStore) -> Vec<u8> {
    let deb = super::fixtures::debian_package_deb_for("busybox-static", arch);
    let tree = deb_tree(&deb, store);
    file_bytes(&tree, store, "bin/busybox")
}

/// Like [`busybox_root`], with the given busybox binary (see
/// [`busybox_for`]) instead of the host's.
pub fn busybox_root_with(store: &mut ContentStore, busybox: &[u8], script: &str, out: &Path) {
    let mut root = FsTree::new();
    file(&mut root, store, "/bin/busybox", busybox, 0o755);
    symlink(&mut root, "/bin/sh", "busybox");
    let init = format!("#!/bin/sh\n{script}\n/bin/busybox poweroff -f\n");
    file(&mut root, store, "/sbin/init", init.as_bytes(), 0o755);
    for d in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        mkdirs(&mut root, d);
    }
    let mut f = File::create(out).unwrap();
    squashfs::write(&root, store, &squashfs::Options::default(), &mut f).unwrap();
}

/// A squashfs root made of real Debian amd64 packages (`packages`, merged
/// in order as the image build merges layers; shared libraries found
/// through the multiarch paths Debian's ld.so searches) plus busybox for
/// the shell. `files` are extra `(path, contents, mode)`; /sbin/init runs
/// `script` (sh) and powers off.
pub fn debian_packages_root(
    store: &mut ContentStore,
    packages: &[&str],
    files: &[(&str, &[u8], u16)],
    script: &str,
    out: &Path,
) {
    require_tool("dpkg-deb", "dpkg");
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    let mut root = FsTree::new();
    for pkg in packages {
        let deb = super::fixtures::debian_package_deb(pkg, "amd64");
        let mut child = Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(&deb)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        merge_layer(
            &mut root,
            store,
            &LayerSource {
                name: deb.display().to_string(),
            },
            child.stdout.take().unwrap(),
        )
        .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "dpkg-deb {}",
            deb.display()
        );
    }
    file(
        &mut root,
        store,
        "/bin/busybox",
        &fs::read(busybox).unwrap(),
        0o755,
    );
    symlink(&mut root, "/bin/sh", "busybox");
    for (path, data, mode) in files {
        file(&mut root, store, path, data, *mode);
    }
    let init = format!("#!/bin/sh\n{script}\n/bin/busybox poweroff -f\n");
    file(&mut root, store, "/sbin/init", init.as_bytes(), 0o755);
    for d in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        mkdirs(&mut root, d);
    }
    let mut f = File::create(out).unwrap();
    squashfs::write(&root, store, &squashfs::Options::default(), &mut f).unwrap();
}
