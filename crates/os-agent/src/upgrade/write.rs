//! Writing an upgrade: the root filesystem streamed from the source
//! straight into the passive partition while it is hashed (constant
//! memory, no temporary copy), resumed from where it broke off when the
//! connection drops, synced, dropped from the page cache and read back
//! from the device to be hashed again; the kernel and initrd written to
//! the ESP under temporary names, synced and renamed.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::artifact::Descriptor;
use super::progress::Reporter;
use super::source::{hex, Source};
use crate::bail;
use crate::error::{Context, Result};
use crate::fault;

/// The copy buffer: large enough that a read or write is never the cost.
const BUF: usize = 1 << 20;
/// How many times a broken-off download is resumed before giving up.
pub const RESUMES: u32 = 3;

/// Opens the passive slot for writing and reading back. A block device is
/// opened exclusively (`O_EXCL`): the kernel refuses when it is mounted
/// or otherwise in use, so the running slot can never be opened here.
pub fn open_slot(dev: &Path) -> Result<(File, u64)> {
    let meta = fs::metadata(dev).with_context(|| format!("reading {}", dev.display()))?;
    let block = meta.file_type().is_block_device();
    if !block && !meta.is_file() {
        bail!("{}: not a block device", dev.display());
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if block {
        opts.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
    }
    let mut f = opts.open(dev).with_context(|| {
        format!(
            "opening {} for writing{}",
            dev.display(),
            if block {
                " (exclusively: is it mounted or in use?)"
            } else {
                ""
            }
        )
    })?;
    let size = f
        .seek(SeekFrom::End(0))
        .with_context(|| format!("reading the size of {}", dev.display()))?;
    Ok((f, size))
}

/// The size of the slot `dev` (for the preflight).
pub fn slot_size(dev: &Path) -> Result<u64> {
    let mut f = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    f.seek(SeekFrom::End(0))
        .with_context(|| format!("reading the size of {}", dev.display()))
}

/// Streams `layer` into `slot` from offset 0. `Ok(Err(why))` when what
/// arrived, or what the device holds afterwards, is not `layer`'s digest.
pub fn stream_rootfs(
    source: &mut dyn Source,
    layer: &Descriptor,
    slot: &mut File,
    dev: &Path,
    rep: &mut Reporter,
) -> Result<std::result::Result<(), String>> {
    let size = layer.size;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let mut buf = vec![0u8; BUF];
    let mut failures = 0;
    let half = size / 2;
    rep.restart_clock();
    while done < size {
        let opened = source.open_blob(&layer.digest, done);
        let (mut body, start) = match opened {
            Ok(x) => x,
            Err(e) => bail!("downloading {} after {done} bytes: {e}", layer.digest),
        };
        if start != done {
            // The source could not resume: start over.
            hasher = Sha256::new();
            done = 0;
        }
        slot.seek(SeekFrom::Start(done))
            .with_context(|| format!("seeking in {}", dev.display()))?;
        let broke = loop {
            let want = (size - done).min(BUF as u64) as usize;
            if want == 0 {
                break None;
            }
            match body.read(&mut buf[..want]) {
                Ok(0) => break Some(format!("the stream ended at byte {done} of {size}")),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    slot.write_all(&buf[..n])
                        .with_context(|| format!("writing {}", dev.display()))?;
                    let before = done;
                    done += n as u64;
                    rep.bytes("rootfs", done, size);
                    if before < half && done >= half {
                        fault::point(fault::UPGRADE_MID_STREAM);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(format!("reading at byte {done} of {size}: {e}")),
            }
        };
        drop(body);
        let Some(why) = broke else { break };
        failures += 1;
        if failures > RESUMES {
            bail!(
                "downloading {}: {why}; gave up after {RESUMES} resumes",
                layer.digest
            );
        }
        rep.step(
            "rootfs",
            &format!(
                "download of {} broke off ({why}); resuming at byte {done}",
                layer.digest
            ),
        );
        std::thread::sleep(Duration::from_secs(1 << (failures - 1)));
    }
    // A server sending more than the descriptor says is not our layer.
    let got = hex(&hasher.finalize());
    if got != layer.digest {
        return Ok(Err(format!(
            "the root filesystem streamed into {} has digest {got}, expected {}",
            dev.display(),
            layer.digest
        )));
    }
    slot.sync_all()
        .with_context(|| format!("syncing {}", dev.display()))?;
    rep.step(
        "verify",
        &format!("reading {} back from {}", layer.digest, dev.display()),
    );
    // Read what the device holds, not what the page cache remembers.
    let _ = rustix::fs::fadvise(&*slot, 0, None, rustix::fs::Advice::DontNeed);
    slot.seek(SeekFrom::Start(0))
        .with_context(|| format!("seeking in {}", dev.display()))?;
    let mut h = Sha256::new();
    let mut left = size;
    rep.restart_clock();
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        slot.read_exact(&mut buf[..n])
            .with_context(|| format!("reading {} back", dev.display()))?;
        h.update(&buf[..n]);
        left -= n as u64;
        rep.bytes("verify", size - left, size);
    }
    let back = hex(&h.finalize());
    if back != layer.digest {
        return Ok(Err(format!(
            "{} read back has digest {back}, expected {} (a failing device?)",
            dev.display(),
            layer.digest
        )));
    }
    Ok(Ok(()))
}

/// Writes `layer` to `dest` on the ESP: `dest.new` first (checked against
/// the digest, synced), then renamed over `dest`. `Ok(Err(why))` on a
/// digest mismatch (the temporary file is removed).
pub fn boot_file(
    source: &mut dyn Source,
    layer: &Descriptor,
    dest: &Path,
) -> Result<std::result::Result<(), String>> {
    let dir = dest.parent().expect("a path on the ESP");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = dest.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!("{name}.new"));
    let _ = fs::remove_file(&tmp);
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let res = (|| -> Result<std::result::Result<(), String>> {
        let (body, start) = source.open_blob(&layer.digest, 0)?;
        if start != 0 {
            bail!("blob {}: the source started at byte {start}", layer.digest);
        }
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; BUF];
        let mut body = body.take(layer.size + 1);
        loop {
            let k = body
                .read(&mut buf)
                .with_context(|| format!("downloading {}", layer.digest))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k])
                .with_context(|| format!("writing {}", tmp.display()))?;
            n += k as u64;
        }
        let got = hex(&h.finalize());
        if n != layer.size || got != layer.digest {
            return Ok(Err(format!(
                "{}: {n} bytes with digest {got}, expected {} bytes with {}",
                dest.display(),
                layer.size,
                layer.digest
            )));
        }
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        Ok(Ok(()))
    })();
    drop(f);
    match res {
        Ok(Ok(())) => {}
        other => {
            let _ = fs::remove_file(&tmp);
            return other;
        }
    }
    fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    Ok(Ok(()))
}

/// Makes everything written to the filesystem holding `dir` durable.
/// On FAT an fsync of a file or a directory does not cover the directory
/// entry a rename made (its size and first cluster): a power cut after
/// `rename` could leave `vmlinuz` empty. `syncfs` writes out the FAT and
/// every directory.
pub fn sync_filesystem(dir: &Path) -> Result<()> {
    let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    rustix::fs::syncfs(&d).with_context(|| format!("syncing the filesystem of {}", dir.display()))
}
