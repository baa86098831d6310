//! The main job: `build-image [--flavor F] [--arch A] ...` — a bootable,
//! A/B-upgradable system image from a distribution's base image and
//! packages.
//!
//! Stages, in order ([`run`]):
//! 1. base: the flavor's base OCI image, or a base bootstrapped from the
//!    flavor's signed archive (`--base archive`);
//! 2. packages: kernel, boot essentials and boot loader from the flavor's
//!    repositories ([`crate::apt`]);
//! 3. components: os-agent, os-init and their units from the components
//!    image; k3s from its image (unless `--without k3s`); the node config;
//! 4. finalisation ([`finalise`]): what maintainer scripts would have done;
//! 5. initramfs: os-init and the boot modules' closure;
//! 6. root SquashFS, ESP, GPT A/B disk (and BIOS boot on x86_64);
//! 7. `build-image.lock` and the artifact list.

pub mod finalise;
pub mod fs;
pub mod k3s;
mod live;
pub mod pam;
pub mod systemd;

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::apt;
use crate::assemble::assemble_into;
use crate::bootloader::{bios, esp};
use crate::cache::hash_file;
use crate::cli::Global;
use crate::disk::{self, Layout, Source};
use crate::fat::{self, FatOptions};
use crate::flavor::Flavor;
use crate::initramfs;
use crate::kmod::ModuleIndex;
use crate::oci::{ImageSource, Puller, RegistryClient, WantedPlatform};
use crate::progress::{Event, Reporter};
use crate::squashfs;
use crate::tree::{ContentStore, FsTree};

use fs::Editor;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Format {
    /// GPT A/B raw disk image (`dd` it to a disk)
    Disk,
    /// Hybrid live/installer ISO: boots as a CD and from a USB stick, BIOS
    /// and UEFI; installs the A/B layout with `os-agent install`
    Iso,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Disk => "disk",
            Format::Iso => "iso",
        }
    }
}

/// Components a build can leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Optional {
    K3s,
}

/// The release image of os-agent and os-init for this version. A source
/// build may default to a local layout instead (`cargo xtask components`
/// writes one; see .cargo/config.toml).
pub fn default_components() -> String {
    match option_env!("BUILD_IMAGE_DEFAULT_COMPONENTS") {
        Some(dir) if Path::new(dir).join("index.json").is_file() => format!("oci-layout:{dir}"),
        _ => format!(
            "ghcr.io/build-image/components:v{}",
            env!("CARGO_PKG_VERSION")
        ),
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Built-in flavor name or a flavor file (flavors/*.yaml)
    #[arg(long, default_value = "debian", value_name = "FLAVOR")]
    pub flavor: String,
    /// Target architecture: amd64 or arm64 [default: the host's]
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Output formats, comma-separated [default: every format the flavor
    /// and architecture support]
    #[arg(long, value_delimiter = ',', value_name = "FORMAT")]
    pub format: Vec<Format>,
    /// Output directory
    #[arg(long, short, default_value = "out", value_name = "DIR")]
    pub output: PathBuf,
    /// Base image: REGISTRY/REPO[:TAG][@DIGEST], oci-layout:DIR[:TAG],
    /// rootfs-tar:FILE, or `archive` to bootstrap the base from the
    /// flavor's signed package archive [default: the flavor's base]
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,
    /// First-boot config (YAML, docs/config.md) baked into the image
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Leave a component out (k3s: a plain immutable node)
    #[arg(long, value_name = "COMPONENT")]
    pub without: Vec<Optional>,
    /// k3s image to take k3s from
    #[arg(long, default_value = k3s::DEFAULT_IMAGE, value_name = "IMAGE")]
    pub k3s_image: String,
    /// Image with os-agent and os-init for the target architecture
    /// [default: the release image of this version]
    #[arg(long, env = "BUILD_IMAGE_COMPONENTS", value_name = "IMAGE")]
    pub components: Option<String>,
    /// Version recorded in the image (os-release IMAGE_VERSION)
    /// [default: the build time, YYYYMMDD.HHMMSS]
    #[arg(long, value_name = "VERSION")]
    pub image_version: Option<String>,
    /// Extra kernel command line arguments
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Size of each root slot (e.g. 2G); default: twice the root
    /// filesystem, at least 1 GiB
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub slot_size: Option<u64>,
    /// Size of the EFI system partition
    #[arg(long, value_parser = parse_bytes, default_value = "256M", value_name = "SIZE")]
    pub esp_size: u64,
    /// SquashFS compression of the root: zstd, xz or gzip[:LEVEL]
    #[arg(long, default_value = "zstd", value_name = "ALGO[:LEVEL]")]
    pub compression: squashfs::Compression,
    /// Allow plain HTTP to this registry (HOST or HOST:PORT)
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

/// Parses `512M`, `2G`, `1048576`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: expected a size like 512M, 2G or 1048576"))
}

/// Gregorian date and time of a Unix time, `YYYYMMDD.HHMMSS`.
pub fn version_from_epoch(t: i64) -> String {
    let (y, m, d, h, mi, s) = crate::apt::release::civil(t);
    format!("{y:04}{m:02}{d:02}.{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_from_time() {
        assert_eq!(super::version_from_epoch(0), "19700101.000000");
        assert_eq!(super::version_from_epoch(1_700_000_000), "20231114.221320");
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Kernel command line per architecture: both consoles, the serial one
/// last so it is /dev/console (where os-init and os-agent report); `gpt`
/// lets the kernel use the backup GPT if a write of the primary tore;
/// `panic=10` reboots 10 s after a kernel panic (an init that dies, a
/// kernel that cannot mount its root) instead of waiting forever, so a
/// failed trial comes back on the default slot.
pub fn default_cmdline(arch: &str) -> &'static str {
    match arch {
        "arm64" => "gpt panic=10 console=tty0 console=ttyAMA0,115200n8",
        _ => "gpt panic=10 console=tty0 console=ttyS0,115200n8",
    }
}

/// One output file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Artifact {
    pub format: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Files written under temporary names in the output directory, renamed
/// into place only when the whole build succeeded; dropped unrenamed, they
/// are removed.
struct Staging {
    files: Vec<(tempfile::NamedTempFile, PathBuf)>,
}

impl Staging {
    fn create(&mut self, dir: &Path, name: &str) -> Result<usize> {
        let tmp = tempfile::Builder::new()
            .prefix(".build-image-")
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        self.files.push((tmp, dir.join(name)));
        Ok(self.files.len() - 1)
    }

    fn file(&mut self, i: usize) -> &mut File {
        self.files[i].0.as_file_mut()
    }

    fn commit(self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for (tmp, dest) in self.files {
            std::fs::set_permissions(
                tmp.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )?;
            tmp.as_file()
                .sync_all()
                .with_context(|| format!("syncing {}", dest.display()))?;
            tmp.persist(&dest)
                .with_context(|| format!("moving the result to {}", dest.display()))?;
            out.push(dest);
        }
        Ok(out)
    }
}

struct Lock {
    doc: serde_json::Map<String, serde_json::Value>,
}

impl Lock {
    fn set(&mut self, k: &str, v: serde_json::Value) {
        self.doc.insert(k.to_string(), v);
    }
}

fn image_lock(img: &crate::oci::ResolvedImage) -> serde_json::Value {
    json!({
        "image": img.source.to_string(),
        "platform": img.platform,
        "manifestDigest": img.manifest_digest.as_ref().map(|d| d.to_string()),
        "indexDigest": img.index_digest.as_ref().map(|d| d.to_string()),
    })
}

pub fn run(g: &Global, a: BuildArgs, reporter: &dyn Reporter) -> Result<()> {
    let stage = |m: String| reporter.event(Event::Stage { message: m });
    let flavor = Flavor::load(&a.flavor)?;
    let want = match &a.arch {
        Some(x) => WantedPlatform::parse(x)?,
        None => WantedPlatform::host(),
    };
    let arch = want.architecture.clone();
    if !flavor.architectures.contains(&arch) {
        bail!(
            "flavor {} ({}) does not support architecture {arch}; it supports {}",
            flavor.name,
            flavor.origin,
            flavor.architectures.join(", ")
        );
    }
    let disk_arch = match arch.as_str() {
        "amd64" => disk::Arch::X86_64,
        "arm64" => disk::Arch::Aarch64,
        other => bail!("architecture {other}: no disk layout for it"),
    };
    let mut formats = a.format.clone();
    if formats.is_empty() {
        formats = vec![Format::Disk, Format::Iso];
    }
    formats.sort();
    formats.dedup();
    let epoch = crate::cli::source_date_epoch()?;
    let mtime = epoch.unwrap_or_else(now);
    let version = a
        .image_version
        .clone()
        .unwrap_or_else(|| version_from_epoch(mtime));
    if version.is_empty() || version.chars().any(|c| c.is_whitespace() || c == '"') {
        bail!("--image-version {version:?}: expected a version without spaces or quotes");
    }
    let config = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            let _: serde_json::Value = serde_saphyr::from_str(&text)
                .map_err(|e| anyhow!("config {}: {e}", p.display()))?;
            Some(text)
        }
        None => None,
    };
    let with_k3s = !a.without.contains(&Optional::K3s);
    let base = a.base.clone().unwrap_or_else(|| flavor.default_base());
    let components = a.components.clone().unwrap_or_else(default_components);

    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating output directory {}", a.output.display()))?;
    let out_dir = a.output.canonicalize()?;
    let cache_dir = match &g.cache_dir {
        Some(d) => d.clone(),
        None => crate::cache::BlobCache::default_dir()?,
    };
    let puller = Puller {
        client: RegistryClient::new(a.insecure_registries.clone()),
        cache: crate::cache::BlobCache::open(&cache_dir)?,
        reporter,
    };
    let spool = tempfile::Builder::new()
        .prefix(".build-image-spool-")
        .tempdir_in(&out_dir)
        .context("creating a spool directory in the output directory")?;
    let mut store = ContentStore::new_in(spool.path())?;
    let mut tree = FsTree::new();
    let mut lock = Lock {
        doc: serde_json::Map::new(),
    };
    lock.set("apiVersion", json!(crate::API_VERSION));
    lock.set("kind", json!("BuildLock"));
    lock.set("flavor", json!(flavor.name));
    lock.set("release", json!(flavor.release));
    lock.set("arch", json!(arch));
    lock.set("version", json!(version));

    // 1. Base.
    let from_archive = base == "archive";
    if from_archive {
        stage(format!(
            "bootstrapping a {} {} base from the package archive",
            flavor.name, flavor.release
        ));
        let mut ed = Editor {
            tree: &mut tree,
            store: &mut store,
            mtime,
        };
        merged_usr(&mut ed, &arch)?;
        lock.set("base", json!({ "archive": true }));
    } else {
        let src = ImageSource::parse(&base).context("--base")?;
        stage(format!("resolving base image {src}"));
        let img = puller.resolve(&src, &want)?;
        assemble_into(&puller, &img, &mut tree, &mut store)
            .with_context(|| format!("assembling base image {src}"))?;
        lock.set("base", image_lock(&img));
    }

    // 2. Packages.
    let packages = flavor.packages_for(&arch);
    stage(format!(
        "installing {} packages and their dependencies from {}",
        packages.len(),
        flavor
            .repositories
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut sources = Vec::new();
    let mut keyrings = Vec::new();
    for r in &flavor.repositories {
        let mut bytes = Vec::new();
        for k in &r.keyrings {
            bytes.extend(flavor.keyring(k)?);
        }
        keyrings.push(apt::Keyring::from_bytes(&bytes, &r.keyrings.join(", "))?);
    }
    for (r, k) in flavor.repositories.iter().zip(&keyrings) {
        for suite in &r.suites {
            sources.push((
                apt::Source {
                    url: r.url[&arch].clone(),
                    suite: suite.clone(),
                    components: r.components.clone(),
                    arch: arch.clone(),
                },
                k,
            ));
        }
    }
    let fetcher = apt::Fetcher::new();
    let installed = apt::install_packages(
        &fetcher,
        &apt::InstallRequest {
            sources: &sources,
            packages: &packages,
            required: from_archive,
            now: now(),
            mtime,
        },
        &puller.cache,
        &mut tree,
        &mut store,
    )
    .with_context(|| format!("installing the {} flavor's packages", flavor.name))?;
    lock.set(
        "packages",
        json!(installed
            .iter()
            .map(|p| json!({
                "name": p.name,
                "version": p.version,
                "architecture": p.architecture,
                "sha256": p.sha256,
            }))
            .collect::<Vec<_>>()),
    );

    // 3. Components, k3s, config.
    stage(format!("adding os-agent and os-init from {components}"));
    let comp_src = ImageSource::parse(&components).context("--components")?;
    let comp = puller
        .resolve(&comp_src, &want)
        .with_context(|| format!("resolving the components image {comp_src} (build it with `cargo xtask components`, or pass --components)"))?;
    assemble_into(&puller, &comp, &mut tree, &mut store)
        .with_context(|| format!("adding the components image {comp_src}"))?;
    lock.set("components", image_lock(&comp));
    let mut k3s_version = None;
    if with_k3s {
        let src = ImageSource::parse(&a.k3s_image).context("--k3s-image")?;
        stage(format!("adding k3s from {src}"));
        let img = puller.resolve(&src, &want).with_context(|| {
            format!(
                "resolving the k3s image {src} (pass --k3s-image for a mirror, or --without k3s)"
            )
        })?;
        let mut k3s_tree = FsTree::new();
        assemble_into(&puller, &img, &mut k3s_tree, &mut store)?;
        let bin = k3s::binary(&k3s_tree, &store, &src.to_string())?;
        let mut ed = Editor {
            tree: &mut tree,
            store: &mut store,
            mtime,
        };
        k3s::layer(&mut ed, &bin)?;
        k3s_version = match &src {
            ImageSource::Registry(r) => r.tag.as_deref().and_then(k3s::version_from_tag),
            _ => None,
        };
        let mut l = image_lock(&img);
        l["version"] = json!(k3s_version);
        lock.set("k3s", l);
    } else {
        lock.set("k3s", serde_json::Value::Null);
    }
    {
        let mut ed = Editor {
            tree: &mut tree,
            store: &mut store,
            mtime,
        };
        if let Some(text) = &config {
            ed.write("etc/os-agent/config.yaml", text.as_bytes(), 0o600)?;
        }
    }

    // 4. Kernel, module indexes, finalisation.
    let versions = ModuleIndex::versions(&tree);
    let kver = versions
        .last()
        .cloned()
        .ok_or_else(|| anyhow!("no kernel modules in the image: the flavor's kernel package did not install /lib/modules/VERSION"))?;
    stage(format!("kernel {kver}: module indexes"));
    let depmod = crate::kmod::depmod::write_indexes(&mut tree, &mut store, &kver)
        .with_context(|| format!("writing the module indexes of kernel {kver}"))?;
    tracing::info!("module indexes: {depmod:?}");
    stage("finalising the root filesystem".into());
    let info = finalise::ImageInfo {
        flavor: flavor.name.clone(),
        release: flavor.release.clone(),
        arch: arch.clone(),
        version: version.clone(),
        k3s_version: k3s_version.clone(),
    };
    let report = {
        let mut ed = Editor {
            tree: &mut tree,
            store: &mut store,
            mtime,
        };
        finalise::finalise(&mut ed, &info)?
    };
    for s in &report.steps {
        tracing::info!("finalise: {s}");
    }
    lock.set("kernel", json!(kver));
    if let Some(e) = epoch {
        tree.clamp_mtimes(e);
    }

    // 5. Initramfs.
    stage("initramfs: os-init and the boot modules".into());
    let (vmlinuz, os_init) = {
        let ed = Editor {
            tree: &mut tree,
            store: &mut store,
            mtime,
        };
        let vmlinuz = ed
            .read_following(&format!("boot/vmlinuz-{kver}"))?
            .ok_or_else(|| anyhow!("kernel {kver}: /boot/vmlinuz-{kver} is not in the image"))?;
        let os_init = ed.read("usr/lib/build-image/os-init")?.ok_or_else(|| {
            anyhow!("components image {comp_src}: no /usr/lib/build-image/os-init")
        })?;
        if !ed.exists("usr/bin/os-agent") {
            bail!("components image {comp_src}: no /usr/bin/os-agent");
        }
        (vmlinuz, os_init)
    };
    let idx = ModuleIndex::scan(&tree, &store, &kver)?;
    let (initrd, loaded) =
        initramfs::build(&idx, &tree, &mut store, &os_init, initramfs::BOOT_MODULES)?;
    let initrd = gzip(&initrd)?;
    tracing::info!("initramfs: {} modules", loaded.len());

    // 6. Root filesystem and disk.
    let base_name = format!("{}-{}-{}", flavor.name, flavor.release, arch);
    let mut staging = Staging { files: Vec::new() };
    let root_i = staging.create(&out_dir, &format!("{base_name}.squashfs"))?;
    stage(format!(
        "writing the root filesystem ({} entries)",
        tree.entry_count()
    ));
    let sq = squashfs::Options {
        compression: a.compression,
        mkfs_time: mtime.clamp(0, u32::MAX as i64) as u32,
        ..Default::default()
    };
    sq.validate()?;
    squashfs::write(&tree, &store, &sq, staging.file(root_i))
        .context("writing the root SquashFS")?;
    let root_size = staging.file(root_i).seek(SeekFrom::End(0))?;

    let mut artifacts_pending: Vec<(&'static str, usize)> = vec![("squashfs", root_i)];
    if formats.contains(&Format::Disk) || formats.contains(&Format::Iso) {
        stage("writing the A/B disk image".into());
        let efi = esp::efi_files(&arch)?;
        let ed = Editor {
            tree: &mut tree,
            store: &mut store,
            mtime,
        };
        let grub = ed.read(efi.grub)?.ok_or_else(|| {
            anyhow!("/{} is not in the image: the flavor's bootloader packages must include the signed GRUB", efi.grub)
        })?;
        let shim = ed.read(efi.shim)?;
        let mm = ed.read(efi.mok_manager)?;
        let cmdline = match &a.cmdline {
            Some(extra) => format!("{} {extra}", default_cmdline(&arch)),
            None => default_cmdline(&arch).to_string(),
        };
        let cfg = esp::grub_cfg(&format!("{} {version}", flavor.description), &cmdline);
        let contents = esp::EspContents {
            grub: &grub,
            shim: shim.as_deref().map(|s| (s, mm.as_deref())),
            files: &efi,
            grub_cfg: &cfg,
            slots: vec![("a", &vmlinuz, &initrd)],
        };
        let seed = Sha256::digest(serde_json::to_vec(&lock.doc)?);
        let volume_id = u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]);
        let grub_pc = if disk_arch == disk::Arch::X86_64 {
            if tree.lookup_path(bios::I386_PC_DIR.as_bytes()).is_some() {
                Some(bios::GrubPc::from_tree(&tree, &store)?)
            } else {
                tracing::warn!(
                    "the image has no /{}: the flavor lacks grub-pc-bin, so the disk boots with UEFI only",
                    bios::I386_PC_DIR
                );
                None
            }
        } else {
            None
        };
        let bios_images = match &grub_pc {
            Some(g) => {
                stage("BIOS boot: GRUB core.img".into());
                Some(g.disk_images(&bios::fat_volume_uuid(volume_id), "/EFI/debian")?)
            }
            None => None,
        };
        let mut esp_store = ContentStore::new_in(spool.path())?;
        let esp_tree = esp::tree(&contents, &mut esp_store, mtime)?;
        let slot = match a.slot_size {
            Some(s) => {
                if s < root_size {
                    bail!("--slot-size {s}: the root filesystem needs {root_size} bytes");
                }
                s
            }
            None => (root_size * 2).max(1 << 30),
        };
        let layout = Layout::ab(disk_arch, a.esp_size, slot, 0, &seed)?;
        // The ISO carries the disk image's head: without the disk format,
        // the disk is written to the spool only.
        let spool_disk;
        let disk_i = if formats.contains(&Format::Disk) {
            Some(staging.create(&out_dir, &format!("{base_name}.raw"))?)
        } else {
            None
        };
        let opts = FatOptions {
            size_bytes: layout
                .partition(disk::ESP)
                .map(|p| p.size())
                .unwrap_or(a.esp_size),
            volume_label: "ESP".into(),
            volume_id,
            timestamp: mtime,
        };
        let root_file = staging.files[root_i].0.reopen()?;
        let disk_file = match disk_i {
            Some(i) => staging.files[i].0.as_file().try_clone()?,
            None => {
                spool_disk = tempfile::tempfile_in(spool.path())
                    .context("creating a spool file for the disk image")?;
                spool_disk.try_clone()?
            }
        };
        let esp_store_ref = &esp_store;
        disk::write_image(
            &layout,
            &disk_file,
            vec![
                (
                    disk::ESP,
                    Source::Writer(Box::new(move |w| {
                        fat::write(&esp_tree, esp_store_ref, &opts, w, 0)?;
                        Ok(())
                    })),
                ),
                (disk::ROOT_A, Source::File(&root_file)),
            ],
        )
        .context("writing the disk image")?;
        if let Some(b) = &bios_images {
            bios::install(&disk_file, &layout, &b.boot_img, &b.core_img)
                .context("installing GRUB for BIOS boot")?;
        }
        if let Some(i) = disk_i {
            artifacts_pending.push(("disk", i));
        }

        if formats.contains(&Format::Iso) {
            stage("writing the live/installer ISO".into());
            let label = live::label(&flavor.name, &arch, &version);
            let iso_bios = match &grub_pc {
                Some(g) => Some(g.iso_images(&label, "/boot/grub")?),
                None => None,
            };
            let iso_i = staging.create(&out_dir, &format!("{base_name}.iso"))?;
            let iso_spool = tempfile::tempdir_in(spool.path())?;
            let rootfs_path = staging.files[root_i].0.path().to_path_buf();
            let title = format!("{} {version}", flavor.description);
            let inputs = live::LiveInputs {
                flavor: &flavor.name,
                arch: &arch,
                version: &version,
                title: &title,
                cmdline: &cmdline,
                mtime,
                vmlinuz: &vmlinuz,
                initrd: &initrd,
                rootfs: &rootfs_path,
                disk: &disk_file,
                layout: &layout,
                efi: &efi,
                grub: &grub,
                shim: shim.as_deref().map(|s| (s, mm.as_deref())),
                bios: iso_bios.as_ref(),
                spool: iso_spool.path(),
            };
            live::write(&inputs, staging.file(iso_i)).context("writing the ISO")?;
            artifacts_pending.push(("iso", iso_i));
        }
    }

    // 7. Lock file, results.
    let lock_i = staging.create(&out_dir, "build-image.lock")?;
    {
        let f = staging.file(lock_i);
        serde_json::to_writer_pretty(&mut *f, &lock.doc)?;
        f.write_all(b"\n")?;
    }
    artifacts_pending.push(("lock", lock_i));
    let names: Vec<(&str, PathBuf)> = artifacts_pending
        .iter()
        .map(|(f, i)| (*f, staging.files[*i].1.clone()))
        .collect();
    drop(store);
    staging.commit()?;
    let mut artifacts = Vec::new();
    for (format, path) in names {
        let (sha, size) = hash_file(&path)?;
        artifacts.push(Artifact {
            format: format.to_string(),
            path,
            size,
            sha256: sha.hex().to_string(),
        });
    }
    if g.json {
        let doc = json!({
            "apiVersion": crate::API_VERSION,
            "kind": "BuildResult",
            "flavor": flavor.name,
            "arch": arch,
            "version": version,
            "kernel": kver,
            "k3sVersion": k3s_version,
            "formats": formats.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "artifacts": artifacts,
        });
        println!("{}", serde_json::to_string(&doc)?);
    } else {
        for art in &artifacts {
            println!(
                "{}  {}  {}",
                art.path.display(),
                indicatif::HumanBytes(art.size),
                art.sha256
            );
        }
    }
    Ok(())
}

/// The merged-/usr symlinks a bootstrap starts from (as debootstrap and
/// mmdebstrap make them), so packages' /bin, /sbin and /lib paths land
/// under /usr.
fn merged_usr(ed: &mut Editor<'_>, arch: &str) -> Result<()> {
    let mut dirs = vec!["bin", "sbin", "lib"];
    if arch == "amd64" {
        dirs.push("lib64");
    }
    for d in dirs {
        ed.mkdir(&format!("usr/{d}"), 0o755)?;
        ed.symlink(d, &format!("usr/{d}"))?;
    }
    for d in [
        "etc", "var", "tmp", "root", "dev", "proc", "sys", "run", "home",
    ] {
        ed.mkdir(d, 0o755)?;
    }
    Ok(())
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data)?;
    Ok(enc.finish()?)
}
