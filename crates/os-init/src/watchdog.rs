//! The hardware watchdog on a trial boot. GRUB marks a trial with
//! `bi.trial=1`; os-init then starts the machine's watchdog (the drivers
//! are in the initramfs's load list) with
//! [`TRIAL_TIMEOUT_SEC`](boot_contract::watchdog::TRIAL_TIMEOUT_SEC)
//! before it does anything that could hang, stops it while the persistent
//! partition is checked and set up (an `e2fsck` of a large filesystem may
//! take longer than any timeout, and must not be cut off), starts it again
//! afterwards, and closes it without the "magic close" character just
//! before it executes the root's init, so the device keeps counting. systemd opens it next
//! (`RuntimeWatchdogSec=`, a drop-in build-image writes) and pings it from
//! then on; an init that hangs before that, or a kernel that hangs, resets
//! the machine, and GRUB (which cleared the trial before booting it) boots
//! the default slot. A machine without a watchdog boots as before.

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;

use crate::{Context, Error};
use rustix::ioctl::{opcode, Opcode, Updater};

/// `WDIOC_SETTIMEOUT`, `_IOWR('W', 6, int)` in `<linux/watchdog.h>`.
const WDIOC_SETTIMEOUT: Opcode = opcode::read_write::<c_int>(b'W', 6);

/// An open, running watchdog. Dropping it closes the device without
/// stopping it.
pub struct Armed {
    file: File,
    pub timeout: u32,
}

/// Starts the watchdog at `dev` with `timeout` seconds (the driver may
/// round it; the value it took is returned). `Ok(None)`: the machine has
/// no watchdog.
pub fn arm(dev: &str, timeout: u32) -> crate::Result<Option<Armed>> {
    let file = match OpenOptions::new().write(true).open(dev) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::msg(format!("opening {dev}: {e}"))),
    };
    let mut t = c_int::try_from(timeout)
        .map_err(|_| Error::msg(format!("timeout {timeout} s too large")))?;
    set_timeout(&file, &mut t).with_context(|| format!("setting the timeout of {dev}"))?;
    let mut armed = Armed {
        file,
        timeout: u32::try_from(t).unwrap_or(timeout),
    };
    armed.ping().with_context(|| format!("pinging {dev}"))?;
    Ok(Some(armed))
}

#[allow(unsafe_code)]
fn set_timeout(file: &File, t: &mut c_int) -> rustix::io::Result<()> {
    // SAFETY: WDIOC_SETTIMEOUT reads an int (the timeout in seconds) and
    // writes back the one the driver set; `t` is a valid int that outlives
    // the call.
    unsafe { rustix::ioctl::ioctl(file.as_fd(), Updater::<WDIOC_SETTIMEOUT, c_int>::new(t)) }
}

impl Armed {
    /// Restarts the countdown. Any byte but `V` pings; `V` would allow the
    /// close to stop the watchdog.
    pub fn ping(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"\0")
    }

    /// Stops the watchdog ("magic close": `V`, then close), for work with
    /// no time bound that must not be cut off by a reset, such as a
    /// filesystem check. A driver that cannot stop (`nowayout`) keeps
    /// counting.
    pub fn disarm(mut self) -> std::io::Result<()> {
        self.file.write_all(b"V")
    }
}
