//! `os-agent reset [--keep-config]`: a factory reset of the persistent
//! partition. The agent only asks for it: it writes the marker
//! [`persist::RESET_MARKER`] at the root of `persist` (temporary file,
//! fsync, rename); os-init acts on it at the next boot before anything
//! uses `persist`, and removes it last, so a power cut at any point ends
//! in either no reset or a complete one. The slots are left as they are.

use boot_contract::persist;

use crate::error::Result;
use crate::fsutil::{write_atomic, Owner, Root};
use crate::{bail, install, system};

pub struct Options {
    pub keep_config: bool,
    pub reboot: bool,
}

pub fn run(root: &Root, o: &Options) -> Result<i32> {
    let ps = system::persist_status(root);
    if ps.state.as_deref() != Some(persist::STATE_OK) {
        bail!(
            "persist is not in use this boot ({}{}): there is nothing to reset",
            ps.state.as_deref().unwrap_or("no record"),
            ps.reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    let what = if o.keep_config {
        persist::RESET_KEEP_CONFIG
    } else {
        persist::RESET_ALL
    };
    let marker = root.join(persist::MOUNT).join(persist::RESET_MARKER);
    write_atomic(
        &marker,
        format!("{what}\n").as_bytes(),
        Some(Owner::root(0o600)),
    )?;
    println!(
        "os-agent: persist will be emptied at the next boot{}{}",
        if o.keep_config {
            " (keeping the device's config, registry credentials and SSH host keys)"
        } else {
            ""
        },
        if o.reboot { ": rebooting" } else { "" }
    );
    if o.reboot {
        install::reboot()?;
    }
    Ok(0)
}
