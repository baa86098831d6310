//! Small A/B disks for the boot-path tests, written with the project's own
//! GPT, FAT and image writers: an ESP with the given files and both GRUB
//! environment blocks, and two root slots.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use boot_contract::grubenv::GrubEnv;
use build_image::disk::{self, Arch, Layout, Source};
use build_image::fat::{self, FatOptions, FatType};
use build_image::tree::{ContentStore, FsTree};

use super::boot::{busybox_root_with, file, KernelAndInitrd};
use super::qemu::tail;
use super::require_tool;

/// The project's `bootloader/grub.cfg` with `name` and `cmdline` filled in.
pub fn grub_cfg(name: &str, cmdline: &str) -> String {
    let template =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("bootloader/grub.cfg"))
            .unwrap();
    template
        .replace("@NAME@", name)
        .replace("@CMDLINE@", cmdline)
}

/// What goes on a test disk.
pub struct AbDisk<'a> {
    pub arch: Arch,
    pub esp_size: u64,
    /// 0: no persist partition.
    pub persist_size: u64,
    /// Seeds the GPT's GUIDs.
    pub seed: &'a [u8],
    pub volume_id: u32,
    pub esp_files: &'a [(&'a str, &'a [u8])],
    /// Written to `/grubenv` and `/grubenv.bak`.
    pub env: &'a GrubEnv,
    /// The bytes of `/grubenv` instead of `env` (e.g. a corrupt block).
    pub primary: Option<&'a [u8]>,
    /// The squashfs images of root_a and root_b.
    pub slots: (&'a Path, &'a Path),
}

/// Writes `spec` to `path` (created or truncated). Returns the layout and
/// the disk, open for reading and writing (to install more boot code).
pub fn write(path: &Path, spec: &AbDisk, store: &mut ContentStore) -> (Layout, File) {
    let mut esp = FsTree::new();
    for (p, data) in spec.esp_files {
        file(&mut esp, store, p, data, 0o644);
    }
    let block = spec.env.encode().unwrap();
    let primary = spec.primary.unwrap_or(&block);
    file(&mut esp, store, "/grubenv", primary, 0o644);
    file(&mut esp, store, "/grubenv.bak", &block, 0o644);
    let size = |p: &Path| fs::metadata(p).unwrap().len();
    let slot = size(spec.slots.0).max(size(spec.slots.1)).max(16 << 20);
    let layout = Layout::ab(spec.arch, spec.esp_size, slot, spec.persist_size, spec.seed).unwrap();
    let out = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let a = File::open(spec.slots.0).unwrap();
    let b = File::open(spec.slots.1).unwrap();
    let opts = FatOptions {
        size_bytes: layout.partition(disk::ESP).unwrap().size(),
        fat_type: Some(FatType::Fat32),
        volume_label: "ESP".into(),
        volume_id: spec.volume_id,
        timestamp: 1_700_000_000,
    };
    let store: &ContentStore = store;
    disk::write_image(
        &layout,
        &out,
        vec![
            (
                disk::ESP,
                Source::Writer(Box::new(move |w| {
                    fat::write(&esp, store, &opts, w, 0)?;
                    Ok(())
                })),
            ),
            (disk::ROOT_A, Source::File(&a)),
            (disk::ROOT_B, Source::File(&b)),
        ],
    )
    .unwrap();
    (layout, out)
}

/// Reads a file back out of the ESP of `disk` with mtools.
pub fn read_esp_file(disk: &Path, layout: &Layout, name: &str) -> Vec<u8> {
    read_fat_file(disk, layout.partition(disk::ESP).unwrap().offset(), name)
}

/// Reads `name` out of the FAT filesystem at byte `off` of `disk` (mtools).
pub fn read_fat_file(disk: &Path, off: u64, name: &str) -> Vec<u8> {
    require_tool("mcopy", "mtools");
    let out = Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@{off}", disk.display()))
        .args([&format!("::{name}"), "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mcopy of {name} from the ESP of {} failed: {}",
        disk.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `/grubenv` of the ESP of `disk`.
pub fn read_env(disk: &Path, layout: &Layout) -> GrubEnv {
    GrubEnv::parse(&read_esp_file(disk, layout, "/grubenv")).unwrap()
}

/// Runs the mtools command `tool` on the FAT image `image` (a file, or
/// `FILE@@OFFSET` for one inside a disk) and returns what it printed.
pub fn mtools(tool: &str, image: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Vec<u8> {
    let o = Command::new(tool)
        .arg("-i")
        .arg(image)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Arms a trial of slot b on an image as an upgrade would: `rootfs` into
/// root_b (at byte `root_b` of `disk`), slot a's kernel and initrd as slot
/// b's on the boot partition (the FAT filesystem at byte `esp`), and
/// `trial_slot=b` in both environment blocks. Temporary files go beside
/// `disk`.
pub fn arm_trial_of_b(disk: &Path, esp: u64, root_b: u64, rootfs: &Path) {
    use std::os::unix::fs::FileExt;
    require_tool("mcopy", "mtools");
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&fs::read(rootfs).unwrap(), root_b).unwrap();
    f.sync_all().unwrap();
    let image = format!("{}@@{esp}", disk.display());
    let mtools = |tool: &str, args: &[&str]| {
        mtools(tool, &image, args);
    };
    let tmp = disk.parent().unwrap();
    mtools("mmd", &["::/b"]);
    for f in ["vmlinuz", "initrd"] {
        let local = tmp.join(f);
        let local = local.to_str().unwrap();
        mtools("mcopy", &["-o", &format!("::/a/{f}"), local]);
        mtools("mcopy", &["-o", local, &format!("::/b/{f}")]);
    }
    let mut env = GrubEnv::parse(&read_fat_file(disk, esp, "/grubenv")).unwrap();
    env.set("trial_slot", "b").unwrap();
    let block = tmp.join("grubenv");
    fs::write(&block, env.encode().unwrap()).unwrap();
    for name in ["::/grubenv", "::/grubenv.bak"] {
        mtools("mcopy", &["-o", block.to_str().unwrap(), name]);
    }
}

/// The ext4 `len` bytes at `at` of `disk`, copied to `to` with its
/// journal replayed (`e2fsck -fy`): a machine stopped rather than shut
/// down leaves its last writes in the journal. On a copy because e2fsck
/// (and debugfs's `journal_run`) open the filesystem again by name after a
/// replay, without an `?offset=`.
pub fn ext4_copy(disk: &Path, at: u64, len: u64, to: &Path) {
    require_tool("e2fsck", "e2fsprogs");
    super::sparse_copy_range(disk, at, len, to);
    let fsck = Command::new("e2fsck").arg("-fy").arg(to).output().unwrap();
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck -fy of the ext4 at {at} of {}:\n{}{}",
        disk.display(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// `debugfs -R "cat PATH"` of the ext4 image `fs`.
pub fn debugfs_cat(fs: &Path, path: &str) -> String {
    require_tool("debugfs", "e2fsprogs");
    let o = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(fs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The root slots of the try-once tests, `DIR/a.squashfs` and
/// `DIR/b.squashfs`: roots of `busybox` whose init prints
/// `root-init: slot X` and the kernel command line, then powers off.
pub fn slot_roots(store: &mut ContentStore, busybox: &[u8], dir: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("a.squashfs"), dir.join("b.squashfs"));
    for (slot, out) in [("a", &a), ("b", &b)] {
        let script = format!("echo \"root-init: slot {slot} $(cat /proc/cmdline)\"");
        busybox_root_with(store, busybox, &script, out);
    }
    (a, b)
}

/// The ESP of the try-once tests: `grub` at `grub_path` (the firmware's
/// removable-media path, /EFI/BOOT/BOOT<ARCH>.EFI), `cfg` where Debian's
/// signed GRUB reads it (`$prefix/grub.cfg`, prefix /EFI/debian), and the
/// same kernel and initrd in /a and /b.
pub fn try_once_esp<'a>(
    grub_path: &'a str,
    grub: &'a [u8],
    cfg: &'a str,
    k: &'a KernelAndInitrd,
) -> Vec<(&'a str, &'a [u8])> {
    vec![
        (grub_path, grub),
        ("/EFI/debian/grub.cfg", cfg.as_bytes()),
        ("/a/vmlinuz", &k.vmlinuz),
        ("/a/initrd", &k.initrd),
        ("/b/vmlinuz", &k.vmlinuz),
        ("/b/initrd", &k.initrd),
    ]
}

/// GRUB's try-once slot selection, booted for real on one disk whose root
/// slots are [`slot_roots`]. `write` (re)writes the disk with the given
/// environment in both env blocks, or with the given bytes as /grubenv
/// instead, and returns its layout; `boot` boots it once (the argument
/// names the step for messages) and returns the console.
///
/// 1. default_slot=a boots slot a;
/// 2. trial_slot=b boots slot b once, and GRUB has cleared trial_slot in
///    /grubenv on the ESP (read back with mtools) and left /grubenv.bak
///    as it was;
/// 3. the next boot of the same disk, nothing else changed, is slot a
///    again;
/// 4. with the primary block /grubenv torn, GRUB uses /grubenv.bak.
pub fn try_once_cycle(
    disk: &Path,
    mut write: impl FnMut(&GrubEnv, Option<&[u8]>) -> Layout,
    mut boot: impl FnMut(&str) -> String,
) {
    // 1. The default slot.
    let mut env = GrubEnv::new();
    env.set("default_slot", "a").unwrap();
    env.set("trial_slot", "").unwrap();
    write(&env, None);
    let c = boot("1 (default a)");
    assert_console("1", &c, "os-init: root root_a is");
    assert_console("1", &c, "root-init: slot a");
    assert_console("1", &c, "BOOT_IMAGE=/a/vmlinuz bi.root=root_a bi.slot=a");
    assert!(!c.contains("root-init: slot b"), "{}", tail(&c, 40));

    // 2. A trial of slot b: booted once, and the trial is consumed.
    env.set("trial_slot", "b").unwrap();
    let layout = write(&env, None);
    let c = boot("2 (trial b)");
    assert_console("2", &c, "os-init: root root_b is");
    assert_console("2", &c, "root-init: slot b");
    assert_console("2", &c, "BOOT_IMAGE=/b/vmlinuz bi.root=root_b bi.slot=b");
    let after = read_env(disk, &layout);
    assert_eq!(after.get("trial_slot"), Some(""), "GRUB left {after:?}");
    assert_eq!(after.get("default_slot"), Some("a"), "GRUB left {after:?}");
    // save_env rewrote the block in place; the backup copy is untouched.
    let bak = read_esp_file(disk, &layout, "/grubenv.bak");
    assert!(
        bak[..] == env.encode().unwrap()[..],
        "/grubenv.bak changed: {:?}",
        GrubEnv::parse(&bak)
    );

    // 3. Nothing committed the trial: back to slot a.
    let c = boot("3 (after the trial)");
    assert_console("3", &c, "os-init: root root_a is");
    assert_console("3", &c, "root-init: slot a");
    assert!(!c.contains("root-init: slot b"), "{}", tail(&c, 40));

    // 4. A torn primary block: the backup copy decides (default b here).
    let mut env = GrubEnv::new();
    env.set("default_slot", "b").unwrap();
    env.set("trial_slot", "").unwrap();
    let mut torn = env.encode().unwrap();
    torn[..8].copy_from_slice(&[0; 8]);
    write(&env, Some(&torn));
    let c = boot("4 (torn /grubenv, backup says b)");
    assert_console("4", &c, "os-init: root root_b is");
    assert_console("4", &c, "root-init: slot b");
}

/// Asserts the console of boot `step` shows `needle`, or panics with its
/// tail.
#[track_caller]
pub fn assert_console(step: &str, console: &str, needle: &str) {
    assert!(
        console.contains(needle),
        "boot {step}: the console has no {needle:?}; its tail:\n{}",
        tail(console, 40)
    );
}

/// `bi.esp=PARTUUID` of the ESP of the disk image `disk` as it is now, for
/// direct kernel boots (GRUB passes it on a disk boot): os-init uses only
/// the disk holding that partition, and a disk's first boot gives it a new
/// one.
pub fn esp_param(disk: &Path) -> String {
    let mut f = File::open(disk).unwrap();
    let sectors = f.metadata().unwrap().len() / 512;
    let gpt = boot_contract::gpt::Gpt::read(&mut f, 512, sectors)
        .or_else(|_| boot_contract::gpt::Gpt::read_backup(&mut f, 512, sectors))
        .unwrap_or_else(|e| panic!("{}: no GPT: {e}", disk.display()));
    let (_, esp) = gpt
        .find(disk::ESP)
        .unwrap_or_else(|| panic!("{}: no ESP", disk.display()));
    format!("{}={}", boot_contract::boot_env::CMDLINE_ESP, esp.guid)
}
