//! The LZMA stream inside GRUB's i386-pc core.img.
//!
//! `lzma_decompress.img` unpacks the kernel and its modules with a fixed-
//! property LZMA decoder: the stream is raw LZMA1 (no `.lzma` header, no
//! properties byte) with lc=3, lp=0, pb=2, and the decoder stops once it has
//! produced the uncompressed size written into its header, so an
//! end-of-payload marker after the data is never read. `grub-mkimage`
//! encodes with a 64 KiB dictionary and no end marker (util/mkimage.c,
//! `compress_kernel_lzma`); liblzma's raw LZMA1 encoder always ends with the
//! marker, five or six bytes the decoder ignores. The dictionary stays at
//! 64 KiB so every match distance is one GRUB's own encoder could produce.

use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream, PRESET_EXTREME};

/// GRUB's literal context bits, literal position bits and position bits.
pub const LC: u32 = 3;
pub const LP: u32 = 0;
pub const PB: u32 = 2;
/// `grub-mkimage`'s dictionary size.
pub const DICT_SIZE: u32 = 1 << 16;

fn options(preset: u32) -> Result<LzmaOptions, liblzma::stream::Error> {
    let mut opts = LzmaOptions::new_preset(preset)?;
    opts.dict_size(DICT_SIZE)
        .literal_context_bits(LC)
        .literal_position_bits(LP)
        .position_bits(PB);
    Ok(opts)
}

/// `data` as a raw LZMA1 stream GRUB's i386-pc decompressor reads.
pub fn compress(data: &[u8]) -> Result<Vec<u8>, liblzma::stream::Error> {
    let mut filters = Filters::new();
    filters.lzma1(&options(9 | PRESET_EXTREME)?);
    let mut stream = Stream::new_raw_encoder(&filters)?;
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        let rest = &data[stream.total_in() as usize..];
        if stream.process_vec(rest, &mut out, Action::Finish)? == Status::StreamEnd {
            return Ok(out);
        }
        out.reserve(out.capacity().max(4096));
    }
}

/// The first `size` bytes `stream` decodes to, as GRUB's decompressor
/// produces them (with or without an end marker after them). `None` when
/// the stream is corrupt or ends early.
pub fn decompress(stream: &[u8], size: usize) -> Option<Vec<u8>> {
    let mut filters = Filters::new();
    filters.lzma1(&options(0).ok()?);
    let mut dec = Stream::new_raw_decoder(&filters).ok()?;
    let mut out = vec![0u8; size];
    while (dec.total_out() as usize) < size {
        let rest = stream.get(dec.total_in() as usize..)?;
        let before = (dec.total_in(), dec.total_out());
        let status = dec
            .process(rest, &mut out[dec.total_out() as usize..], Action::Run)
            .ok()?;
        if status == Status::StreamEnd || before == (dec.total_in(), dec.total_out()) {
            break;
        }
    }
    (dec.total_out() as usize == size).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..20_000u32)
            .flat_map(|i| format!("{i:x}: grub_dl_load {}\n", i * 7919 % 1021).into_bytes())
            .collect()
    }

    #[test]
    fn round_trip() {
        let data = sample();
        let packed = compress(&data).unwrap();
        assert!(packed.len() < data.len() / 2, "{} bytes", packed.len());
        assert_eq!(decompress(&packed, data.len()).unwrap(), data);
        // A prefix decodes on its own, as GRUB stops at its size field.
        assert_eq!(decompress(&packed, 1000).unwrap(), data[..1000]);
    }

    #[test]
    fn no_header_only_the_range_coder() {
        // A raw stream starts with the range coder's zero byte, not with
        // a properties byte (0x5d for lc=3 lp=0 pb=2) as `.lzma` files do.
        let packed = compress(b"GRUB GRUB GRUB GRUB").unwrap();
        assert_eq!(packed[0], 0);
    }

    #[test]
    fn short_or_corrupt_streams_are_refused() {
        let data = sample();
        let packed = compress(&data).unwrap();
        assert!(decompress(&packed[..packed.len() / 2], data.len()).is_none());
        assert!(decompress(&packed, data.len() + 1).is_none());
        assert!(decompress(&[0xff; 64], 100).is_none());
        assert!(decompress(&[], 1).is_none());
    }
}
