//! The disk under the root slot and the `persist` entry of its GPT.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use boot_contract::fat::{volume_id_text, Fat32};
use boot_contract::gpt::{self, Entry, Gpt, Guid};
use boot_contract::mbr::{self, Mbr};
use boot_contract::partition::{ESP, PERSIST};

use super::blkpg;
use crate::{say, Result};
use crate::{Context, Error};

/// Partitions start on 1 MiB boundaries, as build-image places them.
const ALIGN: u64 = 1 << 20;
/// Less room than this after the last partition is not worth a filesystem.
pub const MIN_SIZE: u64 = boot_contract::persist::MIN_SIZE;

/// A whole disk, as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `vda`, `nvme0n1`, `mmcblk0`
    pub name: String,
    pub sector_size: u64,
    /// In `sector_size` units.
    pub sectors: u64,
}

impl Disk {
    pub fn dev(&self) -> String {
        format!("/dev/{}", self.name)
    }

    pub fn bytes(&self) -> u64 {
        self.sectors * self.sector_size
    }

    /// The whole disk `/sys/block/NAME`: its size and logical sector size.
    pub fn named(name: &str) -> Result<Disk> {
        let disk_sys = Path::new("/sys/block").join(name);
        // sysfs sizes are in 512-byte units whatever the sector size.
        let bytes = read_number(&disk_sys.join("size"))? * 512;
        let sector_size = read_number(&disk_sys.join("queue/logical_block_size"))?;
        if sector_size == 0 || bytes % sector_size != 0 {
            return Err(Error::msg(format!(
                "{name}: {bytes} bytes is not a whole number of {sector_size}-byte sectors"
            )));
        }
        Ok(Disk {
            name: name.to_string(),
            sector_size,
            sectors: bytes / sector_size,
        })
    }

    /// `/dev/NAME` of partition number `pno` once the kernel and devtmpfs
    /// show it (at most `timeout`).
    pub fn wait_partition(&self, pno: u32, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(name) = self.partition_name(pno) {
                let dev = format!("/dev/{name}");
                if Path::new(&dev).exists() {
                    return Ok(dev);
                }
            }
            if start.elapsed() > timeout {
                return Err(Error::msg(format!(
                    "partition {pno} of {} did not appear within {} s",
                    self.dev(),
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn partition_name(&self, pno: u32) -> Option<String> {
        let dir = Path::new("/sys/class/block").join(&self.name);
        fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let n = read_number(&e.path().join("partition")).ok()?;
            (n == u64::from(pno)).then(|| e.file_name().to_string_lossy().into_owned())
        })
    }
}

fn read_number(path: &Path) -> Result<u64> {
    let s = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    s.trim().parse().map_err(|_| {
        Error::msg(format!(
            "{}: {:?} is not a number",
            path.display(),
            s.trim()
        ))
    })
}

/// What happened to the `persist` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The entry was added this boot.
    Created,
    /// The entry was extended to the end of the disk this boot.
    Grown {
        old_bytes: u64,
    },
    Unchanged,
}

/// The `persist` partition as the kernel now knows it.
pub struct Persist {
    pub dev: String,
    pub bytes: u64,
    pub change: Change,
}

fn random_guid() -> Result<Guid> {
    let mut b = [0u8; 16];
    crate::persist::random(&mut b)?;
    Ok(Guid::random_v4(b))
}

/// Makes the GPT of `disk` end at the disk's end, with a `persist` entry
/// from the first free 1 MiB boundary to the last usable sector, and tells
/// the kernel. Only the `persist` entry and the backup GPT's location
/// change; the other entries are never touched. `Ok(None)` when there is no
/// room for `persist` (the image was not written to a larger disk).
pub fn ensure_persist(disk: &Disk) -> Result<Option<Persist>> {
    let dev = disk.dev();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .with_context(|| format!("opening {dev}"))?;
    if let Some(card) = read_card(&mut f, disk)? {
        return card_persist(&mut f, disk, &card);
    }
    // A primary that fails its checks while the backup at the disk's end
    // passes them is what a write cut off between the two copies leaves
    // (the backup is written first): restore the primary from the backup.
    let (mut gpt, restore) = match Gpt::read(&mut f, disk.sector_size, disk.sectors) {
        Ok(gpt) => (gpt, false),
        Err(primary) => match Gpt::read_backup(&mut f, disk.sector_size, disk.sectors) {
            Ok(gpt) => {
                say(&format!(
                    "the primary GPT of {dev} is damaged ({primary}): restoring it from the backup"
                ));
                (gpt, true)
            }
            Err(backup) => {
                return Err(Error::msg(format!(
                    "reading the GPT of {dev}: {primary}; the backup at its end: {backup}"
                )))
            }
        },
    };
    let ss = disk.sector_size;
    let old_alternate = gpt.alternate_lba();
    // The old backup header is wiped once the new one is written, if it
    // lies beyond every partition (it always does in a table build-image or
    // this function wrote).
    let old_backup = gpt
        .partitions()
        .all(|(_, e)| e.last_lba < old_alternate)
        .then_some(old_alternate);
    let relocate = gpt.backup_misplaced(disk.sectors);
    // A disk that still carries its image's identity (the GUIDs a build
    // derives) gets its own now, in the same table write.
    let identity = if gpt.disk_guid().is_derived() {
        Some(personalize(&mut f, &mut gpt, disk)?)
    } else {
        None
    };
    if relocate {
        gpt.relocate_backup(disk.sectors)
            .with_context(|| dev.to_string())?;
    }
    let (index, change) = match gpt.find(PERSIST) {
        None => {
            let first = gpt.first_free_aligned(ALIGN / ss);
            let last = gpt.last_usable();
            if last < first || (last - first + 1) * ss < MIN_SIZE {
                if relocate || restore || identity.is_some() {
                    write_table(&mut f, &gpt, disk, old_backup.filter(|_| relocate))?;
                }
                if relocate {
                    say(&format!("moved the backup GPT of {dev} to its end"));
                }
                if let Some(what) = identity {
                    say(&format!("gave {dev} its own identity: {what}"));
                }
                return Ok(None);
            }
            let entry = Entry {
                type_guid: gpt::types::LINUX_FILESYSTEM,
                guid: random_guid()?,
                first_lba: first,
                last_lba: last,
                attributes: 0,
                name: PERSIST.into(),
            };
            let index = gpt.add(&entry).with_context(|| dev.to_string())?;
            (index, Change::Created)
        }
        Some((index, e)) => {
            let last = gpt.last_usable();
            let after = gpt.partitions().any(|(_, o)| o.first_lba > e.last_lba);
            // Gains under 1 MiB are not worth a resize (build-image leaves
            // just under 1 MiB after a persist it places itself).
            if e.last_lba + ALIGN / ss <= last && !after {
                gpt.set_last_lba(index, last)
                    .with_context(|| dev.to_string())?;
                (
                    index,
                    Change::Grown {
                        old_bytes: e.sectors() * ss,
                    },
                )
            } else {
                (index, Change::Unchanged)
            }
        }
    };
    if relocate || restore || change != Change::Unchanged || identity.is_some() {
        write_table(&mut f, &gpt, disk, old_backup.filter(|_| relocate))?;
    }
    if relocate {
        say(&format!(
            "moved the backup GPT of {dev} to its end ({} MiB disk)",
            disk.bytes() >> 20
        ));
    }
    if let Some(what) = identity {
        say(&format!("gave {dev} its own identity: {what}"));
    }
    let e = gpt.entry(index).context("the persist entry vanished")?;
    let pno = index as u32 + 1;
    let (start, bytes) = (e.first_lba * ss, e.sectors() * ss);
    match change {
        Change::Created => blkpg::add_partition(&f, pno, start, bytes).with_context(|| {
            format!("adding partition {pno} to the kernel's view of {dev} (BLKPG)")
        })?,
        Change::Grown { .. } => {
            blkpg::resize_partition(&f, pno, start, bytes).with_context(|| {
                format!("resizing partition {pno} in the kernel's view of {dev} (BLKPG)")
            })?
        }
        Change::Unchanged => {}
    }
    let sectors = format!(", sectors {}..={}", e.first_lba, e.last_lba);
    settled(disk, &dev, pno, bytes, change, &sectors).map(Some)
}

/// Waits for the kernel's node of persist (partition `pno`) and says what
/// became of it; `detail` follows the size of a new one.
fn settled(
    disk: &Disk,
    dev: &str,
    pno: u32,
    bytes: u64,
    change: Change,
    detail: &str,
) -> Result<Persist> {
    let part = disk.wait_partition(pno, Duration::from_secs(10))?;
    match change {
        Change::Created => say(&format!(
            "created persist {part} ({} MiB{detail}) on {dev}",
            bytes >> 20
        )),
        Change::Grown { old_bytes } => say(&format!(
            "grew persist {part} from {} MiB to {} MiB",
            old_bytes >> 20,
            bytes >> 20
        )),
        Change::Unchanged => say(&format!("persist is {part} ({} MiB)", bytes >> 20)),
    }
    Ok(Persist {
        dev: part,
        bytes,
        change,
    })
}

/// The MBR of a Raspberry Pi card ([`boot_contract::mbr`]), or `None` for
/// any other disk (a GPT's protective MBR among them).
fn read_card(f: &mut File, disk: &Disk) -> Result<Option<Mbr>> {
    let mut sector = [0u8; 512];
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut sector))
        .map_err(|e| Error::msg(format!("reading sector 0 of {}: {e}", disk.dev())))?;
    let Ok(m) = Mbr::parse(&sector, Some(disk.bytes() / 512)) else {
        return Ok(None);
    };
    Ok(m.check_card().is_ok().then_some(m))
}

/// What `persist` of a card of `disk_sectors` 512-byte sectors becomes:
/// entry 4 from the first 1 MiB boundary after `root_b` (kept where it
/// is when present) to the end of the card, capped at the MBR's 2 TiB.
/// `None` when there is no room for it.
pub fn card_persist_entry(m: &Mbr, disk_sectors: u64) -> Option<(Mbr, Change)> {
    let align = ALIGN / 512;
    let end = disk_sectors.min(u64::from(u32::MAX));
    let old = m.entry(mbr::PERSIST).copied();
    let first = match old {
        Some(e) => u64::from(e.first_lba),
        None => m.entry(mbr::ROOT_B)?.end_lba().next_multiple_of(align),
    };
    if end <= first || (end - first) * 512 < MIN_SIZE {
        return old.map(|_| (m.clone(), Change::Unchanged));
    }
    let sectors = (end - first) as u32;
    let change = match old {
        None => Change::Created,
        Some(e) if u64::from(e.sectors) + align <= u64::from(sectors) => Change::Grown {
            old_bytes: u64::from(e.sectors) * 512,
        },
        Some(_) => return Some((m.clone(), Change::Unchanged)),
    };
    let mut new = m.clone();
    new.entries[usize::from(mbr::PERSIST) - 1] = Some(mbr::Entry {
        bootable: false,
        kind: mbr::types::LINUX,
        first_lba: first as u32,
        sectors,
    });
    Some((new, change))
}

/// [`ensure_persist`] on a Raspberry Pi card: partition 4 created or grown
/// to the end of the card in the MBR (one sector, written and synced),
/// then in the kernel's view. A card still carrying its image's disk
/// signature gets its own in the same write ([`personalize_card`]).
fn card_persist(f: &mut File, disk: &Disk, m: &Mbr) -> Result<Option<Persist>> {
    let dev = disk.dev();
    if disk.sector_size != 512 {
        return Err(Error::msg(format!(
            "{dev}: an MBR card with {}-byte sectors: expected 512",
            disk.sector_size
        )));
    }
    let persist = card_persist_entry(m, disk.sectors);
    let mut new = persist
        .as_ref()
        .map_or_else(|| m.clone(), |(n, _)| n.clone());
    let change = persist.map(|(_, c)| c);
    let identity = if mbr::is_derived_disk_id(m.disk_id) {
        Some(personalize_card(f, &mut new, disk)?)
    } else {
        None
    };
    if identity.is_some() || change.is_some_and(|c| c != Change::Unchanged) {
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&new.encode()))
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing the MBR of {dev}"))?;
    }
    if let Some(what) = identity {
        say(&format!("gave {dev} its own identity: {what}"));
    }
    let Some(change) = change else {
        return Ok(None);
    };
    let e = new
        .entry(mbr::PERSIST)
        .context("the persist entry vanished")?;
    let pno = u32::from(mbr::PERSIST);
    let (start, bytes) = (u64::from(e.first_lba) * 512, u64::from(e.sectors) * 512);
    match change {
        Change::Created => blkpg::add_partition(f, pno, start, bytes).with_context(|| {
            format!("adding partition {pno} to the kernel's view of {dev} (BLKPG)")
        })?,
        Change::Grown { .. } => {
            blkpg::resize_partition(f, pno, start, bytes).with_context(|| {
                format!("resizing partition {pno} in the kernel's view of {dev} (BLKPG)")
            })?
        }
        Change::Unchanged => {}
    }
    settled(disk, &dev, pno, bytes, change, "").map(Some)
}

/// The first boot of a card written from an image (its disk signature is
/// one a build derived) gives it its own, like [`personalize`] a GPT disk:
/// a new serial for the boot partition's FAT32, written here first, and a
/// random disk signature in `m`, which the caller writes. The partition
/// UUIDs GRUB passes (`bi.esp=`) follow the signature from the next boot
/// on; this boot's record is read after the write. A power cut before the
/// MBR is written leaves the image's signature, and the next boot does it
/// all again. Returns what changed, for the console.
fn personalize_card(f: &mut File, m: &mut Mbr, disk: &Disk) -> Result<String> {
    let serial = match m.entry(mbr::BOOT) {
        Some(e) => new_esp_serial(
            f,
            disk,
            u64::from(e.first_lba) * 512,
            u64::from(e.sectors) * 512,
        )?,
        None => "no boot partition, no serial changed".to_string(),
    };
    let mut r = [0u8; 4];
    crate::persist::random(&mut r)?;
    let old = m.disk_id;
    m.disk_id = mbr::random_disk_id(r);
    Ok(format!(
        "disk signature {:08x} (was {old:08x}), {serial}",
        m.disk_id
    ))
}

/// Gives the FAT32 at `offset` (`len` bytes) of `disk` a random serial,
/// written and synced; what changed, for the console. A partition that is
/// not a FAT32 keeps its serial, and the message says why.
fn new_esp_serial(f: &mut File, disk: &Disk, offset: u64, len: u64) -> Result<String> {
    let dev = disk.dev();
    let fat = match Fat32::read(f, offset, len) {
        Ok(fat) => fat,
        Err(e) => return Ok(format!("ESP serial kept ({e})")),
    };
    let mut b = [0u8; 4];
    crate::persist::random(&mut b)?;
    let id = u32::from_le_bytes(b);
    for (at, bytes) in fat.volume_id_writes(id) {
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.write_all(&bytes))
            .with_context(|| format!("writing the ESP's serial on {dev}"))?;
    }
    f.sync_all().with_context(|| format!("syncing {dev}"))?;
    Ok(format!(
        "ESP serial {} (was {})",
        volume_id_text(id),
        volume_id_text(fat.volume_id())
    ))
}

/// The first boot of a disk written from an image (its disk GUID is one a
/// build derived, version 8) gives it its own identity, so no two disks
/// written from one image look alike after it: new random GUIDs for the
/// disk and every partition (names, types and places stay) in `gpt`, which
/// the caller writes, and a new serial for the ESP's FAT32, written here
/// first. A power cut before the table is written leaves the image's disk
/// GUID, and the next boot does it all again. A disk `os-agent install`
/// wrote has random GUIDs already and keeps them (its firmware boot entry
/// names its ESP partition UUID). Returns what changed, for the console.
fn personalize(f: &mut File, gpt: &mut Gpt, disk: &Disk) -> Result<String> {
    let dev = disk.dev();
    let ss = disk.sector_size;
    let serial = match gpt.find(ESP) {
        Some((_, esp)) => new_esp_serial(f, disk, esp.first_lba * ss, esp.sectors() * ss)?,
        None => "no ESP, no serial changed".to_string(),
    };
    let count = gpt.partitions().count() + 1;
    let mut guids = Vec::with_capacity(count);
    for _ in 0..count {
        guids.push(random_guid()?);
    }
    let disk_guid = guids[0];
    let mut next = guids.into_iter();
    gpt.personalize(|| next.next().unwrap_or(Guid::NIL))
        .with_context(|| dev.to_string())?;
    Ok(format!(
        "disk GUID {disk_guid}, new partition GUIDs, {serial}"
    ))
}

/// Writes the table (backup, sync, primary, sync), then fits the protective
/// MBR to the disk and wipes the old backup header if it moved, so no stale
/// table is found inside `persist` later.
fn write_table(f: &mut File, gpt: &Gpt, disk: &Disk, old_backup: Option<u64>) -> Result<()> {
    let dev = disk.dev();
    gpt.write(f, |f| f.sync_all())
        .with_context(|| dev.to_string())?;
    let ss = disk.sector_size;
    let io = |what: &str, e: std::io::Error| Error::with_cause(format!("{what} of {dev}"), e);
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut mbr))
        .map_err(|e| io("reading the MBR", e))?;
    if gpt::fit_protective_mbr(&mut mbr, disk.sectors) {
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&mbr))
            .map_err(|e| io("writing the protective MBR", e))?;
    }
    if let Some(lba) = old_backup.filter(|&l| l != gpt.alternate_lba()) {
        let zero = vec![0u8; ss as usize];
        f.seek(SeekFrom::Start(lba * ss))
            .and_then(|_| f.write_all(&zero))
            .map_err(|e| io("wiping the old backup GPT header", e))?;
    }
    f.sync_all().map_err(|e| io("syncing", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot_contract::mbr::{types, Entry as MbrEntry};

    const MIB: u64 = 2048; // sectors

    fn card(persist: Option<u32>) -> Mbr {
        let e = |bootable, kind, first_lba: u64, sectors: u64| {
            Some(MbrEntry {
                bootable,
                kind,
                first_lba: first_lba as u32,
                sectors: sectors as u32,
            })
        };
        Mbr {
            disk_id: 0xfeed0001,
            entries: [
                e(true, types::FAT32_LBA, MIB, 256 * MIB),
                e(false, types::LINUX, 257 * MIB, 1024 * MIB),
                e(false, types::LINUX, 1281 * MIB, 1024 * MIB),
                persist.and_then(|s| e(false, types::LINUX, 2305 * MIB, u64::from(s))),
            ],
        }
    }

    fn run(tool: &str, args: &[&str]) -> std::process::Output {
        let o = std::process::Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e} (dosfstools installed?)"));
        assert!(
            o.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    #[test]
    fn a_cards_first_boot_gives_it_its_own_signature_and_boot_serial() {
        let tmp = tempfile::tempdir().unwrap();
        let vfat = tmp.path().join("boot.vfat");
        File::create(&vfat).unwrap().set_len(256 << 20).unwrap();
        let v = vfat.to_str().unwrap();
        run("mkfs.fat", &["-F", "32", "-i", "1234ABCD", v]);
        let image = mbr::derived_disk_id([1, 2, 3, 4]);
        let mut m = card(Some(64 * MIB as u32));
        m.disk_id = image;
        let path = tmp.path().join("card.img");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        f.set_len(2369 * MIB * 512).unwrap();
        f.write_all(&m.encode()).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        std::io::copy(&mut File::open(&vfat).unwrap(), &mut f).unwrap();
        let disk = Disk {
            name: "card".into(),
            sector_size: 512,
            sectors: 2369 * MIB,
        };

        let what = personalize_card(&mut f, &mut m, &disk).unwrap();
        assert!(!mbr::is_derived_disk_id(m.disk_id), "{what}");
        assert_eq!(m.entries, card(Some(64 * MIB as u32)).entries);
        assert!(
            what.contains(&format!("was {image:08x}")) && what.contains("(was 1234-ABCD)"),
            "{what}"
        );
        // The serial is the FAT's own (boot sector and its backup): fsck
        // agrees, and the next boot finds nothing left to change.
        let fat = Fat32::read(&mut f, 1 << 20, 256 << 20).unwrap();
        assert_ne!(fat.volume_id(), 0x1234_ABCD);
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        let mut back = File::create(&vfat).unwrap();
        std::io::copy(&mut (&mut f).take(256 << 20), &mut back).unwrap();
        run("fsck.fat", &["-n", v]);
        let label = run("fatlabel", &["-i", v]);
        assert_eq!(
            String::from_utf8_lossy(&label.stdout).trim(),
            format!("{:08x}", fat.volume_id())
        );
    }

    #[test]
    fn card_persist_grows_to_the_end_of_a_larger_card() {
        // The card as written: persist 64 MiB at the end of the image.
        let image = card(Some(64 * MIB as u32));
        let image_end = 2369 * MIB;
        let (same, change) = card_persist_entry(&image, image_end).unwrap();
        assert_eq!((same, change), (image.clone(), Change::Unchanged));
        // dd'd to an 8 GiB card: grown to its last sector, nothing else moves.
        let card_sectors = 8 << 21;
        let (grown, change) = card_persist_entry(&image, card_sectors).unwrap();
        assert_eq!(
            change,
            Change::Grown {
                old_bytes: 64 << 20
            }
        );
        let p = grown.entry(mbr::PERSIST).unwrap();
        assert_eq!(u64::from(p.first_lba), 2305 * MIB);
        assert_eq!(p.end_lba(), card_sectors);
        assert_eq!(grown.entries[..3], image.entries[..3]);
        grown.check_card().unwrap();
        // Less than 1 MiB more is left alone.
        let (_, change) = card_persist_entry(&image, image_end + MIB - 1).unwrap();
        assert_eq!(change, Change::Unchanged);
    }

    #[test]
    fn card_persist_is_created_after_root_b_when_missing() {
        let image = card(None);
        let (new, change) = card_persist_entry(&image, 4 << 21).unwrap();
        assert_eq!(change, Change::Created);
        let p = new.entry(mbr::PERSIST).unwrap();
        assert_eq!(u64::from(p.first_lba), 2305 * MIB);
        assert_eq!(p.kind, types::LINUX);
        // No room: nothing to do.
        assert!(card_persist_entry(&image, 2305 * MIB + 10).is_none());
        // Capped at what an MBR can address.
        let (big, _) = card_persist_entry(&image, 1 << 40).unwrap();
        assert_eq!(
            big.entry(mbr::PERSIST).unwrap().end_lba(),
            u64::from(u32::MAX)
        );
    }
}
