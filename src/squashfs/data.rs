//! File data. Every file's full blocks are compressed on their own; the
//! tail (size modulo the block size, files smaller than a block entirely)
//! is packed with other tails into fragment blocks, in file order.
//!
//! Files identical to an earlier one are not stored again (see `dedup.rs`).
//!
//! The whole sequence of blocks to write ("units") is known up front, so
//! worker threads take units by sequence number, read and compress them,
//! and the calling thread writes the results strictly in sequence order:
//! the output is the same for any number of threads. Workers stay at most
//! a small window ahead of the writer, which bounds memory.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use anyhow::{anyhow, Context, Result};

use super::compress::Compressor;
use super::dedup::find_duplicates;
use super::Compression;
use crate::tree::{ContentRef, ContentStore};

/// Bit 24 of a block size word: the block is stored uncompressed.
pub(crate) const UNCOMPRESSED_BLOCK: u32 = 1 << 24;

/// Where one file's data went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FileData {
    /// Image offset of the first full block (0 when there is none).
    pub start: u64,
    /// Size word of each full block; 0 for a sparse one.
    pub blocks: Vec<u32>,
    /// (fragment index, offset) of the tail.
    pub fragment: Option<(u32, u32)>,
    /// Bytes in sparse blocks.
    pub sparse: u64,
}

pub(crate) struct DataOutput {
    /// Indexed like the `contents` given to [`write_data`].
    pub files: Vec<FileData>,
    /// (image offset, size word) of each fragment block.
    pub fragments: Vec<(u64, u32)>,
    /// Image offset just past the data.
    pub end: u64,
    /// Full blocks written, sparse ones included.
    pub blocks: u64,
    /// Files stored as references to an identical earlier file.
    pub duplicates: u64,
}

/// A run of work in output order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// All full blocks of one file.
    Blocks { file: u32, count: u64 },
    /// One fragment block.
    Fragment(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Block { file: u32, index: u64 },
    Fragment(u32),
}

/// The precomputed order of all units and the packing of tails.
#[derive(Debug, Default)]
struct Schedule {
    segs: Vec<Seg>,
    /// Files whose tails make up each fragment, fragment after fragment.
    members: Vec<u32>,
    /// For fragment k: `members[ranges[k].0..ranges[k].1]`, and its length.
    ranges: Vec<(usize, usize, usize)>,
    /// Fragment slot of each file's tail.
    tail_at: Vec<Option<(u32, u32)>>,
    units: u64,
}

/// Plans the units of every file that is not a duplicate of an earlier one.
fn schedule(contents: &[ContentRef], dup_of: &[Option<u32>], bs: u64) -> Schedule {
    let mut s = Schedule {
        tail_at: vec![None; contents.len()],
        ..Default::default()
    };
    let mut open_from = 0usize;
    let mut open_len = 0u64;
    let close = |s: &mut Schedule, open_from: &mut usize, open_len: &mut u64| {
        let k = s.ranges.len() as u32;
        s.ranges
            .push((*open_from, s.members.len(), *open_len as usize));
        s.segs.push(Seg::Fragment(k));
        s.units += 1;
        *open_from = s.members.len();
        *open_len = 0;
    };
    for (i, c) in contents.iter().enumerate() {
        if dup_of[i].is_some() {
            continue;
        }
        let tail = c.len % bs;
        if tail > 0 {
            if open_len + tail > bs {
                close(&mut s, &mut open_from, &mut open_len);
            }
            s.tail_at[i] = Some((s.ranges.len() as u32, open_len as u32));
            s.members.push(i as u32);
            open_len += tail;
        }
        let count = c.len / bs;
        if count > 0 {
            s.segs.push(Seg::Blocks {
                file: i as u32,
                count,
            });
            s.units += count;
        }
    }
    if open_len > 0 {
        close(&mut s, &mut open_from, &mut open_len);
    }
    s
}

struct State {
    seg: usize,
    within: u64,
    /// Sequence number of the next unit handed out.
    seq: u64,
    /// Units written so far.
    written: u64,
    stop: bool,
}

struct Shared<'a> {
    sched: &'a Schedule,
    state: Mutex<State>,
    cond: Condvar,
    /// Spent output buffers, handed back by the writer.
    pool: Mutex<Vec<Vec<u8>>>,
    window: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking worker brings the whole scope down anyway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared<'_> {
    /// The next unit to compress, waiting while the writer is a full window
    /// behind. `None` when there is no more work or writing stopped.
    fn next_unit(&self) -> Option<(u64, Unit)> {
        let mut st = lock(&self.state);
        loop {
            if st.stop || st.seg >= self.sched.segs.len() {
                return None;
            }
            if st.seq < st.written + self.window {
                break;
            }
            st = self.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        let unit = match self.sched.segs[st.seg] {
            Seg::Blocks { file, count } => {
                let u = Unit::Block {
                    file,
                    index: st.within,
                };
                st.within += 1;
                if st.within == count {
                    st.seg += 1;
                    st.within = 0;
                }
                u
            }
            Seg::Fragment(k) => {
                st.seg += 1;
                Unit::Fragment(k)
            }
        };
        let seq = st.seq;
        st.seq += 1;
        Some((seq, unit))
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.cond.notify_all();
    }
}

/// Tells the workers to stop when the writer leaves, however it leaves.
struct StopOnDrop<'a, 'b>(&'a Shared<'b>);

impl Drop for StopOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

enum Payload {
    /// All zeros: nothing stored.
    Sparse,
    Data {
        buf: Vec<u8>,
        compressed: bool,
    },
}

struct Done {
    seq: u64,
    unit: Unit,
    payload: Payload,
}

/// A failure in a worker; `file` names the file being read, if any.
struct Failure {
    file: Option<u32>,
    err: anyhow::Error,
}

fn is_zero(buf: &[u8]) -> bool {
    // Chunked so the inner loop vectorises; most data blocks fail fast.
    buf.chunks(256)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// Reports a panicking worker to the writer, which would otherwise wait
/// for its unit forever.
struct PanicNotice<'a>(&'a mpsc::Sender<Result<Done, Failure>>);

impl Drop for PanicNotice<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.send(Err(Failure {
                file: None,
                err: anyhow!("a compression thread panicked"),
            }));
        }
    }
}

fn worker(
    shared: &Shared<'_>,
    store: &ContentStore,
    contents: &[ContentRef],
    compression: &Compression,
    bs: usize,
    tx: mpsc::Sender<Result<Done, Failure>>,
) {
    let _notice = PanicNotice(&tx);
    let mut comp = match Compressor::new(compression, bs as u32) {
        Ok(c) => c,
        Err(err) => {
            let _ = tx.send(Err(Failure { file: None, err }));
            return;
        }
    };
    let mut input = vec![0u8; bs];
    while let Some((seq, unit)) = shared.next_unit() {
        let res = process(shared, store, contents, &mut comp, bs, &mut input, unit);
        let msg = res.map(|payload| Done { seq, unit, payload });
        if tx.send(msg).is_err() {
            return;
        }
    }
}

fn process(
    shared: &Shared<'_>,
    store: &ContentStore,
    contents: &[ContentRef],
    comp: &mut Compressor,
    bs: usize,
    input: &mut [u8],
    unit: Unit,
) -> Result<Payload, Failure> {
    let len = match unit {
        Unit::Block { file, index } => {
            store
                .read_at(&contents[file as usize], index * bs as u64, input)
                .map_err(|e| Failure {
                    file: Some(file),
                    err: anyhow!(e).context(format!("block {index}")),
                })?;
            if is_zero(input) {
                return Ok(Payload::Sparse);
            }
            bs
        }
        Unit::Fragment(k) => {
            let (from, to, len) = shared.sched.ranges[k as usize];
            let mut at = 0usize;
            for &file in &shared.sched.members[from..to] {
                let c = &contents[file as usize];
                let tail = (c.len % bs as u64) as usize;
                store
                    .read_at(c, c.len - tail as u64, &mut input[at..at + tail])
                    .map_err(|e| Failure {
                        file: Some(file),
                        err: anyhow!(e).context("the last, partial block"),
                    })?;
                at += tail;
            }
            debug_assert_eq!(at, len);
            len
        }
    };
    let mut buf = lock(&shared.pool).pop().unwrap_or_default();
    let compressed = comp
        .compress(&input[..len], &mut buf)
        .map_err(|err| Failure { file: None, err })?;
    if !compressed {
        buf.clear();
        buf.extend_from_slice(&input[..len]);
    }
    Ok(Payload::Data { buf, compressed })
}

/// Writes the data of `contents` (regular files in image order) to `out`,
/// which is at image offset `pos`. `describe` names file `i` for errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_data(
    store: &ContentStore,
    contents: &[ContentRef],
    compression: &Compression,
    block_size: u32,
    threads: usize,
    out: &mut dyn Write,
    pos: u64,
    describe: &dyn Fn(usize) -> String,
    progress: &dyn Fn(u64, u64),
) -> Result<DataOutput> {
    let bs = block_size as u64;
    let dup_of = find_duplicates(store, contents, threads, describe)?;
    let sched = schedule(contents, &dup_of, bs);
    let mut res = DataOutput {
        files: contents
            .iter()
            .zip(&sched.tail_at)
            .zip(&dup_of)
            .map(|((c, &fragment), dup)| FileData {
                blocks: match dup {
                    None => Vec::with_capacity((c.len / bs) as usize),
                    Some(_) => Vec::new(),
                },
                fragment,
                ..Default::default()
            })
            .collect(),
        fragments: Vec::with_capacity(sched.ranges.len()),
        end: pos,
        blocks: 0,
        duplicates: 0,
    };
    if sched.units > 0 {
        write_units(
            store,
            contents,
            compression,
            bs,
            threads,
            out,
            &sched,
            &mut res,
            describe,
            progress,
        )?;
    }
    for (i, d) in dup_of.iter().enumerate() {
        if let Some(orig) = d {
            res.files[i] = res.files[*orig as usize].clone();
        }
    }
    res.duplicates = dup_of.iter().filter(|d| d.is_some()).count() as u64;
    Ok(res)
}

#[allow(clippy::too_many_arguments)]
fn write_units(
    store: &ContentStore,
    contents: &[ContentRef],
    compression: &Compression,
    bs: u64,
    threads: usize,
    out: &mut dyn Write,
    sched: &Schedule,
    res: &mut DataOutput,
    describe: &dyn Fn(usize) -> String,
    progress: &dyn Fn(u64, u64),
) -> Result<()> {
    let threads = threads.clamp(1, sched.units.min(1024) as usize);
    let shared = Shared {
        sched,
        state: Mutex::new(State {
            seg: 0,
            within: 0,
            seq: 0,
            written: 0,
            stop: false,
        }),
        cond: Condvar::new(),
        pool: Mutex::new(Vec::new()),
        window: threads as u64 * 4 + 4,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let shared = &shared;
            s.spawn(move || worker(shared, store, contents, compression, bs as usize, tx));
        }
        drop(tx);
        let _stop = StopOnDrop(&shared);
        write_in_order(&shared, &rx, out, bs, res, describe, progress)
    })
}

fn write_in_order(
    shared: &Shared<'_>,
    rx: &mpsc::Receiver<Result<Done, Failure>>,
    out: &mut dyn Write,
    bs: u64,
    res: &mut DataOutput,
    describe: &dyn Fn(usize) -> String,
    progress: &dyn Fn(u64, u64),
) -> Result<()> {
    let total = shared.sched.units;
    let mut next = 0u64;
    let mut pending: VecDeque<Option<Done>> = VecDeque::new();
    while next < total {
        let msg = rx
            .recv()
            .map_err(|_| anyhow!("the compression threads stopped early"))?;
        let done = msg.map_err(|f| match f.file {
            Some(i) => f.err.context(format!(
                "reading {} from the content store",
                describe(i as usize)
            )),
            None => f.err,
        })?;
        let slot = (done.seq - next) as usize;
        if pending.len() <= slot {
            pending.resize_with(slot + 1, || None);
        }
        pending[slot] = Some(done);
        let before = next;
        while let Some(Some(_)) = pending.front() {
            let Some(Some(done)) = pending.pop_front() else {
                unreachable!()
            };
            emit(shared, done, out, bs, res)?;
            next += 1;
        }
        if next != before {
            lock(&shared.state).written = next;
            shared.cond.notify_all();
            progress(next, total);
        }
    }
    Ok(())
}

fn emit(
    shared: &Shared<'_>,
    done: Done,
    out: &mut dyn Write,
    bs: u64,
    res: &mut DataOutput,
) -> Result<()> {
    let word = match &done.payload {
        Payload::Sparse => 0,
        Payload::Data { buf, compressed } => {
            out.write_all(buf)
                .context("writing data blocks to the image")?;
            buf.len() as u32 | if *compressed { 0 } else { UNCOMPRESSED_BLOCK }
        }
    };
    let at = res.end;
    let written = match &done.payload {
        Payload::Sparse => 0,
        Payload::Data { buf, .. } => buf.len() as u64,
    };
    res.end += written;
    match done.unit {
        Unit::Block { file, index } => {
            let f = &mut res.files[file as usize];
            if index == 0 {
                f.start = at;
            }
            f.blocks.push(word);
            if word == 0 {
                f.sparse += bs;
            }
            res.blocks += 1;
        }
        Unit::Fragment(k) => {
            debug_assert_eq!(k as usize, res.fragments.len());
            res.fragments.push((at, word));
        }
    }
    if let Payload::Data { buf, .. } = done.payload {
        lock(&shared.pool).push(buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(len: u64) -> ContentRef {
        ContentRef { offset: 0, len }
    }

    #[test]
    fn tails_are_packed_in_order() {
        let s = schedule(
            &[
                c(0),
                c(100),
                c(4096),
                c(4097),
                c(4000),
                c(10),
                c(8192 + 50),
                c(99),
            ],
            &[None, None, None, None, None, None, None, Some(1)],
            4096,
        );
        assert_eq!(
            s.tail_at,
            vec![
                None,
                Some((0, 0)),
                None,
                Some((0, 100)),
                // 101 + 4000 does not fit: fragment 0 is closed.
                Some((1, 0)),
                Some((1, 4000)),
                Some((1, 4010)),
                None,
            ]
        );
        assert_eq!(
            s.segs,
            vec![
                Seg::Blocks { file: 2, count: 1 },
                Seg::Blocks { file: 3, count: 1 },
                Seg::Fragment(0),
                Seg::Blocks { file: 6, count: 2 },
                Seg::Fragment(1),
            ]
        );
        assert_eq!(s.members, vec![1, 3, 4, 5, 6]);
        assert_eq!(s.ranges, vec![(0, 2, 101), (2, 5, 4060)]);
        assert_eq!(s.units, 6);
    }

    #[test]
    fn a_full_fragment_is_allowed() {
        let s = schedule(&[c(4000), c(96), c(1)], &[None; 3], 4096);
        assert_eq!(s.tail_at, vec![Some((0, 0)), Some((0, 4000)), Some((1, 0))]);
        assert_eq!(s.ranges, vec![(0, 2, 4096), (2, 3, 1)]);
    }

    #[test]
    fn read_errors_stop_the_pass_and_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ContentStore::new_in(dir.path()).unwrap();
        let mut contents: Vec<ContentRef> = (0..50)
            .map(|i| store.append(&vec![i as u8; 9000 + i]).unwrap())
            .collect();
        // Not in the store: reading it fails.
        contents[20] = ContentRef {
            offset: 1 << 40,
            len: 70_000,
        };
        let mut out = Vec::new();
        let err = write_data(
            &store,
            &contents,
            &Compression::Zstd { level: 1 },
            4096,
            2,
            &mut out,
            96,
            &|i| format!("/file{i}"),
            &|_, _| {},
        )
        .err()
        .expect("the read fails");
        let msg = format!("{err:#}");
        assert!(msg.contains("/file20"), "{msg}");
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        let mut b = vec![0u8; 4096];
        b[4095] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }
}
