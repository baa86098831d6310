//! The persistent partition: found or created on the disk of the root slot,
//! grown to the disk's end, formatted with the root's own mkfs.ext4 (only
//! when created this boot, or blank: see [`probe`]), checked with the
//! root's `e2fsck -p`, mounted at [`persist::MOUNT`] and bind-mounted over
//! [`persist::PATHS`]; the machine-id lives on it. When it cannot be used,
//! a tmpfs stands in for it for the boot (degraded), and
//! [`persist::STATUS_FILE`] tells os-agent which.
//!
//! This runs after os-init has switched into the new root (the overlay
//! over the slot's squashfs, with `/dev`, `/proc`, `/sys` and `/run` moved
//! in), so the root's tools run directly and every path is the one the
//! booted system sees.

mod blkpg;
pub(crate) mod disk;
mod fs;
mod probe;
mod reset;

use std::fs::{self as stdfs, OpenOptions};
use std::io::Write;
use std::path::Path;

use boot_contract::persist;
use rustix::mount::{mount, mount_bind, MountFlags};

use crate::{param, say, Result};
use crate::{Context, Error};
use disk::{Change, Disk};

/// Why persist is off for this boot, if it is.
fn disabled(cmdline: &str) -> Option<&'static str> {
    if param(cmdline, "bi.persist") == Some("off") {
        Some("bi.persist=off")
    } else if param(cmdline, "bi.slot") == Some("live") {
        Some("live system, bi.slot=live")
    } else {
        None
    }
}

/// Fills `buf` from the kernel's random pool (blocks until it is ready).
pub fn random(buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        done += rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty())
            .context("getrandom")?;
    }
    Ok(())
}

/// Sets up persist on `disk`, the disk the node booted from (None: a live
/// boot, persist off). A `persist`
/// that should be there but cannot be used never stops the boot (a reboot
/// would only meet it again): a tmpfs takes its place, the console and
/// [`persist::STATUS_FILE`] say why, and the partition is left as it is
/// for repair.
pub fn setup(cmdline: &str, disk: Option<&Disk>) -> Result<()> {
    let why = disabled(cmdline).or(disk.is_none().then_some("live system, no boot disk"));
    if let Some(why) = why {
        say(&format!("persist off ({why}): all changes stay in memory"));
        return record(persist::STATE_OFF, why);
    }
    let Some(disk) = disk else {
        return Ok(());
    };
    match from_disk(disk) {
        Ok(true) => record(persist::STATE_OK, ""),
        Ok(false) => {
            let why = format!(
                "no room for persist on {} (less than {} MiB after the last partition)",
                disk.dev(),
                disk::MIN_SIZE >> 20
            );
            say(&format!("{why}: all changes stay in memory"));
            record(persist::STATE_OFF, &why)
        }
        Err(e) => degraded(&e.to_string()),
    }
}

/// Persist from its partition: found or created, checked, mounted, the
/// machine-id and the bind mounts in place: `Ok(true)`; `Ok(false)` when
/// the disk has no room for it.
fn from_disk(disk: &Disk) -> Result<bool> {
    let Some(part) = disk::ensure_persist(disk)? else {
        return Ok(false);
    };
    let fresh = part.change == Change::Created
        || (fs::superblock(&part.dev)?.is_none() && unformatted(&part.dev)?);
    if fresh {
        if part.change != Change::Created {
            say(&format!(
                "{} is the image's unformatted persist: wiping and formatting it",
                part.dev
            ));
        }
        // Blank, so that a power cut before mkfs finishes leaves a
        // partition the next boot formats again.
        let mut f = OpenOptions::new()
            .write(true)
            .open(&part.dev)
            .map_err(|e| Error::msg(format!("opening {}: {e}", part.dev)))?;
        probe::wipe(&mut f, part.bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::msg(format!("wiping the new partition {}: {e}", part.dev)))?;
        fs::mkfs(&part.dev, persist::LABEL)?;
    } else if fs::superblock(&part.dev)?.is_none() {
        let mut f = stdfs::File::open(&part.dev)
            .map_err(|e| Error::msg(format!("opening {}: {e}", part.dev)))?;
        match probe::not_blank(&mut f, part.bytes)
            .map_err(|e| Error::msg(format!("reading {}: {e}", part.dev)))?
        {
            None => {
                say(&format!(
                    "{} has no filesystem and is blank: formatting it",
                    part.dev
                ));
                fs::mkfs(&part.dev, persist::LABEL)?;
            }
            Some(why) => {
                return Err(Error::msg(format!(
                    "{} has no ext4 superblock, but holds data ({why}): it is not \
                     formatted; repair it (e2fsck -b BLOCK -B SIZE {}) or, to start \
                     anew with an empty persist, zero it (blkdiscard -z {}) and reboot",
                    part.dev, part.dev, part.dev
                )))
            }
        }
    } else {
        fs::check(&part.dev)?;
    }
    stdfs::create_dir_all(persist::MOUNT)
        .map_err(|e| Error::msg(format!("creating {}: {e}", persist::MOUNT)))?;
    mount(
        part.dev.as_str(),
        persist::MOUNT,
        "ext4",
        MountFlags::empty(),
        None,
    )
    .map_err(|e| {
        Error::msg(format!(
            "mounting ext4 {} on {}: {e}",
            part.dev,
            persist::MOUNT
        ))
    })?;
    say(&format!("mounted {} on {}", part.dev, persist::MOUNT));

    // Grow when the entry grew now, or when a grow was interrupted before
    // (the filesystem is well short of its partition). A failed grow
    // leaves a smaller but healthy filesystem: reported, not fatal.
    let fs_bytes = fs::superblock(&part.dev)?.map_or(0, |s| s.bytes);
    let grown = matches!(part.change, Change::Grown { .. });
    if grown || fs_bytes + (16 << 20) < part.bytes {
        match fs::grow(&part.dev) {
            Ok(()) => {
                let now = fs::superblock(&part.dev)?.map_or(0, |s| s.bytes);
                say(&format!(
                    "resized the persist filesystem from {} MiB to {} MiB",
                    fs_bytes >> 20,
                    now >> 20
                ));
            }
            Err(e) => say(&format!(
                "warning: growing persist failed, it stays at {} MiB: {e}",
                fs_bytes >> 20
            )),
        }
    }
    match reset::apply(Path::new(persist::MOUNT)) {
        Ok(Some(what)) => say(&format!("persist reset ({what}) as os-agent reset asked")),
        Ok(None) => {}
        Err(e) => {
            release();
            return Err(Error::msg(format!(
                "the requested reset of persist failed: {e}"
            )));
        }
    }
    let rest = machine_id().and_then(|_| bind_paths());
    if let Err(e) = rest {
        release();
        return Err(e);
    }
    Ok(true)
}

/// Whether `dev` starts with [`persist::FRESH_MARKER`]: the unformatted
/// `persist` an image carries.
fn unformatted(dev: &str) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 32];
    let mut f = stdfs::File::open(dev).with_context(|| format!("opening {dev}"))?;
    match f.read_exact(&mut head) {
        Ok(()) => Ok(&head == persist::FRESH_MARKER),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::msg(format!("reading {dev}: {e}"))),
    }
}

/// Persist in RAM for this boot, said loudly, after `why` kept the
/// partition from being used.
fn degraded(why: &str) -> Result<()> {
    release();
    for line in why.lines() {
        eprintln!("os-init: PERSIST DEGRADED: {line}");
    }
    eprintln!(
        "os-init: PERSIST DEGRADED: this boot keeps {} in RAM; nothing written there survives \
         a reboot, and the partition is left untouched for repair",
        persist::MOUNT
    );
    let reason = why.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    record(persist::STATE_DEGRADED, &reason)?;
    stdfs::create_dir_all(persist::MOUNT)
        .map_err(|e| Error::msg(format!("creating {}: {e}", persist::MOUNT)))?;
    mount(
        "tmpfs",
        persist::MOUNT,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=0755"),
    )
    .map_err(|e| Error::msg(format!("mounting a tmpfs on {}: {e}", persist::MOUNT)))?;
    machine_id()?;
    bind_paths()
}

/// Undoes the mounts [`from_disk`] may have made (best effort).
fn release() {
    use rustix::mount::{unmount, UnmountFlags};
    for p in persist::PATHS.iter().rev() {
        let _ = unmount(p.path, UnmountFlags::DETACH);
    }
    let _ = unmount(persist::MOUNT, UnmountFlags::DETACH);
}

/// Writes [`persist::STATUS_FILE`].
fn record(state: &str, reason: &str) -> Result<()> {
    let path = Path::new(persist::STATUS_FILE);
    if let Some(dir) = path.parent() {
        stdfs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = format!("state={state}\n");
    if !reason.is_empty() {
        text.push_str(&format!("reason={}\n", reason.replace('\n', " ")));
    }
    stdfs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The machine-id kept on persist (made on first boot), written to
/// /etc/machine-id.
fn machine_id() -> Result<()> {
    let path = format!("{}/{}", persist::MOUNT, persist::MACHINE_ID);
    let valid =
        |s: &str| s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (id, origin) = match stdfs::read_to_string(&path) {
        Ok(s) if valid(s.trim_end()) => (s.trim_end().to_string(), "kept on persist"),
        other => {
            if let Ok(bad) = other {
                say(&format!(
                    "{path} holds {:?}, not 32 hex digits: making a new one",
                    bad.trim_end()
                ));
            }
            let mut b = [0u8; 16];
            random(&mut b)?;
            let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
            write_durably(Path::new(&path), format!("{id}\n").as_bytes())?;
            (id, "new")
        }
    };
    stdfs::write("/etc/machine-id", format!("{id}\n")).context("writing /etc/machine-id")?;
    say(&format!("machine-id {id} ({origin})"));
    Ok(())
}

/// Writes `path` through a temporary file, synced, renamed into place.
fn write_durably(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("new");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    stdfs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        stdfs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Binds `MOUNT/state/PATH` over each of [`persist::PATHS`], creating the
/// persistent directory first if needed (seeded from the image for paths
/// that ask for it; copied under a temporary name and renamed, so an
/// interrupted copy is redone).
fn bind_paths() -> Result<()> {
    let state = format!("{}/{}", persist::MOUNT, persist::STATE_DIR);
    for p in persist::PATHS {
        let image = Path::new(p.path);
        let keep = format!("{state}{}", p.path);
        let keep = Path::new(&keep);
        if !keep.exists() {
            let parent = keep.parent().context("state path without a parent")?;
            stdfs::create_dir_all(parent)
                .map_err(|e| Error::msg(format!("creating {}: {e}", parent.display())))?;
            if p.seed && image.is_dir() {
                let tmp = keep.with_extension("seeding");
                if tmp.exists() {
                    stdfs::remove_dir_all(&tmp)
                        .with_context(|| format!("removing {}", tmp.display()))?;
                }
                fs::copy_tree(image, &tmp)?;
                stdfs::rename(&tmp, keep)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), keep.display()))?;
                say(&format!("seeded {} from the image", keep.display()));
            } else {
                fs::make_dir_like(keep, image)?;
            }
        }
        if !image.is_dir() {
            stdfs::create_dir_all(image)
                .map_err(|e| Error::msg(format!("creating {}: {e}", image.display())))?;
        }
        mount_bind(keep, image)
            .map_err(|e| Error::msg(format!("binding {} over {}: {e}", keep.display(), p.path)))?;
    }
    let list: Vec<&str> = persist::PATHS.iter().map(|p| p.path).collect();
    say(&format!("persistent: {} (from {state})", list.join(" ")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_images_unformatted_persist_is_told_by_its_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("p4");
        let path = p.to_str().unwrap();
        let mut data = vec![0u8; 4096];
        stdfs::write(&p, &data).unwrap();
        assert!(!unformatted(path).unwrap(), "zeros are not the marker");
        data[..32].copy_from_slice(persist::FRESH_MARKER);
        stdfs::write(&p, &data).unwrap();
        assert!(unformatted(path).unwrap());
        data[5] ^= 1;
        stdfs::write(&p, &data).unwrap();
        assert!(!unformatted(path).unwrap());
        stdfs::write(&p, b"short").unwrap();
        assert!(!unformatted(path).unwrap());
    }

    #[test]
    fn persist_is_off_for_live_systems_and_on_request() {
        assert_eq!(
            disabled("bi.root=root_a bi.persist=off"),
            Some("bi.persist=off")
        );
        assert!(disabled("bi.root=live bi.slot=live").is_some());
        assert_eq!(disabled("bi.root=root_b bi.slot=b bi.persist=on"), None);
    }

    #[test]
    fn reads_the_size_of_an_ext4_superblock_mkfs_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("fs.img");
        stdfs::File::create(&img)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        let path = img.to_str().unwrap();
        assert!(
            fs::superblock(path).unwrap().is_none(),
            "zeros are no filesystem"
        );
        let mkfs = ["/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or("mkfs.ext4");
        let out = std::process::Command::new(mkfs)
            .args(["-q", "-F", "-L", "persist", path])
            .output()
            .expect("mkfs.ext4 not found: apt-get install e2fsprogs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::superblock(path).unwrap().unwrap().bytes, 40 << 20);
    }
}
