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

use boot_contract::boot_disk::{EspId, Identity, Record, Slots, Table};
use boot_contract::boot_env::{self, CMDLINE_ESP, DISK_BOOTED};
use boot_contract::fat::Fat32;
use boot_contract::gpt::{Gpt, Guid};
use boot_contract::grubenv::{GrubEnv, BLOCK_SIZE};
use boot_contract::mbr::{self, Mbr};
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
    slots: Slots,
    /// GRUB marked it booted (`disk_booted=1` in an environment block).
    marked: bool,
    /// Its ESP has a FAT32 with an environment block GRUB could mark.
    markable: bool,
}

/// The ESP partition UUID GRUB put on the command line: a GPT partition
/// GUID, or an MBR card's `<disk-id>-01` ([`EspId`]).
pub fn esp_uuid(cmdline: &str) -> Result<EspId> {
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
    EspId::parse(v).with_context(|| format!("{CMDLINE_ESP}={v} on the kernel command line"))
}

/// Waits (at most `timeout`) for the disk holding the ESP partition `esp`;
/// returns it with the numbers of its A/B partitions.
pub fn find(esp: EspId, timeout: Duration) -> Result<(Disk, Slots)> {
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
            ([one], _) => return Ok((one.disk.clone(), one.slots)),
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
                    return Ok((one.disk.clone(), one.slots));
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

/// Every whole disk that holds `esp`: a GPT (the primary, or the backup
/// when the primary is damaged) with an `ESP` entry of that partition
/// GUID, or an MBR card with that disk signature. A disk that holds it but
/// lacks the A/B layout is reported and skipped.
fn candidates(esp: EspId) -> Vec<Candidate> {
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
        let found = match esp {
            EspId::Gpt(guid) => read_gpt(&mut f, &disk).and_then(|gpt| {
                let slots = Slots::on_gpt(&gpt, guid)?;
                Some(slots.map(|s| {
                    let e = gpt.entry(s.esp as usize - 1).expect("found by on_gpt");
                    (s, e.first_lba, e.sectors())
                }))
            }),
            EspId::Mbr(id) => read_mbr(&mut f, &disk).and_then(|m| {
                let slots = Slots::on_mbr(&m, id)?;
                Some(slots.map_err(|e| e.to_string()).map(|s| {
                    let e = m.entry(s.esp as u8).expect("checked by on_mbr");
                    (s, u64::from(e.first_lba), u64::from(e.sectors))
                }))
            }),
        };
        let (slots, first, sectors) = match found {
            None => continue,
            Some(Err(e)) => {
                say(&format!(
                    "{} holds {esp} but is not usable: {e}",
                    disk.dev()
                ));
                continue;
            }
            Some(Ok(f)) => f,
        };
        let (marked, markable) = mark(&mut f, first * disk.sector_size, sectors * disk.sector_size);
        out.push(Candidate {
            disk,
            slots,
            marked,
            markable,
        });
    }
    out
}

/// The MBR of a card: sector 0, when it is an MBR and not a GPT's
/// protective one.
fn read_mbr(f: &mut File, disk: &Disk) -> Option<Mbr> {
    use std::io::Read;
    let mut sector = [0u8; 512];
    f.read_exact(&mut sector).ok()?;
    let sectors = disk.sectors * disk.sector_size / 512;
    Mbr::parse(&sector, Some(sectors)).ok()
}

/// `/dev/NAME` of the root slot `bi.root=` names (`root_a`, `root_b`) on
/// the boot disk, by the slot numbers [`find`] returned.
pub fn root_partition(
    disk: &Disk,
    slots: &Slots,
    label: &str,
    timeout: Duration,
) -> Result<String> {
    let n = match label {
        ROOT_A => slots.root_a,
        ROOT_B => slots.root_b,
        other => {
            return Err(Error::msg(format!(
                "the boot disk {} has no partition named {other:?} (bi.root=): its root slots \
                 are {ROOT_A} and {ROOT_B}",
                disk.dev()
            )))
        }
    };
    disk.wait_partition(n, timeout)
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
pub fn record(disk: &Disk, slots: &Slots) -> Result<Record> {
    let dev = disk.dev();
    let mut f = File::open(&dev).with_context(|| format!("opening {dev}"))?;
    if slots.table == Table::Mbr {
        // A card: the partitions by the contract's numbers, read again
        // (persist may have been created this boot).
        let m = read_mbr(&mut f, disk).with_context(|| format!("{dev}: no MBR that reads"))?;
        m.check_card().with_context(|| dev.to_string())?;
        let node = |n: u8| disk.wait_partition(u32::from(n), Duration::from_secs(5));
        return Ok(Record {
            disk: dev.clone(),
            identity: Identity::Mbr { disk_id: m.disk_id },
            esp: node(mbr::BOOT)?,
            root_a: node(mbr::ROOT_A)?,
            root_b: node(mbr::ROOT_B)?,
            persist: match m.entry(mbr::PERSIST) {
                Some(_) => Some(node(mbr::PERSIST)?),
                None => None,
            },
        });
    }
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
        identity: Identity::Gpt {
            disk_guid: gpt.disk_guid(),
            esp_partuuid,
        },
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
        // GRUB's probe --part-uuid of an MBR card's boot partition.
        let u = esp_uuid("bi.esp=1234abcd-01 bi.root=root_a").unwrap();
        assert_eq!(u.to_string(), "1234abcd-01");
        for (c, want) in [
            ("bi.root=root_a", "no bi.esp=PARTUUID"),
            ("bi.esp= bi.root=root_a", "bi.esp= is empty"),
            (
                "bi.esp=xyz",
                "bi.esp=xyz on the kernel command line: \"xyz\": expected an MBR partition UUID",
            ),
        ] {
            let e = esp_uuid(c).unwrap_err();
            assert!(e.to_string().contains(want), "{c}: {e}");
        }
    }
}
