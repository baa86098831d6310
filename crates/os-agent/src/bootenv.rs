//! The A/B boot state in the two GRUB environment blocks on the ESP, and
//! the one way the agent changes it: commit the running slot as default.
//!
//! Blocks are rewritten in place (opened without truncation, exactly 1024
//! bytes written, fsync), the primary first, then the backup, so a power
//! cut leaves at least one intact copy. A malformed block is refused with
//! an error and never overwritten.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use boot_contract::boot_env::{BACKUP, DEFAULT_SLOT, PRIMARY, SLOTS, TRIAL_SLOT};
use boot_contract::grubenv::{GrubEnv, BLOCK_SIZE};
use boot_contract::partition;

use crate::bail;
use crate::error::{Context, Error, Result};
use crate::fsutil::Root;

/// Where the ESP is mounted when the agent mounts it itself.
pub const ESP_MOUNT: &str = "/run/os-agent/esp";

fn by_partlabel() -> String {
    format!("/dev/disk/by-partlabel/{}", partition::ESP)
}

/// Reads and parses one block; refuses anything but a valid 1024-byte
/// GRUB environment block.
pub fn read_block(path: &Path) -> Result<(GrubEnv, [u8; BLOCK_SIZE])> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len != BLOCK_SIZE as u64 {
        bail!(
            "{}: is {len} bytes, expected a {BLOCK_SIZE}-byte GRUB environment block; refusing to use it",
            path.display()
        );
    }
    let mut raw = [0u8; BLOCK_SIZE];
    f.read_exact(&mut raw)
        .with_context(|| format!("reading {}", path.display()))?;
    let env = GrubEnv::parse(&raw)
        .with_context(|| format!("{}: malformed GRUB environment block", path.display()))?;
    Ok((env, raw))
}

/// The A/B state as both copies hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEnv {
    pub primary: GrubEnv,
    pub backup: GrubEnv,
}

impl BootEnv {
    /// `default_slot` as GRUB reads it (the primary copy).
    pub fn default_slot(&self) -> Option<&str> {
        self.primary.get(DEFAULT_SLOT)
    }

    /// `trial_slot` of the primary copy ("" when none).
    pub fn trial_slot(&self) -> &str {
        self.primary.get(TRIAL_SLOT).unwrap_or("")
    }
}

pub fn paths(esp: &Path) -> [PathBuf; 2] {
    [esp.join(PRIMARY), esp.join(BACKUP)]
}

/// Reads both copies; either one malformed or missing is an error.
pub fn read(esp: &Path) -> Result<BootEnv> {
    let [p, b] = paths(esp);
    Ok(BootEnv {
        primary: read_block(&p)?.0,
        backup: read_block(&b)?.0,
    })
}

/// What [`commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Both copies already had the slot as default; nothing was written.
    AlreadyDefault,
    /// `default_slot` changed from `from` (in the primary copy).
    Committed { from: Option<String> },
}

/// Makes `slot` the default in both copies. A `trial_slot` naming `slot`
/// is cleared too (the trial is over); a trial armed for the other slot is
/// kept. Each copy is written only when it changes.
pub fn commit(esp: &Path, slot: &str) -> Result<Commit> {
    if !SLOTS.contains(&slot) {
        bail!("cannot commit slot {slot:?}: expected one of a, b");
    }
    let paths = paths(esp);
    // Validate both before touching either.
    let blocks = [read_block(&paths[0])?, read_block(&paths[1])?];
    let from = blocks[0].0.get(DEFAULT_SLOT).map(str::to_string);
    let mut wrote = false;
    for (path, (env, raw)) in paths.iter().zip(blocks) {
        let mut new = env.clone();
        new.set(DEFAULT_SLOT, slot).map_err(Error::msg)?;
        if new.get(TRIAL_SLOT) == Some(slot) {
            new.set(TRIAL_SLOT, "").map_err(Error::msg)?;
        }
        let block = new
            .encode()
            .with_context(|| format!("{}: encoding the new block", path.display()))?;
        if block == raw {
            continue;
        }
        write_in_place(path, &block)?;
        if *path == paths[0] {
            crate::fault::point(crate::fault::COMMIT_AFTER_PRIMARY);
        }
        wrote = true;
    }
    Ok(if wrote {
        Commit::Committed { from }
    } else {
        Commit::AlreadyDefault
    })
}

/// Overwrites the 1024 bytes of an existing block without truncating it.
fn write_in_place(path: &Path, block: &[u8; BLOCK_SIZE]) -> Result<()> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len != BLOCK_SIZE as u64 {
        bail!(
            "{}: changed size to {len} bytes while being updated; refusing to write it",
            path.display()
        );
    }
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(block))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The ESP, mounted for the duration of an operation.
#[derive(Debug)]
pub struct Esp {
    dir: PathBuf,
    mounted_here: bool,
}

impl Esp {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Uses `dir` as the mounted ESP (`--esp DIR`).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Esp {
            dir: dir.into(),
            mounted_here: false,
        }
    }

    /// Finds the ESP by its GPT partition name: uses its mount point when
    /// it is mounted (read-write, if `write`), else mounts it at
    /// /run/os-agent/esp until this value is dropped.
    pub fn locate(root: &Root, write: bool) -> Result<Self> {
        if !root.is_host() {
            bail!(
                "--esp DIR is needed with --root: the ESP is looked up on the running system only"
            );
        }
        let link = by_partlabel();
        let dev = fs::canonicalize(&link).with_context(|| {
            format!(
                "finding the ESP (GPT partition name {}) at {link}",
                partition::ESP
            )
        })?;
        Esp::use_dev(&dev, write)
    }

    /// The ESP for reading the configuration at boot: by its GPT name, as
    /// [`Esp::locate`] finds it, or, before udev made the by-partlabel
    /// link, from sysfs (the partition named ESP on the disk that has a
    /// mounted partition, or the only one). None when there is none;
    /// mounted read-only when not mounted yet.
    pub fn find_optional(root: &Root) -> Result<Option<Self>> {
        if !root.is_host() {
            return Ok(None);
        }
        let dev = match fs::canonicalize(by_partlabel()) {
            Ok(d) => d,
            Err(_) => {
                use crate::install::disks::{self, Sys};
                let sys = Sys::host();
                let all = disks::partitions_named(&sys, partition::ESP);
                let mounted = disks::mounted(&sys)?;
                let on_mounted_disk: Vec<&(String, String)> = all
                    .iter()
                    .filter(|(_, d)| {
                        disks::disk(&sys, d)
                            .map(|d| d.parts.iter().any(|(_, dev)| mounted.contains(dev)))
                            .unwrap_or(false)
                    })
                    .collect();
                let pick: &(String, String) = match (&on_mounted_disk[..], &all[..]) {
                    ([one], _) => one,
                    ([], [one]) => one,
                    _ => return Ok(None),
                };
                sys.dev.join(&pick.0)
            }
        };
        Esp::use_dev(&dev, false).map(Some)
    }

    /// Uses the ESP device `dev`: its mount point when mounted, else
    /// mounts it at /run/os-agent/esp until this value is dropped.
    fn use_dev(dev: &Path, write: bool) -> Result<Self> {
        let rdev = fs::metadata(dev)
            .with_context(|| format!("reading {}", dev.display()))?
            .rdev();
        let (maj, min) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        if let Some((point, ro)) = find_mount(&mountinfo, maj, min) {
            if write && ro {
                bail!(
                    "the ESP ({}) is mounted read-only at {point}; remount it read-write",
                    dev.display()
                );
            }
            return Ok(Esp::at(point));
        }
        fs::create_dir_all(ESP_MOUNT).with_context(|| format!("creating {ESP_MOUNT}"))?;
        use rustix::mount::MountFlags;
        let mut flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        if !write {
            flags |= MountFlags::RDONLY;
        }
        rustix::mount::mount(dev, ESP_MOUNT, "vfat", flags, None)
            .with_context(|| format!("mounting the ESP {} (vfat) at {ESP_MOUNT}", dev.display()))?;
        Ok(Esp {
            dir: PathBuf::from(ESP_MOUNT),
            mounted_here: true,
        })
    }
}

impl Drop for Esp {
    fn drop(&mut self) {
        if self.mounted_here {
            if let Err(e) = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::empty())
            {
                eprintln!("os-agent: unmounting {}: {e}", self.dir.display());
            }
        }
    }
}

/// The mount point of device `maj:min` in a mountinfo text, and whether
/// it is mounted read-only.
fn find_mount(mountinfo: &str, maj: u32, min: u32) -> Option<(String, bool)> {
    let want = format!("{maj}:{min}");
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() < 6 || f[2] != want || f[3] != "/" {
            return None;
        }
        let ro = f[5].split(',').any(|o| o == "ro");
        Some((unescape_mount(f[4]), ro))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(default: &str, trial: &str) -> [u8; BLOCK_SIZE] {
        let mut e = GrubEnv::new();
        e.set(DEFAULT_SLOT, default).unwrap();
        e.set(TRIAL_SLOT, trial).unwrap();
        e.encode().unwrap()
    }

    #[test]
    fn commit_sets_default_and_clears_only_its_own_trial() {
        let d = tempfile::tempdir().unwrap();
        let [p, b] = paths(d.path());
        fs::write(&p, env("a", "")).unwrap();
        fs::write(&b, env("a", "b")).unwrap();
        assert_eq!(
            commit(d.path(), "b").unwrap(),
            Commit::Committed {
                from: Some("a".into())
            }
        );
        let e = read(d.path()).unwrap();
        assert_eq!(e.primary, e.backup);
        assert_eq!((e.default_slot(), e.trial_slot()), (Some("b"), ""));
        assert_eq!(commit(d.path(), "b").unwrap(), Commit::AlreadyDefault);
        // A trial armed for the other slot survives an explicit commit.
        fs::write(&p, env("b", "a")).unwrap();
        fs::write(&b, env("b", "a")).unwrap();
        assert_eq!(commit(d.path(), "b").unwrap(), Commit::AlreadyDefault);
        assert_eq!(read(d.path()).unwrap().trial_slot(), "a");
        assert!(commit(d.path(), "live").is_err());
    }

    #[test]
    fn mountinfo_lookup() {
        let mi = "22 1 0:21 / /run rw,nosuid - tmpfs tmpfs rw\n\
                  40 22 254:1 / /run/os\\040agent/esp rw,relatime - vfat /dev/vda1 rw\n\
                  41 22 254:2 / /boot/efi ro - vfat /dev/vda2 ro\n";
        assert_eq!(
            find_mount(mi, 254, 1),
            Some(("/run/os agent/esp".into(), false))
        );
        assert_eq!(find_mount(mi, 254, 2), Some(("/boot/efi".into(), true)));
        assert_eq!(find_mount(mi, 254, 3), None);
    }
}
