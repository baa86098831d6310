//! The content-addressed blob cache.
//!
//! Blobs live at `DIR/blobs/sha256/<hex>`. They are written to a temporary
//! file in `DIR/tmp/` while their sha256 is computed, and renamed into place
//! only when digest and size match, so an entry under `blobs/` was complete
//! and correct when written. Entries are hashed again before use; one that
//! no longer matches (disk corruption, a truncating copy) is removed and the
//! caller fetches it again.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
}

/// Why storing a blob failed.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("blob {expected}: content has digest {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: received {got} bytes, expected {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        got: u64,
    },
    #[error("blob {digest}: reading the source: {source}")]
    Read {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest}: writing the cache: {source:#}")]
    Write {
        digest: Digest,
        #[source]
        source: anyhow::Error,
    },
}

impl InsertError {
    /// Errors worth a retry: the transfer broke or came up short.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            InsertError::Read { .. } | InsertError::SizeMismatch { .. }
        )
    }
}

const BUF: usize = 1 << 20;

impl BlobCache {
    /// Opens (creating if needed) a cache rooted at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["blobs/sha256", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p)
                .with_context(|| format!("creating cache directory {}", p.display()))?;
        }
        Ok(BlobCache {
            root: root.to_path_buf(),
        })
    }

    /// `$BUILD_IMAGE_CACHE_DIR`, else `$XDG_CACHE_HOME/build-image`, else
    /// `~/.cache/build-image`.
    pub fn default_dir() -> Result<PathBuf> {
        if let Some(d) = std::env::var_os("BUILD_IMAGE_CACHE_DIR").filter(|d| !d.is_empty()) {
            return Ok(d.into());
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d).join("build-image"));
        }
        let home = std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .context("no cache directory: set --cache-dir, XDG_CACHE_HOME or HOME")?;
        Ok(PathBuf::from(home).join(".cache/build-image"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The path of a cached blob whose content still has digest `d` (and
    /// size `size`, if given). A damaged entry is removed and `None`
    /// returned, so the caller fetches it again.
    pub fn get_verified(&self, d: &Digest, size: Option<u64>) -> Result<Option<PathBuf>> {
        let path = self.blob_path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("opening cached blob {}", path.display()))
            }
        };
        let (actual, len) = hash_reader(&mut BufReader::with_capacity(BUF, file))
            .with_context(|| format!("reading cached blob {}", path.display()))?;
        if actual != *d || size.is_some_and(|s| s != len) {
            tracing::warn!(
                "cached blob {d} is damaged (content hashes to {actual}, {len} bytes); fetching it again"
            );
            fs::remove_file(&path)
                .with_context(|| format!("removing damaged cache entry {}", path.display()))?;
            return Ok(None);
        }
        Ok(Some(path))
    }

    /// Whether an entry exists, without verifying it.
    pub fn contains(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Streams `src` into the cache as blob `d`, hashing as it goes. The
    /// entry appears only if digest (and `size`, when given) match.
    /// `progress` is called with the running byte count.
    pub fn insert(
        &self,
        d: &Digest,
        size: Option<u64>,
        src: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<PathBuf, InsertError> {
        let werr = |e: anyhow::Error| InsertError::Write {
            digest: d.clone(),
            source: e,
        };
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .with_context(|| format!("creating a temporary file in {}", tmp_dir.display()))
            .map_err(werr)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BUF];
        let mut total = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(InsertError::Read {
                        digest: d.clone(),
                        source: e,
                    })
                }
            };
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .context("writing to the cache")
                .map_err(werr)?;
            total += n as u64;
            progress(total);
            if size.is_some_and(|s| total > s) {
                break;
            }
        }
        if let Some(expected) = size {
            if total != expected {
                return Err(InsertError::SizeMismatch {
                    digest: d.clone(),
                    expected,
                    got: total,
                });
            }
        }
        let actual = Digest::from_sha256(&hasher.finalize());
        if actual != *d {
            return Err(InsertError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        let dest = self.blob_path(d);
        tmp.persist(&dest)
            .with_context(|| format!("moving a downloaded blob to {}", dest.display()))
            .map_err(werr)?;
        Ok(dest)
    }

    /// Stores bytes already in memory (manifests, configs).
    pub fn insert_bytes(&self, d: &Digest, data: &[u8]) -> Result<PathBuf, InsertError> {
        self.insert(d, Some(data.len() as u64), &mut &data[..], &mut |_| {})
    }
}

/// sha256 and length of everything `r` yields.
pub fn hash_reader(r: &mut dyn Read) -> io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((Digest::from_sha256(&hasher.finalize()), total))
}

/// sha256 of a file.
pub fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    hash_reader(&mut BufReader::with_capacity(BUF, f))
        .with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_verifies_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let data = b"layer bytes".to_vec();
        let d = Digest::of(&data);
        let p = cache.insert_bytes(&d, &data).unwrap();
        assert_eq!(fs::read(&p).unwrap(), data);
        assert!(cache.get_verified(&d, Some(11)).unwrap().is_some());

        // Damage on disk is detected and the entry dropped.
        fs::write(&p, b"layer bytez").unwrap();
        assert!(cache.get_verified(&d, None).unwrap().is_none());
        assert!(!p.exists());

        // Wrong content: nothing is kept.
        let err = cache.insert_bytes(&d, b"other bytes").unwrap_err();
        assert!(matches!(err, InsertError::DigestMismatch { .. }));
        assert!(!err.is_transient());
        assert!(!p.exists());
        // Short content is transient.
        let err = cache
            .insert(&d, Some(11), &mut &b"layer"[..], &mut |_| {})
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
