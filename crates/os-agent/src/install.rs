//! `os-agent install`: writes the A/B disk layout from the live ISO to a
//! target disk.
//!
//! Everything is checked before the first write: the manifest
//! ([`manifest`]), the sizes of the files it names, the `--config` file,
//! the target ([`disks`]: not mounted, not swap, not the live medium,
//! large enough, 512-byte logical blocks, and — unless `--force` or
//! `install.overwrite: true` — no installed system with data on `persist`).
//! Then, so the disk carries a valid partition table only at the very end:
//!
//! 1. zero the first and the last MiB of the target;
//! 2. write the head (from byte 34 × 512 on: chunks and zeros), hashing
//!    the whole reconstructed head;
//! 3. write the root filesystem at root_a, hashing it; zero the first MiB
//!    of root_b; give the ESP's FAT a random serial; fsync;
//! 4. the GPT of the head with a random disk GUID and random partition
//!    GUIDs (the disk's own identity; names and types kept), its backup
//!    moved to the end of the target: backup, fsync, primary, then LBA 0
//!    (the protective MBR fitted to the target, the boot code kept); fsync;
//!    `BLKRRPART` for block devices;
//! 5. `--config`: the file to the new ESP as `/build-image/config.yaml`;
//! 6. under UEFI, a firmware boot entry for the new disk, first in
//!    `BootOrder` and in `BootNext` ([`efiboot`]), so the machine boots the
//!    disk next, not the installer again.
//!
//! Any failure after the first write zeroes the first and last MiB again,
//! so no half-written disk looks bootable, and returns the error.

pub mod disks;
pub mod efiboot;
mod identity;
pub mod manifest;

use std::fs::{self, File, OpenOptions};
use std::io::{Cursor, Read};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boot_contract::gpt::{self, Gpt, Guid};
use boot_contract::partition;
use sha2::{Digest, Sha256};

use crate::bail;
use crate::error::{Context, Error, Result};
use crate::fault;
use disks::Sys;
use manifest::{Manifest, SECTOR, TABLE_BYTES};

const MIB: u64 = 1 << 20;
/// I/O unit of the copy loops.
const BUF: usize = MIB as usize;
/// How long to wait for the new ESP's device node.
const ESP_WAIT: Duration = Duration::from_secs(10);
/// Where `install --config` mounts the new disk's ESP.
pub const NEW_ESP_MOUNT: &str = "/run/os-agent/install-esp";

/// The target disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// The one suitable disk (see [`disks::pick_auto`]).
    Auto,
    Path(PathBuf),
}

impl Device {
    pub fn parse(s: &str) -> Device {
        if s == "auto" {
            Device::Auto
        } else {
            Device::Path(PathBuf::from(s))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The mounted live ISO (`/run/os/live`).
    pub source: PathBuf,
    pub device: Device,
    /// A configuration file to put on the new ESP.
    pub config: Option<PathBuf>,
    /// The new disk's ESP is mounted here (for a regular-file target).
    pub esp: Option<PathBuf>,
    pub sys: Sys,
    /// This machine's architecture, as image manifests name it (`amd64`,
    /// `arm64`); see [`machine_arch`].
    pub arch: String,
    /// Install over a disk that holds an installed system's data
    /// (`--force`, `install.overwrite: true`).
    pub overwrite: bool,
    /// Where the firmware's boot entry goes.
    pub efivars: EfiVars,
    /// Tests: fail at this fault point (see [`fault::check`]).
    pub fail_at: Option<&'static str>,
}

/// Where `install` puts the firmware boot entry of the new disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EfiVars {
    /// efivarfs, when the machine booted with UEFI and the target is a
    /// block device.
    Auto,
    /// A directory laid out like efivarfs (tests).
    Dir(PathBuf),
    Off,
}

impl Options {
    pub fn new(device: Device) -> Self {
        Options {
            source: boot_contract::live::MOUNT.into(),
            device,
            config: None,
            esp: None,
            sys: Sys::host(),
            arch: machine_arch().into(),
            overwrite: false,
            efivars: EfiVars::Auto,
            fail_at: None,
        }
    }
}

/// What was installed where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub id: String,
    pub version: String,
    pub device: PathBuf,
    /// The new disk's GUID.
    pub disk_guid: Guid,
    /// The new disk's ESP.
    pub esp: efiboot::EspPartition,
    /// The firmware boot entry made for it (`Boot0003`), or why none was.
    pub boot_entry: std::result::Result<String, String>,
}

/// The architecture this program was built for (and so runs on), in the
/// Debian names image manifests use.
pub fn machine_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("os-agent: {msg}");
}

/// The opened target.
struct Target {
    path: PathBuf,
    file: File,
    size: u64,
    /// The whole disk's name in sysfs; None for a regular file.
    disk: Option<String>,
}

/// Opens `path` for writing after checking it: a regular file (which
/// must exist) or a whole disk of 512-byte logical blocks that nothing
/// uses and, unless `overwrite`, that holds no installed system's data.
/// Writes nothing.
fn open_target(sys: &Sys, path: &Path, min_size: u64, overwrite: bool) -> Result<Target> {
    let meta = fs::metadata(path).with_context(|| format!("target {}", path.display()))?;
    let ft = meta.file_type();
    let (file, disk) = if ft.is_file() {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {} for writing", path.display()))?;
        (f, None)
    } else if ft.is_block_device() {
        use std::os::unix::fs::MetadataExt;
        let (maj, min) = (
            rustix::fs::major(meta.rdev()),
            rustix::fs::minor(meta.rdev()),
        );
        let dev = format!("{maj}:{min}");
        let node = sys.sysfs.join("dev/block").join(&dev);
        if node.join("partition").exists() {
            let disk = disks::disk_of(sys, &dev).unwrap_or_else(|| "its disk".into());
            bail!(
                "{} is a partition of {disk}: install writes a whole disk, name the disk",
                path.display()
            );
        }
        let name = disks::disk_of(sys, &dev).ok_or_else(|| {
            Error::msg(format!(
                "{} ({dev}): not found in {}",
                path.display(),
                sys.sysfs.join("dev/block").display()
            ))
        })?;
        let disk = disks::disk(sys, &name)?;
        if let Some(why) = disks::block_size_refusal(&disk) {
            bail!(
                "{} ({name}): {why}; refusing to install to it",
                path.display()
            );
        }
        if let Some(why) = disks::busy(sys, &disk)? {
            bail!("{}: {why}; refusing to overwrite it", path.display());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                    Error::msg(format!(
                        "{}: in use (opened exclusively by another program, or a partition of it is in use)",
                        path.display()
                    ))
                } else {
                    Error::msg(format!("opening {} for writing: {e}", path.display()))
                }
            })?;
        (f, Some(name))
    } else {
        bail!("{}: not a block device or a regular file", path.display());
    };
    let size = {
        use std::io::{Seek, SeekFrom};
        (&file)
            .seek(SeekFrom::End(0))
            .with_context(|| format!("reading the size of {}", path.display()))?
    };
    if size < min_size {
        bail!(
            "{} is {size} bytes, the image needs at least {min_size}",
            path.display()
        );
    }
    if size % SECTOR != 0 {
        bail!(
            "{} is {size} bytes, not a whole number of {SECTOR}-byte sectors",
            path.display()
        );
    }
    if !overwrite {
        if let Some(why) = disks::existing_system(&mut &file, size) {
            bail!(
                "{} {why}; refusing to install over it: set install.overwrite: true in the \
                 configuration or pass --force to replace it",
                path.display()
            );
        }
    }
    Ok(Target {
        path: path.to_path_buf(),
        file,
        size,
        disk,
    })
}

/// Opens `source`/`rel` and checks that it holds `len` bytes.
fn open_input(source: &Path, rel: &str, len: u64, field: &str) -> Result<(File, PathBuf)> {
    let path = source.join(rel);
    let f = File::open(&path).with_context(|| format!("opening {} ({field})", path.display()))?;
    let have = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if have != len {
        bail!(
            "{}: is {have} bytes, the manifest's {field} says {len}",
            path.display()
        );
    }
    Ok((f, path))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes at byte offsets and remembers that it did (so a failure wipes).
struct Writer<'a> {
    t: &'a Target,
    touched: bool,
}

impl Writer<'_> {
    fn write(&mut self, at: u64, data: &[u8]) -> Result<()> {
        self.touched = true;
        self.t
            .file
            .write_all_at(data, at)
            .with_context(|| format!("writing {} at byte {at}", self.t.path.display()))
    }

    fn zero(&mut self, at: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; BUF.min(len as usize)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BUF as u64) as usize;
            self.write(at + done, &zeros[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.t
            .file
            .sync_all()
            .with_context(|| format!("syncing {}", self.t.path.display()))
    }
}

/// Zeroes the first and the last MiB of the target and syncs.
fn wipe(w: &mut Writer<'_>) -> Result<()> {
    let size = w.t.size;
    w.zero(0, MIB.min(size))?;
    w.zero(size - MIB.min(size), MIB.min(size))?;
    w.sync()
}

/// Writes the head but LBA 0..33, which it returns; checks the head's
/// SHA-256 over every byte.
fn write_head(w: &mut Writer<'_>, m: &Manifest, mut src: File, src_path: &Path) -> Result<Vec<u8>> {
    let mut table = vec![0u8; TABLE_BYTES as usize];
    let mut hash = Sha256::new();
    let zeros = vec![0u8; BUF];
    let mut buf = vec![0u8; BUF];
    // Emits head bytes [pos, pos + data.len()).
    let mut emit = |w: &mut Writer<'_>, pos: u64, data: &[u8]| -> Result<()> {
        hash.update(data);
        let end = pos + data.len() as u64;
        if pos < TABLE_BYTES {
            let upto = end.min(TABLE_BYTES);
            table[pos as usize..upto as usize].copy_from_slice(&data[..(upto - pos) as usize]);
        }
        if end > TABLE_BYTES {
            let skip = TABLE_BYTES.saturating_sub(pos);
            w.write(pos + skip, &data[skip as usize..])?;
        }
        Ok(())
    };
    let mut pos = 0u64;
    let chunks = m.head.chunks.iter().map(|c| (c[0], c[1]));
    let tail = std::iter::once((m.head.size, 0));
    for (off, len) in chunks.chain(tail) {
        while pos < off {
            let n = (off - pos).min(BUF as u64) as usize;
            emit(w, pos, &zeros[..n])?;
            pos += n as u64;
        }
        let end = off + len;
        while pos < end {
            let n = (end - pos).min(BUF as u64) as usize;
            src.read_exact(&mut buf[..n])
                .with_context(|| format!("reading {}", src_path.display()))?;
            emit(w, pos, &buf[..n])?;
            pos += n as u64;
        }
    }
    let got = hex(&hash.finalize());
    if got != m.head.sha256 {
        bail!(
            "{}: the reconstructed head has SHA-256 {got}, the manifest's head.sha256 says {}",
            src_path.display(),
            m.head.sha256
        );
    }
    Ok(table)
}

/// Copies the root filesystem to root_a, checking its SHA-256.
fn write_rootfs(w: &mut Writer<'_>, m: &Manifest, mut src: File, src_path: &Path) -> Result<()> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut pos = 0u64;
    while pos < m.rootfs.size {
        let n = (m.rootfs.size - pos).min(BUF as u64) as usize;
        src.read_exact(&mut buf[..n])
            .with_context(|| format!("reading {}", src_path.display()))?;
        hash.update(&buf[..n]);
        w.write(m.root_a.offset + pos, &buf[..n])?;
        pos += n as u64;
    }
    let got = hex(&hash.finalize());
    if got != m.rootfs.sha256 {
        bail!(
            "{}: has SHA-256 {got}, the manifest's rootfs.sha256 says {}",
            src_path.display(),
            m.rootfs.sha256
        );
    }
    Ok(())
}

/// Writes the head's partition table `g`, fitted to the target: backup
/// GPT, primary GPT, LBA 0 (from the head's `table`).
fn write_table(w: &mut Writer<'_>, mut g: Gpt, table: &[u8], fail_at: Option<&str>) -> Result<Gpt> {
    let sectors = w.t.size / SECTOR;
    g.relocate_backup(sectors)
        .with_context(|| format!("moving the backup GPT to the end of {}", w.t.path.display()))?;
    let [be, bh, pe, ph] = g.writes();
    for (at, bytes) in [be, bh] {
        w.write(at, &bytes)?;
    }
    w.sync()?;
    fault::check(fault::INSTALL_AFTER_BACKUP_GPT, fail_at)?;
    for (at, bytes) in [pe, ph] {
        w.write(at, &bytes)?;
    }
    w.sync()?;
    let mut mbr = [0u8; 512];
    mbr.copy_from_slice(&table[..512]);
    gpt::fit_protective_mbr(&mut mbr, sectors);
    w.write(0, &mbr)?;
    w.sync()?;
    Ok(g)
}

/// Everything from the first write to the partition table; returns the
/// table written.
fn write_all(
    w: &mut Writer<'_>,
    m: &Manifest,
    head: (File, PathBuf),
    rootfs: (File, PathBuf),
    fail_at: Option<&str>,
) -> Result<Gpt> {
    let size = w.t.size;
    progress(format!(
        "zeroing the first and last MiB of {}",
        w.t.path.display()
    ));
    wipe(w)?;
    progress(format!("writing the boot area ({} MiB)", m.head.size / MIB));
    let table = write_head(w, m, head.0, &head.1)?;
    let mut g = Gpt::read(&mut Cursor::new(&table), SECTOR, m.image_size / SECTOR)
        .context("the head's GPT (head.file)")?;
    fault::check(fault::INSTALL_AFTER_HEAD, fail_at)?;
    progress(format!(
        "writing {} ({} MiB)",
        partition::ROOT_A,
        m.rootfs.size.div_ceil(MIB)
    ));
    write_rootfs(w, m, rootfs.0, &rootfs.1)?;
    w.zero(m.root_b.offset, MIB.min(m.root_b.size))?;
    identity::personalize(w, &mut g)?;
    w.sync()?;
    fault::check(fault::INSTALL_AFTER_ROOTFS, fail_at)?;
    progress(format!("writing the partition table ({} bytes disk)", size));
    write_table(w, g, &table, fail_at)
}

/// `BLKRRPART`: the kernel re-reads the partition table.
#[allow(unsafe_code)]
fn reread_partitions(f: &File) -> rustix::io::Result<()> {
    use rustix::ioctl::{opcode, NoArg, Opcode};
    /// `_IO(0x12, 95)` in `<linux/fs.h>`.
    const BLKRRPART: Opcode = opcode::none(0x12, 95);
    // SAFETY: BLKRRPART takes no argument; the fd is an open block device.
    unsafe { rustix::ioctl::ioctl(f, NoArg::<BLKRRPART>::new()) }
}

fn reread_with_retries(t: &Target) {
    let mut last = None;
    for _ in 0..10 {
        match reread_partitions(&t.file) {
            Ok(()) => return,
            Err(e) if e == rustix::io::Errno::BUSY => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    if let Some(e) = last {
        eprintln!(
            "os-agent: warning: the kernel did not re-read the partition table of {}: {e} (a reboot will)",
            t.path.display()
        );
    }
}

/// Writes `text` as build-image/config.yaml under the mounted ESP `dir`.
fn put_config(dir: &Path, text: &[u8]) -> Result<()> {
    let path = dir.join(crate::config::ESP_CONFIG);
    let parent = path.parent().expect("ESP_CONFIG has a directory");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&path)?;
        std::io::Write::write_all(&mut f, text)?;
        f.sync_all()?;
        File::open(parent)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// An ESP this program mounted; unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::empty()) {
            eprintln!("os-agent: unmounting {}: {e}", self.0.display());
        }
    }
}

/// Finds the partition named ESP of `disk` (waiting for the kernel and
/// its device node), mounts it and writes the configuration.
fn config_to_new_esp(sys: &Sys, disk: &str, text: &[u8]) -> Result<()> {
    let deadline = Instant::now() + ESP_WAIT;
    let node = loop {
        let found = disks::partitions_named(sys, partition::ESP)
            .into_iter()
            .find(|(_, d)| d == disk)
            .map(|(p, _)| sys.dev.join(p));
        match found {
            Some(n) if n.exists() => break n,
            _ if Instant::now() >= deadline => bail!(
                "the partition named {} of {disk} did not appear within {} s (no /dev node)",
                partition::ESP,
                ESP_WAIT.as_secs()
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    fs::create_dir_all(NEW_ESP_MOUNT).with_context(|| format!("creating {NEW_ESP_MOUNT}"))?;
    use rustix::mount::MountFlags;
    rustix::mount::mount(
        &node,
        NEW_ESP_MOUNT,
        "vfat",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .with_context(|| {
        format!(
            "mounting the new ESP {} (vfat) at {NEW_ESP_MOUNT}",
            node.display()
        )
    })?;
    let m = Mounted(NEW_ESP_MOUNT.into());
    put_config(&m.0, text)
}

/// The whole `install` command.
pub fn install(opts: &Options) -> Result<Installed> {
    let (m, mpath) = manifest::load(&opts.source)?;
    if m.image.arch != opts.arch {
        bail!(
            "{}: the image is for {}, this machine is {}: boot the ISO of its architecture",
            mpath.display(),
            m.image.arch,
            opts.arch
        );
    }
    let head = open_input(
        &opts.source,
        &m.head.file,
        m.head.stored_len(),
        "head.file (sum of head.chunks)",
    )
    .with_context(|| mpath.display().to_string())?;
    let rootfs = open_input(&opts.source, &m.rootfs.file, m.rootfs.size, "rootfs.size")
        .with_context(|| mpath.display().to_string())?;
    let config = match &opts.config {
        Some(p) => {
            let text = fs::read_to_string(p)
                .with_context(|| format!("reading --config {}", p.display()))?;
            crate::config::parse(&text, p).map_err(Error::msg)?;
            Some(text)
        }
        None => None,
    };
    let path = match &opts.device {
        Device::Path(p) => p.clone(),
        Device::Auto => {
            let d = disks::pick_auto(&opts.sys, m.min_device_size, opts.overwrite)?;
            let p = opts.sys.dev.join(&d.name);
            progress(format!(
                "--device auto: picked {} ({})",
                p.display(),
                disks::human(d.size)
            ));
            p
        }
    };
    let t = open_target(&opts.sys, &path, m.min_device_size, opts.overwrite)?;
    if config.is_some() && t.disk.is_none() && opts.esp.is_none() {
        bail!(
            "--config needs a block device as the target ({} is a regular file), or --esp DIR",
            path.display()
        );
    }
    progress(format!(
        "installing {} {} ({}) to {} ({})",
        m.image.id,
        m.image.version,
        m.image.arch,
        path.display(),
        disks::human(t.size)
    ));
    let table = {
        let mut w = Writer {
            t: &t,
            touched: false,
        };
        match write_all(&mut w, &m, head, rootfs, opts.fail_at) {
            Ok(g) => g,
            Err(e) => return Err(if w.touched { wipe_after(&mut w, e) } else { e }),
        }
    };
    let (index, e) = table
        .find(partition::ESP)
        .ok_or_else(|| Error::msg("the new disk's GPT has no ESP"))?;
    let esp = efiboot::EspPartition {
        number: index as u32 + 1,
        first_lba: e.first_lba,
        sectors: e.sectors(),
        guid: e.guid,
    };
    if t.disk.is_some() {
        reread_with_retries(&t);
    }
    let Target {
        path,
        file,
        size,
        disk,
    } = t;
    // Close the disk: mounting its ESP needs it not held exclusively.
    drop(file);
    if let Some(text) = &config {
        progress("writing the configuration to the new ESP");
        let r = match (&opts.esp, &disk) {
            (Some(dir), _) => put_config(dir, text.as_bytes()),
            (None, Some(disk)) => config_to_new_esp(&opts.sys, disk, text.as_bytes()),
            (None, None) => Err(Error::msg("--config needs a block device or --esp DIR")),
        };
        if let Err(e) = r {
            return Err(wipe_reopened(&path, size, disk.is_some(), e));
        }
    }
    let description = format!("{} {}", m.image.id, m.image.version);
    let boot_entry =
        boot_entry(opts, disk.is_some(), &description, &esp).map_err(|e| format!("{e:#}"));
    Ok(Installed {
        id: m.image.id,
        version: m.image.version,
        device: path,
        disk_guid: table.disk_guid(),
        esp,
        boot_entry,
    })
}

/// The firmware boot entry for the new disk (see [`efiboot`]): its name,
/// or why there is none. A failure here does not undo the install: the
/// disk is complete, and the installer refuses to install over it again.
fn boot_entry(
    opts: &Options,
    block: bool,
    description: &str,
    esp: &efiboot::EspPartition,
) -> Result<String> {
    let dir = match &opts.efivars {
        EfiVars::Off => return Ok("none (off)".into()),
        EfiVars::Dir(d) => d.clone(),
        EfiVars::Auto if !block => return Ok("none (the target is a file)".into()),
        EfiVars::Auto => match efiboot::efivars()? {
            Some(d) => d,
            None => {
                return Ok("none (not booted with UEFI: the firmware's boot order stays)".into())
            }
        },
    };
    let option = efiboot::load_option(description, esp, efiboot::loader_path(&opts.arch)?);
    let n = efiboot::register(&dir, &option)
        .with_context(|| format!("adding a boot entry in {}", dir.display()))?;
    Ok(format!("Boot{n:04X}, first in BootOrder and BootNext"))
}

/// Wipes after error `e`; the message says whether the wipe worked.
fn wipe_after(w: &mut Writer<'_>, e: Error) -> Error {
    let path = w.t.path.display().to_string();
    let r = wipe(w);
    if w.t.disk.is_some() {
        let _ = reread_partitions(&w.t.file);
    }
    match r {
        Ok(()) => Error::msg(format!(
            "{e} (the first and last MiB of {path} were zeroed: it holds no partition table)"
        )),
        Err(we) => Error::msg(format!(
            "{e}; zeroing the first and last MiB of {path} failed too, the disk may look partitioned: {we}"
        )),
    }
}

/// As [`wipe_after`], for a target that was closed.
fn wipe_reopened(path: &Path, size: u64, block: bool, e: Error) -> Error {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(oe) => {
            return Error::msg(format!(
                "{e}; reopening {} to zero its first and last MiB failed, the disk may look partitioned: {oe}",
                path.display()
            ))
        }
    };
    let t = Target {
        path: path.to_path_buf(),
        file,
        size,
        disk: block.then(String::new),
    };
    let mut w = Writer {
        t: &t,
        touched: true,
    };
    wipe_after(&mut w, e)
}

/// Reboots: through systemd when it is PID 1, else the reboot syscall.
pub fn reboot() -> Result<()> {
    let comm = fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if comm.trim() == "systemd" {
        let st = std::process::Command::new("systemctl")
            .arg("reboot")
            .status()
            .context("running systemctl reboot")?;
        if !st.success() {
            bail!("systemctl reboot: {st}");
        }
        return Ok(());
    }
    rustix::fs::sync();
    rustix::system::reboot(rustix::system::RebootCommand::Restart).context("rebooting")
}

#[cfg(test)]
mod tests;
