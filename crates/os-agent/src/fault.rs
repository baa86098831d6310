//! Fault injection for power-cut and failure tests. `OS_AGENT_FAULT=NAME`
//! makes the agent stop dead at the point NAME (exit status 134 at once:
//! no destructors, no unmount);
//! `OS_AGENT_FAULT=NAME:reboot` instead reboots the machine at once
//! through `/proc/sysrq-trigger` (a power cut as far as the disk can tell;
//! for test VMs); `OS_AGENT_FAULT=NAME:error` makes the points checked
//! with [`check`] fail with an error, so the caller's failure handling
//! runs. Points:
//!
//! - `commit-after-primary`: the primary GRUB environment block is
//!   written and fsynced, the backup is not yet.
//! - `install-after-head`: `install` wrote the head of the disk (not LBA
//!   0..33).
//! - `install-after-rootfs`: `install` wrote root_a.
//! - `install-after-backup-gpt`: `install` wrote and fsynced the backup
//!   GPT at the disk's end; the primary and LBA 0 are not written.
//! - `upgrade-mid-stream`: `upgrade` wrote half of the root filesystem to
//!   the passive slot (not synced).
//! - `upgrade-after-stream`: the root filesystem is written, synced and
//!   read back; the kernel and initrd are not on the ESP yet.
//! - `upgrade-before-arm`: the kernel and initrd are on the ESP and the
//!   record in state.json says armed; the boot environment is not
//!   touched yet.
//!
//! A fault can also be planted for a later run, even one after a reboot
//! (the commit of a trial by `health`): the file [`ONCE_FILE`] (on
//! persist) holding `NAME` or `NAME:HOW` acts like the variable, once: it
//! is removed (and the removal synced) before the fault acts. The
//! variable, when set, wins.

use std::io::Write;

use crate::error::{Error, Result};

pub const VAR: &str = "OS_AGENT_FAULT";
pub const COMMIT_AFTER_PRIMARY: &str = "commit-after-primary";
pub const INSTALL_AFTER_HEAD: &str = "install-after-head";
pub const INSTALL_AFTER_ROOTFS: &str = "install-after-rootfs";
pub const INSTALL_AFTER_BACKUP_GPT: &str = "install-after-backup-gpt";
pub const UPGRADE_MID_STREAM: &str = "upgrade-mid-stream";
pub const UPGRADE_AFTER_STREAM: &str = "upgrade-after-stream";
pub const UPGRADE_BEFORE_ARM: &str = "upgrade-before-arm";
/// A fault planted for one later run (see the module's documentation).
pub const ONCE_FILE: &str = "/var/lib/os-agent/fault-once";

/// How `OS_AGENT_FAULT` asks to fail at `name`, if it does.
fn wanted(name: &str) -> Option<String> {
    let parse = |v: &str| -> Option<String> {
        let v = v.trim();
        let (want, how) = v.split_once(':').unwrap_or((v, "exit"));
        (want == name).then(|| how.to_string())
    };
    if let Some(v) = std::env::var_os(VAR) {
        return parse(&v.to_string_lossy());
    }
    let once = std::path::Path::new(ONCE_FILE);
    let how = parse(&std::fs::read_to_string(once).ok()?)?;
    // Used up before it acts: a reboot must not meet it again.
    std::fs::remove_file(once).ok()?;
    if let Some(dir) = once.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Some(how)
}

fn stop(name: &str, how: &str) -> ! {
    let line = format!("os-agent: fault point {name} reached ({how})");
    eprintln!("{line}");
    if how == "reboot" {
        // A service's stderr reaches the console through the journal,
        // which the reboot does not wait for: say it on the console
        // directly and wait until the line is sent.
        if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
            let _ = c.write_all(format!("{line}\n").as_bytes());
            let _ = rustix::termios::tcdrain(&c);
        }
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sysrq-trigger")
            .and_then(|mut f| f.write_all(b"b"));
    }
    std::process::exit(134);
}

/// Stops here when `OS_AGENT_FAULT` names this point.
pub fn point(name: &str) {
    if let Some(how) = wanted(name) {
        stop(name, &how);
    }
}

/// Like [`point`], and `OS_AGENT_FAULT=NAME:error` (or `injected` being
/// `name`, for in-process tests) returns an error here.
pub fn check(name: &str, injected: Option<&str>) -> Result<()> {
    let how = if injected == Some(name) {
        Some("error".to_string())
    } else {
        wanted(name)
    };
    match how.as_deref() {
        None => Ok(()),
        Some("error") => Err(Error::msg(format!("fault point {name}: injected failure"))),
        Some(how) => stop(name, how),
    }
}
