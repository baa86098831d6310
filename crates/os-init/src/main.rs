//! `os-init`: PID 1 of the initramfs build-image writes.
//!
//! 1. mounts `/proc`, `/sys`, `/dev` (devtmpfs) and `/run`;
//! 2. loads the kernel modules listed, in order, in
//!    `/lib/modules/os-init.load` (written by build-image from the modules'
//!    own dependency data);
//! 3. waits for the disk holding the ESP partition GRUB started from
//!    (`bi.esp=PARTUUID`, see [`bootdisk`]) and takes from that disk the
//!    partition whose GPT name the kernel command line gives as
//!    `bi.root=NAME` (e.g. `bi.root=root_a`), at most `bi.timeout=SECONDS`
//!    (default 30); or, for a live boot with `bi.live=LABEL`, for the ISO
//!    9660 volume with that label, which it mounts on `/run/os/live` and
//!    whose `rootfs.squashfs` it attaches to a loop device (see [`live`]);
//! 4. mounts it read-only as squashfs, puts a tmpfs overlay on top, moves
//!    `/dev`, `/proc`, `/sys` and `/run` into it, deletes the initramfs's
//!    own files (which would otherwise hold their RAM for the life of the
//!    system; see [`free_initramfs`]) and switches root to it;
//! 5. sets up the persistent partition (see [`persist`]): creates or grows
//!    `persist` on the boot disk (on its first boot giving the disk its own
//!    GUIDs and ESP serial), formats it with the root's own
//!    mkfs.ext4 the first time (never a partition that holds data), checks
//!    it with the root's `e2fsck -p`, mounts it on `/run/os/persist`,
//!    writes the kept machine-id to `/etc/machine-id` and bind-mounts the
//!    persistent paths; `bi.persist=off` or `bi.slot=live` skips this. A
//!    `persist` that cannot be used is replaced by a tmpfs for the boot
//!    (degraded, reported, never a reboot);
//! 6. records the boot disk for os-agent ([`boot_contract::boot_disk`]) and
//!    executes `/sbin/init` of the new root (`bi.init=PATH` overrides).
//!
//! On a trial boot (`bi.trial=1`, added by GRUB) it starts the hardware
//! watchdog right after loading the modules (see [`watchdog`]).
//!
//! On any failure, and on a panic of its own, it prints the cause on the
//! console and reboots after a few seconds, so the boot loader's try-once
//! logic can fall back to the other slot. `OS_INIT_FAULT=panic` on the
//! kernel command line (the kernel hands it to init as an environment
//! variable) makes it panic on purpose, for tests of that path.

use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use rustix::mount::{mount, mount_move, MountFlags};

mod bootdisk;
mod live;
mod persist;
mod watchdog;

use device_error::{Context, Error, Result};

const LOAD_LIST: &str = "/lib/modules/os-init.load";
const DEFAULT_DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

fn say(msg: &str) {
    println!("os-init: {msg}");
}

fn mount_fs(src: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    let data = CString::new(data)
        .map_err(|_| Error::msg(format!("mount options for {target} contain NUL")))?;
    mount(src, target, fstype, flags, Some(data.as_c_str()))
        .with_context(|| format!("mounting {fstype} {src} on {target}"))
}

fn cmdline() -> Result<String> {
    fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")
}

/// The value of `key=` on the kernel command line.
fn param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn load_modules() -> Result<()> {
    let list = match fs::read_to_string(LOAD_LIST) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::msg(format!("reading {LOAD_LIST}: {e}"))),
    };
    let empty = CString::default();
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = fs::File::open(path).with_context(|| format!("opening module {path}"))?;
        match rustix::system::finit_module(&file, &empty, 0) {
            Ok(()) => {}
            Err(e) => match module_refusal(e) {
                Refusal::Harmless => {}
                Refusal::NotForThisMachine => {
                    eprintln!("os-init: {path}: not for this machine ({e}), skipped")
                }
                Refusal::Fatal => return Err(Error::msg(format!("loading module {path}: {e}"))),
            },
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Already loaded (built in, or pulled in earlier).
    Harmless,
    /// The module's hardware or CPU feature is absent: `crc32c-intel`
    /// on a CPU without SSE4.2, a driver for a missing controller. The
    /// list holds every driver the image may need, so this is expected.
    NotForThisMachine,
    Fatal,
}

fn module_refusal(e: rustix::io::Errno) -> Refusal {
    use rustix::io::Errno;
    match e {
        Errno::EXIST => Refusal::Harmless,
        Errno::NODEV | Errno::NXIO => Refusal::NotForThisMachine,
        _ => Refusal::Fatal,
    }
}

fn boot() -> Result<std::convert::Infallible> {
    let none = MountFlags::empty();
    let quiet = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs("proc", "/proc", "proc", quiet, "")?;
    mount_fs("sysfs", "/sys", "sysfs", quiet, "")?;
    if !Path::new("/dev/null").exists() {
        mount_fs(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags::NOSUID,
            "mode=0755",
        )?;
    }
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=0755",
    )?;

    let cmd = cmdline()?;
    if std::env::var("OS_INIT_FAULT").as_deref() == Ok("panic") {
        panic!("OS_INIT_FAULT=panic on the kernel command line");
    }
    load_modules()?;
    let mut watchdog = arm_watchdog(&cmd);
    let timeout = match param(&cmd, "bi.timeout") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| Error::msg(format!("bi.timeout={t}: expected whole seconds")))?,
        ),
        None => DEFAULT_DEVICE_TIMEOUT,
    };
    let (dev, disk) = match param(&cmd, boot_contract::live::CMDLINE_LABEL) {
        Some(label) => (live::attach(label, timeout)?, None),
        None => {
            let label = param(&cmd, "bi.root")
                .context("no bi.root=PARTITION-NAME or bi.live=LABEL on the kernel command line")?;
            let esp = bootdisk::esp_uuid(&cmd)?;
            let (disk, slots) = bootdisk::find(esp, timeout)?;
            say(&format!(
                "boot disk {}: it holds the ESP partition {esp} GRUB started from",
                disk.dev()
            ));
            let dev = bootdisk::root_partition(&disk, &slots, label, timeout)?;
            say(&format!("root {label} is {dev}"));
            (dev, Some((disk, slots)))
        }
    };

    mount_fs(&dev, "/run/os/lower", "squashfs", MountFlags::RDONLY, "")?;
    mount_fs("tmpfs", "/run/os/upper", "tmpfs", none, "mode=0755")?;
    for d in ["/run/os/upper/data", "/run/os/upper/work"] {
        fs::create_dir_all(d).with_context(|| format!("creating {d}"))?;
    }
    mount_fs(
        "overlay",
        "/sysroot",
        "overlay",
        none,
        "lowerdir=/run/os/lower,upperdir=/run/os/upper/data,workdir=/run/os/upper/work",
    )?;
    for d in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("/sysroot{d}");
        fs::create_dir_all(&target).with_context(|| format!("creating {target}"))?;
        mount_move(d, &target).with_context(|| format!("moving {d} to {target}"))?;
    }
    free_initramfs();
    rustix::process::chdir("/sysroot").context("entering /sysroot")?;
    mount_move(".", "/").context("moving the new root to /")?;
    rustix::process::chroot(".").context("chroot into the new root")?;
    rustix::process::chdir("/").context("entering /")?;

    // Checking and setting up persist has no time bound: no watchdog then.
    if let Some(w) = watchdog.take() {
        match w.disarm() {
            Ok(()) => say("trial boot: watchdog paused while persist is set up"),
            Err(e) => say(&format!("pausing the watchdog: {e}")),
        }
        setup_disk(&cmd, disk.as_ref())?;
        // A full timeout from here for the init to take the watchdog over.
        watchdog = arm_watchdog(&cmd);
    } else {
        setup_disk(&cmd, disk.as_ref())?;
    }

    let init = param(&cmd, "bi.init").unwrap_or("/sbin/init");
    say(&format!("switching to {init}"));
    // Closed without the magic character when the init is executed.
    let _running = watchdog;
    let err = std::process::Command::new(init).arg0(init).exec();
    Err(Error::msg(format!("executing {init}: {err}")))
}

/// Sets up persist on the boot disk (none on a live boot: all in RAM) and
/// records the disk for os-agent. A record that cannot be made is
/// reported; os-agent then refuses to touch any ESP.
fn setup_disk(
    cmd: &str,
    disk: Option<&(persist::disk::Disk, boot_contract::boot_disk::Slots)>,
) -> Result<()> {
    let Some((disk, slots)) = disk else {
        return persist::setup(cmd, None);
    };
    persist::setup(cmd, Some(disk))?;
    let path = Path::new(boot_contract::boot_disk::RECORD);
    match bootdisk::record(disk, slots).and_then(|r| bootdisk::write_record(path, &r)) {
        Ok(()) => {}
        Err(e) => say(&format!(
            "warning: no record of the boot disk for os-agent: {e}"
        )),
    }
    Ok(())
}

/// Starts the hardware watchdog when this is a trial boot; reports and
/// goes on without one otherwise (no watchdog, or one that cannot be set).
fn arm_watchdog(cmd: &str) -> Option<watchdog::Armed> {
    use boot_contract::watchdog::{DEVICE, TRIAL_TIMEOUT_SEC};
    if param(cmd, boot_contract::boot_env::CMDLINE_TRIAL) != Some("1") {
        return None;
    }
    if param(cmd, boot_contract::watchdog::CMDLINE_OFF) == Some("off") {
        say("trial boot: the watchdog is off (bi.watchdog=off): a hang is not reset");
        return None;
    }
    match watchdog::arm(DEVICE, TRIAL_TIMEOUT_SEC) {
        Ok(Some(w)) => {
            say(&format!(
                "trial boot: watchdog {DEVICE} armed ({} s): a hang resets the machine",
                w.timeout
            ));
            Some(w)
        }
        Ok(None) => {
            say("trial boot: no hardware watchdog on this machine");
            None
        }
        Err(e) => {
            say(&format!("trial boot: the watchdog could not be armed: {e}"));
            None
        }
    }
}

/// Deletes the initramfs's files, as `switch_root` does: the root is a
/// RAM filesystem, and what is left on it after the switch stays in
/// memory, unreachable, until the machine stops. Only files on the root's
/// own filesystem go (`/sysroot` and anything else mounted are kept); a
/// root that is not RAM-backed is left alone. Best effort: a file that
/// cannot be deleted costs memory, not the boot.
fn free_initramfs() {
    use std::os::unix::fs::MetadataExt;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    let ram = rustix::fs::statfs("/")
        .map(|s| matches!(s.f_type as u64, RAMFS_MAGIC | TMPFS_MAGIC))
        .unwrap_or(false);
    if !ram {
        return;
    }
    let Ok(root) = fs::symlink_metadata("/") else {
        return;
    };
    let freed = remove_tree(Path::new("/"), &|m| m.dev() == root.dev());
    say(&format!(
        "freed the initramfs: {} files, {} KiB",
        freed.files,
        freed.bytes / 1024
    ));
}

/// What [`remove_tree`] deleted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Freed {
    files: u64,
    bytes: u64,
}

/// Deletes what is under `dir` (not `dir` itself), descending only into
/// directories for which `ours` holds and deleting only entries for which
/// it holds; errors are skipped.
fn remove_tree(dir: &Path, ours: &dyn Fn(&fs::Metadata) -> bool) -> Freed {
    let mut freed = Freed::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return freed;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if !ours(&m) {
            continue;
        }
        if m.is_dir() {
            let inner = remove_tree(&p, ours);
            freed.files += inner.files;
            freed.bytes += inner.bytes;
            let _ = fs::remove_dir(&p);
        } else if fs::remove_file(&p).is_ok() {
            freed.files += 1;
            freed.bytes += m.len();
        }
    }
    freed
}

/// Reports a fatal failure and reboots: as PID 1, exiting would panic the
/// kernel, and only a reboot lets GRUB fall back to the default slot.
/// Outside PID 1 (a mistaken run on a host) it exits instead.
fn fail(what: &str) -> ! {
    eprintln!("os-init: {what}");
    if !rustix::process::getpid().is_init() {
        eprintln!("os-init: not PID 1: exiting instead of rebooting");
        std::process::exit(1);
    }
    eprintln!("os-init: rebooting in 5 s");
    std::thread::sleep(Duration::from_secs(5));
    rustix::fs::sync();
    // reboot(2) does not return when it succeeds. If it fails, PID 1
    // exiting makes the kernel panic, and panic= on the command line
    // reboots from there.
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Restart) {
        eprintln!("os-init: reboot: {e}; exiting (the kernel panics and reboots)");
    }
    std::process::exit(1)
}

fn main() {
    std::panic::set_hook(Box::new(|info| fail(&format!("panic: {info}"))));
    let e = match boot() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    fail(&format!("error: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_tree_deletes_only_what_is_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("lib/modules/6.1")).unwrap();
        fs::write(root.join("init"), b"12345").unwrap();
        fs::write(root.join("lib/modules/6.1/a.ko"), b"abc").unwrap();
        std::os::unix::fs::symlink("/init", root.join("linuxrc")).unwrap();
        // Stands in for a mount point (another filesystem).
        fs::create_dir_all(root.join("sysroot/usr")).unwrap();
        fs::write(root.join("sysroot/usr/keep"), b"x").unwrap();
        let mount = root.join("sysroot");
        let freed = remove_tree(root, &|m| {
            use std::os::unix::fs::MetadataExt;
            let sysroot = fs::symlink_metadata(&mount).unwrap();
            !(m.dev() == sysroot.dev() && m.ino() == sysroot.ino())
        });
        assert_eq!(freed.files, 3);
        assert_eq!(freed.bytes, 5 + 3 + "/init".len() as u64);
        let left: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["sysroot"]);
        assert!(root.join("sysroot/usr/keep").is_file());
    }

    #[test]
    fn kernel_parameters() {
        let c = "BOOT_IMAGE=/vmlinuz bi.root=root_b quiet bi.rootx=no bi.init=/bin/sh";
        assert_eq!(param(c, "bi.root"), Some("root_b"));
        assert_eq!(param(c, "bi.init"), Some("/bin/sh"));
        assert_eq!(param(c, "root"), None);
    }

    #[test]
    fn absent_hardware_does_not_stop_the_boot() {
        use rustix::io::Errno;
        assert_eq!(module_refusal(Errno::EXIST), Refusal::Harmless);
        assert_eq!(module_refusal(Errno::NODEV), Refusal::NotForThisMachine);
        assert_eq!(module_refusal(Errno::NOEXEC), Refusal::Fatal);
        assert_eq!(module_refusal(Errno::NOKEY), Refusal::Fatal);
    }
}
