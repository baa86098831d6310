//! SquashFS writer throughput against mksquashfs on the same tree.
//!
//! Run with `cargo test --release --bench squashfs -- --nocapture`
//! (`cargo bench` would skip these: they are plain tests that time things).
//! Two inputs: a synthetic tree (~170 MB, ~9k files, a mix of text, binary
//! and incompressible data; always available) and the Debian minbase rootfs
//! fixture the integration tests build (`target/test-fixtures/`), when it
//! exists. Both tools read the same directory; for our writer the tree is
//! loaded into an `FsTree` + `ContentStore` first and only `write` is timed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use build_image::squashfs::{self, Compression, Options};
use build_image::tree::{ContentStore, FsTree, InodeId, InodeKind, Metadata};

/// Runs per tool and case (`SQUASHFS_BENCH_RUNS`, default 3); the best counts.
fn runs() -> usize {
    std::env::var("SQUASHFS_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// File content of one of three kinds: text (compresses ~4x), "binary"
/// (runs of random bytes, zeros and repeats, ~2x) and random.
fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "the",
        "package",
        "configuration",
        "file",
        "system",
        "default",
        "value",
        "install",
        "directory",
        "library",
        "version",
        "option",
        "debian",
        "license",
        "copyright",
        "free",
    ];
    let mut out = Vec::with_capacity(len + 64);
    match rng.below(10) {
        0..=3 => {
            while out.len() < len {
                out.extend_from_slice(WORDS[rng.below(16) as usize].as_bytes());
                out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
            }
        }
        4..=8 => {
            while out.len() < len {
                let run = 16 + rng.below(240) as usize;
                match rng.below(4) {
                    0 => out.resize(out.len() + run, 0),
                    1 if out.len() > 512 => {
                        let from = out.len() - 1 - rng.below(out.len() as u64 - 256) as usize;
                        let from = from.min(out.len() - run.min(out.len()));
                        let chunk = out[from..from + run.min(out.len() - from)].to_vec();
                        out.extend_from_slice(&chunk);
                    }
                    _ => (0..run).for_each(|_| out.push(rng.next() as u8 & 0x7f)),
                }
            }
        }
        _ => {
            while out.len() < len {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

/// Writes the synthetic tree under `root`: 9000 files in 300 directories.
fn synthetic(root: &Path) -> u64 {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut total = 0u64;
    for d in 0..300 {
        let dir = root.join(format!("d{:02}/sub{d:03}", d % 20));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            // Mostly small files, a few large ones: ~170 MB in all.
            let len = match rng.below(1000) {
                0..=2 => 1_000_000 + rng.below(2_000_000),
                3..=72 => 10_000 + rng.below(140_000),
                _ => rng.below(14_000),
            } as usize;
            let data = content(&mut rng, len);
            total += len as u64;
            fs::write(dir.join(format!("file{f:02}.dat")), data).unwrap();
        }
    }
    total
}

/// Loads a directory into a tree (hardlinks kept; xattrs are not read).
fn load(root: &Path, tree: &mut FsTree, store: &mut ContentStore) {
    fn meta(m: &fs::Metadata) -> Metadata {
        Metadata::new((m.mode() & 0o7777) as u16, m.uid(), m.gid(), m.mtime())
    }
    fn walk(
        dir: &Path,
        id: InodeId,
        tree: &mut FsTree,
        store: &mut ContentStore,
        seen: &mut HashMap<(u64, u64), InodeId>,
    ) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let name = e.file_name().into_encoded_bytes();
            let ft = m.file_type();
            if ft.is_dir() {
                let d = tree.add_inode(
                    InodeKind::Directory {
                        children: BTreeMap::new(),
                    },
                    meta(&m),
                );
                tree.link(id, name, d);
                walk(&p, d, tree, store, seen);
                continue;
            }
            if let Some(&prev) = seen.get(&(m.dev(), m.ino())) {
                tree.link(id, name, prev);
                continue;
            }
            let rdev = m.rdev();
            let (major, minor) = (
                (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32,
                ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32,
            );
            let kind = if ft.is_file() {
                let mut f = fs::File::open(&p).unwrap();
                InodeKind::File {
                    content: store.append_from(&mut f, m.len()).unwrap(),
                }
            } else if ft.is_symlink() {
                InodeKind::Symlink {
                    target: fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                }
            } else if ft.is_char_device() {
                InodeKind::CharDevice { major, minor }
            } else if ft.is_block_device() {
                InodeKind::BlockDevice { major, minor }
            } else if ft.is_fifo() {
                InodeKind::Fifo
            } else {
                InodeKind::Socket
            };
            let i = tree.add_inode(kind, meta(&m));
            tree.link(id, name, i);
            if m.nlink() > 1 {
                seen.insert((m.dev(), m.ino()), i);
            }
        }
    }
    let root_id = tree.root();
    tree.inode_mut(root_id).meta = meta(&fs::metadata(root).unwrap());
    walk(root, root_id, tree, store, &mut HashMap::new());
}

fn best(times: &[Duration]) -> Duration {
    *times.iter().min().unwrap()
}

fn compare(name: &str, dir: &Path, scratch: &Path) {
    let mut store = ContentStore::new_in(scratch).unwrap();
    let mut tree = FsTree::new();
    load(dir, &mut tree, &mut store);
    println!(
        "\n{name}: {} entries, {:.1} MB of file data",
        tree.entry_count(),
        store.len() as f64 / 1e6
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cases = [
        (
            "zstd-3",
            Compression::Zstd { level: 3 },
            vec!["-comp", "zstd", "-Xcompression-level", "3"],
        ),
        (
            "gzip-9",
            Compression::Gzip { level: 9 },
            vec!["-comp", "gzip"],
        ),
        ("xz-6", Compression::Xz { level: 6 }, vec!["-comp", "xz"]),
    ];
    let only = std::env::var("SQUASHFS_BENCH").unwrap_or_default();
    for (label, compression, args) in cases {
        if !only.is_empty() && !only.split(',').any(|o| o == label) {
            continue;
        }
        let ours = scratch.join("ours.sqfs");
        let theirs = scratch.join("theirs.sqfs");
        let (mut t, mut m) = (Vec::new(), Vec::new());
        let (mut size, mut msize) = (0, 0);
        let mut cpu_used = Duration::ZERO;
        // Interleaved, so that load from elsewhere hits both alike.
        for _ in 0..runs() {
            let mut out = fs::File::create(&ours).unwrap();
            let opts = Options {
                compression: compression.clone(),
                ..Options::default()
            };
            let start = Instant::now();
            let cpu = cpu_time();
            let s = squashfs::write(&tree, &store, &opts, &mut out).unwrap();
            t.push(start.elapsed());
            cpu_used = cpu_time() - cpu;
            size = s.bytes;

            let start = Instant::now();
            let st = Command::new("mksquashfs")
                .arg(dir)
                .arg(&theirs)
                .args(&args)
                .args(["-noappend", "-quiet", "-no-progress", "-processors"])
                .arg(threads.to_string())
                .output()
                .expect("mksquashfs (squashfs-tools) is needed for this comparison");
            m.push(start.elapsed());
            assert!(st.status.success(), "{st:?}");
            msize = fs::metadata(&theirs).unwrap().len();
        }
        println!(
            "  {label}: ours {:.2} s (cpu {:.2} s), {:.1} MB | mksquashfs -processors {threads} {:.2} s, {:.1} MB",
            best(&t).as_secs_f64(),
            cpu_used.as_secs_f64(),
            size as f64 / 1e6,
            best(&m).as_secs_f64(),
            msize as f64 / 1e6
        );
    }
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn synthetic_tree_vs_mksquashfs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = match std::env::var_os("SQUASHFS_BENCH_TREE") {
        // Reuse a tree generated before (it is created when missing).
        Some(d) => PathBuf::from(d),
        None => tmp.path().join("tree"),
    };
    if !dir.exists() {
        let total = synthetic(&dir);
        assert!(total > 150_000_000);
    }
    compare("synthetic tree", &dir, tmp.path());
}

#[test]
fn debian_minbase_vs_mksquashfs() {
    let tar = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-fixtures/debian-bookworm-minbase.tar");
    if !tar.exists() {
        println!(
            "{} does not exist (the integration tests create it): Debian comparison not run",
            tar.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rootfs");
    fs::create_dir(&dir).unwrap();
    let st = Command::new("tar")
        .args(["-x", "--numeric-owner", "-p", "-f"])
        .arg(&tar)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    compare("Debian minbase", &dir, tmp.path());
}
