//! Whole-file deduplication: a file whose content equals an earlier file's
//! (in data order) points at that file's blocks and fragment instead of
//! storing them again, as mksquashfs does. Only files that share their size
//! with another file are hashed (SHA-256), on all threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::tree::{ContentRef, ContentStore};

const CHUNK: usize = 1 << 20;

/// For each file, the earlier file with the same content, if there is one.
/// `describe` names file `i` for errors.
pub(crate) fn find_duplicates(
    store: &ContentStore,
    contents: &[ContentRef],
    threads: usize,
    describe: &dyn Fn(usize) -> String,
) -> Result<Vec<Option<u32>>> {
    let mut by_size: HashMap<u64, Vec<u32>> = HashMap::new();
    for (i, c) in contents.iter().enumerate() {
        if c.len > 0 {
            by_size.entry(c.len).or_default().push(i as u32);
        }
    }
    let mut candidates: Vec<u32> = by_size
        .into_values()
        .filter(|v| v.len() > 1)
        .flatten()
        .collect();
    candidates.sort_unstable();
    let mut dup_of = vec![None; contents.len()];
    if candidates.is_empty() {
        return Ok(dup_of);
    }

    let hashes = Mutex::new(vec![[0u8; 32]; candidates.len()]);
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<(u32, std::io::Error)>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, candidates.len()) {
            s.spawn(|| {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= candidates.len() {
                        return;
                    }
                    let file = candidates[k];
                    match hash(store, &contents[file as usize], &mut buf) {
                        Ok(h) => hashes.lock().unwrap_or_else(|e| e.into_inner())[k] = h,
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((file, e));
                            next.store(candidates.len(), Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some((file, e)) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e).with_context(|| {
            format!(
                "reading {} from the content store to find duplicates",
                describe(file as usize)
            )
        });
    }
    let hashes = hashes.into_inner().unwrap_or_else(|e| e.into_inner());

    // Candidates are in file order, so the first of each content wins.
    let mut first: HashMap<(u64, [u8; 32]), u32> = HashMap::new();
    for (k, &file) in candidates.iter().enumerate() {
        let key = (contents[file as usize].len, hashes[k]);
        match first.get(&key) {
            Some(&orig) => dup_of[file as usize] = Some(orig),
            None => {
                first.insert(key, file);
            }
        }
    }
    Ok(dup_of)
}

fn hash(store: &ContentStore, c: &ContentRef, buf: &mut [u8]) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut at = 0u64;
    while at < c.len {
        let n = buf.len().min((c.len - at) as usize);
        store.read_at(c, at, &mut buf[..n])?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_earlier_identical_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ContentStore::new_in(dir.path()).unwrap();
        let big = vec![7u8; 3 * CHUNK + 5];
        let mut big2 = big.clone();
        *big2.last_mut().unwrap() = 8;
        let c = vec![
            s.append(b"abc").unwrap(),
            s.append(b"abd").unwrap(),
            s.append(b"").unwrap(),
            s.append(b"abc").unwrap(),
            s.append(b"").unwrap(),
            s.append(&big).unwrap(),
            s.append(&big2).unwrap(),
            s.append(&big).unwrap(),
            s.append(b"abc").unwrap(),
            s.append(b"unique").unwrap(),
        ];
        let d = find_duplicates(&s, &c, 3, &|i| i.to_string()).unwrap();
        assert_eq!(
            d,
            vec![
                None,
                None,
                None,
                Some(0),
                None,
                None,
                None,
                Some(5),
                Some(0),
                None
            ]
        );
    }
}
