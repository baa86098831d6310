//! The content store: file contents spooled back to back into one unnamed
//! temporary file, addressed by offset and length.
//!
//! Contents are written once while layers stream in and read back (from any
//! number of threads, with positional reads) by the filesystem writers. The
//! file is unlinked from the start, so nothing is left behind on any exit.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Where a regular file's bytes live in a [`ContentStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentRef {
    pub offset: u64,
    pub len: u64,
}

impl ContentRef {
    pub const EMPTY: ContentRef = ContentRef { offset: 0, len: 0 };
}

/// Why [`ContentStore::append_from`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("source ended after {got} bytes")]
    Short { got: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug)]
pub struct ContentStore {
    file: File,
    end: u64,
}

const COPY_CHUNK: usize = 1 << 20;

impl ContentStore {
    /// Creates a store backed by an unnamed temporary file in `dir`.
    pub fn new_in(dir: &Path) -> Result<Self> {
        let file = tempfile::tempfile_in(dir)
            .with_context(|| format!("creating a content spool file in {}", dir.display()))?;
        Ok(ContentStore { file, end: 0 })
    }

    /// Total bytes stored.
    pub fn len(&self) -> u64 {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// Copies exactly `len` bytes from `src` into the store. Fails if `src`
    /// ends early.
    pub fn append_from(&mut self, src: &mut dyn Read, len: u64) -> Result<ContentRef, AppendError> {
        let start = self.end;
        let mut buf = vec![0u8; COPY_CHUNK.min(len as usize).max(1)];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = match src.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(AppendError::Io(e)),
            };
            if n == 0 {
                return Err(AppendError::Short { got: len - left });
            }
            self.file.write_all_at(&buf[..n], self.end)?;
            self.end += n as u64;
            left -= n as u64;
        }
        Ok(ContentRef { offset: start, len })
    }

    /// Stores `data` and returns its reference.
    pub fn append(&mut self, data: &[u8]) -> io::Result<ContentRef> {
        let start = self.end;
        self.file.write_all_at(data, start)?;
        self.end += data.len() as u64;
        Ok(ContentRef {
            offset: start,
            len: data.len() as u64,
        })
    }

    /// Reads `buf.len()` bytes of `r` starting `at` bytes into it. Safe to
    /// call from many threads at once.
    pub fn read_at(&self, r: &ContentRef, at: u64, buf: &mut [u8]) -> io::Result<()> {
        if at + buf.len() as u64 > r.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "read past the end of a stored file",
            ));
        }
        self.file.read_exact_at(buf, r.offset + at)
    }

    /// Reads a whole stored file into memory.
    pub fn read_all(&self, r: &ContentRef) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; r.len as usize];
        self.read_at(r, 0, &mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_source() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ContentStore::new_in(dir.path()).unwrap();
        let a = s.append(b"hello").unwrap();
        let b = s.append_from(&mut &b"world!!"[..], 5).unwrap();
        assert_eq!(s.read_all(&a).unwrap(), b"hello");
        assert_eq!(s.read_all(&b).unwrap(), b"world");
        let mut part = [0u8; 3];
        s.read_at(&b, 2, &mut part).unwrap();
        assert_eq!(&part, b"rld");
        assert!(s.read_at(&b, 3, &mut part).is_err());
        let err = s.append_from(&mut &b"abc"[..], 10).unwrap_err();
        assert!(matches!(err, AppendError::Short { got: 3 }));
        // The directory holds nothing: the spool file is unnamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
