//! Which disk `install` may write: the whole disks of sysfs, what is
//! mounted, used as swap or held by another device, and which disk holds
//! the live medium. The paths of sysfs, mountinfo and swaps are fields of
//! [`Sys`], so tests run on a fake tree.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::bail;
use crate::error::{Context, Result};
use crate::install::manifest::SECTOR;

/// Where the system's facts are read from.
#[derive(Debug, Clone)]
pub struct Sys {
    /// `/sys`
    pub sysfs: PathBuf,
    /// `/proc/self/mountinfo`
    pub mountinfo: PathBuf,
    /// `/proc/swaps`
    pub swaps: PathBuf,
    /// Where the live medium is mounted (`/run/os/live`).
    pub live_mount: PathBuf,
    /// Where device nodes are (`/dev`).
    pub dev: PathBuf,
}

impl Sys {
    pub fn host() -> Self {
        Sys {
            sysfs: "/sys".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
            live_mount: boot_contract::live::MOUNT.into(),
            dev: "/dev".into(),
        }
    }
}

/// Device names that are never install targets.
const SKIP: &[&str] = &["loop", "ram", "zram", "sr", "dm-", "md", "nbd", "fd"];

/// A whole disk of /sys/block with its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    /// `MAJ:MIN`
    pub dev: String,
    pub size: u64,
    /// Bytes per logical block (`queue/logical_block_size`); None when
    /// sysfs does not say.
    pub logical_block_size: Option<u64>,
    pub removable: bool,
    /// Partitions: (name, `MAJ:MIN`).
    pub parts: Vec<(String, String)>,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Reads the disk `name` from `/sys/block/NAME`.
pub fn disk(sys: &Sys, name: &str) -> Result<Disk> {
    let dir = sys.sysfs.join("block").join(name);
    let dev = read_trim(&dir.join("dev"))
        .ok_or_else(|| crate::error::Error::msg(format!("reading {}/dev", dir.display())))?;
    let size = read_trim(&dir.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| s * 512)
        .unwrap_or(0);
    let logical_block_size =
        read_trim(&dir.join("queue/logical_block_size")).and_then(|s| s.parse::<u64>().ok());
    let removable = read_trim(&dir.join("removable")).as_deref() == Some("1");
    let mut parts = Vec::new();
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = read_trim(&p.join("dev")) {
                    parts.push((e.file_name().to_string_lossy().into_owned(), d));
                }
            }
        }
    }
    parts.sort();
    Ok(Disk {
        name: name.to_string(),
        dev,
        size,
        logical_block_size,
        removable,
        parts,
    })
}

/// Why `disk` cannot take the image's layout of 512-byte sectors: its
/// logical block size is another (a 4Kn disk) or unknown.
pub fn block_size_refusal(disk: &Disk) -> Option<String> {
    match disk.logical_block_size {
        Some(SECTOR) => None,
        Some(n) => Some(format!(
            "{n}-byte logical blocks: the image's GPT and ESP are laid out for {SECTOR}-byte \
             sectors (a 4Kn disk is not supported; use a disk with 512-byte or 512e sectors)"
        )),
        None => Some(format!(
            "its logical block size is unknown (no {}/queue/logical_block_size)",
            disk.name
        )),
    }
}

/// What an existing build-image system on a disk holds: a GPT (primary,
/// or the backup at the end) with `root_a` and a `persist` partition, which
/// keeps the node's data. None when there is no such system (no table, or
/// one without `persist`: an install that never booted).
pub fn existing_system<D: std::io::Read + std::io::Seek>(f: &mut D, size: u64) -> Option<String> {
    use boot_contract::gpt::Gpt;
    use boot_contract::partition::{PERSIST, ROOT_A};
    let sectors = size / SECTOR;
    let gpt = Gpt::read(f, SECTOR, sectors)
        .or_else(|_| Gpt::read_backup(f, SECTOR, sectors))
        .ok()?;
    gpt.find(ROOT_A)?;
    let (i, p) = gpt.find(PERSIST)?;
    Some(format!(
        "holds an installed system with its data on {PERSIST} (partition {}, {} MiB: \
         machine-id, SSH host keys, k3s state)",
        i + 1,
        (p.sectors() * SECTOR) >> 20
    ))
}

/// The `MAJ:MIN` of every mounted filesystem, from mountinfo.
pub fn mounted(sys: &Sys) -> Result<BTreeSet<String>> {
    let text = fs::read_to_string(&sys.mountinfo)
        .with_context(|| format!("reading {}", sys.mountinfo.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(2).map(str::to_string))
        .collect())
}

/// The `MAJ:MIN` of the filesystem mounted at the live medium's mount
/// point, if any.
pub fn live_dev(sys: &Sys) -> Result<Option<String>> {
    let text = fs::read_to_string(&sys.mountinfo)
        .with_context(|| format!("reading {}", sys.mountinfo.display()))?;
    let want = sys.live_mount.to_string_lossy();
    Ok(text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[4] == want).then(|| f[2].to_string())
    }))
}

/// The whole disk a block device `MAJ:MIN` is or belongs to, by
/// /sys/dev/block/MAJ:MIN.
pub fn disk_of(sys: &Sys, dev: &str) -> Option<String> {
    let p = fs::canonicalize(sys.sysfs.join("dev/block").join(dev)).ok()?;
    let p = if p.join("partition").exists() {
        p.parent()?.to_path_buf()
    } else {
        p
    };
    Some(p.file_name()?.to_string_lossy().into_owned())
}

/// The partitions whose GPT partition name (`PARTNAME` of their uevent)
/// is `partname`, as (partition, disk) names, sorted.
pub fn partitions_named(sys: &Sys, partname: &str) -> Vec<(String, String)> {
    let class = sys.sysfs.join("class/block");
    let mut out = Vec::new();
    for e in fs::read_dir(&class).into_iter().flatten().flatten() {
        let Ok(uevent) = fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        let field = |k: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        if field("PARTNAME").as_deref() != Some(partname) {
            continue;
        }
        let name = field("DEVNAME").unwrap_or_else(|| e.file_name().to_string_lossy().into_owned());
        let disk = fs::canonicalize(e.path())
            .ok()
            .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()));
        if let Some(disk) = disk {
            out.push((name, disk));
        }
    }
    out.sort();
    out
}

/// The device names listed in /proc/swaps (basenames of the paths).
fn swap_names(sys: &Sys) -> BTreeSet<String> {
    let text = fs::read_to_string(&sys.swaps).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| {
            let p = fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
            Some(p.file_name()?.to_string_lossy().into_owned())
        })
        .collect()
}

/// Devices holding `name` (device-mapper, md) from `holders/`.
fn holders(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir.join("holders"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Why `disk` cannot be written while the system runs: a partition or
/// the disk is mounted, used as swap, or held by another device.
pub fn busy(sys: &Sys, disk: &Disk) -> Result<Option<String>> {
    let mounted = mounted(sys)?;
    let swaps = swap_names(sys);
    let dir = sys.sysfs.join("block").join(&disk.name);
    let all = std::iter::once((disk.name.clone(), disk.dev.clone(), dir.clone())).chain(
        disk.parts
            .iter()
            .map(|(n, d)| (n.clone(), d.clone(), dir.join(n))),
    );
    for (name, dev, d) in all {
        if mounted.contains(&dev) {
            return Ok(Some(format!("{name} is mounted")));
        }
        if swaps.contains(&name) {
            return Ok(Some(format!("{name} is used as swap")));
        }
        if let Some(h) = holders(&d).first() {
            return Ok(Some(format!("{name} is in use by {h}")));
        }
    }
    Ok(None)
}

/// Bytes as `N bytes (X.Y GiB)`.
pub fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    format!("{bytes} bytes ({:.1} GiB)", bytes as f64 / GIB)
}

/// `--device auto`: the one whole, fixed disk that is large enough, of
/// 512-byte sectors, not in use, not the live medium and, unless
/// `overwrite`, not holding an installed system's data. Errors list every
/// candidate and why it was not picked.
pub fn pick_auto(sys: &Sys, min_size: u64, overwrite: bool) -> Result<Disk> {
    let block = sys.sysfs.join("block");
    let mut names: Vec<String> = fs::read_dir(&block)
        .with_context(|| format!("listing {}", block.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !SKIP.iter().any(|s| n.starts_with(s)))
        .collect();
    names.sort();
    let live = live_dev(sys)?.and_then(|d| disk_of(sys, &d));
    let mut suitable = Vec::new();
    let mut report = Vec::new();
    for name in names {
        let d = disk(sys, &name)?;
        if d.removable || d.size == 0 {
            continue;
        }
        let why = if live.as_deref() == Some(name.as_str()) {
            Some("holds the live medium".to_string())
        } else if d.size < min_size {
            Some(format!("too small: needs {min_size} bytes"))
        } else if let Some(why) = block_size_refusal(&d) {
            Some(why)
        } else if let Some(why) = busy(sys, &d)? {
            Some(why)
        } else if overwrite {
            None
        } else {
            std::fs::File::open(sys.dev.join(&d.name))
                .ok()
                .and_then(|mut f| existing_system(&mut f, d.size))
                .map(|why| format!("{why}; install.overwrite: true or --force replaces it"))
        };
        report.push(format!(
            "  {} {}: {}",
            d.name,
            human(d.size),
            why.as_deref().unwrap_or("suitable")
        ));
        if why.is_none() {
            suitable.push(d);
        }
    }
    match suitable.len() {
        1 => Ok(suitable.remove(0)),
        0 if report.is_empty() => bail!(
            "--device auto: no fixed disk found in {} (removable and virtual devices are not considered); name one with --device",
            block.display()
        ),
        0 => bail!(
            "--device auto: no suitable disk (the image needs at least {}); candidates:\n{}",
            human(min_size),
            report.join("\n")
        ),
        n => bail!(
            "--device auto: {n} suitable disks, name one with --device; candidates:\n{}",
            report.join("\n")
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake sysfs laid out like the real one: devices under
    /// `devices/`, `block/NAME` and `dev/block/MAJ:MIN` as symlinks.
    pub struct FakeSys {
        /// Keeps the tree alive.
        _dir: tempfile::TempDir,
        pub sys: Sys,
        next_major: u32,
    }

    impl FakeSys {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let sys = Sys {
                sysfs: dir.path().join("sys"),
                mountinfo: dir.path().join("mountinfo"),
                swaps: dir.path().join("swaps"),
                live_mount: "/run/os/live".into(),
                dev: dir.path().join("dev"),
            };
            for d in [
                "sys/block",
                "sys/dev/block",
                "sys/class/block",
                "sys/devices/virtual/block",
                "dev",
            ] {
                fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            fs::write(
                &sys.mountinfo,
                "22 1 0:21 / /run rw,nosuid - tmpfs tmpfs rw\n",
            )
            .unwrap();
            fs::write(&sys.swaps, "Filename\tType\tSize\tUsed\tPriority\n").unwrap();
            FakeSys {
                _dir: dir,
                sys,
                next_major: 8,
            }
        }

        /// Adds disk `name` of `size` bytes with `parts` partitions;
        /// returns its `MAJ:MIN` and its partitions'.
        pub fn disk(&mut self, name: &str, size: u64, removable: bool, parts: u32) -> Vec<String> {
            let names = vec![""; parts as usize];
            self.disk_named(name, size, removable, &names)
        }

        /// As [`FakeSys::disk`], with partitions named (GPT) `parts`.
        pub fn disk_named(
            &mut self,
            name: &str,
            size: u64,
            removable: bool,
            parts: &[&str],
        ) -> Vec<String> {
            let major = self.next_major;
            self.next_major += 1;
            let d = self.sys.sysfs.join("devices/virtual/block").join(name);
            fs::create_dir_all(d.join("holders")).unwrap();
            fs::write(d.join("dev"), format!("{major}:0\n")).unwrap();
            fs::write(d.join("size"), format!("{}\n", size / 512)).unwrap();
            fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
            fs::create_dir_all(d.join("queue")).unwrap();
            fs::write(d.join("queue/logical_block_size"), "512\n").unwrap();
            let link = |from: PathBuf, to: &Path| std::os::unix::fs::symlink(to, from).unwrap();
            link(self.sys.sysfs.join("block").join(name), &d);
            link(self.sys.sysfs.join(format!("dev/block/{major}:0")), &d);
            let mut devs = vec![format!("{major}:0")];
            for (i, partname) in (1..).zip(parts) {
                let pname = format!("{name}{i}");
                let p = d.join(&pname);
                fs::create_dir_all(p.join("holders")).unwrap();
                fs::write(p.join("dev"), format!("{major}:{i}\n")).unwrap();
                fs::write(p.join("partition"), format!("{i}\n")).unwrap();
                link(self.sys.sysfs.join(format!("dev/block/{major}:{i}")), &p);
                link(self.sys.sysfs.join("class/block").join(&pname), &p);
                let mut uevent =
                    format!("MAJOR={major}\nMINOR={i}\nDEVNAME={pname}\nDEVTYPE=partition\n");
                if !partname.is_empty() {
                    uevent.push_str(&format!("PARTNAME={partname}\n"));
                }
                fs::write(p.join("uevent"), uevent).unwrap();
                devs.push(format!("{major}:{i}"));
            }
            devs
        }

        /// Gives disk `name` a logical block size of `bytes`.
        pub fn block_size(&self, name: &str, bytes: u64) {
            let q = self.sys.sysfs.join("block").join(name).join("queue");
            fs::write(q.join("logical_block_size"), format!("{bytes}\n")).unwrap();
        }

        /// Puts an installed system (a GPT with root_a and persist) on
        /// disk `name` of `size` bytes, as its device node.
        pub fn installed(&self, name: &str, size: u64) {
            use boot_contract::gpt::{types, Entry, Gpt, Guid};
            let e = |n: &str, first: u64, last: u64, k: u8| Entry {
                type_guid: types::LINUX_FILESYSTEM,
                guid: Guid::random_v4([k; 16]),
                first_lba: first,
                last_lba: last,
                attributes: 0,
                name: n.into(),
            };
            let sectors = size / 512;
            let g = Gpt::new(
                512,
                sectors,
                Guid::random_v4([9; 16]),
                &[
                    e("root_a", 2048, 4095, 1),
                    e("persist", 4096, sectors - 2048, 2),
                ],
            )
            .unwrap();
            let mut f = fs::File::create(self.sys.dev.join(name)).unwrap();
            f.set_len(size).unwrap();
            g.write(&mut f, |_| Ok(())).unwrap();
        }

        pub fn mount(&self, dev: &str, at: &str) {
            let mut t = fs::read_to_string(&self.sys.mountinfo).unwrap();
            t.push_str(&format!("40 22 {dev} / {at} rw - ext4 /dev/x rw\n"));
            fs::write(&self.sys.mountinfo, t).unwrap();
        }
    }

    const GIB: u64 = 1 << 30;

    fn err(f: &FakeSys, min: u64) -> String {
        pick_auto(&f.sys, min, false).unwrap_err().to_string()
    }

    #[test]
    fn picks_the_one_suitable_disk() {
        let mut f = FakeSys::new();
        let live = f.disk("sda", 8 * GIB, false, 2); // the USB stick the ISO is on
        f.disk("nvme0n1", 64 * GIB, false, 0);
        f.disk("sdb", GIB, false, 0); // too small
        f.disk("sdc", 32 * GIB, true, 0); // removable: not a candidate
        f.disk("loop0", 32 * GIB, false, 0);
        f.disk("sr0", GIB, false, 0);
        f.mount(&live[1], "/run/os/live");
        assert_eq!(pick_auto(&f.sys, 4 * GIB, false).unwrap().name, "nvme0n1");
    }

    #[test]
    fn none_suitable_lists_every_candidate_and_why() {
        let mut f = FakeSys::new();
        let live = f.disk("sda", 8 * GIB, false, 1);
        f.disk("sdb", GIB, false, 0);
        let used = f.disk("vda", 16 * GIB, false, 3);
        f.disk("vdb", 16 * GIB, false, 1);
        f.disk("vdc", 16 * GIB, false, 1);
        f.mount(&live[0], "/run/os/live"); // the whole device, no partition
        f.mount(&used[3], "/mnt");
        fs::write(
            &f.sys.swaps,
            "Filename\tType\tSize\tUsed\tPriority\n/dev/vdb1 partition 1024 0 -2\n",
        )
        .unwrap();
        fs::create_dir_all(f.sys.sysfs.join("block/vdc/vdc1/holders/dm-0")).unwrap();
        let e = err(&f, 4 * GIB);
        for want in [
            "no suitable disk",
            "sda 8589934592 bytes (8.0 GiB): holds the live medium",
            "sdb 1073741824 bytes (1.0 GiB): too small: needs 4294967296 bytes",
            "vda 17179869184 bytes (16.0 GiB): vda3 is mounted",
            "vdb 17179869184 bytes (16.0 GiB): vdb1 is used as swap",
            "vdc 17179869184 bytes (16.0 GiB): vdc1 is in use by dm-0",
        ] {
            assert!(e.contains(want), "{want:?} missing from:\n{e}");
        }
    }

    #[test]
    fn a_4kn_disk_and_an_installed_system_are_not_picked() {
        let mut f = FakeSys::new();
        f.disk("vda", 8 * GIB, false, 0);
        f.disk("vdb", 8 * GIB, false, 0);
        f.block_size("vdb", 4096);
        f.installed("vda", 8 * GIB);
        let e = err(&f, 4 * GIB);
        for want in [
            "no suitable disk",
            "vda 8589934592 bytes (8.0 GiB): holds an installed system with its data on persist \
             (partition 2,",
            "install.overwrite: true or --force replaces it",
            "vdb 8589934592 bytes (8.0 GiB): 4096-byte logical blocks: the image's GPT and ESP \
             are laid out for 512-byte sectors",
        ] {
            assert!(e.contains(want), "{want:?} missing from:\n{e}");
        }
        // Asked to overwrite: the installed disk is the one.
        assert_eq!(pick_auto(&f.sys, 4 * GIB, true).unwrap().name, "vda");
    }

    #[test]
    fn two_suitable_is_an_error_naming_both() {
        let mut f = FakeSys::new();
        f.disk("sda", 8 * GIB, false, 0);
        f.disk("sdb", 8 * GIB, false, 0);
        let e = err(&f, 4 * GIB);
        assert!(e.contains("2 suitable disks"), "{e}");
        assert!(
            e.contains("sda 8589934592 bytes (8.0 GiB): suitable"),
            "{e}"
        );
        assert!(
            e.contains("sdb 8589934592 bytes (8.0 GiB): suitable"),
            "{e}"
        );
    }

    #[test]
    fn no_disks_at_all() {
        let mut f = FakeSys::new();
        f.disk("sdz", 8 * GIB, true, 0);
        assert!(err(&f, GIB).contains("no fixed disk found"));
    }

    #[test]
    fn live_medium_and_partitions_resolve() {
        let mut f = FakeSys::new();
        let d = f.disk("sda", 8 * GIB, false, 2);
        assert_eq!(disk_of(&f.sys, &d[2]).as_deref(), Some("sda"));
        assert_eq!(disk_of(&f.sys, &d[0]).as_deref(), Some("sda"));
        assert_eq!(live_dev(&f.sys).unwrap(), None);
        f.mount(&d[2], "/run/os/live");
        assert_eq!(live_dev(&f.sys).unwrap(), Some(d[2].clone()));
        let disk = disk(&f.sys, "sda").unwrap();
        assert_eq!(disk.parts.len(), 2);
        assert_eq!(
            busy(&f.sys, &disk).unwrap().as_deref(),
            Some("sda2 is mounted")
        );
    }

    #[test]
    fn partitions_by_gpt_name() {
        let mut f = FakeSys::new();
        f.disk_named("sda", 8 * GIB, false, &["", "ESP", "root_a"]);
        f.disk_named("vda", 8 * GIB, false, &["ESP"]);
        assert_eq!(
            partitions_named(&f.sys, "ESP"),
            [("sda2".into(), "sda".into()), ("vda1".into(), "vda".into())]
        );
        assert!(partitions_named(&f.sys, "persist").is_empty());
    }
}
