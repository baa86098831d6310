//! What a disk image or Raspberry Pi card written by build-image holds, or
//! a disk or card it was written to (`build-image inspect DISK`): read
//! with the boot contract's own readers, the ones os-init and os-agent use
//! on the device. The partition table (the A/B GPT or the card's MBR),
//! whether the disk still has the identity of its build or has taken its
//! own on first boot, every partition, the boot partition's GRUB
//! environment (the slot that boots next, a trial pending) and, on a card,
//! the board sections of `config.txt`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use boot_contract::fat::Fat32;
use boot_contract::gpt::Gpt;
use boot_contract::grubenv::GrubEnv;
use boot_contract::mbr::{self, Mbr};
use boot_contract::partition;
use serde::Serialize;

const SECTOR: u64 = 512;
/// The largest `config.txt` read.
const MAX_CONFIG_TXT: usize = 64 << 10;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskInspect {
    pub path: PathBuf,
    pub size: u64,
    /// `gpt` (the A/B disk image) or `mbr` (a Raspberry Pi card).
    pub table: &'static str,
    /// The GPT's disk GUID, or the card's MBR disk signature (8 hex digits).
    pub disk_id: String,
    /// `build` while the disk has the identity its build derived (every
    /// disk written from the image shares it), `own` once its first boot
    /// gave it its own.
    pub identity: &'static str,
    pub partitions: Vec<PartitionInfo>,
    /// The boot partition's GRUB environment block (`grubenv`).
    pub boot_env: Option<BootEnv>,
    /// Why the environment block could not be read, when it could not.
    pub boot_env_problem: Option<String>,
    /// A card's `config.txt` board sections (`[pi3]`, …) and the file the
    /// firmware starts for each (`kernel=`); empty for a GPT disk.
    pub boards: Vec<BoardSection>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionInfo {
    /// 1-based, as the kernel numbers it.
    pub number: u32,
    /// The GPT name, or the contract's name of a card's partition number.
    pub name: String,
    /// Byte offset and size.
    pub start: u64,
    pub size: u64,
    /// The GPT type GUID, or the MBR type byte (`0x0c`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The MBR active flag (always false on GPT).
    pub bootable: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootEnv {
    /// `default_slot`: the slot that boots when no trial is pending.
    pub default_slot: String,
    /// `trial_slot`: a slot armed to boot once, or empty.
    pub trial_slot: String,
    /// Every variable of the block.
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct BoardSection {
    /// The section's filter without brackets (`pi3`).
    pub section: String,
    /// Its `kernel=` value, if it has one.
    pub kernel: Option<String>,
}

/// Whether the first two sectors of `path` start a disk image or card:
/// a 55 AA signature and either a GPT header at LBA 1 or an MBR with
/// primary partitions and no protective entry.
pub fn looks_like_disk(path: &Path) -> bool {
    let mut head = [0u8; 1024];
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    if f.read_exact(&mut head).is_err() || head[510..512] != [0x55, 0xAA] {
        return false;
    }
    if &head[512..520] == b"EFI PART" {
        return true;
    }
    let sector: &[u8; 512] = head[..512].try_into().expect("512 bytes");
    Mbr::parse(sector, None).is_ok_and(|m| m.entries.iter().any(Option::is_some))
}

/// Reads the disk image, card or device at `path`.
pub fn inspect(path: &Path) -> Result<DiskInspect> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // A block device's metadata says 0: its size is where a seek ends.
    let size = f
        .seek(SeekFrom::End(0))
        .with_context(|| format!("reading the size of {}", path.display()))?;
    if size < 2 * SECTOR {
        bail!(
            "{}: {size} bytes is too small for a disk image (no partition table)",
            path.display()
        );
    }
    let mut head = [0u8; 1024];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut head)
        .with_context(|| format!("reading the first sectors of {}", path.display()))?;
    let sectors = size / SECTOR;
    let mut out = if &head[512..520] == b"EFI PART" {
        gpt_disk(&mut f, path, size, sectors)?
    } else {
        card(&head, path, size, sectors)?
    };
    let boot = out
        .partitions
        .iter()
        .find(|p| p.name == partition::ESP || p.name == "boot")
        .map(|p| (p.start, p.size));
    match boot {
        Some((start, len)) => match read_boot_partition(&mut f, start, len, out.table == "mbr") {
            Ok((env, boards)) => {
                out.boot_env = Some(env);
                out.boards = boards;
            }
            Err(e) => out.boot_env_problem = Some(format!("{e:#}")),
        },
        None => out.boot_env_problem = Some("no ESP or boot partition".into()),
    }
    Ok(out)
}

fn gpt_disk(f: &mut File, path: &Path, size: u64, sectors: u64) -> Result<DiskInspect> {
    let gpt = match Gpt::read(f, SECTOR, sectors) {
        Ok(g) => g,
        Err(primary) => Gpt::read_backup(f, SECTOR, sectors).map_err(|backup| {
            anyhow::anyhow!(
                "{}: neither GPT reads: primary: {primary}; backup: {backup}",
                path.display()
            )
        })?,
    };
    let partitions = gpt
        .partitions()
        .map(|(i, e)| PartitionInfo {
            number: i as u32 + 1,
            name: e.name.clone(),
            start: e.first_lba * SECTOR,
            size: e.sectors() * SECTOR,
            kind: e.type_guid.to_string(),
            bootable: false,
        })
        .collect();
    let id = gpt.disk_guid();
    Ok(DiskInspect {
        path: path.to_path_buf(),
        size,
        table: "gpt",
        disk_id: id.to_string(),
        identity: if id.is_derived() { "build" } else { "own" },
        partitions,
        boot_env: None,
        boot_env_problem: None,
        boards: Vec::new(),
    })
}

fn card(head: &[u8; 1024], path: &Path, size: u64, sectors: u64) -> Result<DiskInspect> {
    let sector: &[u8; 512] = head[..512].try_into().expect("512 bytes");
    let m = Mbr::parse(sector, Some(sectors)).with_context(|| {
        format!(
            "{}: no GPT at sector 1 and the MBR does not read",
            path.display()
        )
    })?;
    m.check_card().with_context(|| {
        format!(
            "{}: an MBR, but not a build-image card (boot, root_a, root_b, persist)",
            path.display()
        )
    })?;
    let name = |n: u8| match n {
        mbr::BOOT => "boot",
        mbr::ROOT_A => partition::ROOT_A,
        mbr::ROOT_B => partition::ROOT_B,
        mbr::PERSIST => partition::PERSIST,
        _ => "?",
    };
    let partitions = (1..=4u8)
        .filter_map(|n| m.entry(n).map(|e| (n, e)))
        .map(|(n, e)| PartitionInfo {
            number: u32::from(n),
            name: name(n).into(),
            start: u64::from(e.first_lba) * SECTOR,
            size: u64::from(e.sectors) * SECTOR,
            kind: format!("0x{:02x}", e.kind),
            bootable: e.bootable,
        })
        .collect();
    Ok(DiskInspect {
        path: path.to_path_buf(),
        size,
        table: "mbr",
        disk_id: format!("{:08x}", m.disk_id),
        identity: if mbr::is_derived_disk_id(m.disk_id) {
            "build"
        } else {
            "own"
        },
        partitions,
        boot_env: None,
        boot_env_problem: None,
        boards: Vec::new(),
    })
}

/// The GRUB environment of the FAT32 at `start` (`grubenv`, else its copy
/// `grubenv.bak`) and, on a card, the board sections of `config.txt`.
fn read_boot_partition(
    f: &mut File,
    start: u64,
    len: u64,
    card: bool,
) -> Result<(BootEnv, Vec<BoardSection>)> {
    let fat = Fat32::read(f, start, len).context("the boot partition")?;
    let mut env = None;
    let mut problems = Vec::new();
    for name in ["grubenv", "grubenv.bak"] {
        match fat.read_root_file(f, name, 1024) {
            Ok(Some(block)) => match GrubEnv::parse(&block) {
                Ok(e) => {
                    env = Some(e);
                    break;
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            },
            Ok(None) => problems.push(format!("no {name}")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    let Some(env) = env else {
        bail!("{}", problems.join("; "));
    };
    let boards = if card {
        match fat.read_root_file(f, "config.txt", MAX_CONFIG_TXT)? {
            Some(text) => board_sections(&String::from_utf8_lossy(&text)),
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let get = |n: &str| env.get(n).unwrap_or_default().to_string();
    Ok((
        BootEnv {
            default_slot: get("default_slot"),
            trial_slot: get("trial_slot"),
            vars: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        boards,
    ))
}

/// The `[filter]` sections of `config.txt` but `[all]`, each with the last
/// `kernel=` in it.
pub fn board_sections(text: &str) -> Vec<BoardSection> {
    let mut out: Vec<BoardSection> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = (name != "all").then(|| {
                out.push(BoardSection {
                    section: name.to_string(),
                    kernel: None,
                });
                out.len() - 1
            });
        } else if let (Some(i), Some(k)) = (current, line.strip_prefix("kernel=")) {
            out[i].kernel = Some(k.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_txt_sections_but_all_with_their_kernel() {
        let s = board_sections(
            "arm_64bit=1\n[pi3]\nkernel=u-boot-rpi_arm64.bin\n# c\n[pi5]\n\
             dtoverlay=x\n[all]\nkernel=ignored\n[pi02]\nkernel=a.bin\n",
        );
        let got: Vec<(&str, Option<&str>)> = s
            .iter()
            .map(|b| (b.section.as_str(), b.kernel.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("pi3", Some("u-boot-rpi_arm64.bin")),
                ("pi5", None),
                ("pi02", Some("a.bin"))
            ]
        );
    }

    #[test]
    fn a_file_that_is_no_disk_is_not_taken_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert!(!looks_like_disk(&p));
        let e = inspect(&p).unwrap_err().to_string();
        assert!(e.contains("the MBR does not read"), "{e}");
        std::fs::write(&p, b"tiny").unwrap();
        let e = inspect(&p).unwrap_err().to_string();
        assert!(e.contains("too small for a disk image"), "{e}");
    }
}
