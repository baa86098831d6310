//! The disk the node booted from: the one whose GPT holds the ESP
//! partition GRUB was started from, named by its partition UUID on the
//! kernel command line (`bi.esp=`, [`boot_env::CMDLINE_ESP`]). The root
//! slot and `persist` are taken from that disk and from no other: a USB
//! stick that also has partitions named `root_a` or `ESP` is never used.
//!
//! Disks written from one image carry the same partition UUIDs until
//! their first boot gives them their own (see `persist::disk`). When
//! several disks hold the ESP partition, GRUB's mark in the booted disk's
//! environment block ([`boot_env::DISK_BOOTED`], set on its first boot)
//! decides; when that does not single one out, the boot stops rather than
//! guess.

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, Instant};

use boot_contract::boot_disk::Record;
use boot_contract::boot_env::{self, CMDLINE_ESP, DISK_BOOTED};
use boot_contract::fat::Fat32;
use boot_contract::gpt::{Gpt, Guid};
use boot_contract::grubenv::{GrubEnv, BLOCK_SIZE};
use boot_contract::partition::{ESP, PERSIST, ROOT_A, ROOT_B};

use crate::persist::disk::Disk;
use crate::{param, say, Result};
use crate::{Context, Error};

/// Block devices that are never the boot disk.
const SKIP: &[&str] = &["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"];

/// How long a lone disk that GRUB could have marked, but did not, is
/// given for the marked one to appear (a slow USB stick).
const UNMARKED_GRACE: Duration = Duration::from_secs(10);

/// A disk holding the ESP partition of `bi.esp=`.
struct Candidate {
    disk: Disk,
    /// GRUB marked it booted (`disk_booted=1` in an environment block).
    marked: bool,
    /// Its ESP has a FAT32 with an environment block GRUB could mark.
    markable: bool,
}

/// The ESP partition UUID GRUB put on the command line.
pub fn esp_uuid(cmdline: &str) -> Result<Guid> {
    let v = param(cmdline, CMDLINE_ESP).with_context(|| {
        format!(
            "no {CMDLINE_ESP}=PARTUUID on the kernel command line: the boot loader did not say \
             which disk it started from, and os-init uses no disk it cannot tie to it \
             (bootloader/grub.cfg passes {CMDLINE_ESP}= from GRUB's probe --part-uuid)"
        )
    })?;
    if v.is_empty() {
        return Err(Error::msg(format!(
            "{CMDLINE_ESP}= is empty on the kernel command line: GRUB's probe --part-uuid found \
             no partition UUID for the ESP it started from"
        )));
    }
    v.parse()
        .with_context(|| format!("{CMDLINE_ESP}={v} on the kernel command line"))
}

/// Waits (at most `timeout`) for the disk holding the ESP partition `esp`.
pub fn find(esp: Guid, timeout: Duration) -> Result<Disk> {
    let start = Instant::now();
    let mut lone_since: Option<Instant> = None;
    loop {
        let found = candidates(esp);
        let marked: Vec<&Candidate> = found.iter().filter(|c| c.marked).collect();
        let names = || {
            found
                .iter()
                .map(|c| c.disk.dev())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (&marked[..], &found[..]) {
            ([one], _) => return Ok(one.disk.clone()),
            ([_, _, ..], _) => {
                return Err(Error::msg(format!(
                    "disks {} all hold the ESP partition {esp} and all carry GRUB's \
                     {DISK_BOOTED} mark: they were written from one image and booted before, so \
                     os-init cannot tell which one GRUB started from; remove the disk that is not \
                     meant to boot",
                    names()
                )))
            }
            ([], [one]) => {
                // GRUB marks the disk it boots from; a lone disk it could
                // have marked and did not may be another copy of the image,
                // with the booted one still to appear.
                let since = *lone_since.get_or_insert_with(Instant::now);
                if !one.markable || since.elapsed() >= UNMARKED_GRACE || start.elapsed() > timeout {
                    if one.markable {
                        say(&format!(
                            "warning: {} holds the ESP partition {esp} but not GRUB's \
                             {DISK_BOOTED} mark; using it, the only disk that holds it",
                            one.disk.dev()
                        ));
                    }
                    return Ok(one.disk.clone());
                }
            }
            ([], [_, _, ..]) if start.elapsed() > timeout => {
                return Err(Error::msg(format!(
                    "disks {} all hold the ESP partition {esp} (written from one image) and none \
                     carries GRUB's {DISK_BOOTED} mark: os-init cannot tell which one GRUB \
                     started from; remove the disk that is not meant to boot",
                    names()
                )))
            }
            _ => lone_since = None,
        }
        if start.elapsed() > timeout {
            return Err(Error::msg(format!(
                "no disk holding the ESP partition {esp} (the one GRUB started from, \
                 {CMDLINE_ESP}=) appeared within {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every whole disk whose GPT (the primary, or the backup when the
/// primary is damaged) has an `ESP` entry with partition GUID `esp`.
fn candidates(esp: Guid) -> Vec<Candidate> {
    let mut names: Vec<String> = fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !SKIP.iter().any(|s| n.starts_with(s)))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Ok(disk) = Disk::named(&name) else {
            continue;
        };
        if disk.sectors == 0 {
            continue;
        }
        let Ok(mut f) = File::open(disk.dev()) else {
            continue;
        };
        let Some(gpt) = read_gpt(&mut f, &disk) else {
            continue;
        };
        let Some((_, e)) = gpt
            .partitions()
            .find(|(_, e)| e.guid == esp && e.name == ESP)
        else {
            continue;
        };
        let (marked, markable) = mark(
            &mut f,
            e.first_lba * disk.sector_size,
            e.sectors() * disk.sector_size,
        );
        out.push(Candidate {
            disk,
            marked,
            markable,
        });
    }
    out
}

fn read_gpt(f: &mut File, disk: &Disk) -> Option<Gpt> {
    Gpt::read(f, disk.sector_size, disk.sectors)
        .or_else(|_| Gpt::read_backup(f, disk.sector_size, disk.sectors))
        .ok()
}

/// Whether an environment block on the ESP at `offset` (`len` bytes)
/// carries GRUB's mark, and whether there is one GRUB could have marked.
fn mark(f: &mut File, offset: u64, len: u64) -> (bool, bool) {
    let Ok(fat) = Fat32::read(f, offset, len) else {
        return (false, false);
    };
    let mut markable = false;
    for name in [boot_env::PRIMARY, boot_env::BACKUP] {
        let Ok(Some(block)) = fat.read_root_file(f, name, BLOCK_SIZE) else {
            continue;
        };
        let Ok(env) = GrubEnv::parse(&block) else {
            continue;
        };
        markable = true;
        if env.get(DISK_BOOTED) == Some("1") {
            return (true, true);
        }
    }
    (false, markable)
}

/// What is on `disk` now, for os-agent ([`boot_contract::boot_disk`]):
/// read again after persist was set up, which may have given the disk
/// new GUIDs and a `persist` partition.
pub fn record(disk: &Disk) -> Result<Record> {
    let dev = disk.dev();
    let mut f = File::open(&dev).with_context(|| format!("opening {dev}"))?;
    let gpt = read_gpt(&mut f, disk).with_context(|| format!("{dev}: no GPT that reads"))?;
    let part = |name: &str| -> Result<Option<(String, Guid)>> {
        let Some((i, e)) = gpt.find(name) else {
            return Ok(None);
        };
        let node = disk.wait_partition(i as u32 + 1, Duration::from_secs(5))?;
        Ok(Some((node, e.guid)))
    };
    let need = |name: &str| -> Result<(String, Guid)> {
        part(name)?.with_context(|| format!("{dev} has no partition named {name}"))
    };
    let (esp, esp_partuuid) = need(ESP)?;
    Ok(Record {
        disk: dev.clone(),
        disk_guid: gpt.disk_guid(),
        esp_partuuid,
        esp,
        root_a: need(ROOT_A)?.0,
        root_b: need(ROOT_B)?.0,
        persist: part(PERSIST)?.map(|p| p.0),
    })
}

/// Writes the record to `path` (on `/run`).
pub fn write_record(path: &Path, r: &Record) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, r.render()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_uuid_comes_from_the_command_line() {
        let g = "2b3c4d5e-0011-4a22-8b33-445566778899";
        let u = esp_uuid(&format!("bi.root=root_a bi.esp={g} quiet")).unwrap();
        assert_eq!(u.to_string(), g.to_uppercase());
        for (c, want) in [
            ("bi.root=root_a", "no bi.esp=PARTUUID"),
            ("bi.esp= bi.root=root_a", "bi.esp= is empty"),
            (
                "bi.esp=xyz",
                "bi.esp=xyz on the kernel command line: bad GUID",
            ),
        ] {
            let e = esp_uuid(c).unwrap_err();
            assert!(e.to_string().contains(want), "{c}: {e}");
        }
    }
}
