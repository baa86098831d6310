//! Assembling a root filesystem tree from an image's layers.
//!
//! Layers download concurrently into the cache; each is merged into the
//! [`FsTree`] as soon as it and all layers below it are present. A layer is
//! decompressed as a stream (gzip, zstd, xz or plain, told apart by their
//! magic bytes) straight into the merge, and the uncompressed stream is
//! checked against the config's `diff_ids`.
//!
//! Entry point: [`assemble`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::oci::{Digest, Puller, ResolvedImage};
use crate::progress::{short, Event, Reporter};
use crate::tree::{merge_layer, ContentStore, FsTree, LayerSource, MergeStats};

/// Downloads at most this many layers at once.
const PARALLEL_DOWNLOADS: usize = 3;

/// Builds the merged tree of `img`; file contents go to `store`.
pub fn assemble(
    puller: &Puller<'_>,
    img: &ResolvedImage,
    store: &mut ContentStore,
) -> Result<(FsTree, MergeStats)> {
    let mut tree = FsTree::new();
    let stats = assemble_into(puller, img, &mut tree, store)?;
    Ok((tree, stats))
}

/// Merges the layers of `img` on top of `tree`, as if they were more
/// layers of the image `tree` came from.
pub fn assemble_into(
    puller: &Puller<'_>,
    img: &ResolvedImage,
    tree: &mut FsTree,
    store: &mut ContentStore,
) -> Result<MergeStats> {
    let mut total = MergeStats::default();

    if img.layers.is_empty() {
        // A rootfs tarball: one layer, the file itself.
        if let crate::oci::ImageSource::RootfsTar { file } = &img.source {
            let name = file.display().to_string();
            puller.reporter.event(Event::Stage {
                message: format!("merging {name}"),
            });
            return merge_file(tree, store, file, &name, None, puller.reporter);
        }
        return Ok(total);
    }

    let n = img.layers.len();
    let diff_ids: Vec<Option<Digest>> = match img.config.as_ref().and_then(|c| c.rootfs.as_ref()) {
        Some(r) => r.diff_ids.iter().cloned().map(Some).collect(),
        None => vec![None; n],
    };
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| mpsc::sync_channel::<Result<std::path::PathBuf>>(1))
        .unzip();

    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..PARALLEL_DOWNLOADS.min(n) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n || cancel.load(Ordering::SeqCst) {
                    return;
                }
                let r = puller.layer_file(img, &img.layers[i]);
                let _ = senders[i].send(r);
            });
        }
        let result = (|| -> Result<()> {
            for (i, rx) in receivers.iter().enumerate() {
                let path = rx
                    .recv()
                    .context("a download thread ended without a result")??;
                let desc = &img.layers[i];
                puller.reporter.event(Event::Stage {
                    message: format!("merging layer {}/{n} {}", i + 1, desc.digest),
                });
                let s = merge_file(
                    tree,
                    store,
                    &path,
                    desc.digest.as_str(),
                    diff_ids[i].as_ref(),
                    puller.reporter,
                )?;
                total.entries += s.entries;
                total.bytes += s.bytes;
                total.whiteouts += s.whiteouts;
            }
            Ok(())
        })();
        if result.is_err() {
            cancel.store(true, Ordering::SeqCst);
        }
        result
    })?;
    Ok(total)
}

/// Compression of a layer, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else {
        Compression::None
    }
}

/// Counts the bytes read through it and reports them.
struct CountingReader<'a, R> {
    inner: R,
    done: u64,
    id: &'a str,
    reporter: &'a dyn Reporter,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        self.reporter.event(Event::Advance {
            id: self.id.to_string(),
            done: self.done,
        });
        Ok(n)
    }
}

/// Opens a (possibly compressed) tar file as an uncompressed stream.
pub fn open_decompressed(path: &Path) -> Result<Box<dyn Read + Send>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    open_decompressed_from(path, Box::new(f))
}

/// Like [`open_decompressed`], for a stream already opened; `path` names it
/// in messages.
fn open_decompressed_from<'a>(
    path: &Path,
    f: Box<dyn Read + Send + 'a>,
) -> Result<Box<dyn Read + Send + 'a>> {
    let mut r = BufReader::with_capacity(1 << 20, f);
    let head = r
        .fill_buf()
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(match sniff(head) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .with_context(|| format!("starting zstd decompression of {}", path.display()))?,
        ),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new(r)),
        Compression::None => Box::new(r),
    })
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn merge_file(
    tree: &mut FsTree,
    store: &mut ContentStore,
    path: &Path,
    name: &str,
    diff_id: Option<&Digest>,
    reporter: &dyn Reporter,
) -> Result<MergeStats> {
    let file =
        File::open(path).with_context(|| format!("layer {name}: opening {}", path.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let id = format!("merge {name}");
    reporter.event(Event::Start {
        id: id.clone(),
        label: format!("merge {}", short(name)),
        total,
    });
    let counting = CountingReader {
        inner: file,
        done: 0,
        id: &id,
        reporter,
    };
    let result = merge_stream(tree, store, path, name, diff_id, Box::new(counting));
    reporter.event(Event::Finish { id, message: None });
    result
}

fn merge_stream(
    tree: &mut FsTree,
    store: &mut ContentStore,
    path: &Path,
    name: &str,
    diff_id: Option<&Digest>,
    input: Box<dyn Read + Send + '_>,
) -> Result<MergeStats> {
    let stream = open_decompressed_from(path, input).with_context(|| format!("layer {name}"))?;
    let mut hashing = HashingReader {
        inner: stream,
        hasher: Sha256::new(),
    };
    let layer = LayerSource {
        name: name.to_string(),
    };
    let stats = merge_layer(tree, store, &layer, &mut hashing)?;
    if let Some(expected) = diff_id {
        // The tar end marker may be followed by padding: hash all of it.
        io::copy(&mut hashing, &mut io::sink())
            .with_context(|| format!("layer {name}: reading to the end of the stream"))?;
        let actual = Digest::from_sha256(&hashing.hasher.finalize());
        if actual != *expected {
            bail!(
                "layer {name}: uncompressed content has digest {actual}, but the image config's diff_id is {expected}"
            );
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_compression() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(b"\xfd7zXZ\x00\x00"), Compression::Xz);
        assert_eq!(sniff(b"etc/\0\0\0"), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
    }
}
