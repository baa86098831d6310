//! The persistent partition: found or created on the disk of the root slot,
//! grown to the disk's end, formatted with the root's own mkfs.ext4,
//! mounted at [`persist::MOUNT`] and bind-mounted over [`persist::PATHS`];
//! the machine-id lives on it.
//!
//! This runs after os-init has switched into the new root (the overlay
//! over the slot's squashfs, with `/dev`, `/proc`, `/sys` and `/run` moved
//! in), so the root's tools run directly and every path is the one the
//! booted system sees.

mod blkpg;
mod disk;
mod fs;

use std::fs::{self as stdfs, OpenOptions};
use std::io::Write;
use std::path::Path;

use boot_contract::persist;
use rustix::mount::{mount, mount_bind, MountFlags};

use crate::{param, say, Result};
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
            .map_err(|e| format!("getrandom: {e}"))?;
    }
    Ok(())
}

/// Sets up persist for a root slot on partition `root_dev`.
pub fn setup(cmdline: &str, root_dev: &str) -> Result<()> {
    if let Some(why) = disabled(cmdline) {
        say(&format!("persist off ({why}): all changes stay in memory"));
        return Ok(());
    }
    let disk = Disk::of_partition(root_dev)?;
    let Some(part) = disk::ensure_persist(&disk)? else {
        say(&format!(
            "no room for persist on {} (less than {} MiB after the last partition): \
             all changes stay in memory",
            disk.dev(),
            disk::MIN_SIZE >> 20
        ));
        return Ok(());
    };
    let sb = fs::superblock(&part.dev)?;
    if part.change == Change::Created || sb.is_none() {
        fs::mkfs(&part.dev, persist::LABEL)?;
    }
    stdfs::create_dir_all(persist::MOUNT)
        .map_err(|e| format!("creating {}: {e}", persist::MOUNT))?;
    mount(
        part.dev.as_str(),
        persist::MOUNT,
        "ext4",
        MountFlags::empty(),
        None,
    )
    .map_err(|e| format!("mounting ext4 {} on {}: {e}", part.dev, persist::MOUNT))?;
    say(&format!("mounted {} on {}", part.dev, persist::MOUNT));

    // Grow when the entry grew now, or when a grow was interrupted before
    // (the filesystem is well short of its partition).
    let fs_bytes = fs::superblock(&part.dev)?.map_or(0, |s| s.bytes);
    let grown = matches!(part.change, Change::Grown { .. });
    if grown || fs_bytes + (16 << 20) < part.bytes {
        fs::grow(&part.dev)?;
        let now = fs::superblock(&part.dev)?.map_or(0, |s| s.bytes);
        say(&format!(
            "resized the persist filesystem from {} MiB to {} MiB",
            fs_bytes >> 20,
            now >> 20
        ));
    }
    machine_id()?;
    bind_paths()
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
    stdfs::write("/etc/machine-id", format!("{id}\n"))
        .map_err(|e| format!("writing /etc/machine-id: {e}"))?;
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
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    stdfs::rename(&tmp, path)
        .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        stdfs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
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
            let parent = keep.parent().ok_or("state path without a parent")?;
            stdfs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            if p.seed && image.is_dir() {
                let tmp = keep.with_extension("seeding");
                if tmp.exists() {
                    stdfs::remove_dir_all(&tmp)
                        .map_err(|e| format!("removing {}: {e}", tmp.display()))?;
                }
                fs::copy_tree(image, &tmp)?;
                stdfs::rename(&tmp, keep).map_err(|e| {
                    format!("renaming {} to {}: {e}", tmp.display(), keep.display())
                })?;
                say(&format!("seeded {} from the image", keep.display()));
            } else {
                fs::make_dir_like(keep, image)?;
            }
        }
        if !image.is_dir() {
            stdfs::create_dir_all(image)
                .map_err(|e| format!("creating {}: {e}", image.display()))?;
        }
        mount_bind(keep, image)
            .map_err(|e| format!("binding {} over {}: {e}", keep.display(), p.path))?;
    }
    let list: Vec<&str> = persist::PATHS.iter().map(|p| p.path).collect();
    say(&format!("persistent: {} (from {state})", list.join(" ")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
