//! Small A/B disks for the boot-path tests, written with the project's own
//! GPT, FAT and image writers: an ESP with the given files and both GRUB
//! environment blocks, and two root slots.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;

use boot_contract::grubenv::GrubEnv;
use build_image::disk::{self, Arch, Layout, Source};
use build_image::fat::{self, FatOptions};
use build_image::tree::{ContentStore, FsTree};

use super::boot::file;
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
