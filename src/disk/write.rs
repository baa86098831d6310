//! Writing a [`Layout`] and its partitions' contents into an image file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use anyhow::{bail, Context, Result};

use super::{Layout, Table};

const COPY_CHUNK: usize = 1 << 20;

/// What goes into one partition.
pub enum Source<'a> {
    /// A whole file (a squashfs image, say). Its length is checked against
    /// the partition before anything is written.
    File(&'a File),
    /// Everything a reader yields. Checked while copying: the copy stops
    /// with an error before the first byte that would not fit.
    Reader(&'a mut dyn Read),
    /// A function that writes through a [`PartitionWriter`] (offset 0 is the
    /// partition's first byte), e.g. `fat::write(…, w, 0)`.
    Writer(WriteFn<'a>),
}

/// A function that writes one partition's content.
pub type WriteFn<'a> = Box<dyn FnOnce(&mut PartitionWriter<'_>) -> Result<()> + 'a>;

/// Writes the image `layout` describes into `out`: truncates it, sets its
/// length to `layout.size`, writes the protective MBR and both GPT copies,
/// then each content at its partition's offset. Everything that can be
/// checked up front (unknown or repeated partition names, files larger than
/// their partition) is checked before `out` is touched; no content is ever
/// written outside its partition. Blocks of zeros are skipped, so the file
/// stays sparse where nothing but zeros goes.
pub fn write_image(
    layout: &dyn Table,
    out: &File,
    contents: Vec<(&str, Source<'_>)>,
) -> Result<()> {
    for (i, (name, source)) in contents.iter().enumerate() {
        let Some(part) = layout.extent(name) else {
            let known = layout.names();
            bail!(
                "no partition named {name} in the layout (it has {})",
                known.join(", ")
            );
        };
        if contents[..i].iter().any(|(n, _)| n == name) {
            bail!("two contents given for partition {name}");
        }
        if let Source::File(f) = source {
            let len = f
                .metadata()
                .with_context(|| format!("reading the size of the content for partition {name}"))?
                .len();
            if len > part.end - part.start {
                bail!(
                    "the content for partition {name} is {len} bytes, larger than the partition \
                     ({} bytes)",
                    part.end - part.start
                );
            }
        }
    }

    out.set_len(0).context("truncating the image file")?;
    out.set_len(layout.size())
        .context("setting the size of the image file")?;
    layout
        .write_table(out)
        .context("writing the partition table")?;

    for (name, source) in contents {
        let part = layout.extent(name).expect("checked above");
        let mut w = PartitionWriter {
            file: out,
            name: name.to_string(),
            start: part.start,
            len: part.end - part.start,
            pos: 0,
        };
        match source {
            Source::File(f) => copy(&mut ReadAt { file: f, pos: 0 }, &mut w),
            Source::Reader(r) => copy(r, &mut w),
            Source::Writer(f) => f(&mut w),
        }
        .with_context(|| format!("writing partition {name}"))?;
    }
    Ok(())
}

/// Bytes of boot code the protective MBR holds (before the disk signature
/// and the partition records).
pub const MBR_BOOT_CODE_SIZE: usize = 440;

/// Puts BIOS boot code (GRUB's boot.img, say) into the first 440 bytes of
/// an image [`write_image`] wrote, leaving the partition records intact.
pub fn write_mbr_boot_code(out: &File, code: &[u8]) -> Result<()> {
    if code.len() > MBR_BOOT_CODE_SIZE {
        bail!(
            "MBR boot code is {} bytes, at most {MBR_BOOT_CODE_SIZE} fit before the partition table",
            code.len()
        );
    }
    out.write_all_at(code, 0)
        .context("writing the MBR boot code")
}

/// The protective MBR, the primary GPT after it and the backup GPT in the
/// last 33 sectors.
pub(super) fn write_gpt(layout: &Layout, out: &File) -> Result<()> {
    let table = layout.gpt()?;
    out.write_all_at(
        &boot_contract::gpt::protective_mbr(layout.total_sectors()),
        0,
    )?;
    for (at, bytes) in table.writes() {
        out.write_all_at(&bytes, at)?;
    }
    Ok(())
}

/// Copies `src` into `w`, skipping chunks of zeros (the image file is fresh,
/// so they read back as zeros anyway).
fn copy(src: &mut dyn Read, w: &mut PartitionWriter<'_>) -> Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading the content"),
            }
        }
        if n == 0 {
            return Ok(());
        }
        if w.pos + n as u64 > w.len {
            bail!(
                "the content for partition {} is larger than the partition ({} bytes)",
                w.name,
                w.len
            );
        }
        if buf[..n].iter().all(|&b| b == 0) {
            w.pos += n as u64;
        } else {
            w.write_all(&buf[..n])?;
        }
    }
}

/// Reads a file from its start with positional reads.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A `Write + Seek` view of one partition of an image file. Position 0 is
/// the partition's first byte; a write that would cross its end fails
/// without writing anything.
pub struct PartitionWriter<'a> {
    file: &'a File,
    name: String,
    start: u64,
    len: u64,
    pos: u64,
}

impl PartitionWriter<'_> {
    /// The partition's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Write for PartitionWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.pos.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "writing {} bytes at offset {} would cross the end of partition {} ({} bytes)",
                    buf.len(),
                    self.pos,
                    self.name,
                    self.len
                ),
            ));
        }
        self.file.write_all_at(buf, self.start + self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PartitionWriter<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        let Some(new) = new else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("seek before the start of partition {}", self.name),
            ));
        };
        self.pos = new;
        Ok(new)
    }
}
