//! The `persist` filesystem: the root's own e2fsprogs to make and grow it,
//! and the copies and bind mounts that put it under the root's paths.
//! Everything here runs after os-init has switched into the new root.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{say, Result};
use crate::{Context, Error};

/// What the ext4 superblock says.
pub struct Ext4 {
    pub bytes: u64,
}

/// The ext2/3/4 superblock of `dev`, or `None` when there is none (a new
/// or never finished partition: nothing on it to lose).
pub fn superblock(dev: &str) -> Result<Option<Ext4>> {
    let mut sb = [0u8; 1024];
    let mut f = File::open(dev).with_context(|| format!("opening {dev}"))?;
    f.seek(SeekFrom::Start(1024))
        .and_then(|_| f.read_exact(&mut sb))
        .with_context(|| format!("reading the superblock of {dev}"))?;
    let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    if sb[0x38..0x3A] != [0x53, 0xEF] {
        return Ok(None);
    }
    let log = le32(0x18);
    if log > 6 {
        return Err(Error::msg(format!(
            "{dev}: ext4 block size 1024 << {log} is out of range"
        )));
    }
    let incompat_64bit = le32(0x60) & 0x80 != 0;
    let mut blocks = u64::from(le32(0x04));
    if incompat_64bit {
        blocks |= u64::from(le32(0x150)) << 32;
    }
    Ok(Some(Ext4 {
        bytes: blocks << (10 + log),
    }))
}

/// The first of `names` (e2fsprogs tools) the root has, under /sbin or
/// /usr/sbin.
fn tool(name: &str) -> Result<String> {
    ["/sbin", "/usr/sbin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| Path::new(p).is_file())
        .with_context(|| {
            format!("the root has no {name} in /sbin or /usr/sbin (install e2fsprogs)")
        })
}

/// Runs a tool of the root (os-init has switched into it): its exit code
/// and the tail of its output.
fn run_code(argv: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv[0]))?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
    Ok((out.status.code().unwrap_or(-1), tail))
}

/// Runs a tool of the root, showing the tail of its output if it fails.
fn run(argv: &[&str]) -> Result<()> {
    match run_code(argv)? {
        (0, _) => Ok(()),
        (code, tail) => Err(Error::msg(format!(
            "{} failed (exit status {code}):\n  {tail}",
            argv.join(" ")
        ))),
    }
}

/// `e2fsck -p` (preen: repairs what is safe to repair without asking):
/// Ok when the filesystem is clean or was repaired, Err with e2fsck's
/// words when it is not usable (exit status 4 and up).
pub fn check(dev: &str) -> Result<()> {
    // A root without e2fsck says nothing about the filesystem: mount it.
    let e2fsck = match tool("e2fsck") {
        Ok(t) => t,
        Err(e) => {
            say(&format!("warning: {e}: {dev} is mounted unchecked"));
            return Ok(());
        }
    };
    let (code, tail) = run_code(&[&e2fsck, "-p", dev])?;
    match code {
        0 => Ok(()),
        1 | 2 => {
            say(&format!("e2fsck repaired {dev}:\n  {tail}"));
            Ok(())
        }
        _ => Err(Error::msg(format!(
            "{e2fsck} -p {dev} cannot repair it (exit status {code}):\n  {tail}"
        ))),
    }
}

pub fn mkfs(dev: &str, label: &str) -> Result<()> {
    let mkfs = tool("mkfs.ext4")?;
    say(&format!("formatting {dev} as ext4 ({mkfs} -F -L {label})"));
    run(&[&mkfs, "-q", "-F", "-L", label, dev])
}

/// Grows the mounted filesystem on `dev` to the partition (online resize).
pub fn grow(dev: &str) -> Result<()> {
    let resize = tool("resize2fs")?;
    run(&[&resize, dev])
}

/// Copies the tree at `src` to `dst` (which must not exist), keeping modes,
/// owners and symlinks. Sockets, fifos and devices are left out.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let m = fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let err =
        |what: &str, e: std::io::Error| Error::with_cause(format!("{what} {}", dst.display()), e);
    let ft = m.file_type();
    if ft.is_dir() {
        fs::create_dir(dst).map_err(|e| err("creating", e))?;
        let entries = fs::read_dir(src).with_context(|| format!("listing {}", src.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", src.display()))?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(src).with_context(|| format!("reading {}", src.display()))?;
        std::os::unix::fs::symlink(target, dst).map_err(|e| err("creating", e))?;
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(|e| err("copying to", e))?;
    } else {
        return Ok(());
    }
    lchown(dst, Some(m.uid()), Some(m.gid())).map_err(|e| err("changing the owner of", e))?;
    if !ft.is_symlink() {
        // After chown, which clears set-id bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| err("setting the mode of", e))?;
    }
    Ok(())
}

/// Creates the empty directory `dst` with the mode and owner of the root's
/// `like` if that exists (0755 root otherwise).
pub fn make_dir_like(dst: &Path, like: &Path) -> Result<()> {
    fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
    if let Some(m) = fs::metadata(like).ok().filter(|m| m.is_dir()) {
        lchown(dst, Some(m.uid()), Some(m.gid()))
            .with_context(|| format!("changing the owner of {}", dst.display()))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))
            .with_context(|| format!("setting the mode of {}", dst.display()))?;
    }
    Ok(())
}
