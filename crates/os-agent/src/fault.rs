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

use std::io::Write;

use crate::error::{Error, Result};

pub const VAR: &str = "OS_AGENT_FAULT";
pub const COMMIT_AFTER_PRIMARY: &str = "commit-after-primary";
pub const INSTALL_AFTER_HEAD: &str = "install-after-head";
pub const INSTALL_AFTER_ROOTFS: &str = "install-after-rootfs";
pub const INSTALL_AFTER_BACKUP_GPT: &str = "install-after-backup-gpt";

/// How `OS_AGENT_FAULT` asks to fail at `name`, if it does.
fn wanted(name: &str) -> Option<String> {
    let v = std::env::var_os(VAR)?;
    let v = v.to_string_lossy();
    let (want, how) = v.split_once(':').unwrap_or((&v, "exit"));
    (want == name).then(|| how.to_string())
}

fn stop(name: &str, how: &str) -> ! {
    eprintln!("os-agent: fault point {name} reached ({how})");
    if how == "reboot" {
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
