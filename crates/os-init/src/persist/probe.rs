//! Is a partition without an ext4 superblock safe to format? Only when
//! nothing on it looks like data: its first MiB is all zeros (where every
//! filesystem, LUKS and swap keep their primary signature) and none of the
//! signatures kept further in is there either: ext2/3/4 backup superblocks,
//! btrfs's first mirror superblock, LUKS2's later secondary headers. This
//! is the check that keeps two zeroed bytes of a superblock from costing
//! the machine its data: e2fsck can still recover it from a backup.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Bytes at the start that must be zero.
pub const HEAD: u64 = 1 << 20;

/// Why a partition is not blank, or `None` when it is. Names an ext2/3/4
/// backup superblock when it finds one, with the `e2fsck` arguments that
/// recover from it.
pub fn not_blank<R: Read + Seek>(dev: &mut R, len: u64) -> io::Result<Option<String>> {
    let mut head = vec![0u8; HEAD.min(len) as usize];
    dev.seek(SeekFrom::Start(0))?;
    dev.read_exact(&mut head)?;
    let dirty = head.iter().position(|&b| b != 0);
    let mut found = None;
    for (at, what) in deeper_signatures() {
        let mut buf = vec![0u8; at.read_len()];
        if at.offset + buf.len() as u64 > len {
            continue;
        }
        dev.seek(SeekFrom::Start(at.offset))?;
        dev.read_exact(&mut buf)?;
        if at.matches(&buf) {
            found = Some(format!("{what} at byte {}", at.offset));
            break;
        }
    }
    Ok(match (dirty, found) {
        (None, None) => None,
        (Some(at), None) => Some(format!(
            "its first MiB is not blank (a non-zero byte at {at})"
        )),
        (None, Some(sig)) => Some(sig),
        (Some(_), Some(sig)) => Some(format!("its first MiB is not blank; {sig}")),
    })
}

/// Zeroes everything [`not_blank`] looks at, so that a partition created
/// this boot whose mkfs never ran (power lost in between) is still blank
/// at the next boot, whatever an earlier use of the disk left there.
pub fn wipe<W: Write + Seek>(dev: &mut W, len: u64) -> io::Result<()> {
    dev.seek(SeekFrom::Start(0))?;
    dev.write_all(&vec![0u8; HEAD.min(len) as usize])?;
    for (at, _) in deeper_signatures() {
        let n = at.read_len() as u64;
        if at.offset + n <= len {
            dev.seek(SeekFrom::Start(at.offset))?;
            dev.write_all(&vec![0u8; n as usize])?;
        }
    }
    Ok(())
}

/// A signature: `magic` at `offset`, and for an ext backup superblock the
/// group number it must name.
struct Sig {
    offset: u64,
    magic: &'static [u8],
    /// ext: the superblock starts at `offset - 0x38`; its
    /// `s_block_group_nr` (0x5A) must be this group, its
    /// `s_log_block_size` (0x18) this value.
    ext: Option<(u16, u32)>,
}

impl Sig {
    fn read_len(&self) -> usize {
        match self.ext {
            Some(_) => 0x60,
            None => self.magic.len(),
        }
    }

    fn matches(&self, buf: &[u8]) -> bool {
        match self.ext {
            None => buf == self.magic,
            Some((group, log)) => {
                // `buf` starts at the superblock.
                let le16 = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
                let le32 =
                    |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
                buf[0x38..0x3A] == [0x53, 0xEF] && le16(0x5A) == group && le32(0x18) == log
            }
        }
    }
}

/// Signatures beyond the first MiB, with what they mean.
fn deeper_signatures() -> Vec<(Sig, String)> {
    let mut v = Vec::new();
    // ext2/3/4 backups (sparse_super: groups 1 and powers of 3, 5, 7) for
    // block sizes 1, 2 and 4 KiB (8 * block size blocks per group).
    for log in 0..3u32 {
        let bs = 1024u64 << log;
        let per_group = 8 * bs;
        for group in [1u16, 3, 5, 7, 9, 25, 27] {
            // With 1 KiB blocks, block 0 is the boot block and groups start
            // one block later.
            let first = u64::from(group) * per_group + u64::from(log == 0);
            let sb = first * bs;
            v.push((
                Sig {
                    offset: sb,
                    magic: &[0x53, 0xEF],
                    ext: Some((group, log)),
                },
                format!(
                    "an ext2/3/4 backup superblock (group {group}, {bs}-byte blocks; \
                     e2fsck -b {first} -B {bs} recovers from it)"
                ),
            ));
        }
    }
    // btrfs: the first mirror superblock at 64 MiB, magic at +0x40.
    v.push((
        Sig {
            offset: (64 << 20) + 0x40,
            magic: b"_BHRfS_M",
            ext: None,
        },
        "a btrfs mirror superblock".into(),
    ));
    // LUKS2 secondary headers past the first MiB.
    for off in [2u64 << 20, 4 << 20] {
        v.push((
            Sig {
                offset: off,
                magic: b"SKUL\xba\xbe",
                ext: None,
            },
            "a LUKS2 secondary header".into(),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn zeros_are_blank_and_any_byte_in_the_first_mib_is_not() {
        let mut d = Cursor::new(vec![0u8; 3 << 20]);
        assert_eq!(not_blank(&mut d, 3 << 20).unwrap(), None);
        d.get_mut()[HEAD as usize - 1] = 1;
        let why = not_blank(&mut d, 3 << 20).unwrap().unwrap();
        assert!(why.contains("first MiB"), "{why}");
    }

    #[test]
    fn finds_deeper_signatures() {
        let len = 80u64 << 20;
        let mut img = vec![0u8; len as usize];
        // An ext4 backup superblock of group 1 with 4 KiB blocks: block
        // 32768, 128 MiB in: beyond this image. 1 KiB blocks: group 1 at
        // block 8193.
        let sb = 8193 * 1024;
        img[sb + 0x38..sb + 0x3A].copy_from_slice(&[0x53, 0xEF]);
        img[sb + 0x5A..sb + 0x5C].copy_from_slice(&1u16.to_le_bytes());
        let why = not_blank(&mut Cursor::new(img.clone()), len)
            .unwrap()
            .unwrap();
        assert!(
            why.contains("ext2/3/4 backup superblock (group 1, 1024"),
            "{why}"
        );
        // The magic alone, naming another group, is no superblock.
        img[sb + 0x5A] = 2;
        assert_eq!(not_blank(&mut Cursor::new(img.clone()), len).unwrap(), None);
        let b = (64 << 20) + 0x40;
        img[b..b + 8].copy_from_slice(b"_BHRfS_M");
        let why = not_blank(&mut Cursor::new(img.clone()), len)
            .unwrap()
            .unwrap();
        assert!(why.contains("btrfs"), "{why}");
        let mut d = Cursor::new(img);
        wipe(&mut d, len).unwrap();
        assert_eq!(not_blank(&mut d, len).unwrap(), None);
    }

    #[test]
    fn a_real_ext4_with_its_first_mib_zeroed_is_not_blank() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(200 << 20)
            .unwrap();
        let mkfs = ["/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .unwrap_or("mkfs.ext4");
        let out = std::process::Command::new(mkfs)
            .args(["-q", "-F", "-b", "4096"])
            .arg(&img)
            .output()
            .expect("mkfs.ext4 not found: apt-get install e2fsprogs");
        assert!(out.status.success());
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        std::io::Write::write_all(&mut f, &vec![0u8; HEAD as usize]).unwrap();
        let why = not_blank(&mut f, 200 << 20).unwrap().unwrap();
        assert!(
            why.contains("group 1, 4096-byte blocks; e2fsck -b 32768 -B 4096"),
            "{why}"
        );
    }
}
