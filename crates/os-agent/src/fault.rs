//! Fault injection for power-cut tests. `OS_AGENT_FAULT=NAME` makes the
//! agent stop dead at the point NAME (exit status 134 at once: no
//! destructors, no unmount);
//! `OS_AGENT_FAULT=NAME:reboot` instead reboots the machine at once
//! through `/proc/sysrq-trigger` (a power cut as far as the disk can tell;
//! for test VMs). Points:
//!
//! - `commit-after-primary`: the primary GRUB environment block is
//!   written and fsynced, the backup is not yet.

use std::io::Write;

pub const VAR: &str = "OS_AGENT_FAULT";
pub const COMMIT_AFTER_PRIMARY: &str = "commit-after-primary";

/// Stops here when `OS_AGENT_FAULT` names this point.
pub fn point(name: &str) {
    let Some(v) = std::env::var_os(VAR) else {
        return;
    };
    let v = v.to_string_lossy();
    let (want, how) = v.split_once(':').unwrap_or((&v, "exit"));
    if want != name {
        return;
    }
    eprintln!("os-agent: fault point {name} reached ({how})");
    if how == "reboot" {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sysrq-trigger")
            .and_then(|mut f| f.write_all(b"b"));
    }
    std::process::exit(134);
}
