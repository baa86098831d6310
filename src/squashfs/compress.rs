//! Block compressors. Each thread owns one [`Compressor`] and reuses it (and
//! its output buffers) for every block it compresses.

use anyhow::{bail, Context, Result};

use super::Compression;

/// SquashFS compressor ids (superblock `compression` field).
pub(crate) const ID_GZIP: u16 = 1;
pub(crate) const ID_XZ: u16 = 4;
pub(crate) const ID_ZSTD: u16 = 6;

pub(crate) fn compressor_id(c: &Compression) -> u16 {
    match c {
        Compression::Zstd { .. } => ID_ZSTD,
        Compression::Xz { .. } => ID_XZ,
        Compression::Gzip { .. } => ID_GZIP,
    }
}

pub(crate) struct Compressor {
    kind: Kind,
}

enum Kind {
    Zstd(zstd::bulk::Compressor<'static>),
    /// liblzma has no reusable one-shot encoder in the safe API: a stream is
    /// set up per block, as mksquashfs does with `lzma_stream_buffer_encode`.
    Xz {
        preset: u32,
        dict_size: u32,
    },
    Gzip(flate2::Compress),
}

impl Compressor {
    /// A compressor for `c`. `dict_size` is the xz dictionary size: the
    /// block size for data blocks, 8 KiB for metadata blocks. The kernel
    /// accepts any dictionary up to `max(block_size, 8 KiB)` when no
    /// compressor options are stored.
    pub(crate) fn new(c: &Compression, dict_size: u32) -> Result<Self> {
        let kind = match *c {
            Compression::Zstd { level } => Kind::Zstd(
                zstd::bulk::Compressor::new(level)
                    .with_context(|| format!("setting up a zstd level {level} compressor"))?,
            ),
            Compression::Xz { level } => {
                // Checked once here, so per-block failures mean a real error.
                liblzma::stream::LzmaOptions::new_preset(level)
                    .with_context(|| format!("setting up xz preset {level}"))?;
                Kind::Xz {
                    preset: level,
                    dict_size,
                }
            }
            Compression::Gzip { level } => {
                Kind::Gzip(flate2::Compress::new(flate2::Compression::new(level), true))
            }
        };
        Ok(Compressor { kind })
    }

    /// Compresses `input` into `out` (its previous content is discarded).
    /// Returns `false`, with `out` in an unspecified state, when the result
    /// would not be smaller than `input`: the caller then stores `input`
    /// uncompressed.
    pub(crate) fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        if input.is_empty() {
            return Ok(false);
        }
        match &mut self.kind {
            Kind::Zstd(z) => {
                // Room for the worst case, so zstd never fails for lack of it.
                out.reserve(zstd::zstd_safe::compress_bound(input.len()));
                z.compress_to_buffer(input, out)
                    .context("zstd compression failed")?;
            }
            Kind::Xz { preset, dict_size } => {
                use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
                let mut opts = LzmaOptions::new_preset(*preset).context("xz preset")?;
                opts.dict_size(*dict_size);
                let mut filters = Filters::new();
                filters.lzma2(&opts);
                let mut stream = Stream::new_stream_encoder(&filters, Check::Crc32)
                    .context("setting up an xz encoder")?;
                let ended = run_to_end(input.len(), out, |out| {
                    let rest = &input[stream.total_in() as usize..];
                    let status = stream
                        .process_vec(rest, out, Action::Finish)
                        .context("xz compression failed")?;
                    Ok(status == Status::StreamEnd)
                })?;
                if !ended {
                    return Ok(false);
                }
            }
            Kind::Gzip(g) => {
                g.reset();
                let ended = run_to_end(input.len(), out, |out| {
                    let rest = &input[g.total_in() as usize..];
                    let status = g
                        .compress_vec(rest, out, flate2::FlushCompress::Finish)
                        .context("zlib compression failed")?;
                    Ok(status == flate2::Status::StreamEnd)
                })?;
                if !ended {
                    return Ok(false);
                }
            }
        }
        Ok(out.len() < input.len())
    }
}

/// Drives a streaming encoder over an input of `input_len` bytes into
/// `out`: `step` feeds it what it has not taken yet (finishing the stream)
/// and says whether the stream ended. True once it has; false as soon as
/// the output is no smaller than the input (not worth finishing).
fn run_to_end(
    input_len: usize,
    out: &mut Vec<u8>,
    mut step: impl FnMut(&mut Vec<u8>) -> Result<bool>,
) -> Result<bool> {
    out.reserve(input_len);
    loop {
        let before = out.len();
        if step(out)? {
            return Ok(true);
        }
        if out.len() >= input_len {
            return Ok(false);
        }
        if out.len() == before {
            bail!("compression made no progress");
        }
        out.reserve(4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        (0..100_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 977) as u8)
            .collect()
    }

    #[test]
    fn round_trips_in_every_format() {
        let data = sample();
        let mut out = Vec::new();

        let mut z = Compressor::new(&Compression::Zstd { level: 3 }, 131072).unwrap();
        assert!(z.compress(&data, &mut out).unwrap());
        assert_eq!(zstd::bulk::decompress(&out, data.len()).unwrap(), data);
        // The context is reused.
        assert!(z.compress(&data, &mut out).unwrap());
        assert_eq!(zstd::bulk::decompress(&out, data.len()).unwrap(), data);

        let mut x = Compressor::new(&Compression::Xz { level: 6 }, 131072).unwrap();
        assert!(x.compress(&data, &mut out).unwrap());
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);

        let mut g = Compressor::new(&Compression::Gzip { level: 9 }, 131072).unwrap();
        for _ in 0..2 {
            assert!(g.compress(&data, &mut out).unwrap());
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn incompressible_input_is_reported() {
        // A xorshift stream does not compress.
        let mut s = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..8192)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        let mut out = Vec::new();
        for c in [
            Compression::Zstd { level: 3 },
            Compression::Xz { level: 6 },
            Compression::Gzip { level: 9 },
        ] {
            let mut comp = Compressor::new(&c, 8192).unwrap();
            assert!(!comp.compress(&data, &mut out).unwrap(), "{c:?}");
            assert!(!comp.compress(&[], &mut out).unwrap());
        }
    }
}
