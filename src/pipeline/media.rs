//! The output stages: the root SquashFS, the A/B disk image (ESP, BIOS
//! boot), the live/installer ISO and the upgrade artifact.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::boot::BootFiles;
use super::live;
use super::plan::BuildPlan;
use super::root::Root;
use crate::bootloader::{bios, esp};
use crate::cli::build::Format;
use crate::disk::card::{self, CardLayout};
use crate::disk::{self, Layout, Source, Table};
use crate::fat::{self, FatOptions, FatType};
use crate::progress::{Event, Reporter, Task};
use crate::squashfs;
use crate::staging::{Staged, Staging};
use crate::tree::ContentStore;
use crate::upgrade::{self, Annotations, ArtifactFiles};

fn stage(reporter: &dyn Reporter, message: String) {
    reporter.event(Event::Stage { message });
}

/// The root filesystem, compressed, as `{stem}.squashfs`.
pub fn write_rootfs(
    plan: &BuildPlan,
    root: &Root,
    reporter: &dyn Reporter,
    staging: &mut Staging,
) -> Result<Staged> {
    let out = staging.create(&plan.output(".squashfs"), "squashfs")?;
    stage(
        reporter,
        format!(
            "writing the root filesystem ({} entries)",
            root.tree.entry_count()
        ),
    );
    let opts = squashfs::Options {
        compression: plan.compression.clone(),
        mkfs_time: plan.mtime.clamp(0, u32::MAX as i64) as u32,
        ..Default::default()
    };
    squashfs_with_bar(&root.tree, &root.store, &opts, staging.file(out), reporter)
        .context("writing the root SquashFS")?;
    Ok(out)
}

/// [`squashfs::write`] with a bar over the file data.
pub fn squashfs_with_bar(
    tree: &crate::tree::FsTree,
    store: &ContentStore,
    opts: &squashfs::Options,
    out: &mut File,
    reporter: &dyn Reporter,
) -> Result<squashfs::Summary> {
    let task = Task::start(
        reporter,
        "squashfs",
        format!("compress {}", opts.compression),
        store.len(),
    );
    squashfs::write_with_progress(tree, store, opts, out, &|done, total| {
        task.advance_fraction(done, total)
    })
}

/// The A/B disk image as the device gets it.
pub struct DiskImage {
    /// The image file: the staged `.raw`, or a spool file when only the
    /// ISO (which carries the disk's head) was asked for.
    pub file: File,
    pub layout: Layout,
}

/// The GPT A/B disk: ESP (GRUB, its config and env blocks, slot a's kernel
/// and initrd), `root_a` holding the root filesystem, an empty `root_b`,
/// and on x86_64 GRUB for BIOS boot. Staged as `{stem}.raw`, with its
/// block map `{stem}.raw.bmap`, when the disk format was asked for.
pub fn write_disk(
    plan: &BuildPlan,
    boot: &BootFiles,
    rootfs: Staged,
    seed: &[u8; 32],
    spool: &Path,
    reporter: &dyn Reporter,
    staging: &mut Staging,
) -> Result<DiskImage> {
    stage(reporter, "writing the A/B disk image".into());
    let volume_id = u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]);
    let (esp_tree, esp_store) = boot_tree(plan, boot, spool)?;

    let root_size = staging.len(rootfs)?;
    let slot = slot_size(plan, root_size)?;
    let layout = Layout::ab(plan.disk_arch, plan.esp_size, slot, 0, seed)?;
    let bios_images = match &boot.grub_pc {
        Some(g) => {
            let esp = layout
                .partition_number(disk::ESP)
                .context("the A/B layout has no ESP")?;
            Some(g.disk_images(esp, "/EFI/debian")?)
        }
        None => None,
    };
    let file = if plan.wants(Format::Disk) {
        let raw = staging.create(&plan.output(".raw"), "disk")?;
        staging.reopen(raw)?
    } else {
        tempfile::tempfile_in(spool).context("creating a spool file for the disk image")?
    };
    // UEFI requires FAT32 for the system partition of a fixed disk.
    let boot_part = BootPartition {
        name: disk::ESP,
        label: "ESP",
        volume_id,
        tree: &esp_tree,
        store: &esp_store,
    };
    let root_file = staging.reopen(rootfs)?;
    write_partitions(
        plan,
        reporter,
        ("disk", "write disk"),
        &file,
        &layout,
        &boot_part,
        (&root_file, root_size),
        Vec::new(),
    )
    .context("writing the disk image")?;
    if let Some(b) = &bios_images {
        bios::install(&file, &layout, &b.boot_img, &b.core_img)
            .context("installing GRUB for BIOS boot")?;
    }
    if plan.wants(Format::Disk) {
        write_bmap(&file, &plan.output(".raw.bmap"), staging)?;
    }
    Ok(DiskImage { file, layout })
}

/// The boot partition's files, for the disk's ESP and the card's boot
/// partition alike: the boot chain and grub.cfg, the environment blocks and
/// slot a's kernel and initrd.
fn boot_tree(
    plan: &BuildPlan,
    boot: &BootFiles,
    spool: &Path,
) -> Result<(crate::tree::FsTree, ContentStore)> {
    let grub_cfg = esp::grub_cfg(
        &format!("{} {}", plan.flavor.description, plan.version),
        &plan.cmdline,
    );
    let contents = esp::EspContents {
        chain: esp::BootChain {
            grub: &boot.grub,
            shim: boot.shim_pair(),
            files: &boot.efi,
            grub_cfg: &grub_cfg,
        },
        slots: vec![("a", &boot.vmlinuz, &boot.initrd)],
    };
    let mut store = ContentStore::new_in(spool)?;
    let tree = esp::tree(&contents, &mut store, plan.mtime)?;
    Ok((tree, store))
}

/// The FAT32 boot partition of an image: its partition, volume label and
/// serial, and its files.
struct BootPartition<'a> {
    name: &'a str,
    label: &'a str,
    volume_id: u32,
    tree: &'a crate::tree::FsTree,
    store: &'a ContentStore,
}

/// Writes an image's partitions with a bar over the data: the boot
/// partition as FAT32 (filling its partition), `root_a` from the root
/// filesystem and then `more`.
#[allow(clippy::too_many_arguments)]
fn write_partitions<'a>(
    plan: &BuildPlan,
    reporter: &dyn Reporter,
    (bar_id, bar_label): (&str, &str),
    file: &File,
    layout: &dyn Table,
    boot: &BootPartition<'a>,
    (root_file, root_size): (&'a File, u64),
    more: Vec<(&'a str, Source<'a>)>,
) -> Result<()> {
    let opts = FatOptions {
        size_bytes: layout
            .extent(boot.name)
            .map(|r| r.end - r.start)
            .unwrap_or(plan.esp_size),
        fat_type: Some(FatType::Fat32),
        volume_label: boot.label.into(),
        volume_id: boot.volume_id,
        timestamp: plan.mtime,
    };
    let data = root_size + boot.store.len();
    let (tree, store) = (boot.tree, boot.store);
    with_growth_bar(reporter, bar_id, bar_label, file, data, || {
        let mut parts = vec![
            (
                boot.name,
                Source::Writer(Box::new(move |w| {
                    fat::write(tree, store, &opts, w, 0)?;
                    Ok(())
                })),
            ),
            (disk::ROOT_A, Source::File(root_file)),
        ];
        parts.extend(more);
        disk::write_image(layout, file, parts)
    })
}

/// Each root slot's size: `--slot-size`, or twice the root filesystem and
/// at least 1 GiB.
fn slot_size(plan: &BuildPlan, root_size: u64) -> Result<u64> {
    Ok(match plan.slot_size {
        Some(s) if s < root_size => {
            bail!("--slot-size {s}: the root filesystem needs {root_size} bytes")
        }
        Some(s) => s,
        None => (root_size * 2).max(1 << 30),
    })
}

/// The Raspberry Pi card (docs/raspberry-pi.md), staged as
/// `{stem}-rpi.img`: an MBR with the FAT32 boot partition (the Pi
/// firmware, device trees, config.txt and U-Boot beside the ESP's GRUB,
/// grub.cfg, env blocks and slot a's kernel and initrd), `root_a` holding
/// the root filesystem, an empty `root_b` and a small `persist` holding
/// only [`boot_contract::persist::FRESH_MARKER`], which os-init grows,
/// wipes and formats on first boot.
pub fn write_card(
    plan: &BuildPlan,
    boot: &BootFiles,
    rootfs: Staged,
    seed: &[u8; 32],
    spool: &Path,
    reporter: &dyn Reporter,
    staging: &mut Staging,
) -> Result<CardSummary> {
    let rpi = boot
        .rpi
        .as_ref()
        .context("the build has no Raspberry Pi boot files")?;
    stage(reporter, "writing the Raspberry Pi card".into());
    let (mut tree, mut store) = boot_tree(plan, boot, spool)?;
    rpi.write(&mut crate::tree::edit::Editor {
        tree: &mut tree,
        store: &mut store,
        mtime: plan.mtime,
    })?;
    let root_size = staging.len(rootfs)?;
    let layout = CardLayout::new(
        plan.esp_size,
        slot_size(plan, root_size)?,
        CARD_PERSIST_SIZE,
        seed,
    )?;
    let out = staging.create(&plan.output("-rpi.img"), "rpi")?;
    let file = staging.reopen(out)?;
    // The Pi boot ROMs read FAT16 and FAT32; the partition type says
    // FAT32 (0x0c), and U-Boot's EFI wants the same as the disk's ESP.
    let boot_part = BootPartition {
        name: card::BOOT,
        label: "RPI-BOOT",
        volume_id: u32::from_le_bytes([seed[4], seed[5], seed[6], seed[7]]),
        tree: &tree,
        store: &store,
    };
    let root_file = staging.reopen(rootfs)?;
    write_partitions(
        plan,
        reporter,
        ("rpi", "write card"),
        &file,
        &layout,
        &boot_part,
        (&root_file, root_size),
        // Not formatted here (mkfs is the device's, DESIGN.md): marked, so
        // os-init formats it as new and wipes what an earlier use of the
        // card left where it grows.
        vec![(
            disk::PERSIST,
            Source::Reader(&mut &boot_contract::persist::FRESH_MARKER[..]),
        )],
    )
    .context("writing the Raspberry Pi card")?;
    write_bmap(&file, &plan.output("-rpi.img.bmap"), staging)?;
    let partitions = layout
        .partitions
        .iter()
        .enumerate()
        .map(|(i, (name, e))| CardPartition {
            number: i as u8 + 1,
            name,
            kind: format!("{:#04x}", e.kind),
            bootable: e.bootable,
            start: u64::from(e.first_lba) * disk::SECTOR,
            size: u64::from(e.sectors) * disk::SECTOR,
        })
        .collect();
    Ok(CardSummary {
        disk_id: format!("{:08x}", layout.disk_id),
        partitions,
        boards: rpi.boards.clone(),
    })
}

/// What `--json` says about a Raspberry Pi card.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardSummary {
    /// The MBR disk signature (`bi.esp=` is `<diskId>-01`).
    pub disk_id: String,
    pub partitions: Vec<CardPartition>,
    /// What boots each board.
    pub boards: Vec<crate::bootloader::rpi::BoardSupport>,
}

/// One partition of a card, bytes from the card's start.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CardPartition {
    pub number: u8,
    pub name: &'static str,
    /// The MBR type byte (`0x0c`, `0x83`).
    #[serde(rename = "type")]
    pub kind: String,
    pub bootable: bool,
    pub start: u64,
    pub size: u64,
}

/// `IMAGE.bmap` beside a raw image (`bmaptool copy IMAGE DEVICE` finds it
/// and writes only the blocks that hold data).
fn write_bmap(image: &File, path: &Path, staging: &mut Staging) -> Result<()> {
    let text = disk::bmap::bmap(image)
        .with_context(|| format!("writing the block map {}", path.display()))?;
    let out = staging.create(path, "bmap")?;
    std::io::Write::write_all(staging.file(out), text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The `persist` partition of a card as written: small, grown to the end
/// of the card on first boot.
pub const CARD_PERSIST_SIZE: u64 = 64 << 20;

/// The hybrid live/installer ISO, staged as `{stem}.iso`.
pub fn write_iso(
    plan: &BuildPlan,
    boot: &BootFiles,
    rootfs: Staged,
    disk: &DiskImage,
    spool: &Path,
    reporter: &dyn Reporter,
    staging: &mut Staging,
) -> Result<()> {
    stage(reporter, "writing the live/installer ISO".into());
    let label = live::label(&plan.flavor.name, &plan.arch, &plan.version);
    let iso_bios = match &boot.grub_pc {
        Some(g) => Some(g.iso_images(&label, "/boot/grub")?),
        None => None,
    };
    let iso = staging.create(&plan.output(".iso"), "iso")?;
    let expected = staging.len(rootfs)? + (boot.vmlinuz.len() + boot.initrd.len()) as u64;
    let rootfs_path = staging.temp_path(rootfs).to_path_buf();
    let iso_spool = tempfile::tempdir_in(spool)?;
    let title = format!("{} {}", plan.flavor.description, plan.version);
    let inputs = live::LiveInputs {
        flavor: &plan.flavor.name,
        arch: &plan.arch,
        version: &plan.version,
        title: &title,
        cmdline: &plan.cmdline,
        mtime: plan.mtime,
        vmlinuz: &boot.vmlinuz,
        initrd: &boot.initrd,
        rootfs: &rootfs_path,
        disk: &disk.file,
        layout: &disk.layout,
        efi: &boot.efi,
        grub: &boot.grub,
        shim: boot.shim_pair(),
        bios: iso_bios.as_ref(),
        spool: iso_spool.path(),
    };
    let out = staging.reopen(iso)?;
    with_growth_bar(reporter, "iso", "write ISO", &out, expected, || {
        live::write(&inputs, &out)
    })
    .context("writing the ISO")?;
    Ok(())
}

/// The upgrade artifact, staged as the directory `{stem}.upgrade`: an OCI
/// image layout whose root layer is the staged SquashFS itself (a
/// hardlink, so its bytes are written once), plus the slot's kernel and
/// initrd and the config the device checks before it writes anything.
#[allow(clippy::too_many_arguments)]
pub fn write_upgrade(
    plan: &BuildPlan,
    boot: &BootFiles,
    rootfs: Staged,
    kernel: &str,
    k3s_version: Option<&str>,
    lock_digest: &crate::oci::Digest,
    reporter: &dyn Reporter,
    staging: &mut Staging,
) -> Result<()> {
    stage(reporter, "writing the upgrade artifact".into());
    let (rootfs_digest, rootfs_size) = staging.digest(rootfs)?;
    let created = upgrade::layout::rfc3339(plan.mtime);
    let config = boot_contract::upgrade::Config {
        format: boot_contract::upgrade::CONFIG_FORMAT,
        version: plan.version.clone(),
        flavor: plan.flavor.name.clone(),
        release: plan.flavor.release.clone(),
        arch: plan.arch.clone(),
        kernel: kernel.to_string(),
        k3s_version: k3s_version.map(str::to_string),
        rootfs_size,
        rootfs_digest: rootfs_digest.to_string(),
        min_slot_size: rootfs_size.next_multiple_of(disk::ALIGN),
        min_agent_version: env!("CARGO_PKG_VERSION").to_string(),
        lock_digest: lock_digest.to_string(),
        created: created.clone(),
    };
    let annotations = Annotations {
        version: plan.version.clone(),
        created,
        revision: plan.revision.clone(),
        source: plan.source_url.clone(),
    };
    let dir = staging.create_dir(&plan.output(".upgrade"), "upgrade")?;
    let written = upgrade::write_layout(
        staging.temp_path(dir),
        &config,
        &ArtifactFiles {
            rootfs: staging.temp_path(rootfs),
            kernel: &boot.vmlinuz,
            initrd: &boot.initrd,
        },
        &annotations,
    )
    .context("writing the upgrade artifact")?;
    if !written.rootfs_linked {
        tracing::info!("the output filesystem cannot hardlink: the upgrade artifact holds a copy of the root filesystem");
    }
    staging.set_summary(dir, written.manifest.digest, written.size);
    Ok(())
}

/// Runs `work` while a bar follows `file` as it fills: a sampling thread
/// reports its allocated bytes. For writers that take no progress callback
/// (the disk and ISO writers write through their own devices).
fn with_growth_bar<T>(
    reporter: &dyn Reporter,
    id: &str,
    label: &str,
    file: &File,
    total: u64,
    work: impl FnOnce() -> T,
) -> T {
    use std::os::unix::fs::MetadataExt;
    let task = Task::start(reporter, id, label.to_string(), total);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = file.metadata() {
                    task.advance((m.blocks() * 512).min(total));
                }
                std::thread::park_timeout(Duration::from_millis(200));
            }
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        sampler.thread().unpark();
        result
    })
}
