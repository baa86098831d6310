//! The new disk's own identity: no two disks installed from one image (nor
//! an installed disk and one `dd`'d from the same image) carry the same
//! GUIDs or ESP serial, so GRUB's `bi.esp=` names exactly one disk.

use boot_contract::fat::{volume_id_text, Fat32};
use boot_contract::gpt::{Gpt, Guid};
use boot_contract::partition;

use super::{progress, Writer, SECTOR};
use crate::error::{Context, Error, Result};

/// Random bytes from the kernel.
fn random(buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        done += rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty())
            .context("getrandom")?;
    }
    Ok(())
}

fn random_guid() -> Result<Guid> {
    let mut b = [0u8; 16];
    random(&mut b)?;
    Ok(Guid::random_v4(b))
}

/// The new disk's own identity: a random serial for the ESP's FAT
/// (written now) and random disk and partition GUIDs in `g` (written with
/// the table), so no two disks installed from one image look alike.
pub(super) fn personalize(w: &mut Writer<'_>, g: &mut Gpt) -> Result<()> {
    let (_, esp) = g
        .find(partition::ESP)
        .ok_or_else(|| Error::msg("the head's GPT (head.file) has no ESP partition"))?;
    let (at, len) = (esp.first_lba * SECTOR, esp.sectors() * SECTOR);
    match Fat32::read(&mut &w.t.file, at, len) {
        Ok(fat) => {
            let mut b = [0u8; 4];
            random(&mut b)?;
            let id = u32::from_le_bytes(b);
            for (off, bytes) in fat.volume_id_writes(id) {
                w.write(off, &bytes)?;
            }
            progress(format!(
                "the new ESP's serial is {} (the image's was {})",
                volume_id_text(id),
                volume_id_text(fat.volume_id())
            ));
        }
        Err(e) => progress(format!(
            "the ESP of the image has no FAT32 serial to change ({e})"
        )),
    }
    let mut guids = Vec::new();
    for _ in 0..=g.partitions().count() {
        guids.push(random_guid()?);
    }
    let mut next = guids.into_iter();
    g.personalize(|| next.next().unwrap_or(Guid::NIL))
        .context("giving the new disk its own GUIDs")
}
