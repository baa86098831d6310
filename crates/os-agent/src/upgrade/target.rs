//! The disk an upgrade writes to: the ESP and the two root slots. This is
//! the one place the upgrade code finds them: on the running system, the
//! boot disk os-init recorded ([`BootDisk::current`]: never a partition of
//! the same name on another disk); with `--root`, `--esp DIR` and
//! `ROOT/dev/disk/by-partlabel/`.

use std::path::{Path, PathBuf};

use boot_contract::partition;

use crate::bootdisk::BootDisk;
use crate::bootenv::Esp;
use crate::error::{Error, Result};
use crate::fsutil::Root;

/// The ESP (mounted for as long as this lives) and the root slots.
pub struct Disk {
    pub esp: Esp,
    slots: [PathBuf; 2],
}

impl Disk {
    /// The partition of slot `a` or `b`.
    pub fn slot(&self, slot: &str) -> &Path {
        if slot == "a" {
            &self.slots[0]
        } else {
            &self.slots[1]
        }
    }
}

fn by_partlabel(root: &Root, name: &str) -> PathBuf {
    root.join(format!("/dev/disk/by-partlabel/{name}"))
}

/// The partition of slot `a` or `b` (`ROOT/dev/disk/by-partlabel/root_X`
/// with `--root`, the boot disk's otherwise), without the ESP.
pub fn slot_device(root: &Root, slot: &str) -> Result<PathBuf> {
    if !root.is_host() {
        return Ok(by_partlabel(
            root,
            if slot == "a" {
                partition::ROOT_A
            } else {
                partition::ROOT_B
            },
        ));
    }
    let disk = BootDisk::current()?;
    disk.slot(slot).map(Path::to_path_buf).ok_or_else(|| {
        Error::msg(format!(
            "the boot disk {} has no partition for slot {slot}",
            disk.disk().display()
        ))
    })
}

/// Finds the disk: `esp` is `--esp DIR`; `write` mounts a found ESP
/// read-write.
pub fn locate(root: &Root, esp: Option<&Path>, write: bool) -> Result<Disk> {
    let esp = match esp {
        Some(d) => Esp::at(d),
        None => Esp::locate(root, write)?,
    };
    Ok(Disk {
        esp,
        slots: [slot_device(root, "a")?, slot_device(root, "b")?],
    })
}

/// The other slot.
pub fn other(slot: &str) -> &'static str {
    if slot == "a" {
        "b"
    } else {
        "a"
    }
}
