//! The disk an upgrade writes to: the ESP and the two root slots. This is
//! the one place the upgrade code finds them (by GPT partition name on
//! the running system, or `--esp DIR` and `ROOT/dev/disk/by-partlabel/`
//! with `--root`), so how they are found can change in one place.

use std::path::{Path, PathBuf};

use boot_contract::partition;

use crate::bootenv::Esp;
use crate::error::Result;
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

/// The partition of slot `a` or `b`, without the ESP (for `status`).
pub fn slot_device(root: &Root, slot: &str) -> PathBuf {
    by_partlabel(
        root,
        if slot == "a" {
            partition::ROOT_A
        } else {
            partition::ROOT_B
        },
    )
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
        slots: [slot_device(root, "a"), slot_device(root, "b")],
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
