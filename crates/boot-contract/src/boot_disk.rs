//! The disk the node booted from. GRUB names the ESP it started from by
//! its partition UUID on the kernel command line
//! ([`crate::boot_env::CMDLINE_ESP`]); os-init finds the disk holding that
//! partition, takes the root slot and `persist` from it and from no other
//! disk, and records what it found in [`RECORD`] (on `/run`, for this boot
//! only). os-agent reads the record instead of looking for partitions by
//! name, so a second disk with the same names (a USB stick written from the
//! same image) is never used.
//!
//! On a disk's first boot os-init may give it its own identity (new GUIDs),
//! after which the command line's UUID is the old one: the record holds
//! the current one.
//!
//! Two partition tables carry the A/B layout ([`Table`]):
//! - **GPT** (the disk image): `bi.esp=` is the ESP's partition GUID and
//!   the partitions are found by their GPT names (`ESP`, `root_a`,
//!   `root_b`, `persist`), whatever their numbers.
//! - **MBR** (the Raspberry Pi card, [`crate::mbr`]): entries have no
//!   names. `bi.esp=` is what GRUB's `probe --part-uuid` gives on an MBR
//!   disk, the disk signature and the boot partition's number
//!   (`1234abcd-01`); the disk is the one whose signature that is, and the
//!   partitions are found by their **fixed numbers**: 1 boot (FAT), 2
//!   `root_a`, 3 `root_b`, 4 `persist`.
//!
//! [`EspId::parse`] reads `bi.esp=`, [`Slots::on_gpt`] and [`Slots::on_mbr`]
//! find the partitions; os-init and os-agent use both, so the rule is
//! written once.

use crate::gpt::{Gpt, Guid};
use crate::mbr::{self, Mbr, MbrError, PartUuid};
use crate::partition::{ESP, PERSIST, ROOT_A, ROOT_B};

/// What `bi.esp=` names: the ESP of a GPT disk or the boot partition of
/// an MBR card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspId {
    Gpt(Guid),
    Mbr(PartUuid),
}

impl std::fmt::Display for EspId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EspId::Gpt(g) => g.fmt(f),
            EspId::Mbr(u) => u.fmt(f),
        }
    }
}

impl EspId {
    /// A GPT partition GUID (36 characters) or an MBR partition UUID
    /// (`xxxxxxxx-NN`).
    pub fn parse(v: &str) -> Result<EspId, String> {
        if v.len() == 36 {
            return v
                .parse::<Guid>()
                .map(EspId::Gpt)
                .map_err(|e| format!("{v:?}: {e}"));
        }
        let u: PartUuid = v.parse().map_err(|e: String| {
            format!("{e}; or a GPT partition GUID (XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)")
        })?;
        if u.partition != mbr::BOOT {
            return Err(format!(
                "{v:?}: partition {} of an MBR card is not its boot partition ({})",
                u.partition,
                mbr::BOOT
            ));
        }
        Ok(EspId::Mbr(u))
    }
}

/// Which partition table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Gpt,
    Mbr,
}

/// The partition numbers (1-based) of the A/B layout on one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    pub table: Table,
    /// The ESP (GPT) or the FAT boot partition (MBR).
    pub esp: u32,
    pub root_a: u32,
    pub root_b: u32,
    /// None when the disk has no `persist` (yet).
    pub persist: Option<u32>,
}

impl Slots {
    /// On a GPT disk: by name, when its ESP entry has the partition GUID
    /// `esp`; `None` for another disk. A disk with that ESP but without
    /// both slots is an error.
    pub fn on_gpt(gpt: &Gpt, esp: Guid) -> Option<Result<Slots, String>> {
        let (i, _) = gpt
            .partitions()
            .find(|(_, e)| e.guid == esp && e.name == ESP)?;
        let num = |name: &str| gpt.find(name).map(|(i, _)| i as u32 + 1);
        let need = |name: &str| {
            num(name).ok_or_else(|| format!("it holds the ESP {esp} but no partition named {name}"))
        };
        Some((|| {
            Ok(Slots {
                table: Table::Gpt,
                esp: i as u32 + 1,
                root_a: need(ROOT_A)?,
                root_b: need(ROOT_B)?,
                persist: num(PERSIST),
            })
        })())
    }

    /// On an MBR card: by the fixed numbers, when its disk signature is
    /// `esp`'s; `None` for another disk. A card with that signature whose
    /// entries are not the contract's is an error.
    pub fn on_mbr(m: &Mbr, esp: PartUuid) -> Option<Result<Slots, MbrError>> {
        if m.disk_id != esp.disk_id || esp.partition != mbr::BOOT {
            return None;
        }
        Some(m.check_card().map(|()| Slots {
            table: Table::Mbr,
            esp: u32::from(mbr::BOOT),
            root_a: u32::from(mbr::ROOT_A),
            root_b: u32::from(mbr::ROOT_B),
            persist: m.entry(mbr::PERSIST).map(|_| u32::from(mbr::PERSIST)),
        }))
    }

    /// The partition number of slot `a` or `b`.
    pub fn slot(&self, slot: &str) -> Option<u32> {
        match slot {
            "a" => Some(self.root_a),
            "b" => Some(self.root_b),
            _ => None,
        }
    }
}

/// Where os-init writes the record: `key=value` lines.
pub const RECORD: &str = "/run/os/boot-disk";

/// What os-init found: device paths of this boot and the disk's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The whole disk, `/dev/vda`.
    pub disk: String,
    /// The identity of its partition table (after any identity change
    /// this boot).
    pub identity: Identity,
    /// Partition device paths.
    pub esp: String,
    pub root_a: String,
    pub root_b: String,
    /// None when the disk has no `persist` partition.
    pub persist: Option<String>,
}

/// How a boot disk is told from another: its GPT's disk GUID and ESP
/// partition GUID, or an MBR card's disk signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    Gpt { disk_guid: Guid, esp_partuuid: Guid },
    Mbr { disk_id: u32 },
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Gpt {
                disk_guid,
                esp_partuuid,
            } => write!(f, "GPT disk GUID {disk_guid}, ESP {esp_partuuid}"),
            Identity::Mbr { disk_id } => write!(f, "MBR disk signature {disk_id:08x}"),
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{RECORD}: {0}")]
pub struct RecordError(pub String);

impl Record {
    pub fn render(&self) -> String {
        let id = match self.identity {
            Identity::Gpt {
                disk_guid,
                esp_partuuid,
            } => format!("disk_guid={disk_guid}\nesp_partuuid={esp_partuuid}\n"),
            Identity::Mbr { disk_id } => format!("table=mbr\ndisk_id={disk_id:08x}\n"),
        };
        let mut s = format!(
            "disk={}\n{id}esp={}\nroot_a={}\nroot_b={}\n",
            self.disk, self.esp, self.root_a, self.root_b
        );
        if let Some(p) = &self.persist {
            s.push_str(&format!("persist={p}\n"));
        }
        s
    }

    pub fn parse(text: &str) -> Result<Record, RecordError> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let need = |k: &str| -> Result<String, RecordError> {
            let v = field(k).ok_or_else(|| RecordError(format!("no {k}=")))?;
            if !v.starts_with("/dev/") {
                return Err(RecordError(format!("{k}={v}: expected a /dev/ path")));
            }
            Ok(v.to_string())
        };
        let guid = |k: &str| -> Result<Guid, RecordError> {
            let v = field(k).ok_or_else(|| RecordError(format!("no {k}=")))?;
            v.parse().map_err(|e| RecordError(format!("{k}=: {e}")))
        };
        let persist = match field("persist") {
            Some(_) => Some(need("persist")?),
            None => None,
        };
        let identity = match field("table") {
            None | Some("gpt") => Identity::Gpt {
                disk_guid: guid("disk_guid")?,
                esp_partuuid: guid("esp_partuuid")?,
            },
            Some("mbr") => {
                let v = field("disk_id").ok_or_else(|| RecordError("no disk_id=".into()))?;
                let disk_id = (v.len() == 8)
                    .then(|| u32::from_str_radix(v, 16).ok())
                    .flatten()
                    .ok_or_else(|| RecordError(format!("disk_id={v}: expected 8 hex digits")))?;
                Identity::Mbr { disk_id }
            }
            Some(t) => return Err(RecordError(format!("table={t}: expected gpt or mbr"))),
        };
        Ok(Record {
            disk: need("disk")?,
            identity,
            esp: need("esp")?,
            root_a: need("root_a")?,
            root_b: need("root_b")?,
            persist,
        })
    }

    /// The device of slot `a` or `b`.
    pub fn slot(&self, slot: &str) -> Option<&str> {
        match slot {
            "a" => Some(&self.root_a),
            "b" => Some(&self.root_b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_ids_of_both_tables() {
        let g = "2b3c4d5e-0011-4a22-8b33-445566778899";
        assert_eq!(EspId::parse(g).unwrap(), EspId::Gpt(g.parse().unwrap()));
        let m = EspId::parse("1234ABCD-01").unwrap();
        assert_eq!(
            m,
            EspId::Mbr(PartUuid {
                disk_id: 0x1234abcd,
                partition: 1
            })
        );
        assert_eq!(m.to_string(), "1234abcd-01");
        let e = EspId::parse("1234abcd-02").unwrap_err();
        assert!(e.contains("not its boot partition"), "{e}");
        let e = EspId::parse("nonsense").unwrap_err();
        assert!(
            e.contains("MBR partition UUID") && e.contains("GPT partition GUID"),
            "{e}"
        );
        assert!(EspId::parse("2b3c4d5e-0011-4a22-8b33-44556677889z").is_err());
    }

    /// The A/B layout on a GPT disk, found by name: the numbers follow the
    /// table (here after a bios_grub partition), not the contract's MBR
    /// numbers.
    #[test]
    fn slots_on_a_gpt_disk_by_name() {
        use crate::gpt::{types::LINUX_FILESYSTEM, Entry};
        let esp = Guid::random_v4([7; 16]);
        let entry = |name: &str, guid: Guid, first: u64| Entry {
            type_guid: LINUX_FILESYSTEM,
            guid,
            first_lba: first,
            last_lba: first + 2047,
            attributes: 0,
            name: name.into(),
        };
        let entries = [
            entry("bios_grub", Guid::random_v4([1; 16]), 2048),
            entry(ESP, esp, 4096),
            entry(ROOT_A, Guid::random_v4([3; 16]), 6144),
            entry(ROOT_B, Guid::random_v4([4; 16]), 8192),
        ];
        let gpt = Gpt::new(512, 1 << 16, Guid::random_v4([5; 16]), &entries).unwrap();
        let s = Slots::on_gpt(&gpt, esp).unwrap().unwrap();
        assert_eq!(
            s,
            Slots {
                table: Table::Gpt,
                esp: 2,
                root_a: 3,
                root_b: 4,
                persist: None
            }
        );
        assert_eq!(s.slot("b"), Some(4));
        assert!(Slots::on_gpt(&gpt, Guid::random_v4([6; 16])).is_none());
        let without_b = Gpt::new(512, 1 << 16, Guid::random_v4([5; 16]), &entries[..3]).unwrap();
        let e = Slots::on_gpt(&without_b, esp).unwrap().unwrap_err();
        assert!(e.contains("no partition named root_b"), "{e}");
    }

    /// The A/B layout on an MBR card, found by the fixed numbers on the
    /// disk whose signature `bi.esp=` names.
    #[test]
    fn slots_on_an_mbr_card_by_number() {
        use crate::mbr::{types, Entry};
        let e = |bootable, kind, first_lba| {
            Some(Entry {
                bootable,
                kind,
                first_lba,
                sectors: 2048,
            })
        };
        let mut card = Mbr {
            disk_id: 0xcafe0001,
            entries: [
                e(true, types::FAT32_LBA, 2048),
                e(false, types::LINUX, 4096),
                e(false, types::LINUX, 6144),
                e(false, types::LINUX, 8192),
            ],
        };
        let id: PartUuid = "cafe0001-01".parse().unwrap();
        let s = Slots::on_mbr(&card, id).unwrap().unwrap();
        assert_eq!(
            s,
            Slots {
                table: Table::Mbr,
                esp: 1,
                root_a: 2,
                root_b: 3,
                persist: Some(4)
            }
        );
        assert!(Slots::on_mbr(&card, "cafe0002-01".parse().unwrap()).is_none());
        card.entries[3] = None;
        assert_eq!(Slots::on_mbr(&card, id).unwrap().unwrap().persist, None);
        card.entries[1].as_mut().unwrap().kind = 0x07;
        let err = Slots::on_mbr(&card, id).unwrap().unwrap_err().to_string();
        assert!(err.contains("entry 2") && err.contains("root_a"), "{err}");
    }

    #[test]
    fn round_trip_and_refusals() {
        let esp_partuuid = Guid::random_v4([2; 16]);
        let r = Record {
            disk: "/dev/vdb".into(),
            identity: Identity::Gpt {
                disk_guid: Guid::random_v4([1; 16]),
                esp_partuuid,
            },
            esp: "/dev/vdb2".into(),
            root_a: "/dev/vdb3".into(),
            root_b: "/dev/vdb4".into(),
            persist: Some("/dev/vdb5".into()),
        };
        assert_eq!(Record::parse(&r.render()).unwrap(), r);
        assert_eq!(r.slot("b"), Some("/dev/vdb4"));
        assert_eq!(r.slot("live"), None);
        let none = Record {
            persist: None,
            ..r.clone()
        };
        assert_eq!(Record::parse(&none.render()).unwrap(), none);
        for (bad, want) in [
            (r.render().replace("disk=/dev/vdb\n", ""), "no disk="),
            (
                r.render().replace("esp=/dev/vdb2", "esp=vdb2"),
                "expected a /dev/ path",
            ),
            (
                r.render().replace(&esp_partuuid.to_string(), "nonsense"),
                "esp_partuuid=: bad GUID",
            ),
        ] {
            let e = Record::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        // An MBR card.
        let card = Record {
            disk: "/dev/mmcblk0".into(),
            identity: Identity::Mbr {
                disk_id: 0x00c0ffee,
            },
            esp: "/dev/mmcblk0p1".into(),
            root_a: "/dev/mmcblk0p2".into(),
            root_b: "/dev/mmcblk0p3".into(),
            persist: Some("/dev/mmcblk0p4".into()),
        };
        assert!(card.render().contains("table=mbr\ndisk_id=00c0ffee\n"));
        assert_eq!(Record::parse(&card.render()).unwrap(), card);
        for (bad, want) in [
            (
                card.render().replace("00c0ffee", "c0ffee"),
                "disk_id=c0ffee: expected 8 hex",
            ),
            (card.render().replace("table=mbr", "table=apm"), "table=apm"),
        ] {
            let e = Record::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
