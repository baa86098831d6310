//! `os-agent rollback`: go back to the other slot by hand.
//!
//! - On a committed boot: the other slot becomes the default when it holds
//!   a good image (a root filesystem that is not marked bad, and its
//!   kernel and initrd on the ESP); refused otherwise. The running
//!   image's digest is marked bad, so automation does not bring it back.
//! - On a trial boot: the trial is given up (recorded as failed); the
//!   default slot boots next.

use std::io::Read;

use boot_contract::boot_env::SLOTS;

use crate::bootenv::{self, Commit};
use crate::error::Result;
use crate::fsutil::Root;
use crate::upgrade::{record, target, view, EXIT_REFUSED};
use crate::{bail, install, state, system};

pub struct Options {
    pub esp: Option<std::path::PathBuf>,
    pub reboot: bool,
}

/// Why slot `s` cannot boot, if it cannot.
fn unusable(root: &Root, disk: &target::Disk, st: &state::State, s: &str) -> Option<String> {
    if let Some(r) = st.records.slots.get(s) {
        if r.state == record::BAD || r.state == record::WRITING {
            return Some(format!(
                "slot {s} is marked bad{}",
                r.reason
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut magic = [0u8; 4];
    let ok = std::fs::File::open(disk.slot(s))
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok();
    if !ok || &magic != view::SQUASHFS_MAGIC {
        return Some(format!(
            "slot {s} ({}) holds no root filesystem",
            disk.slot(s).display()
        ));
    }
    for f in ["vmlinuz", "initrd"] {
        let p = disk.esp.dir().join(s).join(f);
        if std::fs::metadata(&p).map(|m| m.len() == 0).unwrap_or(true) {
            return Some(format!("{} is missing or empty", p.display()));
        }
    }
    let _ = root;
    None
}

pub fn run(root: &Root, o: &Options) -> Result<i32> {
    let running = match system::running_slot(root)? {
        Some(s) if SLOTS.contains(&s.as_str()) => s,
        other => bail!(
            "rollback needs an A/B boot (bi.slot=a or b), this is {}",
            other.as_deref().unwrap_or("none")
        ),
    };
    let other = target::other(&running);
    let disk = target::locate(root, o.esp.as_deref(), true)?;
    let env = bootenv::read(disk.esp.dir())?;
    let mut st = state::load(root)?;
    let version = system::image_info(root)?
        .version
        .unwrap_or_else(|| "unknown".into());
    let reason = "os-agent rollback";
    if env.default_slot() != Some(running.as_str()) {
        // A trial: give it up; GRUB boots the default next.
        let n = st.boot_count;
        st.records.trial_failed(&running, reason, n);
        st.last_rollback = Some(state::Rollback {
            slot: running.clone(),
            version: version.clone(),
            to: other.to_string(),
            boot_count: n,
            reason: reason.into(),
        });
        state::save(root, &st)?;
        bootenv::end_trial(disk.esp.dir(), &running)?;
        println!(
            "os-agent: the trial of slot {running} ({version}) is given up; slot {other} boots next{}",
            if o.reboot { ": rebooting" } else { "" }
        );
    } else {
        if let Some(why) = unusable(root, &disk, &st, other) {
            println!("os-agent: rollback refused: {why}");
            return Ok(EXIT_REFUSED);
        }
        let other_version = st
            .records
            .slots
            .get(other)
            .and_then(|r| r.version.clone())
            .unwrap_or_else(|| "unknown".into());
        let n = st.boot_count;
        if let Some(d) = st
            .records
            .slots
            .get(&running)
            .and_then(|r| r.digest.clone())
        {
            if st.records.bad(&d).is_none() {
                st.records.bad_digests.push(record::BadDigest {
                    digest: d,
                    version: Some(version.clone()),
                    failures: 1,
                    at: record::now(),
                    reason: reason.into(),
                });
            }
        }
        st.last_rollback = Some(state::Rollback {
            slot: running.clone(),
            version: version.clone(),
            to: other.to_string(),
            boot_count: n,
            reason: reason.into(),
        });
        state::save(root, &st)?;
        match bootenv::commit(disk.esp.dir(), other)? {
            Commit::Committed { .. } | Commit::AlreadyDefault => {}
        }
        println!(
            "os-agent: slot {other} ({other_version}) is now the default{}",
            if o.reboot {
                ": rebooting"
            } else {
                "; reboot to run it"
            }
        );
    }
    drop(disk);
    if o.reboot {
        install::reboot()?;
    }
    Ok(0)
}
