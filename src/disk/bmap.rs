//! Block maps of raw images: the `.bmap` file `bmaptool copy` reads to
//! write only the blocks of an image that hold data (bmap format 2.0, as
//! bmap-tools 3.x writes and checks it: the mapped ranges of 4 KiB blocks,
//! each with its SHA-256, and the SHA-256 of the bmap file itself).
//!
//! The images are written sparse (zero blocks are never written, see
//! [`super::write_image`]), so the file's data extents (`SEEK_DATA` /
//! `SEEK_HOLE`) are the mapped blocks.

use rustix::fs::SeekFrom;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The block size of the map.
pub const BLOCK: u64 = 4096;

/// The data extents of `file` as block ranges (inclusive, in [`BLOCK`]s),
/// merged where they touch.
pub fn mapped_ranges(file: &File) -> Result<Vec<(u64, u64)>> {
    let len = file.metadata().context("reading the image's size")?.len();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e).context("finding the image's data (SEEK_DATA)"),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))
            .context("finding the image's holes (SEEK_HOLE)")?
            .min(len);
        let (first, last) = (start / BLOCK, end.div_ceil(BLOCK) - 1);
        match ranges.last_mut() {
            Some(r) if r.1 + 1 >= first => r.1 = r.1.max(last),
            _ => ranges.push((first, last)),
        }
        pos = end;
    }
    Ok(ranges)
}

/// The bmap of the image `file`.
pub fn bmap(file: &File) -> Result<String> {
    let size = file.metadata().context("reading the image's size")?.len();
    let ranges = mapped_ranges(file)?;
    let blocks = size.div_ceil(BLOCK);
    let mapped: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
    let mut map = String::new();
    let mut buf = vec![0u8; 1 << 20];
    for &(first, last) in &ranges {
        let mut h = Sha256::new();
        let (mut at, end) = (first * BLOCK, ((last + 1) * BLOCK).min(size));
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at)
                .context("reading the image")?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        let range = if first == last {
            format!("{first}")
        } else {
            format!("{first}-{last}")
        };
        writeln!(
            map,
            "        <Range chksum=\"{}\"> {range} </Range>",
            hex::encode(h.finalize())
        )
        .unwrap();
    }
    let zeros = "0".repeat(64);
    let text = format!(
        "<?xml version=\"1.0\" ?>\n\
         <!-- The block map of a raw image: `bmaptool copy IMAGE DEVICE` writes\n     \
         only the mapped blocks and checks each range's SHA-256. -->\n\
         <bmap version=\"2.0\">\n    \
         <ImageSize> {size} </ImageSize>\n    \
         <BlockSize> {BLOCK} </BlockSize>\n    \
         <BlocksCount> {blocks} </BlocksCount>\n    \
         <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    \
         <ChecksumType> sha256 </ChecksumType>\n    \
         <BmapFileChecksum> {zeros} </BmapFileChecksum>\n    \
         <BlockMap>\n{map}    </BlockMap>\n</bmap>\n"
    );
    // The file's own checksum is taken with the field as zeros.
    let own = hex::encode(Sha256::digest(text.as_bytes()));
    Ok(text.replacen(&zeros, &own, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_data_blocks_and_checksums_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("img");
        let f = File::create(&p).unwrap();
        let size = 64 * BLOCK + 100;
        f.set_len(size).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[7u8; 5000], 10 * BLOCK + 10).unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
        let f = File::open(&p).unwrap();
        let ranges = mapped_ranges(&f).unwrap();
        // Filesystems map at their own granularity (4 KiB or more): every
        // written byte is inside a range, and most of the file is not.
        for at in [0, 10 * BLOCK + 10, 10 * BLOCK + 5009, size - 1] {
            let b = at / BLOCK;
            assert!(
                ranges.iter().any(|&(a, z)| a <= b && b <= z),
                "{at}: {ranges:?}"
            );
        }
        let mapped: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
        assert!(mapped < 64, "{ranges:?}");
        let text = bmap(&f).unwrap();
        assert!(text.contains(&format!("<ImageSize> {size} </ImageSize>")));
        assert!(text.contains("<BlocksCount> 65 </BlocksCount>"), "{text}");
        let own = text
            .split("<BmapFileChecksum> ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let zeroed = text.replacen(own, &"0".repeat(64), 1);
        assert_eq!(hex::encode(Sha256::digest(zeroed.as_bytes())), own);
    }
}
