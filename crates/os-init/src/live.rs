//! Live boot from the ISO (`bi.live=LABEL`): find the ISO 9660 volume with
//! that label on any block device (CD, USB stick, virtual disk), mount it on
//! [`live::MOUNT`], and attach its `rootfs.squashfs` to a loop device for
//! the read-only root.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use boot_contract::live;
use rustix::ioctl::{opcode, IntegerSetter, Ioctl, IoctlOutput, Opcode};

use crate::Result;
use crate::{Context, Error};

/// `LOOP_CTL_GET_FREE` of `<linux/loop.h>`.
const LOOP_CTL_GET_FREE: Opcode = opcode::none(0x4c, 0x82);
/// `LOOP_SET_FD` of `<linux/loop.h>`.
const LOOP_SET_FD: Opcode = opcode::none(0x4c, 0x00);

/// The volume label of an ISO 9660 image whose first bytes from
/// [`live::VOLUME_ID_OFFSET`]` - 40` are `pvd` (at least 72 bytes), or
/// `None` when it has no primary volume descriptor there.
pub fn volume_label(pvd: &[u8]) -> Option<&str> {
    if pvd.len() < 72 || &pvd[..6] != live::PVD_MAGIC {
        return None;
    }
    std::str::from_utf8(&pvd[40..72])
        .ok()
        .map(|s| s.trim_end_matches([' ', '\0']))
}

fn label_of(dev: &Path) -> Option<String> {
    let f = File::open(dev).ok()?;
    let mut buf = [0u8; 72];
    f.read_exact_at(&mut buf, live::VOLUME_ID_OFFSET - 40)
        .ok()?;
    volume_label(&buf).map(str::to_string)
}

/// Block devices carrying the ISO labelled `label`: whole disks first (a
/// stick's hybrid partition table may also list a partition over it).
fn find(label: &str) -> Option<String> {
    let mut found: Vec<(bool, String)> = Vec::new();
    for entry in std::fs::read_dir("/sys/class/block").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let dev = format!("/dev/{name}");
        if label_of(Path::new(&dev)).as_deref() == Some(label) {
            found.push((entry.path().join("partition").exists(), dev));
        }
    }
    found.sort();
    found.into_iter().next().map(|(_, d)| d)
}

/// Waits for the ISO labelled `label`, mounts it on [`live::MOUNT`] and
/// returns the loop device holding its root filesystem.
pub fn attach(label: &str, timeout: Duration) -> Result<String> {
    let start = Instant::now();
    let dev = loop {
        if let Some(d) = find(label) {
            break d;
        }
        if start.elapsed() > timeout {
            return Err(Error::msg(format!(
                "no ISO 9660 volume labelled {label:?} appeared within {} s (is the boot medium \
                 still attached?)",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    crate::say(&format!("live medium {label} is {dev}"));
    crate::mount_fs(
        &dev,
        live::MOUNT,
        "iso9660",
        rustix::mount::MountFlags::RDONLY,
        "",
    )?;
    let image = Path::new(live::MOUNT).join(live::ROOTFS);
    let file =
        File::open(&image).map_err(|e| Error::msg(format!("opening {}: {e}", image.display())))?;
    loop_attach(&file).map_err(|e| {
        Error::msg(format!(
            "attaching {} to a loop device: {e}",
            image.display()
        ))
    })
}

/// `LOOP_CTL_GET_FREE`: no argument, the free loop device's number as
/// the result.
struct GetFree;

// SAFETY: the opcode takes no argument (a null pointer is passed) and
// returns a plain integer.
#[allow(unsafe_code)]
unsafe impl Ioctl for GetFree {
    type Output = c_int;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<c_int> {
        Ok(out)
    }
}

#[allow(unsafe_code)]
fn loop_attach(file: &File) -> Result<String> {
    let ctl = File::open("/dev/loop-control").context("/dev/loop-control")?;
    // SAFETY: see `GetFree`.
    let n = unsafe { rustix::ioctl::ioctl(ctl.as_fd(), GetFree) }.context("LOOP_CTL_GET_FREE")?;
    let path = format!("/dev/loop{n}");
    let start = Instant::now();
    let dev = loop {
        match File::options().read(true).open(&path) {
            Ok(f) => break f,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(Error::msg(format!("{path}: {e}"))),
        }
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    let fd = usize::try_from(fd).map_err(|_| Error::msg(format!("bad descriptor {fd}")))?;
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor as its
    // integer argument; `file` stays open for the call, and the kernel
    // takes its own reference. Opened read-only, the loop device is too.
    unsafe { rustix::ioctl::ioctl(dev.as_fd(), IntegerSetter::<LOOP_SET_FD>::new_usize(fd)) }
        .with_context(|| format!("LOOP_SET_FD on {path}"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_label_of_a_primary_volume_descriptor() {
        let mut pvd = vec![0u8; 72];
        pvd[..6].copy_from_slice(live::PVD_MAGIC);
        pvd[40..72].copy_from_slice(b"DEBIAN_AMD64_1_0                ");
        assert_eq!(volume_label(&pvd), Some("DEBIAN_AMD64_1_0"));
        pvd[1] = b'X';
        assert_eq!(volume_label(&pvd), None);
        assert_eq!(volume_label(&pvd[..40]), None);
    }
}
