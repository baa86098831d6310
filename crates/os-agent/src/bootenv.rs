//! The A/B boot state in the two GRUB environment blocks on the ESP, and
//! the ways the agent changes it: commit the running slot as default, and
//! settle a trial GRUB consumed.
//!
//! Blocks are rewritten in place (opened without truncation, exactly 1024
//! bytes written, fsync), the primary first, then the backup, so a power
//! cut leaves at least one intact copy. Every write makes both copies the
//! same: the state GRUB reads (the primary when it is valid, else the
//! backup) with the change applied. So a malformed or missing copy is
//! repaired from the good one (a file of the wrong size is replaced
//! through a temporary file), and a trial GRUB took out of the copy it
//! loaded is cleared in the other copy too. Only when both copies are
//! unusable is the change refused, and nothing is written.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use boot_contract::boot_env::{BACKUP, DEFAULT_SLOT, PRIMARY, SLOTS, TRIAL_BOOTED, TRIAL_SLOT};
use boot_contract::grubenv::{GrubEnv, BLOCK_SIZE};

use crate::bail;
use crate::bootdisk::BootDisk;
use crate::error::{Context, Error, Result};
use crate::fsutil::Root;

/// Where the ESP is mounted when the agent mounts it itself.
pub const ESP_MOUNT: &str = "/run/os-agent/esp";

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

/// One copy as found: its bytes when the file is exactly one block, and
/// its variables or why it cannot be used.
#[derive(Debug, Clone)]
struct Found {
    raw: Option<[u8; BLOCK_SIZE]>,
    env: std::result::Result<GrubEnv, String>,
}

fn find(path: &Path) -> Found {
    match read_block(path) {
        Ok((env, raw)) => Found {
            raw: Some(raw),
            env: Ok(env),
        },
        Err(e) => {
            let mut raw = None;
            if let Ok(b) = fs::read(path) {
                raw = <[u8; BLOCK_SIZE]>::try_from(b.as_slice()).ok();
            }
            Found {
                raw,
                env: Err(e.to_string()),
            }
        }
    }
}

/// The A/B state as both copies hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEnv {
    /// The primary copy, or why it cannot be used.
    pub primary: std::result::Result<GrubEnv, String>,
    /// The backup copy, or why it cannot be used.
    pub backup: std::result::Result<GrubEnv, String>,
}

impl BootEnv {
    /// The copy GRUB reads: the primary when it is valid, else the backup
    /// (None only for a value [`read`] would have refused).
    pub fn effective(&self) -> Option<&GrubEnv> {
        self.primary.as_ref().or(self.backup.as_ref()).ok()
    }

    /// `default_slot` as GRUB reads it.
    pub fn default_slot(&self) -> Option<&str> {
        self.effective()?.get(DEFAULT_SLOT)
    }

    /// `trial_slot` as GRUB reads it ("" when none).
    pub fn trial_slot(&self) -> &str {
        self.effective()
            .and_then(|e| e.get(TRIAL_SLOT))
            .unwrap_or("")
    }

    /// `trial_booted`: the trial GRUB booted whose outcome is not yet
    /// settled.
    pub fn trial_booted(&self) -> Option<&str> {
        self.effective()?
            .get(TRIAL_BOOTED)
            .filter(|s| !s.is_empty())
    }

    /// Why a copy cannot be used (the next write repairs it).
    pub fn damaged(&self) -> Vec<&str> {
        [&self.primary, &self.backup]
            .into_iter()
            .filter_map(|c| c.as_ref().err().map(String::as_str))
            .collect()
    }
}

pub fn paths(esp: &Path) -> [PathBuf; 2] {
    [esp.join(PRIMARY), esp.join(BACKUP)]
}

fn both_unusable(p: &str, b: &str) -> Error {
    Error::msg(format!(
        "both GRUB environment blocks are unusable: {p}; {b}"
    ))
}

/// Reads both copies; an error only when neither can be used.
pub fn read(esp: &Path) -> Result<BootEnv> {
    let [p, b] = paths(esp);
    let (p, b) = (find(&p), find(&b));
    if let (Err(pe), Err(be)) = (&p.env, &b.env) {
        return Err(both_unusable(pe, be));
    }
    Ok(BootEnv {
        primary: p.env,
        backup: b.env,
    })
}

/// What [`update`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Copies written (primary before backup).
    pub files: Vec<PathBuf>,
    /// Copies that were unusable and were rewritten from the other, with
    /// why they were unusable.
    pub repaired: Vec<String>,
}

/// Applies `change` to the state GRUB reads and writes it to both copies
/// (each only when its bytes differ). Refused, with nothing written, when
/// both copies are unusable.
pub fn update(esp: &Path, change: impl FnOnce(&mut GrubEnv) -> Result<()>) -> Result<Written> {
    let paths = paths(esp);
    let found = [find(&paths[0]), find(&paths[1])];
    let mut new = match (&found[0].env, &found[1].env) {
        (Ok(p), _) => p.clone(),
        (Err(_), Ok(b)) => b.clone(),
        (Err(pe), Err(be)) => return Err(both_unusable(pe, be)),
    };
    change(&mut new)?;
    let block = new
        .encode()
        .with_context(|| format!("{}: encoding the new block", esp.display()))?;
    let mut written = Written::default();
    for (path, copy) in paths.iter().zip(&found) {
        if copy.env.is_ok() && copy.raw == Some(block) {
            continue;
        }
        if copy.raw.is_some() {
            write_in_place(path, &block)?;
        } else {
            replace(path, &block)?;
        }
        if let Err(why) = &copy.env {
            eprintln!(
                "os-agent: repaired {} from the other copy (it was unusable: {why})",
                path.display()
            );
            written.repaired.push(why.clone());
        }
        written.files.push(path.clone());
        if *path == paths[0] {
            crate::fault::point(crate::fault::COMMIT_AFTER_PRIMARY);
        }
    }
    Ok(written)
}

/// What [`commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Both copies already had the slot as default (a copy may have been
    /// repaired or a settled trial cleared).
    AlreadyDefault,
    /// `default_slot` changed from `from`.
    Committed { from: Option<String> },
}

/// Makes `slot` the default in both copies. A `trial_slot` or
/// `trial_booted` naming `slot` is cleared too (the trial is over); a trial
/// armed for the other slot is kept.
pub fn commit(esp: &Path, slot: &str) -> Result<Commit> {
    if !SLOTS.contains(&slot) {
        bail!("cannot commit slot {slot:?}: expected one of a, b");
    }
    let before = read(esp)?;
    let from = [&before.primary, &before.backup]
        .into_iter()
        .filter_map(|c| c.as_ref().ok())
        .map(|e| e.get(DEFAULT_SLOT))
        .find(|d| *d != Some(slot))
        .map(|d| d.map(str::to_string));
    let written = update(esp, |e| {
        e.set(DEFAULT_SLOT, slot).map_err(Error::msg)?;
        for var in [TRIAL_SLOT, TRIAL_BOOTED] {
            if e.get(var) == Some(slot) {
                e.set(var, "").map_err(Error::msg)?;
            }
        }
        Ok(())
    })?;
    Ok(match from {
        Some(from) if !written.files.is_empty() => Commit::Committed { from },
        _ => Commit::AlreadyDefault,
    })
}

/// What [`settle`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// No trial to settle (copies may have been repaired).
    Nothing,
    /// This boot is the trial GRUB booted: `health` decides it. The other
    /// copy no longer names it as `trial_slot`.
    TrialRunning,
    /// GRUB booted a trial of `slot`, and this boot runs another slot: the
    /// trial never reached its health check (it did not load, its kernel
    /// or init died, or it hung until a reset). Cleared in both copies.
    TrialFailed { slot: String },
}

/// Settles the trial GRUB consumed, at a boot of slot `running`: makes
/// both copies hold what GRUB read (clearing in the other copy the
/// `trial_slot` GRUB cleared in the one it loaded, repairing a malformed
/// copy), and clears `trial_booted` when its outcome is already known.
pub fn settle(esp: &Path, running: &str) -> Result<Settled> {
    let env = read(esp)?;
    let booted = env.trial_booted().map(str::to_string);
    let default = env.default_slot().map(str::to_string);
    let outcome = match booted.as_deref() {
        None => Settled::Nothing,
        // A "trial" of the default slot is an ordinary boot of it.
        Some(b) if Some(b) == default.as_deref() => Settled::Nothing,
        Some(b) if b == running => Settled::TrialRunning,
        Some(b) => Settled::TrialFailed { slot: b.into() },
    };
    update(esp, |e| {
        if booted.is_some() && outcome != Settled::TrialRunning {
            e.set(TRIAL_BOOTED, "").map_err(Error::msg)?;
        }
        Ok(())
    })?;
    Ok(outcome)
}

/// Ends the trial of `slot` after a failed health check: neither copy
/// names it any more (as `trial_slot` or `trial_booted`).
pub fn end_trial(esp: &Path, slot: &str) -> Result<Written> {
    update(esp, |e| {
        for var in [TRIAL_SLOT, TRIAL_BOOTED] {
            if e.get(var) == Some(slot) {
                e.set(var, "").map_err(Error::msg)?;
            }
        }
        Ok(())
    })
}

/// Replaces a missing copy, or one of the wrong size (which cannot be
/// rewritten in place), through a temporary file renamed over it.
fn replace(path: &Path, block: &[u8; BLOCK_SIZE]) -> Result<()> {
    let tmp = path.with_extension("new");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(block)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        // On FAT neither a file's nor a directory's fsync covers the entry
        // a rename made: sync the whole filesystem.
        let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        rustix::fs::syncfs(&d)
            .with_context(|| format!("syncing the filesystem of {}", dir.display()))?;
    }
    Ok(())
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

    /// The ESP of the disk the node booted from ([`BootDisk::current`]):
    /// uses its mount point when it is mounted (read-write, if `write`),
    /// else mounts it at /run/os-agent/esp until this value is dropped.
    pub fn locate(root: &Root, write: bool) -> Result<Self> {
        if !root.is_host() {
            bail!(
                "--esp DIR is needed with --root: the ESP is looked up on the running system only"
            );
        }
        let disk = BootDisk::current().context("finding the ESP")?;
        Esp::use_dev(disk.esp(), write)
    }

    /// The ESP for reading the configuration at boot, as [`Esp::locate`]
    /// finds it, mounted read-only when not mounted yet. None with `--root`.
    pub fn find_optional(root: &Root) -> Result<Option<Self>> {
        if !root.is_host() {
            return Ok(None);
        }
        Esp::locate(root, false).map(Some)
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

    fn with(default: &str, trial: &str, booted: &str) -> [u8; BLOCK_SIZE] {
        let mut e = GrubEnv::new();
        e.set(DEFAULT_SLOT, default).unwrap();
        e.set(TRIAL_SLOT, trial).unwrap();
        e.set(TRIAL_BOOTED, booted).unwrap();
        e.encode().unwrap()
    }

    fn both(d: &Path) -> (GrubEnv, GrubEnv) {
        let [p, b] = paths(d);
        (read_block(&p).unwrap().0, read_block(&b).unwrap().0)
    }

    #[test]
    fn a_malformed_or_missing_copy_is_repaired_from_the_good_one() {
        let d = tempfile::tempdir().unwrap();
        let [p, b] = paths(d.path());
        let good = env("a", "");
        let damages: [(&Path, Vec<u8>); 4] = [
            (
                &p,
                b"# GRUB Environment Blockxdefault_slot".repeat(30)[..1024].to_vec(),
            ),
            (&b, good[..1000].to_vec()),
            (&p, Vec::new()),
            (&b, vec![0u8; 1024]),
        ];
        for (bad, bytes) in damages {
            fs::write(&p, good).unwrap();
            fs::write(&b, good).unwrap();
            fs::write(bad, &bytes).unwrap();
            let env = read(d.path()).unwrap();
            assert_eq!(env.default_slot(), Some("a"));
            assert_eq!(env.damaged().len(), 1, "{env:?}");
            assert_eq!(commit(d.path(), "a").unwrap(), Commit::AlreadyDefault);
            assert_eq!(fs::read(&p).unwrap(), good);
            assert_eq!(fs::read(&b).unwrap(), good);
        }
        // A missing copy is made anew.
        fs::remove_file(&b).unwrap();
        assert_eq!(
            commit(d.path(), "b").unwrap(),
            Commit::Committed {
                from: Some("a".into())
            }
        );
        let (pe, be) = both(d.path());
        assert_eq!(pe, be);
        assert_eq!(pe.get(DEFAULT_SLOT), Some("b"));
        // Both unusable: refused, nothing written.
        fs::write(&p, [0u8; 1024]).unwrap();
        fs::write(&b, b"junk").unwrap();
        let e = commit(d.path(), "a").unwrap_err().to_string();
        assert!(
            e.contains("both GRUB environment blocks are unusable"),
            "{e}"
        );
        assert_eq!(fs::read(&p).unwrap(), [0u8; 1024]);
        assert_eq!(fs::read(&b).unwrap(), b"junk");
    }

    #[test]
    fn a_consumed_trial_is_cleared_in_both_copies() {
        let d = tempfile::tempdir().unwrap();
        let [p, b] = paths(d.path());
        // GRUB consumed the trial of b in the primary; the backup still
        // arms it.
        let write = || {
            fs::write(&p, with("a", "", "b")).unwrap();
            fs::write(&b, with("a", "b", "")).unwrap();
        };
        // Slot b runs: its trial is in progress; the backup must not arm
        // it again.
        write();
        assert_eq!(settle(d.path(), "b").unwrap(), Settled::TrialRunning);
        let (pe, be) = both(d.path());
        assert_eq!(pe, be);
        assert_eq!(
            (pe.get(TRIAL_SLOT), pe.get(TRIAL_BOOTED)),
            (Some(""), Some("b"))
        );
        // ... and a failed health check ends it everywhere.
        end_trial(d.path(), "b").unwrap();
        let (pe, be) = both(d.path());
        assert_eq!(pe, be);
        assert_eq!(
            (pe.get(TRIAL_SLOT), pe.get(TRIAL_BOOTED)),
            (Some(""), Some(""))
        );
        // Slot a runs after a trial of b: the trial failed before health.
        write();
        assert_eq!(
            settle(d.path(), "a").unwrap(),
            Settled::TrialFailed { slot: "b".into() }
        );
        let (pe, be) = both(d.path());
        assert_eq!(pe, be);
        assert_eq!(
            (
                pe.get(DEFAULT_SLOT),
                pe.get(TRIAL_SLOT),
                pe.get(TRIAL_BOOTED)
            ),
            (Some("a"), Some(""), Some(""))
        );
        assert_eq!(settle(d.path(), "a").unwrap(), Settled::Nothing);
        // GRUB loaded the backup (primary torn): the primary is repaired
        // from it, trial consumed.
        fs::write(&p, [b'#'; 1024]).unwrap();
        fs::write(&b, with("a", "", "b")).unwrap();
        assert_eq!(
            settle(d.path(), "a").unwrap(),
            Settled::TrialFailed { slot: "b".into() }
        );
        let (pe, be) = both(d.path());
        assert_eq!(pe, be);
        // A committed trial is cleared by the commit.
        write();
        assert_eq!(settle(d.path(), "b").unwrap(), Settled::TrialRunning);
        commit(d.path(), "b").unwrap();
        let (pe, be) = both(d.path());
        assert_eq!(pe, be);
        assert_eq!(
            (
                pe.get(DEFAULT_SLOT),
                pe.get(TRIAL_SLOT),
                pe.get(TRIAL_BOOTED)
            ),
            (Some("b"), Some(""), Some(""))
        );
        // An armed, not yet booted trial is left alone.
        fs::write(&p, with("a", "b", "")).unwrap();
        fs::write(&b, with("a", "b", "")).unwrap();
        assert_eq!(settle(d.path(), "a").unwrap(), Settled::Nothing);
        assert_eq!(both(d.path()).0.get(TRIAL_SLOT), Some("b"));
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
