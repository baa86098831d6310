//! The EFI system partition of the A/B disk: the distribution's signed
//! GRUB (behind shim when the image has it), `bootloader/grub.cfg`, the two
//! GRUB environment blocks and each slot's kernel and initrd.

use anyhow::{bail, Result};
use boot_contract::grubenv::GrubEnv;

use crate::tree::edit::Editor;
use crate::tree::{ContentStore, FsTree};

/// The try-once boot menu, with `@NAME@` and `@CMDLINE@` to fill in.
pub const GRUB_CFG_TEMPLATE: &str = include_str!("../../bootloader/grub.cfg");

/// Where the signed GRUBs look for their config: Debian's and Ubuntu's read
/// `$prefix/grub.cfg` with the prefix baked in as `/EFI/<vendor>`, on the
/// device they were loaded from; `/EFI/BOOT` covers the others.
pub const GRUB_CFG_PATHS: [&str; 3] = [
    "EFI/debian/grub.cfg",
    "EFI/ubuntu/grub.cfg",
    "EFI/BOOT/grub.cfg",
];

/// Where the signed boot files are in an image, per architecture.
pub struct EfiFiles {
    /// `BOOTX64.EFI` / `BOOTAA64.EFI`.
    pub removable_name: &'static str,
    /// grub's file name next to shim (`grubx64.efi`).
    pub grub_name: &'static str,
    pub grub: &'static str,
    pub shim: &'static str,
    pub mok_manager: &'static str,
    pub mok_name: &'static str,
}

pub fn efi_files(arch: &str) -> Result<EfiFiles> {
    Ok(match arch {
        "amd64" => EfiFiles {
            removable_name: "BOOTX64.EFI",
            grub_name: "grubx64.efi",
            grub: "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
            shim: "usr/lib/shim/shimx64.efi.signed",
            mok_manager: "usr/lib/shim/mmx64.efi.signed",
            mok_name: "mmx64.efi",
        },
        "arm64" => EfiFiles {
            removable_name: "BOOTAA64.EFI",
            grub_name: "grubaa64.efi",
            grub: "usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",
            shim: "usr/lib/shim/shimaa64.efi.signed",
            mok_manager: "usr/lib/shim/mmaa64.efi.signed",
            mok_name: "mmaa64.efi",
        },
        other => bail!("no UEFI boot files known for architecture {other}"),
    })
}

/// `bootloader/grub.cfg` for an image.
pub fn grub_cfg(name: &str, cmdline: &str) -> String {
    GRUB_CFG_TEMPLATE
        .replace("@NAME@", name)
        .replace("@CMDLINE@", cmdline)
}

/// The environment block of a fresh disk: slot a, no trial.
pub fn initial_env() -> Result<Vec<u8>> {
    let mut env = GrubEnv::new();
    env.set("default_slot", "a")?;
    env.set("trial_slot", "")?;
    Ok(env.encode()?.to_vec())
}

/// The signed boot chain and its grub.cfg: what both the A/B disk's ESP
/// and the live ISO's El Torito EFI image hold.
pub struct BootChain<'a> {
    /// The signed GRUB image.
    pub grub: &'a [u8],
    /// shim and MokManager, when the image has them.
    pub shim: Option<(&'a [u8], Option<&'a [u8]>)>,
    pub files: &'a EfiFiles,
    pub grub_cfg: &'a str,
}

/// What goes on the ESP.
pub struct EspContents<'a> {
    pub chain: BootChain<'a>,
    /// Kernel and initrd per slot (`a`, `b`).
    pub slots: Vec<(&'a str, &'a [u8], &'a [u8])>,
}

/// Writes the boot chain: shim as the removable-media loader with GRUB
/// and MokManager next to it (or GRUB itself without shim), and grub.cfg
/// where each vendor's GRUB looks for it.
fn write_chain(ed: &mut Editor<'_>, c: &BootChain<'_>) -> Result<()> {
    match c.shim {
        Some((shim, mm)) => {
            ed.write(&format!("EFI/BOOT/{}", c.files.removable_name), shim, 0o644)?;
            ed.write(&format!("EFI/BOOT/{}", c.files.grub_name), c.grub, 0o644)?;
            if let Some(mm) = mm {
                ed.write(&format!("EFI/BOOT/{}", c.files.mok_name), mm, 0o644)?;
            }
        }
        None => ed.write(
            &format!("EFI/BOOT/{}", c.files.removable_name),
            c.grub,
            0o644,
        )?,
    }
    for path in GRUB_CFG_PATHS {
        ed.write(path, c.grub_cfg.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// The live ISO's El Torito EFI image as a tree for [`crate::fat::write`]
/// (through [`crate::iso::esp_image`]): the boot chain only; the kernel,
/// initrd and menu are on the ISO 9660 side.
pub fn live_tree(c: &BootChain<'_>, store: &mut ContentStore, mtime: i64) -> Result<FsTree> {
    let mut tree = FsTree::new();
    let mut ed = Editor {
        tree: &mut tree,
        store,
        mtime,
    };
    write_chain(&mut ed, c)?;
    Ok(tree)
}

/// The ESP as a tree for [`crate::fat::write`].
pub fn tree(c: &EspContents<'_>, store: &mut ContentStore, mtime: i64) -> Result<FsTree> {
    let mut tree = FsTree::new();
    let mut ed = Editor {
        tree: &mut tree,
        store,
        mtime,
    };
    write_chain(&mut ed, &c.chain)?;
    let env = initial_env()?;
    ed.write("grubenv", &env, 0o644)?;
    ed.write("grubenv.bak", &env, 0o644)?;
    for (slot, kernel, initrd) in &c.slots {
        ed.write(&format!("{slot}/vmlinuz"), kernel, 0o644)?;
        ed.write(&format!("{slot}/initrd"), initrd, 0o644)?;
    }
    Ok(tree)
}
