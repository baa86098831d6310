//! Pieces of a bootable test system built with the project's own writers:
//! the Debian kernel as a tree, an initramfs of os-init plus a module
//! closure, small busybox roots as squashfs. QEMU itself: [`super::qemu`].

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use build_image::initramfs::cpio;
use build_image::kmod::ModuleIndex;
use build_image::squashfs;
use build_image::tree::edit::Editor;
use build_image::tree::{merge_layer, ContentStore, FsTree, InodeKind, LayerSource};

use super::fixtures::{debian_kernel_deb, debian_package_deb};
pub use super::qemu::tail;
use super::qemu::Vm;
use super::require_tool;

/// Builds os-init for x86_64 as a static musl binary.
pub fn os_init_binary() -> PathBuf {
    os_init_binary_for(musl_target("amd64"))
}

/// The image build's tree editor on `t`, for entries owned by root at
/// time 0 (parents are created as 0755 directories).
pub fn editor<'a>(t: &'a mut FsTree, store: &'a mut ContentStore) -> Editor<'a> {
    Editor {
        tree: t,
        store,
        mtime: 0,
    }
}

/// Writes a regular file into `t` (see [`editor`]).
pub fn file(t: &mut FsTree, store: &mut ContentStore, path: &str, data: &[u8], mode: u16) {
    editor(t, store)
        .write(path, data, mode)
        .unwrap_or_else(|e| panic!("{path}: {e:#}"));
}

/// Merges a .deb's files into a new tree (the same merge the image build
/// uses for layers).
pub fn deb_tree(deb: &Path, store: &mut ContentStore) -> FsTree {
    let mut tree = FsTree::new();
    merge_deb(&mut tree, store, deb);
    tree
}

/// Merges a .deb's files into `tree` as the image build merges a layer.
fn merge_deb(tree: &mut FsTree, store: &mut ContentStore, deb: &Path) {
    require_tool("dpkg-deb", "dpkg");
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    merge_layer(
        tree,
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

impl KernelAndInitrd {
    /// Writes both to `DIR/vmlinuz` and `DIR/initrd.cpio`; returns the
    /// paths (for a direct kernel boot).
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (vmlinuz, initrd) = (dir.join("vmlinuz"), dir.join("initrd.cpio"));
        fs::write(&vmlinuz, &self.vmlinuz).unwrap();
        fs::write(&initrd, &self.initrd).unwrap();
        (vmlinuz, initrd)
    }
}

pub fn kernel_and_initrd(store: &mut ContentStore, modules: &[&str]) -> KernelAndInitrd {
    let init = fs::read(os_init_binary()).unwrap();
    kernel_and_initrd_from(&debian_kernel_deb("amd64"), &init, store, modules, true)
}

/// The Debian amd64 kernel and the initramfs an image build ships: os-init
/// and the closure of `initramfs::BOOT_MODULES` (those this kernel has).
pub fn kernel_and_shipped_initrd(store: &mut ContentStore) -> KernelAndInitrd {
    let init = fs::read(os_init_binary()).unwrap();
    kernel_and_initrd_from(
        &debian_kernel_deb("amd64"),
        &init,
        store,
        build_image::initramfs::BOOT_MODULES,
        false,
    )
}

/// The kernel of a kernel package and the initramfs the image build makes
/// (`initramfs::build`) from `init` and the closure of `modules` (those
/// the kernel has; with `require_all`, the kernel must have every one).
fn kernel_and_initrd_from(
    deb: &Path,
    init: &[u8],
    store: &mut ContentStore,
    modules: &[&str],
    require_all: bool,
) -> KernelAndInitrd {
    let kernel = deb_tree(deb, store);
    let version = ModuleIndex::versions(&kernel).remove(0);
    let vmlinuz = file_bytes(&kernel, store, &format!("boot/vmlinuz-{version}"));
    let idx = ModuleIndex::scan(&kernel, store, &version).unwrap();
    for m in modules.iter().filter(|_| require_all) {
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

/// A squashfs root of the host's busybox whose /sbin/init runs `script`
/// (sh) and powers off.
pub fn busybox_root(store: &mut ContentStore, script: &str, out: &Path) {
    busybox_root_with(store, &host_busybox(), script, out);
}

/// `/bin/busybox` of the machine the tests run on.
pub fn host_busybox() -> Vec<u8> {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    fs::read(busybox).unwrap()
}

/// Completes `root` as a bootable busybox root and writes it as squashfs
/// to `out`: `busybox` as /bin/busybox and /bin/sh, `files` (`(path,
/// contents, mode)`), an /sbin/init that runs `script` (sh) and powers
/// off, and the mount points the kernel and init need.
fn write_busybox_root(
    mut root: FsTree,
    store: &mut ContentStore,
    busybox: &[u8],
    files: &[(&str, &[u8], u16)],
    script: &str,
    out: &Path,
) {
    let init = format!("#!/bin/sh\n{script}\n/bin/busybox poweroff -f\n");
    let mut ed = editor(&mut root, store);
    let mut edit = || -> anyhow::Result<()> {
        ed.write("/bin/busybox", busybox, 0o755)?;
        ed.symlink("/bin/sh", "busybox")?;
        for (path, data, mode) in files {
            ed.write(path, data, *mode)?;
        }
        ed.write("/sbin/init", init.as_bytes(), 0o755)?;
        for d in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
            ed.mkdir(d, 0o755)?;
        }
        Ok(())
    };
    edit().unwrap_or_else(|e| panic!("the busybox root for {}: {e:#}", out.display()));
    let mut f = File::create(out).unwrap();
    squashfs::write(&root, store, &squashfs::Options::default(), &mut f).unwrap();
}

/// Boots `vmlinuz` with `initrd` directly (QEMU x86_64, TCG, 768 MiB,
/// SeaBIOS), `cmdline`, and `drive` (a `-drive` value, the disk as
/// virtio); returns the console once QEMU exits. It must, within 240 s:
/// `-no-reboot` turns a reboot into an exit.
pub fn boot_direct(vmlinuz: &Path, initrd: &Path, cmdline: &str, drive: &str) -> String {
    let args = [
        "-kernel".to_string(),
        vmlinuz.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        cmdline.into(),
        "-drive".into(),
        drive.into(),
    ];
    let (status, console) = Vm::x86_64(768).args(args).run(Duration::from_secs(240));
    assert!(
        status.is_some(),
        "QEMU did not exit:\n{}",
        tail(&console, 40)
    );
    console
}

/// Asserts the console shows each of `wants`, or panics with its tail.
#[track_caller]
pub fn expect_console(console: &str, wants: &[&str]) {
    for want in wants {
        assert!(
            console.contains(want),
            "console lacks {want:?}:\n{}",
            tail(console, 50)
        );
    }
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
    kernel_and_initrd_from(&deb, &init, store, modules, true)
}

/// Debian's signed GRUB EFI binary for `arch` (`amd64`: grubx64.efi from
/// grub-efi-amd64-signed, `arm64`: grubaa64.efi from
/// grub-efi-arm64-signed).
pub fn signed_grub_efi(arch: &str, store: &mut ContentStore) -> Vec<u8> {
    let efi_arch = match arch {
        "amd64" => "x86_64",
        "arm64" => "arm64",
        _ => panic!("no signed GRUB known for Debian architecture {arch:?}"),
    };
    let short = if arch == "amd64" { "x64" } else { "aa64" };
    let deb = super::fixtures::debian_package_deb_for(&format!("grub-efi-{arch}-signed"), arch);
    let grub = deb_tree(&deb, store);
    file_bytes(
        &grub,
        store,
        &format!("usr/lib/grub/{efi_arch}-efi-signed/grub{short}.efi.signed"),
    )
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
    write_busybox_root(FsTree::new(), store, busybox, &[], script, out);
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
    let busybox = host_busybox();
    let mut root = FsTree::new();
    for pkg in packages {
        merge_deb(&mut root, store, &debian_package_deb(pkg, "amd64"));
    }
    write_busybox_root(root, store, &busybox, files, script, out);
}

/// e2fsprogs and the libraries it links, from Debian bookworm.
pub const E2FSPROGS: &[&str] = &[
    "libc6",
    "libblkid1",
    "libuuid1",
    "libcom-err2",
    "libss2",
    "libext2fs2",
    "e2fsprogs",
];
