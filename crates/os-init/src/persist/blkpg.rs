//! Telling the kernel about one partition with the `BLKPG` ioctl. A table
//! re-read (`BLKRRPART`) is refused while any partition of the disk is in
//! use, and the root slot is; `BLKPG` changes one partition and leaves the
//! others alone.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::os::fd::AsFd;

use rustix::ioctl::{opcode, Opcode, Updater};

/// `_IO(0x12, 105)` in `<linux/fs.h>`.
const BLKPG: Opcode = opcode::none(0x12, 105);
const BLKPG_ADD_PARTITION: c_int = 1;
const BLKPG_RESIZE_PARTITION: c_int = 3;

/// `struct blkpg_partition` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    /// Bytes from the start of the disk.
    start: i64,
    /// Bytes.
    length: i64,
    pno: c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

#[allow(unsafe_code)]
fn blkpg(disk: &File, op: c_int, pno: u32, start: u64, length: u64) -> rustix::io::Result<()> {
    let overflow = rustix::io::Errno::OVERFLOW;
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| overflow)?,
        length: i64::try_from(length).map_err(|_| overflow)?,
        pno: c_int::try_from(pno).map_err(|_| overflow)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG takes a pointer to a `struct blkpg_ioctl_arg`, whose
    // layout `BlkpgIoctlArg` reproduces (repr(C), same field types); its
    // `data` points to `part`, a `struct blkpg_partition` of `datalen`
    // bytes. Both live on this stack frame until the call returns, and the
    // kernel only reads them.
    unsafe { rustix::ioctl::ioctl(disk.as_fd(), Updater::<BLKPG, BlkpgIoctlArg>::new(&mut arg)) }
}

/// Adds partition number `pno` (`start` and `length` in bytes) to the
/// kernel's view of `disk`.
pub fn add_partition(disk: &File, pno: u32, start: u64, length: u64) -> rustix::io::Result<()> {
    blkpg(disk, BLKPG_ADD_PARTITION, pno, start, length)
}

/// Changes the length of partition number `pno` in the kernel's view.
pub fn resize_partition(disk: &File, pno: u32, start: u64, length: u64) -> rustix::io::Result<()> {
    blkpg(disk, BLKPG_RESIZE_PARTITION, pno, start, length)
}
