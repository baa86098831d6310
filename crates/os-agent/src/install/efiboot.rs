//! After an install under UEFI: a firmware boot entry for the installed
//! disk, first in `BootOrder` and in `BootNext`, so the machine boots the
//! disk next rather than the installer it was started from (UEFI 2.10
//! §3.1.3 "Load Options", §3.3 "Globally Defined Variables", §10.3.5.1
//! "Hard Drive" and §10.3.5.4 "File Path Media Device Path").
//!
//! Variables are files of efivarfs (`/sys/firmware/efi/efivars`,
//! `NAME-GUID`): 4 bytes of attributes, then the value, written in one
//! `write`. Linux makes the files of the variables it knows immutable; the
//! flag is cleared before one is rewritten.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use boot_contract::gpt::Guid;

use crate::bail;
use crate::error::{Context, Error, Result};

/// The EFI global variable GUID, as efivarfs names it.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Where Linux shows the firmware's variables.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// `EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS`.
const ATTRS: u32 = 0x7;
/// `LOAD_OPTION_ACTIVE`.
const ACTIVE: u32 = 0x1;

/// The ESP partition a boot entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspPartition {
    /// Partition number (entry index + 1).
    pub number: u32,
    pub first_lba: u64,
    pub sectors: u64,
    pub guid: Guid,
}

/// The removable-media path of the boot loader on the ESP
/// (`\EFI\BOOT\BOOTX64.EFI`): shim, or GRUB where there is no shim.
pub fn loader_path(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "amd64" => "\\EFI\\BOOT\\BOOTX64.EFI",
        "arm64" => "\\EFI\\BOOT\\BOOTAA64.EFI",
        other => bail!("no UEFI boot loader path known for architecture {other}"),
    })
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// An `EFI_LOAD_OPTION`: active, `description`, the device path
/// `HD(number,GPT,guid,start,size)/File(path)/End`, no optional data.
pub fn load_option(description: &str, esp: &EspPartition, path: &str) -> Vec<u8> {
    let mut dp = Vec::new();
    // Hard Drive media device path: type 4, subtype 1, 42 bytes.
    dp.extend_from_slice(&[0x04, 0x01]);
    dp.extend_from_slice(&42u16.to_le_bytes());
    dp.extend_from_slice(&esp.number.to_le_bytes());
    dp.extend_from_slice(&esp.first_lba.to_le_bytes());
    dp.extend_from_slice(&esp.sectors.to_le_bytes());
    dp.extend_from_slice(&esp.guid.0);
    dp.push(0x02); // partition format: GPT
    dp.push(0x02); // signature type: GUID
                   // File path media device path: type 4, subtype 4.
    let file = utf16z(path);
    dp.extend_from_slice(&[0x04, 0x04]);
    dp.extend_from_slice(&(4 + file.len() as u16).to_le_bytes());
    dp.extend_from_slice(&file);
    // End of the whole device path.
    dp.extend_from_slice(&[0x7F, 0xFF, 0x04, 0x00]);
    let mut o = Vec::new();
    o.extend_from_slice(&ACTIVE.to_le_bytes());
    o.extend_from_slice(&(dp.len() as u16).to_le_bytes());
    o.extend_from_slice(&utf16z(description));
    o.extend_from_slice(&dp);
    o
}

fn var_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-{GLOBAL}"))
}

/// A variable's value (without its attributes), if it exists.
fn read_var(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let p = var_path(dir, name);
    match fs::read(&p) {
        Ok(b) if b.len() >= 4 => Ok(Some(b[4..].to_vec())),
        Ok(_) => bail!("{}: shorter than its attributes", p.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::msg(format!("reading {}: {e}", p.display()))),
    }
}

/// Writes a variable in one `write`, after clearing the immutable flag
/// Linux puts on the files of variables it knows.
fn write_var(dir: &Path, name: &str, value: &[u8]) -> Result<()> {
    let p = var_path(dir, name);
    if let Ok(f) = File::open(&p) {
        if let Ok(flags) = rustix::fs::ioctl_getflags(&f) {
            if flags.contains(rustix::fs::IFlags::IMMUTABLE) {
                rustix::fs::ioctl_setflags(&f, flags - rustix::fs::IFlags::IMMUTABLE)
                    .with_context(|| format!("clearing the immutable flag of {}", p.display()))?;
            }
        }
    }
    let mut buf = ATTRS.to_le_bytes().to_vec();
    buf.extend_from_slice(value);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .with_context(|| format!("opening {} for writing", p.display()))?;
    let n = f
        .write(&buf)
        .with_context(|| format!("writing {}", p.display()))?;
    if n != buf.len() {
        bail!(
            "writing {}: {n} of {} bytes written",
            p.display(),
            buf.len()
        );
    }
    // efivarfs replaces the variable; a plain directory (tests) keeps a
    // longer old value's tail.
    if f.metadata().is_ok_and(|m| m.len() > buf.len() as u64) {
        f.set_len(buf.len() as u64)
            .with_context(|| format!("truncating {}", p.display()))?;
    }
    Ok(())
}

fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The existing `Boot####` numbers.
fn boot_numbers(dir: &Path) -> Result<Vec<u16>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = e
            .with_context(|| format!("listing {}", dir.display()))?
            .file_name();
        let name = name.to_string_lossy();
        let Some(num) = name
            .strip_prefix("Boot")
            .and_then(|r| r.strip_suffix(&format!("-{GLOBAL}")))
        else {
            continue;
        };
        if num.len() == 4 {
            if let Ok(n) = u16::from_str_radix(num, 16) {
                v.push(n);
            }
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Adds (or finds, when an identical one exists) the boot entry `option`
/// and puts it first in `BootOrder` and in `BootNext`. Returns its number.
pub fn register(dir: &Path, option: &[u8]) -> Result<u16> {
    let existing = boot_numbers(dir)?;
    let mut number = None;
    for &n in &existing {
        if read_var(dir, &format!("Boot{n:04X}"))?.as_deref() == Some(option) {
            number = Some(n);
            break;
        }
    }
    let number = match number {
        Some(n) => n,
        None => {
            let n = (0..=u16::MAX)
                .find(|n| !existing.contains(n))
                .ok_or_else(|| Error::msg("every Boot#### number is in use"))?;
            write_var(dir, &format!("Boot{n:04X}"), option)?;
            n
        }
    };
    let old = read_var(dir, "BootOrder")?
        .map(|b| u16s(&b))
        .unwrap_or_default();
    let order: Vec<u8> = std::iter::once(number)
        .chain(old.into_iter().filter(|&n| n != number))
        .flat_map(u16::to_le_bytes)
        .collect();
    write_var(dir, "BootOrder", &order)?;
    write_var(dir, "BootNext", &number.to_le_bytes())?;
    Ok(number)
}

/// efivarfs at [`EFIVARS`], mounted if it is not yet; None on a machine
/// that did not boot with UEFI.
pub fn efivars() -> Result<Option<PathBuf>> {
    if !Path::new("/sys/firmware/efi").is_dir() {
        return Ok(None);
    }
    const EFIVARFS_MAGIC: u64 = 0xde5e_81e4;
    let mounted = rustix::fs::statfs(EFIVARS)
        .map(|s| s.f_type as u64 == EFIVARFS_MAGIC)
        .unwrap_or(false);
    if !mounted {
        use rustix::mount::MountFlags;
        rustix::mount::mount(
            "efivarfs",
            EFIVARS,
            "efivarfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )
        .with_context(|| format!("mounting efivarfs on {EFIVARS}"))?;
    }
    Ok(Some(PathBuf::from(EFIVARS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp() -> EspPartition {
        EspPartition {
            number: 2,
            first_lba: 4096,
            sectors: 524288,
            guid: "11223344-5566-4788-99AA-BBCCDDEEFF00".parse().unwrap(),
        }
    }

    #[test]
    fn a_load_option_as_the_specification_lays_it_out() {
        let o = load_option("debian 1.0", &esp(), "\\EFI\\BOOT\\BOOTX64.EFI");
        assert_eq!(o[..4], [1, 0, 0, 0], "active");
        let dp_len = u16::from_le_bytes([o[4], o[5]]) as usize;
        let desc = utf16z("debian 1.0");
        assert_eq!(o[6..6 + desc.len()], desc[..]);
        let dp = &o[6 + desc.len()..];
        assert_eq!(dp.len(), dp_len, "nothing after the device path");
        // HD(2,GPT,11223344-5566-4788-99AA-BBCCDDEEFF00,0x1000,0x80000)
        assert_eq!(dp[..4], [4, 1, 42, 0]);
        assert_eq!(dp[4..8], 2u32.to_le_bytes());
        assert_eq!(dp[8..16], 4096u64.to_le_bytes());
        assert_eq!(dp[16..24], 524288u64.to_le_bytes());
        assert_eq!(
            dp[24..40],
            [
                0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x47, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE,
                0xFF, 0x00
            ]
        );
        assert_eq!(dp[40..42], [2, 2]);
        let file = utf16z("\\EFI\\BOOT\\BOOTX64.EFI");
        assert_eq!(dp[42..44], [4, 4]);
        assert_eq!(
            u16::from_le_bytes([dp[44], dp[45]]) as usize,
            4 + file.len()
        );
        assert_eq!(dp[46..46 + file.len()], file[..]);
        assert_eq!(dp[46 + file.len()..], [0x7F, 0xFF, 4, 0]);
    }

    #[test]
    fn registers_first_in_the_order_and_next_and_reuses_its_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let put = |name: &str, v: &[u8]| {
            let mut b = 7u32.to_le_bytes().to_vec();
            b.extend_from_slice(v);
            fs::write(var_path(d, name), b).unwrap();
        };
        put("Boot0000", b"cd");
        put("Boot0001", b"disk");
        put("Boot0003", b"shell");
        put("BootOrder", &[0, 0, 1, 0, 3, 0]);
        let o = load_option("debian 1.0", &esp(), "\\EFI\\BOOT\\BOOTX64.EFI");
        assert_eq!(register(d, &o).unwrap(), 2);
        let raw = fs::read(var_path(d, "Boot0002")).unwrap();
        assert_eq!(raw[..4], 7u32.to_le_bytes());
        assert_eq!(raw[4..], o[..]);
        assert_eq!(
            u16s(&read_var(d, "BootOrder").unwrap().unwrap()),
            [2, 0, 1, 3]
        );
        assert_eq!(read_var(d, "BootNext").unwrap().unwrap(), [2, 0]);
        // Again (an install repeated with --force): the same entry, not a
        // second one.
        assert_eq!(register(d, &o).unwrap(), 2);
        assert_eq!(
            u16s(&read_var(d, "BootOrder").unwrap().unwrap()),
            [2, 0, 1, 3]
        );
        assert_eq!(boot_numbers(d).unwrap(), [0, 1, 2, 3]);
    }
}
