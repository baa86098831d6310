//! The disk the node booted from: its ESP, slots and `persist`, as os-init
//! found them ([`boot_contract::boot_disk`]: the disk holding the ESP
//! partition GRUB started from). Every command that touches the ESP or a
//! slot goes through [`BootDisk::current`]; a partition of the same name on
//! another disk (a USB stick written from the same image) is never used.

use std::fs::File;
use std::path::{Path, PathBuf};

use boot_contract::boot_disk::{Identity, Record, RECORD};
use boot_contract::gpt::Gpt;
use boot_contract::mbr::Mbr;
use boot_contract::partition::ESP;

use crate::bail;
use crate::error::{Context, Error, Result};

/// The boot disk of the running system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    pub record: Record,
}

impl BootDisk {
    /// The disk this boot came from, from os-init's record. Refuses when
    /// there is none (a system not booted by os-init from an A/B disk, or
    /// an os-init that could not tie a disk to the boot loader) or when the
    /// disk no longer carries the identity recorded.
    pub fn current() -> Result<BootDisk> {
        BootDisk::from_record(Path::new(RECORD), Path::new("/sys"))
    }

    /// As [`BootDisk::current`], with the record at `path` and sysfs at
    /// `sysfs`.
    pub fn from_record(path: &Path, sysfs: &Path) -> Result<BootDisk> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::msg(format!(
                "reading {}: {e}: os-init records the disk the node booted from there; \
                 without it no ESP or slot is used (only the disk holding the ESP partition \
                 the boot loader started from may be)",
                path.display()
            ))
        })?;
        let record = Record::parse(&text).map_err(|e| Error::msg(e.to_string()))?;
        let d = BootDisk { record };
        d.verify(sysfs)?;
        Ok(d)
    }

    /// The disk still carries the identity os-init recorded, its GPT's or
    /// an MBR card's (a disk swapped for another under the same name is
    /// refused).
    fn verify(&self, sysfs: &Path) -> Result<()> {
        let r = &self.record;
        let name = r.disk.strip_prefix("/dev/").unwrap_or(&r.disk);
        let q = sysfs.join("class/block").join(name);
        let num = |p: PathBuf| -> Result<u64> {
            let s =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            s.trim()
                .parse()
                .map_err(|_| Error::msg(format!("{}: not a number", p.display())))
        };
        let ss = num(q.join("queue/logical_block_size"))?;
        let bytes = num(q.join("size"))? * 512;
        let mut f = File::open(&r.disk).with_context(|| format!("opening {}", r.disk))?;
        let (disk_guid, esp_partuuid) = match r.identity {
            Identity::Gpt {
                disk_guid,
                esp_partuuid,
            } => (disk_guid, esp_partuuid),
            Identity::Mbr { disk_id } => {
                use std::io::Read;
                let mut sector = [0u8; 512];
                f.read_exact(&mut sector)
                    .with_context(|| format!("reading the MBR of the boot disk {}", r.disk))?;
                let m = Mbr::parse(&sector, Some(bytes / 512))
                    .map_err(|e| Error::msg(format!("the boot disk {}: {e}", r.disk)))?;
                if m.disk_id != disk_id || m.check_card().is_err() {
                    bail!(
                        "{} is not the card the node booted from any more (MBR disk signature \
                         {:08x}; {RECORD} says {disk_id:08x}): refusing to use it",
                        r.disk,
                        m.disk_id
                    );
                }
                return Ok(());
            }
        };
        let gpt = Gpt::read(&mut f, ss, bytes / ss)
            .or_else(|_| Gpt::read_backup(&mut f, ss, bytes / ss))
            .with_context(|| format!("reading the GPT of the boot disk {}", r.disk))?;
        let esp = gpt.find(ESP).map(|(_, e)| e.guid);
        if gpt.disk_guid() != disk_guid || esp != Some(esp_partuuid) {
            bail!(
                "{} is not the disk the node booted from any more (disk GUID {}, ESP {:?}; \
                 {RECORD} says {} and {}): refusing to use it",
                r.disk,
                gpt.disk_guid(),
                esp,
                disk_guid,
                esp_partuuid
            );
        }
        Ok(())
    }

    pub fn disk(&self) -> &Path {
        Path::new(&self.record.disk)
    }

    pub fn esp(&self) -> &Path {
        Path::new(&self.record.esp)
    }

    /// The partition of slot `a` or `b`.
    pub fn slot(&self, slot: &str) -> Option<&Path> {
        self.record.slot(slot).map(Path::new)
    }

    pub fn persist(&self) -> Option<&Path> {
        self.record.persist.as_deref().map(Path::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot_contract::gpt::{types, Entry, Guid};

    /// A disk image file with a GPT holding an ESP.
    fn disk(dir: &Path) -> (PathBuf, Gpt) {
        let sectors = 8192;
        let esp = Entry {
            type_guid: types::LINUX_FILESYSTEM,
            guid: Guid::random_v4([2; 16]),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 0,
            name: ESP.into(),
        };
        let gpt = Gpt::new(512, sectors, Guid::random_v4([1; 16]), &[esp]).unwrap();
        let path = dir.join("vdz");
        let mut f = File::create(&path).unwrap();
        f.set_len(sectors * 512).unwrap();
        gpt.write(&mut f, |_| Ok(())).unwrap();
        (path, gpt)
    }

    #[test]
    fn uses_the_recorded_disk_only_while_it_is_the_same() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, gpt) = disk(tmp.path());
        // The record names /dev paths: this one leads to the image file,
        // and the fake sysfs has its size under the same name.
        let dev = format!("/dev/../{}", path.display());
        let rec = Record {
            disk: dev.clone(),
            identity: Identity::Gpt {
                disk_guid: gpt.disk_guid(),
                esp_partuuid: Guid::random_v4([2; 16]),
            },
            esp: "/dev/vdz2".into(),
            root_a: "/dev/vdz3".into(),
            root_b: "/dev/vdz4".into(),
            persist: None,
        };
        let rp = tmp.path().join("boot-disk");
        std::fs::write(&rp, rec.render()).unwrap();
        let sysfs = tmp.path().join("sys");
        let name = dev.trim_start_matches("/dev/");
        let q = sysfs.join("class/block").join(name);
        std::fs::create_dir_all(q.join("queue")).unwrap();
        std::fs::write(q.join("queue/logical_block_size"), "512\n").unwrap();
        std::fs::write(q.join("size"), "8192\n").unwrap();
        let d = BootDisk::from_record(&rp, &sysfs).unwrap();
        assert_eq!(d.esp(), Path::new("/dev/vdz2"));
        assert_eq!(d.slot("b"), Some(Path::new("/dev/vdz4")));
        assert_eq!(d.persist(), None);

        // Another disk under that name: refused.
        let other = Record {
            identity: Identity::Gpt {
                disk_guid: gpt.disk_guid(),
                esp_partuuid: Guid::random_v4([9; 16]),
            },
            ..rec.clone()
        };
        std::fs::write(&rp, other.render()).unwrap();
        let e = BootDisk::from_record(&rp, &sysfs).unwrap_err().to_string();
        assert!(e.contains("is not the disk the node booted from"), "{e}");
        // No record: refused, saying why.
        let e = BootDisk::from_record(&tmp.path().join("none"), &sysfs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("os-init records the disk"), "{e}");
    }

    /// A Raspberry Pi card is told by its MBR disk signature.
    #[test]
    fn uses_the_recorded_card_only_while_it_is_the_same() {
        use boot_contract::mbr::{types, Entry as MbrEntry};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("mmcblk9");
        let e = |bootable, kind, first_lba| {
            Some(MbrEntry {
                bootable,
                kind,
                first_lba,
                sectors: 2048,
            })
        };
        let mut card = Mbr {
            disk_id: 0x5eed_0001,
            entries: [
                e(true, types::FAT32_LBA, 2048),
                e(false, types::LINUX, 4096),
                e(false, types::LINUX, 6144),
                None,
            ],
        };
        let f = File::create(&path).unwrap();
        f.set_len(8192 * 512).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &card.encode(), 0).unwrap();
        let dev = format!("/dev/../{}", path.display());
        let rec = Record {
            disk: dev.clone(),
            identity: Identity::Mbr {
                disk_id: card.disk_id,
            },
            esp: "/dev/mmcblk9p1".into(),
            root_a: "/dev/mmcblk9p2".into(),
            root_b: "/dev/mmcblk9p3".into(),
            persist: None,
        };
        let rp = tmp.path().join("boot-disk");
        std::fs::write(&rp, rec.render()).unwrap();
        let sysfs = tmp.path().join("sys");
        let q = sysfs
            .join("class/block")
            .join(dev.trim_start_matches("/dev/"));
        std::fs::create_dir_all(q.join("queue")).unwrap();
        std::fs::write(q.join("queue/logical_block_size"), "512\n").unwrap();
        std::fs::write(q.join("size"), "8192\n").unwrap();
        let d = BootDisk::from_record(&rp, &sysfs).unwrap();
        assert_eq!(d.slot("a"), Some(Path::new("/dev/mmcblk9p2")));
        assert_eq!(d.esp(), Path::new("/dev/mmcblk9p1"));

        // Another card (another signature) under that name: refused.
        card.disk_id = 0x5eed_0002;
        std::os::unix::fs::FileExt::write_all_at(&f, &card.encode(), 0).unwrap();
        let e = BootDisk::from_record(&rp, &sysfs).unwrap_err().to_string();
        assert!(
            e.contains("is not the card the node booted from") && e.contains("5eed0001"),
            "{e}"
        );
        // A GPT disk now: refused too.
        std::os::unix::fs::FileExt::write_all_at(&f, &boot_contract::gpt::protective_mbr(8192), 0)
            .unwrap();
        let e = BootDisk::from_record(&rp, &sysfs).unwrap_err().to_string();
        assert!(e.contains("protective MBR"), "{e}");
    }
}
